import DriverHost
import Foundation
import Synchronization

/// A serial port of the OS (ttyS0...): buffered output written as the
/// driver takes it, input collected in order for readers.
public final class SerialPort: SerialReceiver, @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `lock`.
    public let name: String
    public let port: RegisteredSerialPort
    private let lock = NSLock()
    private var pending: [UInt8] = []
    private var input: [UInt8] = []
    private var lostBytes = 0
    private let arrived = NSCondition()
    private var inputHandler: (@Sendable ([UInt8]) -> Void)?

    /// Bytes kept unread before the oldest are dropped.
    public static let inputLimit = 1 << 20

    init(name: String, port: RegisteredSerialPort) {
        self.name = name
        self.port = port
    }

    public var line: SerialLine { port.line }
    public var lost: Int { lock.withLock { lostBytes } }

    /// Queues bytes for output; they leave as fast as the driver takes them.
    public func write(_ bytes: [UInt8]) {
        lock.withLock { pending += bytes }
        pump()
    }

    public func write(_ text: String) { write(Array(text.utf8)) }

    private func pump() {
        lock.lock()
        defer { lock.unlock() }
        while !pending.isEmpty {
            let result = pending.withUnsafeBytes { port.write($0) }
            guard case .success(let n) = result, n > 0 else { return }
            pending.removeFirst(n)
        }
    }

    /// Bytes not yet accepted by the driver.
    public var unsent: Int { lock.withLock { pending.count } }

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

    public func received(_ bytes: UnsafeRawBufferPointer, on port: RegisteredSerialPort) {
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

    public func transmitReady(on port: RegisteredSerialPort) { pump() }

    public func lost(_ count: Int, on port: RegisteredSerialPort) {
        lock.withLock { lostBytes += count }
    }
}

/// The OS's serial ports; the first is the console.
public final class SerialSubsystem: Sendable {
    private let state = Mutex<[SerialPort]>([])

    public var ports: [SerialPort] { state.withLock { $0 } }
    public var console: SerialPort? { ports.first }

    func add(_ registered: RegisteredSerialPort) -> SerialPort {
        state.withLock { ports in
            let port = SerialPort(name: "ttyS\(ports.count)", port: registered)
            ports.append(port)
            registered.receiver = port
            return port
        }
    }

    func remove(_ registered: RegisteredSerialPort) {
        state.withLock { $0.removeAll { $0.port === registered } }
    }
}
