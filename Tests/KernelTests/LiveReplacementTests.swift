import Devices
import DriverHost
import Foundation
import Kernel
import Machine
import OyakoTestSupport
import Synchronization
import Testing
import Workloads

/// Replacing a disk's driver while the OS keeps submitting: held requests
/// go to the new driver, nothing fails, nothing is lost.
@Suite(.serialized) struct LiveReplacementTests {
    @Test func aHundredReplacementsUnderContinuousVerifiedIO() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let disk = try #require(system.disk)
        let address = try #require(system.machine.bus.enumerate().first { $0.device is NVMeLite }).address
        // The next release of the driver: another file, another library.
        let rebuilt = try system.kernel.loadDriver(path: try Fixtures.mutatedReferenceDriver("nvmelite", [("#define NVMELITE_VERSION \"1.0.0\"", "#define NVMELITE_VERSION \"1.0.1\"")]))
        let original = try #require(system.kernel.instance(at: address)?.library)
        #expect(rebuilt.sha256 != original.sha256 && rebuilt.metadata.version == "1.0.1")

        let stop = Atomic<Bool>(false)
        let rounds = Atomic<Int>(0)
        let failures = Mutex<[String]>([])
        let workers = DispatchGroup()
        for worker in 0..<3 {
            DispatchQueue.global().async(group: workers) {
                var seed = UInt64(worker * 1000)
                while !stop.load(ordering: .relaxed) {
                    do {
                        _ = try VerifiedIO(seed: seed, regionStart: UInt64(worker) * 8192, regionBlocks: 8192).run(on: disk)
                        rounds.add(1, ordering: .relaxed)
                    } catch {
                        failures.withLock { $0.append("worker \(worker): \(error)") }
                        return
                    }
                    seed += 1
                }
            }
        }
        // Replace only once every worker's I/O is flowing, and keep it flowing in between.
        let deadline = Date(timeIntervalSinceNow: 60)
        while rounds.load(ordering: .relaxed) < 3 && failures.withLock({ $0.isEmpty }) && Date() < deadline { usleep(1000) }
        var pauses: [Duration] = []
        var held = 0
        for i in 0..<100 {
            let replacement = try system.kernel.replaceDriver(at: address, with: i % 2 == 0 ? rebuilt : original)
            pauses.append(replacement.pause)
            held += replacement.heldRequests
            usleep(2000)
        }
        let before = rounds.load(ordering: .relaxed)
        while rounds.load(ordering: .relaxed) < before + 3 && failures.withLock({ $0.isEmpty }) && Date() < deadline { usleep(1000) }
        stop.store(true, ordering: .relaxed)
        workers.wait()
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0 })")
        #expect(rounds.load(ordering: .relaxed) > 0, "the workers did verified I/O across the replacements")
        #expect(held > 0, "some requests waited for the new driver")
        #expect(disk.statistics.failed == 0)
        #expect(system.kernel.blockLayer.disks.count == 1 && system.kernel.blockLayer.disks.first === disk, "the same disk throughout")
        #expect(system.kernel.instance(at: address)?.library === original, "100 swaps end where they started")
        let sorted = pauses.sorted()
        print("live replacement: median pause \(sorted[sorted.count / 2]), max \(sorted.last!), \(held) request(s) held in all")
    }

    @Test func aReplacementThatCannotAttachLeavesTheOldDriverServing() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let disk = try #require(system.disk)
        let address = try #require(system.machine.bus.enumerate().first { $0.device is NVMeLite }).address
        try disk.write(lba: 10, bytes: [UInt8](repeating: 0x3C, count: 4096))
        // One that fails attach, one that attaches but registers no disk.
        for defines in [["MUTANT_ATTACH_FAILS"], []] {
            let broken = try system.kernel.loadDriver(path: try Fixtures.fixtureDriver(defines: defines))
            #expect(throws: Kernel.ReplaceError.self) { try system.kernel.replaceDriver(at: address, with: broken) }
            #expect(system.kernel.instance(at: address)?.library.name == "nvmelite")
            #expect(try disk.read(lba: 10, count: 4096) == [UInt8](repeating: 0x3C, count: 4096), "the disk still serves, data intact")
        }
        #expect(system.kernel.blockLayer.disks.count == 1)
    }
}
