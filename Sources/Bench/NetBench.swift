import SystemAssembly
import Devices
import Foundation
import Guest
import Kernel
import Machine
import Synchronization
import VirtualizationStack
import VMBus

/// The far end of a cable that only counts what arrives.
final class CountingWire: Wire, @unchecked Sendable {
    // @unchecked Sendable: atomics only.
    let frames = Atomic<Int>(0)
    let bytes = Atomic<Int>(0)
    func send(_ frame: [UInt8], from end: any WireEnd) {
        frames.add(1, ordering: .relaxed)
        bytes.add(frame.count, ordering: .relaxed)
    }
}

/// Network throughput: the bare NIC path (OS -> vendor e1klite driver ->
/// wire), child to child through a private switch, and child to the wire
/// through an external switch on the same driver.
struct NetBench {
    let quick: Bool
    let progress: @Sendable (String) -> Void

    static let frameSize = 1514

    func run(drivers: [String], state: String) throws -> [BenchFigure] {
        guard let e1k = drivers.first(where: { $0.hasSuffix("e1klite.so") }) else { return [] }
        let count = quick ? 5_000 : 50_000

        // Bare: the OS sends straight through the vendor driver.
        let bare = try bareNIC(driver: e1k, state: state, count: count)

        // Root partition with two switches and three children.
        let wire = CountingWire()
        let system = try BootedSystem(.rootPartition(memory: 96 << 20), state: state + "/net-root", diskSize: 8 << 20, memorySize: 256 << 20, nics: 1,
                                      drivers: [e1k]) { Self.connect($0, to: wire) }
        defer { system.shutdown() }
        guard let partition = system.partition, let eth0 = system.kernel.network.interfaces.first else { throw DemoError(message: "bench: no interface in the root") }
        let privateSwitch = VirtualSwitch(name: "bench-private", kind: .private)
        let externalSwitch = VirtualSwitch(name: "bench-external", kind: .external)
        defer {
            privateSwitch.shutdown()
            externalSwitch.shutdown()
        }
        try externalSwitch.attachUplink(eth0)
        let manager = VMManager(root: partition)

        // Receiver on the private switch: counts frames addressed to it.
        let received = Atomic<Int>(0)
        let receiver = try manager.createChild(name: "sink", memorySize: 16 << 20)
        defer { manager.destroy(receiver) }
        manager.offerNetwork(to: receiver, vswitch: privateSwitch)
        let ready = DispatchSemaphore(value: 0)
        let receiverMAC = VMManager.mac(child: receiver.id)
        manager.start(receiver) { p, vp in
            let os = GuestOS(name: "sink", partition: p, vp: vp)
            guard (try? os.boot()) != nil, let nic = (try? os.openNetwork())?.first else {
                ready.signal()
                return
            }
            nic.onFrame = { _ in _ = received.add(1, ordering: .relaxed) }
            ready.signal()
            _ = withExtendedLifetime((os, nic)) { vp.halt(until: { false }) }
        }
        _ = ready.wait(timeout: .now() + 30)

        let childToChild = try sender(manager: manager, vswitch: privateSwitch, name: "sender", destination: receiverMAC, count: count) {
            received.load(ordering: .relaxed)
        }
        let childToWire = try sender(manager: manager, vswitch: externalSwitch, name: "uplink", destination: [0x02, 0x0A, 0x7A, 0xEE, 0, 9], count: count) {
            wire.frames.load(ordering: .relaxed)
        }
        let mbps = { (fps: Double) in fps * Double(Self.frameSize) / 1048576 }
        progress(String(format: "network %d-byte frames: bare NIC %.0f frames/s (%.0f MiB/s); child->child %.0f (%.2f of bare); child->wire %.0f (%.2f of bare), %.1f%% / %.1f%% delivered",
                        Self.frameSize, bare, mbps(bare), childToChild.rate, childToChild.rate / bare, childToWire.rate, childToWire.rate / bare,
                        childToChild.delivered * 100, childToWire.delivered * 100))
        return [
            BenchFigure("net.bare_nic", bare, "frames/s", note: String(format: "%d-byte frames, OS -> e1klite driver -> wire; %.0f MiB/s", Self.frameSize, mbps(bare))),
            BenchFigure("net.child_to_child", childToChild.rate, "frames/s", baseline: bare,
                        note: String(format: "private switch, VMBus both ways; %.0f MiB/s; %.1f%% of frames delivered", mbps(childToChild.rate), childToChild.delivered * 100)),
            BenchFigure("net.child_to_wire", childToWire.rate, "frames/s", baseline: bare,
                        note: String(format: "external switch -> e1klite in the root -> wire; %.0f MiB/s; %.1f%% delivered", mbps(childToWire.rate), childToWire.delivered * 100)),
        ]
    }

