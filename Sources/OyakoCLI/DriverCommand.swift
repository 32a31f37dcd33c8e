import ArgumentParser
import Conformance
import CSystemShims
import SystemAssembly
import DriverHost
import Foundation
import SDKTools

struct DriverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "driver",
        abstract: "Inspect and build driver plugins; list, load, unload and replace them in a running system.",
        subcommands: [Inspect.self, Build.self, Call.self, List.self, Load.self, Unload.self, Replace.self]
    )

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a driver file's metadata, ABI range and symbols without running any of its code.")

        @Argument(help: "Path to the driver's .so file.")
        var path: String

        @Flag(help: "Print one JSON object instead of a table.")
        var json = false

        struct Output: Encodable {
            let path: String
            let sha256: String
            let name, vendor, version, description: String
            let deviceClass: String
            let abi: [String: UInt32]
            let deviceIDs: [String]
            let exportedSymbols: [String]
            let importedSymbols: [String]
            let neededLibraries: [String]
            let textRelocations: Bool
            let executableStack: Bool

            enum CodingKeys: String, CodingKey {
                case path, sha256, name, vendor, version, description, abi
                case deviceClass = "device_class", deviceIDs = "device_ids", exportedSymbols = "exported_symbols"
                case importedSymbols = "imported_symbols", neededLibraries = "needed_libraries"
                case textRelocations = "text_relocations", executableStack = "executable_stack"
            }
        }

        func run() throws {
            let file: DriverFile
            do {
                file = try DriverFile.inspect(path: path)
            } catch {
                printError(error.description)
                throw ExitCode.failure
            }
            let m = file.metadata, image = file.image
            let output = Output(
                path: file.resolvedPath, sha256: file.sha256, name: m.name, vendor: m.vendor, version: m.version,
                description: m.description, deviceClass: m.deviceClass, abi: ["min": m.abiMin, "max": m.abiMax],
                deviceIDs: m.deviceIDs.map(\.description), exportedSymbols: image.exportedSymbols.map(\.name).sorted(),
                importedSymbols: image.importedSymbols.map(\.name).sorted(), neededLibraries: image.neededLibraries,
                textRelocations: image.hasTextRelocations, executableStack: image.hasExecutableStack)
            if json {
                try printJSON(output)
                return
            }
            let abi = m.abiMin == m.abiMax ? "\(m.abiMin)" : "\(m.abiMin)–\(m.abiMax)"
            print("\(m.name) \(m.version) — \(m.vendor)")
            print("  \(m.description)")
            print("  file         \(output.path)")
            print("  sha256       \(file.sha256)")
            print("  ABI          \(abi) (this host speaks \(DriverLibrary.hostABI.lowerBound)–\(DriverLibrary.hostABI.upperBound))")
            print("  class        \(m.deviceClass)")
            print("  binds to     \(output.deviceIDs.joined(separator: ", "))")
            print("  exports      \(output.exportedSymbols.joined(separator: ", "))")
            print("  imports      \(output.importedSymbols.joined(separator: ", "))")
            print("  needs        \(output.neededLibraries.joined(separator: ", "))")
            print("  text relocs  \(output.textRelocations ? "yes" : "no"), executable stack \(output.executableStack ? "yes" : "no")")
        }
    }

    struct Build: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build a driver from a folder of C files with the system compiler and the SDK's flags (as `make` does).")

        @Argument(help: "Folder with the driver's .c files.")
        var directory: String

        @Option(name: .shortAndLong, help: "Output .so path (default: DIRECTORY/NAME.so).")
        var output: String?

        @Option(name: .customShort("D"), help: "Define a preprocessor macro (repeatable).")
        var define: [String] = []

        @Option(help: "SDK folder (default: found from the current folder, $OYAKO_SDK, or the source tree).")
        var sdk: String?

        func run() throws {
            do {
                let location = try SDKLocation.find(explicit: sdk)
                let path = try DriverBuilder.build(directory: directory, output: output, defines: define, sdk: location)
                print(path)
            } catch let error as CustomStringConvertible & Error {
                printError(error.description)
                throw ExitCode.failure
            }
        }
    }

    struct Call: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Call a driver's control method through libffi, arguments checked against its signature.",
            discussion: """
                DRIVER is a driver file; it is attached to its device on a fresh machine with the \
                reference devices, the method is called, and the result printed. Without METHOD, \
                the methods are listed. The driver runs in a process of its own: if it crashes or \
                hangs, you are told where, and nothing else is affected. \
                Example: oyako driver call uart16550.so set_baud 57600

                With --control, DRIVER is the name of a driver a running `oyako serve` runs \
                (NAME for every device it serves, NAME@DEVICE for one), and the method is called \
                on the live instance, as IOCTL or WMI methods are. \
                Example: oyako driver call --control STATE/control.sock nvmelite outstanding
                """)

        @Argument(help: "The driver's .so file; with --control, the running driver's name (or name@device).")
        var driver: String

        @Option(help: ArgumentHelp("Call the driver running in the `oyako serve` behind this control socket.", valueName: "socket"))
        var control: String?

        @Flag(help: "With --control: print the response as JSON (each device's answer in calls[]).")
        var json = false

        @Argument(help: "The method to call; omit to list the methods.")
        var method: String?

        // Unconditional: `--timeout -3` is a bad value, not a missing one.
        @Option(parsing: .unconditional, help: "Seconds the whole call (attach, call, detach) may take before it is stopped and reported as hung; 0: no limit. With --control, seconds the live call may take (at most 300).")
        var timeout: Double = 60

        @Argument(parsing: .allUnrecognized, help: "Arguments, as text in the method's declared types.")
        var arguments: [String] = []

        func validate() throws {
            guard timeout >= 0, timeout.isFinite else { throw ValidationError("--timeout takes a number of seconds, 0 or more") }
            guard !json || control != nil else { throw ValidationError("--json goes with --control (a running system's answer)") }
            // A file that is not there is the command line's mistake, said
            // once, before a worker boots a machine to find out.
            if control == nil, let problem = missingDriverFile(driver) { throw ValidationError(problem) }
        }

        func run() throws {
            if let control { return try callRunning(through: control) }
            var worker = ["driver-call-worker"]
            // Asked shortly before the watchdog, the threads inside driver
            // callbacks say where they are.
            if timeout > 0 { worker += ["--hang-report-after", "\(timeout)"] }
            worker += ["--", driver] + (method.map { [$0] + arguments } ?? [])
            let run = ProcessRunner.run(ConformanceSuite.currentExecutable, worker, timeout: timeout > 0 ? timeout + Self.reportGrace : nil)
            FileHandle.standardOutput.write(Data(run.stdout.utf8))
            // The worker's own messages and the driver's log; the crash
            // reporter's lines are read below.
            let text = run.stderr.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.hasPrefix("\u{1}") }.joined(separator: "\n")
            FileHandle.standardError.write(Data(text.utf8))
            let phase = DriverCallPhase.last(in: run.stderr)
            let name = URL(fileURLWithPath: driver).lastPathComponent
            if run.timedOut {
                let fault = DriverFault.hang(stderr: run.stderr, driver: driver, sources: Addr2Line.sources)
                printError("\(name) was still running after \(Self.seconds(timeout)) s, \(phase), and was stopped: "
                    + (fault?.message ?? "no driver callback was running"))
                Self.printBacktrace(fault?.backtrace ?? [])
                throw ExitCode.failure
            }
            if let signal = run.signal {
                let fault = DriverFault.crash(signal: signal, stderr: run.stderr, driver: driver, sources: Addr2Line.sources)
                printError("\(name) crashed \(phase): its process \(fault.message). It ran in a process of its own; nothing else was affected.")
                Self.printBacktrace(fault.backtrace)
                throw ExitCode.failure
            }
            if run.status != 0 { throw ExitCode(run.status) }
        }

        /// The call on a running system's live driver: each device's answer.
        private func callRunning(through control: String) throws {
            let limit = timeout > 0 ? timeout : ControlServer.callTimeouts.upperBound
            let response = try exchange(.call(driver, method: method, arguments: arguments, timeout: limit), with: control)
            if json {
                try printJSON(response)
                if !response.ok { throw ExitCode.failure }
                return
            }
            let calls = response.calls ?? []
            if calls.isEmpty { printError(response.message) }
            for call in calls {
                let text = calls.count == 1 ? call.answer : "\(call.device): " + call.answer.replacingOccurrences(of: "\n", with: "\n  ")
                if call.ok { print(text) } else { printError(text) }
            }
            if !response.ok { throw ExitCode.failure }
        }

        /// How long after the hang report the worker is killed.
        static let reportGrace = 1.0

        static func seconds(_ value: Double) -> String {
            value == value.rounded() ? String(Int(value)) : String(value)
        }

        /// The frames down to where oyako called the driver; oyako's own
        /// below that are counted, not listed.
        static func printBacktrace(_ frames: [String]) {
            guard !frames.isEmpty else { return }
            let driverSide = frames.prefix { !$0.contains("(oyako+0x") }
            let hidden = frames.count - driverSide.count
            let lines = (driverSide.isEmpty ? frames[...] : driverSide).map { "  " + $0 + "\n" }.joined()
            let rest = driverSide.isEmpty || hidden == 0 ? "" : "  (and \(hidden) frames of oyako's own, which called the driver)\n"
            FileHandle.standardError.write(Data(("backtrace:\n" + lines + rest).utf8))
        }
    }
}

