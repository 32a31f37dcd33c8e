import SystemAssembly
import Foundation
import Guest
import Hypervisor
import OyakoTestSupport
import Synchronization
import Testing
import VirtualizationStack
import VMBus
import Workloads

/// A guest that speaks the storage protocol by hand, so it can break it.
final class RawStorageGuest {
    let os: GuestOS
    let offer: Offer
    let channel: ClientChannel
    let ringGPA: UInt64
    let ringPointer: UnsafeMutableRawPointer
    let data: (gpa: UInt64, pointer: UnsafeMutableRawPointer)
    var completions: [UInt64: UInt32] = [:]
    static let ringPages = 17

    init(os: GuestOS) throws {
        self.os = os
        try os.boot()
        offer = try #require(os.vmbus.offers.first)
        let ring = try #require(os.allocate(pages: 2 * Self.ringPages))
        data = try #require(os.allocate(pages: 64))
        ringGPA = ring.gpa
        ringPointer = ring.pointer
        channel = try os.vmbus.open(relid: offer.relid, ringGPA: ring.gpa, ringPages: 2 * Self.ringPages, outboundPages: Self.ringPages)
        channel.onPacket = { [unowned self] packet in
            var reader = ByteReader(packet.payload)
            completions[packet.transactionID] = (try? StorageProtocol.decodeHeader(&reader))?.status
        }
    }

    func request(_ id: UInt64, _ operation: StorageProtocol.Operation, ranges: [GPARange] = [], wait: Bool = true,
                 _ body: (inout ByteWriter) -> Void = { _ in }) throws -> UInt32? {
        let payload = StorageProtocol.encode(StorageProtocol.Header(operation: operation), body)
        try channel.send(Packet(kind: ranges.isEmpty ? .inband : .gpaDirect, flags: Packet.completionRequested, transactionID: id, ranges: ranges, payload: payload))
        guard wait else { return nil }
        _ = os.vp.halt(until: { self.completions[id] != nil || !self.channel.isOpen }, timeout: 5)
        return completions[id]
    }

    /// The full, correct handshake.
    func initialize() throws {
        _ = try request(1, .beginInitialization)
        _ = try request(2, .queryProtocolVersion) { $0.u16(0x0602); $0.u16(0) }
        _ = try request(3, .queryProperties)
        let gpadl = try os.vmbus.createGPADL(relid: offer.relid, gpa: data.gpa, pages: 64)
        #expect(try request(4, .registerDataBuffer) { $0.u32(gpadl) } == StorageProtocol.Status.success)
        #expect(try request(5, .endInitialization) == StorageProtocol.Status.success)
    }

    func srb(_ id: UInt64, _ command: StorageProtocol.Command, lba: UInt64, blocks: Int, ranges: [GPARange], wait: Bool = true) throws -> UInt32? {
        try request(id, .executeSRB, ranges: ranges, wait: wait) {
            StorageProtocol.encode(StorageProtocol.SRB(command: command, blocks: UInt32(blocks), lba: lba), into: &$0)
        }
    }

    /// Signal the root as if new packets were there.
    func signalRoot() throws {
        try os.partition.hypercalls.signalEvent(connectionID: Topology.childEventConnection, flag: Int(offer.relid))
    }
}

/// Waits for the root to close a child's channel; returns why.
func closeCause(_ system: RootSystem, _ child: VMManager.Child, timeout: Double = 10) -> ChannelCloseCause? {
    let deadline = Date(timeIntervalSinceNow: timeout)
    while Date() < deadline {
        if let channel = system.root.vmbus.channels(of: child.id).values.first, let cause = channel.cause { return cause }
        Thread.sleep(forTimeInterval: 0.01)
    }
    return nil
}

/// The root's own disk still does verified I/O.
func rootStillWorks(_ system: RootSystem) throws {
    let disk = try #require(system.disk)
    _ = try VerifiedIO(seed: 77, regionStart: 60000, regionBlocks: 1024).run(on: disk)
}

