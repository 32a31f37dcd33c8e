import SystemAssembly
import Devices
import DriverHost
import Foundation
import Kernel
import OyakoTestSupport
import Synchronization
import Testing

/// Each runs with the driver in process and in a driver host: the OS's
/// interfaces behave the same.
@Suite struct BareNetworkTests {
    func system(hosted: Bool = false) throws -> TestSystem {
        try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver("e1klite")], nics: 2, hosted: hosted) { testbed in
            let cable = Crossover(testbed.nics[0], testbed.nics[1])
            testbed.nics[0].wire = cable
            testbed.nics[1].wire = cable
            cable.setConnected(true)
        }
    }

    @Test(arguments: [false, true]) func minimumAndMaximumFramesRoundTrip(hosted: Bool) throws {
        let s = try system(hosted: hosted)
        defer { s.shutdown() }
        let net = s.kernel.network.interfaces
        #expect(net.map(\.name) == ["eth0", "eth1"])
        #expect(net[0].mac == Testbed.mac(0) && net[1].mac == Testbed.mac(1))
        let frames = [60, 61, 512, 1513, 1514].enumerated().map { NetChecks.frame(from: net[0].mac, to: net[1].mac, length: $0.element, seed: $0.offset) }
        let got = NetChecks.roundTrip(from: net[0], to: net[1], frames: frames)
        #expect(got == frames)
        // A 20-byte frame is padded on the wire to the Ethernet minimum.
        let short = NetChecks.frame(from: net[0].mac, to: net[1].mac, length: 20, seed: 9)
        let padded = NetChecks.roundTrip(from: net[0], to: net[1], frames: [short])
        #expect(padded.first?.count == 60 && Array(padded.first?.prefix(20) ?? []) == short)
        // Transmit completions arrive with the next TX interrupt.
        #expect(eventually { net[0].counters.txFrames == 6 && net[0].netdev.statistics()?.txPackets == 6 })
        #expect(net[1].counters.rxFrames == 6)
    }

    @Test func oversizeAndRuntFramesAreRefused() throws {
        let s = try system()
        defer { s.shutdown() }
        let eth0 = s.kernel.network.interfaces[0]
        #expect(!eth0.send(NetChecks.frame(from: eth0.mac, to: Testbed.mac(1), length: 1515, seed: 0)))
        #expect(!eth0.send([UInt8](repeating: 0, count: 13)))
        #expect(eth0.counters.txDropped == 2)
        // The driver itself refuses them too (the kernel check is not the only one).
        let frame = NetFrame()
        let big = [UInt8](repeating: 1, count: 1515)
        big.withUnsafeBytes { frame.prepare($0) { _ in } }
        #expect(eth0.netdev.transmit(frame) == .invalid)
        #expect(s.testbed.nics[0].statistics.framesSent == 0)
    }

    /// A NIC driver claiming frames or a queue no NIC has is refused its
    /// interface alike in process and in a driver host.
    @Test(arguments: [false, true]) func anImpossibleInterfaceIsRefused(hosted: Bool) throws {
        let driver = try Fixtures.mutatedReferenceDriver("e1klite", [("    info.max_frame = OY_NET_MAX_FRAME;\n", "    info.max_frame = 0x7FFFFFFFu; /* the defect */\n")])
        let s = try Fixtures.bareSystem(drivers: [driver], nics: 1, hosted: hosted)
        defer { s.shutdown() }
        #expect(s.kernel.network.interfaces.isEmpty)
        #expect(s.kernel.loadedDrivers.isEmpty || s.kernel.instance(at: s.testbed.machine.bus.enumerate().first { $0.device === s.testbed.nics[0] }!.address) == nil,
                "the attach that registered it failed")
    }

    @Test(arguments: [false, true]) func framesToOtherMACsAreFilteredAndBroadcastAccepted(hosted: Bool) throws {
        let s = try system(hosted: hosted)
        defer { s.shutdown() }
        let net = s.kernel.network.interfaces
        let stranger = NetChecks.frame(from: net[0].mac, to: [0x02, 0, 0, 0, 0, 0x99], length: 100, seed: 1)
        let broadcast = NetChecks.frame(from: net[0].mac, to: [UInt8](repeating: 0xFF, count: 6), length: 100, seed: 2)
        // One wire, in order: had the stranger got through, it would have
        // come before the broadcast sent after it.
        let got = NetChecks.roundTrip(from: net[0], to: net[1], frames: [stranger, broadcast], expecting: 1)
        #expect(got == [broadcast])
        #expect(s.testbed.nics[1].statistics.receiveFiltered == 1)
        // Add the stranger's address to eth1's filter: now it gets through.
        #expect(net[1].netdev.setFilter([[0x02, 0, 0, 0, 0, 0x99]]) == .ok)
        #expect(NetChecks.roundTrip(from: net[0], to: net[1], frames: [stranger]) == [stranger])
    }

    @Test(arguments: [false, true]) func linkDownAndUpAreObserved(hosted: Bool) throws {
        let s = try system(hosted: hosted)
        defer { s.shutdown() }
        let eth1 = s.kernel.network.interfaces[1]
        #expect(eth1.linkUp)
        let changes = GuestOutcomeBox()
        eth1.setUpperLayer(nil) { up in changes.append(up) }
        let cable = s.testbed.nics[0].wire as! Crossover
        cable.setConnected(false)
        #expect(changes.wait(count: 1) == [false])
        #expect(!eth1.linkUp)
        cable.setConnected(true)
        #expect(changes.wait(count: 2) == [false, true])
    }

    /// Senders on several threads while completions recycle frames: every
    /// accepted frame completes exactly once. (A frame queued before it was
    /// filled once lost its completion; the release benchmark caught that
    /// race. This stress fails on any lost completion, though it does not
    /// reproduce that narrow window on every run.)
    @Test(arguments: [false, true]) func concurrentSendersLoseNoCompletions(hosted: Bool) throws {
        let s = try system(hosted: hosted)
        defer { s.shutdown() }
        let eth0 = s.kernel.network.interfaces[0]
        let accepted = Atomic<Int>(0)
        let frame = NetChecks.frame(from: eth0.mac, to: Testbed.mac(1), length: 60, seed: 1)
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for _ in 0..<3000 {
                if eth0.send(frame) {
                    accepted.add(1, ordering: .relaxed)
                }
            }
        }
        let total = accepted.load(ordering: .relaxed)
        #expect(total > 0)
        #expect(eventually(10) { eth0.counters.txFrames + eth0.counters.txErrors == total }, "\(eth0.counters) of \(total) accepted")
        if !hosted {
            let instance = try #require(s.kernel.instance(at: s.machine.bus.enumerate().first { $0.device === s.testbed.nics[0] }!.address))
            #expect(instance.library.violations.isEmpty, "\(instance.library.violations)")
        }
    }

    /// The receive handler takes a bounded number of frames per interrupt
    /// and asks for another (ICS) when more are waiting, rather than looping
    /// while a flood refills the ring: 120 frames that piled up while the
    /// NIC's vector was masked come in more than one interrupt, and all of
    /// them arrive without another frame to prompt the rest.
    @Test func aBacklogOfReceivedFramesIsTakenInBoundedRuns() throws {
        let s = try system()
        defer { s.shutdown() }
        let net = s.kernel.network.interfaces
        let receiver = try #require(s.machine.bus.enumerate().first { $0.device === s.testbed.nics[1] })
        let vector = receiver.vectors.lowerBound
        s.machine.interrupts.mask(vector)
        let count = 120
        for i in 0..<count { #expect(net[0].send(NetChecks.frame(from: net[0].mac, to: net[1].mac, length: 200, seed: i))) }
        #expect(eventually { s.testbed.nics[1].statistics.framesReceived == count && net[0].counters.txFrames == count })
        #expect(net[1].counters.rxFrames == 0, "the vector is masked")
        let before = s.machine.interrupts.statistics.delivered
        s.machine.interrupts.unmask(vector)
        #expect(eventually { net[1].counters.rxFrames == count }, "\(net[1].counters.rxFrames) of \(count) frames taken")
        #expect(s.machine.interrupts.statistics.delivered - before >= 2, "taken in one interrupt: the handler has no budget")
    }

    /// Live replacement of a NIC's driver under a sender: the interface
    /// stays, frames wait while no driver has it, and none fails.
    @Test(arguments: [false, true]) func aNICsDriverIsReplacedLiveUnderTraffic(hosted: Bool) throws {
        let s = try system(hosted: hosted)
        defer { s.shutdown() }
        let net = s.kernel.network.interfaces
        let address = try #require(s.machine.bus.enumerate().first { $0.device === s.testbed.nics[0] }?.address)
        let path = try Fixtures.referenceDriver("e1klite")
        let stop = Atomic<Bool>(false), accepted = Atomic<Int>(0)
        let sender = DispatchGroup()
        sender.enter()
        Thread.detachNewThread {
            defer { sender.leave() }
            var i = 0
            while !stop.load(ordering: .acquiring) {
                if net[0].send(NetChecks.frame(from: net[0].mac, to: net[1].mac, length: 200, seed: i)) { accepted.add(1, ordering: .relaxed) }
                i += 1
                if i % 16 == 0 { usleep(200) }
            }
        }
        for _ in 0..<5 {
            let replacement = hosted ? try s.kernel.replaceDriver(at: address, withFile: path)
                : try s.kernel.replaceDriver(at: address, with: try s.kernel.loadDriver(path: path))
            #expect(replacement.device == address.description)
            usleep(20_000)
        }
        stop.store(true, ordering: .releasing)
        sender.wait()
        let total = accepted.load(ordering: .relaxed)
        #expect(total > 0)
        #expect(eventually(10) { net[0].counters.txFrames + net[0].counters.txErrors == total }, "\(net[0].counters) of \(total) accepted")
        #expect(net[0].counters.txErrors == 0, "no frame failed across the replacements: \(net[0].counters)")
        #expect(s.kernel.network.interfaces.map(\.name) == ["eth0", "eth1"] && s.kernel.network.interfaces[0] === net[0])
        // The sender's last frames may still be on their way to eth1.
        var settled = -1
        while settled != net[1].counters.rxFrames {
            settled = net[1].counters.rxFrames
            usleep(100_000)
        }
        let frames = (0..<3).map { NetChecks.frame(from: net[0].mac, to: net[1].mac, length: 300, seed: $0) }
        #expect(NetChecks.roundTrip(from: net[0], to: net[1], frames: frames) == frames)
    }

    @Test(arguments: [false, true]) func detachCancelsQueuedFramesAndReleasesEverything(hosted: Bool) throws {
        let s = try system(hosted: hosted)
        defer { s.shutdown() }
        let eth0 = s.kernel.network.interfaces[0]
        for i in 0..<500 { _ = eth0.send(NetChecks.frame(from: eth0.mac, to: Testbed.mac(1), length: 1514, seed: i)) }
        let slot = s.machine.bus.enumerate().first { $0.device === s.testbed.nics[0] }!
        let report = try #require(s.kernel.detach(slot.address))
        #expect(report.status == .ok && report.leaked.isEmpty && report.unfinishedRequests == 0, "\(report)")
        #expect(s.kernel.network.interfaces.map(\.name) == ["eth1"])
    }
}

