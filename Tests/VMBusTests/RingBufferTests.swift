import Foundation
import Testing
import Workloads
import VMBus

/// A ring in plain memory, with the writer's and the reader's views as two
/// Ring objects over the same bytes, as the two partitions have.
final class RingPair {
    let memory: UnsafeMutableRawPointer
    let size: Int
    let writer: Ring
    let reader: Ring

    init(dataSize: Int = 4096) {
        size = Ring.controlSize + dataSize
        memory = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        writer = Ring(base: memory, size: size)!
        writer.reset()
        reader = Ring(base: memory, size: size)!
    }

    deinit { memory.deallocate() }

    func packet(_ n: Int, bytes: Int = 40) -> Packet {
        Packet(kind: .inband, flags: Packet.completionRequested, transactionID: UInt64(n), payload: [UInt8](repeating: UInt8(truncatingIfNeeded: n), count: bytes))
    }

    func read() throws -> Packet? {
        var signal = false
        return try reader.read(signalWriter: &signal)
    }

    /// Control-page word at `offset`, as the peer would poke it.
    func poke(_ offset: Int, _ value: UInt32) { memory.storeBytes(of: value, toByteOffset: offset, as: UInt32.self) }
}

@Suite struct RingBufferTests {
    @Test func packetsRoundTripAcrossWrapAround() throws {
        let ring = RingPair(dataSize: 1024)
        // 40-byte payload -> 16 + 40 + 8 = 64 bytes in the ring; 1024/64 = 16,
        // so 100 packets wrap the ring six times.
        for n in 0..<100 {
            #expect(try ring.writer.write(ring.packet(n)) != .full)
            let p = try #require(try ring.read())
            #expect(p.transactionID == UInt64(n))
            #expect(p.payload == [UInt8](repeating: UInt8(n), count: 40))
            #expect(p.flags == Packet.completionRequested)
        }
        #expect(try ring.read() == nil)
    }

    @Test func oddPayloadsArePaddedAndPacketsSplitAtTheEnd() throws {
        let ring = RingPair(dataSize: 256)
        for n in 0..<50 {
            let p = Packet(kind: .gpaDirect, transactionID: UInt64(n), ranges: [GPARange(gpa: 0x1000 * UInt64(n), length: 512)], payload: Array(repeating: 7, count: n % 13 + 1))
            #expect(try ring.writer.write(p) != .full)
            // VMBus carries no exact payload length: it comes back padded to 8.
            var padded = p
            padded.payload += [UInt8](repeating: 0, count: (8 - p.payload.count % 8) % 8)
            #expect(try ring.read() == padded)
        }
    }

    @Test func fullRingRefusesAndNeverFillsToEquality() throws {
        let ring = RingPair(dataSize: 1024)
        var written = 0
        while case .written = try ring.writer.write(ring.packet(written)) { written += 1 }
        // 16 packets of 64 bytes would fill 1024 exactly: only 15 fit.
        #expect(written == 15)
        #expect(ring.writer.statistics.writesRefusedFull == 1)
        _ = try ring.read()
        #expect(try ring.writer.write(ring.packet(99)) != .full)
    }

    @Test func blockedWriterIsSignalledOnlyWhenItsPendingSizeFrees() throws {
        let ring = RingPair(dataSize: 1024)
        var n = 0
        while case .written = try ring.writer.write(ring.packet(n)) { n += 1 }
        // The writer needs more than 64 free bytes (pending_send_sz 65); 64 are free.
        #expect(try ring.writer.write(ring.packet(n)) == .full)
        var signal = false
        _ = try ring.reader.read(signalWriter: &signal)
        #expect(signal, "free space crossed from below to at least pending_send_sz")
        signal = false
        _ = try ring.reader.read(signalWriter: &signal)
        #expect(!signal, "already above: no second signal")
        #expect(ring.reader.statistics.readerSignalsForPendingSend == 1)
    }

    @Test func writerSignalsOnlyOnEmptyToNonEmptyWithMaskClear() throws {
        let ring = RingPair()
        guard case .written(let first) = try ring.writer.write(ring.packet(1)) else { Issue.record("full"); return }
        #expect(first, "empty -> non-empty")
        guard case .written(let second) = try ring.writer.write(ring.packet(2)) else { Issue.record("full"); return }
        #expect(!second, "already non-empty")
        _ = try ring.read()
        _ = try ring.read()
        ring.reader.maskInterrupts()
        guard case .written(let masked) = try ring.writer.write(ring.packet(3)) else { Issue.record("full"); return }
        #expect(!masked, "reader is draining with interrupts masked")
        #expect(ring.reader.unmaskInterrupts(), "data arrived while masked: reader must drain again")
        let stats = ring.writer.statistics
        #expect(stats.signalsSent == 1 && stats.signalsSuppressed == 2)
    }

    @Test func hostileIndicesAreRejectedNotFollowed() throws {
        let ring = RingPair(dataSize: 1024)
        ring.poke(0, 5000) // write_index beyond the data area
        #expect(throws: RingError.self) { try ring.read() }
        ring.poke(0, 12) // unaligned
        #expect(throws: RingError.self) { try ring.read() }
        ring.poke(0, 0)
        ring.poke(4, 4096) // read_index, as the writer sees it
        #expect(throws: RingError.self) { try ring.writer.write(ring.packet(1)) }
    }

