import Foundation
import Guest
import Hypervisor
import OyakoTestSupport
import Synchronization
import Testing
import Workloads
import VMBus

/// Hostile children with random input, beyond the hand-written cases:
/// whatever a child sends, the root answers or closes that child's channel
/// with a reason, and never falls over.
@Suite(.serialized) struct RandomHostileChildTests {
    /// Opcodes the SCSI target serves, and some it does not.
    static let opcodes: [UInt8] = [0x00, 0x03, 0x12, 0x1A, 0x25, 0x28, 0x2A, 0x35, 0x5A, 0x88, 0x8A, 0x91, 0x9E, 0xA0, 0x01, 0x04, 0xC1, 0xFF]

    /// Well-framed SRBs (a page list that agrees with the data length) whose
    /// CDBs are random: each is an answer, good or CHECK CONDITION, never a
    /// violation, and the channel serves I/O afterwards.
    @Test func randomCDBsAreAnsweredAndTheChannelStaysOpen() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let outcome = GuestOutcome<(unanswered: [String], good: Int, open: Bool, works: Bool)>()
        try system.startChild(name: "random", start: 0, blocks: 1024) { os in
            outcome.finish {
                let g = try RawStorageGuest(os: os)
                try g.initialize()
                var random = SeededGenerator(seed: 0x0A7A_2026)
                var unanswered: [String] = []
                var good = 0
                for id in UInt64(100)..<2100 {
                    let (cdb, direction, ranges) = Self.randomSRB(&random, data: g.data.gpa)
                    guard let answer = try g.srb(id, cdb, direction: direction, ranges: ranges) else {
                        unanswered.append("request \(id): CDB \(cdb.map { String($0, radix: 16) }), \(direction), \(ranges.count) page(s)")
                        continue
                    }
                    if answer.isGood { good += 1 }
                    if !g.channel.isOpen { break }
                }
                let works = try g.write(5000, lba: 3, blocks: 1, ranges: [GPARange(gpa: g.data.gpa, length: 512)])?.isGood == true
                return (unanswered, good, g.channel.isOpen, works)
            }
        }
        let result = try outcome.wait(timeout: 120)
        #expect(result.unanswered.isEmpty, "\(result.unanswered.prefix(5))")
        #expect(result.good > 100, "enough random requests succeed (\(result.good)) that the target's I/O paths are reached, not only its refusals")
        #expect(result.open && result.works, "a random CDB is an answer, not a violation: the channel stays open and serves I/O")
        try rootStillWorks(system)
    }

    /// Valid vstor packets with random bytes changed, cut or added: the
    /// root answers each or closes the channel with a reason; its own disk
    /// goes on. Most mutations are violations, so each seed gets a child of
    /// its own and ends at its first.
    @Test func mutatedPacketsAreAnsweredOrCloseTheChannelWithAReason() throws {
        var closed = 0
        for seed in UInt64(1)...50 {
            let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
            defer { system.shutdown() }
            let outcome = GuestOutcome<(sent: Int, open: Bool)>()
            let child = try system.startChild(name: "mutant\(seed)", start: 0, blocks: 1024) { os in
                outcome.finish {
                    let g = try RawStorageGuest(os: os)
                    try g.initialize()
                    var random = SeededGenerator(seed: seed)
                    var sent = 0
                    for id in UInt64(100)..<400 where g.channel.isOpen {
                        let (cdb, direction, ranges) = Self.randomSRB(&random, data: g.data.gpa)
                        let length = ranges.reduce(0) { $0 + Int($1.length) }
                        let valid = StorageProtocol.Message.srb(StorageProtocol.SCSIRequest(cdb: cdb, direction: direction, dataTransferLength: length)).encoded
                        try g.send(id, payload: Self.mutate(valid, &random), ranges: ranges, wait: Bool.random(using: &random))
                        sent += 1
                    }
                    _ = os.vp.halt(until: { !g.channel.isOpen }, timeout: 1)
                    return (sent, g.channel.isOpen)
                }
            }
            let result = try outcome.wait(timeout: 120)
            if !result.open {
                closed += 1
                #expect(closeCause(system, child) != nil, "seed \(seed): a closed channel says why")
            }
            #expect(result.sent > 0)
            try rootStillWorks(system)
        }
        #expect(closed > 25, "most mutations are violations; if none closes a channel, the mutations miss the parser")
    }

    /// VMBus control messages from a child at random: valid ones of every
    /// kind with bytes changed, cut or added, to both message connections.
    /// The root refuses what it must and its VMBus goes on: a second child
    /// started afterwards finds its disk and does verified I/O.
    @Test func mutatedChannelMessagesLeaveTheRootsVMBusServing() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let hostile = GuestOutcome<Int>()
        try system.startChild(name: "noise", start: 0, blocks: 1024) { os in
            hostile.finish {
                try os.boot()
                var random = SeededGenerator(seed: 0xC4A2)
                let relid = os.vmbus.offers.first?.relid ?? 1
                let seeds: [ChannelMessage] = [
                    .requestOffers, .initiateContact(version: 0x0005_0002), .unload,
                    .openChannel(relid: relid, openID: 7, ringGPADL: 1, downstreamPageOffset: 2, targetVP: 0),
                    .closeChannel(relid: relid),
                    .gpadlHeader(relid: relid, gpadl: 5, totalPages: 4, pfns: [0x100, 0x101]),
                    .gpadlBody(message: 1, gpadl: 5, pfns: [0x102, 0x103]),
                    .gpadlTeardown(relid: relid, gpadl: 5),
                ]
                var posted = 0
                for _ in 0..<600 {
                    let bytes = Self.mutate(seeds.randomElement(using: &random)!.encode(), &random)
                    let connection = Bool.random(using: &random) ? Topology.childMessageConnection : Topology.childMessageConnectionV5
                    if (try? os.partition.hypercalls.postMessage(connectionID: connection, type: ChannelMessage.synicMessageType,
                                                                   payload: Array(bytes.prefix(240)))) != nil {
                        posted += 1
                    }
                    _ = os.vp.halt(until: { false }, timeout: 0.0005)
                }
                return posted
            }
        }
        #expect(try hostile.wait(timeout: 120) > 100, "the hypervisor took the messages")
        let second = GuestOutcome<Bool>()
        try system.startChild(name: "after", start: 2048, blocks: 1024) { os in
            second.finish {
                try os.boot()
                let storage = try #require(try os.openStorage().first)
                let pattern = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 13) }
                try storage.writeBlocks(lba: 8, bytes: pattern)
                return try storage.readBlocks(lba: 8, count: pattern.count / storage.blockSize) == pattern
            }
        }
        #expect(try second.wait(timeout: 60), "a child started afterwards does verified I/O over VMBus")
        try rootStillWorks(system)
    }

    /// A random CDB (its opcode often one the target knows, its fields
    /// random), a direction, and whole pages of the child's data area that
    /// match the data length.
    static func randomSRB(_ random: inout SeededGenerator, data: UInt64) -> ([UInt8], StorageProtocol.DataDirection, [GPARange]) {
        var cdb = (0..<Int.random(in: 6...16, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
        if Int.random(in: 0..<4, using: &random) != 0 { cdb[0] = opcodes.randomElement(using: &random)! }
        // Small LBAs and lengths half the time, so that transfers reach the disk.
        if Bool.random(using: &random), cdb.count >= 10 {
            for i in 2..<6 { cdb[i] = 0 }
            cdb[5] = UInt8.random(in: 0...255, using: &random)
            cdb[7] = 0
            cdb[8] = UInt8.random(in: 0...8, using: &random)
        }
        let direction = [StorageProtocol.DataDirection.read, .write, .none].randomElement(using: &random)!
        guard direction != .none else { return (cdb, direction, []) }
        let pages = Int.random(in: 1...8, using: &random)
        let first = Int.random(in: 0...(64 - pages), using: &random)
        let length = Bool.random(using: &random) ? pages * 4096 : Int.random(in: 1...(pages * 4096), using: &random)
        return (cdb, direction, [GPARange(gpa: data + UInt64(first * 4096), length: UInt32(length))])
    }

    /// `bytes` with a few bytes changed, or cut short, or lengthened.
    static func mutate(_ bytes: [UInt8], _ random: inout SeededGenerator) -> [UInt8] {
        var out = bytes
        switch Int.random(in: 0..<6, using: &random) {
        case 0: out = Array(out.prefix(Int.random(in: 0..<out.count, using: &random)))
        case 1: out += (0..<Int.random(in: 1...64, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
        default:
            for _ in 0..<Int.random(in: 1...4, using: &random) {
                out[Int.random(in: 0..<out.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
            }
        }
        return out
    }
}
