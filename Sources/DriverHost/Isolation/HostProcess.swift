import CSystemShims
import Foundation
import Glibc
import Synchronization

/// A driver-host process: one driver file serving one device for the
/// Kernel in another process, over the line on its standard input. The
/// driver gets the same host-services table as in process; its device (the
/// registers, config space, DMA mappings, interrupts) stays the Kernel's and
/// is reached over the line, and the OS's memory it does I/O on is the
/// machine's memory file, mapped here at the same physical offsets. A crash
/// of the driver ends this process only; the Kernel notices and restarts it.
public enum DriverHostProcess {
    /// What a driver host may hold in private memory (RLIMIT_DATA; the
    /// machine's memory it maps is shared and does not count). A host
    /// needs about 40 MiB; a driver that leaks mem_alloc blocks gets NULL
    /// past this, in its own host, instead of growing until the kernel's
    /// OOM killer picks a victim, which may be the OS or a VM.
    public static let dataLimit = 1 << 30

    /// Serves until the Kernel asks to detach or the line closes; returns
    /// the exit status.
    public static func run(socket: Int32 = 0) -> Int32 {
        limitPrivateMemory()
        return HostSide(line: HostLine(socket: socket)).run()
    }

    /// Lowers RLIMIT_DATA to `dataLimit` (never raises it). Not under a
    /// sanitizer: its shadow memory counts against the limit.
    static func limitPrivateMemory() {
        guard !Verifier.underSanitizer else { return }
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_DATA.rawValue), &limit) == 0, limit.rlim_cur > rlim_t(dataLimit) else { return }
        limit.rlim_cur = rlim_t(dataLimit)
        _ = setrlimit(__rlimit_resource_t(RLIMIT_DATA.rawValue), &limit)
    }
}

/// The OS's memory, mapped from the machine's memory file at the same
/// offsets as the OS's physical addresses, page runs as the Kernel shares them.
final class SharedMemory: @unchecked Sendable {
    // @unchecked Sendable: `mapped` is guarded by its Mutex; the rest is fixed.
    let base: UnsafeMutableRawPointer
    let size: Int
    let file: Int32
    private let mapped = Mutex(Set<UInt64>())
    static let page = 4096

    init(file: Int32, size: Int) throws(OyStatus) {
        guard let base = mmap(nil, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), base != MAP_FAILED else { throw .noMemory }
        self.base = base
        self.size = size
        self.file = file
    }

    /// Maps [physical, +length), which lies at `runs` of the machine's memory.
    func map(physical: UInt64, runs: [(offset: UInt64, length: Int)]) throws(OyStatus) {
        var at = physical
        for run in runs {
            guard at % UInt64(Self.page) == 0, run.offset % UInt64(Self.page) == 0, run.length % Self.page == 0,
                at + UInt64(run.length) <= UInt64(size)
            else { throw .invalid }
            let fresh = mapped.withLock { set in (0..<(run.length / Self.page)).contains { !set.contains(at / UInt64(Self.page) + UInt64($0)) } }
            if fresh {
                guard let result = mmap(base + Int(at), run.length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, file, off_t(run.offset)), result != MAP_FAILED else {
                    throw .noMemory
                }
                mapped.withLock { set in for i in 0..<(run.length / Self.page) { set.insert(at / UInt64(Self.page) + UInt64(i)) } }
            }
            at += UInt64(run.length)
        }
    }

    /// The physical address of `length` bytes at `pointer`, when they are the OS's shared memory.
    func physical(of pointer: UnsafeRawPointer, length: Int) -> UInt64? {
        let offset = pointer - UnsafeRawPointer(base)
        guard offset >= 0, length >= 0, offset + length <= size else { return nil }
        let first = UInt64(offset / Self.page), last = UInt64((offset + max(length, 1) - 1) / Self.page)
        return mapped.withLock { set in (first...last).allSatisfy(set.contains) } ? UInt64(offset) : nil
    }
}

/// The device as the driver sees it here: every access goes to the Kernel,
/// which checks it against the real device as it does in process.
final class RemoteDevice: HostDevice, @unchecked Sendable {
    // @unchecked Sendable: `hooks` is guarded by its Mutex; the rest is fixed.
    let info: HostDeviceInfo
    private let line: HostLine
    private let memory: SharedMemory
    private let hooks = Mutex<[Int: (fd: Int32, stop: Int32, thread: DispatchGroup)]>([:])
    /// Request data the Kernel already mapped for the device, by tag:
    /// (physical, length, device address). The driver's dma_map of it is
    /// answered here; the Kernel unmaps it when the request completes.
    let premapped = Mutex<[UInt64: (physical: UInt64, length: Int, deviceAddress: UInt64)]>([:])