    @Test func hostileDescriptorsAreRejected() throws {
        let ring = RingPair(dataSize: 1024)
        _ = try ring.writer.write(ring.packet(1))
        let data = ring.memory + Ring.controlSize
        // len8 claiming more than is in the ring
        data.storeBytes(of: UInt16(200), toByteOffset: 4, as: UInt16.self)
        #expect(throws: RingError.self) { try ring.read() }
        // payload offset past the packet
        data.storeBytes(of: UInt16(6), toByteOffset: 4, as: UInt16.self)
        data.storeBytes(of: UInt16(9), toByteOffset: 2, as: UInt16.self)
        #expect(throws: RingError.self) { try ring.read() }
        // unknown type
        data.storeBytes(of: UInt16(2), toByteOffset: 2, as: UInt16.self)
        data.storeBytes(of: UInt16(77), toByteOffset: 0, as: UInt16.self)
        #expect(throws: RingError.self) { try ring.read() }
    }

    @Test func mappingARingWithGarbageIndicesFails() {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { memory.deallocate() }
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: 8192)
        memory.storeBytes(of: UInt32(0xFFFF_FFF0), as: UInt32.self)
        #expect(Ring(base: memory, size: 8192) == nil)
    }
}

@Suite struct ChannelMessageTests {
    @Test func everyMessageRoundTrips() throws {
        let messages: [ChannelMessage] = [
            .offerChannel(interfaceType: UUID(), instance: UUID(), relid: 3, connectionID: 2), .rescindOffer(relid: 3),
            .requestOffers, .allOffersDelivered,
            .openChannel(relid: 1, openID: 2, ringGPADL: 3, downstreamPageOffset: 4, targetVP: 0), .openResult(relid: 1, openID: 2, status: 0),
            .closeChannel(relid: 1), .gpadlHeader(relid: 1, gpadl: 9, totalPages: 30, pfns: Array(0..<26)),
            .gpadlBody(message: 1, gpadl: 9, pfns: [26, 27, 28, 29]), .gpadlCreated(relid: 1, gpadl: 9, status: 0),
            .gpadlTeardown(relid: 1, gpadl: 9), .gpadlTorndown(gpadl: 9), .relidReleased(relid: 1),
            .initiateContact(version: 0x50000), .versionResponse(supported: true, messageConnectionID: 1), .unload, .unloadResponse,
        ]
        for m in messages {
            #expect(m.encode().count <= 240)
            #expect(try ChannelMessage.decode(m.encode()) == m)
        }
    }

    @Test func truncatedAndUnknownMessagesThrow() {
        let offer = ChannelMessage.offerChannel(interfaceType: UUID(), instance: UUID(), relid: 1, connectionID: 2).encode()
        #expect(throws: ChannelMessage.DecodeError.self) { try ChannelMessage.decode(Array(offer.prefix(20))) }
        #expect(throws: ChannelMessage.DecodeError.self) { try ChannelMessage.decode([99, 0, 0, 0, 0, 0, 0, 0]) }
        #expect(throws: ChannelMessage.DecodeError.self) { try ChannelMessage.decode([]) }
        var header = ChannelMessage.gpadlHeader(relid: 1, gpadl: 1, totalPages: 5, pfns: [1]).encode()
        header[20] = 200 // claims 200 PFNs in one message
        #expect(throws: ChannelMessage.DecodeError.self) { try ChannelMessage.decode(header) }
    }
}

/// A hostile peer's ring at random: random bytes in the data area and
/// random indices, sometimes over packets that were well formed before
/// bytes of them changed. Every read gives a packet that fits the ring, nil,
/// or an error; none traps or loops.
@Suite struct RandomRingTests {
    @Test func randomRingsReadAsPacketsNothingOrErrors() throws {
        var random = SeededGenerator(seed: 0x9172)
        var packets = 0, errors = 0
        for round in 0..<3000 {
            let ring = RingPair(dataSize: 1024)
            // Well-formed packets first, half the time, then damage.
            if round % 2 == 0 {
                for n in 0..<Int.random(in: 1...12, using: &random) {
                    let kind = [Packet.Kind.inband, .gpaDirect, .transferPages, .completion].randomElement(using: &random)!
                    let p = Packet(kind: kind, transactionID: UInt64(n),
                                   ranges: kind == .gpaDirect ? [GPARange(gpa: 0x1000 * UInt64(n), length: UInt32.random(in: 1...9000, using: &random))] : [],
                                   transfer: kind == .transferPages ? .init(pageSetID: 1, ranges: [.init(offset: 0, length: 64)]) : nil,
                                   payload: Array(repeating: 1, count: Int.random(in: 0...60, using: &random)))
                    _ = try? ring.writer.write(p)
                }
            }
            for _ in 0..<Int.random(in: 1...24, using: &random) {
                let at = Int.random(in: Ring.controlSize..<ring.size, using: &random)
                ring.memory.storeBytes(of: UInt8.random(in: 0...255, using: &random), toByteOffset: at, as: UInt8.self)
            }
            if Int.random(in: 0..<3, using: &random) == 0 { ring.poke(0, UInt32.random(in: 0...2048, using: &random)) }  // write_index
            if Int.random(in: 0..<4, using: &random) == 0 { ring.poke(4, UInt32.random(in: 0...2048, using: &random)) }  // read_index
            for _ in 0..<40 {
                do {
                    guard let packet = try ring.read() else { break }
                    packets += 1
                    #expect(packet.ringLength <= 1024, "a packet bigger than the ring it came from")
                } catch {
                    errors += 1
                    break
                }
            }
        }
        #expect(packets > 1000 && errors > 300, "both outcomes reached: \(packets) packets, \(errors) errors")
    }
}
