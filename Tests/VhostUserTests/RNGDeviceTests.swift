import CSystemShims
import Foundation
import Glibc
import Machine
import Testing
import VhostUser

/// What a device reported from its threads, for the test to wait on.
final class Reports<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Value] = []
    private let arrived = DispatchSemaphore(value: 0)

    func add(_ value: Value) {
        lock.withLock { values.append(value) }
        arrived.signal()
    }

    var all: [Value] { lock.withLock { values } }

    /// Waits (at most 10 s, a hang guard, not a timing check) for one report.
    func next() -> Bool { arrived.wait(timeout: .now() + 10) == .success }
}

/// The doorbells QEMU would pass: a kick eventfd the test rings and a
/// call eventfd it waits on.
struct Doorbells {
    let kick = oy_shim_eventfd(), call = oy_shim_eventfd()

    func ring() {
        var one: UInt64 = 1
        #expect(write(kick, &one, 8) == 8)
    }

    /// Waits (hang guard only) for an interrupt and consumes it.
    func interrupted() -> Bool {
        var fd = pollfd(fd: call, events: Int16(POLLIN), revents: 0)
        guard poll(&fd, 1, 10_000) == 1 else { return false }
        var value: UInt64 = 0
        return read(call, &value, 8) == 8
    }

    func close() { _ = Glibc.close(kick); _ = Glibc.close(call) }
}

@Suite struct RNGDeviceTests {
    static let buffers = FakeGuest.ramBase + 0x10000

    /// A source that counts, so every byte the guest gets can be checked.
    final class CountingSource: @unchecked Sendable {
        private let lock = NSLock()
        private var next: UInt8 = 0
        func fill(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
            lock.withLock {
                for i in buffer.indices { buffer[i] = next; next &+= 1 }
            }
            return buffer.count
        }
    }

    @Test func theGuestGetsTheSourcesBytesAndAnInterrupt() throws {
        let g = try FakeGuest()
        let bells = Doorbells()
        defer { bells.close() }
        let source = CountingSource()
        let device = VhostUserRNG(source: { source.fill($0) })
        try device.start(queue: 0, try g.queue(eventIndex: true), kick: bells.kick, call: bells.call)
        defer { device.stop(queue: 0) }

        g.descriptor(0, at: Self.buffers, length: 64, flags: 2)
        g.descriptor(1, at: Self.buffers + 0x100, length: 16, flags: 2 | 1, next: 2)
        g.descriptor(2, at: Self.buffers + 0x200, length: 16, flags: 2)
        g.post(0)
        g.post(1)
        // used_event 0: the driver wants an interrupt as soon as anything is used.
        bells.ring()
        #expect(bells.interrupted(), "the call eventfd was raised")
        #expect(g.usedIndex == 2)
        #expect(g.read32(g.used.adding(4)!) == 0 && g.read32(g.used.adding(8)!) == 64)
        #expect(g.read32(g.used.adding(12)!) == 1 && g.read32(g.used.adding(16)!) == 32)
        #expect(g.region.read(at: GuestAddress(Self.buffers), count: 64) == (0..<64).map { UInt8($0) })
        #expect(g.region.read(at: GuestAddress(Self.buffers + 0x100), count: 16) == (64..<80).map { UInt8($0) })
        #expect(g.region.read(at: GuestAddress(Self.buffers + 0x200), count: 16) == (80..<96).map { UInt8($0) })
        // EVENT_IDX: before it sleeps the device asks to be kicked for the
        // next entry (avail_event = 2); it does so just after the interrupt.
        let availEvent = g.used.adding(4 + 8 * g.size)!
        let deadline = Date(timeIntervalSinceNow: 10)
        while g.region.read(at: availEvent, count: 2) != [2, 0] && Date() < deadline { usleep(1000) }
        #expect(g.region.read(at: availEvent, count: 2) == [2, 0])
    }

    @Test func aChainPostedWithoutAKickIsStillServedOnceTheDeviceIsKickedAgain() throws {
        let g = try FakeGuest()
        let bells = Doorbells()
        defer { bells.close() }
        let source = CountingSource()
        let device = VhostUserRNG(source: { source.fill($0) })
        try device.start(queue: 0, try g.queue(), kick: bells.kick, call: bells.call)
        defer { device.stop(queue: 0) }
        for round in 0..<20 {
            g.descriptor(round % 16, at: Self.buffers + UInt64(round) * 8, length: 8, flags: 2)
            g.post(UInt16(round % 16))
            bells.ring()
            #expect(bells.interrupted(), "round \(round)")
        }
        #expect(g.usedIndex == 20)
        #expect(g.region.read(at: GuestAddress(Self.buffers), count: 160) == (0..<160).map { UInt8($0) })
    }

    @Test func aFailingSourceGivesNoBytesAndTheQueueGoesOn() throws {
        let g = try FakeGuest()
        let bells = Doorbells()
        defer { bells.close() }
        let device = VhostUserRNG(source: { _ in 0 })
        try device.start(queue: 0, try g.queue(), kick: bells.kick, call: bells.call)
        defer { device.stop(queue: 0) }
        g.descriptor(0, at: Self.buffers, length: 32, flags: 2)
        g.descriptor(1, at: Self.buffers + 0x100, length: 32)  // nothing writable
        g.post(0)
        g.post(1)
        bells.ring()
        #expect(bells.interrupted())
        #expect(g.usedIndex == 2 && g.read32(g.used.adding(8)!) == 0 && g.read32(g.used.adding(16)!) == 0)
    }

    @Test func aCorruptQueueIsReportedAndLeftAlone() throws {
        let g = try FakeGuest()
        let bells = Doorbells()
        defer { bells.close() }
        let failures = Reports<VirtqueueError>()
        let source = CountingSource()
        let device = VhostUserRNG(source: { source.fill($0) }, failure: { failures.add($0) })
        try device.start(queue: 0, try g.queue(), kick: bells.kick, call: bells.call)
        g.post(99)  // a head beyond the table
        bells.ring()
        #expect(failures.next())
        #expect(failures.all == [.headOutOfRange(99, size: 16)])
        g.descriptor(0, at: Self.buffers, length: 8, flags: 2)
        g.post(0)
        bells.ring()
        device.stop(queue: 0)
        #expect(g.usedIndex == 0, "nothing was used from a queue the guest corrupted")
        #expect(failures.all.count == 1)
    }

    @Test func stopReturnsWhileTheQueueIsIdleAndAfterARestart() throws {
        let g = try FakeGuest()
        let bells = Doorbells()
        defer { bells.close() }
        let device = VhostUserRNG(source: { _ in 0 })
        try device.start(queue: 0, try g.queue(), kick: bells.kick, call: bells.call)
        device.stop(queue: 0)
        try device.start(queue: 0, try g.queue(), kick: -1, call: -1)  // a front-end that polls
        g.descriptor(0, at: Self.buffers, length: 8, flags: 2)
        g.post(0)
        let deadline = Date(timeIntervalSinceNow: 10)
        while g.usedIndex == 0 && Date() < deadline { usleep(1000) }
        #expect(g.usedIndex == 1, "a polled queue is served without a kick")
        device.stop(queue: 0)
    }
}
