import Foundation
import Machine
import Testing
import VhostUser

@Suite struct NetDeviceTests {
    static let buffers = FakeGuest.ramBase + 0x10000
    static let mac: [UInt8] = [0x52, 0x54, 0, 0x0A, 0, 1]

    /// A frame with a recognisable body.
    static func frame(_ length: Int, tag: UInt8) -> [UInt8] {
        [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] + mac + [0x08, 0x00] + (0..<(length - 14)).map { UInt8(truncatingIfNeeded: $0) ^ tag }
    }

    /// Waits (hang guard) until the used index reaches `count`.
    static func used(_ g: FakeGuest, reaches count: UInt16) -> Bool {
        let deadline = Date(timeIntervalSinceNow: 10)
        while g.usedIndex < count { guard Date() < deadline else { return false }; usleep(500) }
        return true
    }

    @Test func framesTheGuestSendsReachTheSwitchWithoutTheirHeader() throws {
        let g = try FakeGuest()
        let bells = Doorbells()
        defer { bells.close() }
        let sent = Reports<[UInt8]>()
        let device = VhostUserNet(mac: Self.mac, transmit: { sent.add($0) })
        try device.start(queue: VhostUserNet.transmitQueue, try g.queue(), kick: bells.kick, call: bells.call)
        defer { device.stop(queue: VhostUserNet.transmitQueue) }
        let frame = Self.frame(100, tag: 1)
        // Header and the first 20 bytes in one descriptor, the rest in another.
        #expect(g.region.write([UInt8](repeating: 0, count: 12) + frame, at: GuestAddress(Self.buffers)))
        g.descriptor(0, at: Self.buffers, length: 32, flags: 1, next: 1)
        g.descriptor(1, at: Self.buffers + 32, length: UInt32(frame.count - 20))
        // A runt: header plus 10 bytes.
        g.descriptor(2, at: Self.buffers, length: 22)
        g.post(0)
        g.post(2)
        bells.ring()
        #expect(sent.next())
        #expect(Self.used(g, reaches: 2))
        #expect(sent.all == [frame])
        #expect(device.counters.transmitted == 1 && device.counters.malformed == 1)
    }

    /// A transmitted frame's buffer goes back to the guest only once what
    /// is behind the device says it is done with it (a switch that holds
    /// the frame while the NIC is full): the guest's sender is held back.
    @Test func aTransmitBufferGoesBackOnlyWhenTheFrameIsSent() throws {
        let g = try FakeGuest()
        let bells = Doorbells()
        defer { bells.close() }
        let held = Reports<@Sendable () -> Void>()
        let device = VhostUserNet(mac: Self.mac, transmit: { _, sent in held.add(sent) })
        try device.start(queue: VhostUserNet.transmitQueue, try g.queue(), kick: bells.kick, call: bells.call)
        defer { device.stop(queue: VhostUserNet.transmitQueue) }
        let frame = Self.frame(100, tag: 2)
        #expect(g.region.write([UInt8](repeating: 0, count: 12) + frame, at: GuestAddress(Self.buffers)))
        g.descriptor(0, at: Self.buffers, length: UInt32(12 + frame.count))
        g.post(0)
        bells.ring()
        #expect(held.next())
        usleep(20_000)
        #expect(g.usedIndex == 0, "still with the switch: not used yet")
        for sent in held.all { sent() }
        #expect(Self.used(g, reaches: 1))
    }

    @Test func framesForTheGuestLandInItsBuffersOrAreDropped() throws {
        let g = try FakeGuest()
        let bells = Doorbells()
        defer { bells.close() }
        let device = VhostUserNet(mac: Self.mac, transmit: { _ in })
        try device.start(queue: VhostUserNet.receiveQueue, try g.queue(), kick: bells.kick, call: bells.call)
        defer { device.stop(queue: VhostUserNet.receiveQueue) }
        #expect(!device.receive(Self.frame(60, tag: 0)), "no buffer posted: dropped, as a NIC with an empty ring drops")
        // One buffer too small for a full frame, then two that fit.
        g.descriptor(0, at: Self.buffers, length: 64, flags: 2)
        g.descriptor(1, at: Self.buffers + 0x1000, length: 1526, flags: 2)
        g.descriptor(2, at: Self.buffers + 0x2000, length: 1526, flags: 2)
        for head: UInt16 in [0, 1, 2] { g.post(head) }
        bells.ring()
        let deadline = Date(timeIntervalSinceNow: 10)
        while !device.receive(Self.frame(1514, tag: 7)) {
            // The worker has not taken the buffers yet.
            guard Date() < deadline else { break }
            usleep(500)
        }
        #expect(Self.used(g, reaches: 2))
        #expect(g.read32(g.used.adding(4)!) == 0 && g.read32(g.used.adding(8)!) == 0, "the small buffer went back empty")
        #expect(g.read32(g.used.adding(12)!) == 1 && g.read32(g.used.adding(16)!) == 12 + 1514)
        var header = [UInt8](repeating: 0, count: 12)
        header[10] = 1
        #expect(g.region.read(at: GuestAddress(Self.buffers + 0x1000), count: 12 + 1514) == header + Self.frame(1514, tag: 7))
        #expect(device.receive(Self.frame(200, tag: 9)))
        #expect(Self.used(g, reaches: 3))
        #expect(!device.receive([1, 2, 3]), "a runt is not delivered")
        #expect(device.counters.received == 2 && device.counters.receiveDrops >= 2)
    }

    /// Buffers the guest posted and the device holds go back empty when
    /// the ring stops, so stopping never waits on frames that may not come.
    @Test func stoppingReturnsPostedBuffers() throws {
        let g = try FakeGuest()
        let bells = Doorbells()
        defer { bells.close() }
        let device = VhostUserNet(mac: Self.mac, transmit: { _ in })
        try device.start(queue: VhostUserNet.receiveQueue, try g.queue(), kick: bells.kick, call: bells.call)
        for i in 0..<4 {
            g.descriptor(i, at: Self.buffers + UInt64(i) * 0x1000, length: 1526, flags: 2)
            g.post(UInt16(i))
        }
        bells.ring()
        let deadline = Date(timeIntervalSinceNow: 10)
        // Frames land once the worker holds the buffers; one is enough to know it does.
        while !device.receive(Self.frame(60, tag: 1)) && Date() < deadline { usleep(500) }
        device.stop(queue: VhostUserNet.receiveQueue)
        #expect(g.usedIndex == 4, "one frame, three returned empty")
        #expect(!device.receive(Self.frame(60, tag: 2)), "nothing is delivered into a stopped ring")
    }

    @Test func configSpaceIsTheMACAndLinkUpAndQEMUKeepsIt() throws {
        let device = VhostUserNet(mac: Self.mac, transmit: { _ in })
        #expect(Array(device.configSpace().prefix(8)) == Self.mac + [1, 0])
        #expect(device.deviceFeatures == 1 << 5 | 1 << 16, "MAC and STATUS, no offloads")
        let backend = VhostUserBackend(device: device)
        #expect(backend.offeredProtocolFeatures & 1 << 9 == 0, "QEMU's virtio-net does not read config from a back-end")
        #expect(VhostUserBackend(device: VhostUserBlock(target: MemoryTarget())).offeredProtocolFeatures & 1 << 9 != 0)
    }
}
