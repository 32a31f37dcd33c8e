/// How fast one driver may log, as Linux's printk_ratelimit: `burst` lines
/// in each `interval`. A driver that logs in a polling loop would otherwise
/// fill the OS's log, its console's backlog and whatever reads its standard
/// error (megabytes a second). Lines over the budget are dropped; the first
/// one dropped in an interval is replaced by a warning saying so, and the
/// first line of the next interval by how many went.
struct LogBudget {
    static let burst = 100
    static let interval: UInt64 = 5_000_000_000

    enum Verdict: Equatable {
        /// Log the line, after these notes (about lines dropped before).
        case log(notes: [String])
        /// Drop the line; log this note instead.
        case replace(with: String)
        case drop
    }

    private var started: UInt64?
    private var logged = 0
    private var dropped = 0

    /// What to do with a line logged at `now` (ns).
    mutating func admit(at now: UInt64) -> Verdict {
        var notes: [String] = []
        if started.map({ now &- $0 >= Self.interval }) ?? true {
            if dropped > 0 { notes.append("\(dropped) log line(s) of this driver were dropped (over \(Self.burst) in \(Self.interval / 1_000_000_000) s)") }
            (started, logged, dropped) = (now, 0, 0)
        }
        guard logged >= Self.burst else {
            logged += 1
            return .log(notes: notes)
        }
        dropped += 1
        guard dropped == 1 else { return .drop }
        return .replace(with: "logs more than \(Self.burst) lines in \(Self.interval / 1_000_000_000) s; its further lines are dropped until the next \(Self.interval / 1_000_000_000) s begin")
    }
}