@Suite(.serialized) struct HostileChildTests {
    @Test func gpadlNamingPagesTheChildDoesNotOwnIsRefused() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let outcome = GuestOutcome<(VMBusError?, Bool)>()
        try system.startChild(name: "hostile", start: 0, blocks: 2048) { os in
            outcome.finish {
                try os.boot()
                let relid = try #require(os.vmbus.offers.first).relid
                var refusal: VMBusError?
                // Page 100000 is far beyond this child's 8 MiB.
                do { _ = try os.vmbus.createGPADL(relid: relid, pfns: [5, 6, 100_000]) } catch { refusal = error as? VMBusError }
                // The child can still use its storage normally afterwards.
                let disk = try #require(try os.openStorage().first)
                try disk.writeBlocks(lba: 0, bytes: [UInt8](repeating: 3, count: 512))
                return (refusal, try disk.readBlocks(lba: 0, count: 1) == [UInt8](repeating: 3, count: 512))
            }
        }
        let (refusal, works) = try outcome.wait()
        guard case .gpadlRefused? = refusal else {
            Issue.record("expected the GPADL refused, got \(String(describing: refusal))")
            return
        }
        #expect(works)
        #expect(system.root.vmbus.eventLog.contains { $0.contains("names pages the child does not own") })
        try rootStillWorks(system)
    }

    @Test func rangeOutsideTheGPADLClosesOnlyThatChannelAndKeepsAcknowledgedData() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        // A sibling does verified I/O before, during and after the violation.
        let siblingRunning = DispatchSemaphore(value: 0)
        let violationSeen = Atomic<Bool>(false)
        let sibling = GuestOutcome<(before: Int, after: Int)>()
        try system.startChild(name: "good", start: 8192, blocks: 8192) { os in
            sibling.finish {
                try os.boot()
                let disk = try #require(try os.openStorage().first)
                var before = 0, after = 0
                while after < 2 {
                    let seen = violationSeen.load(ordering: .acquiring)
                    _ = try VerifiedIO(seed: UInt64(9 + before + after), regionBlocks: 8192).run(on: disk)
                    if seen { after += 1 } else { before += 1 }
                    if before == 1 && after == 0 { siblingRunning.signal() }
                }
                return (before, after)
            }
        }
        #expect(siblingRunning.wait(timeout: .now() + 20) == .success, "the sibling's I/O is under way")

        let hostileDone = GuestOutcome<(acknowledged: UInt32?, closed: Bool, offerWithdrawn: Bool)>()
        let hostile = try system.startChild(name: "hostile", start: 0, blocks: 4096) { os in
            hostileDone.finish {
                let g = try RawStorageGuest(os: os)
                try g.initialize()
                // An acknowledged write first...
                g.data.pointer.initializeMemory(as: UInt8.self, repeating: 0x5A, count: 4096)
                let acknowledged = try g.srb(10, .write10, lba: 0, blocks: 8, ranges: [GPARange(gpa: g.data.gpa, length: 4096)])
                _ = try g.srb(11, .synchronizeCache, lba: 0, blocks: 0, ranges: [])
                // ...then a read into the child's ring pages, outside the data GPADL.
                _ = try g.srb(12, .read10, lba: 0, blocks: 8, ranges: [GPARange(gpa: g.ringGPA, length: 4096)], wait: false)
                let closed = os.vp.halt(until: { !g.channel.isOpen }, timeout: 10)
                return (acknowledged, closed, !os.vmbus.offers.contains { $0.relid == g.offer.relid })
            }
        }
        let cause = closeCause(system, hostile)
        violationSeen.store(true, ordering: .releasing)
        let outcome = try hostileDone.wait()
        #expect(outcome.acknowledged == StorageProtocol.Status.success)
        guard case .violation(.rangeOutsideDataBuffer(_, 4096))? = cause else {
            Issue.record("expected the range outside the data buffer, got \(String(describing: cause))")
            return
        }
        #expect(outcome.closed && outcome.offerWithdrawn, "the offending child sees its channel closed and its offer rescinded")
        let (before, after) = try sibling.wait()
        #expect(before >= 1 && after >= 2, "the sibling's verified I/O went on across the violation (\(before) rounds before, \(after) after)")
        // The write acknowledged before the violation is in the disk image file.
        let image = try FileHandle(forReadingFrom: URL(fileURLWithPath: system.state + "/" + Testbed.diskImageName))
        defer { try? image.close() }
        #expect(try image.read(upToCount: 4096) == Data(repeating: 0x5A, count: 4096))
        try rootStillWorks(system)
    }

    @Test func corruptRingIndexClosesTheChannel() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let ready = GuestOutcome<Void>()
        let child = try system.startChild(name: "hostile", start: 0, blocks: 1024) { os in
            ready.finish {
                let g = try RawStorageGuest(os: os)
                g.ringPointer.storeBytes(of: UInt32(0x7FFF_FFF8), as: UInt32.self) // write_index far outside the ring
                try g.signalRoot()
            }
        }
        try ready.wait()
        let cause = closeCause(system, child)
        guard case .violation(.ring(.indexOutOfRange("write_index", 0x7FFF_FFF8, _)))? = cause else {
            Issue.record("expected write_index out of range, got \(String(describing: cause))")
            return
        }
        try rootStillWorks(system)
    }

    @Test func packetLongerThanTheDataInTheRingClosesTheChannel() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let ready = GuestOutcome<Void>()
        let child = try system.startChild(name: "hostile", start: 0, blocks: 1024) { os in
            ready.finish {
                let g = try RawStorageGuest(os: os)
                // Write a packet with our own view of the ring, claim len8 beyond it, then signal.
                let ring = try #require(Ring(base: g.ringPointer, size: RawStorageGuest.ringPages * 4096))
                _ = try ring.write(Packet(kind: .inband, flags: 1, transactionID: 1, payload: [UInt8](repeating: 0, count: 16)))
                (g.ringPointer + Ring.controlSize).storeBytes(of: UInt16(4000), toByteOffset: 4, as: UInt16.self)
                try g.signalRoot()
            }
        }
        try ready.wait()
        let cause = closeCause(system, child)
        guard case .violation(.ring(.lengthBeyondData))? = cause else {
            Issue.record("expected a packet longer than the data, got \(String(describing: cause))")
            return
        }
        try rootStillWorks(system)
    }

    @Test func reusedTransactionIDClosesTheChannel() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let ready = GuestOutcome<Void>()
        let child = try system.startChild(name: "hostile", start: 0, blocks: 4096) { os in
            ready.finish {
                let g = try RawStorageGuest(os: os)
                try g.initialize()
                // The device holds the first request, so the second with
                // its id is a reuse whatever the machine's timing.
                system.nvme.holdCommands(true)
                for _ in 0..<2 {
                    _ = try g.srb(99, .write10, lba: 0, blocks: 128, ranges: [GPARange(gpa: g.data.gpa, length: 65536)], wait: false)
                }
                // Once the root has seen the reuse, the held request may finish.
                let deadline = Date(timeIntervalSinceNow: 10)
                while system.root.vmbus.channels(of: os.partition.id).values.first?.cause == nil && Date() < deadline { usleep(1000) }
                system.nvme.holdCommands(false)
                // The root rescinds the channel after the violation.
                #expect(os.vp.halt(until: { !g.channel.isOpen }, timeout: 10))
            }
        }
        try ready.wait()
        #expect(closeCause(system, child) == .violation(.transactionReused(99)))
        try rootStillWorks(system)
    }

    @Test func ioBeforeInitializationClosesTheChannel() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let ready = GuestOutcome<Void>()
        let child = try system.startChild(name: "hostile", start: 0, blocks: 1024) { os in
            ready.finish {
                let g = try RawStorageGuest(os: os)
                _ = try g.srb(1, .read10, lba: 0, blocks: 1, ranges: [GPARange(gpa: g.data.gpa, length: 512)], wait: false)
            }
        }
        try ready.wait()
        #expect(closeCause(system, child) == .violation(.outOfOrder("executeSRB", state: "fresh")))
    }

    @Test func controlMessagesInTheWrongStateAreRefused() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let outcome = GuestOutcome<VMBusError?>()
        try system.startChild(name: "hostile", start: 0, blocks: 1024) { os in
            outcome.finish {
                try os.boot()
                try os.vmbus.sendRaw(.gpadlBody(message: 1, gpadl: 4242, pfns: [1]))
                try os.vmbus.sendRaw(.openChannel(relid: 9, openID: 1, ringGPADL: 1, downstreamPageOffset: 2, targetVP: 0))
                let ring = try #require(os.allocate(pages: 8))
                var refusal: VMBusError?
                do { _ = try os.vmbus.open(relid: 33, ringGPA: ring.gpa, ringPages: 8, outboundPages: 4) } catch { refusal = error as? VMBusError }
                return refusal
            }
        }
        let refusal = try outcome.wait()
        guard case .gpadlRefused? = refusal else {
            Issue.record("expected the ring GPADL for an unknown relid refused, got \(String(describing: refusal))")
            return
        }
        let log = system.root.vmbus.eventLog
        #expect(log.contains { $0.contains("GPADL body for unknown GPADL 4242") })
        #expect(log.contains { $0.contains("open of relid 9 refused: no such offer") })
        try rootStillWorks(system)
    }

    /// The root withdraws the disk while the child is busy: the child's I/O
    /// fails cleanly, nothing hangs, and the root carries on.
    @Test func rescindDuringIO() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let started = DispatchSemaphore(value: 0)
        let outcome = GuestOutcome<(Int, String)>()
        let child = try system.startChild(name: "busy", start: 0, blocks: 8192) { os in
            outcome.finish {
                try os.boot()
                let disk = try #require(try os.openStorage().first)
                started.signal()
                var rounds = 0
                do {
                    while rounds < 100_000 {
                        try disk.writeBlocks(lba: UInt64(rounds % 64) * 64, bytes: [UInt8](repeating: UInt8(truncatingIfNeeded: rounds), count: 32768))
                        rounds += 1
                    }
                } catch {
                    return (rounds, "\(error)")
                }
                return (rounds, "")
            }
        }
        #expect(started.wait(timeout: .now() + 10) == .success)
        Thread.sleep(forTimeInterval: 0.1)
        system.root.vmbus.rescind(relid: 1, child: child.id)
        let (rounds, error) = try outcome.wait(timeout: 30)
        #expect(rounds > 0)
        #expect(!error.isEmpty, "the child noticed the rescind")
        #expect(system.root.vmbus.channels(of: child.id).isEmpty)
        try rootStillWorks(system)
    }
}
