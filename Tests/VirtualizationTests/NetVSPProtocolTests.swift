import Foundation
import Guest
import OyakoTestSupport
import Synchronization
import Testing
import Workloads
import VirtualizationStack
import VMBus

/// The network VSP's NVSP and RNDIS as a Hyper-V guest sees them.
@Suite(.serialized) struct NetVSPProtocolTests {
    /// A child on a private switch; `body` runs on its VP with its NIC open.
    func withChild<T: Sendable>(_ body: @escaping @Sendable (GuestOS, NetVSC, NetworkVSP, VirtualSwitch) throws -> T) throws -> T {
        try withChildAndCause(body).result
    }

    /// The same, and why the root closed the child's channel, if it did.
    func withChildAndCause<T: Sendable>(_ body: @escaping @Sendable (GuestOS, NetVSC, NetworkVSP, VirtualSwitch) throws -> T) throws
        -> (result: T, cause: ChannelCloseCause?)
    {
        let system = try RootSystem(drivers: [])
        defer { system.shutdown() }
        let vswitch = VirtualSwitch(name: "private", kind: .private)
        defer { vswitch.shutdown() }
        let child = try system.vms.createChild(name: "c", memorySize: 8 << 20)
        system.vms.offerNetwork(to: child, vswitch: vswitch)
        let vms = system.vms
        let outcome = GuestOutcome<T>()
        system.vms.start(child) { p, vp in
            let os = GuestOS(name: "c", partition: p, vp: vp)
            outcome.finish {
                try os.boot()
                let nic = try #require(try os.openNetwork().first)
                let vsp = try #require(vms.networkProviders(of: child).first)
                return try body(os, nic, vsp, vswitch)
            }
        }
        let result = try outcome.wait()
        return (result, system.root.vmbus.channels(of: child.id).values.first?.cause)
    }

