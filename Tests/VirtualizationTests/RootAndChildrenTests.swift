import DriverHost
import Foundation
import Guest
import Hypervisor
import Kernel
import Machine
import OyakoTestSupport
import Synchronization
import Testing
import VirtualizationStack
import VMBus
import Workloads

@Suite(.serialized) struct RootPartitionTests {
    /// The same driver file binds in the root, and its device sees root
    /// guest-physical addresses that are not machine addresses.
    @Test func rootRunsTheSameDriverWithNonIdentityDMA() throws {
        let path = try Fixtures.referenceDriver()
        let system = try RootSystem(drivers: [path])
        defer { system.shutdown() }
        #expect(system.kernel.environmentName == "root")
        #expect(system.report.problems.isEmpty, "\(system.report.problems)")
        let library = try #require(system.kernel.loadedDrivers.first)
        #expect(library.sha256 == sha256Hex(ofFile: path))
        let disk = try #require(system.disk)
        let result = try VerifiedIO(seed: 5, regionBlocks: 4096).run(on: disk)
        #expect(result.bytesRead == result.bytesWritten && result.bytesRead > 0)
        // A DMA buffer's device address is a root GPA that maps elsewhere.
        let buffer = try #require(disk.allocateBuffer(length: 4096))
        let gpa = try #require(system.kernel.platform.memory.physical(of: buffer.pointer))
        let spa = try #require(system.root.hypervisor.machineAddress(partition: system.root.hypervisor.root.id, gpa: gpa))
        #expect(spa != gpa)
        #expect(system.root.rootVP.statistics.interrupts > 0, "device interrupts arrived through the hypervisor")
    }

