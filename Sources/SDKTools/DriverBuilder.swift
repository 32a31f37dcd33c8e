import Foundation

/// Where the SDK is: headers, linker version script, and build flags.
public struct SDKLocation: Sendable, Equatable {
    public let root: String

    public var includeDirectory: String { root + "/include" }
    public var flagsFile: String { root + "/oyako.mk" }

    public init(root: String) { self.root = root }

    public struct NotFound: Error, CustomStringConvertible, Sendable {
        public let searched: [String]
        public var description: String {
            "cannot find the Oyako SDK (SDK/include/oyako/oyako.h); searched \(searched.joined(separator: ", ")). Pass --sdk DIR or set OYAKO_SDK"
        }
    }

    /// Finds the SDK: `explicit` and nothing else when given (a folder the
    /// user named that holds no SDK is an error, not a reason to build with
    /// some other SDK); otherwise $OYAKO_SDK, then an `SDK` folder in the
    /// current directory or above, then above the running executable, then
    /// the source tree this was built from.
    public static func find(explicit: String? = nil) throws(NotFound) -> SDKLocation {
        var candidates: [String] = []
        if let explicit {
            guard FileManager.default.fileExists(atPath: explicit + "/include/oyako/oyako.h") else { throw NotFound(searched: [explicit]) }
            return SDKLocation(root: URL(fileURLWithPath: explicit).standardizedFileURL.path)
        }
        if let env = ProcessInfo.processInfo.environment["OYAKO_SDK"], !env.isEmpty { candidates.append(env) }
        for start in [FileManager.default.currentDirectoryPath,
                      (CommandLine.arguments.first.map { URL(fileURLWithPath: $0).resolvingSymlinksInPath().deletingLastPathComponent().path }) ?? "",
                      URL(fileURLWithPath: #filePath).deletingLastPathComponent().path] where !start.isEmpty
        {
            var url = URL(fileURLWithPath: start)
            for _ in 0..<8 {
                candidates.append(url.appendingPathComponent("SDK").path)
                url.deleteLastPathComponent()
            }
        }
        for candidate in candidates where FileManager.default.fileExists(atPath: candidate + "/include/oyako/oyako.h") {
            return SDKLocation(root: URL(fileURLWithPath: candidate).standardizedFileURL.path)
        }
        throw NotFound(searched: Array(Set(candidates)).sorted().prefix(4) + ["…"])
    }

    /// The repository root when the SDK sits in a source checkout.
    public var repositoryRoot: String { URL(fileURLWithPath: root).deletingLastPathComponent().path }

    /// Compiler and linker flags from `oyako.mk`, with $(SDK) resolved.
    public func flags() throws(DriverBuilder.BuildError) -> (cflags: [String], ldflags: [String]) {
        guard let text = try? String(contentsOfFile: flagsFile, encoding: .utf8) else {
            throw .init(message: "cannot read \(flagsFile)")
        }
        var values: [String: [String]] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let name = parts[0].trimmingCharacters(in: .whitespaces)
            values[name] = parts[1].split(whereSeparator: \.isWhitespace).map { $0.replacingOccurrences(of: "$(SDK)", with: root) }
        }
        guard let cflags = values["OY_CFLAGS"], let ldflags = values["OY_LDFLAGS"] else {
            throw .init(message: "\(flagsFile) does not define OY_CFLAGS and OY_LDFLAGS")
        }
        return (cflags, ldflags)
    }
}

/// Builds a driver the way a vendor does: the system C compiler, the SDK's
/// flags and linker version script, no Swift involved. The result exports
/// only oy_driver_entry and needs only libc.
public enum DriverBuilder {
    public struct BuildError: Error, CustomStringConvertible, Sendable {
        public let message: String
        public init(message: String) { self.message = message }
        public var description: String { message }
    }

    /// Compiles every `.c` file in `directory` into one shared object.
    ///
    /// - Parameters:
    ///   - output: the `.so` to write; default `<directory>/<name>.so`.
    ///   - defines: extra `-D` macros (the test corpus uses them to inject defects).
    /// - Returns: the path written.
    @discardableResult
    public static func build(directory: String, output: String? = nil, defines: [String] = [], sdk: SDKLocation)
        throws(BuildError) -> String
    {
        let dir = URL(fileURLWithPath: directory).standardizedFileURL
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir.path, isDirectory: &isFolder) else { throw BuildError(message: "\(directory): no such folder") }
        guard isFolder.boolValue else { throw BuildError(message: "\(directory): not a folder; give the folder that holds the driver's .c files") }
        let sources: [String]
        do {
            sources = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".c") }.sorted().map { dir.appendingPathComponent($0).path }
        } catch {
            throw BuildError(message: "\(directory): cannot list the folder: \(error.localizedDescription)")
        }
        guard !sources.isEmpty else { throw BuildError(message: "\(directory): no .c files to build") }
        let target = output ?? dir.appendingPathComponent(dir.lastPathComponent + ".so").path
        let targetDir = URL(fileURLWithPath: target).deletingLastPathComponent().path
        try? FileManager.default.createDirectory(atPath: targetDir, withIntermediateDirectories: true)
        let (cflags, ldflags) = try sdk.flags()
        let compiler = ProcessInfo.processInfo.environment["CC"].flatMap { $0.isEmpty ? nil : $0 } ?? "cc"
        let arguments = cflags + defines.map { "-D" + $0 } + sources + ldflags + ["-o", target]
        let result = ProcessRunner.run(compiler, arguments)
        guard result.status == 0 else {
            throw BuildError(message: "\(compiler) failed (exit \(result.status)) building \(target):\n\(result.output)")
        }
        return target
    }
}
