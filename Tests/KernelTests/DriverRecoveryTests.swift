import Devices
import DriverHost
import Foundation
import Kernel
import Machine
import OyakoTestSupport
import Synchronization
import SystemAssembly
import Testing
import Workloads

/// Drivers that fail while the OS does I/O: the supervisor notices a hung
/// driver, restarts it and re-issues what it had accepted, or gives the
/// device up cleanly when the driver will not come back.
@Suite(.serialized) struct DriverRecoveryTests {
    static func quickPolicy() -> RestartPolicy {
        var policy = RestartPolicy()
        policy.hangTimeout = .seconds(1)
        policy.backoff = .milliseconds(10)
        return policy
    }

    @Test func aLostCompletionIsRecoveredAndNoAcknowledgedWriteIsLost() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.nvmeliteLosingCompletion(300)], diskSize: 8 << 20)
        defer { system.shutdown() }
        system.kernel.supervisor.policy = Self.quickPolicy()
        let disk = try #require(system.disk)
        let ledger = WriteLedger(blockSize: disk.geometry.blockSize)
        let result = ledger.run(workers: 3, on: disk, until: { system.kernel.supervisor.events.count >= 1 }, thenWrites: 100)

        #expect(result.errors.isEmpty, "callers saw latency, not errors: \(result.errors)")
        // On a loaded machine a flush can outlast the 1 s hang timeout too: a
        // needless restart is allowed, a failed one is not.
        let events = system.kernel.supervisor.events
        let reissuedInAll = events.reduce(0) { sum, event in
            if case .restarted(_, let n) = event.outcome { return sum + n } else { return sum }
        }
        #expect(!events.isEmpty && events.allSatisfy { !$0.outcome.gaveUp }, "\(events)")
        #expect(events.allSatisfy { $0.cause.contains("; no call into the driver is running: it took the request and has not completed it") },
                "the cause tells a lost completion from a stuck call: \(events.map(\.cause))")
        #expect(reissuedInAll >= 1, "the request whose completion was lost went to the restarted driver: \(events)")
        #expect(disk.statistics.reissued == reissuedInAll)
        #expect(disk.statistics.failed == 0)
        #expect(system.kernel.blockLayer.disks.count == 1 && system.kernel.blockLayer.disks.first === disk, "the same disk throughout")
        try disk.flush()
        #expect(try ledger.verify(image: system.state + "/" + Testbed.diskImageName) == [], "every acknowledged write is in the disk image")
    }

    /// In process, a restart for a hang says where the driver's thread is
    /// when one is inside it: here a submit that spins for 3 s on one LBA
    /// while other requests pass through the driver. The restart waits 1 s
    /// (the hang timeout) for that submit, then detaches the driver under
    /// it, and the submit comes back refusing (OY_E_STATE: the instance is
    /// gone): its write goes to the restarted driver, not back as an error.
    @Test func aRestartInProcessSaysWhereTheDriversThreadIsStuck() throws {
        let slow = try Fixtures.mutatedReferenceDriver("nvmelite", [(
            "    memset(&cmd, 0, sizeof(cmd));\n    switch (req->op) {",
            "    memset(&cmd, 0, sizeof(cmd));\n    static int fixture_spun;\n    if (req->lba == 4242 && !fixture_spun++) { /* the defect: 3 s in submit, once */\n"
                // The instance is detached (and freed) under the spin: the
                // spin holds only the host's table, and the submit asks
                // the live-instance set before it touches the instance again.
                + "        const oy_host *h = d->ctx->host;\n"
                + "        uint64_t until = h->monotonic_ns(h) + 3000000000ull;\n"
                + "        while (h->monotonic_ns(h) < until) {}\n"
                + "        if (!oy_instance_contains(&nvl_instances, d)) return OY_E_STATE;\n    }\n    switch (req->op) {"
        )])
        let system = try Fixtures.bareSystem(drivers: [slow], diskSize: 8 << 20)
        defer { system.shutdown() }
        system.kernel.supervisor.policy = Self.quickPolicy()
        let disk = try #require(system.disk)
        let ledger = WriteLedger(blockSize: disk.geometry.blockSize)
        let block = [UInt8](repeating: 0x5A, count: disk.geometry.blockSize)
        let slowWrite = DispatchSemaphore(value: 0)
        let slowError = Mutex<BlockError?>(nil)
        startThread(named: "slow-write") {
            do throws(BlockError) { try disk.write(lba: 4242, bytes: block) } catch { slowError.withLock { $0 = error } }
            slowWrite.signal()
        }
        let result = ledger.run(workers: 2, on: disk, until: { system.kernel.supervisor.events.count >= 1 }, thenWrites: 20)
        #expect(slowWrite.wait(timeout: .now() + 60) == .success, "the slow write came back")
        #expect(slowError.withLock { $0 } == nil, "and succeeded")

        let events = system.kernel.supervisor.events
        let cause = events.first?.cause ?? ""
        #expect(cause.hasPrefix("a request was with it for") && cause.contains("; the driver's submit did not return (its thread is in nvl_submit+0x"),
                "the restart names the callback and the function its thread is in: \(events.map(\.cause))")
        #expect(events.count == 1 && events.allSatisfy { !$0.outcome.gaveUp }, "\(events)")
        #expect(result.errors.isEmpty, "callers saw latency, not errors: \(result.errors)")
        #expect(try disk.read(lba: 4242, count: block.count) == block, "the write the old driver refused on its way out went to the new one")
    }

    @Test func aDriverThatNeverComesBackFailsTheDeviceCleanly() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.nvmeliteLosingCompletion(200, failRestarts: true), try Fixtures.templateDriver()],
                                             diskSize: 8 << 20)
        defer { system.shutdown() }
        system.kernel.supervisor.policy = Self.quickPolicy()
        let disk = try #require(system.disk)
        let ledger = WriteLedger(blockSize: disk.geometry.blockSize)
        let result = ledger.run(workers: 2, on: disk, until: { system.kernel.blockLayer.disks.isEmpty }, thenWrites: 0)

        let events = system.kernel.supervisor.events
        #expect(events.count == 1 && events.first?.outcome == .gaveUp(attempts: 5), "five restarts failed, then the policy gave up: \(events)")
        #expect(system.kernel.blockLayer.disks.isEmpty, "the disk is gone")
        #expect(!result.errors.isEmpty && result.errors.allSatisfy { $0.status == .deviceGone }, "callers were told the device is gone: \(result.errors)")
        do {
            try disk.write(lba: 0, bytes: [UInt8](repeating: 1, count: disk.geometry.blockSize))
            Issue.record("a write to a failed disk succeeded")
        } catch {
            #expect(error.status == .deviceGone)
        }
        #expect(system.kernel.entropy.sources.count == 1, "other devices keep their drivers")
        #expect(try system.kernel.entropy.read(64).count == 64, "and keep working")
        #expect(try ledger.verify(image: system.state + "/" + Testbed.diskImageName) == [], "writes acknowledged before the failure are in the image")
    }

    @Test func restartsBackOffAndTheWindowLimitsThem() {
        var policy = RestartPolicy()
        policy.backoff = .milliseconds(100)
        policy.maxBackoff = .milliseconds(500)
        #expect((1...5).map { policy.delay(beforeRestart: $0) } == [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(500), .milliseconds(500)])
    }
}

