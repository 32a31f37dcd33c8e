import ArgumentParser
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
                the methods are listed. Example: oyako driver call uart16550.so set_baud 57600
                """)

        @Argument(help: "The driver's .so file.")
        var driver: String

        @Argument(help: "The method to call; omit to list the methods.")
        var method: String?

        @Argument(parsing: .allUnrecognized, help: "Arguments, as text in the method's declared types.")
        var arguments: [String] = []

        func run() throws {
            do {
                try DriverSession.withAttached(driver) { instance in
                    guard let method else {
                        let methods = try instance.controlMethods()
                        if methods.isEmpty { print("\(instance.library.name) has no control methods") }
                        for m in methods {
                            print("\(m.name) \(m.signatureText)  \(m.description)\(m.signatureProblem.map { "  [\($0)]" } ?? "")")
                        }
                        return
                    }
                    let result = try instance.callControl(method, arguments: arguments)
                    // An i32 result in the error list is shown with its name.
                    if let code = Int32(result), code < 0, OyStatus(code).isDefined {
                        print("\(result) (\(OyStatus(code)))")
                    } else {
                        print(result)
                    }
                }
            } catch {
                printError("\(error)")
                throw ExitCode.failure
            }
        }
    }
}
