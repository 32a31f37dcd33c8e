import ArgumentParser
import Foundation

struct ConsoleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console",
        abstract: "Print the console of a partition from a demo run kept with --state.",
        discussion: """
            The bare OS and the root partition write their console through the vendor uart16550 \
            driver; what reached the far end of the line is kept in STATE/console/NAME.log, as are \
            the child partitions' consoles.
            """)

    @Option(help: "The state folder a demo run kept (oyako demo --state DIR).")
    var state: String

    @Argument(help: "Partition: bare, root, child0, child1... Omit to list them.")
    var name: String?

    func validate() throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: state + "/console", isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ValidationError("\(state) has no console folder; run `oyako demo --state \(state)` first")
        }
    }

    func run() throws {
        let folder = state + "/console"
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [])
            .filter { $0.hasSuffix(".log") }.map { String($0.dropLast(4)) }.sorted()
        guard let name else {
            print(names.joined(separator: "\n"))
            return
        }
        guard let data = FileManager.default.contents(atPath: "\(folder)/\(name).log") else {
            printError("no console named \(name) in \(folder); there are: \(names.joined(separator: ", "))")
            throw ExitCode.failure
        }
        FileHandle.standardOutput.write(data)
    }
}
