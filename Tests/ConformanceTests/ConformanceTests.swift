import Conformance
import DriverHost
import Foundation
import FoundationXML
import OyakoTestSupport
import Testing

func suite(filter: String? = nil) -> ConformanceSuite {
    var options = ConformanceSuite.Options()
    options.workerExecutable = Fixtures.oyakoBinary
    options.filter = filter
    return ConformanceSuite(options: options)
}

func failing(_ report: ConformanceSuite.DriverReport) -> Set<String> {
    Set(report.results.filter { $0.verdict.isFailure }.map(\.id))
}

@Suite struct ReferenceDriverConformanceTests {
    @Test(arguments: ["nvmelite", "e1klite", "uart16550"])
    func referenceDriverPassesInBothEnvironments(_ name: String) throws {
        let report = suite().run(driver: try Fixtures.referenceDriver(name))
        let problems = report.results.filter { $0.verdict.isFailure || $0.verdict == .warning }
        #expect(problems.isEmpty, "\(problems.map { "\($0.id)@\($0.environment): \($0.message)" })")
        for environment in ["bare", "root"] {
            let passed = report.results.filter { $0.environment == environment && $0.verdict == .passed }
            #expect(passed.count >= 25, "\(environment): only \(passed.count) checks passed")
        }
        #expect(report.results.contains { $0.id == "io.same-results" && $0.verdict == .passed })
    }
}

/// Each deliberately broken plugin is caught by exactly the checks that
/// target its defect, with the verdict that fits (crash, hang, failure).
@Suite struct NegativeCorpusTests {
    struct Case: Sendable, CustomStringConvertible {
        let defect: String
        let build: @Sendable () throws -> String
        let expected: [String: Verdict]
        var description: String { defect }
    }

    static let cases: [Case] = [
        Case(defect: "extra exported symbol", build: { try Fixtures.carelessFixtureDriver(defines: ["MUTANT_EXTRA_EXPORT"]) }, expected: ["file.exports": .failed]),
        Case(defect: "forbidden libc import", build: { try Fixtures.fixtureDriver(defines: ["MUTANT_FORBIDDEN_IMPORT"]) }, expected: ["file.imports": .failed]),
        Case(defect: "version refusal", build: { try Fixtures.fixtureDriver(defines: ["MUTANT_BAD_NEGOTIATION"]) }, expected: ["load.negotiate": .failed]),
        Case(defect: "NULL mandatory callback", build: { try Fixtures.fixtureDriver(defines: ["MUTANT_NULL_PROBE"]) }, expected: ["load.tables": .failed]),
        Case(defect: "crash in probe", build: { try Fixtures.fixtureDriver(defines: ["MUTANT_CRASH_IN_PROBE"]) }, expected: ["lifecycle.attach": .crashed]),
        Case(defect: "hang in attach", build: { try Fixtures.fixtureDriver(defines: ["MUTANT_HANG_IN_ATTACH"]) }, expected: ["lifecycle.attach": .timeout]),
        Case(defect: "leak on detach", build: { try Fixtures.fixtureDriver(defines: ["MUTANT_LEAK_ON_DETACH"]) }, expected: ["lifecycle.detach-releases": .failed]),
        Case(defect: "DMA outside the mapping", build: { try Fixtures.referenceDriver(defines: ["NVMELITE_FIXTURE_DMA_BUG"]) },
             expected: ["io.dma-faults": .failed, "io.basic": .failed]),
        Case(defect: "blocking call from interrupt context", build: { try Fixtures.fixtureDriver(defines: ["MUTANT_BLOCK_IN_IRQ"]) },
             expected: ["context.interrupt-services": .failed]),
        Case(defect: "undefined error code", build: { try Fixtures.fixtureDriver(defines: ["MUTANT_BAD_ERROR_CODE"]) },
             expected: ["badinput.error-codes": .failed, "badinput.null-args": .failed]),
        Case(defect: "wrong-state call crashes", build: { try Fixtures.fixtureDriver(defines: ["MUTANT_CRASH_WRONG_STATE"]) },
             expected: ["lifecycle.wrong-state": .crashed]),
        Case(defect: "no cleanup after allocation failure", build: { try Fixtures.fixtureDriver(defines: ["MUTANT_NO_CLEANUP_ON_ALLOC_FAIL"]) },
             expected: ["fault.alloc-failure": .failed, "fault.dma-alloc-failure": .failed]),
    ]

