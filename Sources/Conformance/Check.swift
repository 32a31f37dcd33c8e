@_spi(Conformance) import DriverHost
import Foundation

/// A check's verdict, as clap-validator and HLK report them.
public enum Verdict: String, Codable, Sendable {
    case passed, failed, crashed, timeout, skipped, warning

    /// Verdicts that make the suite exit non-zero.
    public var isFailure: Bool { self == .failed || self == .crashed || self == .timeout }
}

/// Where a check runs: on the file alone, or on a machine booted bare or
/// with the driver's OS as the root partition.
public enum SuiteEnvironment: String, Codable, Sendable, CaseIterable {
    case bare, root
}

/// What a check body concludes.
public struct CheckOutcome: Codable, Sendable {
    public var verdict: Verdict
    public var message: String
    /// What the driver made observable (`Observation.encoded`: device
    /// counts, the disk image's digest, statuses returned), compared across
    /// environments by io.same-results.
    public var observation: String?
    /// A warning that slow callbacks alone caused (see `CheckResult`).
    public var slowCallbacksOnly: Bool?
    /// Filled in by the suite from the worker's standard error.
    var log: [String] = []
    var backtrace: [String] = []
    var coreFile: String?

    enum CodingKeys: String, CodingKey { case verdict, message, observation, slowCallbacksOnly }

    init(verdict: Verdict, message: String, observation: String? = nil) {
        self.verdict = verdict
        self.message = message
        self.observation = observation
    }

    static func passed(_ message: String = "", observation: Observation? = nil) -> CheckOutcome {
        CheckOutcome(verdict: .passed, message: message, observation: observation?.encoded)
    }
    public static func failed(_ message: String) -> CheckOutcome { CheckOutcome(verdict: .failed, message: message) }
    public static func skipped(_ reason: String) -> CheckOutcome { CheckOutcome(verdict: .skipped, message: reason) }
    public static func warning(_ message: String) -> CheckOutcome { CheckOutcome(verdict: .warning, message: message) }
}

/// One check's result in one environment (nil environment: a file check).
public struct CheckResult: Codable, Sendable {
    public let id: String
    public let summary: String
    public let environment: String
    public let verdict: Verdict
    public let message: String
    public let seconds: Double
    public let observation: String?
    /// What the driver logged through `host->log` during the check (worker
    /// checks only), oldest first.
    public var log: [String] = []
    /// For a crash: the faulting thread's frames, innermost first; for a
    /// timeout: those of the thread inside the callback that did not return.
    public var backtrace: [String] = []
    /// For a crash with `--keep-core`: where the core file is.
    public var coreFile: String?
    /// True for a warning whose only cause is callbacks over their soft CPU
    /// budget (2 ms): real, but a loaded machine can cause it alone, so a
    /// CI gate may choose to tell it from the other warnings.
    public var slowCallbacksOnly: Bool?

    public init(id: String, summary: String, environment: String, verdict: Verdict, message: String, seconds: Double, observation: String?,
                log: [String] = [], backtrace: [String] = [], coreFile: String? = nil)
    {
        self.id = id
        self.summary = summary
        self.environment = environment
        self.verdict = verdict
        self.message = message
        self.seconds = seconds
        self.observation = observation
        self.log = log
        self.backtrace = backtrace
        self.coreFile = coreFile
    }
}

/// A check failed on purpose: the message says what to fix.
struct CheckFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One entry of the catalogue.
struct CheckDefinition: Sendable {
    enum Scope: Sendable { case file, environment, crossEnvironment }

    let id: String
    let summary: String
    let scope: Scope
    /// Checks that must pass (or warn) first, in the same environment.
    let requires: [String]
    /// Its body uses only what the Kernel's subsystems offer, so host.io runs
    /// it again with the driver in a driver host.
    let hostable: Bool
    /// Device classes this applies to ("oyako.block/1"...); nil: all drivers.
    let classes: Set<String>?
    let timeout: Double
    /// Violations the check provokes on purpose and a correct driver may
    /// still cause (it passes a NULL device to attach, and the driver hands
    /// it on to a host service, which refuses it): substrings of their text.
    /// Every other violation during the check fails it.
    let tolerates: [String]
    let run: @Sendable (CheckContext) throws -> CheckOutcome

    init(_ id: String, _ summary: String, scope: Scope = .environment, requires: [String] = [], classes: Set<String>? = nil,
         timeout: Double = 20, tolerates: [String] = [], hostable: Bool = false, run: @escaping @Sendable (CheckContext) throws -> CheckOutcome)
    {
        self.hostable = hostable
        self.tolerates = tolerates
        self.id = id
        self.summary = summary
        self.scope = scope
        self.requires = requires
        self.classes = classes
        self.timeout = timeout
        self.run = run
    }
}

/// What a check body gets: the driver file and the environment to build
/// machines in.
public struct CheckContext: Sendable {
    public let driverPath: String
    public let environment: SuiteEnvironment
    /// Seconds the whole load-to-unload cycle may take before
    /// load.time-budget warns; nil: time budgets are not checked.
    public var timeBudget: Double? = ConformanceSuite.Options.defaultTimeBudget
    /// The `oyako` executable driver hosts are started from (the host.* checks).
    public var hostExecutable: String?
    /// Attach the driver in a driver host (host.io reruns hostable checks so).
    var hosted = false
    /// The check shares its process with other checks running at the same
    /// time (`--in-process`): process-wide counts (fds, threads) say
    /// nothing about this driver then.
    var sharedProcess = false
    /// Raise the attached device's interrupts spuriously all along
    /// (fault.spurious-interrupts reruns I/O checks so).
    var spuriousInterrupts = false
    /// The checks that ran earlier in this environment and did not pass
    /// (nil: not known). One a filter left out is not among them.
    public var failedBefore: Set<String>?
    /// Where the violation log stood when the check began.
    var violationMark = 0

    /// Whether the host saw a driver thread take a lock it held (and stop
    /// there for ever) since the check began.
    var sawLockTakenTwice: Bool {
        ViolationLog.since(violationMark).contains { $0.message.hasPrefix(ViolationLog.lockTakenTwice) }
    }

    /// A verdict reached before the check's teardown, said at once: the
    /// teardown may hang on the driver the check found broken (a deadlocked
    /// thread holds the lock detach needs), and then the suite reports this
    /// verdict, not only the hang.
    func decided(_ outcome: CheckOutcome) -> CheckOutcome {
        if let say = ConformanceSuite.earlyVerdicts.withLock({ $0 }) {
            // With the violations so far: runCheck adds them only once the teardown is over.
            say(ConformanceSuite.withViolations(outcome, ViolationLog.since(violationMark).filter { $0.severity == .violation }))
        }
        return outcome
    }
}