    private func premapping(_ physical: UInt64, _ length: Int) -> UInt64? {
        premapped.withLock { table in
            table.values.first { physical >= $0.physical && physical + UInt64(length) <= $0.physical + UInt64($0.length) }
                .map { $0.deviceAddress + (physical - $0.physical) }
        }
    }

    /// Runs each call of the driver's interrupt handler (the host batches
    /// what the handler completes into one message).
    private let aroundInterrupt: @Sendable (() -> Void) -> Void

    init(info: HostDeviceInfo, line: HostLine, memory: SharedMemory, aroundInterrupt: @escaping @Sendable (() -> Void) -> Void = { $0() }) {
        self.info = info
        self.line = line
        self.memory = memory
        self.aroundInterrupt = aroundInterrupt
    }

    private func status(_ reply: (WireReader, [Int32])) throws(OyStatus) -> WireReader {
        var body = reply.0
        for fd in reply.1 { _ = close(fd) }
        let code = (try? body.i32()) ?? OyStatus.deviceGone.rawValue
        guard code == 0 else { throw OyStatus(code) }
        return body
    }

    /// A call to the Kernel and its answer. The whole exchange is the OS
    /// serving the driver, so its CPU time is booked as the OS's, not the
    /// driver callback's (CallbackBudget): out of process only the driver's
    /// own code counts against its budgets.
    private func call(_ kind: HostMessage, _ fill: (inout WireWriter) -> Void) throws(OyStatus) -> WireReader {
        try CallbackBudget.inOS { () throws(OyStatus) -> WireReader in
            var body = WireWriter()
            fill(&body)
            let reply: (WireReader, [Int32])
            do {
                reply = try line.call(kind, body)
            } catch {
                throw .deviceGone
            }
            return try status(reply)
        }
    }

    /// A posted message (booked as the OS's time, as a call is).
    private func post(_ kind: HostMessage, _ fill: (inout WireWriter) -> Void) {
        CallbackBudget.inOS {
            var body = WireWriter()
            fill(&body)
            _ = line.post(kind, body)
        }
    }

    func configRead(offset: UInt32, width: Int) throws(OyStatus) -> UInt32 {
        var reply = try call(.configRead) { $0.u32(offset); $0.u32(UInt32(width)) }
        return (try? reply.u32()) ?? .max
    }

    func configWrite(offset: UInt32, width: Int, value: UInt32) throws(OyStatus) {
        _ = try call(.configWrite) { $0.u32(offset); $0.u32(UInt32(width)); $0.u32(value) }
    }

    func mmioRead(bar: Int, offset: UInt64, width: Int) -> UInt64 {
        // A line gone reads as a device gone: all ones.
        guard var reply = try? call(.mmioRead, { $0.u32(UInt32(bar)); $0.u64(offset); $0.u32(UInt32(width)) }) else { return .max }
        return (try? reply.u64()) ?? .max
    }

    func mmioWrite(bar: Int, offset: UInt64, width: Int, value: UInt64) {
        // Posted, as on PCIe; the line keeps the order.
        post(.mmioWrite) { $0.u32(UInt32(bar)); $0.u64(offset); $0.u32(UInt32(width)); $0.u64(value) }
    }

    func portRead(bar: Int, port: UInt32) -> UInt8 {
        guard var reply = try? call(.portRead, { $0.u32(UInt32(bar)); $0.u32(port) }) else { return 0xFF }
        return UInt8(truncatingIfNeeded: (try? reply.u32()) ?? 0xFF)
    }

    func portWrite(bar: Int, port: UInt32, value: UInt8) {
        post(.portWrite) { $0.u32(UInt32(bar)); $0.u32(port); $0.u32(UInt32(value)) }
    }

    func dmaAllocate(size: Int) throws(OyStatus) -> DMARegion {
        var reply = try call(.dmaAllocate) { $0.u64(UInt64(size)) }
        guard let deviceAddress = try? reply.u64(), let physical = try? reply.u64(), let runs = try? reply.runs() else { throw .deviceGone }
        try memory.map(physical: physical, runs: runs)
        return DMARegion(cpu: memory.base + Int(physical), deviceAddress: deviceAddress, length: size)
    }

    func dmaFree(_ region: DMARegion) {
        _ = try? call(.dmaFree) { $0.u64(region.deviceAddress) }
    }

