import CSystemShims
@_spi(Conformance) import DriverHost
import Foundation
import Kernel
import SDKTools
import Synchronization

/// The plugin conformance suite. Each check runs in a child process (the
/// `oyako` binary in worker mode) under a watchdog, so a crashing or hanging
/// driver yields a `crashed` or `timeout` verdict and never takes the suite
/// down. File checks read the file only and run in this process. Every other
/// check runs on a machine booted bare and on one booted as the root
/// partition.
public struct ConformanceSuite: Sendable {
    public struct Options: Sendable {
        public var environments: [SuiteEnvironment] = SuiteEnvironment.allCases
        /// Only checks whose ID matches run (their prerequisites still do).
        public var filter: String?
        /// Run checks in this process (for debugging; a crash ends the suite).
        public var inProcess = false
        /// The `oyako` executable used for child processes.
        public var workerExecutable: String?
        /// Multiplies every check's timeout.
        public var timeoutScale = 1.0
        /// Keep a crashed worker's core file in this folder (one subfolder
        /// per check and environment), where the system writes cores there.
        public var coreDirectory: String?
        /// Seconds load.time-budget allows a load-to-unload cycle before it
        /// warns; nil turns time budgets off (the check is skipped), for
        /// runs whose verdicts must not depend on the machine's load.
        public var timeBudget: Double? = Options.defaultTimeBudget
        /// Run the workers with this sanitizer's runtime loaded, for a driver
        /// built with it (`make SANITIZE=address`): its reports become verdicts.
        public var sanitizer: Sanitizer?

        public static let defaultTimeBudget = 1.0

        public init() {}
    }

    /// A sanitizer the workers run under, for a driver built with it. For
    /// AddressSanitizer the workers load the system compiler's runtime (the
    /// host's own code is not instrumented; the driver is). ThreadSanitizer
    /// needs the host instrumented too: the workers are a ThreadSanitizer
    /// build of oyako, whose runtime the driver's instrumentation calls.
    public enum Sanitizer: String, Sendable, CaseIterable {
        case address
        case thread

        /// What the workers need: the runtime library (address) or the
        /// instrumented oyako (thread); nil when it is not there.
        var runtime: String? {
            switch self {
            case .address:
                let result = ProcessRunner.run("cc", ["-print-file-name=libasan.so"], timeout: 30)
                let path = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
                return result.status == 0 && path.hasPrefix("/") && FileManager.default.fileExists(atPath: path) ? path : nil
            case .thread:
                return Self.threadWorker
            }
        }

        /// A ThreadSanitizer build of oyako: $OYAKO_TSAN_WORKER, or this
        /// process when it is one.
        static var threadWorker: String? {
            if let path = ProcessInfo.processInfo.environment["OYAKO_TSAN_WORKER"], FileManager.default.isExecutableFile(atPath: path) { return path }
            return Verifier.underThreadSanitizer ? ConformanceSuite.currentExecutable : nil
        }

        /// Whether this machine has what the mode needs.
        public var isAvailable: Bool { runtime != nil }

        /// What to do when the runtime is missing.
        public var missing: String {
            switch self {
            case .address: "--sanitize address: the system C compiler has no libasan.so (install gcc's sanitizer runtime)"
            case .thread: "--sanitize thread needs a ThreadSanitizer build of oyako to run the checks in: swift build --sanitize=thread --scratch-path .build-tsan --product oyako, then set OYAKO_TSAN_WORKER=.build-tsan/debug/oyako (or run that oyako itself)"
            }
        }

        /// What the worker's environment gains.
        func environment(runtime: String) -> [String: String] {
            switch self {
            case .address: ["LD_PRELOAD": runtime, "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:exitcode=86:print_summary=1:symbolize=0"]
            // Every report is read, not just the first; the worker's own verdict stands beside them.
            case .thread: ["TSAN_OPTIONS": "halt_on_error=0:exitcode=0:report_signal_unsafe=0:second_deadlock_stack=1"]
            }
        }

        static let exitCode: Int32 = 86
    }

    public struct DriverReport: Codable, Sendable {
        public let driver: String
        public let name: String
        public let results: [CheckResult]

        public var failed: Bool { results.contains { $0.verdict.isFailure } }
        public func verdicts(_ verdict: Verdict) -> [CheckResult] { results.filter { $0.verdict == verdict } }
    }

    public let options: Options

