import SystemAssembly
import DriverHost
import Foundation
import SDKTools
import Kernel
import Machine
import Synchronization

/// Fixture drivers and throwaway folders for tests. Drivers are built with
/// the SDK's real flags (as a vendor would), once per process and variant.
public enum Fixtures {
    public static let sdk: SDKLocation = {
        do {
            return try SDKLocation.find()
        } catch {
            fatalError("tests need the SDK folder: \(error)")
        }
    }()

    public static var repositoryRoot: String { sdk.repositoryRoot }

    private static let root: String = {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("oyako-tests-\(getpid())").path
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }()

    private static let built = Mutex<[String: String]>([:])
    private static let buildLock = NSLock()

    /// The built `oyako` executable (next to the test bundle).
    public static var oyakoBinary: String {
        let beside = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("oyako").path
        return FileManager.default.isExecutableFile(atPath: beside) ? beside : repositoryRoot + "/.build/debug/oyako"
    }

    /// A fresh empty folder.
    public static func temporaryDirectory(_ label: String = "t") -> String {
        let path = root + "/\(label)-\(UUID().uuidString.prefix(8))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// A reference driver from Plugins/, optionally with `defines`.
    public static func referenceDriver(_ name: String = "nvmelite", defines: [String] = []) throws -> String {
        try build(directory: repositoryRoot + "/Plugins/" + name, name: name, defines: defines)
    }

    /// A copy of a reference driver from Plugins/ with source edits: each
    /// `(original, replacement)` must match exactly once. The test corpus
    /// uses these for defects that belong to no reference driver.
    public static func mutatedReferenceDriver(_ name: String, _ edits: [(String, String)]) throws -> String {
        try mutatedDriver(source: repositoryRoot + "/Plugins/" + name, name: name, edits)
    }

    /// nvmelite with a classic defect: it hands its device the CPU pointer
    /// of a request's data instead of the address dma_map returned.
    public static func nvmeliteWithDMABug() throws -> String {
        let anchor = "        /* PRP1 covers up to the end of its page; PRP2 is either the second"
        return try mutatedReferenceDriver("nvmelite", [(anchor, "        addr = (oy_dma_addr)(uintptr_t)req->data; /* the defect */\n" + anchor)])
    }

    /// nvmelite that loses the completion of its `n`th I/O command (a lost
    /// completion: the request stays with the driver forever); with
    /// `failRestarts`, every attach after the first fails. The counts are
    /// the library's statics, so they span restarts of the driver; each `n`
    /// is its own file, so give each test its own.
    public static func nvmeliteLosingCompletion(_ n: Int, failRestarts: Bool = false) throws -> String {
        var edits = [
            ("static oy_instance_set nvl_instances;", "static oy_instance_set nvl_instances;\nstatic uint32_t fixture_completions, fixture_attaches;"),
            ("        s = &d->slots[cqe.cid];", "        if (++fixture_completions == \(n)u) continue; /* the defect: a completion lost */\n        s = &d->slots[cqe.cid];"),
        ]
        if failRestarts {
            edits.append(("    if (c == NULL || device == NULL || out_instance == NULL) return OY_E_INVALID;",
                          "    if (c == NULL || device == NULL || out_instance == NULL) return OY_E_INVALID;\n    if (++fixture_attaches > 1) return OY_E_IO; /* the defect */"))
        }
        return try mutatedReferenceDriver("nvmelite", edits)
    }

    /// nvmelite that crashes (a NULL store) on its `n`th submit, once: the
    /// crash leaves `marker` behind, and a driver that finds it does not
    /// crash again. With `crashRestarts`, every attach that finds the marker
    /// crashes instead (a driver that cannot come back). For driver hosts:
    /// the counts are per process.
    public static func nvmeliteCrashing(afterSubmits n: Int, marker: String, crashRestarts: Bool = false) throws -> String {
        var edits = [
            ("#include <string.h>", "#include <string.h>\n#include <fcntl.h>\n#include <unistd.h>\nstatic unsigned fixture_submits;"),
            ("    nvl_dev *d = (nvl_dev *)instance;\n    nvl_sqe cmd;",
             "    nvl_dev *d = (nvl_dev *)instance;\n    nvl_sqe cmd;\n    if (++fixture_submits == \(n)u && access(\"\(marker)\", F_OK) != 0) { close(open(\"\(marker)\", O_CREAT | O_WRONLY, 0600)); *(volatile int *)0 = 0; } /* the defect */"),
        ]
        if crashRestarts {
            edits.append(("    if (c == NULL || device == NULL || out_instance == NULL) return OY_E_INVALID;",
                          "    if (c == NULL || device == NULL || out_instance == NULL) return OY_E_INVALID;\n    if (access(\"\(marker)\", F_OK) == 0) *(volatile int *)0 = 0; /* the defect */"))
        }
        return try mutatedReferenceDriver("nvmelite", edits)
    }

    /// The SDK template's driver (`SDK/template`: rnglite, oyako.rng/1).
    public static func templateDriver() throws -> String {
        try build(directory: sdk.root + "/template", name: "mydriver", defines: [])
    }

    /// The SDK template (`SDK/template`, the rnglite driver) with source edits.
    public static func mutatedTemplateDriver(_ edits: [(String, String)]) throws -> String {
        try mutatedDriver(source: sdk.root + "/template", name: "mydriver", edits)
    }

    private static func mutatedDriver(source original: String, name: String, _ edits: [(String, String)]) throws -> String {
        // Tests in parallel may ask for the same mutation: one writes and builds it.
        editLock.lock()
        defer { editLock.unlock() }
        let (directory, digest) = try editedSources(source: original, name: name, edits)
        return try build(directory: directory, name: name, defines: ["OY_FIXTURE_MUTATION_\(digest)"])
    }

    /// A copy of a driver's sources with `edits` applied (each original text must occur once).
    private static func editedSources(source original: String, name: String, _ edits: [(String, String)]) throws -> (String, String) {
        let key = (["mutated", original] + edits.flatMap { [$0.0, $0.1] }).joined(separator: "|")
        let digest = String(UInt32(truncatingIfNeeded: key.hashValue), radix: 16)
        let directory = root + "/sources/\(name)-\(digest)"
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for file in try FileManager.default.contentsOfDirectory(atPath: original) where file.hasSuffix(".c") || file.hasSuffix(".h") {
            var text = try String(contentsOfFile: original + "/" + file, encoding: .utf8)
            for (from, to) in edits where text.contains(from) {
                let pieces = text.components(separatedBy: from)
                guard pieces.count == 2 else { throw DriverBuilder.BuildError(message: "\(name)/\(file): the edit's original text occurs \(pieces.count - 1) times") }
                text = pieces.joined(separator: to)
            }
            try text.write(toFile: directory + "/" + file, atomically: true, encoding: .utf8)
        }
        for (from, _) in edits {
            let all = try FileManager.default.contentsOfDirectory(atPath: original).compactMap { try? String(contentsOfFile: original + "/" + $0, encoding: .utf8) }
            guard all.contains(where: { $0.contains(from) }) else {
                throw DriverBuilder.BuildError(message: "\(name): no source file contains the edit's original text: \(from.prefix(60))")
            }
        }
        return (directory, digest)
    }

    /// A reference driver (optionally edited) built with ThreadSanitizer by
    /// clang, as a vendor builds one for `--sanitize thread`: no runtime of
    /// its own (the ThreadSanitizer worker provides it), so no -z defs.
    public static func threadSanitizedDriver(_ name: String = "nvmelite", _ edits: [(String, String)] = []) throws -> String {
        editLock.lock()
        defer { editLock.unlock() }
        let (directory, digest) = try editedSources(source: repositoryRoot + "/Plugins/" + name, name: name, edits)
        let output = temporaryDirectory("tsan") + "/\(name)-\(digest).so"
        let sources = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".c") }.map { directory + "/" + $0 }
        let result = ProcessRunner.run(clang, ["-std=c11", "-shared", "-fPIC", "-fvisibility=hidden", "-fsanitize=thread", "-g", "-O1", "-I", sdk.includeDirectory]
            + sources + ["-o", output], timeout: 120)
        guard result.status == 0 else { throw DriverBuilder.BuildError(message: result.output) }
        return output
    }

    /// The toolchain's clang (beside swift), else the one on PATH.
    static var clang: String {
        let swift = ProcessRunner.run("/bin/sh", ["-c", "command -v swift"], timeout: 10).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let beside = URL(fileURLWithPath: swift).resolvingSymlinksInPath().deletingLastPathComponent().path + "/clang"
        return FileManager.default.isExecutableFile(atPath: beside) ? beside : "clang"
    }

    /// A ThreadSanitizer build of oyako, made once in .build-tsan (a couple
    /// of minutes the first time): the workers `--sanitize thread` runs.
    public static func threadSanitizerWorker() throws -> String {
        tsanLock.lock()
        defer { tsanLock.unlock() }
        let scratch = repositoryRoot + "/.build-tsan"
        let result = ProcessRunner.run("swift", ["build", "--package-path", repositoryRoot, "--sanitize=thread", "--scratch-path", scratch, "--product", "oyako"],
                                       timeout: 1200)
        let binary = scratch + "/debug/oyako"
        guard result.status == 0, FileManager.default.isExecutableFile(atPath: binary) else {
            throw DriverBuilder.BuildError(message: "swift build --sanitize=thread failed: \(result.output.suffix(2000))")
        }
        return binary
    }

    private static let tsanLock = NSLock()
    private static let editLock = NSLock()

    /// A fixture driver from Tests/Fixtures/drivers/, optionally with `defines`.
    public static func fixtureDriver(_ name: String = "mutant", defines: [String] = []) throws -> String {
        try build(directory: repositoryRoot + "/Tests/Fixtures/drivers/" + name, name: name, defines: defines)
    }

    /// A fixture built the careless way: plain `cc -shared -fPIC`, default
    /// visibility and no linker version script, so stray symbols leak.
    public static func carelessFixtureDriver(_ name: String = "mutant", defines: [String] = []) throws -> String {
        let source = repositoryRoot + "/Tests/Fixtures/drivers/\(name)/\(name).c"
        let output = temporaryDirectory("careless") + "/\(name).so"
        let result = ProcessRunner.run("cc", ["-shared", "-fPIC", "-I", sdk.includeDirectory] + defines.map { "-D" + $0 } + [source, "-o", output])
        guard result.status == 0 else { throw DriverBuilder.BuildError(message: result.output) }
        return output
    }

    /// The fixture built with AddressSanitizer (for `--sanitize address`; it
    /// needs libasan and loads nowhere else).
    public static func sanitizedFixtureDriver(_ name: String = "mutant", defines: [String] = []) throws -> String {
        let source = repositoryRoot + "/Tests/Fixtures/drivers/\(name)/\(name).c"
        let output = temporaryDirectory("asan") + "/\(name).so"
        let result = ProcessRunner.run("cc", ["-shared", "-fPIC", "-fvisibility=hidden", "-fsanitize=address", "-fno-omit-frame-pointer", "-g", "-I", sdk.includeDirectory]
            + defines.map { "-D" + $0 } + [source, "-o", output])
        guard result.status == 0 else { throw DriverBuilder.BuildError(message: result.output) }
        return output
    }

    private static func build(directory: String, name: String, defines: [String]) throws -> String {
        let key = ([directory] + defines).joined(separator: "|")
        buildLock.lock()
        defer { buildLock.unlock() }
        if let path = built.withLock({ $0[key] }) { return path }
        let suffix = defines.isEmpty ? "" : "-" + String(UInt32(truncatingIfNeeded: key.hashValue), radix: 16)
        let output = root + "/drivers/\(name)\(suffix).so"
        let path = try DriverBuilder.build(directory: directory, output: output, defines: defines, sdk: sdk)
        built.withLock { $0[key] = path }
        return path
    }

    /// A machine with an nvmelite disk, a kernel on bare metal with `drivers`,
    /// booted. The caller shuts both down (`System.shutdown`).
    /// `hosted`: drivers run in driver-host processes (`oyako driver-host`).
    public static func bareSystem(drivers: [String], diskSize: UInt64 = 16 << 20, nics: Int = 0, hosted: Bool = false,
                                  wire: (Testbed) -> Void = { _ in }) throws -> TestSystem {
        let state = temporaryDirectory("machine")
        let testbed = try Testbed.make(state: state, diskSize: diskSize, memorySize: 64 << 20, nics: nics)
        wire(testbed)
        let kernel = Kernel(platform: BarePlatform(machine: testbed.machine), driverPaths: drivers)
        if hosted { kernel.driverHostExecutable = oyakoBinary }
        let report = kernel.boot()
        return TestSystem(testbed: testbed, kernel: kernel, report: report, state: state)
    }
}

/// A booted test machine.
public final class TestSystem: @unchecked Sendable {
    public let testbed: Testbed
    public let kernel: Kernel
    public let report: Kernel.BootReport
    public let state: String

    init(testbed: Testbed, kernel: Kernel, report: Kernel.BootReport, state: String) {
        self.testbed = testbed
        self.kernel = kernel
        self.report = report
        self.state = state
    }

    public var machine: Machine { testbed.machine }
    public var disk: Disk? { kernel.blockLayer.disks.first }

    public func shutdown() {
        kernel.shutdown()
        machine.shutdown()
        try? FileManager.default.removeItem(atPath: state)
    }
}

/// A HostEnvironment for loading drivers without a kernel.
public final class RecordingEnvironment: HostEnvironment {
    public let name = "test"
    public let lines = Mutex<[String]>([])
    public init() {}
    public func log(level: LogLevel, driver: String, device: String?, message: String) {
        lines.withLock { $0.append("\(level) \(driver): \(message)") }
    }
    public func registered(_ registration: ClassRegistration, device: any HostDevice) throws(OyStatus) {}
    public func unregistered(_ registration: ClassRegistration) {}
}
