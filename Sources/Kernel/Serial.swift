import DriverHost
import Foundation
import Synchronization

/// What serves a serial port: the driver's registration in process
/// (`RegisteredSerialPort`), or its driver-host process's end of the line.
/// Either hands what the driver reports to the port (`SerialPort.deliver`...).
public protocol SerialDriverBinding: DriverBinding {
    var line: SerialLine { get }
    /// Queues what fits; how many bytes the driver took.
    func write(_ bytes: UnsafeRawBufferPointer) -> Result<Int, OyStatus>
    func setLine(_ line: SerialLine) -> OyStatus
}

extension RegisteredSerialPort: SerialDriverBinding {}

/// A serial port of the OS (ttyS0...): buffered output written as the
/// driver takes it, input collected in order for readers.
///
/// Output goes to the driver from this port's own transmit queue, never on
/// the thread that wrote it: a driver that logs from its own `write` while
/// holding its own lock (the console is a serial port), or that reports
/// `tx_ready` from its interrupt handler, is never called back into on that
/// thread (as Linux defers console output to a context of its own).
public final class SerialPort: SerialReceiver, ParkableDevice, @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `lock`.
    public let name: String
    public let location: String
    private var port_: any SerialDriverBinding
    /// Its driver is being restarted: output waits for the next one.
    private var awaitingDriver = false
    private let lock = NSLock()
    private var pending: [UInt8] = []
    /// A drain is queued or running on `transmitQueue`.
    private var draining = false
    /// The driver made room (tx_ready) while a drain ran.
    private var kicked = false
    private var input: [UInt8] = []
    private var lostBytes = 0
    /// Console lines dropped since the last one that fitted.
    private var consoleDropped = 0
    private var lossReportCount = 0
    private var reportedLostBytes = 0
    private var shortWriteCount = 0
    private var readyCount = 0
    private let arrived = NSCondition()
    private var inputHandler: (@Sendable ([UInt8]) -> Void)?
    private let transmitQueue: DispatchQueue

    /// Bytes kept unread before the oldest are dropped.
    public static let inputLimit = 1 << 20
    /// Console output waiting for the driver beyond which the OS's log
    /// lines are dropped, not queued: about 1.4 s at 115200 baud.
    public static let consoleBacklog = 16 << 10
    /// Marks a port's transmit queue: code running there is inside a driver's
    /// `write` for output the OS queued earlier.
    static let transmitKey = DispatchSpecificKey<ObjectIdentifier>()

    init(name: String, port: any SerialDriverBinding) {
        self.name = name
        self.location = port.location
        self.port_ = port
        transmitQueue = DispatchQueue(label: "oyako.\(name).transmit")
        transmitQueue.setSpecific(key: Self.transmitKey, value: ObjectIdentifier(port))
    }

    /// The driver serving it now.
    public var port: any SerialDriverBinding { lock.withLock { port_ } }
    public var line: SerialLine { port.line }
    var awaitsDriver: Bool { lock.withLock { awaitingDriver } }
    /// Output waits for the restarted driver (nothing of the old one's to drain).
    func awaitDriver(drainUntil: Date) { lock.withLock { awaitingDriver = true } }

    /// The restarted driver serves it: output that waited goes to it.
    func rebind(_ port: any SerialDriverBinding) {
        lock.withLock {
            port_ = port
            awaitingDriver = false
        }
        startDrain(driverMadeRoom: true)
    }
    public var lost: Int { lock.withLock { lostBytes } }
    /// How many times the driver reported lost input (`error` calls).
    public var lossReports: Int { lock.withLock { lossReportCount } }
    /// The bytes those reports said were lost, together.
    public var reportedLost: Int { lock.withLock { reportedLostBytes } }
    /// Writes the driver took only part of (or none of): each owes a `tx_ready`.
    public var shortWrites: Int { lock.withLock { shortWriteCount } }
    /// `tx_ready` calls: the driver made room after a short write.
    public var readyReports: Int { lock.withLock { readyCount } }

    /// True on a serial port's transmit queue, that is inside a serial
    /// driver's `write`.
    static var onTransmitQueue: Bool { DispatchQueue.getSpecific(key: transmitKey) != nil }

    /// Queues bytes for output; they leave as fast as the driver takes them,
    /// in order, from the port's transmit queue. [any-thread]
    public func write(_ bytes: [UInt8]) {
        lock.withLock { pending += bytes }
        startDrain(driverMadeRoom: false)
    }

    public func write(_ text: String) { write(Array(text.utf8)) }

    /// A log line for the console: dropped when `consoleBacklog` bytes
    /// already wait (a console is slow, and the log is kept elsewhere;
    /// Linux drops printk lines the same way), and the next line that fits
    /// says how many went. Output written with `write` is never dropped.
    func writeConsole(_ line: String) {
        let bytes = Array(line.utf8)
        let queued = lock.withLock { () -> Bool in
            // The notice of earlier drops counts against the backlog too.
            let notice = consoleDropped > 0 ? Array("[\(consoleDropped) console line(s) dropped: the port could not keep up]\r\n".utf8) : []
            guard pending.count + notice.count + bytes.count <= Self.consoleBacklog else {
                consoleDropped += 1
                return false
            }
            consoleDropped = 0
            pending += notice + bytes
            return true
        }
        if queued { startDrain(driverMadeRoom: false) }
    }

    /// Bytes not yet accepted by the driver.
    public var unsent: Int { lock.withLock { pending.count } }

    /// Starts a drain unless one is under way; a running drain picks up new
    /// output itself, and is told when the driver made room.
    private func startDrain(driverMadeRoom: Bool) {
        let start = lock.withLock { () -> Bool in
            if driverMadeRoom { readyCount += 1 }
            if draining {
                if driverMadeRoom { kicked = true }
                return false
            }
            draining = true
            return true
        }
        if start { transmitQueue.async { self.drain() } }
    }

    /// Feeds the driver until it has everything or takes no more; a later
    /// `transmitReady` or `write` starts the next drain.
    private func drain() {
        while true {
            let chunk = lock.withLock { () -> [UInt8] in
                kicked = false
                if pending.isEmpty { draining = false }
                return Array(pending.prefix(4096))
            }
            if chunk.isEmpty { return }
            // No lock held: the driver may call any host service from here.
            let result = chunk.withUnsafeBytes { port.write($0) }
            let more = lock.withLock { () -> Bool in
                if case .success(let n) = result, n < chunk.count { shortWriteCount += 1 }
                if case .success(let n) = result, n > 0 {
                    pending.removeFirst(n)
                    return true
                }
                // Full or failed: wait for tx_ready, unless it came meanwhile.
                if kicked { return true }
                draining = false
                return false
            }
            if !more { return }
        }
    }

    /// Also hands every received chunk to `handler` as it arrives.
    public func onInput(_ handler: (@Sendable ([UInt8]) -> Void)?) {
        lock.withLock { inputHandler = handler }
    }

    /// Takes up to `count` received bytes, waiting up to `timeout` for the first.
    public func read(_ count: Int, timeout: Double) -> [UInt8] {
        let deadline = Date(timeIntervalSinceNow: timeout)
        arrived.lock()
        defer { arrived.unlock() }
        while lock.withLock({ input.isEmpty }) {
            if !arrived.wait(until: deadline) { break }
        }
        return lock.withLock {
            let n = min(count, input.count)
            defer { input.removeFirst(n) }
            return Array(input[0..<n])
        }
    }

    public func received(_ bytes: UnsafeRawBufferPointer, on port: RegisteredSerialPort) { deliver(bytes) }
    public func transmitReady(on port: RegisteredSerialPort) { startDrain(driverMadeRoom: true) }
    public func lost(_ count: Int, on port: RegisteredSerialPort) { driverLost(count) }

    /// Bytes the driver received, in order.
    func deliver(_ bytes: UnsafeRawBufferPointer) {
        let chunk = Array(bytes)
        let handler = lock.withLock { () -> (@Sendable ([UInt8]) -> Void)? in
            input += chunk
            if input.count > Self.inputLimit {
                lostBytes += input.count - Self.inputLimit
                input.removeFirst(input.count - Self.inputLimit)
            }
            return inputHandler
        }
        arrived.lock()
        arrived.broadcast()
        arrived.unlock()
        handler?(chunk)
    }

    /// The driver has room for more output.
    func driverMadeRoom() { startDrain(driverMadeRoom: true) }

    /// The driver lost `count` received bytes (overrun).
    func driverLost(_ count: Int) {
        lock.withLock {
            lostBytes += count
            reportedLostBytes += count
            lossReportCount += 1
        }
    }
}

