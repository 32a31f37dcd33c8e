import ArgumentParser
import Bench
import DriverHost
import Foundation

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure driver loading, host calls, the VMBus ring, block I/O and networking, each next to its baseline.",
        discussion: """
            Every figure is measured in this run next to the baseline it is judged against (a direct \
            C call, memcpy, the bare-metal path), and reported as a ratio where there is one. Latency \
            figures are medians with p99 from HdrHistogram. Build with -c release for meaningful \
            numbers (`swift run -c release oyako bench`); --quick is a smoke run for CI.
            """)

    @Flag(help: "Print one JSON object: machine and figures[].")
    var json = false

    @Flag(help: "Fewer iterations: finishes in under a minute.")
    var quick = false

    @Option(help: "SDK folder (default: found from the current folder, $OYAKO_SDK, or the source tree).")
    var sdk: String?

    @Option(name: .long, parsing: .upToNextOption, help: "Run only these parts: load, calls, ring, block, net, vm (a real VM's dd figures; skipped, with the reason, without QEMU).")
    var only: [String] = []

    @OptionGroup var global: GlobalOptions

    func validate() throws {
        for part in only where !BenchRunner.parts.contains(part) {
            throw ValidationError("unknown part \(part); choose from \(BenchRunner.parts.joined(separator: ", "))")
        }
    }

    func run() throws {
        global.bootstrapLogging()
        var runner = BenchRunner(sdk: try locateSDK(sdk), quick: quick, progress: progressPrinter(toStderr: json))
        runner.only = Set(only)
        let report = try runJob("bench") { try runner.run() }
        if json {
            try printJSON(report)
            return
        }
        print("")
        let rows = [["figure", "value", "baseline", "ratio", "target"]] + report.figures.map { f in
            [f.name, String(format: "%.4g %@", f.value, f.unit), f.baseline.map { String(format: "%.4g", $0) } ?? "-",
             f.ratio.map { String(format: "%.2f", $0) } ?? "-", f.target.map { "\($0) \(f.met == true ? "met" : "MISSED")" } ?? ""]
        }
        print(columns(rows), terminator: "")
        print(String(format: "\n%@ build, %d cores, %@; took %.1f s", report.machine.buildConfiguration, report.machine.cores, report.machine.cpuModel, report.durationSeconds))
    }
}
