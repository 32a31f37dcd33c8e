import DriverHost
import Foundation
import Kernel
import OyakoTestSupport
import Synchronization
import Testing
import Workloads

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

    /// irq_unhook "waits for a running handler to return", and until then
    /// the handler's handle is valid: a handler that masks or unmasks its
    /// own vector while detach unhooks it (a threaded handler's top half
    /// does) is not told its handle is gone.
    @Test func aHandlerMayUseItsHandleWhileIrqUnhookWaitsForIt() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.fixtureDriver()])
        defer { system.shutdown() }
        let instance = try #require(system.kernel.instance(at: system.testbed.nvmeSlot.address))
        let slot = system.testbed.nvmeSlot, stop = Atomic(false), stopped = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            while !stop.load(ordering: .relaxed) {
                slot.raiseInterrupt(1)
                usleep(100)
            }
            stopped.signal()
        }
        let broken = try instance.callControl("irq_unhook_races", arguments: ["50"])
        stop.store(true, ordering: .relaxed)
        stopped.wait()
        #expect(broken == "0", "rounds in which irq_unhook returned while the handler ran, or an error")
        #expect(instance.library.violations.isEmpty, "\(instance.library.violations)")
    }
}

/// Driver locks: misuse is refused and reported, never a crash, and a lock
/// made afterwards still excludes.
@Suite struct DriverLockTests {
    /// Every host service called with random arguments (handles of every
    /// kind, live, released and forged; offsets, widths, sizes, indices,
    /// delays): the host reports and refuses, never falls over, and the
    /// driver still detaches with what it left reclaimed.
    @Test(arguments: [1, 2, 3] as [UInt32])
    func randomServiceCallsAreRefusedOrServed(seed: UInt32) throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.fixtureDriver(defines: ["MUTANT_SERVICE_MISUSE"])])
        defer { system.shutdown() }
        let instance = try #require(system.kernel.instance(at: system.testbed.nvmeSlot.address))
        #expect(try instance.callControl("service_fuzz", arguments: ["\(seed)"]) == "3000")
        #expect(!instance.library.violations.isEmpty, "random handles are violations, reported")
        let report = try #require(system.kernel.unloadDriver(named: instance.library.name))
        #expect(report == [system.testbed.nvmeSlot.address.description], "detached and unloaded after it")
    }

    @Test func lockMisuseIsRefusedAndReported() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.fixtureDriver(defines: ["MUTANT_SERVICE_MISUSE"])])
        defer { system.shutdown() }
        let instance = try #require(system.kernel.instance(at: system.testbed.nvmeSlot.address))
        func misuse(_ which: Int) throws -> (result: String, reported: [String]) {
            let before = instance.library.violations.count
            let result = try instance.callControl("lock_misuse", arguments: ["\(which)"])
            return (result, Array(instance.library.violations.dropFirst(before)))
        }
        let stale = try misuse(1)
        #expect(stale.result == "0" && stale.reported == ["lock_acquire called with an invalid or released handle",
                                                          "lock_release called with an invalid or released handle"], "\(stale)")
        let forged = try misuse(2)
        #expect(forged.reported.count == 2 && forged.reported.allSatisfy { $0.contains("invalid or released handle") }, "\(forged)")
        let held = try misuse(3)
        #expect(held.reported == ["lock_destroy of a lock that is held", "lock_release called with an invalid or released handle"], "\(held)")
        let wrongKind = try misuse(4)
        #expect(wrongKind.reported.count == 1 && wrongKind.reported[0].hasPrefix("event_signal"), "a lock is not an event: \(wrongKind)")
        let fresh = try misuse(5)
        #expect(fresh.result == "2000" && fresh.reported.isEmpty, "a new lock after all of it: \(fresh)")
        let huge = try misuse(6)
        #expect(try misuse(7).result == "1", "a timer armed with the largest delay does not fire at once")
        #expect(huge.result == "4", "mem_alloc of SIZE_MAX, past Int, just under it with red zones and past 1 GiB: each NULL: \(huge)")
        // A timer runs as its driver's callback: what it does wrong is that
        // driver's, and a handle it uses is checked against that driver.
        let deferred = try misuse(8)
        #expect(deferred.result == "0" && deferred.reported == ["lock_acquire called with an invalid or released handle"], "\(deferred)")
        let unheld = try misuse(9)
        #expect(unheld.reported == ["lock_release of a lock this thread does not hold (a lock is released by the thread that took it)"], "\(unheld)")
    }
}

/// Block completions name the request they finish by pointer, and the
/// host must not trust it: a completion of a request the host never lent
/// (here a copy of the real one, a common driver bug) is refused and
/// reported before the host reads or writes through it.
@Suite struct LentRequestTests {
    @Test func completingACopyOfARequestIsRefusedAndTheRealOneStillCounts() throws {
        let driver = try Fixtures.mutatedReferenceDriver("nvmelite", [
            ("    for (i = 0; i < n; i++) d->ctx->block->complete(done[i], status[i]);\n",
             "    for (i = 0; i < n; i++) {\n        oy_block_request copy = *done[i]; /* the defect: completes a copy first */\n"
                + "        d->ctx->block->complete(&copy, status[i]);\n        d->ctx->block->complete(done[i], status[i]);\n    }\n"),
        ])
        let system = try Fixtures.bareSystem(drivers: [driver])
        defer { system.shutdown() }
        let disk = try #require(system.kernel.blockLayer.disks.first)
        let result = try VerifiedIO(seed: 11, regionBlocks: 1024).run(on: disk)
        #expect(result.transfers > 0, "every request finished by its real completion, data verified")
        let instance = try #require(system.kernel.instance(at: system.testbed.nvmeSlot.address))
        #expect(instance.library.violations.contains { $0.contains("not one the host lent") }, "\(instance.library.violations.prefix(3))")
    }
}
