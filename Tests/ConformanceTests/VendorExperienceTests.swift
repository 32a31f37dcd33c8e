import Conformance
import DriverHost
import Foundation
import SDKTools
import OyakoTestSupport
import Testing

/// Copies an SDK folder out of the tree, as a vendor would.
func copyOut(_ relative: String) throws -> String {
    let destination = Fixtures.temporaryDirectory("vendor") + "/" + URL(fileURLWithPath: relative).lastPathComponent
    try FileManager.default.copyItem(atPath: Fixtures.sdk.root + "/" + relative, toPath: destination)
    return destination
}

func which(_ tool: String) -> String? {
    let result = ProcessRunner.run("sh", ["-c", "command -v \(tool)"])
    return result.status == 0 ? result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) : nil
}

@Suite struct VendorExperienceTests {
    /// The template, copied elsewhere, builds with `make SDK=...` and a plain
    /// C compiler, and passes the suite in both environments.
    @Test(.enabled(if: which("make") != nil, "make is not installed"))
    func templateBuildsOutOfTreeAndPasses() throws {
        let folder = try copyOut("template")
        let build = ProcessRunner.run("make", ["-C", folder, "SDK=\(Fixtures.sdk.root)"], timeout: 120)
        #expect(build.status == 0, "\(build.output)")
        let driver = folder + "/mydriver.so"
        let image = try DriverFile.inspect(path: driver).image
        #expect(image.exportedSymbols.map(\.name) == ["oy_driver_entry"])
        let report = suite().run(driver: driver)
        #expect(failing(report).isEmpty, "\(report.results.filter { $0.verdict.isFailure }.map { "\($0.id)@\($0.environment): \($0.message)" })")
        #expect(report.results.contains { $0.id == "control.boundary-calls" && $0.verdict == .passed })
    }

    /// A driver written in Embedded Swift is an ordinary driver: one export,
    /// only allowlisted imports, and it passes under the same rules.
    @Test(.enabled(if: which("swiftc") != nil && which("make") != nil, "swiftc or make is not on PATH"))
    func swiftDriverBuildsAndPasses() throws {
        let folder = try copyOut("examples/swift-rng")
        let build = ProcessRunner.run("make", ["-C", folder, "SDK=\(Fixtures.sdk.root)", "SWIFTC=\(which("swiftc")!)"], timeout: 300)
        #expect(build.status == 0, "\(build.output)")
        let driver = folder + "/rngswift.so"
        let image = try DriverFile.inspect(path: driver).image
        #expect(image.exportedSymbols.map(\.name) == ["oy_driver_entry"])
        #expect(image.neededLibraries == ["libc.so.6"])
        let report = suite().run(driver: driver)
        #expect(failing(report).isEmpty, "\(report.results.filter { $0.verdict.isFailure }.map { "\($0.id)@\($0.environment): \($0.message)" })")
        #expect(report.results.contains { $0.id == "file.imports" && $0.verdict == .passed })
        let call = ProcessRunner.run(Fixtures.oyakoBinary, ["driver", "call", driver, "random32"], timeout: 60)
        #expect(call.status == 0 && UInt32(call.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) != nil, "\(call.output)")
    }
}

/// Drivers written as third parties write them: from SDK/ and a datasheet
/// alone, with choices the reference drivers do not make (Tests/Fixtures/
/// drivers/NAME/NAME.c says which). Each is correct, so each passes every
/// check in both environments, and host.io reruns every I/O check with it
/// in a driver host. A check that fails one of them judges a choice, not a
/// defect.
@Suite struct ThirdPartyDriverTests {
    /// NAME, or NAME+DEFINE for a variant the source builds with -DDEFINE.
    @Test(arguments: ["nvx", "nvx+NVX_BOUNCE", "e1kx", "uartx", "uartx+UARTX_POLL", "rngx"])
    func aCorrectDriverThatChoosesDifferentlyPassesEveryCheck(_ variant: String) throws {
        let parts = variant.split(separator: "+").map(String.init)
        let report = suite().run(driver: try Fixtures.fixtureDriver(parts[0], defines: Array(parts.dropFirst())))
        #expect(failing(report).isEmpty, "\(report.results.filter { $0.verdict.isFailure }.map { "\($0.id)@\($0.environment): \($0.message)" })")
        let hosted = report.results.filter { $0.id == "host.io" }
        #expect(hosted.count == 2 && hosted.allSatisfy { $0.verdict == .passed && !$0.message.contains("skipped") }, "\(hosted.map(\.message))")
    }
}