    func dmaMap(_ pointer: UnsafeMutableRawPointer, length: Int, direction: DMADirection) throws(OyStatus) -> DMARegion {
        // Out of process only the OS's memory is shared with the device's
        // side: a request's data or a dma_alloc buffer, never the driver's own heap.
        guard let physical = memory.physical(of: pointer, length: length) else { throw .invalid }
        if let deviceAddress = premapping(physical, length) { return DMARegion(cpu: pointer, deviceAddress: deviceAddress, length: length) }
        var reply = try call(.dmaMap) { $0.u64(physical); $0.u64(UInt64(length)); $0.u32(direction.rawValue) }
        guard let deviceAddress = try? reply.u64() else { throw .deviceGone }
        return DMARegion(cpu: pointer, deviceAddress: deviceAddress, length: length)
    }

    func dmaUnmap(_ region: DMARegion) {
        if let physical = memory.physical(of: region.cpu, length: region.length), premapping(physical, region.length) == region.deviceAddress { return }
        post(.dmaUnmap) { $0.u64(region.deviceAddress); $0.u64(UInt64(region.length)) }
    }

    func hookInterrupt(index: Int, handler: @escaping @Sendable () -> Void) throws(OyStatus) {
        let (reply, fds) = try hookCall(index)
        _ = reply
        guard let fd = fds.first else { throw .deviceGone }
        let stop = oy_shim_eventfd()
        let running = DispatchGroup()
        running.enter()
        let aroundInterrupt = self.aroundInterrupt
        Thread.detachNewThread {
            defer { running.leave() }
            var polls = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
            while true {
                if poll(&polls, 2, -1) < 0 { if errno == EINTR { continue } else { return } }
                if polls[1].revents != 0 { return }
                var count: UInt64 = 0
                if read(fd, &count, 8) == 8 { aroundInterrupt(handler) }
            }
        }
        hooks.withLock { $0[index] = (fd, stop, running) }
    }

    private func hookCall(_ index: Int) throws(OyStatus) -> (WireReader, [Int32]) {
        var body = WireWriter()
        body.u32(UInt32(index))
        let reply: (WireReader, [Int32])
        do {
            reply = try CallbackBudget.inOS { () throws(HostLine.Closed) in try line.call(.hookInterrupt, body) }
        } catch {
            throw .deviceGone
        }
        var fields = reply.0
        let code = (try? fields.i32()) ?? OyStatus.deviceGone.rawValue
        guard code == 0 else {
            for fd in reply.1 { _ = close(fd) }
            throw OyStatus(code)
        }
        return (fields, reply.1)
    }

    func unhookInterrupt(index: Int) {
        _ = try? call(.unhookInterrupt) { $0.u32(UInt32(index)) }
        guard let hook = hooks.withLock({ $0.removeValue(forKey: index) }) else { return }
        var one: UInt64 = 1
        _ = write(hook.stop, &one, 8)
        hook.thread.wait()  // a running handler has returned
        _ = close(hook.fd)
        _ = close(hook.stop)
    }

    func maskInterrupt(index: Int) {
        post(.maskInterrupt) { $0.u32(UInt32(index)) }
    }

    func unmaskInterrupt(index: Int) {
        post(.unmaskInterrupt) { $0.u32(UInt32(index)) }
    }
}

/// The host side of the Kernel's environment: logs and registrations go
/// over the line. A host serves one device, which registers at most one
/// object of each class (the host services refuse a second before it gets here).
final class RemoteEnvironment: HostEnvironment, @unchecked Sendable {
    // @unchecked Sendable: `registrations` is guarded by its Mutex.
    let name: String
    private let line: HostLine
    private let registrations = Mutex<[ClassRegistration]>([])
    /// Hand what a serial or NIC driver reports to the Kernel (the class
    /// objects hold their receivers weakly).
    private let serialReceiver: SerialForwarder
    private let netReceiver: NetForwarder

    init(name: String, line: HostLine) {
        self.name = name
        self.line = line
        serialReceiver = SerialForwarder(line: line)
        netReceiver = NetForwarder(line: line)
    }

    var netdev: RegisteredNetdev? { registrations.withLock { $0.lazy.compactMap { $0 as? RegisteredNetdev }.first } }
    var serialPort: RegisteredSerialPort? { registrations.withLock { $0.lazy.compactMap { $0 as? RegisteredSerialPort }.first } }
    var disk: RegisteredDisk? { registrations.withLock { $0.lazy.compactMap { $0 as? RegisteredDisk }.first } }
    var rng: RegisteredRNG? { registrations.withLock { $0.lazy.compactMap { $0 as? RegisteredRNG }.first } }

    func log(level: LogLevel, driver: String, device: String?, message: String) {
        var body = WireWriter()
        body.u32(UInt32(level.rawValue))
        body.string(message)
        line.post(.log, body)
    }