    public init(options: Options = Options()) {
        self.options = options
    }

    /// The catalogue: ID and one-line summary of every check, in run order.
    public static var catalogue: [(id: String, summary: String)] { Catalogue.all.map { ($0.id, $0.summary) } }

    /// The checks that apply to a driver of `deviceClass` ("" for none):
    /// those about the file (run once) and those run in each environment.
    /// Every one of them should pass for a correct driver.
    public static func applicableChecks(deviceClass: String) -> (file: [String], perEnvironment: [String]) {
        let applicable = Catalogue.all.filter { $0.classes == nil || $0.classes!.contains(deviceClass) }
        return (applicable.filter { $0.scope == .file }.map(\.id), applicable.filter { $0.scope == .environment }.map(\.id))
    }

    /// What starts a worker's verdict on its standard output. The driver
    /// shares that output: whatever it writes there (a debug line, a half
    /// line without its newline) is not taken for the verdict.
    public static let verdictMarker = "\u{1}oyverdict "

    /// What starts a verdict a check reached before its teardown (see
    /// `CheckContext.decided`): the suite takes it when the worker is then
    /// killed, its teardown hung on the driver the check found broken.
    public static let earlyVerdictMarker = "\u{1}oyearly "

    /// Where `CheckContext.decided` says a verdict at once (a worker's
    /// standard output); nil outside a worker.
    static let earlyVerdicts = Mutex<(@Sendable (CheckOutcome) -> Void)?>(nil)

    /// A worker's: verdicts reached before a check's teardown go to `sink`.
    public static func sayVerdictsEarly(to sink: @escaping @Sendable (CheckOutcome) -> Void) {
        earlyVerdicts.withLock { $0 = sink }
    }

    /// The verdict a worker wrote, from its standard output: the JSON after
    /// the last marker.
    static func verdict(in stdout: String, marker: String = verdictMarker) -> CheckOutcome? {
        guard let marked = stdout.range(of: marker, options: .backwards) else { return nil }
        let json = stdout[marked.upperBound...].prefix { $0 != "\n" }
        return try? JSONDecoder().decode(CheckOutcome.self, from: Data(json.utf8))
    }

    /// What a worker does shortly before the suite's watchdog kills it:
    /// each thread inside a driver callback, in this process and in the
    /// driver hosts its checks run, writes its callback's name and frames
    /// to standard error (the hosts' is this process's), for `hangOutcome`.
    public static func reportHangs() {
        _ = oy_shim_report_hangs()
        Kernel.askDriverHostsForHangReports()
    }

    /// Runs one check body in this process (what a worker does).
    /// `hostExecutable`: the `oyako` that driver hosts start from (by
    /// default this process's executable, as in a worker).
    /// `failedBefore`: the checks that ran earlier in this environment and
    /// did not pass (nil: not known), for checks that build on their results.
    public static func runCheck(_ id: String, driver: String, environment: SuiteEnvironment, timeBudget: Double? = Options.defaultTimeBudget,
                                hostExecutable: String? = currentExecutable, failedBefore: Set<String>? = nil, sharedProcess: Bool = false) -> CheckOutcome {
        guard let check = Catalogue.all.first(where: { $0.id == id }) else { return .failed("no check \(id)") }
        Verifier.enable()
        let mark = ViolationLog.mark
        var outcome: CheckOutcome
        do {
            var context = CheckContext(driverPath: driver, environment: environment, timeBudget: timeBudget, hostExecutable: hostExecutable,
                                       failedBefore: failedBefore, violationMark: mark)
            context.sharedProcess = sharedProcess
            outcome = try check.run(context)
        } catch {
            outcome = .failed("\(error)")
        }
        let recorded = ViolationLog.since(mark).filter { entry in !check.tolerates.contains { entry.message.contains($0) } }
        return Self.withWarnings(Self.withViolations(outcome, recorded.filter { $0.severity == .violation }), recorded.filter { $0.severity != .violation })
    }

