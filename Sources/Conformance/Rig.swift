import Devices
import DriverHost
import Foundation
import Kernel
import Machine
import Synchronization
import VirtualizationStack

/// The far end of a NIC under test: records what the driver transmits and
/// injects frames for it to receive.
final class FrameRecorder: Wire, @unchecked Sendable {
    // @unchecked Sendable: guarded by `condition`.
    private let condition = NSCondition()
    private var frames: [[UInt8]] = []
    weak var nic: E1KLite?

    func send(_ frame: [UInt8], from end: any WireEnd) {
        condition.lock()
        frames.append(frame)
        condition.broadcast()
        condition.unlock()
    }

    /// Frames sent so far, waiting until there are `count` (or `timeout`).
    func wait(count: Int, timeout: Double = 5) -> [[UInt8]] {
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        defer { condition.unlock() }
        while frames.count < count && condition.wait(until: deadline) {}
        return frames
    }

    func inject(_ frame: [UInt8]) { nic?.deliver(frame) }
}

/// A fresh machine for one check, in one environment, with the devices the
/// driver under test binds to (two of each when asked), its kernel booted
/// without drivers, and the driver loaded but not attached.
final class Rig: @unchecked Sendable {
    // @unchecked Sendable: used from the check's thread and completion
    // callbacks that only touch thread-safe members.
    let environment: SuiteEnvironment
    let machine: Machine
    let root: RootPartition?
    let kernel: Kernel
    let file: DriverFile
    let state: String
    private(set) var library: DriverLibrary!
    private(set) var slots: [BusSlot] = []
    private(set) var nvmes: [NVMeLite] = []
    private(set) var nics: [(E1KLite, FrameRecorder)] = []
    private(set) var uarts: [(UART16550, SerialLog)] = []
    private(set) var rngs: [RNGLite] = []
    /// Raise each attached device's interrupts with nothing to report.
    private let spuriousInterrupts: Bool
    private let storms = Mutex<[Repeating]>([])

    var deviceClass: String { file.metadata.deviceClass }

    /// The nvmelite disk a rig gives a block driver.
    struct DiskShape: Sendable {
        /// A volatile write cache that a power cut empties (`NVMeLite.powerCut`).
        var writeCache = false
        /// Bytes. The image is sparse: a disk past 2 TiB (LBAs over 32 bits)
        /// costs nothing until written.
        var size: UInt64 = 8 << 20
    }