    /// The message that registers `registration` with the Kernel and the one
    /// that withdraws it; nil for a class not served out of process.
    private static func messages(for registration: ClassRegistration) -> (register: HostMessage, unregister: HostMessage, body: WireWriter)? {
        var body = WireWriter()
        switch registration {
        case let disk as RegisteredDisk:
            let g = disk.geometry
            body.u32(UInt32(g.blockSize)); body.u64(g.blockCount); body.u32(UInt32(g.maxTransferBlocks)); body.u32(UInt32(g.queueDepth))
            body.u32(g.canFlush ? 1 : 0)
            return (.registerDisk, .unregisterDisk, body)
        case is RegisteredRNG:
            return (.registerRNG, .unregisterRNG, body)
        case let port as RegisteredSerialPort:
            body.serialLine(port.line)
            return (.registerSerial, .unregisterSerial, body)
        case let netdev as RegisteredNetdev:
            netdev.mac.withUnsafeBytes { body.data($0) }
            body.u32(UInt32(netdev.mtu)); body.u32(UInt32(netdev.maxFrame)); body.u32(UInt32(netdev.queueDepth)); body.u32(netdev.linkUp ? 1 : 0)
            return (.registerNetdev, .unregisterNetdev, body)
        default:
            return nil
        }
    }

    func registered(_ registration: ClassRegistration, device: any HostDevice) throws(OyStatus) {
        guard let messages = Self.messages(for: registration) else { throw .notSupported }
        guard var reply = try? line.call(messages.register, messages.body).0 else { throw .deviceGone }
        let code = (try? reply.i32()) ?? OyStatus.deviceGone.rawValue
        guard code == 0 else { throw OyStatus(code) }
        registrations.withLock { $0.append(registration) }
        (registration as? RegisteredSerialPort)?.receiver = serialReceiver
        (registration as? RegisteredNetdev)?.receiver = netReceiver
    }

    func unregistered(_ registration: ClassRegistration) {
        let known = registrations.withLock { all -> Bool in
            guard let index = all.firstIndex(where: { $0 === registration }) else { return false }
            all.remove(at: index)
            return true
        }
        guard known, let messages = Self.messages(for: registration) else { return }
        _ = try? line.call(messages.unregister)
    }
}

/// A serial driver's reports (input, room for output, lost input), posted
/// to the Kernel in the order the driver made them.
final class SerialForwarder: SerialReceiver {
    private let line: HostLine

    init(line: HostLine) { self.line = line }

    func received(_ bytes: UnsafeRawBufferPointer, on port: RegisteredSerialPort) {
        // Large input goes in pieces a message holds.
        var at = 0
        while at < bytes.count {
            let piece = min(bytes.count - at, HostSide.largestDataReply)
            var body = WireWriter()
            body.data(UnsafeRawBufferPointer(rebasing: bytes[at..<(at + piece)]))
            CallbackBudget.inOS { _ = line.post(.serialReceived, body) }
            at += piece
        }
    }

    func transmitReady(on port: RegisteredSerialPort) { CallbackBudget.inOS { _ = line.post(.serialReady) } }

    func lost(_ count: Int, on port: RegisteredSerialPort) {
        var body = WireWriter()
        body.u64(UInt64(count))
        CallbackBudget.inOS { _ = line.post(.serialLost, body) }
    }
}

/// A NIC driver's reports (frames received, link changes), posted to the
/// Kernel in the order the driver made them.
final class NetForwarder: NetReceiver {
    private let line: HostLine

    init(line: HostLine) { self.line = line }

    func received(_ frame: UnsafeRawBufferPointer, on netdev: RegisteredNetdev) {
        var body = WireWriter()
        body.data(UnsafeRawBufferPointer(rebasing: frame.prefix(HostSide.largestDataReply)))
        CallbackBudget.inOS { _ = line.post(.netReceived, body) }
    }

    func linkChanged(up: Bool, on netdev: RegisteredNetdev) {
        var body = WireWriter()
        body.u32(up ? 1 : 0)
        CallbackBudget.inOS { _ = line.post(.netLink, body) }
    }
}

/// Runs the Kernel's requests one at a time, off the line's reader thread
/// (the driver's calls into the device need that thread for their replies).
final class HostSide: @unchecked Sendable {
    // @unchecked Sendable: the driver state is touched only on `requests`; `inFlight` is guarded by its Mutex.
    let line: HostLine
    private let requests = DispatchQueue(label: "oyako.driver-host")
    /// Messages the reader took off the line for `requests`, and whether a
    /// drain of them is queued or running there.
    private let mailbox = Mutex<(pending: [HostLine.Incoming], draining: Bool)>(([], false))
    private let ended = DispatchSemaphore(value: 0)
    private var environment: RemoteEnvironment?
    private var library: DriverLibrary?
    private var instance: DriverInstance?
    private var memory: SharedMemory?
    private var device: RemoteDevice?
    private let inFlight = Mutex<[UInt64: BlockRequest]>([:])
    private let backlog = Mutex(Backlog())
    /// Frames and requests lent to the driver, reused after quarantine
    /// (as the OS's own are): a late write lands in a retired one.
    private let spareFrames = QuarantinePool { NetFrame() }
    private let spareRequests = QuarantinePool { BlockRequest() }