/// The OS's serial ports; the first is the console.
public final class SerialSubsystem: ClassSubsystem {
    private let devices = ParkableDevices<SerialPort>(prefix: "ttyS")
    let deviceClass = RegisteredSerialPort.classID

    public var ports: [SerialPort] { devices.all }
    var hasDevices: Bool { !devices.isEmpty }
    public var console: SerialPort? { ports.first }

    func adopt(_ registration: ClassRegistration, log: KernelLog) throws(OyStatus) {
        guard let registered = registration as? RegisteredSerialPort else { throw .invalid }
        let port = adopt(port: registered, log: log)
        registered.receiver = port
    }

    /// Adds a port, in process or served by a driver host (a restarted
    /// driver takes its device's port over); the caller routes what the
    /// driver reports to it.
    @discardableResult
    func adopt(port registered: any SerialDriverBinding, log: KernelLog) -> SerialPort {
        if let port = devices.awaitingDriver(at: registered.location) {
            port.rebind(registered)
            log.record(.info, "serial", "\(port.name): now served by \(registered.label)")
            return port
        }
        let port = devices.add { SerialPort(name: $0, port: registered) }
        if console === port { log.attachConsole(port) }
        log.record(.info, "serial", "\(port.name): \(registered.line.baud) baud via \(registered.label)")
        return port
    }

    func release(_ registration: ClassRegistration, log: KernelLog) {
        release(port: registration as? RegisteredSerialPort, log: log)
    }

    func release(port registered: (any SerialDriverBinding)?, log: KernelLog) {
        // A parked port stays for the restarted driver.
        guard let registered else { return }
        let console = self.console
        if let gone = devices.release(where: { $0.port === registered }), gone === console { log.attachConsole(nil) }
    }

    func park(location: String, drainUntil: Date) { devices.park(location, drainUntil: drainUntil) }

    func unpark(location: String, failure: String?, log: KernelLog) {
        let console = self.console
        guard let gone = devices.unpark(location) else { return }
        if gone === console { log.attachConsole(nil) }
        log.record(.warning, "serial", "\(gone.name) is gone: \(failure ?? "its driver did not come back")")
    }
}
