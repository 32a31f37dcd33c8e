import Synchronization

/// Every ABI violation the host recorded in this process, attributed or
/// not, numbered in order: what the conformance suite reads to turn each
/// violation during a check into that check's verdict (Driver Verifier's
/// rule: a violation the host can see is a failure, attributed to the
/// driver, the callback and the service).
@_spi(Conformance) public enum ViolationLog {
    public enum Severity: Sendable, Equatable {
        /// A rule broken: fails the check it happened in.
        case violation
        /// Beyond a soft limit (a log flood, the memory a driver may hold):
        /// the check passes with a warning.
        case warning
        /// A callback that ran longer on the CPU than it should (the soft
        /// budget of `CallbackBudget`): also a warning, told apart because
        /// a loaded machine alone can cause it.
        case slowCallback

        /// On a driver host's line.
        public var wireValue: UInt32 {
            switch self {
            case .violation: 0
            case .warning: 1
            case .slowCallback: 2
            }
        }

        public init(wireValue: UInt32) {
            self = wireValue == 0 ? .violation : wireValue == 2 ? .slowCallback : .warning
        }
    }

    public struct Entry: Sendable, Equatable {
        public var severity = Severity.violation
        /// The driver's metadata name, or nil when the host could not tell
        /// which driver broke the rule (a forged handle, a dead table).
        public let driver: String?
        /// The driver callback that was running, when the call came from one.
        public let callback: String?
        public let message: String

        public init(severity: Severity = .violation, driver: String?, callback: String?, message: String) {
            self.severity = severity
            self.driver = driver
            self.callback = callback
            self.message = message
        }

        public var description: String {
            "\(driver.map { "\($0): " } ?? "")\(message)\(callback.map { " (in \($0))" } ?? "")"
        }
    }

    /// The last `limit` entries are kept; `mark` keeps counting.
    static let limit = 512
    private static let log = Mutex<(count: Int, entries: [Entry])>((0, []))

    private static let sink = Mutex<(@Sendable (Entry) -> Void)?>(nil)

    static func record(_ entry: Entry) {
        log.withLock { state in
            state.count += 1
            state.entries.append(entry)
            if state.entries.count > limit { state.entries.removeFirst(state.entries.count - limit) }
        }
        sink.withLock { $0 }?(entry)
    }

    /// Also hands every entry to `forward` (a driver host sends them to the
    /// OS that runs it, where they count as they would in process).
    public static func forwardEntries(to forward: (@Sendable (Entry) -> Void)?) { sink.withLock { $0 = forward } }

    /// An entry recorded in another process (a driver host's), counted here.
    public static func recordForwarded(_ entry: Entry) { record(entry) }

    /// How many violations were recorded so far: pass it to `since` later.
    /// How the violation of a thread taking a driver lock it holds begins.
    public static let lockTakenTwice = "lock_acquire of a lock this thread already holds"

    public static var mark: Int { log.withLock { $0.count } }

    /// The violations recorded after `mark` (at most the last `limit`).
    public static func since(_ mark: Int) -> [Entry] {
        log.withLock { state in Array(state.entries.suffix(max(0, min(state.count - mark, state.entries.count)))) }
    }
}