    /// The testbed's NIC on `wire`, with carrier.
    private static func connect(_ testbed: Testbed, to wire: CountingWire) {
        testbed.nics[0].wire = wire
        testbed.nics[0].setCarrier(true)
    }

    /// Frames per second the bare OS sends through the vendor NIC driver.
    private func bareNIC(driver e1k: String, state: String, count: Int) throws -> Double {
        let wire = CountingWire()
        let system = try BootedSystem(.bareMetal, state: state + "/net-bare", diskSize: 8 << 20, nics: 1, drivers: [e1k]) { Self.connect($0, to: wire) }
        defer { system.shutdown() }
        guard let eth0 = system.kernel.network.interfaces.first else { throw DemoError(message: "bench: no interface") }
        let frame = [UInt8](repeating: 0xFF, count: 6) + eth0.mac + [0x88, 0xB5] + [UInt8](repeating: 0x11, count: Self.frameSize - 14)
        let began = DispatchTime.now().uptimeNanoseconds
        var sent = 0
        while sent < count {
            if eth0.send(frame) { sent += 1 } else { usleep(20) }
        }
        let deadline = Date(timeIntervalSinceNow: 30)
        while wire.frames.load(ordering: .relaxed) < count && Date() < deadline { usleep(100) }
        return Double(wire.frames.load(ordering: .relaxed)) / (Double(DispatchTime.now().uptimeNanoseconds - began) / 1e9)
    }

    /// Starts a child that sends `count` frames to `destination` as fast as
    /// its send sections allow; returns delivered frames per second.
    private func sender(manager: VMManager, vswitch: VirtualSwitch, name: String, destination: [UInt8], count: Int,
                        delivered: @escaping @Sendable () -> Int) throws -> (rate: Double, delivered: Double)
    {
        let vm = try manager.createChild(name: name, memorySize: 16 << 20)
        defer { manager.destroy(vm) }
        manager.offerNetwork(to: vm, vswitch: vswitch)
        let before = delivered()
        let began = Mutex<UInt64>(0)
        let finished = DispatchSemaphore(value: 0)
        manager.start(vm) { p, vp in
            let os = GuestOS(name: name, partition: p, vp: vp)
            var nics: [NetVSC] = []
            if (try? os.boot()) != nil, let opened = try? os.openNetwork(), let nic = opened.first {
                nics = opened
                let frame = destination + nic.mac + [0x88, 0xB5] + [UInt8](repeating: 0x22, count: Self.frameSize - 14)
                began.withLock { $0 = DispatchTime.now().uptimeNanoseconds }
                for _ in 0..<count { try? nic.send(frame) }
            }
            finished.signal()
            _ = withExtendedLifetime((os, nics)) { vp.halt(until: { false }) }
        }
        _ = finished.wait(timeout: .now() + 120)
        let deadline = Date(timeIntervalSinceNow: 5)
        var last = -1
        while Date() < deadline {
            let now = delivered() - before
            if now >= count || now == last { break }
            last = now
            usleep(20_000)
        }
        let got = delivered() - before
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - began.withLock { $0 }) / 1e9
        return (Double(got) / seconds, Double(got) / Double(count))
    }
}