    /// Soft limits exceeded during a check (a slow callback): a pass becomes
    /// a warning that says by how much, marked when slow callbacks are all
    /// it is (`slowCallbacksOnly`: a loaded machine can cause that alone).
    static func withWarnings(_ outcome: CheckOutcome, _ warnings: [ViolationLog.Entry]) -> CheckOutcome {
        guard !warnings.isEmpty, outcome.verdict == .passed || outcome.verdict == .warning else { return outcome }
        var warned = outcome
        warned.verdict = .warning
        warned.slowCallbacksOnly = outcome.verdict == .passed && warnings.allSatisfy { $0.severity == .slowCallback } ? true : nil
        let shown = warnings.prefix(2).map(\.description).joined(separator: "; ")
        warned.message = (outcome.message.isEmpty ? "" : outcome.message + "; ") + shown + (warnings.count > 2 ? " and \(warnings.count - 2) more" : "")
        return warned
    }

    /// Every ABI violation the host recorded during a check fails it, with
    /// the violations' text (the check's own finding, if any, first).
    static func withViolations(_ outcome: CheckOutcome, _ violations: [ViolationLog.Entry]) -> CheckOutcome {
        guard !violations.isEmpty else { return outcome }
        let shown = violations.prefix(3).map(\.description).joined(separator: "; ")
        let more = violations.count > 3 ? " and \(violations.count - 3) more" : ""
        let text = "the host recorded \(violations.count) ABI violation\(violations.count == 1 ? "" : "s") during this check: \(shown)\(more)"
        switch outcome.verdict {
        case .passed, .warning:
            var failed = CheckOutcome.failed(text)
            failed.observation = outcome.observation
            return failed
        case .failed:
            var failed = outcome
            if !violations.contains(where: { outcome.message.contains($0.message) }) { failed.message += "; " + text }
            return failed
        case .crashed, .timeout, .skipped:
            return outcome
        }
    }

    /// Runs the suite on one driver file.
    public func run(driver: String) -> DriverReport {
        let name = (try? DriverFile.inspect(path: driver).metadata.name) ?? URL(fileURLWithPath: driver).lastPathComponent
        let deviceClass = (try? DriverFile.inspect(path: driver).metadata.deviceClass) ?? ""
        let selected = selection()
        var results: [CheckResult] = []
        var fileVerdicts: [String: Verdict] = [:]
        for check in Catalogue.all where check.scope == .file && selected.contains(check.id) {
            let result = execute(check, driver: driver, environment: nil, prior: fileVerdicts, deviceClass: deviceClass)
            fileVerdicts[check.id] = result.verdict
            results.append(result)
        }
        let perEnvironment = Mutex<[SuiteEnvironment: [CheckResult]]>([:])
        let environments = options.environments
        let fileOutcomes = fileVerdicts
        DispatchQueue.concurrentPerform(iterations: environments.count) { index in
            let environment = environments[index]
            var verdicts = fileOutcomes
            var envResults: [CheckResult] = []
            for check in Catalogue.all where check.scope == .environment && selected.contains(check.id) {
                let result = execute(check, driver: driver, environment: environment, prior: verdicts, deviceClass: deviceClass)
                verdicts[check.id] = result.verdict
                envResults.append(result)
            }
            perEnvironment.withLock { $0[environment] = envResults }
        }
        for environment in environments { results += perEnvironment.withLock { $0[environment] ?? [] } }
        if selected.contains("io.same-results") { results.append(Self.sameResults(results, environments: environments)) }
        return DriverReport(driver: driver, name: name, results: results)
    }

    /// IDs to run: those the filter matches, plus what they require.
    private func selection() -> Set<String> {
        guard let pattern = options.filter, let regex = try? NSRegularExpression(pattern: pattern) else { return Set(Catalogue.all.map(\.id)) }
        var chosen = Set(Catalogue.all.map(\.id).filter { regex.firstMatch(in: $0, range: NSRange($0.startIndex..., in: $0)) != nil })
        var changed = true
        while changed {
            changed = false
            for check in Catalogue.all where chosen.contains(check.id) {
                for needed in check.requires where !chosen.contains(needed) {
                    chosen.insert(needed)
                    changed = true
                }
            }
        }
        return chosen
    }