    init(line: HostLine) { self.line = line }

    func run() -> Int32 {
        let line = self.line
        ViolationLog.forwardEntries { entry in
            var body = WireWriter()
            body.u32(entry.severity.wireValue)
            body.string(entry.driver ?? ""); body.string(entry.callback ?? ""); body.string(entry.message)
            line.post(.violation, body)
        }
        line.start(received: { [self] messages in
            // On the reader thread, not behind a driver call that may never return.
            let queued = messages.filter { message in
                switch HostMessage(rawValue: message.kind) {
                case .reportHangs: _ = oy_shim_report_hangs()
                case .whereStuck: Self.answerWhereStuck(message, on: line)
                default: return true
                }
                return false
            }
            guard !queued.isEmpty else { return }
            // Into the mailbox; the queue is woken only when it is not
            // already draining it, and then takes all that waits at once.
            let wake = mailbox.withLock { m -> Bool in
                m.pending += queued
                defer { m.draining = true }
                return !m.draining
            }
            if wake { requests.async { self.drainMailbox() } }
        }, closed: { [ended] _ in ended.signal() })
        ended.wait()
        return 0
    }

    /// The hang reports of the threads inside driver callbacks, collected
    /// into a memfd (writes from a signal handler must not block) and sent
    /// back as they are.
    private static func answerWhereStuck(_ message: HostLine.Incoming, on line: HostLine) {
        for fd in message.fds { _ = close(fd) }
        var body = message.body
        let since = Duration.nanoseconds(Int64(clamping: (try? body.u64()) ?? 0))
        var reply = WireWriter()
        DriverFault.collectHangReports(since: since, limit: HostMessage.maxSize - 64).withUnsafeBytes { reply.data($0) }
        line.reply(to: message, reply)
    }

    /// Handles what the reader put in the mailbox, oldest first, until it
    /// is empty. [requests]
    private func drainMailbox() {
        while let messages = mailbox.withLock({ m -> [HostLine.Incoming]? in
            guard !m.pending.isEmpty else {
                m.draining = false
                return nil
            }
            defer { m.pending.removeAll(keepingCapacity: true) }
            return m.pending
        }) {
            handle(messages)
        }
    }

    /// What the Kernel sent, in order. A run of
    /// submits (and transmits) is one batch: the driver's doorbell writes
    /// and what it completes at once go back as one message.
    private func handle(_ messages: [HostLine.Incoming]) {
        var next = 0
        while next < messages.count {
            guard Self.isIO(messages[next]) else {
                handle(messages[next])
                next += 1
                continue
            }
            line.batching {
                while next < messages.count, Self.isIO(messages[next]) {
                    handle(messages[next])
                    next += 1
                }
            }
        }
    }

    private static func isIO(_ message: HostLine.Incoming) -> Bool {
        message.kind == HostMessage.submit.rawValue || message.kind == HostMessage.netTransmit.rawValue
    }

