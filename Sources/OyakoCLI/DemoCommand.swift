import ArgumentParser
import Demo
import DriverHost
import Foundation

struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Build the vendor drivers; boot bare, then as the root partition; run child partitions; verify all I/O.",
        discussion: "Progress goes to standard output (standard error with --json). Exit status 1 if any I/O failed to verify.")

    @Option(help: "Keep disk images and built drivers in this folder (default: a temporary folder, removed afterwards).")
    var state: String?

    @Flag(help: "Print one JSON object on standard output at the end.")
    var json = false

    @Option(help: "SDK folder (default: found from the current folder, $OYAKO_SDK, or the source tree).")
    var sdk: String?

    @OptionGroup var global: GlobalOptions

    func run() throws {
        global.bootstrapLogging()
        let runner = DemoRunner(sdk: try locateSDK(sdk), stateDirectory: state, progress: progressPrinter(toStderr: json))
        let report: DemoReport
        do {
            report = try runner.run()
        } catch {
            printError("demo failed: \(error)")
            throw ExitCode.failure
        }
        if json {
            try printJSON(report)
        } else {
            print(String(format: "done in %.1f s", report.durationSeconds))
        }
        if !report.allVerified { throw ExitCode.failure }
    }
}