    init(_ context: CheckContext, copies: Int = 1, load: Bool = true, disk shape: DiskShape = DiskShape()) throws {
        environment = context.environment
        spuriousInterrupts = context.spuriousInterrupts
        file = try DriverFile.inspect(path: context.driverPath)
        state = FileManager.default.temporaryDirectory.appendingPathComponent("oyako-conf-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        machine = try Machine(configuration: .init(memorySize: environment == .root ? 160 << 20 : 64 << 20))
        let metadata = file.metadata
        let wanted = Set(Self.offeredDevices.filter { metadata.matches(vendorID: $0.vendorID, deviceID: $0.deviceID) }.map(\.deviceID))
        for copy in 0..<copies {
            if wanted.contains(NVMeLite.deviceID) {
                let nvme = NVMeLite(disk: try DiskImage(path: "\(state)/disk\(copy).img", size: shape.size), writeCache: shape.writeCache)
                nvmes.append(nvme)
                slots.append(machine.bus.plug(nvme))
            }
            if wanted.contains(E1KLite.deviceID) {
                let nic = E1KLite(mac: [0x02, 0x0A, 0x7A, 0xC0, 0, UInt8(copy + 1)])
                let recorder = FrameRecorder()
                recorder.nic = nic
                nic.wire = recorder
                nic.setCarrier(true)
                nics.append((nic, recorder))
                slots.append(machine.bus.plug(nic))
            }
            if wanted.contains(UART16550.deviceID) {
                let uart = UART16550()
                let log = SerialLog()
                uart.connect(log)
                uarts.append((uart, log))
                slots.append(machine.bus.plug(uart))
            }
            if wanted.contains(RNGLite.deviceID) {
                let rng = RNGLite()
                rngs.append(rng)
                slots.append(machine.bus.plug(rng))
            }
        }
        if environment == .root {
            let root = try RootPartition(machine: machine, memory: 64 << 20)
            self.root = root
            kernel = Kernel(platform: root.platform, driverPaths: [], logLevel: .error)
        } else {
            root = nil
            kernel = Kernel(platform: BarePlatform(machine: machine), driverPaths: [], logLevel: .error)
        }
        // The suite judges the driver as it is: no restart of one that
        // seems hung may hide what a check is watching for (lost requests).
        // lifecycle.restart restarts it itself.
        kernel.supervisor.policy.hangTimeout = .seconds(86_400)
        _ = kernel.boot()
        if load { library = try kernel.loadDriver(path: context.driverPath) }
    }

    /// What the devices' world does on its own, once: each NIC's link
    /// partner drops and raises the link and sends frames to it (broadcast,
    /// unicast, multicast), each UART's far end sends bytes, each entropy
    /// source runs dry and gives again. A device its driver left running
    /// answers with DMA and interrupts; a quiet one with neither.
    func worldGoesOn(round: Int) {
        for (nic, _) in nics {
            if round % 8 == 0 {
                nic.setCarrier(false)
                nic.setCarrier(true)
            }
            let payload = [0x88, 0xB5] + [UInt8](repeating: UInt8(truncatingIfNeeded: round), count: 100)
            nic.deliver([UInt8](repeating: 0xFF, count: 6) + [0x02, 0, 0, 0, 0, 9] + payload)
            nic.deliver(nic.mac + [0x02, 0, 0, 0, 0, 9] + payload)
            nic.deliver([0x01, 0x00, 0x5E, 0, 0, 1] + [0x02, 0, 0, 0, 0, 9] + payload)
        }
        for (uart, _) in uarts { uart.send([UInt8](repeating: 0x5A, count: 8)) }
        if round % 8 == 0 {
            for rng in rngs {
                rng.exhaust(true)
                rng.exhaust(false)
            }
        }
    }

    /// The devices a check can plug in for a driver, by the IDs it binds.
    static let offeredDevices: [(name: String, vendorID: UInt16, deviceID: UInt16, what: String)] = [
        ("nvmelite", NVMeLite.vendorID, NVMeLite.deviceID, "NVMe-style storage, oyako.block/1"),
        ("e1klite", E1KLite.vendorID, E1KLite.deviceID, "Ethernet, oyako.net/1"),
        ("uart16550", UART16550.vendorID, UART16550.deviceID, "16550A serial port, oyako.serial/1"),
        ("rnglite", RNGLite.vendorID, RNGLite.deviceID, "entropy source"),
    ]

    /// Attaches the driver to the `index`th device it binds.
    func attach(_ index: Int = 0) throws -> DriverInstance {
        guard index < slots.count else {
            let offered = Self.offeredDevices.map { "\($0.name) \(String(format: "%04x:%04x", $0.vendorID, $0.deviceID)) (\($0.what), SDK/datasheets/\($0.name).md)" }
            throw CheckFailure("the driver binds none of the devices the suite offers: \(offered.joined(separator: "; ")); its metadata lists \(file.metadata.deviceIDs.map(\.description).joined(separator: ", "))")
        }
        let instance: DriverInstance
        do {
            instance = try kernel.attach(library, to: slots[index])
        } catch {
            throw CheckFailure("attach failed: \(error)")
        }
        if spuriousInterrupts {
            // After every register write (a doorbell's command is then
            // still with the device), and every 0.05 ms (or as often as the
            // timer allows): more interrupts than the device's own, most
            // with nothing new.
            let slot = slots[index]
            slot.interruptAfterEveryWrite(true)
            storms.withLock { $0.append(Repeating(named: "spurious irq", every: 50) { _ in (0..<slot.device.interruptCount).forEach(slot.raiseInterrupt) }) }
        }
        return instance
    }

    /// Waits until `bytes` appear in the line log, contiguous and in order,
    /// after position `start` (the kernel's console lines share the port,
    /// between writes but never inside one).
    static func awaitRun(_ bytes: [UInt8], in log: SerialLog, after start: Int, timeout: Double) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        repeat {
            let seen = Array(log.contents.dropFirst(start))
            if seen.count >= bytes.count {
                for i in 0...(seen.count - bytes.count) where seen[i] == bytes[0] && Array(seen[i..<(i + bytes.count)]) == bytes { return true }
            }
            Thread.sleep(forTimeInterval: 0.005)
        } while Date() < deadline
        return false
    }

    /// Runs `written` (which writes `bytes` to the port) and measures the
    /// line rate at the far end: bytes per second from the run's first byte
    /// on the line to its last. nil when the bytes never appear there as one
    /// run in order.
    static func lineRate(of bytes: [UInt8], written: () -> Void, log: SerialLog, timeout: Double) -> Double? {
        let before = log.contents.count
        written()
        let deadline = Date(timeIntervalSinceNow: timeout)
        repeat {
            let seen = Array(log.waitFor(log.contents.count + 1, timeout: 0.2).dropFirst(before))
            if seen.count >= bytes.count {
                for i in 0...(seen.count - bytes.count) where seen[i] == bytes[0] && Array(seen[i..<(i + bytes.count)]) == bytes {
                    guard let first = log.arrivalTime(ofByteAt: before + i), let last = log.arrivalTime(ofByteAt: before + i + bytes.count - 1), last > first else { return nil }
                    return Double(bytes.count - 1) / (Double(last - first) / 1e9)
                }
            }
        } while Date() < deadline
        return nil
    }