    @Test func rndisInitializeQueryAndSetSequence() throws {
        struct Seen: Sendable {
            var version: UInt32 = 0, limits: [UInt32] = [], mac: [UInt8] = [], vspMAC: [UInt8] = []
            var current: [UInt8] = [], frameSize: [UInt8] = [], speed: [UInt8] = [], media: [UInt8] = [], filter: [UInt8] = []
            var offloadSet: UInt32 = 0, offloadsOff: UInt32 = 0, unknownQuery: UInt32 = 0, badFilter: UInt32 = 0, hwcaps: [UInt8] = []
            var keepalive: (type: UInt32, id: UInt32, status: UInt32) = (0, 0, 0)
            var reset: (type: UInt32, status: UInt32) = (0, 0)
        }
        let seen = try withChild { _, nic, vsp, _ in
            var s = Seen()
            s.version = nic.version
            s.limits = [nic.rndisLimits.maxPackets, nic.rndisLimits.maxTransfer, nic.rndisLimits.alignmentShift]
            s.mac = nic.mac
            s.vspMAC = vsp.mac
            s.current = try nic.query(RNDIS.OID.currentAddress).1
            s.frameSize = try nic.query(RNDIS.OID.maximumFrameSize).1
            s.speed = try nic.query(RNDIS.OID.linkSpeed).1
            s.media = try nic.query(RNDIS.OID.mediaConnectStatus).1
            s.filter = try nic.query(RNDIS.OID.currentPacketFilter).1
            s.unknownQuery = try nic.query(0x0001_0203).0  // OID_GEN_RECEIVE_SCALE_CAPABILITIES: no RSS
            s.hwcaps = try nic.query(RNDIS.OID.offloadHardwareCapabilities).1
            var params = [UInt8](repeating: 0, count: 28)
            params[0] = 0x80; params[1] = 3; params[2] = 28
            params[4...14] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1][...]  // everything disabled, as netvsc asks when it finds none
            s.offloadsOff = try nic.set(RNDIS.OID.offloadParameters, information: params)
            params[5] = 4  // TCP/IPv4 checksum on in both directions
            s.offloadSet = try nic.set(RNDIS.OID.offloadParameters, information: params)
            s.badFilter = try nic.set(RNDIS.OID.currentPacketFilter, information: [1, 2])
            let alive = try nic.rndis(RNDIS.simple(RNDIS.MessageType.keepalive, requestID: 4242))
            s.keepalive = (alive.type, alive.field(0), alive.field(4))
            let reset = try nic.rndis(RNDIS.simple(RNDIS.MessageType.reset, requestID: 0))
            s.reset = (reset.type, reset.field(0))
            return s
        }
        #expect(seen.version == NetworkProtocol.Version.v61, "the newest NVSP version wins")
        #expect(seen.limits == [8, 6144, 3])
        #expect(seen.mac == seen.vspMAC && seen.current == seen.vspMAC, "the MAC comes from OID_802_3_PERMANENT_ADDRESS")
        func u32(_ b: [UInt8]) -> UInt32? { b.count == 4 ? b.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } : nil }
        #expect(u32(seen.frameSize) == 1500 && u32(seen.speed) == 100_000_000 && u32(seen.media) == 0)
        #expect(u32(seen.filter) == RNDIS.defaultPacketFilter, "the filter the guest set reads back")
        #expect(seen.unknownQuery == RNDIS.Status.notSupported && seen.offloadSet == RNDIS.Status.notSupported, "no offloads")
        // NDIS_OFFLOAD 6.30 (NVSP 6.1): type 0xA7, revision 3, 164 bytes, no capability set.
        #expect(seen.hwcaps.count == 164 && Array(seen.hwcaps.prefix(4)) == [0xA7, 3, 164, 0] && seen.hwcaps.dropFirst(4).allSatisfy { $0 == 0 })
        #expect(seen.offloadsOff == RNDIS.Status.success, "turning offloads off is granted")
        #expect(seen.badFilter == RNDIS.Status.invalidLength)
        #expect(seen.keepalive == (RNDIS.MessageType.keepalive | RNDIS.MessageType.completion, 4242, RNDIS.Status.success))
        #expect(seen.reset == (RNDIS.MessageType.reset | RNDIS.MessageType.completion, RNDIS.Status.success))
    }

    @Test func linkIndicationsAndHaltStopDelivery() throws {
        let result = try withChild { os, nic, vsp, vswitch in
            vsp.indicateLink(up: false)
            let down = os.vp.halt(until: { !nic.linkUp }, timeout: 5)
            let media = try nic.query(RNDIS.OID.mediaConnectStatus).1
            vsp.indicateLink(up: true)
            let up = os.vp.halt(until: { nic.linkUp }, timeout: 5)
            try nic.halt()
            // HALT has no answer; a KEEPALIVE after it shows it was taken.
            _ = try nic.rndis(RNDIS.simple(RNDIS.MessageType.keepalive, requestID: 9))
            // The switch's frames for a halted device are dropped, not delivered.
            let sender = try vswitch.addPort(name: "sender", role: .child) { _ in true }
            let frame = [UInt8](repeating: 0xFF, count: 6) + [2, 0, 0, 0, 0, 1, 0x88, 0xB5] + [UInt8](repeating: 7, count: 50)
            let before = nic.framesReceived
            for _ in 0..<3 { sender.input(frame) }
            // Nothing interrupts this VP when the root drops a frame: poll the root's count.
            let deadline = Date(timeIntervalSinceNow: 5)
            while vsp.statistics.droppedNotOpen < 3 && Date() < deadline { usleep(1000) }
            _ = os.vp.halt(until: { false }, timeout: 0.2)  // anything wrongly delivered would arrive now
            return (down, media, up, nic.framesReceived - before, vsp.statistics.droppedNotOpen)
        }
        #expect(result.0 && result.2, "the guest saw the link go down and up")
        #expect(result.1 == [1, 0, 0, 0], "media disconnected while down")
        #expect(result.3 == 0 && result.4 == 3, "after HALT frames are dropped and counted")
    }

    @Test func framesSentAsPageListsOfGuestMemoryArrive() throws {
        let count = try withChild { os, nic, vsp, _ in
            nic.sendsThroughPageLists = true
            for i in 0..<5 { try nic.send([UInt8](repeating: 0xFF, count: 6) + nic.mac + [0x88, 0xB5] + [UInt8](repeating: UInt8(i), count: 100)) }
            _ = os.vp.halt(until: { vsp.statistics.framesFromChild >= 5 }, timeout: 5)
            return (vsp.statistics.framesFromChild, nic.refusedSends)
        }
        #expect(count == (5, 0))
    }

    @Test func malformedRNDISIsRefusedAndTheChannelStaysOpen() throws {
        let result = try withChild { os, nic, vsp, _ in
            let good = RNDIS.packet([UInt8](repeating: 0xFF, count: 6) + nic.mac + [0x88, 0xB5] + [UInt8](repeating: 1, count: 60))
            // message_length beyond the bytes sent
            var long = good
            long.replaceSubrange(4..<8, with: withUnsafeBytes(of: UInt32(5000).littleEndian) { Array($0) })
            try nic.sendRawRNDIS(long)
            // data_offset pointing past the message
            var outside = good
            outside.replaceSubrange(8..<12, with: withUnsafeBytes(of: UInt32(4000).littleEndian) { Array($0) })
            try nic.sendRawRNDIS(outside)
            // data_length running past the message
            var overrun = good
            overrun.replaceSubrange(12..<16, with: withUnsafeBytes(of: UInt32(200).littleEndian) { Array($0) })
            try nic.sendRawRNDIS(overrun)
            // shorter than a header, and a send size beyond the section
            try nic.sendRawRNDIS([1, 0, 0, 0])
            _ = os.vp.halt(until: { nic.refusedSends >= 4 }, timeout: 5)
            // A SET whose information buffer is outside the message is answered INVALID_DATA.
            var set = RNDIS.request(RNDIS.MessageType.set, requestID: 77, oid: RNDIS.OID.currentPacketFilter, information: [0xB, 0, 0, 0])
            set.replaceSubrange(20..<24, with: withUnsafeBytes(of: UInt32(900).littleEndian) { Array($0) })
            let setAnswer = try nic.rndis(set).field(4)
            // The same channel still carries good frames.
            try nic.send(Array(good[44...]))
            _ = os.vp.halt(until: { vsp.statistics.framesFromChild >= 1 }, timeout: 5)
            return (nic.refusedSends, vsp.statistics.malformedFromChild, setAnswer, vsp.statistics.framesFromChild, nic.isOpen)
        }
        #expect(result.0 == 4, "each malformed message was answered INVALID_RNDIS_PKT")
        #expect(result.1 >= 5)
        #expect(result.2 == RNDIS.Status.invalidData)
        #expect(result.3 == 1 && result.4, "the channel stays open and forwards the good frame")
    }

    /// Valid RNDIS messages with random bytes after the type changed, cut or
    /// lengthened, 1500 of them: each is served or refused, the channel
    /// stays open and good frames still go through.
    @Test func randomlyMutatedRNDISIsServedOrRefusedAndTheChannelStaysOpen() throws {
        let result = try withChild { os, nic, vsp, _ in
            var random = SeededGenerator(seed: 0x4E44_4953)
            let frame = [UInt8](repeating: 0xFF, count: 6) + nic.mac + [0x88, 0xB5] + [UInt8](repeating: 1, count: 60)
            let oids = [RNDIS.OID.maximumFrameSize, RNDIS.OID.linkSpeed, RNDIS.OID.currentPacketFilter, RNDIS.OID.mediaConnectStatus,
                        RNDIS.OID.permanentAddress, RNDIS.OID.currentAddress, RNDIS.OID.offloadParameters, 0xDEAD_BEEF]
            var unsent = 0
            for i in 0..<1500 {
                let seed: [UInt8] = switch i % 5 {
                case 0, 1: RNDIS.packet(frame)
                case 2: RNDIS.request(RNDIS.MessageType.query, requestID: UInt32(i), oid: oids.randomElement(using: &random)!)
                case 3: RNDIS.request(RNDIS.MessageType.set, requestID: UInt32(i), oid: oids.randomElement(using: &random)!,
                                      information: (0..<Int.random(in: 0...12, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) })
                default: RNDIS.simple(RNDIS.MessageType.keepalive, requestID: UInt32(i))
                }
                // The type stays: a mutation into HALT would end delivery by right.
                let message = Array(seed.prefix(4)) + RandomHostileChildTests.mutate(Array(seed.dropFirst(4)), &random)
                var sent = false
                for _ in 0..<100 where !sent {
                    do {
                        try nic.sendRawRNDIS(message)
                        sent = true
                    } catch {
                        _ = os.vp.halt(until: { false }, timeout: 0.005)  // let completions free a send section
                    }
                }
                if !sent { unsent += 1 }
            }
            let before = vsp.statistics.framesFromChild
            try nic.send(frame)
            _ = os.vp.halt(until: { vsp.statistics.framesFromChild > before }, timeout: 5)
            return (unsent, vsp.statistics.malformedFromChild, vsp.statistics.framesFromChild > before, nic.isOpen)
        }
        #expect(result.0 == 0, "every message was sent")
        #expect(result.1 > 100, "the mutations reach the parser's refusals (\(result.1))")
        #expect(result.2 && result.3, "the channel stays open and a good frame still goes through")
    }

    @Test func aPageListOutsideTheChildsMemoryClosesTheChannel() throws {
        let (closed, cause) = try withChildAndCause { os, nic, _, _ in
            let payload = NetworkProtocol.encode(.sendRNDISPacket) { $0.u32(0); $0.u32(NetworkProtocol.noSection); $0.u32(0) }
            try nic.sendRaw(Packet(kind: .gpaDirect, flags: Packet.completionRequested, transactionID: 900,
                                   ranges: [GPARange(gpa: 100_000 * 4096, length: 100)], payload: payload))
            return os.vp.halt(until: { !nic.isOpen }, timeout: 10)
        }
        #expect(closed, "the child sees its channel closed")
        #expect(cause == .violation(.rangeOutsideChildMemory(gpa: 100_000 * 4096, length: 100)), "\(String(describing: cause))")
    }
}
