import COyakoSDK
import Foundation

/// What the OS does with a serial port's input.
public protocol SerialReceiver: AnyObject, Sendable {
    /// Bytes arrived, in order; valid only during the call. [any-thread]
    func received(_ bytes: UnsafeRawBufferPointer, on port: RegisteredSerialPort)
    /// The driver has room to take more output.
    func transmitReady(on port: RegisteredSerialPort)
    /// Bytes were lost (overrun).
    func lost(_ count: Int, on port: RegisteredSerialPort)
}

/// Line settings.
public struct SerialLine: Sendable, Equatable {
    public var baud: Int
    public var dataBits: Int = 8
    public var parity: Int = 0
    public var stopBits: Int = 1

    public init(baud: Int, dataBits: Int = 8, parity: Int = 0, stopBits: Int = 1) {
        self.baud = baud
        self.dataBits = dataBits
        self.parity = parity
        self.stopBits = stopBits
    }

    /// What serial.h allows: a baud rate, 5 to 8 data bits, an
    /// `oy_serial_parity`, 1 or 2 stop bits.
    public var isPossible: Bool {
        baud > 0 && (5...8).contains(dataBits) && (0...2).contains(parity) && (1...2).contains(stopBits)
    }
}

extension SerialLine {
    init(_ line: oy_serial_line) {
        self.init(baud: Int(line.baud), dataBits: Int(line.data_bits), parity: Int(line.parity), stopBits: Int(line.stop_bits))
    }
}

/// A serial port a driver registered with the OS (`register_port`).
public final class RegisteredSerialPort: ClassRegistration, DescribedRegistration, @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `lock`.
    /// The extension ID of this class.
    public static let classID: String = OY_SERIAL_EXTENSION
    let ops: oy_serial_ops
    let instance: UnsafeMutableRawPointer?
    private let lock = NSCondition()
    private var line_: SerialLine
    private var unregistered = false
    /// Calls into the driver's `write` in progress; unregister waits for them.
    private var writesInProgress = 0
    private weak var receiver_: (any SerialReceiver)?

    /// What `register_port` registers; refused (and named) if serial.h
    /// rules out the line or the ops.
    init(binding: DeviceBinding, info line: oy_serial_line, ops: oy_serial_ops, instance: UnsafeMutableRawPointer?) throws(Refusal) {
        guard SerialLine(line).isPossible else {
            throw .init("an impossible oy_serial_line (baud \(line.baud), data_bits \(line.data_bits), parity \(line.parity), stop_bits \(line.stop_bits)): "
                + "baud above 0, data_bits 5 to 8, parity an oy_serial_parity, stop_bits 1 or 2")
        }
        guard ops.write != nil else { throw .init("a NULL write callback") }
        self.ops = ops
        self.instance = instance
        self.line_ = SerialLine(line)
        super.init(binding: binding, deviceClass: Self.classID, kind: "serial port", detail: "\(line.baud) baud")
    }
    public var line: SerialLine { lock.withLock { line_ } }

    public var receiver: (any SerialReceiver)? {
        get { lock.withLock { receiver_ } }
        set { lock.withLock { receiver_ = newValue } }
    }

    /// Queues what fits; returns how many bytes the driver took.
    public func write(_ bytes: UnsafeRawBufferPointer) -> Result<Int, OyStatus> {
        binding.library.counted { writeCounted(bytes) }
    }

    private func writeCounted(_ bytes: UnsafeRawBufferPointer) -> Result<Int, OyStatus> {
        let admitted = lock.withLock { () -> Bool in
            guard !unregistered else { return false }
            writesInProgress += 1
            return true
        }
        guard admitted else { return .failure(.deviceGone) }
        defer {
            lock.withLock {
                writesInProgress -= 1
                lock.broadcast()
            }
        }
        var written: UInt32 = 0
        let status = OyStatus(ops.write(instance, bytes.baseAddress, UInt32(bytes.count), &written))
        guard status.isOK else { return .failure(status) }
        guard written <= UInt32(bytes.count) else {
            binding.library.recordViolation("serial write reported \(written) of \(bytes.count) bytes written")
            return .failure(.io)
        }
        return .success(Int(written))
    }

    public func setLine(_ line: SerialLine) -> OyStatus {
        guard let setLine = ops.set_line else { return .notSupported }
        var c = oy_serial_line()
        c.struct_size = UInt32(MemoryLayout<oy_serial_line>.size)
        c.baud = UInt32(line.baud)
        c.data_bits = UInt8(line.dataBits)
        c.parity = UInt8(line.parity)
        c.stop_bits = UInt8(line.stopBits)
        let status = whileRegistered(.deviceGone) { binding.library.callDriver("set_line") { OyStatus(setLine(instance, &c)) } }
        if status.isOK { lock.withLock { line_ = line } }
        return status
    }

    fileprivate func target() -> (any SerialReceiver)? { lock.withLock { unregistered ? nil : receiver_ } }

    /// No more writes reach the driver; one in progress is waited for, so
    /// that after unregister_port returns the driver's `write` is not running.
    override func willUnregister() {
        lock.withLock {
            unregistered = true
            while writesInProgress > 0 { lock.wait() }
        }
    }
}

/// The host's "oyako.serial/1" table.
enum HostSerial {
    static let deviceClass = DeviceClass(id: RegisteredSerialPort.classID, table: UnsafeRawPointer(table))

    /// Static for the life of the process; drivers hold a pointer to it.
    nonisolated(unsafe) static let table = oy_host_serial.hostTable { t in
        t.register_port = { ClassRegistration.register(as: RegisteredSerialPort.self, $0, $1, $2, $3, $4, service: "register_port") }
        t.unregister_port = { handle in ClassRegistration.withdraw(handle, as: RegisteredSerialPort.self, service: "unregister_port") }
        // What the OS does with input, room and losses is its own time, not
        // the reporting interrupt handler's (CallbackBudget).
        t.receive = { handle, data, length in
            guard let port = HostServices.resource(handle, RegisteredSerialPort.self, service: "receive"), length > 0 else { return }
            guard let data else {
                port.binding.library.recordViolation("receive with NULL data and a length of \(length)")
                return
            }
            CallbackBudget.inOS { port.target()?.received(UnsafeRawBufferPointer(start: data, count: Int(length)), on: port) }
        }
        t.tx_ready = { handle in
            guard let port = HostServices.resource(handle, RegisteredSerialPort.self, service: "tx_ready") else { return }
            CallbackBudget.inOS { port.target()?.transmitReady(on: port) }
        }
        t.error = { handle, lost in
            guard let port = HostServices.resource(handle, RegisteredSerialPort.self, service: "error") else { return }
            CallbackBudget.inOS { port.target()?.lost(Int(lost), on: port) }
        }
    }
}