    @Test func twoChildrenDoVerifiedIOConcurrentlyThroughVMBus() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let outcomes = (0..<2).map { _ in GuestOutcome<VerifiedIO.Result>() }
        for i in 0..<2 {
            try system.startChild(name: "child\(i)", start: 8192 + UInt64(i) * 16384, blocks: 16384) { os in
                outcomes[i].finish {
                    try os.boot()
                    let disk = try #require(try os.openStorage().first)
                    var io = VerifiedIO(seed: 100 + UInt64(i), regionBlocks: disk.blockCount)
                    io.sizesInBlocks = [1, 8, 64, 255, 256, 512, 2048]  // 2048 blocks > the 256 KiB max transfer: split
                    return try io.run(on: disk)
                }
            }
        }
        for (i, outcome) in outcomes.enumerated() {
            let result = try outcome.wait()
            #expect(result.bytesWritten > 1 << 20, "child\(i)")
        }
        // Child 1's first block is at root LBA 8192 + 16384, in the image file.
        let image = try Data(contentsOf: URL(fileURLWithPath: system.state + "/nvme0.img"))
        let expected = Pattern.bytes(seed: 101, lba: 0, blockSize: 512, count: 512)
        #expect([UInt8](image[(24576 * 512)..<(24577 * 512)]) == expected)
        let vsps = system.vms.running.flatMap { system.vms.storageProviders(of: $0) }
        #expect(vsps.count == 2 && vsps.allSatisfy { $0.statistics.flushes == 1 && $0.statistics.errors == 0 })
    }

    /// A child's flush reaches the device (an fdatasync of the image); a
    /// flush the device fails is an error for the child, not a success.
    @Test func childFlushReachesTheDeviceAndAFailedOneIsAnError() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let deviceFlushesBefore = system.nvme.statistics.flushes
        let outcome = GuestOutcome<(Int, String)>()
        let child = try system.startChild(name: "c", start: 0, blocks: 1024) { os in
            outcome.finish {
                try os.boot()
                let disk = try #require(try os.openStorage().first)
                try disk.writeBlocks(lba: 0, bytes: [UInt8](repeating: 4, count: 512))
                try disk.flushBlocks()
                let deviceFlushes = system.nvme.statistics.flushes
                system.nvme.injectErrors(true)
                defer { system.nvme.injectErrors(false) }
                var failure = ""
                do { try disk.flushBlocks() } catch { failure = "\(error)" }
                return (deviceFlushes, failure)
            }
        }
        let (deviceFlushes, failure) = try outcome.wait()
        #expect(deviceFlushes == deviceFlushesBefore + 1, "the child's flush became one device flush")
        #expect(!failure.isEmpty, "a flush the device failed reached the child as an error")
        let vsp = try #require(system.vms.storageProviders(of: child).first)
        #expect(vsp.statistics.flushes == 1, "only the flush the device did is counted")
        #expect(vsp.statistics.errors == 1)
    }

    /// Zero copy: the device's DMA for a child's request goes straight to the
    /// machine pages behind the child's own granted pages, through the IOMMU,
    /// not to a bounce buffer in the root.
    @Test func childIOIsDMAIntoTheChildsOwnPages() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let domain = Bus.domain(of: system.testbed.nvmeSlot.address)
        let outcome = GuestOutcome<(writeFrom: UInt64, readInto: UInt64, accesses: [IOMMU.DMAAccess], readBack: Bool)>()
        try system.startChild(name: "c", start: 0, blocks: 1024) { os in
            outcome.finish {
                let g = try RawStorageGuest(os: os)
                try g.initialize()
                let source = g.data.gpa + 4096, target = g.data.gpa + 3 * 4096
                (g.data.pointer + 4096).initializeMemory(as: UInt8.self, repeating: 0xC3, count: 4096)
                system.machine.iommu.startTracing(domain: domain)
                let wrote = try g.write(20, lba: 16, blocks: 8, ranges: [GPARange(gpa: source, length: 4096)])
                let read = try g.read(21, lba: 16, blocks: 8, ranges: [GPARange(gpa: target, length: 4096)])
                let accesses = system.machine.iommu.stopTracing(domain: domain)
                #expect(wrote?.isGood == true && read?.isGood == true)
                let hv = system.root.hypervisor
                let readBack = UnsafeRawBufferPointer(start: g.data.pointer + 3 * 4096, count: 4096).allSatisfy { $0 == 0xC3 }
                return (try #require(hv.machineAddress(partition: os.partition.id, gpa: source)),
                        try #require(hv.machineAddress(partition: os.partition.id, gpa: target)), accesses, readBack)
            }
        }
        let result = try outcome.wait()
        #expect(result.readBack)
        // Queue entries are small; the data moved in whole pages.
        let data = result.accesses.filter { $0.length >= 512 }.map { "\($0.write ? "write" : "read") 0x\(String($0.machineAddress, radix: 16))+\($0.length)" }
        #expect(data == ["read 0x\(String(result.writeFrom, radix: 16))+4096", "write 0x\(String(result.readInto, radix: 16))+4096"],
                "the device read the child's source page and wrote its target page, nothing else")
    }

    @Test func childOutOfRangeLBAIsAnErrorNotAViolation() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let outcome = GuestOutcome<(StorageVSC.StorageError?, Bool)>()
        try system.startChild(name: "c", start: 0, blocks: 128) { os in
            outcome.finish {
                try os.boot()
                let disk = try #require(try os.openStorage().first)
                var message: StorageVSC.StorageError?
                do { _ = try disk.readBlocks(lba: 127, count: 2) } catch { message = error as? StorageVSC.StorageError }
                // Still usable afterwards.
                try disk.writeBlocks(lba: 0, bytes: [UInt8](repeating: 9, count: 512))
                return (message, try disk.readBlocks(lba: 0, count: 1) == [UInt8](repeating: 9, count: 512))
            }
        }
        let (message, stillWorks) = try outcome.wait()
        guard case .readFailed(127, let answer)? = message else {
            Issue.record("expected the read at LBA 127 refused, got \(String(describing: message))")
            return
        }
        #expect(answer.scsiStatus == SCSI.Status.checkCondition && answer.sense == .lbaOutOfRange, "\(answer)")
        #expect(stillWorks)
    }
}

/// The connection handshake as Hyper-V's: the newest version (5.3) wins,
/// INITIATE_CONTACT goes to connection 4, and the guest then posts where
/// the version response says.
@Suite struct VMBusContactTests {
    @Test func aChildContactsAt53OnConnection4() throws {
        let system = try RootSystem(drivers: [])
        defer { system.shutdown() }
        let outcome = GuestOutcome<(UInt32?, UInt32)>()
        try system.startChild(name: "c", start: 0, blocks: 0) { os in
            outcome.finish {
                try os.boot()
                return (os.vmbus.version, os.vmbus.messageConnection)
            }
        }
        let (version, connection) = try outcome.wait()
        #expect(version == 0x0005_0003)
        #expect(connection == Topology.childMessageConnectionV5 && Topology.childMessageConnectionV5 == 4)
        #expect(Topology.contactConnection(for: 0x0004_0000) == 1 && Topology.contactConnection(for: 0x0005_0000) == 4)
    }