/// Each runs with the driver in process and in a driver host.
@Suite struct BareSerialTests {
    @Test(arguments: [false, true]) func bytesRoundTripInOrderThroughTheUARTDriver(hosted: Bool) throws {
        let s = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver("uart16550")], hosted: hosted)
        defer { s.shutdown() }
        let tty = try #require(s.kernel.serial.console)
        #expect(tty.name == "ttyS0" && tty.line.baud == 115200)
        #expect(s.testbed.uart.baud == 115200, "the driver programmed the divisor latch")
        let out = (0..<1500).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) }
        #expect(NetChecks.serialOut(tty, s.testbed.console, out), "the far end got the bytes in order")
        let back = (0..<1500).map { UInt8(truncatingIfNeeded: $0 * 13 + 1) }
        #expect(firstDifference(NetChecks.serialIn(tty, s.testbed.uart, back), back) == nil)
        #expect(tty.lost == 0)
    }

    @Test(arguments: [false, true]) func lineSettingsAreCheckedAndApplied(hosted: Bool) throws {
        let s = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver("uart16550")], hosted: hosted)
        defer { s.shutdown() }
        let tty = try #require(s.kernel.serial.console)
        #expect(tty.port.setLine(SerialLine(baud: 57600)) == .ok)
        #expect(s.testbed.uart.baud == 57600)
        #expect(tty.port.setLine(SerialLine(baud: 1_000_000)) == .range)
        #expect(tty.port.setLine(SerialLine(baud: 9600, dataBits: 9)) == .invalid)
    }
}

