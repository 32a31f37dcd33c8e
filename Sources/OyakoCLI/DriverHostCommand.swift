import ArgumentParser
import DriverHost
import Foundation
import Logging

/// The driver-host role: `oyako` started by the Kernel to run one driver in
/// a process of its own, the line to the Kernel on standard input.
struct DriverHostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "driver-host",
        abstract: "Run one driver for a Kernel in another process (started by the Kernel; not for people).",
        shouldDisplay: false)

    func run() throws {
        var info = stat()
        guard fstat(0, &info) == 0, info.st_mode & S_IFMT == S_IFSOCK else {
            throw ValidationError("driver-host is started by the Kernel with its line on standard input; there is nothing to do by hand")
        }
        // Standard output is the Kernel's (a `--json` report, say): the host's
        // own log lines go to standard error, warnings and worse only. What
        // the driver logs goes to the Kernel over the line.
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .warning
            return handler
        }
        Foundation.exit(DriverHostProcess.run(socket: 0))
    }
}