    private func handle(_ message: HostLine.Incoming) {
        var message = message
        var reply = WireWriter()
        switch HostMessage(rawValue: message.kind) {
        case .attach:
            let (status, text) = attach(&message)
            reply.i32(status.rawValue)
            reply.string(text)
        case .submit, .netTransmit:
            start(HostMessage(rawValue: message.kind)!, message)  // posted: a refusal goes back as a completion
            return
        case .netSetFilter:
            if let netdev = environment?.netdev, let count = try? message.body.u32(), let macs = try? message.body.data(), let flags = try? message.body.u32(),
                macs.count == Int(count) * 6
            {
                let list = stride(from: 0, to: macs.count, by: 6).map { Array(macs[$0..<($0 + 6)]) }
                reply.i32(netdev.setFilter(list, broadcast: flags & 1 != 0, promiscuous: flags & 2 != 0).rawValue)
            } else {
                reply.i32((environment?.netdev == nil ? OyStatus.deviceGone : .invalid).rawValue)
            }
        case .netStatistics:
            if let statistics = environment?.netdev?.statistics() {
                reply.i32(0)
                for field in NetStatistics.fields { reply.u64(statistics[keyPath: field]) }
            } else {
                reply.i32((environment?.netdev == nil ? OyStatus.deviceGone : .notSupported).rawValue)
            }
        case .heartbeat:
            // Posted back from this queue: a driver call that never returns holds it.
            var alive = WireWriter()
            alive.u64((try? message.body.u64()) ?? 0)
            line.post(.alive, alive)
            return
        case .rngRead:
            readEntropy(&message, into: &reply)
        case .controlCall:
            callControl(&message, into: &reply)
        case .serialWrite:
            if let port = environment?.serialPort, let bytes = try? message.body.data() {
                switch bytes.withUnsafeBytes({ port.write($0) }) {
                case .success(let written): reply.i32(0); reply.u32(UInt32(written))
                case .failure(let status): reply.i32(status.rawValue)
                }
            } else {
                reply.i32((environment?.serialPort == nil ? OyStatus.deviceGone : .invalid).rawValue)
            }
        case .serialSetLine:
            if let port = environment?.serialPort, let settings = try? message.body.serialLine() {
                reply.i32(port.setLine(settings).rawValue)
            } else {
                reply.i32((environment?.serialPort == nil ? OyStatus.deviceGone : .invalid).rawValue)
            }
        case .detach:
            // Detach, then deinit and unload as in process: the Kernel learns
            // what either left behind. The Kernel's verifier may ask for a
            // pause after each release in it.
            let pause = Int((try? message.body.u32()) ?? 0)
            Verifier.pauseAfterRelease(microseconds: min(pause, 100_000))
            let report = instance?.detach()
            Verifier.pauseAfterRelease(microseconds: 0)
            instance = nil
            let unloaded = library?.unload()
            library = nil
            reply.i32((report?.status ?? .state).rawValue)
            reply.u32(UInt32(report?.unfinishedRequests ?? 0))
            let leaked = (report?.leaked ?? []) + (unloaded?.leaked ?? []).map { "\($0) (after deinit)" }
            reply.u32(UInt32(leaked.count))
            for item in leaked { reply.string(item) }
            line.reply(to: message, reply)
            line.shutDown()
            return
        default:
            for fd in message.fds { _ = close(fd) }
            reply.i32(OyStatus.invalid.rawValue)
        }
        line.reply(to: message, reply)
    }

    private func attach(_ message: inout HostLine.Incoming) -> (OyStatus, String) {
        guard instance == nil, let file = message.fds.first else { return (.state, "already attached, or no memory file") }
        do {
            let path = try message.body.string(), environmentName = try message.body.string(), ramSize = try message.body.length()
            let vendor = UInt16(try message.body.u32()), device = UInt16(try message.body.u32()), classCode = try message.body.u32()
            let revision = UInt8(try message.body.u32()), interrupts = Int(try message.body.u32()), location = try message.body.string()
            if try message.body.u32() != 0 {
                Verifier.enable(timeCallbacks: false)
                // As the verifying process's own threads do: asked (reportHangs),
                // threads inside the driver write where they are to standard
                // error, which is that process's.
                oy_shim_set_hang_reports(STDERR_FILENO, "in its driver host")
            }
            var bars: [BARKind] = []
            for _ in 0..<min(6, Int(try message.body.u32())) {
                let kind = try message.body.u32(), extent = try message.body.u64()
                bars.append(kind == 1 ? .mmio(size: extent) : kind == 2 ? .ports(count: UInt32(extent)) : .none)
            }
            let memory = try SharedMemory(file: file, size: ramSize)
            self.memory = memory
            let environment = RemoteEnvironment(name: environmentName, line: line)
            self.environment = environment
            let library = try DriverLibrary.load(path: path, environment: environment)
            self.library = library
            let info = HostDeviceInfo(vendorID: vendor, deviceID: device, classCode: classCode, revision: revision, bars: bars,
                                      interruptCount: interrupts, location: location)
            let remote = RemoteDevice(info: info, line: line, memory: memory) { [weak self] handler in
                guard let self else { return handler() }
                // What one run writes to registers and completes goes as one message.
                self.line.batching { self.batchingCompletions(handler) }
            }
            self.device = remote
            let probe = library.probe(remote)
            guard probe.isOK else { return (probe, "probe answered \(probe)") }
            instance = try library.attach(remote)
            return (.ok, "\(library.name) \(library.metadata.version) attached in process \(getpid())")
        } catch let error as AttachError {
            return (error.status, error.description)
        } catch let error as OyStatus {
            return (error, "\(error)")
        } catch {
            return (.invalid, "\(error)")
        }
    }

