import SystemAssembly
import Devices
import DriverHost
import Foundation
import Guest
import Kernel
import NetStack
import OyakoTestSupport
import Synchronization
import Testing
import VirtualizationStack
import VMBus

/// Runs a guest that brings up IPv4 on its first NIC and answers until
/// stopped; `work` runs first (pings, say) and its result is reported.
func networkGuest(ip: [UInt8], outcome: GuestOutcome<Int>? = nil, ready: DispatchSemaphore? = nil,
                  configure: @escaping @Sendable (NetVSC) -> Void = { _ in },
                  work: @escaping @Sendable (GuestOS, IPStack) -> Int = { _, _ in 0 }) -> @Sendable (GuestOS) -> Void
{
    return { os in
        do {
            try os.boot()
            guard let nic = try os.openNetwork().first else { throw VMBusError.noDevice("NIC") }
            configure(nic)
            let stack = os.bringUp(nic, ip: ip)
            ready?.signal()
            let result = work(os, stack)
            outcome?.finish { result }
            os.vp.halt(until: { false })  // keep answering until the partition stops
        } catch {
            outcome?.finish { throw error }
            ready?.signal()
        }
    }
}

/// The far end of a cable that counts the frames that arrive.
final class FrameCounter: Wire, @unchecked Sendable {
    // @unchecked Sendable: a Mutex only.
    private let frames = Mutex(0)
    func send(_ frame: [UInt8], from end: any WireEnd) { frames.withLock { $0 += 1 } }
    var count: Int { frames.withLock { $0 } }
}

