import ArgumentParser
import DriverHost
import Foundation

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
        Foundation.exit(DriverHostProcess.run(socket: 0))
    }
}
