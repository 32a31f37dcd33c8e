@testable import DriverHost
import Foundation
@testable import Kernel
import OyakoTestSupport
import Testing

/// A driver that logs in a loop (a polling loop with a line per round is a
/// common bug) and an OS log faster than its console: the log keeps a
/// budget, the console a bounded backlog, and the system goes on.
@Suite struct LogFloodTests {
    /// 100 000 lines in attach: the driver's budget lets a burst through and
    /// says the rest were dropped; the console's backlog stays bounded (it
    /// was 6 MB, about nine minutes of output at 115200 baud).
    @Test(arguments: [false, true]) func aDriverLoggingInALoopIsHeldToItsBudget(hosted: Bool) throws {
        let flooding = try Fixtures.mutatedTemplateDriver([(
            "    *out_instance = d;\n    return OY_OK;",
            "    { int i; for (i = 0; i < 100000; i++) c->host->log(c->host, device, OY_LOG_INFO, \"waiting for the device to settle\"); }\n    *out_instance = d;\n    return OY_OK;"
        )])
        let s = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver("uart16550"), flooding], hosted: hosted)
        defer { s.shutdown() }
        let deadline = Date(timeIntervalSinceNow: 10)
        func settled() -> [KernelLog.Entry] { s.kernel.log.all.filter { $0.message.contains("waiting for the device to settle") } }
        while settled().count < LogBudget.burst && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        #expect(settled().count == LogBudget.burst, "the burst, and nothing over it")
        #expect(s.kernel.log.all.contains { $0.level == .warning && $0.message.contains("its further lines are dropped until the next 5 s begin") })
        #expect(try s.kernel.entropy.read(16).count == 16, "the driver works")
        let console = try #require(s.kernel.serial.ports.first)
        #expect(console.unsent <= SerialPort.consoleBacklog, "\(console.unsent) bytes wait for the console")
    }

    /// The OS's own log faster than the console: lines over the backlog are
    /// dropped from the console (the log keeps them), and the next line that
    /// fits says how many went.
    @Test func consoleLinesOverTheBacklogAreDroppedAndCounted() throws {
        let s = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver("uart16550")])
        defer { s.shutdown() }
        let console = try #require(s.kernel.serial.ports.first)
        for i in 0..<2000 { s.kernel.log.record(.info, "test", "line \(i) of a flood, long enough to fill the backlog quickly") }
        #expect(console.unsent <= SerialPort.consoleBacklog)
        #expect(s.kernel.log.all.contains { $0.message.hasPrefix("line 1999 of") }, "the log keeps every line")
        let deadline = Date(timeIntervalSinceNow: 20)
        while console.unsent > 0 && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        s.kernel.log.record(.info, "test", "after the flood")
        var text = ""
        while !text.contains("after the flood") && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.05)
            text = String(decoding: s.testbed.console.contents, as: UTF8.self)
        }
        #expect(text.contains("console line(s) dropped: the port could not keep up]\r\n[info] [test] after the flood"), "\(text.suffix(300))")
    }
}