@Suite(.serialized) struct ChildNetworkTests {
    @Test func childToChildPingOverAPrivateSwitchNeverTouchesTheNIC() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver("e1klite")], nics: 1)
        defer { system.shutdown() }
        let vswitch = VirtualSwitch(name: "private", kind: .private)
        defer { vswitch.shutdown() }
        let nic = try #require(system.kernel.network.interfaces.first)
        let nicBefore = system.testbed.nics[0].statistics

        let ready = DispatchSemaphore(value: 0)
        let a = try system.vms.createChild(name: "a", memorySize: 8 << 20)
        system.vms.offerNetwork(to: a, vswitch: vswitch)
        system.vms.start(a) { p, vp in networkGuest(ip: [192, 0, 2, 10], ready: ready)(GuestOS(name: "a", partition: p, vp: vp)) }
        #expect(ready.wait(timeout: .now() + 10) == .success)

        let outcome = GuestOutcome<Int>()
        let b = try system.vms.createChild(name: "b", memorySize: 8 << 20)
        system.vms.offerNetwork(to: b, vswitch: vswitch)
        system.vms.start(b) { p, vp in
            networkGuest(ip: [192, 0, 2, 11], outcome: outcome, work: { os, stack in
                let pings = os.ping(stack, [192, 0, 2, 10], count: 3)
                stack.sendUDP(to: [192, 0, 2, 10], from: 40000, port: 7, Array("hello".utf8))  // a's echo service answers to 40000
                _ = os.vp.halt(until: { !stack.udpReplies.isEmpty }, timeout: 10)
                return pings * 10 + stack.udpReplies.count
            })(GuestOS(name: "b", partition: p, vp: vp))
        }
        #expect(try outcome.wait() == 31, "3 pings answered and one UDP echo")
        // The physical NIC saw none of it.
        #expect(system.testbed.nics[0].statistics.framesSent == nicBefore.framesSent)
        #expect(system.testbed.nics[0].statistics.framesReceived == nicBefore.framesReceived)
        #expect(nic.counters.txFrames == 0)
        let ports = vswitch.allPorts
        #expect(ports.count == 2 && ports.allSatisfy { vswitch.counters(of: $0).outFrames >= 4 })
    }

    /// A real Linux ping from a network namespace reaches a child partition:
    /// TAP -> e1klite model -> vendor e1klite driver in the root -> external
    /// switch -> network VSP -> VMBus -> guest, and back.
    @Test(.enabled(if: TAPWire.unavailableReason == nil && NetworkNamespace.unavailableReason == nil,
                   "TAP or network namespaces unavailable: \(TAPWire.unavailableReason ?? NetworkNamespace.unavailableReason ?? "")"))
    func realPingFromANamespaceReachesAChild() throws {
        let namespace = try NetworkNamespace()
        let tapName = "oytap\(UInt16.random(in: 0...UInt16.max))"
        let tap = try TAPWire(name: tapName)
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver("e1klite")], nics: 1) { testbed in
            testbed.nics[0].wire = tap
            tap.connect(testbed.nics[0])
        }
        defer {
            system.shutdown()
            tap.stop()
        }
        try namespace.adopt(tapName, address: "192.0.2.1/24")
        let eth0 = try #require(system.kernel.network.interfaces.first)
        let vswitch = VirtualSwitch(name: "external", kind: .external)
        defer { vswitch.shutdown() }
        try vswitch.attachUplink(eth0)

        let ready = DispatchSemaphore(value: 0)
        let child = try system.vms.createChild(name: "web", memorySize: 8 << 20)
        system.vms.offerNetwork(to: child, vswitch: vswitch)
        system.vms.start(child) { p, vp in networkGuest(ip: [192, 0, 2, 10], ready: ready)(GuestOS(name: "web", partition: p, vp: vp)) }
        #expect(ready.wait(timeout: .now() + 10) == .success)

        let result = namespace.exec(["ping", "-c", "3", "-W", "2", "192.0.2.10"])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.stdout.contains("3 received"), "\(result.stdout)")
        #expect(eth0.counters.txFrames >= 3 && eth0.counters.rxFrames >= 3, "traffic went through the vendor driver")
    }

    /// A child that sends as fast as its send sections allow, through an
    /// external switch to a NIC that cannot keep up: the switch holds frames
    /// while the NIC's transmit queue is full, and the child's sends complete
    /// only once their frames have gone, so every frame reaches the wire.
    @Test func aChildSendingFasterThanTheNICLosesNoFrames() throws {
        let wire = FrameCounter()
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver("e1klite")], nics: 1) { testbed in
            testbed.nics[0].wire = wire
        }
        defer { system.shutdown() }
        let eth0 = try #require(system.kernel.network.interfaces.first)
        let vswitch = VirtualSwitch(name: "external", kind: .external)
        defer { vswitch.shutdown() }
        let uplink = try vswitch.attachUplink(eth0)
        let count = 6000
        let outcome = GuestOutcome<Int>()
        let child = try system.vms.createChild(name: "sender", memorySize: 8 << 20)
        system.vms.offerNetwork(to: child, vswitch: vswitch)
        system.vms.start(child) { p, vp in
            let os = GuestOS(name: "sender", partition: p, vp: vp)
            outcome.finish {
                try os.boot()
                guard let nic = try os.openNetwork().first else { throw VMBusError.noDevice("NIC") }
                let frame = [0x02, 0, 0, 0, 0, 0x99] + nic.mac + [0x88, 0xB5] + [UInt8](repeating: 0x5A, count: 1500)
                for _ in 0..<count { try nic.send(frame) }
                return nic.refusedSends
            }
            vp.halt(until: { false })
        }
        #expect(try outcome.wait() == 0, "every send completed OK")
        let deadline = Date(timeIntervalSinceNow: 20)
        while wire.count < count && Date() < deadline { usleep(10_000) }
        let counters = vswitch.counters(of: uplink)
        #expect(wire.count == count, "\(wire.count) of \(count) frames reached the wire; uplink: \(counters)")
        #expect(counters.egressDrops == 0 && eth0.counters.txDropped == 0)
        let port = try #require(vswitch.allPorts.first { $0.role == .child })
        #expect(vswitch.counters(of: port).ingressDrops == 0)
    }

    @Test func guestThatNeverReturnsReceiveSectionsOnlyHurtsItself() throws {
        let system = try RootSystem(drivers: [])
        defer { system.shutdown() }
        let vswitch = VirtualSwitch(name: "private", kind: .private)
        defer { vswitch.shutdown() }
        var children: [VMManager.Child] = []
        let ready = DispatchSemaphore(value: 0)
        for (name, ip, keeps) in [("hog", UInt8(20), true), ("z", UInt8(21), false)] {
            let child = try system.vms.createChild(name: name, memorySize: 8 << 20)
            system.vms.offerNetwork(to: child, vswitch: vswitch)
            system.vms.start(child) { p, vp in
                networkGuest(ip: [192, 0, 2, ip], ready: ready, configure: { nic in nic.returnsReceiveSections = !keeps })(GuestOS(name: name, partition: p, vp: vp))
            }
            children.append(child)
        }
        #expect(ready.wait(timeout: .now() + 10) == .success && ready.wait(timeout: .now() + 10) == .success)
        let hog = try #require(system.vms.networkProviders(of: children[0]).first)
        let z = try #require(system.vms.networkProviders(of: children[1]).first)
        let outcome = GuestOutcome<Int>()
        let y = try system.vms.createChild(name: "y", memorySize: 8 << 20)
        system.vms.offerNetwork(to: y, vswitch: vswitch)
        system.vms.start(y) { p, vp in
            networkGuest(ip: [192, 0, 2, 22], outcome: outcome, work: { os, stack in
                // 300 broadcasts reach both the hog and z, in batches of 16:
                // each batch waits until z has received the last one and
                // returned every section, as a guest that keeps up does...
                let start = z.statistics.framesToChild
                for i in 0..<300 {
                    stack.sendUDP(to: [255, 255, 255, 255], from: 9, port: 9, [1])
                    if i % 16 == 15 || i == 299 {
                        let delivered = start + i + 1
                        // z's progress does not interrupt this VP: look again every millisecond.
                        let deadline = Date(timeIntervalSinceNow: 10)
                        while !(z.statistics.framesToChild >= delivered && z.statistics.sectionsWithChild == 0) {
                            guard Date() < deadline else { return -1 }
                            os.vp.halt(until: { false }, timeout: 0.001)
                        }
                    }
                }
                // ...and z still answers pings afterwards.
                return os.ping(stack, [192, 0, 2, 21], count: 3)
            })(GuestOS(name: "y", partition: p, vp: vp))
        }
        #expect(try outcome.wait() == 3)
        #expect(hog.statistics.droppedNoBuffers > 0, "the VSP stopped delivering to the hog")
        #expect(z.statistics.droppedNoBuffers == 0)
    }

    @Test func sendSectionOutsideTheBufferClosesOnlyThatChannel() throws {
        let system = try RootSystem(drivers: [])
        defer { system.shutdown() }
        let vswitch = VirtualSwitch(name: "private", kind: .private)
        defer { vswitch.shutdown() }
        let ready = DispatchSemaphore(value: 0)
        let a = try system.vms.createChild(name: "a", memorySize: 8 << 20)
        system.vms.offerNetwork(to: a, vswitch: vswitch)
        system.vms.start(a) { p, vp in networkGuest(ip: [192, 0, 2, 30], ready: ready)(GuestOS(name: "a", partition: p, vp: vp)) }
        #expect(ready.wait(timeout: .now() + 10) == .success)

        let bad = try system.vms.createChild(name: "bad", memorySize: 8 << 20)
        system.vms.offerNetwork(to: bad, vswitch: vswitch)
        let done = GuestOutcome<Bool>()
        system.vms.start(bad) { p, vp in
            let os = GuestOS(name: "bad", partition: p, vp: vp)
            done.finish {
                try os.boot()
                let nic = try #require(try os.openNetwork().first)
                let payload = NetworkProtocol.encode(.sendRNDISPacket) { $0.u32(0); $0.u32(9999); $0.u32(100) }
                try nic.sendRaw(Packet(kind: .inband, flags: Packet.completionRequested, transactionID: 777, payload: payload))
                return os.vp.halt(until: { !nic.isOpen }, timeout: 10)
            }
        }
        #expect(try done.wait(), "the offending child sees its channel closed")
        let channel = try #require(system.root.vmbus.channels(of: bad.id).values.first)
        #expect(channel.cause == .violation(.sendSectionOutside(index: 9999)), "\(String(describing: channel.cause))")

        // After the violation another child still reaches the first one.
        let after = GuestOutcome<Int>()
        let b = try system.vms.createChild(name: "b", memorySize: 8 << 20)
        system.vms.offerNetwork(to: b, vswitch: vswitch)
        system.vms.start(b) { p, vp in
            networkGuest(ip: [192, 0, 2, 31], outcome: after, work: { os, stack in os.ping(stack, [192, 0, 2, 30], count: 3) })(GuestOS(name: "b", partition: p, vp: vp))
        }
        #expect(try after.wait() == 3)
        #expect(system.root.vmbus.channels(of: a.id).values.allSatisfy { $0.cause == nil }, "the first child's channel stayed open")
    }
}

@Suite(.serialized) struct RootSerialTests {
    @Test func bytesRoundTripThroughTheUARTDriverInTheRoot() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver("uart16550")])
        defer { system.shutdown() }
        let tty = try #require(system.kernel.serial.console)
        let out = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 5 + 1) }
        #expect(NetChecks.serialOut(tty, system.testbed.console, out), "the far end got the bytes in order")
        let back = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 3 + 2) }
        #expect(firstDifference(NetChecks.serialIn(tty, system.testbed.uart, back), back) == nil)
    }
}
