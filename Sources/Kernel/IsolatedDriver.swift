import CSystemShims
@_spi(Conformance) import DriverHost
import Foundation
import Glibc
import Machine
import Synchronization

/// A driver running in a driver-host process (`oyako driver-host`,
/// `DriverHostProcess`): the Kernel's end of its line. Disk drivers and
/// entropy sources run there so far (`servedClasses`). It serves the
/// driver's device calls against the real device, checked as in process
/// (a `KernelDevice`); it shares with the host the pages of the OS's memory
/// the driver does I/O on (the machine's memory file, page runs sent as
/// needed); it is the disk's driver binding, sending each request to the
/// host and finishing it when the host reports its completion. When the
/// host process dies, the Kernel's supervisor restarts it.
final class IsolatedDriver: DiskDriverBinding, HostedBinding, @unchecked Sendable {
    // @unchecked Sendable: `state` is guarded by its Mutex; the rest is fixed after start.
    let file: DriverFile
    let slot: BusSlot
    let pid: pid_t
    private let device: KernelDevice
    private let platform: any Platform
    private let line: HostLine
    private let log: KernelLog
    private weak var kernel: Kernel?

    private struct InFlight {
        let request: BlockRequest
        /// OS pages the data went through, when the caller's memory was not
        /// the OS's own RAM (a child's pages mapped for the request).
        let bounce: (physical: UInt64, pages: Int)?
        let isRead: Bool
        let length: Int
        /// The device address the Kernel mapped the data at for the driver
        /// (its dma_map of the request's data then needs no round trip).
        let deviceAddress: UInt64
    }

    private struct State {
        var geometry = BlockGeometry(blockSize: 512, blockCount: 0, maxTransferBlocks: 1, queueDepth: 1, canFlush: false)
        var shared = Set<UInt64>()
        var inFlight: [UInt64: InFlight] = [:]
        var nextTag: UInt64 = 1
        var hooks: [Int: Int32] = [:]
        var dma: [UInt64: DMARegion] = [:]
        /// What the host's driver mapped with dmaMap: device address → the
        /// lengths of its mappings there. Only these are unmapped for it.
        var maps: [UInt64: [Int]] = [:]
        /// Set when the Kernel detaches it on purpose: its end is no failure.
        var leaving = false
        /// Set once attached: a host that dies while attaching is a failed attach, not a crash to recover.
        var attached = false
        /// How the host process ended ("killed by signal 11 (SIGSEGV)"), once it has.
        var ended: String?
        /// The entropy source the driver registered, if it is an rng driver.
        var entropy: HostedEntropySource?
        /// The serial port it registered, and the OS's port it serves.
        var serial: (binding: HostedSerialPort, port: SerialPort)?
        /// The network interface it registered, and the OS's interface it serves.
        var net: (binding: HostedNetdev, interface: NetInterface)?
        /// The heartbeat sent and not yet answered: its number and when.
        var beat: (number: UInt64, sent: ContinuousClock.Instant)?
        var beats: UInt64 = 0
    }

    private let state = Mutex(State())
    /// The host keeps its driver to the log budget; a host that writes log
    /// messages to its line itself is held to twice that here.
    private let logBudget = Mutex(LogBudget(burst: 2 * LogBudget.burst))

    /// The device classes whose drivers can run in a driver host.
    static let servedClasses: Set<String> = [RegisteredDisk.classID, RegisteredRNG.classID, RegisteredSerialPort.classID, RegisteredNetdev.classID]

    var geometry: BlockGeometry { state.withLock { $0.geometry } }
    /// Which driver, device and host: fixed for the host's life.
    let origin: HostedOrigin
    var name: String { file.metadata.name }

    private init(file: DriverFile, slot: BusSlot, pid: pid_t, line: HostLine, kernel: Kernel) {
        self.file = file
        self.slot = slot
        self.pid = pid
        self.line = line
        self.kernel = kernel
        self.platform = kernel.platform
        self.log = kernel.log
        self.device = KernelDevice(slot: slot, platform: kernel.platform, log: kernel.log)
        origin = HostedOrigin(label: "\(file.metadata.name)@\(slot.address) (driver host \(pid))", location: slot.address.description, file: file)
    }

    private final class WeakLine: @unchecked Sendable {
        // @unchecked Sendable: set once; HostLine is Sendable.
        weak var line: HostLine?
        init(_ line: HostLine) { self.line = line }
    }

