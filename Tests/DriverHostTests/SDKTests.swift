import DriverHost
import Foundation
import SDKTools
import OyakoTestSupport
import Testing

/// The public headers are a product: each must stand alone, in C and C++.
@Suite struct SDKHeaderTests {
    static let headers: [String] = {
        let dir = Fixtures.sdk.includeDirectory + "/oyako"
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".h") }.sorted()
    }()

    @Test func thereAreHeaders() {
        #expect(Self.headers.contains("oyako.h") && Self.headers.contains("host.h") && Self.headers.contains("block.h"))
    }

    @Test(arguments: headers)
    func headerCompilesAloneAsC11AndCxx17(_ header: String) throws {
        let dir = Fixtures.temporaryDirectory("hdr")
        for (language, standard, compiler, ext) in [("c", "-std=c11", "cc", "c"), ("c++", "-std=c++17", "c++", "cpp")] {
            let source = dir + "/use.\(ext)"
            try "#include <oyako/\(header)>\nint oy_header_test_anchor;\n".write(toFile: source, atomically: true, encoding: .utf8)
            let result = run(compiler, [standard, "-Wall", "-Wextra", "-pedantic", "-Werror", "-I", Fixtures.sdk.includeDirectory, "-c", source, "-o", dir + "/use.o"])
            #expect(result.status == 0, "\(header) as \(language): \(result.output)")
        }
    }
}

@Suite struct PlainCompilerBuildTests {
    /// A vendor with nothing but cc and the headers gets a working driver.
    @Test func driverBuiltWithPlainCcLoadsAndWorks() throws {
        let dir = Fixtures.temporaryDirectory("plain")
        let output = dir + "/nvmelite.so"
        let result = run("cc", ["-shared", "-fPIC", "-I", Fixtures.sdk.includeDirectory,
                                Fixtures.repositoryRoot + "/Plugins/nvmelite/nvmelite.c", "-o", output])
        #expect(result.status == 0, "\(result.output)")
        let system = try Fixtures.bareSystem(drivers: [output])
        defer { system.shutdown() }
        #expect(system.report.problems.isEmpty, "\(system.report.problems)")
        let disk = try #require(system.disk)
        let data = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try disk.write(lba: 8, bytes: data)
        #expect(try disk.read(lba: 8, count: 4096) == data)
    }
}

func run(_ tool: String, _ arguments: [String]) -> (status: Int32, output: String) {
    let result = ProcessRunner.run(tool, arguments)
    return (result.status, result.output)
}

/// The file-reading module reads files and never loads or calls a driver.
@Suite struct DriverFileLayerTests {
    @Test func theFileModuleNeitherLoadsNorCallsDrivers() throws {
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Sources/DriverFile").standardizedFileURL
        let files = try FileManager.default.contentsOfDirectory(atPath: sources.path).filter { $0.hasSuffix(".swift") }
        #expect(files.count >= 5)
        for file in files {
            let text = try String(contentsOf: sources.appendingPathComponent(file), encoding: .utf8)
            for forbidden in ["dlopen(", "dlsym(", "import DriverHost", "import CFFIShims", "ffi_call"] {
                #expect(!text.contains(forbidden), "\(file) mentions \(forbidden)")
            }
        }
        let manifest = try String(contentsOf: sources.appendingPathComponent("../../Package.swift"), encoding: .utf8).filter { !$0.isWhitespace }
        let start = try #require(manifest.range(of: "name:\"DriverFile\","))
        let declaration = manifest[start.upperBound...].prefix { $0 != ")" }
        #expect(!declaration.contains("CFFIShims") && !declaration.contains("DriverHost"), "\(declaration)")
    }
}
