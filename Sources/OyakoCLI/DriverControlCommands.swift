import ArgumentParser
import Foundation
import SystemAssembly

/// The `--control` socket of a running `oyako serve`.
struct ControlOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The control socket of a running `oyako serve` (STATE/control.sock).", valueName: "socket"))
    var control: String

    @Flag(help: "Print the response as JSON.")
    var json = false

    /// Sends `request`; prints the answer; a refused request exits 1.
    func send(_ request: ControlRequest, describe: (ControlResponse) -> [String] = { _ in [] }) throws {
        let response = try exchange(request, with: control)
        if json {
            try printJSON(response)
        } else if response.ok {
            print(response.message)
            for line in describe(response) { print(line) }
        }
        if !response.ok {
            if !json { printError(response.message) }
            throw ExitCode.failure
        }
    }
}

extension DriverCommand {
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the drivers a running system has loaded and the devices they serve.")
        @OptionGroup var options: ControlOptions

        func run() throws {
            try options.send(ControlRequest(.list)) { response in
                let drivers = (response.drivers ?? []).map { d in
                    "\(d.name) \(d.version) sha256 \(d.sha256.prefix(16)): " + (d.devices.isEmpty ? "no device" : d.devices.joined(separator: ", "))
                        + (d.process.map { " (driver host \($0))" } ?? "")
                }
                // What happened to the drivers so far: a device without a
                // driver above may be one the OS gave up on, and why is here.
                let recoveries = response.recoveries ?? []
                return drivers + (recoveries.isEmpty ? [] : ["restarts (\(recoveries.count), oldest first):"] + recoveries.map { "  " + $0.description })
            }
        }
    }

    struct Load: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Load a driver into a running system and attach it to the devices it matches that have no driver.")
        @Argument(help: "The driver's .so file.")
        var file: String
        @OptionGroup var options: ControlOptions

        func run() throws {
            try options.send(ControlRequest(.load, file: absolute(file)))
        }
    }

    struct Unload: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Detach a driver of a running system from its devices and unload it.",
            discussion: "What the devices served goes with it: a disk's users get device-gone, children's offers are rescinded.")
        @Argument(help: "The driver's name (as `oyako driver list` shows it).")
        var name: String
        @OptionGroup var options: ControlOptions

        func run() throws {
            try options.send(ControlRequest(.unload, driver: name))
        }
    }

    struct Replace: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Swap a running disk driver for a new build while its disks stay in use.",
            discussion: """
                New requests are held, the old driver completes what it accepted and detaches, the new build attaches \
                and the held requests go to it; nothing is lost. The pause is printed. If the new build fails to \
                attach, the old one serves again.
                """)
        @Argument(help: "The running driver's name.")
        var name: String
        @Argument(help: "The new build's .so file.")
        var file: String
        @OptionGroup var options: ControlOptions

        func run() throws {
            try options.send(ControlRequest(.replace, driver: name, file: absolute(file))) { response in
                (response.replacements ?? []).map { r in
                    String(format: "%@: %@ -> %@, paused %.2f ms, %d request(s) held", r.device, r.old, r.new, r.pauseMilliseconds, r.heldRequests)
                }
            }
        }
    }
}

/// The answer of the `oyako serve` behind `control`; one that cannot be
/// reached is an error that says what to check, and exit status 1.
func exchange(_ request: ControlRequest, with control: String) throws -> ControlResponse {
    do {
        return try ControlClient.send(request, to: control)
    } catch {
        printError("\(error); is `oyako serve` running with that state folder?")
        throw ExitCode.failure
    }
}

/// Paths go to a server with another working folder.
private func absolute(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }
