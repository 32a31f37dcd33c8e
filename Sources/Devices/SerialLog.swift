import Foundation

/// The far end of a serial line that keeps what arrives: in memory for
/// readers, and appended to a file when one is given (a console log).
public final class SerialLog: SerialBackend, @unchecked Sendable {
    // @unchecked Sendable: guarded by `condition`.
    private let condition = NSCondition()
    private var bytes: [UInt8] = []
    /// For each chunk: the byte count after it, and when it arrived
    /// (monotonic nanoseconds).
    private var arrivals: [(end: Int, at: UInt64)] = []
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
        let now = DispatchTime.now().uptimeNanoseconds
        condition.withLock {
            bytes += chunk
            arrivals.append((bytes.count, now))
            condition.broadcast()
        }
        file?.write(Data(chunk))
    }

    public var contents: [UInt8] { condition.withLock { bytes } }

    /// When the byte at `index` arrived (monotonic nanoseconds), if it has.
    public func arrivalTime(ofByteAt index: Int) -> UInt64? {
        condition.withLock {
            guard index >= 0, index < bytes.count else { return nil }
            var low = 0, high = arrivals.count - 1
            while low < high {
                let mid = (low + high) / 2
                if arrivals[mid].end > index { high = mid } else { low = mid + 1 }
            }
            return arrivals[low].at
        }
    }

    /// Waits until at least `count` bytes arrived (or `timeout` passed).
    public func waitFor(_ count: Int, timeout: Double) -> [UInt8] {
        let deadline = Date(timeIntervalSinceNow: timeout)
        return condition.withLock {
            while bytes.count < count && condition.wait(until: deadline) {}
            return bytes
        }
    }
}