/// Where a `driver call` worker is, as it says on its standard error before
/// each step runs driver code: the parent words a crash or hang with it.
enum DriverCallPhase {
    static let marker = "\u{1}oyphase "

    static func enter(_ phase: String) {
        // What was printed so far is out before driver code runs again.
        fflush(nil)
        FileHandle.standardError.write(Data((marker + phase + "\n").utf8))
    }

    /// The last phase the worker entered (loading and attaching, if none).
    static func last(in stderr: String) -> String {
        stderr.split(separator: "\n").last { $0.hasPrefix(marker) }.map { String($0.dropFirst(marker.count)) } ?? "while loading and attaching it"
    }
}

/// Runs one `oyako driver call` in a process of its own, so a driver that
/// crashes or hangs ends this process only; `driver call` reads what it
/// leaves on its standard error.
struct DriverCallWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "driver-call-worker", shouldDisplay: false)

    /// Seconds after which the threads inside driver callbacks write their
    /// frames to standard error (the caller kills this process soon after).
    @Option var hangReportAfter: Double?
    /// DRIVER, then METHOD and its arguments.
    @Argument(parsing: .postTerminator) var call: [String] = []

    func run() throws {
        _ = oy_shim_install_crash_reporter(STDERR_FILENO)
        if let after = hangReportAfter, after > 0, after.isFinite {
            Thread.detachNewThread {
                Thread.sleep(forTimeInterval: after)
                ConformanceSuite.reportHangs()
            }
        }
        guard let driver = call.first else { throw ValidationError("no driver file given") }
        let method = call.dropFirst().first, arguments = Array(call.dropFirst(2))
        do {
            DriverCallPhase.enter("while loading and attaching it")
            try DriverSession.withAttached(driver) { instance in
                DriverCallPhase.enter(method.map { "in its control method \($0)" } ?? "while listing its control methods")
                print(try instance.controlAnswer(method, arguments: arguments))
                DriverCallPhase.enter("while detaching and unloading it")
            }
        } catch {
            printError("\(error)")
            throw ExitCode.failure
        }
    }
}