    @Test func theUnbrokenFixturePassesEverything() throws {
        let report = suite().run(driver: try Fixtures.fixtureDriver())
        #expect(failing(report).isEmpty, "\(report.results.filter { $0.verdict.isFailure }.map { "\($0.id): \($0.message)" })")
    }

    @Test(arguments: cases)
    func defectIsCaughtByExactlyItsChecks(_ fixture: Case) throws {
        let report = suite().run(driver: try fixture.build())
        #expect(failing(report) == Set(fixture.expected.keys), "\(fixture.defect): failed \(failing(report).sorted())")
        for (id, verdict) in fixture.expected {
            let results = report.results.filter { $0.id == id }
            #expect(!results.isEmpty && results.allSatisfy { $0.verdict == verdict }, "\(id): \(results.map { "\($0.environment) \($0.verdict)" })")
            #expect(results.allSatisfy { !$0.message.isEmpty }, "a failure says what to fix")
        }
    }
}

@Suite struct ConformanceOutputTests {
    @Test func junitOutputIsValidXMLWithOneCasePerResult() throws {
        let directory = Fixtures.temporaryDirectory("junit")
        let junit = directory + "/out.xml"
        let broken = try Fixtures.fixtureDriver(defines: ["MUTANT_LEAK_ON_DETACH"])
        let result = ProcessRunner.run(Fixtures.oyakoBinary, ["conformance", "--junit", junit, "--env", "bare", broken], timeout: 120)
        #expect(result.status == 1, "a failing driver makes the suite exit 1")
        #expect(result.stdout.contains("FAIL    lifecycle.detach-releases"), "\(result.stdout.suffix(500))")
        let document = try XMLDocument(contentsOf: URL(fileURLWithPath: junit))
        let suites = try document.nodes(forXPath: "/testsuites/testsuite")
        #expect(suites.count == 1)
        let cases = try document.nodes(forXPath: "//testcase")
        let failures = try document.nodes(forXPath: "//testcase/failure")
        let skipped = try document.nodes(forXPath: "//testcase/skipped")
        #expect(cases.count > 20)
        #expect(failures.count == 1)
        #expect(skipped.count >= 1)
        let root = try #require(document.rootElement())
        #expect(root.attribute(forName: "tests")?.stringValue == "\(cases.count)")
    }

    @Test func jsonOutputAndExitStatusForAPassingDriver() throws {
        let result = ProcessRunner.run(Fixtures.oyakoBinary, ["conformance", "--json", "--filter", "^file\\.", try Fixtures.referenceDriver()], timeout: 60)
        #expect(result.status == 0, "\(result.stderr)")
        let reports = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]])
        let results = try #require(reports.first?["results"] as? [[String: Any]])
        #expect(results.count == 7 && results.allSatisfy { $0["verdict"] as? String == "passed" })
    }

    @Test func badArgumentsAreUsageErrors() {
        #expect(ProcessRunner.run(Fixtures.oyakoBinary, ["conformance"]).status == 64)
        #expect(ProcessRunner.run(Fixtures.oyakoBinary, ["conformance", "/nonexistent.so"]).stderr.contains("no such file"))
        #expect(ProcessRunner.run(Fixtures.oyakoBinary, ["conformance", "--filter", "(", "/bin/true"]).status == 64)
    }

    /// The suite's own documentation lists every check, so it cannot drift.
    @Test func everyCheckIsDocumented() throws {
        let docs = try String(contentsOfFile: Fixtures.sdk.root + "/CONFORMANCE-CHECKS.md", encoding: .utf8)
        for check in ConformanceSuite.catalogue {
            #expect(docs.contains("`\(check.id)`"), "\(check.id) is missing from SDK/CONFORMANCE-CHECKS.md")
        }
    }
}