    private func execute(_ check: CheckDefinition, driver: String, environment: SuiteEnvironment?, prior: [String: Verdict], deviceClass: String) -> CheckResult {
        let label = environment?.rawValue ?? "file"
        func result(_ outcome: CheckOutcome, _ seconds: Double = 0) -> CheckResult {
            var made = CheckResult(id: check.id, summary: check.summary, environment: label, verdict: outcome.verdict, message: outcome.message,
                                   seconds: seconds, observation: outcome.observation, log: outcome.log, backtrace: outcome.backtrace, coreFile: outcome.coreFile)
            made.slowCallbacksOnly = outcome.slowCallbacksOnly
            return made
        }
        if let classes = check.classes, !classes.contains(deviceClass) {
            return result(.skipped(deviceClass.isEmpty ? "the driver provides no device class" : "not applicable to \(deviceClass)"))
        }
        for needed in check.requires {
            if let verdict = prior[needed], verdict != .passed, verdict != .warning {
                return result(.skipped("requires \(needed), which \(verdict == .skipped ? "was skipped" : "did not pass")"))
            }
        }
        if let sanitizer = options.sanitizer, Self.judgesTheReleaseBuild.contains(check.id) {
            return result(.skipped("a \(sanitizer.rawValue)-sanitizer build imports and exports its runtime's symbols: run this check on the release build"))
        }
        let started = Date()
        let outcome: CheckOutcome
        let failed = Set(prior.filter { $0.value != .passed && $0.value != .warning }.keys)
        if options.inProcess || environment == nil {
            outcome = Self.runCheck(check.id, driver: driver, environment: environment ?? .bare, timeBudget: options.timeBudget,
                                    hostExecutable: options.workerExecutable ?? Self.currentExecutable, failedBefore: failed,
                                    sharedProcess: options.inProcess && environment != nil)
        } else {
            outcome = runInChild(check, driver: driver, environment: environment!, failed: failed)
        }
        return result(outcome, Date().timeIntervalSince(started))
    }

    /// File checks a sanitizer build cannot pass by construction (its
    /// instrumentation calls into the sanitizer's runtime).
    static let judgesTheReleaseBuild: Set<String> = ["file.exports", "file.imports", "file.needed"]

    /// Runs a check in a worker process and reads its one JSON line; the
    /// driver's log lines and, after a crash, its backtrace come from the
    /// worker's standard error.
    private func runInChild(_ check: CheckDefinition, driver: String, environment: SuiteEnvironment, failed: Set<String>) -> CheckOutcome {
        let executable = options.workerExecutable ?? Self.currentExecutable
        let timeout = check.timeout * options.timeoutScale
        // Sanitizers slow everything down several times over.
        let limit = options.sanitizer == nil ? timeout : timeout * 5
        var arguments = ["conformance-worker", "--check", check.id, "--env", environment.rawValue]
        // Shortly before the watchdog kills it, the worker says which driver callbacks have not returned.
        arguments += ["--hang-report-after", String(format: "%.1f", limit * 0.85)]
        if let budget = options.timeBudget { arguments += ["--time-budget", "\(budget)"] }
        arguments += ["--failed", failed.sorted().joined(separator: ",")]
        var coreFolder: String?
        if let directory = options.coreDirectory {
            let folder = directory + "/\(URL(fileURLWithPath: driver).deletingPathExtension().lastPathComponent)-\(check.id)-\(environment.rawValue)"
            try? FileManager.default.removeItem(atPath: folder)
            try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            coreFolder = folder
            arguments.append("--keep-core")
        }
        var environment: [String: String]?
        var worker = executable
        if let sanitizer = options.sanitizer {
            guard let runtime = sanitizer.runtime else { return .failed(sanitizer.missing) }
            environment = ProcessInfo.processInfo.environment.merging(sanitizer.environment(runtime: runtime)) { $1 }
            if sanitizer == .thread { worker = runtime }
        }
        let run = ProcessRunner.run(worker, arguments + [driver], environment: environment, timeout: limit, currentDirectory: coreFolder)
        var outcome: CheckOutcome
        if let report = Self.sanitizerReport(run) ?? Self.threadSanitizerReport(run.stderr, driver: driver) {
            outcome = .failed(report)
        } else if run.timedOut {
            outcome = Self.hangOutcome(stderr: run.stderr, timeout: timeout, driver: driver,
                                       decided: Self.verdict(in: run.stdout, marker: Self.earlyVerdictMarker))
        } else if let signal = run.signal {
            outcome = crashOutcome(signal: signal, stderr: run.stderr, driver: driver, coreFolder: coreFolder)
        } else if let decoded = Self.verdict(in: run.stdout) {
            outcome = decoded
        } else {
            let text = run.stderr.split(separator: "\n").filter { !$0.hasPrefix("\u{1}") }.joined(separator: "\n")
            outcome = CheckOutcome(verdict: .crashed, message: "the worker exited \(run.status) without a verdict: \(text.suffix(300))")
        }
        outcome.log = DriverLogMirror.lines(in: run.stderr)
        if let coreFolder, outcome.coreFile == nil { try? FileManager.default.removeItem(atPath: coreFolder) }
        return outcome
    }