/// A console driver that logs from inside its own `write`, holding its own
/// lock: the host must not feed that line back into the same driver on the
/// same thread (which deadlocked), nor loop writing the driver's own chatter.
@Suite struct ConsoleReentryTests {
    static let logsInWrite = [(
        "    if (d == NULL || written == NULL || (length > 0 && data == NULL)) return OY_E_INVALID;\n    d->host->lock_acquire(d->lock);\n",
        "    if (d == NULL || written == NULL || (length > 0 && data == NULL)) return OY_E_INVALID;\n    d->host->lock_acquire(d->lock);\n"
            + "    d->host->log(d->host, d->device, OY_LOG_INFO, \"u_write: queuing output\");\n"
    )]

    @Test func aConsoleDriverThatLogsInItsWriteNeitherDeadlocksNorFeedsItself() throws {
        let s = try Fixtures.bareSystem(drivers: [try Fixtures.mutatedReferenceDriver("uart16550", Self.logsInWrite)])
        defer { s.shutdown() }
        let tty = try #require(s.kernel.serial.console)
        // On a thread of its own, so that a deadlock fails this test instead
        // of hanging the suite.
        let out = (0..<600).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) }
        let delivered = DispatchSemaphore(value: 0)
        let result = Mutex<Bool>(false)
        Thread.detachNewThread {
            result.withLock { $0 = NetChecks.serialOut(tty, s.testbed.console, out, timeout: 10) }
            delivered.signal()
        }
        #expect(delivered.wait(timeout: .now() + 20) == .success, "writing to the console came back")
        #expect(result.withLock { $0 }, "the bytes reached the line in order")
        // The driver's lines were logged, and none reached its own console.
        #expect(s.kernel.log.all.contains { $0.source.hasPrefix("uart16550") && $0.message == "u_write: queuing output" })
        let line = String(decoding: s.testbed.console.contents, as: UTF8.self)
        #expect(!line.contains("u_write: queuing output"), "the console driver's own lines are not written back into it")
        #expect(tty.unsent == 0, "the console drained: no loop of the driver's own chatter")
    }
}

/// A thread-safe list of link events for one test.
final class GuestOutcomeBox: @unchecked Sendable {
    private let condition = NSCondition()
    private var events: [Bool] = []

    func append(_ up: Bool) {
        condition.lock()
        events.append(up)
        condition.broadcast()
        condition.unlock()
    }

    func wait(count: Int, timeout: Double = 5) -> [Bool] {
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        defer { condition.unlock() }
        while events.count < count && condition.wait(until: deadline) {}
        return events
    }
}

func eventually(_ timeout: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = Date(timeIntervalSinceNow: timeout)
    while !condition() {
        if Date() > deadline { return false }
        Thread.sleep(forTimeInterval: 0.005)
    }
    return true
}
