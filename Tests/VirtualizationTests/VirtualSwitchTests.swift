import Foundation
import Synchronization
import Testing
import VirtualizationStack

/// A port owner that records what the switch delivers.
final class Sink: @unchecked Sendable {
    let frames = Mutex<[[UInt8]]>([])
    let delay: Double
    init(delay: Double = 0) { self.delay = delay }
    func take(_ frame: [UInt8]) -> Bool {
        if delay > 0 { Thread.sleep(forTimeInterval: delay) }
        frames.withLock { $0.append(frame) }
        return true
    }
    var count: Int { frames.withLock { $0.count } }
}

func ethernet(to: UInt8, from: UInt8, length: Int = 64, tag: UInt8 = 0) -> [UInt8] {
    [0x02, 0, 0, 0, 0, to] + [0x02, 0, 0, 0, 0, from] + [0x88, 0xB5] + [UInt8](repeating: tag, count: length - 14)
}

func eventually(_ timeout: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = Date(timeIntervalSinceNow: timeout)
    while !condition() {
        if Date() > deadline { return false }
        Thread.sleep(forTimeInterval: 0.005)
    }
    return true
}

/// A port owner with a transmit queue of its own: it takes frames while it
/// has room and answers `.full` after that, as an uplink NIC does.
final class RoomySink: @unchecked Sendable {
    let frames = Mutex<[[UInt8]]>([])
    let room: Mutex<Int>
    init(room: Int) { self.room = Mutex(room) }
    func take(_ frame: [UInt8]) -> VirtualSwitch.Delivery {
        let took = room.withLock { left -> Bool in
            guard left > 0 else { return false }
            left -= 1
            return true
        }
        guard took else { return .full }
        frames.withLock { $0.append(frame) }
        return .taken
    }
    var count: Int { frames.withLock { $0.count } }
    var tags: [UInt8] { frames.withLock { $0.map { $0[14] } } }
}

/// Counts the frames that have left the switch (their `done` ran).
final class LeftCount: Sendable {
    let count = Mutex(0)
    func left() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}

@Suite struct VirtualSwitchTests {
    @Test func learnsAddressesAndStopsFloodingOnceKnown() throws {
        let vswitch = VirtualSwitch(name: "t", kind: .private)
        defer { vswitch.shutdown() }
        let a = Sink(), b = Sink(), c = Sink()
        let pa = try vswitch.addPort(name: "a", role: .child, deliver: a.take)
        let pb = try vswitch.addPort(name: "b", role: .child, deliver: b.take)
        _ = try vswitch.addPort(name: "c", role: .child, deliver: c.take)
        pa.input(ethernet(to: 2, from: 1))  // b unknown: flooded to b and c
        #expect(eventually { b.count == 1 && c.count == 1 })
        pb.input(ethernet(to: 1, from: 2))  // a was learned: only a
        #expect(eventually { a.count == 1 })
        pa.input(ethernet(to: 2, from: 1))  // now b is known too
        #expect(eventually { b.count == 2 })
        // A barrier instead of a sleep: a frame for an unknown address is
        // flooded to c after the one before it, so once it is there, c has
        // seen everything a would have sent it.
        pa.input(ethernet(to: 9, from: 1, tag: 0xEE))
        #expect(eventually { c.count >= 2 })
        #expect(c.frames.withLock { $0.map { $0[5] } } == [2, 9], "no more flooding to c of frames for b")
        #expect(vswitch.macTable == ["02:00:00:00:00:01": "a", "02:00:00:00:00:02": "b"])
    }

    /// A channel may hold its port after the switch has gone (a child's
    /// NetVSP sends while teardown runs): its frames are dropped, and
    /// nothing reads freed memory (with an unowned switch this aborted).
    @Test func aPortThatOutlivesItsSwitchDropsWhatItIsGiven() throws {
        let sink = Sink()
        var vswitch: VirtualSwitch? = VirtualSwitch(name: "gone", kind: .private)
        let port = try #require(try vswitch?.addPort(name: "a", role: .child, deliver: sink.take))
        weak let ended = vswitch
        vswitch?.shutdown()
        vswitch = nil
        // Its forwarding thread lets go of it just after shutdown returns.
        #expect(eventually { ended == nil }, "the switch itself is gone")
        port.input(ethernet(to: 2, from: 1))
        #expect(sink.count == 0)
    }

    @Test func malformedFramesAreDroppedAndCounted() throws {
        let vswitch = VirtualSwitch(name: "t", kind: .private)
        defer { vswitch.shutdown() }
        let sink = Sink()
        let port = try vswitch.addPort(name: "a", role: .child) { _ in true }
        _ = try vswitch.addPort(name: "b", role: .child, deliver: sink.take)
        port.input([UInt8](repeating: 0, count: 13))                  // runt
        port.input(ethernet(to: 2, from: 1, length: 1515))             // oversize
        port.input([0x02, 0, 0, 0, 0, 2, 0x01, 0, 0, 0, 0, 1, 0x88, 0xB5])  // multicast source
        #expect(vswitch.counters(of: port).malformed == 3)
        // Barrier: a good frame after the bad ones; once it arrives, nothing
        // that came before it is still on its way.
        port.input(ethernet(to: 2, from: 1, tag: 0x77))
        #expect(eventually { sink.count >= 1 })
        #expect(sink.frames.withLock { $0 } == [ethernet(to: 2, from: 1, tag: 0x77)])
    }