    /// Each channel's offer names its own connection id; the guest signals
    /// the root on it with flag 0, and a signal on another channel's
    /// connection wakes only that channel.
    @Test func eachChannelSignalsOnItsOffersConnectionWithFlagZero() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let vswitch = VirtualSwitch(name: "private", kind: .private)
        defer { vswitch.shutdown() }
        let outcome = GuestOutcome<(offers: [Offer], storageSignals: Int, flagOne: HvStatus?, oldShared: HvStatus?, works: Bool)>()
        let child = try system.vms.createChild(name: "c", memorySize: 8 << 20)
        system.vms.offerStorage(to: child, disk: try #require(system.disk), region: 0..<1024)
        system.vms.offerNetwork(to: child, vswitch: vswitch)
        system.vms.start(child) { partition, vp in
            let os = GuestOS(name: "c", partition: partition, vp: vp)
            outcome.finish {
                try os.boot()
                let disk = try #require(try os.openStorage().first)
                try disk.writeBlocks(lba: 0, bytes: [UInt8](repeating: 4, count: 512))
                let works = try disk.readBlocks(lba: 0, count: 1) == [UInt8](repeating: 4, count: 512)
                var flagOne: HvStatus?, oldShared: HvStatus?
                // A channel's port has one flag; the old shared connection is gone.
                do throws(HvStatus) { try os.partition.hypercalls.signalEvent(connectionID: disk.offer.connectionID, flag: 1) } catch { flagOne = error }
                do throws(HvStatus) { try os.partition.hypercalls.signalEvent(connectionID: 2, flag: 1) } catch { oldShared = error }
                return (os.vmbus.offers, disk.ringStatistics.signalsSent, flagOne, oldShared, works)
            }
        }
        let r = try outcome.wait()
        #expect(r.works && r.storageSignals > 0)
        #expect(r.offers.count == 2 && Set(r.offers.map(\.connectionID)).count == 2, "one connection per channel")
        #expect(r.offers.allSatisfy { $0.connectionID == Topology.channelEventConnection(relid: $0.relid) })
        #expect(r.flagOne == .invalidParameter && r.oldShared != nil)
    }
}

/// The root replaces the disk driver under a child's running I/O: the
/// child's verified reads and writes through VMBus never see an error.
@Suite struct LiveReplacementUnderAChildTests {
    @Test func aChildsVerifiedIOContinuesAcrossDriverReplacements() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let address = system.testbed.nvmeSlot.address
        let next = try system.kernel.loadDriver(path: try Fixtures.mutatedReferenceDriver("nvmelite", [("#define NVMELITE_VERSION \"1.0.0\"", "#define NVMELITE_VERSION \"1.0.1\"")]))
        let original = try #require(system.kernel.instance(at: address)?.library)
        let stop = StopFlag()
        let started = DispatchSemaphore(value: 0)
        let outcome = try startVerifiedChild(system, blocks: 8192, minimumRounds: 3, stop: stop, started: started)
        #expect(started.wait(timeout: .now() + 20) == .success)
        var held = 0
        for i in 0..<100 {
            held += try system.kernel.replaceDriver(at: address, with: i % 2 == 0 ? next : original).heldRequests
            Thread.sleep(forTimeInterval: 0.005)
        }
        stop.set()
        #expect(try outcome.wait() >= 3, "the child's verified I/O ran on across 100 replacements")
        #expect(held > 0, "some of the child's requests waited for the next driver")
        #expect(system.disk?.statistics.failed == 0)
    }
}

final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .relaxed) }
    func set() { value.store(true, ordering: .relaxed) }
}

/// Runs verified I/O in a child on `blocks` of the root's disk until `stop`
/// (and at least `minimumRounds` rounds); signals `started` after the first.
/// Returns its rounds, or its error.
func startVerifiedChild(_ system: RootSystem, blocks: UInt64 = 4096, minimumRounds: Int = 0, stop: StopFlag,
                        started: DispatchSemaphore) throws -> GuestOutcome<Int> {
    let outcome = GuestOutcome<Int>()
    try system.startChild(name: "c", start: 0, blocks: blocks) { os in
        outcome.finish {
            try os.boot()
            let disk = try #require(try os.openStorage().first)
            var rounds = 0
            while !stop.isSet || rounds < minimumRounds {
                _ = try VerifiedIO(seed: UInt64(rounds), regionBlocks: blocks).run(on: disk)
                try disk.flushBlocks()
                rounds += 1
                if rounds == 1 { started.signal() }
            }
            return rounds
        }
    }
    return outcome
}

