import DriverHost
import Foundation
import Kernel
import OyakoTestSupport
import Testing

/// Host services under the interleavings drivers produce, driven from a
/// real driver through its control methods.
@Suite struct HostServiceStressTests {
    /// work_destroy: "cancel if queued, wait for a running fn to return, then
    /// free" — also when the item is queued again while it runs.
    @Test func workDestroyWaitsForAnItemQueuedAgainWhileRunning() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.fixtureDriver()])
        defer { system.shutdown() }
        let instance = try #require(system.kernel.instance(at: system.testbed.nvmeSlot.address))
        var broken = 0
        for _ in 0..<2 { broken += Int(try instance.callControl("work_destroy_races", arguments: ["1000"])) ?? 1 }
        #expect(broken == 0, "rounds in which work_destroy returned while the function ran, or it ran afterwards")
        #expect(instance.library.violations.isEmpty, "\(instance.library.violations)")
    }
}
