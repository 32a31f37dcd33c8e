import ArgumentParser
import Conformance
import CSystemShims
import DriverFile
@_spi(Conformance) import DriverHost
import Foundation
import SystemAssembly

struct ConformanceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conformance",
        abstract: "Check driver plugins against the Oyako ABI, on a bare OS and in the root partition.",
        discussion: """
            Each check runs in a child process with a timeout, so a crashing or hanging driver gets a \
            `crashed` or `timeout` verdict instead of taking the suite down. Exit status: 0 when \
            nothing failed, crashed or timed out; 1 otherwise; 64 bad usage. `--list` prints the \
            checks; SDK/CONFORMANCE-CHECKS.md explains each one.
            """)

    enum EnvironmentChoice: String, ExpressibleByArgument, CaseIterable {
        case bare, root, both
    }

    @Argument(help: "Driver .so files to check.")
    var paths: [String] = []

    @Option(help: "Environments: bare, root or both.")
    var env: EnvironmentChoice = .both

    @Flag(help: "Print one JSON array of reports.")
    var json = false

    @Option(help: "Also write JUnit XML to this file.")
    var junit: String?

    @Option(help: "Only run checks whose ID matches this regular expression (plus what they require).")
    var filter: String?

    @Flag(help: "Run checks in this process (for debugging: a crash ends the run, and a driver that never returns from a callback stops it; without this flag each check runs in a worker that is killed after its time limit).")
    var inProcess = false

    @Flag(help: "Show the driver's log lines for every check, not only for those that did not pass.")
    var verbose = false

    @Option(help: ArgumentHelp("Keep the core file of a crashed worker in this folder (one subfolder per check).", valueName: "dir"))
    var keepCores: String?

    // Unconditional: `--time-budget -1` is a bad value, not a missing one.
    @Option(parsing: .unconditional, help: "Seconds a load-to-unload cycle may take before load.time-budget warns; 0 turns time budgets off.")
    var timeBudget: Double = ConformanceSuite.Options.defaultTimeBudget

    @Option(help: ArgumentHelp("Run the workers under this sanitizer, for a driver built with it: address (gcc or clang -fsanitize=address) or thread (clang -fsanitize=thread; the workers are a ThreadSanitizer build of oyako, named by OYAKO_TSAN_WORKER). Its reports are verdicts.", valueName: "address|thread"))
    var sanitize: String?

    @Flag(help: "List the checks and exit.")
    var list = false

    func validate() throws {
        if list { return }
        guard !paths.isEmpty else { throw ValidationError("give at least one driver .so file") }
        for path in paths {
            if let problem = missingDriverFile(path) { throw ValidationError(problem) }
        }
        guard timeBudget >= 0, timeBudget.isFinite else { throw ValidationError("--time-budget takes seconds, 0 or more") }
        if let sanitize, ConformanceSuite.Sanitizer(rawValue: sanitize) == nil {
            throw ValidationError("--sanitize \(sanitize): the suite knows \(ConformanceSuite.Sanitizer.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if sanitize != nil && inProcess { throw ValidationError("--sanitize needs worker processes; drop --in-process") }
        if let mode = sanitize.flatMap(ConformanceSuite.Sanitizer.init(rawValue:)), !mode.isAvailable { throw ValidationError(mode.missing) }
        if let filter, (try? NSRegularExpression(pattern: filter)) == nil {
            throw ValidationError("--filter \(filter) is not a valid regular expression")
        }
        // Known now, not after a run of many minutes.
        if let junit, let problem = unwritable(junit) { throw ValidationError("--junit \(junit): \(problem)") }
    }

    func run() throws {
        if list {
            print(columns(ConformanceSuite.catalogue.map { [$0.id, $0.summary] }), terminator: "")
            return
        }
        var options = ConformanceSuite.Options()
        options.environments = env == .both ? SuiteEnvironment.allCases : [SuiteEnvironment(rawValue: env.rawValue)!]
        options.filter = filter
        options.inProcess = inProcess
        options.timeBudget = timeBudget > 0 ? timeBudget : nil
        options.sanitizer = sanitize.flatMap(ConformanceSuite.Sanitizer.init(rawValue:))
        if let keepCores {
            try createFolder(keepCores)
            options.coreDirectory = URL(fileURLWithPath: keepCores).standardizedFileURL.path
        }
        let suite = ConformanceSuite(options: options)
        let reports = paths.map { suite.run(driver: $0) }
        if json {
            print(try ConformanceReporter.json(reports))
        } else {
            print(ConformanceReporter.table(reports, verbose: verbose), terminator: "")
        }
        if let junit {
            do {
                try ConformanceReporter.junit(reports).write(toFile: junit, atomically: true, encoding: .utf8)
            } catch {
                printError("--junit \(junit): the report could not be written: \(unwritable(junit) ?? "\(error)")")
                throw ExitCode.failure
            }
        }
        if reports.contains(where: \.failed) { throw ExitCode.failure }
    }
}

/// Runs one check in this process and prints its outcome as one JSON line.
/// The suite starts one of these per check and environment.
struct ConformanceWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "conformance-worker", shouldDisplay: false)

    @Option var check: String
    @Option var env: String
    /// Absent: time budgets are off.
    @Option var timeBudget: Double?
    /// Checks that ran before this one in the same environment and did not pass (comma-separated).
    @Option var failed: String?
    /// Lift the core size limit, so a crash leaves a core file.
    @Flag var keepCore = false
    /// Seconds after which the threads inside driver callbacks write their
    /// frames to standard error (the suite kills the worker soon after).
    @Option var hangReportAfter: Double?
    @Argument var driver: String

    func run() throws {
        guard let environment = SuiteEnvironment(rawValue: env) else { throw ValidationError("unknown environment \(env)") }
        // A crash prints the faulting thread's frames; the driver's log lines
        // go to standard error as they are logged. The suite reads both.
        _ = oy_shim_install_crash_reporter(STDERR_FILENO)
        DriverLogMirror.mirror(to: STDERR_FILENO)
        if let after = hangReportAfter, after > 0, after.isFinite {
            Thread.detachNewThread {
                Thread.sleep(forTimeInterval: after)
                ConformanceSuite.reportHangs()
            }
        }
        // A process of its own: block request data may move to guarded
        // pages, and freed DMA memory may wait a while before reuse.
        Verifier.guardRequestData()
        Verifier.quarantineFreedDMA()
        ConformanceSuite.sayVerdictsEarly { outcome in
            guard let data = try? JSONEncoder().encode(outcome) else { return }
            fflush(nil)
            FileHandle.standardOutput.write(Data(("\n" + ConformanceSuite.earlyVerdictMarker).utf8) + data + Data("\n".utf8))
        }
        if keepCore {
            // As large as this user may make it (unlimited for root).
            var limit = rlimit()
            _ = getrlimit(Int32(RLIMIT_CORE.rawValue), &limit)
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(Int32(RLIMIT_CORE.rawValue), &limit)
        }
        let outcome = ConformanceSuite.runCheck(check, driver: driver, environment: environment, timeBudget: timeBudget,
                                                failedBefore: failed.map { Set($0.split(separator: ",").map(String.init)) })
        let data = try JSONEncoder().encode(outcome)
        // On a line of its own, after anything the driver left unfinished;
        // then gone at once, so no driver code (an atexit handler, a
        // thread) writes after it.
        fflush(nil)
        FileHandle.standardOutput.write(Data(("\n" + ConformanceSuite.verdictMarker).utf8) + data + Data("\n".utf8))
        _exit(0)
    }
}
