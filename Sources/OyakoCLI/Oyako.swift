import ArgumentParser
import DriverHost
import Foundation
import SDKTools
import Logging

@main
struct Oyako: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "oyako",
        abstract: "Driver reuse, made visible: one vendor driver binary on a bare OS and in the root partition.",
        discussion: """
            Exit status: 0 success; 1 the operation failed (a bad driver file, failed I/O); \
            64 bad command-line usage.
            """,
        subcommands: [DriverCommand.self, DemoCommand.self, ServeCommand.self, ConsoleCommand.self, DriverHostCommand.self, ConformanceCommand.self, ConformanceWorkerCommand.self, DriverCallWorkerCommand.self, BenchCommand.self]
    )
}

/// Options every command shares.
struct GlobalOptions: ParsableArguments {
    @Flag(name: .shortAndLong, help: "Log kernel and driver messages down to info level on stderr.")
    var verbose = false

    func bootstrapLogging() {
        let level: Logger.Level = verbose ? .info : .warning
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

/// A failure the user should read, printed without a stack of Swift noise.
struct CommandFailure: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    let data = try encoder.encode(value)
    print(String(decoding: data, as: UTF8.self))
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data(("oyako: " + message + "\n").utf8))
}

/// Runs a whole job (demo, bench); a failure is printed as "`job` failed: ..."
/// and exits 1.
func runJob<Report>(_ job: String, _ body: () throws -> Report) throws -> Report {
    do {
        return try body()
    } catch {
        printError("\(job) failed: \(error)")
        throw ExitCode.failure
    }
}

/// The SDK a command builds drivers with; a failure is printed and exits 1.
func locateSDK(_ explicit: String?) throws -> SDKLocation {
    do {
        return try SDKLocation.find(explicit: explicit)
    } catch {
        printError(error.description)
        throw ExitCode.failure
    }
}

/// Prints progress lines unbuffered, so they show as they happen even through
/// a pipe; on stderr when stdout carries JSON.
func progressPrinter(toStderr: Bool) -> @Sendable (String) -> Void {
    { line in (toStderr ? FileHandle.standardError : FileHandle.standardOutput).write(Data((line + "\n").utf8)) }
}

/// Why `path` cannot be a driver file, found without reading it (there is
/// none, or it is a folder), in the words a load would use; nil when it may
/// be one. Commands that take driver files refuse these as bad usage.
func missingDriverFile(_ path: String) -> String? {
    var isFolder: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else { return DriverLoadError.fileNotFound(path: path).description }
    return isFolder.boolValue ? DriverLoadError.folder(path: path).description : nil
}

/// Why a file could not be written at `path` (a report the run writes at
/// its end), or nil if it can: its folder must exist and be writable, and
/// the path must not be a folder or a file this user cannot replace.
func unwritable(_ path: String) -> String? {
    let folder = (path as NSString).deletingLastPathComponent
    let parent = folder.isEmpty ? "." : folder
    var isFolder: ObjCBool = false
    guard FileManager.default.fileExists(atPath: parent, isDirectory: &isFolder) else { return "its folder \(parent) does not exist" }
    guard isFolder.boolValue else { return "\(parent) is not a folder" }
    if FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) {
        if isFolder.boolValue { return "it is a folder" }
        if !FileManager.default.isWritableFile(atPath: path) { return "this user may not write it" }
    }
    // A new file is written beside it and renamed into place.
    guard FileManager.default.isWritableFile(atPath: parent) else { return "this user may not write in its folder \(parent)" }
    return nil
}

/// Rows as aligned columns, each as wide as its widest cell plus two
/// spaces (the last unpadded), one line per row. Nothing is cut short.
func columns(_ rows: [[String]]) -> String {
    let count = rows.map(\.count).max() ?? 0
    let widths = (0..<count).map { column in rows.map { column < $0.count ? $0[column].count : 0 }.max() ?? 0 }
    return rows.map { row in
        var line = row.enumerated().map { column, cell in
            column == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[column] - cell.count + 2)
        }.joined()
        while line.last == " " { line.removeLast() }  // an empty last cell leaves only padding
        return line + "\n"
    }.joined()
}