/// The root's driver fails while a child does I/O over VMBus.
@Suite(.serialized) struct DriverRecoveryUnderAChildTests {
    static func quickPolicy() -> RestartPolicy {
        var policy = RestartPolicy()
        policy.hangTimeout = .seconds(1)
        policy.backoff = .milliseconds(10)
        return policy
    }

    /// A child doing verified I/O until the supervisor has acted on the
    /// root's disk driver and some I/O went through the restarted one; the
    /// child's verified rounds (its error, if it saw one, is thrown).
    func childIOAcrossRecovery(_ system: RootSystem) throws -> Int {
        let stop = StopFlag()
        let started = DispatchSemaphore(value: 0)
        let outcome = try startVerifiedChild(system, stop: stop, started: started)
        #expect(started.wait(timeout: .now() + 30) == .success)
        let deadline = Date(timeIntervalSinceNow: 60)
        while system.kernel.supervisor.events.isEmpty && Date() < deadline { usleep(10_000) }
        Thread.sleep(forTimeInterval: 0.5)  // and some I/O through the restarted driver
        stop.set()
        return try outcome.wait()
    }

    @Test func theChildSeesLatencyNotErrorsWhenTheRootsDriverHangs() throws {
        let system = try RootSystem(drivers: [try Fixtures.nvmeliteLosingCompletion(400)])
        defer { system.shutdown() }
        system.kernel.supervisor.policy = Self.quickPolicy()
        #expect(try childIOAcrossRecovery(system) >= 1, "the child's verified I/O ran on")
        // A needless restart (a slow flush on a loaded machine) is allowed, a failed one is not.
        let events = system.kernel.supervisor.events
        #expect(!events.isEmpty && events.allSatisfy { !$0.outcome.gaveUp }, "\(events)")
        #expect(events.contains { if case .restarted(_, let n) = $0.outcome { n >= 1 } else { false } }, "\(events)")
        #expect(system.disk?.statistics.failed == 0)
    }

    @Test func aDeviceTheRootGivesUpOnIsRescindedFromTheChild() throws {
        let system = try RootSystem(drivers: [try Fixtures.nvmeliteLosingCompletion(300, failRestarts: true)])
        defer { system.shutdown() }
        system.kernel.supervisor.policy = Self.quickPolicy()
        let stop = StopFlag()
        let started = DispatchSemaphore(value: 0)
        let outcome = try startVerifiedChild(system, stop: stop, started: started)
        #expect(started.wait(timeout: .now() + 30) == .success)
        // The child's I/O ends with an error once its channel is rescinded: not a hang.
        #expect(throws: (any Error).self) { try outcome.wait(timeout: 60) }
        stop.set()
        #expect(system.kernel.supervisor.events.first?.outcome.gaveUp == true)
        #expect(system.kernel.blockLayer.disks.isEmpty)
        let log = system.root.vmbus.eventLog.joined(separator: "\n")
        #expect(log.contains("rescinded relid") && log.contains("gave up on nvmelite"), "the rescind names the reason:\n\(log)")
    }

    @Test func aChildSeesLatencyNotErrorsWhenTheRootsDriverHostCrashes() throws {
        let marker = Fixtures.temporaryDirectory("crash") + "/crashed"
        let system = try RootSystem(drivers: [try Fixtures.nvmeliteCrashing(afterSubmits: 500, marker: marker)], driverHost: Fixtures.oyakoBinary)
        defer { system.shutdown() }
        system.kernel.supervisor.policy.backoff = .milliseconds(10)  // the default hang timeout: only the crash restarts it
        let first = try #require(system.kernel.driverHostProcess(at: system.testbed.nvmeSlot.address), "the root's disk driver runs in a driver host")
        #expect(try childIOAcrossRecovery(system) >= 1, "the child's verified I/O ran on")
        let events = system.kernel.supervisor.events
        #expect(events.contains { $0.cause.contains("SIGSEGV") } && events.allSatisfy { !$0.outcome.gaveUp }, "\(events)")
        #expect(FileManager.default.fileExists(atPath: marker), "the driver did crash")
        #expect(system.kernel.driverHostProcess(at: system.testbed.nvmeSlot.address) != first)
        #expect(system.disk?.statistics.failed == 0)
    }
}
