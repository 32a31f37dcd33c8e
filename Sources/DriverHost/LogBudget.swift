/// How fast one driver may log, as Linux's printk_ratelimit: `burst` lines
/// in each `interval` (100 for a driver's `host->log`; the Kernel holds a
/// driver host's line to twice that, which an honest host never reaches).
/// A driver that logs in a polling loop would otherwise fill the OS's log,
/// its console's backlog and whatever reads its standard error (megabytes
/// a second). Lines over the budget are dropped; the first
/// one dropped in an interval is replaced by a warning saying so, and the
/// first line of the next interval by how many went.
public struct LogBudget: Sendable {
    public static let burst = 100
    public static let interval: UInt64 = 5_000_000_000

    public enum Verdict: Equatable, Sendable {
        /// Log the line, after these notes (about lines dropped before).
        case log(notes: [String])
        /// Drop the line; log this note instead.
        case replace(with: String)
        case drop
    }

    private let burst: Int
    private var started: UInt64?
    private var logged = 0
    private var dropped = 0

    public init(burst: Int = LogBudget.burst) { self.burst = burst }

    /// What to do with a line logged at `now` (ns, monotonic).
    public mutating func admit(at now: UInt64) -> Verdict {
        var notes: [String] = []
        if started.map({ now &- $0 >= Self.interval }) ?? true {
            if dropped > 0 { notes.append("\(dropped) log line(s) of this driver were dropped (over \(burst) in \(Self.interval / 1_000_000_000) s)") }
            (started, logged, dropped) = (now, 0, 0)
        }
        guard logged >= burst else {
            logged += 1
            return .log(notes: notes)
        }
        dropped += 1
        guard dropped == 1 else { return .drop }
        return .replace(with: "logs more than \(burst) lines in \(Self.interval / 1_000_000_000) s; its further lines are dropped until the next \(Self.interval / 1_000_000_000) s begin")
    }
}
