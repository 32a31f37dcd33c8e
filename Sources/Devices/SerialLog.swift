import Foundation

/// The far end of a serial line that keeps what arrives: in memory for
/// readers, and appended to a file when one is given (a console log).
public final class SerialLog: SerialBackend, @unchecked Sendable {
    // @unchecked Sendable: guarded by `condition`.
    private let condition = NSCondition()
    private var bytes: [UInt8] = []
    private let file: FileHandle?
    public let path: String?

    public init(path: String? = nil) {
        self.path = path
        if let path {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            file = FileHandle(forWritingAtPath: path)
        } else {
            file = nil
        }
    }

    public func received(_ chunk: [UInt8]) {
        condition.withLock {
            bytes += chunk
            condition.broadcast()
        }
        file?.write(Data(chunk))
    }

    public var contents: [UInt8] { condition.withLock { bytes } }

    /// Waits until at least `count` bytes arrived (or `timeout` passed).
    public func waitFor(_ count: Int, timeout: Double) -> [UInt8] {
        let deadline = Date(timeIntervalSinceNow: timeout)
        return condition.withLock {
            while bytes.count < count && condition.wait(until: deadline) {}
            return bytes
        }
    }
}