    /// The lines of every driver host this process has started (by pid),
    /// for `askForHangReports`; a host's entry goes with its line.
    private static let running = Mutex<[pid_t: WeakLine]>([:])

    /// Asks every driver host still running to have its threads that are
    /// inside driver callbacks report where they are (a verifying process
    /// about to give up on a check that does not end). Returns how many
    /// were asked.
    static func askForHangReports() -> Int {
        let lines = running.withLock { $0.values.compactMap(\.line) }
        return lines.filter { $0.post(.reportHangs) }.count
    }

    /// Starts a driver host for `file` and attaches it to `slot`'s device.
    static func start(file: DriverFile, slot: BusSlot, kernel: Kernel, executable: String) throws -> IsolatedDriver {
        var pair: [Int32] = [-1, -1]
        guard oy_shim_seqpacket_pair(&pair) == 0 else { throw AttachError(driver: file.metadata.name, device: slot.address.description, status: .noMemory, leaked: []) }
        let arguments = [executable, "driver-host"]
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for arg in argv { free(arg) } }
        let pid = oy_shim_spawn_driver_host(executable, &argv, pair[1])
        _ = close(pair[1])
        guard pid > 0 else {
            _ = close(pair[0])
            // Not .notSupported: boot reads that as a probe declining the device.
            throw AttachError(driver: file.metadata.name, device: slot.address.description, status: .noMemory, leaked: [])
        }
        let driver = IsolatedDriver(file: file, slot: slot, pid: pid, line: HostLine(socket: pair[0]), kernel: kernel)
        running.withLock { hosts in
            hosts = hosts.filter { $0.value.line != nil }
            hosts[pid] = WeakLine(driver.line)
        }
        driver.line.start(received: { [weak driver] messages in driver?.serve(messages) }, closed: { [weak driver] reason in driver?.lineClosed(reason) })
        var body = WireWriter()
        body.string(file.resolvedPath)
        body.string(kernel.environmentName)
        body.u64(UInt64(kernel.platform.memory.size))
        let info = driver.device.info
        body.u32(UInt32(info.vendorID)); body.u32(UInt32(info.deviceID)); body.u32(info.classCode); body.u32(UInt32(info.revision))
        body.u32(UInt32(info.interruptCount)); body.string(info.location)
        // The host verifies the driver as this process does (the conformance suite's workers).
        body.u32(Verifier.isEnabled ? 1 : 0)
        body.u32(UInt32(info.bars.count))
        for bar in info.bars {
            switch bar {
            case .none: body.u32(0); body.u64(0)
            case .mmio(let size): body.u32(1); body.u64(size)
            case .ports(let count): body.u32(2); body.u64(UInt64(count))
            }
        }
        do {
            var reply = try driver.line.call(.attach, body, fds: [kernel.platform.machineMemoryFile]).0
            let status = OyStatus((try? reply.i32()) ?? OyStatus.deviceGone.rawValue), text = (try? reply.string()) ?? ""
            guard status.isOK else {
                driver.end()
                kernel.log.record(.warning, "kernel", "\(file.metadata.name) in its driver host did not attach to \(slot.address): \(text)")
                throw AttachError(driver: file.metadata.name, device: slot.address.description, status: status, leaked: [])
            }
            kernel.log.record(.info, "kernel", text)
            driver.state.withLock { $0.attached = true }
            if driver.line.isClosed { driver.lineClosed("it ended right after attaching") }
            return driver
        } catch let error as HostLine.Closed {
            let how = driver.end().map(describe) ?? "\(error)"
            let hint = how == "exit status 127" ? " (\(executable) could not be run as a driver host)" : ""
            kernel.log.record(.warning, "kernel", "\(file.metadata.name)'s driver host ended while attaching: \(how)\(hint)")
            throw AttachError(driver: file.metadata.name, device: slot.address.description, status: .deviceGone, leaked: [])
        }
    }

    // MARK: The disk

    func submit(_ request: BlockRequest) -> OyStatus {
        guard let operation = request.operation else { return .invalid }
        let length = operation == .flush ? 0 : request.blockCount * geometry.blockSize
        var physical: UInt64 = 0
        var bounce: (physical: UInt64, pages: Int)?
        if operation != .flush, let data = request.data {
            if let own = platform.memory.physical(of: data, length: length), platform.machineRuns(physical: own, length: length) != nil {
                physical = own
            } else {
                // Not the OS's RAM (a child's page mapped for the request): through OS pages.
                guard let pages = platform.memory.allocate(bytes: length), let copy = platform.memory.pointer(pages.physical) else { return .noMemory }
                if operation == .write { copy.copyMemory(from: data, byteCount: length) }
                bounce = pages
                physical = pages.physical
            }
        }
        let deviceAddress = length > 0 ? platform.mapForDevice(slot, physical: physical, length: length, writable: operation == .read) : 0
        // Claimed and posted as one step: a request that first shares pages
        // with the host must reach it before any other that uses them (one
        // that overtook it found them unmapped in the host and failed).
        return postOrder.withLock { _ in post(request, operation, physical: physical, bounce: bounce, length: length, deviceAddress: deviceAddress) }
    }

    /// Requests are claimed and posted one at a time (see `submit`).
    private let postOrder = Mutex(())

    private func post(_ request: BlockRequest, _ operation: BlockRequest.Operation, physical: UInt64, bounce: (physical: UInt64, pages: Int)?,
                      length: Int, deviceAddress: UInt64) -> OyStatus {
        let (tag, runs) = state.withLock { s -> (UInt64, [(offset: UInt64, length: Int)]) in
            defer { s.nextTag += 1 }
            s.inFlight[s.nextTag] = InFlight(request: request, bounce: bounce, isRead: operation == .read, length: length, deviceAddress: deviceAddress)
            return (s.nextTag, length > 0 ? newlyShared(&s, physical: physical, length: length) : [])
        }
        var body = WireWriter()
        body.u64(tag); body.u32(operation.rawValue); body.u64(request.lba); body.u32(UInt32(request.blockCount))
        body.u64(physical)
        body.u64(physical / UInt64(SharedPage.size) * UInt64(SharedPage.size))  // where `runs` start
        body.runs(runs)
        body.u64(deviceAddress)
        // Posted: the host reports a refusal as a completion, and the line
        // keeps this before anything sent after it.
        guard line.post(.submit, body) else {
            // The host is gone: the request waits in the OS for the restarted driver.
            guard let taken = take(tag) else { return .ok }
            release(taken)
            return .busy
        }
        return .ok
    }

    /// Page runs of [physical, +length) the host has not mapped yet, whole pages.
    private func newlyShared(_ s: inout State, physical: UInt64, length: Int) -> [(offset: UInt64, length: Int)] {
        let first = physical / UInt64(SharedPage.size), last = (physical + UInt64(length) - 1) / UInt64(SharedPage.size)
        guard (first...last).contains(where: { !s.shared.contains($0) }) else { return [] }
        let start = first * UInt64(SharedPage.size), span = Int(last - first + 1) * SharedPage.size
        guard let runs = platform.machineRuns(physical: start, length: span) else { return [] }
        for page in first...last { s.shared.insert(page) }
        return runs
    }

    /// Every page of [physical, +length) was shared with the host.
    private static func isShared(_ s: State, physical: UInt64, length: Int) -> Bool {
        guard length > 0, physical <= UInt64.max - UInt64(length) else { return false }
        let first = physical / UInt64(SharedPage.size), last = (physical + UInt64(length) - 1) / UInt64(SharedPage.size)
        return (first...last).allSatisfy { s.shared.contains($0) }
    }

    private func take(_ tag: UInt64) -> InFlight? { state.withLock { $0.inFlight.removeValue(forKey: tag) } }

    private func release(_ flight: InFlight) {
        if flight.length > 0 { platform.unmapForDevice(slot, deviceAddress: flight.deviceAddress, length: flight.length) }
        if let bounce = flight.bounce { platform.memory.free(physical: bounce.physical, pages: bounce.pages) }
    }

    private func finish(_ flight: InFlight, _ status: OyStatus) {
        if let bounce = flight.bounce, flight.isRead, status.isOK, let data = flight.request.data, let copy = platform.memory.pointer(bounce.physical) {
            data.copyMemory(from: copy, byteCount: flight.length)
        }
        release(flight)
        flight.request.finishUnsubmitted(status)
    }

    // MARK: The host's calls

    /// What one message from the host carried. Submits the completions'
    /// callbacks make (the next request) go to the host together.
    private func serve(_ messages: [HostLine.Incoming]) {
        line.batching {
            for message in messages { serve(message) }
        }
    }

    private func serve(_ message: HostLine.Incoming) {
        var message = message
        guard let kind = HostMessage(rawValue: message.kind) else {
            for fd in message.fds { _ = close(fd) }
            return
        }
        var reply = WireWriter()
        do {
            if try posted(kind, &message.body) { return }
            let fds = try answer(kind, &message.body, into: &reply)
            line.reply(to: message, reply, fds: fds)
        } catch let error as OyStatus {
            var refusal = WireWriter()
            refusal.i32(error.rawValue)
            line.reply(to: message, refusal)
        } catch {
            var refusal = WireWriter()
            refusal.i32(OyStatus.invalid.rawValue)
            line.reply(to: message, refusal)
        }
    }

    /// One-way messages from the host (log lines, completions, register
    /// writes, input, reports); false for a call that wants an answer.
    private func posted(_ kind: HostMessage, _ body: inout WireReader) throws -> Bool {
        switch kind {
        case .log:
            let level = LogLevel(rawValue: Int32(bitPattern: try body.u32())) ?? .info, text = try body.string()
            switch logBudget.withLock({ $0.admit(at: DispatchTime.now().uptimeNanoseconds) }) {
            case .drop: break
            case .replace(let note): log.record(.warning, name, "its driver host " + note)
            case .log(let notes):
                for note in notes { log.record(.warning, name, "its driver host: " + note) }
                log.record(level, name, text)
            }
        case .complete:
            let tag = try body.u64(), status = OyStatus(try body.i32())
            // On the reader thread: a caller's completion may submit
            // again, and a submit is posted, so it needs no reply.
            if let flight = take(tag) { finish(flight, status) }
        case .completions:
            let count = Int(try body.u32())
            for _ in 0..<min(count, 4096) {
                let kind = HostMessage(rawValue: try body.u32()), tag = try body.u64(), status = OyStatus(try body.i32())
                if kind == .netTransmit {
                    state.withLock { $0.net?.binding }?.completed(tag: tag, status: status)
                } else if let flight = take(tag) {
                    finish(flight, status)
                }
            }
        case .mmioWrite:
            let bar = Int(try body.u32()), offset = try body.u64(), width = Int(try body.u32()), value = try body.u64()
            device.mmioWrite(bar: bar, offset: offset, width: width, value: value)
        case .portWrite:
            device.portWrite(bar: Int(try body.u32()), port: try body.u32(), value: UInt8(truncatingIfNeeded: try body.u32()))
        case .dmaUnmap:
            let address = try body.u64(), length = try body.length()
            // Only a mapping the host made: an address or length of its
            // own invention unmaps nothing.
            let mapped = state.withLock { s -> Bool in
                guard let at = s.maps[address]?.firstIndex(of: length) else { return false }
                s.maps[address]!.remove(at: at)
                if s.maps[address]!.isEmpty { s.maps[address] = nil }
                return true
            }
            if mapped { device.dmaUnmap(DMARegion(cpu: platform.memory.base, deviceAddress: address, length: length)) }
        case .serialReceived, .netReceived:
            // Input for the OS's port, or a frame for its interface.
            let bytes = try body.data()
            let deliver = state.withLock { s -> ((UnsafeRawBufferPointer) -> Void)? in
                kind == .serialReceived ? s.serial.map { $0.port.deliver } : s.net.map { $0.interface.deliver }
            }
            bytes.withUnsafeBytes { deliver?($0) }
        case .serialReady: state.withLock { $0.serial?.port }?.driverMadeRoom()
        case .serialLost:
            let lost = Int(clamping: try body.u64())
            state.withLock { $0.serial?.port }?.driverLost(lost)
        case .alive:
            let number = try body.u64()
            state.withLock { s in if s.beat?.number == number { s.beat = nil } }
        case .violation:
            let severity = ViolationLog.Severity(wireValue: try body.u32())
            let driver = try body.string(), callback = try body.string(), text = try body.string()
            let entry = ViolationLog.Entry(severity: severity, driver: driver.isEmpty ? nil : driver,
                                           callback: callback.isEmpty ? nil : callback, message: text)
            ViolationLog.recordForwarded(entry)
            log.record(severity == .violation ? .error : .warning, name, "in its driver host: \(entry.description)")
        case .netTxComplete:
            let tag = try body.u64(), status = OyStatus(try body.i32())
            state.withLock { $0.net?.binding }?.completed(tag: tag, status: status)
        case .netLink:
            let up = try body.u32() != 0
            guard let net = state.withLock({ $0.net }) else { return true }
            net.binding.setLink(up)
            net.interface.linkChanged(up: up)
        case .maskInterrupt: device.maskInterrupt(index: Int(try body.u32()))
        case .unmaskInterrupt: device.unmaskInterrupt(index: Int(try body.u32()))
        default: return false
        }
        return true
    }

    /// Calls with an answer: status first, then what the call returns.
    private func answer(_ kind: HostMessage, _ body: inout WireReader, into reply: inout WireWriter) throws -> [Int32] {
        switch kind {
        case .configRead:
            let value = try device.configRead(offset: try body.u32(), width: Int(try body.u32()))
            reply.i32(0); reply.u32(value)
        case .configWrite:
            try device.configWrite(offset: try body.u32(), width: Int(try body.u32()), value: try body.u32())
            reply.i32(0)
        case .mmioRead:
            let value = device.mmioRead(bar: Int(try body.u32()), offset: try body.u64(), width: Int(try body.u32()))
            reply.i32(0); reply.u64(value)
        case .portRead:
            let value = device.portRead(bar: Int(try body.u32()), port: try body.u32())
            reply.i32(0); reply.u32(UInt32(value))
        case .dmaAllocate:
            let size = try body.length()
            guard size > 0, size <= 64 << 20 else { throw OyStatus.invalid }
            let region = try device.dmaAllocate(size: size)
            guard let physical = platform.memory.physical(of: region.cpu, length: size) else { throw OyStatus.noMemory }
            let runs = state.withLock { s -> [(offset: UInt64, length: Int)] in
                s.dma[region.deviceAddress] = region
                return newlyShared(&s, physical: physical, length: size)
            }
            reply.i32(0); reply.u64(region.deviceAddress); reply.u64(physical); reply.runs(runs)
        case .dmaFree:
            let address = try body.u64()
            if let region = state.withLock({ $0.dma.removeValue(forKey: address) }) { device.dmaFree(region) }
            reply.i32(0)
        case .dmaMap:
            let physical = try body.u64(), length = try body.length()
            // Only memory the Kernel shared with this host (DMA buffers,
            // request data, frame slots): a host cannot point its device
            // at the rest of the OS's memory.
            guard let direction = DMADirection(rawValue: try body.u32()), let pointer = platform.memory.pointer(physical),
                  state.withLock({ Self.isShared($0, physical: physical, length: length) })
            else { throw OyStatus.invalid }
            let region = try device.dmaMap(pointer, length: length, direction: direction)
            state.withLock { $0.maps[region.deviceAddress, default: []].append(length) }
            reply.i32(0); reply.u64(region.deviceAddress)
        case .hookInterrupt:
            let index = Int(try body.u32())
            let doorbell = oy_shim_eventfd()
            guard doorbell >= 0 else { throw OyStatus.noMemory }
            do {
                try device.hookInterrupt(index: index) {
                    var one: UInt64 = 1
                    _ = write(doorbell, &one, 8)
                }
            } catch {
                _ = close(doorbell)
                throw error
            }
            if let old = state.withLock({ s -> Int32? in defer { s.hooks[index] = doorbell }; return s.hooks[index] }) { _ = close(old) }
            reply.i32(0)
            return [doorbell]
        case .unhookInterrupt:
            let index = Int(try body.u32())
            device.unhookInterrupt(index: index)
            if let doorbell = state.withLock({ $0.hooks.removeValue(forKey: index) }) { _ = close(doorbell) }
            reply.i32(0)
        case .registerDisk, .unregisterDisk, .registerRNG, .unregisterRNG, .registerSerial, .unregisterSerial, .registerNetdev, .unregisterNetdev:
            try answerRegistration(kind, &body, into: &reply)
        default:
            throw OyStatus.invalid
        }
        return []
    }

    /// A class object the driver registered or withdrew: the Kernel's
    /// subsystem adopts a binding that reaches it over the line.
    private func answerRegistration(_ kind: HostMessage, _ body: inout WireReader, into reply: inout WireWriter) throws {
        switch kind {
        case .registerDisk:
            let g = BlockGeometry(blockSize: Int(try body.u32()), blockCount: try body.u64(), maxTransferBlocks: Int(try body.u32()),
                                  queueDepth: Int(try body.u32()), canFlush: try body.u32() != 0)
            // The host checked it, unless the host is not what it should be.
            guard g.isPossible else { throw OyStatus.invalid }
            state.withLock { $0.geometry = g }
            guard let kernel else { throw OyStatus.deviceGone }
            try kernel.blockLayer.adopt(disk: self, log: log)
        case .unregisterDisk:
            kernel?.blockLayer.release(disk: self, log: log)
        case .registerRNG:
            guard let kernel else { throw OyStatus.deviceGone }
            try register(\.entropy) {
                let source = HostedEntropySource(origin, line: line)
                kernel.entropy.adopt(source: source, log: log)
                return source
            }
        case .unregisterRNG:
            releaseEntropy()
        case .registerSerial:
            guard let kernel else { throw OyStatus.deviceGone }
            let settings = try body.serialLine()
            try register(\.serial) {
                let binding = HostedSerialPort(origin, line: line, settings: settings)
                return (binding, kernel.serial.adopt(port: binding, log: log))
            }
        case .unregisterSerial:
            releaseSerial()
        case .registerNetdev:
            guard let kernel else { throw OyStatus.deviceGone }
            let mac = try body.data()
            _ = try body.u32()  // the MTU: the OS's interfaces go by the largest frame
            let maxFrame = Int(try body.u32()), depth = Int(try body.u32()), linkUp = try body.u32() != 0
            guard mac.count == 6, RegisteredNetdev.isPossible(maxFrame: maxFrame, queueDepth: depth) else { throw OyStatus.invalid }
            try register(\.net) { () throws(OyStatus) in
                guard let binding = HostedNetdev(origin, line: line, platform: platform, slot: slot, mac: mac, maxFrame: maxFrame, queueDepth: depth,
                                                 linkUp: linkUp, share: { physical, length in self.state.withLock { self.newlyShared(&$0, physical: physical, length: length) } })
                else { throw OyStatus.noMemory }
                return (binding, kernel.network.adopt(netdev: binding, log: log))
            }
        case .unregisterNetdev:
            releaseNet()
        default:
            throw OyStatus.invalid
        }
        // Every registration and withdrawal that got here succeeded.
        reply.i32(0)
    }

    // MARK: Control methods

    /// Calls a control method of the driver in its host (nil: lists them),
    /// waiting at most `timeout` seconds. A method still running holds the
    /// host's request loop, so its heartbeats stop, and past the hang
    /// timeout the supervisor restarts it as hung (a slow method is let
    /// finish until then); a host that dies in the call is restarted as
    /// after any crash.
    func controlAnswer(_ method: String?, arguments: [String], timeout: Double) throws(ControlCallError) -> String {
        var body = WireWriter()
        body.string(method ?? "")
        body.u32(UInt32(arguments.count))
        for argument in arguments { body.string(argument) }
        var reply: WireReader
        do {
            reply = try line.call(.controlCall, body, within: timeout).0
        } catch {
            switch error {
            case .timedOut:
                let what = method.map { "its control method \($0)" } ?? "listing its control methods"
                let hang = kernel.map { String(format: " (%g s)", $0.supervisor.policy.hangTimeout.seconds) } ?? ""
                let place = whereStuck().map { $0.location.isEmpty ? "" : "; its thread is \($0.location)" } ?? ""
                throw ControlCallError(message: "\(label): \(what) did not return within \(String(format: "%g", timeout)) s\(place); its driver host "
                    + "answers nothing else meanwhile, and is restarted as hung if the call outlasts the hang timeout\(hang)")
            case .closed(let closed):
                // The line's end is handled (the process reaped) before callers hear of it.
                let how = state.withLock { $0.ended } ?? closed.reason
                throw ControlCallError(message: "\(label): the driver host ended during the call (\(how)); it is restarted as after any crash")
            }
        }
        let status = (try? reply.i32()) ?? OyStatus.deviceGone.rawValue
        let text = (try? reply.string()) ?? ""
        guard status == 0 else { throw ControlCallError(message: text.isEmpty ? "\(label): \(OyStatus(status))" : text) }
        return text
    }

    /// Where the host's threads inside driver callbacks are now, in words
    /// (functions named from the driver file's symbols); nil when none is
    /// inside one or the host does not answer within `timeout`.
    func whereStuck(since: Duration = .zero, timeout: Double = 2) -> DriverFault? {
        hangReports(since: since, timeout: timeout).flatMap { DriverFault.hang(stderr: $0, driver: file.resolvedPath, driverFramesOnly: true) }
    }

    /// The hang reports of the host's threads inside driver callbacks since
    /// at least `since` (empty: none is); nil when the host does not answer
    /// within `timeout`. The host answers from its reader thread, so a
    /// driver call that never returns does not stop the answer.
    func hangReports(since: Duration, timeout: Double = 2) -> String? {
        var body = WireWriter()
        body.u64(since.wholeNanoseconds)
        guard var reply = try? line.call(.whereStuck, body, within: timeout).0, let report = try? reply.data() else { return nil }
        return String(decoding: report, as: UTF8.self)
    }

    // MARK: Heartbeat

    /// How long the host has left a heartbeat unanswered (nil: it answered
    /// the last one); sends the next when none is outstanding. The host
    /// answers from its request loop, so a driver call that never returns
    /// (a hung read, write or transmit) stops the answers.
    func heartbeat() -> Duration? {
        let (silent, next) = state.withLock { s -> (Duration?, UInt64?) in
            guard s.attached, !s.leaving else { return (nil, nil) }
            if let beat = s.beat { return (.now - beat.sent, nil) }
            s.beats += 1
            s.beat = (s.beats, .now)
            return (nil, s.beats)
        }
        if let next {
            var body = WireWriter()
            body.u64(next)
            line.post(.heartbeat, body)
        }
        return silent
    }

    // MARK: Ending

    /// Detaches the driver in its host (which then unloads it and ends),
    /// bounded by `timeout`; anything still in flight afterwards is
    /// canceled. What the host found on the way, or nil when it never said.
    @discardableResult
    func detach(timeout: Double = 10) -> DriverInstance.DetachReport? {
        // A host that answers no heartbeat would not answer detach either.
        let silent = state.withLock { s -> Bool in
            defer { s.leaving = true }
            return s.beat.map { .now - $0.sent > .seconds(1) } ?? false
        }
        if silent {
            log.record(.warning, "kernel", "\(label): its host answers no heartbeat; ended without a detach")
            end()
            return nil
        }
        let done = DispatchSemaphore(value: 0)
        let line = self.line
        let answer = Mutex<DriverInstance.DetachReport?>(nil)
        // A verifying Kernel's pause after each release (see
        // `Verifier.pauseAfterRelease`) holds in the host's detach too.
        var body = WireWriter()
        body.u32(UInt32(clamping: Verifier.releasePauseMicroseconds))
        Thread.detachNewThread { [body] in
            if var reply = try? line.call(.detach, body).0, let status = try? reply.i32(), let unfinished = try? reply.u32(), let count = try? reply.u32() {
                let leaked = (0..<min(count, 256)).compactMap { _ in try? reply.string() }
                answer.withLock { $0 = DriverInstance.DetachReport(status: OyStatus(status), leaked: leaked, unfinishedRequests: Int(unfinished)) }
            }
            done.signal()
        }
        if done.wait(timeout: .now() + timeout) == .timedOut {
            log.record(.warning, "kernel", "\(label): detach did not return within \(Int(timeout)) s; the host is ended")
        }
        if let status = end(grace: answer.withLock({ $0 }) == nil ? 0 : 2), status != 0 {
            log.record(.warning, "kernel", "\(label): the driver host ended with \(Self.describe(status)) after detaching")
        }
        return answer.withLock { $0 }
    }

    /// Ends the host (SIGKILL if needed), releases what it had of the
    /// device, and cancels what it had accepted (the disk keeps it for the
    /// next driver while it is being recovered).
    /// `grace`: seconds a host that is ending by itself (it detached) gets
    /// to exit before it is killed.
    @discardableResult
    func end(grace: Double = 0) -> Int32? {
        state.withLock { $0.leaving = true }
        line.shutDown()
        var status: Int32 = 0
        // A host that already ended keeps its own status; else it is killed.
        var waited = waitpid(pid, &status, WNOHANG)
        let deadline = Date(timeIntervalSinceNow: grace)
        while waited == 0 && Date() < deadline {
            usleep(1000)
            waited = waitpid(pid, &status, WNOHANG)
        }
        if waited == 0 {
            kill(pid, SIGKILL)
            waited = waitpid(pid, &status, 0)
        }
        let (flights, hooks, regions, maps) = state.withLock { s -> ([InFlight], [Int], [DMARegion], [UInt64: [Int]]) in
            defer {
                s.inFlight.removeAll()
                s.dma.removeAll()
                s.maps.removeAll()
            }
            return (Array(s.inFlight.values), Array(s.hooks.keys), Array(s.dma.values), s.maps)
        }
        for index in hooks {
            device.unhookInterrupt(index: index)
            if let doorbell = state.withLock({ $0.hooks.removeValue(forKey: index) }) { _ = close(doorbell) }
        }
        for region in regions { device.dmaFree(region) }
        // Mappings the driver left: the device loses them with its driver.
        for (address, lengths) in maps {
            for length in lengths { device.dmaUnmap(DMARegion(cpu: platform.memory.base, deviceAddress: address, length: length)) }
        }
        kernel?.blockLayer.release(disk: self, log: log)
        releaseEntropy()
        releaseSerial()
        releaseNet()
        for flight in flights { finish(flight, .canceled) }
        return waited == pid ? status : nil
    }

    /// Adopts what `make` builds as the one class object of its kind the
    /// host has registered (a second is refused: a device registers one of
    /// each class, which the host also checks).
    private func register<Object: Sendable>(_ slot: WritableKeyPath<State, Object?>, _ make: () throws(OyStatus) -> Object) throws(OyStatus) {
        guard state.withLock({ $0[keyPath: slot] == nil }) else { throw .notSupported }
        let made = try make()
        state.withLock { $0[keyPath: slot] = made }
    }

    /// Takes the class object of a kind back, if the host had registered one.
    private func withdraw<Object: Sendable>(_ slot: WritableKeyPath<State, Object?>) -> Object? {
        state.withLock { s in
            defer { s[keyPath: slot] = nil }
            return s[keyPath: slot]
        }
    }

    private func releaseEntropy() {
        if let source = withdraw(\.entropy) { kernel?.entropy.release(source: source) }
    }

    private func releaseNet() {
        guard let net = withdraw(\.net) else { return }
        kernel?.network.release(netdev: net.binding)
        net.binding.close()
    }

    private func releaseSerial() {
        if let serial = withdraw(\.serial) { kernel?.serial.release(port: serial.binding, log: log) }
    }

    /// The host's end of the line went away. Unless the Kernel ended it, the
    /// driver died: its supervisor restarts it.
    private func lineClosed(_ reason: String) {
        let report = state.withLock { s -> Bool in
            defer { s.leaving = true }  // reported once
            return !s.leaving && s.attached
        }
        guard report else { return }
        // Its NIC, port or entropy source waits for the restarted driver
        // from now on, not from when the supervisor gets to it.
        kernel?.parkDevices(at: slot.address)
        // The line closes as the process ends; its status follows (a crash
        // report being written first can take a moment).
        var status: Int32 = 0, waited: pid_t = 0
        let deadline = Date(timeIntervalSinceNow: 5)
        while waited == 0 && Date() < deadline {
            waited = waitpid(pid, &status, WNOHANG)
            if waited == 0 { usleep(2000) }
        }
        let how = waited == pid ? Self.describe(status) : reason
        state.withLock { $0.ended = how }
        log.record(.error, "kernel", "\(label) ended: \(how)")
        guard let kernel else { return }
        let address = slot.address
        Thread.detachNewThread {
            if kernel.supervisor.recover(address, cause: "its driver host ended (\(how))") == nil, !kernel.supervisor.isRecovering(address) {
                kernel.unparkDevices(at: address, failure: "its driver host ended (\(how)) and could not be restarted")
            }
        }
    }

    static func describe(_ status: Int32) -> String {
        let signal = status & 0x7F
        if signal == 0 { return "exit status \((status >> 8) & 0xFF)" }
        return "killed by signal \(signal)" + (signal == SIGSEGV ? " (SIGSEGV)" : signal == SIGKILL ? " (SIGKILL)" : signal == SIGABRT ? " (SIGABRT)" : "")
    }
}

enum SharedPage {
    static let size = PhysicalMemory.pageSize
}