    /// A control method of the instance for the Kernel (a running system's
    /// `oyako driver call`): status, then the answer or why there is none.
    private func callControl(_ message: inout HostLine.Incoming, into reply: inout WireWriter) {
        guard let instance else { return reply.i32(OyStatus.state.rawValue) }
        guard let method = try? message.body.string(), let count = try? message.body.u32(), count <= 64 else { return reply.i32(OyStatus.invalid.rawValue) }
        var arguments: [String] = []
        for _ in 0..<count {
            guard let argument = try? message.body.string() else { return reply.i32(OyStatus.invalid.rawValue) }
            arguments.append(argument)
        }
        do {
            let answer = try instance.controlAnswer(method.isEmpty ? nil : method, arguments: arguments)
            reply.i32(0)
            reply.string(answer)
        } catch {
            reply.i32(OyStatus.invalid.rawValue)
            reply.string(error.message)
        }
    }

    /// Entropy for the Kernel: status, then the bytes (as many as fit a message).
    private func readEntropy(_ message: inout HostLine.Incoming, into reply: inout WireWriter) {
        guard let rng = environment?.rng else { return reply.i32(OyStatus.deviceGone.rawValue) }
        guard let asked = try? message.body.u32() else { return reply.i32(OyStatus.invalid.rawValue) }
        var buffer = [UInt8](repeating: 0, count: min(Int(asked), Self.largestDataReply))
        let result = buffer.withUnsafeMutableBytes { rng.read(into: $0) }
        switch result {
        case .failure(let status):
            reply.i32(status.rawValue)
        case .success(let produced):
            reply.i32(0)
            buffer.withUnsafeBytes { reply.data(UnsafeRawBufferPointer(rebasing: $0[..<produced])) }
        }
    }

    /// The most data (entropy, serial input) one message carries: a message less its header and fields.
    static let largestDataReply = HostMessage.maxSize - 64

    /// Posted work the driver answered busy, in the order posted, and how
    /// much posted work the driver holds: each completion of that starts
    /// the backlog again; with none, a `BusyRetry` timer does.
    private struct Backlog {
        struct Posted {
            let kind: HostMessage
            let tag: UInt64
            /// Read again from here on a retry.
            let message: HostLine.Incoming
        }
        var waiting: [Posted] = []
        var withDriver = 0
        var retry = BusyRetry()
    }

    /// Starts posted work (a disk request, a frame to send) behind any that
    /// waits; a refusal goes back as its completion. [requests]
    private func start(_ kind: HostMessage, _ message: HostLine.Incoming) {
        var message = message
        guard let tag = try? message.body.u64() else { return }
        let posted = Backlog.Posted(kind: kind, tag: tag, message: message)
        let behind = backlog.withLock { b -> Bool in
            if b.waiting.isEmpty { return false }
            b.waiting.append(posted)
            return true
        }
        if !behind { startWaiting(first: posted) }
    }

    /// Hands posted work to the driver in order, `first` and then what
    /// waits, until the driver answers busy. [requests]
    private func startWaiting(first: Backlog.Posted? = nil) {
        var next = first ?? nextWaiting()
        while let posted = next {
            backlog.withLock { $0.withDriver += 1 }
            var message = posted.message
            let status = perform(posted.kind, tag: posted.tag, &message)
            let retryIn = backlog.withLock { b -> Duration? in
                if status.isOK { b.retry.reset() }
                guard !status.isOK else { return nil }
                b.withDriver -= 1
                guard status == .busy else { return nil }
                b.waiting.insert(posted, at: 0)
                // Nothing with the driver to complete and start us again.
                return b.withDriver == 0 ? b.retry.schedule() : nil
            }
            if status == .busy {
                if let retryIn {
                    requests.asyncAfter(deadline: .now() + retryIn / .seconds(1)) { [self] in
                        backlog.withLock { $0.retry.ran() }
                        startWaiting()
                    }
                }
                return
            }
            if !status.isOK { completed(posted.kind, posted.tag, status) }
            next = nextWaiting()
        }
    }

    private func nextWaiting() -> Backlog.Posted? {
        backlog.withLock { $0.waiting.isEmpty ? nil : $0.waiting.removeFirst() }
    }

    private func perform(_ kind: HostMessage, tag: UInt64, _ message: inout HostLine.Incoming) -> OyStatus {
        kind == .netTransmit ? transmit(tag: tag, &message) : submit(tag: tag, &message)
    }