    /// Attaches and detaches under an injected fault: passes when attach
    /// works anyway (`ifAttached`) or fails without leaking; fails when a
    /// failed attach left anything behind (`leakContext` says under what).
    func attachMayFailCleanly(ifAttached: String, leakContext: String) throws -> CheckOutcome {
        do {
            try kernel.attach(library, to: slots[0]).detach()
            return .passed(ifAttached)
        } catch let error as AttachError {
            if !error.leaked.isEmpty { return .failed("attach leaked \(error.leaked.joined(separator: ", ")) \(leakContext)") }
            return .passed("attach failed cleanly with \(error.status.name ?? "\(error.status.rawValue)")")
        }
    }

    func shutdown() {
        storms.withLock { $0.forEach { $0.stop() } }
        kernel.shutdown()
        root?.shutdown()
        machine.shutdown()
        try? FileManager.default.removeItem(atPath: state)
    }

    deinit { try? FileManager.default.removeItem(atPath: state) }

    // MARK: Class-specific I/O used by several checks

    /// What `exerciseIO` verified, per class, in words for a verdict.
    static let burstDescription: [String: String] = [
        RegisteredDisk.classID: "wrote 1, 8 and 64 blocks and read each back the same",
        RegisteredNetdev.classID: "a 114-byte frame reached the wire intact",
        RegisteredSerialPort.classID: "64 bytes reached the line as one run, in order",
        RegisteredRNG.classID: "256 bytes of entropy read",
    ]

    /// Runs a short, verified burst of the driver's class of I/O. Returns an
    /// observation string; throws with what went wrong.
    func exerciseIO(seed: UInt64 = 1) throws -> String {
        switch deviceClass {
        case "oyako.block/1":
            guard let disk = kernel.blockLayer.disks.first else { throw CheckFailure("the driver registered no disk") }
            var digest: UInt64 = 0
            for (i, blocks) in [1, 8, 64].enumerated() {
                let lba = UInt64(i * 97 + 3)
                let data = (0..<(blocks * disk.geometry.blockSize)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ i) }
                do {
                    try disk.write(lba: lba, bytes: data)
                    let back = try disk.read(lba: lba, count: data.count)
                    guard back == data else { throw CheckFailure("read back differs from what was written at LBA \(lba) (\(blocks) blocks)") }
                    digest = digest &* 31 &+ UInt64(back.reduce(0) { $0 &+ UInt64($1) })
                } catch let error as BlockError {
                    throw CheckFailure("block I/O failed: \(error)")
                }
            }
            return "block:\(digest)"
        case "oyako.net/1":
            guard let interface = kernel.network.interfaces.first, let (_, recorder) = nics.first else { throw CheckFailure("the driver registered no interface") }
            let before = recorder.wait(count: 0, timeout: 0).count
            let frame = [UInt8](repeating: 0xFF, count: 6) + interface.mac + [0x88, 0xB5] + (0..<100).map { UInt8(truncatingIfNeeded: $0 &+ Int(seed)) }
            guard interface.send(frame) else { throw CheckFailure("transmit refused a valid 114-byte frame") }
            let sent = recorder.wait(count: before + 1)
            guard sent.count > before, Array(sent[before].prefix(frame.count)) == frame else { throw CheckFailure("the frame did not reach the wire intact") }
            return "net:\(frame.count)"
        case "oyako.serial/1":
            guard let tty = kernel.serial.ports.first, let (uart, log) = uarts.first else { throw CheckFailure("the driver registered no port") }
            let before = log.contents.count, droppedBefore = uart.statistics.transmitDropped
            let bytes = (0..<64).map { UInt8(truncatingIfNeeded: $0 &+ Int(seed)) }
            tty.write(bytes)
            guard Self.awaitRun(bytes, in: log, after: before, timeout: 5) else {
                throw CheckFailure("the 64 bytes written never reached the line as one run in order" + Catalogue.droppedOutput(uart, since: droppedBefore))
            }
            return "serial:\(bytes.count)"
        case "oyako.rng/1":
            let bytes: [UInt8]
            do {
                bytes = try kernel.entropy.read(256)
            } catch .starved(_, 0, _) {
                throw CheckFailure("reading 256 bytes of entropy got none in 5 s: every read returned OY_OK with *produced 0; "
                    + "give the bytes the device has, waiting up to 100 ms for the first word (SDK/CLASSES.md, Entropy)")
            } catch {
                throw CheckFailure("reading 256 bytes of entropy failed: \(error)")
            }
            guard bytes.contains(where: { $0 != 0 }) else { throw CheckFailure("256 bytes of entropy were all zero: the driver did not fill the buffer") }
            return "rng:\(bytes.count)"
        default:
            return "none"
        }
    }
}
