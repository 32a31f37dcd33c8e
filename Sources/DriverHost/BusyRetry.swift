/// When to try a driver again after it answered OY_E_BUSY while nothing it
/// holds of ours could complete and restart the queue (its device's own
/// queue full for a moment): after 3 ms, doubling while it stays busy, up
/// to 100 ms; blk-mq reruns a queue after BLK_STS_RESOURCE the same way.
/// At most one retry waits at a time. Not thread-safe: keep it under the
/// owner's lock.
public struct BusyRetry: Sendable {
    public static let first: Duration = .milliseconds(3)
    public static let longest: Duration = .milliseconds(100)
    private var delay = BusyRetry.first
    /// A retry is scheduled and has not run yet.
    public private(set) var pending = false

    public init() {}

    /// The wait before a new retry, or nil when one is scheduled already.
    public mutating func schedule() -> Duration? {
        guard !pending else { return nil }
        pending = true
        defer { delay = min(delay * 2, Self.longest) }
        return delay
    }

    /// The scheduled retry runs now.
    public mutating func ran() { pending = false }

    /// The driver took something: the next busy spell starts from `first`.
    public mutating func reset() { delay = Self.first }
}