    /// Completions made while `body` runs (one run of the interrupt handler,
    /// which may reap many) go to the Kernel as one message afterwards.
    private func batchingCompletions(_ body: () -> Void) {
        let batch = CompletionBatch()
        CompletionBatch.$current.withValue(batch) { body() }
        let entries = batch.entries.withLock { $0 }
        guard !entries.isEmpty else { return }
        for chunk in stride(from: 0, to: entries.count, by: CompletionBatch.perMessage).map({ entries[$0..<min($0 + CompletionBatch.perMessage, entries.count)] }) {
            var message = WireWriter()
            message.u32(UInt32(chunk.count))
            for entry in chunk {
                message.u32(entry.kind.rawValue); message.u64(entry.tag); message.i32(entry.status.rawValue)
            }
            CallbackBudget.inOS { _ = line.post(.completions, message) }
        }
    }

    private func completed(_ kind: HostMessage, _ tag: UInt64, _ status: OyStatus) {
        device?.premapped.withLock { _ = $0.removeValue(forKey: tag) }
        if let batch = CompletionBatch.current {
            batch.entries.withLock { $0.append((kind, tag, status)) }
        } else {
            var body = WireWriter()
            body.u64(tag)
            body.i32(status.rawValue)
            CallbackBudget.inOS { _ = line.post(kind == .netTransmit ? .netTxComplete : .complete, body) }
        }
    }

    /// The driver completed posted work it had taken: what waits behind a
    /// busy answer goes to it again.
    private func driverCompleted(_ kind: HostMessage, _ tag: UInt64, _ status: OyStatus) {
        completed(kind, tag, status)
        let waiting = backlog.withLock { b -> Bool in
            b.withDriver -= 1
            return !b.waiting.isEmpty
        }
        if waiting { requests.async { [self] in line.batching { startWaiting() } } }
    }

    /// A frame to send, in the OS's memory the Kernel shares (mapped for the device already).
    private func transmit(tag: UInt64, _ message: inout HostLine.Incoming) -> OyStatus {
        guard let netdev = environment?.netdev, let memory, let device else { return .deviceGone }
        guard let physical = try? message.body.u64(), let length = try? message.body.u32(), let mapStart = try? message.body.u64(),
            let runs = try? message.body.runs(), let deviceAddress = try? message.body.u64()
        else { return .invalid }
        do {
            if !runs.isEmpty { try memory.map(physical: mapStart, runs: runs) }
        } catch {
            return error
        }
        guard memory.physical(of: memory.base + Int(physical), length: Int(length)) != nil else { return .invalid }
        device.premapped.withLock { $0[tag] = (physical, Int(length), deviceAddress) }
        let frame = spareFrames.take()
        frame.prepare(at: memory.base + Int(physical), length: Int(length)) { [self] status in
            spareFrames.give(frame)
            driverCompleted(.netTransmit, tag, status)
        }
        let status = netdev.transmit(frame)
        if !status.isOK {
            device.premapped.withLock { _ = $0.removeValue(forKey: tag) }
            spareFrames.give(frame)
        }
        return status
    }

    private func submit(tag: UInt64, _ message: inout HostLine.Incoming) -> OyStatus {
        guard let disk = environment?.disk, let memory, let device else { return .deviceGone }
        guard let op = try? message.body.u32(), let lba = try? message.body.u64(),
            let blocks = try? message.body.u32(), let physical = try? message.body.u64(), let mapStart = try? message.body.u64(),
            let runs = try? message.body.runs(), let deviceAddress = try? message.body.u64(),
            let operation = BlockRequest.Operation(rawValue: op)
        else { return .invalid }
        let length = operation == .flush ? 0 : Int(blocks) * disk.geometry.blockSize
        if length > 0 { device.premapped.withLock { $0[tag] = (physical, length, deviceAddress) } }
        do {
            if !runs.isEmpty { try memory.map(physical: mapStart, runs: runs) }
        } catch {
            return error
        }
        let request = spareRequests.take()
        inFlight.withLock { $0[tag] = request }
        request.prepare(operation, lba: lba, blockCount: Int(blocks), data: operation == .flush ? nil : memory.base + Int(physical)) { [self] status in
            inFlight.withLock { _ = $0.removeValue(forKey: tag) }
            spareRequests.give(request)
            driverCompleted(.submit, tag, status)
        }
        let status = disk.submit(request)
        if !status.isOK {
            inFlight.withLock { _ = $0.removeValue(forKey: tag) }
            spareRequests.give(request)
        }
        return status
    }
}

/// The completions one run of a driver's interrupt handler made, sent to the
/// Kernel together when it returns.
final class CompletionBatch: Sendable {
    @TaskLocal static var current: CompletionBatch?
    let entries = Mutex<[(kind: HostMessage, tag: UInt64, status: OyStatus)]>([])
    /// Entries per message: 16 bytes each, well inside a message.
    static let perMessage = 2048
}
