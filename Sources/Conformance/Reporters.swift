import Foundation

/// Output formats: a table for people, JSON for machines, JUnit XML for CI.
public enum ConformanceReporter {
    /// The driver's log lines (for checks that did not pass, or all with
    /// `verbose`), a crash's backtrace and core file, indented under a row.
    static func details(_ r: CheckResult, verbose: Bool) -> String {
        var out = ""
        if let core = r.coreFile { out += "          core file: \(core)\n" }
        if !r.backtrace.isEmpty {
            out += r.verdict == .timeout ? "          backtrace (the thread whose callback did not return):\n" : "          backtrace (faulting thread):\n"
            for frame in r.backtrace { out += "            \(frame)\n" }
        }
        if !r.log.isEmpty && (verbose || r.verdict != .passed && r.verdict != .skipped) {
            out += "          driver log:\n"
            for line in r.log.suffix(verbose ? r.log.count : 40) { out += "            \(line)\n" }
        }
        return out
    }

    public static func table(_ reports: [ConformanceSuite.DriverReport], verbose: Bool = false) -> String {
        var out = ""
        for report in reports {
            out += "\(report.name) — \(report.driver)\n"
            // As wide as the longest ID: an ID is never cut short.
            let idWidth = max(28, report.results.map(\.id.count).max() ?? 0)
            for r in report.results {
                let mark: String
                switch r.verdict {
                case .passed: mark = "pass"
                case .failed: mark = "FAIL"
                case .crashed: mark = "CRASH"
                case .timeout: mark = "TIMEOUT"
                case .skipped: mark = "skip"
                case .warning: mark = "warn"
                }
                let id = r.id.padding(toLength: idWidth, withPad: " ", startingAt: 0)
                let env = r.environment.padding(toLength: 5, withPad: " ", startingAt: 0)
                // A check that passed without a word of its own: what it checked.
                let message = r.message.isEmpty && r.verdict == .passed ? r.summary : r.message
                out += "  \(mark.padding(toLength: 7, withPad: " ", startingAt: 0)) \(id) \(env) \(message)\n"
                out += details(r, verbose: verbose)
            }
            let counts = Dictionary(grouping: report.results, by: \.verdict).mapValues(\.count)
            let summary = [Verdict.passed, .warning, .skipped, .failed, .crashed, .timeout].compactMap { v in counts[v].map { "\($0) \(v.rawValue)" } }
            out += "  \(summary.joined(separator: ", "))\n\n"
        }
        return out
    }

    public static func json(_ reports: [ConformanceSuite.DriverReport]) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(reports), as: UTF8.self)
    }

    /// JUnit XML: one testsuite per driver, one testcase per check and
    /// environment; failed -> <failure>, crashed/timeout -> <error>,
    /// skipped -> <skipped>.
    public static func junit(_ reports: [ConformanceSuite.DriverReport]) -> String {
        func escape(_ s: String) -> String {
            s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
                .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
                .filter { $0 == "\n" || $0 == "\t" || !($0.asciiValue.map { $0 < 0x20 } ?? false) }
        }
        var xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        let total = reports.reduce(0) { $0 + $1.results.count }
        let failures = reports.reduce(0) { $0 + $1.verdicts(.failed).count }
        let errors = reports.reduce(0) { $0 + $1.verdicts(.crashed).count + $1.verdicts(.timeout).count }
        xml += "<testsuites name=\"oyako conformance\" tests=\"\(total)\" failures=\"\(failures)\" errors=\"\(errors)\">\n"
        for report in reports {
            let time = report.results.reduce(0) { $0 + $1.seconds }
            xml += "  <testsuite name=\"\(escape(report.name))\" tests=\"\(report.results.count)\" failures=\"\(report.verdicts(.failed).count)\" errors=\"\(report.verdicts(.crashed).count + report.verdicts(.timeout).count)\" skipped=\"\(report.verdicts(.skipped).count)\" time=\"\(String(format: "%.3f", time))\">\n"
            for r in report.results {
                xml += "    <testcase classname=\"\(escape(report.name)).\(escape(r.environment))\" name=\"\(escape(r.id))\" time=\"\(String(format: "%.3f", r.seconds))\">"
                switch r.verdict {
                case .failed: xml += "\n      <failure message=\"\(escape(r.message))\">\(escape(r.summary))</failure>\n    "
                case .crashed, .timeout:
                    xml += "\n      <error type=\"\(r.verdict.rawValue)\" message=\"\(escape(r.message))\">\(escape(([r.summary] + r.backtrace).joined(separator: "\n")))</error>\n    "
                case .skipped: xml += "\n      <skipped message=\"\(escape(r.message))\"/>\n    "
                case .warning: xml += "\n      <system-out>\(escape("warning: " + r.message))</system-out>\n    "
                case .passed: break
                }
                if !r.log.isEmpty && r.verdict != .passed { xml += "\n      <system-err>\(escape(r.log.joined(separator: "\n")))</system-err>\n    " }
                xml += "</testcase>\n"
            }
            xml += "  </testsuite>\n"
        }
        xml += "</testsuites>\n"
        return xml
    }
}