    /// A flooding port overflows only its own queue; another port's frames
    /// all get through while the flood is on.
    @Test func floodingPortDoesNotStarveOthers() throws {
        let vswitch = VirtualSwitch(name: "t", kind: .private)
        defer { vswitch.shutdown() }
        let slow = Sink(delay: 0.00005)
        let target = try vswitch.addPort(name: "target", role: .child, deliver: slow.take)
        let flooder = try vswitch.addPort(name: "flooder", role: .child) { _ in true }
        let polite = try vswitch.addPort(name: "polite", role: .child) { _ in true }
        target.input(ethernet(to: 0xFF, from: 9))  // the switch learns the target
        for i in 0..<20_000 { flooder.input(ethernet(to: 9, from: 7, tag: UInt8(i & 0x7F))) }
        for _ in 0..<100 { polite.input(ethernet(to: 9, from: 8, tag: 0xEE)) }
        #expect(eventually(20) { slow.frames.withLock { $0.filter { $0.last == 0xEE }.count } == 100 })
        #expect(vswitch.counters(of: flooder).ingressDrops > 0, "the flood overflowed its own bounded queue")
        #expect(vswitch.counters(of: polite).ingressDrops == 0)
    }

    /// An owner that is full holds its frames at the switch, in order, and
    /// their senders hear nothing until they have gone: nothing is dropped.
    @Test func aFullPortGetsItsFramesInOrderOnceItHasRoom() throws {
        let vswitch = VirtualSwitch(name: "t", kind: .external)
        defer { vswitch.shutdown() }
        let wire = RoomySink(room: 50)
        let uplink = try vswitch.addPort(name: "uplink", role: .uplink, deliver: wire.take)
        let child = try vswitch.addPort(name: "child", role: .child) { _ in true }
        let left = LeftCount()
        for i in 0..<200 { child.input(ethernet(to: 9, from: 1, tag: UInt8(i)), done: left.left) }
        #expect(eventually { wire.count == 50 && vswitch.counters(of: uplink).waitedForRoom == 150 })
        Thread.sleep(forTimeInterval: 0.01)
        #expect(left.value == 50, "a frame still at the switch is not reported gone")
        wire.room.withLock { $0 = 1000 }
        uplink.ready()
        #expect(eventually { wire.count == 200 && left.value == 200 })
        #expect(wire.tags == (0..<200).map { UInt8($0) }, "in the order sent")
        let counters = vswitch.counters(of: uplink)
        #expect(counters.egressDrops == 0 && counters.outFrames == 200)
        #expect(vswitch.counters(of: child).ingressDrops == 0)
    }

    /// An owner that answers `.full` and never says `ready()` is offered its
    /// frames again after a short while; one that stays full loses them
    /// after `backlogLifetime`, and their senders are told.
    @Test func aFullPortThatNeverSaysReadyIsRetriedThenGivenUpOn() throws {
        let vswitch = VirtualSwitch(name: "t", kind: .external)
        defer { vswitch.shutdown() }
        let forgetful = RoomySink(room: 0)
        let uplink = try vswitch.addPort(name: "uplink", role: .uplink, deliver: forgetful.take)
        let child = try vswitch.addPort(name: "child", role: .child) { _ in true }
        let left = LeftCount()
        for i in 0..<10 { child.input(ethernet(to: 9, from: 1, tag: UInt8(i)), done: left.left) }
        #expect(eventually { vswitch.counters(of: uplink).waitedForRoom == 10 })
        forgetful.room.withLock { $0 = 4 }  // room, but no ready()
        #expect(eventually { forgetful.count == 4 }, "retried without a ready()")
        #expect(eventually(VirtualSwitch.backlogLifetime + 3) { left.value == 10 })
        #expect(vswitch.counters(of: uplink).egressDrops == 6)
        #expect(forgetful.tags == [0, 1, 2, 3])
    }

    /// A full port's waiting frames do not hold up frames for other ports,
    /// and removing it lets its waiting frames' senders go.
    @Test func aFullPortHoldsUpOnlyItself() throws {
        let vswitch = VirtualSwitch(name: "t", kind: .external)
        defer { vswitch.shutdown() }
        let stuck = RoomySink(room: 0)
        let other = Sink()
        let uplink = try vswitch.addPort(name: "uplink", role: .uplink, deliver: stuck.take)
        let peer = try vswitch.addPort(name: "peer", role: .child, deliver: other.take)
        let child = try vswitch.addPort(name: "child", role: .child) { _ in true }
        peer.input(ethernet(to: 0xFF, from: 5))  // the switch learns the peer (the flood waits at the uplink)
        let left = LeftCount()
        for i in 0..<20 { child.input(ethernet(to: 9, from: 1, tag: UInt8(i)), done: left.left) }
        for i in 0..<20 { child.input(ethernet(to: 5, from: 1, tag: UInt8(100 + i)), done: left.left) }
        #expect(eventually { other.count == 40 && left.value == 20 }, "frames for the peer went by, and flooded ones reached it too")
        vswitch.removePort(uplink)
        #expect(eventually { left.value == 40 }, "the removed port's frames were let go")
        #expect(vswitch.counters(of: uplink).egressDrops == 21)
    }

    @Test func kindsLimitWhichPortsExist() throws {
        let privateSwitch = VirtualSwitch(name: "p", kind: .private)
        let internalSwitch = VirtualSwitch(name: "i", kind: .internal)
        defer {
            privateSwitch.shutdown()
            internalSwitch.shutdown()
        }
        #expect(throws: VirtualSwitch.PortRefused.self) { _ = try privateSwitch.attachHost(mac: [2, 0, 0, 0, 0, 1], ip: [192, 0, 2, 1]) }
        #expect(throws: VirtualSwitch.PortRefused.self) { _ = try internalSwitch.addPort(name: "nic", role: .uplink) { _ in true } }
        _ = try internalSwitch.attachHost(mac: [2, 0, 0, 0, 0, 1], ip: [192, 0, 2, 1])
    }
}