    /// A sanitizer's report in a worker's output, as a verdict message: the
    /// error, where in the driver, and the summary line.
    static func sanitizerReport(_ run: ProcessRunner.Result) -> String? {
        let lines = run.stderr.split(separator: "\n").map(String.init)
        guard let error = lines.first(where: { $0.contains("ERROR: AddressSanitizer:") }) else { return nil }
        let kind = error.components(separatedBy: "AddressSanitizer: ").last?.split(separator: " ").first.map(String.init) ?? "error"
        let access = lines.first { $0.hasPrefix("READ of size") || $0.hasPrefix("WRITE of size") } ?? ""
        // The first frame in the driver (its module is the .so).
        let frame = lines.first { $0.trimmingCharacters(in: .whitespaces).hasPrefix("#") && $0.contains(".so+") && !$0.contains("libasan") }?
            .trimmingCharacters(in: .whitespaces) ?? ""
        let summary = lines.first { $0.hasPrefix("SUMMARY: AddressSanitizer") } ?? ""
        return "AddressSanitizer: \(kind)" + (access.isEmpty ? "" : " (\(access.split(separator: " ").prefix(4).joined(separator: " ")))")
            + (frame.isEmpty ? "" : " at \(frame)") + (summary.isEmpty ? "" : "; \(summary)")
    }

    /// ThreadSanitizer's reports in a worker's output, as a verdict message:
    /// those where the driver's own code made one of the two accesses. (The
    /// host's Swift locks are invisible to ThreadSanitizer, so reports about
    /// the host's own memory are not the driver's and are left out.)
    static func threadSanitizerReport(_ stderr: String, driver: String) -> String? {
        let module = URL(fileURLWithPath: driver).lastPathComponent + "+0x"
        var races: [String] = []
        var total = 0
        for block in stderr.components(separatedBy: "WARNING: ThreadSanitizer: ").dropFirst() {
            let lines = block.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            let kind = lines.first.map { $0.components(separatedBy: " (pid").first ?? $0 } ?? "report"
            // Each access is a line ("Write of size 4 at 0x… by thread T3:") and its frames.
            var accesses: [(what: String, top: String)] = []
            for (i, line) in lines.enumerated() where line.hasPrefix("  ") && line.contains(" at 0x") && line.contains(" by ") {
                let top = lines[(i + 1)...].first { $0.trimmingCharacters(in: .whitespaces).hasPrefix("#0") } ?? ""
                accesses.append((line.trimmingCharacters(in: .whitespaces).components(separatedBy: " at 0x").first ?? line, top))
            }
            guard accesses.contains(where: { $0.top.contains(module) }) else { continue }
            total += 1
            if races.count < 2 {
                let described = accesses.prefix(2).map { access in
                    // "#0 function /path/file.c:339:27 (module+0x…)" -> "function (file.c:339)"
                    let parts = access.top.trimmingCharacters(in: .whitespaces).split(separator: " ").dropFirst().map(String.init)
                    let place = parts.dropFirst().first.map { URL(fileURLWithPath: $0).lastPathComponent.split(separator: ":").prefix(2).joined(separator: ":") }
                    let frame = (parts.first ?? "?") + (place.map { " (\($0))" } ?? "")
                    return "\(access.what.lowercased()) in \(frame)"
                }
                races.append("\(kind): \(described.joined(separator: " vs "))")
            }
        }
        guard total > 0 else { return nil }
        return "ThreadSanitizer: \(races.joined(separator: "; "))" + (total > races.count ? " (and \(total - races.count) more)" : "")
            + "; guard the memory with one lock on every path that touches it"
    }

