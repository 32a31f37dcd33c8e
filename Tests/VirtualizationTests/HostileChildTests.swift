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
    var completions: [UInt64: StorageProtocol.Message] = [:]
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
            completions[packet.transactionID] = try? StorageProtocol.Message.decode(packet.payload)
        }
    }

    /// Sends a raw payload; returns the answer when asked to wait.
    @discardableResult
    func send(_ id: UInt64, payload: [UInt8], ranges: [GPARange] = [], wait: Bool = true) throws -> StorageProtocol.Message? {
        try channel.send(Packet(kind: ranges.isEmpty ? .inband : .gpaDirect, flags: Packet.completionRequested, transactionID: id, ranges: ranges, payload: payload))
        guard wait else { return nil }
        _ = os.vp.halt(until: { self.completions[id] != nil || !self.channel.isOpen }, timeout: 5)
        return completions[id]
    }

    @discardableResult
    func request(_ id: UInt64, _ message: StorageProtocol.Message, ranges: [GPARange] = [], wait: Bool = true) throws -> StorageProtocol.Message? {
        try send(id, payload: message.encoded, ranges: ranges, wait: wait)
    }

    /// The full, correct handshake, as Linux's storvsc does it.
    func initialize() throws {
        #expect(try request(1, StorageProtocol.Message(.beginInitialization))?.status == StorageProtocol.Status.success)
        #expect(try request(2, .version(StorageProtocol.Version.win10))?.status == StorageProtocol.Status.success)
        _ = try request(3, StorageProtocol.Message(.queryProperties))
        #expect(try request(5, StorageProtocol.Message(.endInitialization))?.status == StorageProtocol.Status.success)
    }

    /// One SRB with `cdb`; data is the page list `ranges` (length from the ranges).
    func srb(_ id: UInt64, _ cdb: [UInt8], direction: StorageProtocol.DataDirection, ranges: [GPARange], dataLength: Int? = nil,
             wait: Bool = true) throws -> StorageVSC.Outcome? {
        let length = dataLength ?? ranges.reduce(0) { $0 + Int($1.length) }
        let message = StorageProtocol.Message.srb(StorageProtocol.SCSIRequest(cdb: cdb, direction: direction, dataTransferLength: length))
        return try request(id, message, ranges: ranges, wait: wait).map(StorageVSC.Outcome.init)
    }

    func write(_ id: UInt64, lba: UInt64, blocks: Int, ranges: [GPARange], wait: Bool = true) throws -> StorageVSC.Outcome? {
        try srb(id, SCSI.transfer(write: true, lba: lba, blocks: blocks), direction: .write, ranges: ranges, wait: wait)
    }

    func read(_ id: UInt64, lba: UInt64, blocks: Int, ranges: [GPARange], wait: Bool = true) throws -> StorageVSC.Outcome? {
        try srb(id, SCSI.transfer(write: false, lba: lba, blocks: blocks), direction: .read, ranges: ranges, wait: wait)
    }

    /// Signal the root as if new packets were there.
    func signalRoot() throws {
        try os.partition.hypercalls.signalEvent(connectionID: offer.connectionID, flag: 0)
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

    @Test func rangeOutsideTheChildsMemoryClosesOnlyThatChannelAndKeepsAcknowledgedData() throws {
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

        let hostileDone = GuestOutcome<(acknowledged: StorageVSC.Outcome?, closed: Bool, offerWithdrawn: Bool)>()
        let hostile = try system.startChild(name: "hostile", start: 0, blocks: 4096) { os in
            hostileDone.finish {
                let g = try RawStorageGuest(os: os)
                try g.initialize()
                // An acknowledged write first...
                g.data.pointer.initializeMemory(as: UInt8.self, repeating: 0x5A, count: 4096)
                let acknowledged = try g.write(10, lba: 0, blocks: 8, ranges: [GPARange(gpa: g.data.gpa, length: 4096)])
                _ = try g.srb(11, SCSI.synchronizeCache10, direction: .none, ranges: [])
                // ...then a read into page 100000, far beyond this child's memory.
                _ = try g.read(12, lba: 0, blocks: 8, ranges: [GPARange(gpa: 100_000 * 4096, length: 4096)], wait: false)
                let closed = os.vp.halt(until: { !g.channel.isOpen }, timeout: 10)
                return (acknowledged, closed, !os.vmbus.offers.contains { $0.relid == g.offer.relid })
            }
        }
        let cause = closeCause(system, hostile)
        violationSeen.store(true, ordering: .releasing)
        let outcome = try hostileDone.wait()
        #expect(outcome.acknowledged?.isGood == true)
        guard case .violation(.rangeOutsideChildMemory(100_000 * 4096, 4096))? = cause else {
            Issue.record("expected the range outside the child's memory, got \(String(describing: cause))")
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
                    _ = try g.write(99, lba: 0, blocks: 128, ranges: [GPARange(gpa: g.data.gpa, length: 65536)], wait: false)
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
                _ = try g.read(1, lba: 0, blocks: 1, ranges: [GPARange(gpa: g.data.gpa, length: 512)], wait: false)
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

    /// A destroyed child's guest objects go: nothing keeps its VMBus client,
    /// VP or partition alive, and the disk it was offered keeps nothing of it. A channel kept past its guest OS (a VSC
    /// outliving it) says it is closed when used; it does not reach into the
    /// partition's memory, which is gone.
    @Test func aChannelKeptPastItsGuestIsClosedNotACrash() throws {
        final class Kept: @unchecked Sendable {
            // @unchecked Sendable: written by the guest's thread before its outcome, read after.
            var channel: ClientChannel?
            weak var client: VMBusClient?
            weak var partition: Partition?
        }
        let kept = Kept()
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let disk = try #require(system.disk)
        let observers = disk.removalObserverCount
        do {
            let outcome = GuestOutcome<Bool>()
            let child = try system.startChild(name: "keeper", start: 0, blocks: 1024) { os in
                outcome.finish {
                    let g = try RawStorageGuest(os: os)
                    try g.initialize()
                    kept.channel = g.channel
                    kept.client = os.vmbus
                    kept.partition = os.partition
                    return true
                }
            }
            #expect(try outcome.wait(timeout: 60))
            #expect(disk.removalObserverCount == observers + 1, "the child's virtual disk watches the root's disk")
            system.vms.destroy(child)
        }
        #expect(disk.removalObserverCount == observers, "a destroyed child leaves no observer on a disk that outlives it")
        // The guest's code has returned and its partition is destroyed: its
        // OS, VMBus client, VP and partition go.
        let deadline = Date(timeIntervalSinceNow: 5)
        while (kept.client != nil || kept.partition != nil) && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        #expect(kept.client == nil, "the client outlived its guest (and would keep its VP and partition alive for good)")
        #expect(kept.partition == nil, "the partition, its memory and VPs outlived its destruction")
        let channel = try #require(kept.channel)
        #expect(throws: VMBusError.channelClosed(relid: channel.relid)) {
            try channel.send(Packet(kind: .inband, transactionID: 9, payload: [UInt8](repeating: 0, count: 64)))
        }
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

/// The storage VSP's SRB parser against hostile children: each breach closes
/// that child's channel with its reason; the root's disk keeps working.
@Suite(.serialized) struct HostileSRBTests {
    /// Runs `attack` on an initialised raw guest and returns why the root closed the channel.
    func closed(by attack: @escaping @Sendable (RawStorageGuest) throws -> Void) throws -> ChannelCloseCause? {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let ready = GuestOutcome<Bool>()
        let child = try system.startChild(name: "hostile", start: 0, blocks: 1024) { os in
            ready.finish {
                let g = try RawStorageGuest(os: os)
                try g.initialize()
                try attack(g)
                return os.vp.halt(until: { !g.channel.isOpen }, timeout: 10)
            }
        }
        let cause = closeCause(system, child)
        #expect(try ready.wait(), "the child sees its channel closed")
        try rootStillWorks(system)
        return cause
    }

    static func request(cdbLength: UInt8, dataLength: Int) -> StorageProtocol.Message {
        var srb = StorageProtocol.SCSIRequest(cdb: SCSI.read10(lba: 0, blocks: 1), direction: .read, dataTransferLength: dataLength)
        srb.cdbLength = cdbLength
        return .srb(srb)
    }

    @Test(arguments: [0, 17, 255] as [UInt8])
    func aCDBLengthOutsideOneToSixteenClosesTheChannel(_ length: UInt8) throws {
        let cause = try closed { g in
            try g.request(7, Self.request(cdbLength: length, dataLength: 512), ranges: [GPARange(gpa: g.data.gpa, length: 512)], wait: false)
        }
        #expect(cause == .violation(.badCDBLength(length)))
    }

    @Test func anSRBDataLengthThatDisagreesWithItsPageListClosesTheChannel() throws {
        let longer = try closed { g in
            _ = try g.srb(7, SCSI.read10(lba: 0, blocks: 16), direction: .read, ranges: [GPARange(gpa: g.data.gpa, length: 4096)], dataLength: 8192, wait: false)
        }
        #expect(longer == .violation(.dataLengthMismatch(srb: 8192, pageList: 4096)))
        let withoutPages = try closed { g in
            _ = try g.srb(7, SCSI.read10(lba: 0, blocks: 1), direction: .read, ranges: [], dataLength: 512, wait: false)
        }
        #expect(withoutPages == .violation(.dataLengthMismatch(srb: 512, pageList: 0)))
    }

    @Test func aTruncatedVstorPacketClosesTheChannel() throws {
        let cause = try closed { g in
            try g.send(7, payload: Array(StorageProtocol.Message.srb(StorageProtocol.SCSIRequest(cdb: SCSI.testUnitReady, direction: .none, dataTransferLength: 0)).encoded.prefix(40)), wait: false)
        }
        guard case .violation(.truncated)? = cause else {
            Issue.record("expected a truncated vstor_packet, got \(String(describing: cause))")
            return
        }
    }

    @Test func aBadCDBOrAnotherLUNIsAnAnswerNotAViolation() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let outcome = GuestOutcome<(unknown: StorageVSC.Outcome?, short: StorageVSC.Outcome?, lun: StorageVSC.Outcome?, works: Bool)>()
        try system.startChild(name: "c", start: 0, blocks: 1024) { os in
            outcome.finish {
                let g = try RawStorageGuest(os: os)
                try g.initialize()
                let unknown = try g.srb(10, [0xC1, 0, 0, 0, 0, 0], direction: .none, ranges: [])
                let short = try g.srb(11, [SCSI.Opcode.read16, 0, 0, 0], direction: .read, ranges: [GPARange(gpa: g.data.gpa, length: 512)])
                var other = StorageProtocol.SCSIRequest(cdb: SCSI.testUnitReady, direction: .none, dataTransferLength: 0, lun: 1)
                other.target = 0
                let lun = try g.request(12, .srb(other)).map(StorageVSC.Outcome.init)
                let works = try g.write(13, lba: 3, blocks: 1, ranges: [GPARange(gpa: g.data.gpa, length: 512)])?.isGood == true
                return (unknown, short, lun, works && g.channel.isOpen)
            }
        }
        let result = try outcome.wait()
        #expect(result.unknown?.scsiStatus == SCSI.Status.checkCondition && result.unknown?.sense == .invalidOpcode)
        #expect(result.unknown.map { StorageProtocol.SRBStatus.code($0.srbStatus) } == StorageProtocol.SRBStatus.error)
        #expect(result.short?.sense == .invalidFieldInCDB)
        #expect(result.lun?.srbStatus == StorageProtocol.SRBStatus.invalidLUN)
        #expect(result.works, "the channel stays open and serves I/O")
    }
}

/// One INQUIRY through the whole path — guest packet, VMBus ring, the root's
/// VSP and SCSI target — with every byte that crosses VMBus fixed.
@Suite struct StorageRoundTripTests {
    static func hex(_ s: String) -> [UInt8] {
        let digits = Array(s.filter(\.isHexDigit))
        return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
    }

    @Test func inquiryRoundTripIsByteExact() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let outcome = GuestOutcome<(request: [UInt8], completion: [UInt8], data: [UInt8])>()
        try system.startChild(name: "c", start: 0, blocks: 1024) { os in
            outcome.finish {
                let g = try RawStorageGuest(os: os)
                try g.initialize()
                let request = StorageProtocol.Message.srb(StorageProtocol.SCSIRequest(cdb: SCSI.inquiry(allocationLength: 96), direction: .read, dataTransferLength: 96))
                let answer = try #require(try g.request(20, request, ranges: [GPARange(gpa: g.data.gpa + 0x100, length: 96)]))
                return (request.encoded, answer.encoded, Array(UnsafeRawBufferPointer(start: g.data.pointer + 0x100, count: 36)))
            }
        }
        let r = try outcome.wait()
        // vstor_packet EXECUTE_SRB(3), REQUEST_COMPLETION_FLAG; vmscsi_request length 52, cdb_length 6,
        // sense_info_length 20, data_in READ, 96 bytes; CDB INQUIRY alloc 96; srb_flags 0x48, timeout 60.
        #expect(r.request == Self.hex("""
            03000000 01000000 00000000  3400 00 00  00 00 00 00  06 14 01 00  60000000
            12 00 00 00 60 00  0000000000000000 000000000000  0000 00 00 48000000 3c000000 00000000
            """))
        // COMPLETE_IO(1), status 0; SRB_STATUS_SUCCESS, GOOD, 36 bytes moved, the request echoed.
        #expect(r.completion == Self.hex("""
            01000000 00000000 00000000  3400 01 00  00 00 00 00  06 14 01 00  24000000
            12 00 00 00 60 00  0000000000000000 000000000000  0000 00 00 48000000 3c000000 00000000
            """))
        // Standard INQUIRY data: direct access, SPC-4, format 2, 31 more bytes, CMDQUE; vendor, product, revision.
        #expect(r.data == Self.hex("00 00 06 02 1f 00 00 02") + Array("Oyako   Virtual Disk    1.0 ".utf8))
    }
}

/// The root keeps request mappings of a child's pages for reuse, but never
/// more than its cache holds, however many pages a child names.
@Suite struct RequestMappingCacheTests {
    @Test func aChildNamingManyPagesKeepsTheRootsViewBounded() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let mapped = Mutex<[Int]>([])
        let outcome = GuestOutcome<Bool>()
        try system.startChild(name: "c", start: 0, blocks: 4096, memory: 16 << 20) { os in
            outcome.finish {
                let g = try RawStorageGuest(os: os)
                try g.initialize()
                let area = try #require(os.allocate(pages: 1500))
                var ok = true
                // The same page ten times, then 1500 different ones.
                for i in 0..<10 { ok = try g.write(UInt64(100 + i), lba: 0, blocks: 8, ranges: [GPARange(gpa: area.gpa, length: 4096)])?.isGood == true && ok }
                mapped.withLock { $0.append(system.root.vmbus.requestPagesMapped(child: os.partition.id)) }
                for page in 0..<1500 {
                    let gpa = area.gpa + UInt64(page) * 4096
                    ok = try g.write(UInt64(1000 + page), lba: UInt64(page % 500) * 8, blocks: 8, ranges: [GPARange(gpa: gpa, length: 4096)])?.isGood == true && ok
                }
                mapped.withLock { $0.append(system.root.vmbus.requestPagesMapped(child: os.partition.id)) }
                return ok
            }
        }
        #expect(try outcome.wait())
        let counts = mapped.withLock { $0 }
        #expect(counts.first == 1, "ten requests on one page share one view")
        #expect((counts.last ?? .max) <= 1024 && (counts.last ?? 0) > 100, "the view stays within the cache: \(counts)")
    }
}
