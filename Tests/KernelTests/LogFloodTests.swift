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

    /// The notice of dropped lines is console output too: a line that fits
    /// the room left but not with the notice before it waits, dropped and
    /// counted, instead of pushing the backlog over its bound.
    @Test func theNoticeOfDroppedLinesCountsAgainstTheBacklog() {
        let driver = MeteredPort()
        let port = SerialPort(name: "ttyS9", port: driver)
        let line = String(repeating: "x", count: 98) + "\r\n"
        var dropped = 0
        while port.unsent + line.utf8.count <= SerialPort.consoleBacklog { port.writeConsole(line) }
        for _ in 0..<3 { port.writeConsole(line); dropped += 1 }
        // Room for the line, not for the notice with it.
        let room = line.utf8.count + 10
        driver.take(port.unsent - (SerialPort.consoleBacklog - room))
        port.driverMadeRoom()
        #expect(eventually(10) { driver.stalled }, "the port handed over what the driver took, and was refused more")
        let before = port.unsent
        port.writeConsole(line)
        dropped += 1
        #expect(port.unsent == before, "the line waited for room for the notice")
        #expect(port.unsent <= SerialPort.consoleBacklog)
        driver.take(.max)
        port.driverMadeRoom()
        port.writeConsole("after\r\n")
        #expect(eventually(10) { driver.text.hasSuffix("after\r\n") })
        let text = driver.text
        #expect(text.hasSuffix("[\(dropped) console line(s) dropped: the port could not keep up]\r\nafter\r\n"), "\(text.suffix(200))")
    }
}

/// A serial driver that takes only the bytes a test allows it.
private final class MeteredPort: SerialDriverBinding, @unchecked Sendable {
    // @unchecked Sendable: state is guarded by `lock`.
    private let lock = NSLock()
    private var credit = 0
    private var written: [UInt8] = []
    /// The port asked for more after the credit ran out: its drain stopped.
    private var refused = false

    let label = "metered@00:09.0", location = "00:09.0", driverName = "metered", driverVersion = "1.0.0", driverSHA256 = ""
    var line: SerialLine { SerialLine(baud: 115_200) }
    func setLine(_ line: SerialLine) -> OyStatus { .ok }

    func write(_ bytes: UnsafeRawBufferPointer) -> Result<Int, OyStatus> {
        lock.withLock {
            let n = min(credit, bytes.count)
            credit -= n
            written += bytes.prefix(n)
            refused = n == 0
            return .success(n)
        }
    }

    /// Lets the port hand over `count` more bytes.
    func take(_ count: Int) {
        lock.withLock {
            credit = count == .max ? .max : credit + count
            refused = false
        }
    }

    var stalled: Bool { lock.withLock { refused && credit == 0 } }
    var text: String { lock.withLock { String(decoding: written, as: UTF8.self) } }
}