    /// A check that ran out of time: which driver callbacks had not
    /// returned, with the first one's frames (where it waits or spins).
    /// `decided`: the verdict the check reached before its teardown hung.
    static func hangOutcome(stderr: String, timeout: Double, driver: String, decided: CheckOutcome? = nil) -> CheckOutcome {
        let limit = String(format: "no verdict within %.0f s", timeout)
        guard let fault = DriverFault.hang(stderr: stderr, driver: driver, sources: Addr2Line.sources) else {
            if var decided {
                decided.message += "; its teardown then hung, with no driver callback running"
                return decided
            }
            return CheckOutcome(verdict: .timeout, message: limit + ": the check hangs, with no driver callback running (the watchdog killed it)")
        }
        if var decided {
            decided.message += "; its teardown then hung: " + fault.message + "; the backtrace follows"
            decided.backtrace = fault.backtrace
            return decided
        }
        var outcome = CheckOutcome(verdict: .timeout, message: limit + ": " + fault.message + "; the backtrace follows")
        outcome.backtrace = fault.backtrace
        return outcome
    }

    private func crashOutcome(signal: Int32, stderr: String, driver: String, coreFolder: String?) -> CheckOutcome {
        let fault = DriverFault.crash(signal: signal, stderr: stderr, driver: driver, sources: Addr2Line.sources)
        var outcome = CheckOutcome(verdict: .crashed, message: "the worker " + fault.message + (CrashReport.parse(stderr) == nil ? "" : "; the backtrace and the driver's log follow"))
        outcome.backtrace = fault.backtrace
        if let coreFolder {
            let cores = ((try? FileManager.default.contentsOfDirectory(atPath: coreFolder)) ?? []).filter { $0.hasPrefix("core") }
            if let core = cores.first {
                outcome.coreFile = coreFolder + "/" + core
            } else {
                let pattern = ((try? String(contentsOfFile: "/proc/sys/kernel/core_pattern", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
                outcome.message += pattern.hasPrefix("|")
                    ? "; no core in \(coreFolder): this system hands cores to \(pattern.dropFirst().split(separator: " ").first ?? "a helper") (kernel.core_pattern)"
                    : "; no core in \(coreFolder) (kernel.core_pattern is \"\(pattern)\"; is the core size limit 0 for this user?)"
            }
        }
        return outcome
    }

    /// io.same-results: every passed check's observation (device counts, the
    /// disk image's digest, statuses returned) must match fact by fact across
    /// environments.
    static func sameResults(_ results: [CheckResult], environments: [SuiteEnvironment]) -> CheckResult {
        var byCheck: [String: [String: Observation]] = [:]
        for r in results where r.verdict == .passed {
            guard let observed = r.observation else { continue }
            byCheck[r.id, default: [:]][r.environment] = Observation(encoded: observed)
        }
        let compared = byCheck.filter { $0.value.count > 1 }
        // A rerun (host.io) keeps its checks' facts under their IDs; one that
        // did not pass everywhere reported itself, and its rerun ran on one
        // side only: not a difference of the driver's.
        let passedEverywhere = Set(Dictionary(grouping: results.filter { $0.verdict == .passed }, by: \.id).filter { $0.value.count == environments.count }.keys)
        let notEverywhere = Set(results.map(\.id)).subtracting(passedEverywhere)
        var differing: [String] = []
        for (id, observations) in compared.sorted(by: { $0.key < $1.key }) {
            let sides = observations.sorted { $0.key < $1.key }
            let (first, second) = (sides[0], sides[1])
            for key in first.value.differences(from: second.value) where !notEverywhere.contains(where: { key.hasPrefix($0 + ".") }) {
                differing.append("\(id) \(key): \(first.key) \(first.value[key] ?? "(none)"), \(second.key) \(second.value[key] ?? "(none)")")
            }
        }
        let facts = compared.values.reduce(0) { $0 + ($1.values.first?.facts.count ?? 0) }
        let outcome: CheckOutcome
        if compared.isEmpty {
            outcome = .skipped("no observations from two environments to compare")
        } else if differing.isEmpty {
            outcome = .passed("\(facts) observed facts from \(compared.count) check(s) agree in \(environments.map(\.rawValue).joined(separator: " and "))")
        } else {
            outcome = .failed("the driver behaved differently between environments: \(differing.prefix(4).joined(separator: "; "))"
                + (differing.count > 4 ? " (and \(differing.count - 4) more)" : "")
                + "; a driver must not depend on where it runs (DMA addresses, interrupt timing)")
        }
        return CheckResult(id: "io.same-results", summary: "the same observable results in both environments", environment: "both",
                           verdict: outcome.verdict, message: outcome.message, seconds: 0, observation: nil)
    }

    /// This process's executable (the `oyako` binary when run from the CLI).
    public static var currentExecutable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}