/// Writers that remember the last write the disk acknowledged for every
/// block they own, to check the disk image against afterwards.
final class WriteLedger: @unchecked Sendable {
    // @unchecked Sendable: `acknowledged` is guarded by its Mutex.
    struct Result {
        var errors: [BlockError] = []
    }

    let blockSize: Int
    /// Blocks each worker owns (its region is disjoint from the others').
    let blocksPerWorker: UInt64 = 512
    private let acknowledged = Mutex<[UInt64: UInt32]>([:])
    /// A write that failed may or may not have reached the medium.
    private let unacknowledged = Mutex<[UInt64: [UInt32]]>([:])

    init(blockSize: Int) { self.blockSize = blockSize }

    /// Block `lba`'s content for write number `generation`.
    func content(lba: UInt64, generation: UInt32) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: blockSize)
        var state = lba &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(generation)
        for i in bytes.indices {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            bytes[i] = UInt8(truncatingIfNeeded: state >> 56)
        }
        return bytes
    }

    /// `workers` threads write single blocks of their own regions (a flush
    /// every 16 writes) until `done` holds and then `thenWrites` more each,
    /// or until a write fails (a failed device: each worker stops at its
    /// first error, which is returned).
    func run(workers: Int, on disk: Disk, until done: @escaping @Sendable () -> Bool, thenWrites: Int, timeout: Double = 90) -> Result {
        let errors = Mutex<[BlockError]>([])
        let group = DispatchGroup()
        let deadline = Date(timeIntervalSinceNow: timeout)
        for worker in 0..<workers {
            DispatchQueue.global().async(group: group) { [self] in
                var generation: UInt32 = 0
                var after = 0
                var random = SystemRandomNumberGenerator()
                while after < thenWrites || !done(), Date() < deadline {
                    if done() { after += 1 }
                    generation += 1
                    let lba = UInt64(worker) * blocksPerWorker + UInt64.random(in: 0..<blocksPerWorker, using: &random)
                    do throws(BlockError) {
                        try disk.write(lba: lba, bytes: content(lba: lba, generation: generation))
                        acknowledged.withLock { $0[lba] = generation }
                        if generation % 16 == 0 { try disk.flush() }
                    } catch {
                        unacknowledged.withLock { $0[lba, default: []].append(generation) }
                        errors.withLock { $0.append(error) }
                        return
                    }
                }
            }
        }
        group.wait()
        return Result(errors: errors.withLock { $0 })
    }

    /// The blocks whose content in the image is neither their last
    /// acknowledged write nor a later write that failed (which may or may
    /// not have reached the medium, as on any disk).
    func verify(image path: String) throws -> [UInt64] {
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        let failed = unacknowledged.withLock { $0 }
        var wrong: [UInt64] = []
        for (lba, generation) in acknowledged.withLock({ $0 }).sorted(by: { $0.key < $1.key }) {
            try handle.seek(toOffset: lba * UInt64(blockSize))
            let data = [UInt8](try handle.read(upToCount: blockSize) ?? Data())
            let allowed = [generation] + failed[lba, default: []].filter { $0 > generation }
            if !allowed.contains(where: { data == content(lba: lba, generation: $0) }) { wrong.append(lba) }
        }
        return wrong
    }
}
