@_spi(Conformance) import DriverHost
import Devices
import Foundation
import Kernel
import Machine
import Synchronization

/// Checks of the network class, "oyako.net/1".
extension Catalogue {
    static let netChecks: [CheckDefinition] = [
        CheckDefinition("io.net.frames", "minimum and maximum frames round-trip", requires: ["io.basic"], classes: net, hostable: true) { c in
            try withInterface(c) { rig, interface, recorder in
                if let problem = addressProblem(rig, interface) { return .failed(problem) }
                var sent: [[UInt8]] = []
                for length in [60, 61, 1000, 1514] {
                    let frame = interface.mac + [0x02, 0, 0, 0, 0, 9] + [0x88, 0xB5] + (0..<(length - 14)).map { UInt8(truncatingIfNeeded: $0 &+ length) }
                    sent.append(frame)
                    guard interface.send(frame) else { return .failed("transmit refused a \(length)-byte frame") }
                }
                let wire = recorder.wait(count: sent.count)
                guard wire.count >= sent.count, zip(wire.suffix(sent.count), sent).allSatisfy({ Array($0.0.prefix($0.1.count)) == $0.1 }) else {
                    return .failed("frames did not reach the wire intact and in order")
                }
                let received = Mutex<[[UInt8]]>([])
                interface.setUpperLayer { bytes in received.withLock { $0.append(Array(bytes)) } }
                for frame in sent { recorder.inject(frame) }
                let deadline = Date(timeIntervalSinceNow: 5)
                while received.withLock({ $0.count }) < sent.count && Date() < deadline { Thread.sleep(forTimeInterval: 0.005) }
                guard received.withLock({ $0 }) == sent else { return .failed("received \(received.withLock { $0.count }) of \(sent.count) frames, or altered") }
                return .passed("60 to 1514 bytes both ways", observation: rig.deviceObservation())
            }
        },
        CheckDefinition("io.net.oversize", "oversize and runt frames refused", requires: ["io.basic"], classes: net) { c in
            try withAttached(c) { rig, instance in
                guard let netdev = instance.netdevs.first else { return .failed("no interface registered") }
                var statuses: [OyStatus] = []
                for length in [netdev.maxFrame + 1, 9000, 13] {
                    let frame = NetFrame()
                    let bytes = [UInt8](repeating: 0x02, count: length)
                    bytes.withUnsafeBytes { frame.prepare($0) { _ in } }
                    let status = netdev.transmit(frame)
                    guard status == .invalid else {
                        return .failed("transmit " + (status.isOK ? "accepted" : "answered \(status) to") + " a \(length)-byte frame (max_frame \(netdev.maxFrame)); refuse it with OY_E_INVALID")
                    }
                    statuses.append(status)
                }
                var observation = rig.deviceObservation()
                observation["statuses"] = Observation.statuses(statuses)
                return .passed(observation: observation)
            }
        },
        CheckDefinition("io.net.filter", "the receive filter passes what set_filter asks for, and only that", requires: ["io.basic"], classes: net, hostable: true) { c in
            try withInterface(c) { rig, interface, recorder in
                if let problem = addressProblem(rig, interface) { return .failed(problem) }
                let probe = FilterProbe(interface: interface, recorder: recorder)
                for step in FilterProbe.steps {
                    if let failure = probe.run(step) { return .failed(failure) }
                }
                return .passed("\(FilterProbe.steps.count) filters, each asked for and observed on the wire", observation: Observation(["filters": "\(FilterProbe.steps.count)"]))
            }
        },
        CheckDefinition("io.net.rings", "1000 frames each way, around the rings many times: all intact and in order, every transmit completed once",
                        requires: ["io.basic"], classes: net, hostable: true) { c in
            try withInterface(c) { rig, interface, recorder in
                let traffic = RingTraffic(interface: interface, recorder: recorder)
                if let failure = traffic.transmit() ?? traffic.receive() ?? traffic.takeBacklog(rig.slots[0]) {
                    return .failed(failure)
                }
                return .passed("\(traffic.count) frames each way, and a backlog of \(RingTraffic.backlogSize) taken after one interrupt",
                               observation: Observation(["frames_each_way": "\(traffic.count)"]))
            }
        },
        CheckDefinition("io.net.from-callbacks", "the OS transmits from inside tx_complete() and receive(), as its queue and its stack do: every frame leaves, none deadlocks",
                        requires: ["io.basic"], classes: net, timeout: 25) { c in
            try withInterface(c) { rig, interface, recorder in
                guard let (nic, _) = rig.nics.first else { return .failed("no NIC in the rig") }
                let traffic = ReentrantTraffic(interface: interface, recorder: recorder, nic: nic, deadlocked: { c.sawLockTakenTwice })
                if let problem = traffic.fromCompletions() ?? traffic.fromReceive() { return c.decided(.failed(problem)) }
                return .passed("\(traffic.sent) frames sent, \(traffic.sent - traffic.depth) of them handed on from inside tx_complete(); "
                    + "\(ReentrantTraffic.answered) answered from inside receive()")
            }
        },
        CheckDefinition("io.net.counters", "get_stats counts the frames and bytes that went each way", requires: ["io.basic"], classes: net, hostable: true) { c in
            try withInterface(c) { _, interface, recorder in
                guard let before = interface.netdev.statistics() else { return .failed("get_stats failed") }
                let traffic = RingTraffic(interface: interface, recorder: recorder, count: 100)
                if let failure = traffic.transmit() ?? traffic.receive() { return .failed(failure) }
                let bytes = UInt64((0..<traffic.count).map(RingTraffic.length).reduce(0, +))
                let expected = [(\NetStatistics.txPackets, UInt64(traffic.count), "tx_packets"), (\.txBytes, bytes, "tx_bytes"), (\.txErrors, 0, "tx_errors"),
                                (\.rxPackets, UInt64(traffic.count), "rx_packets"), (\.rxBytes, bytes, "rx_bytes"), (\.rxErrors, 0, "rx_errors")]
                // A counter may trail the completion that made it by a moment.
                var after = before
                let deadline = Date(timeIntervalSinceNow: 2)
                repeat {
                    after = interface.netdev.statistics() ?? before
                    if expected.allSatisfy({ after[keyPath: $0.0] &- before[keyPath: $0.0] == $0.1 }) { break }
                    Thread.sleep(forTimeInterval: 0.01)
                } while Date() < deadline
                for (field, want, name) in expected where after[keyPath: field] &- before[keyPath: field] != want {
                    return .failed("get_stats: \(name) rose by \(Int64(bitPattern: after[keyPath: field] &- before[keyPath: field])) over \(traffic.count) frames "
                        + "(\(bytes) bytes) each way, expected \(want); count what SDK/CLASSES.md says")
                }
                if let problem = olderHostStatistics(interface.netdev) { return .failed(problem) }
                return .passed("\(traffic.count) frames, \(bytes) bytes each way, counted", observation: Observation(["counted_each_way": "\(traffic.count)/\(bytes)"]))
            }
        },
        CheckDefinition("io.net.link", "the link at registration, and down and up after it, observed", requires: ["io.basic"], classes: net, hostable: true) { c in
            // Attached with the cable out: the link it registers is down.
            try withInterface(c, prepare: { $0.nics.first?.0.setCarrier(false) }) { rig, interface, _ in
                guard let (nic, _) = rig.nics.first else { return .failed("no NIC in the rig") }
                guard !interface.linkUp else {
                    return .failed("registered with the link up while the cable was out; read the device's link state in attach (oy_net_info.link)")
                }
                let events = Mutex<[Bool]>([])
                interface.setUpperLayer(nil) { up in events.withLock { $0.append(up) } }
                for (step, up) in [true, false, true].enumerated() {
                    nic.setCarrier(up)
                    let deadline = Date(timeIntervalSinceNow: 5)
                    while events.withLock({ $0.count }) <= step && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
                }
                let seen = events.withLock { $0 }
                return seen == [true, false, true] ? .passed(observation: Observation(["link_events": "up,down,up"]))
                    : .failed("link changes reported: \(seen), expected up, down, up; call link_changed from the interrupt handler")
            }
        },
    ]

    /// get_stats from a host that knows only the first two counters
    /// (struct_size 24): answered, and nothing written past them. In process
    /// only: a driver host's get_stats always passes the whole structure.
    static func olderHostStatistics(_ netdev: any NetDriverBinding) -> String? {
        let size = 24
        guard let registered = netdev as? RegisteredNetdev, let (status, bytes) = registered.statsUnchecked(structSize: UInt32(size)) else { return nil }
        guard status == .ok else {
            return "get_stats with struct_size \(size) (an older host's oy_net_stats) answered \(status.name ?? "code \(status.rawValue)"); fill what struct_size has room for (SDK/CLASSES.md, Network)"
        }
        if let first = bytes[size...].firstIndex(where: { $0 != 0xA5 }) {
            return "get_stats with struct_size \(size) wrote byte \(first) of the host's structure, past its struct_size: on an older host that is someone else's memory; copy at most struct_size bytes"
        }
        return nil
    }

    /// The address the driver registered, against the one the NIC holds
    /// (RAL[0]/RAH[0] after reset, the datasheet says): frames to any other
    /// address are filtered out by the device.
    static func addressProblem(_ rig: Rig, _ interface: NetInterface) -> String? {
        guard let (nic, _) = rig.nics.first, interface.mac != nic.mac else { return nil }
        return "the driver registered the address \(FilterProbe.text(interface.mac)), but the device's own is \(FilterProbe.text(nic.mac)) "
            + "(RAL[0]/RAH[0], byte 0 in RAL's low byte); the device filters out frames to the registered one"
    }

    /// A rig with the driver attached and its interface registered, with the
    /// far end of its cable. `prepare` runs before the driver attaches.
    static func withInterface(_ c: CheckContext, prepare: (Rig) -> Void = { _ in },
                              _ body: (Rig, NetInterface, FrameRecorder) throws -> CheckOutcome) throws -> CheckOutcome {
        try withDriver(c, prepare: prepare) { rig in
            guard let interface = rig.kernel.network.interfaces.first, let (_, recorder) = rig.nics.first else {
                return .failed("the driver registered no interface (register_netdev in attach)")
            }
            return try body(rig, interface, recorder)
        }
    }
}

/// Frames from the wire against one receive filter after another: each
/// destination the filter should pass arrives, each it should drop does not.
/// A frame to the interface's own address goes last; frames arrive in order,
/// so once it is in, every earlier frame that passed is in too.
struct FilterProbe {
    let interface: NetInterface
    let recorder: FrameRecorder

    /// One filter, or nil for the one at registration, and what it must pass.
    struct Step {
        let described: String
        let macs: [[UInt8]]?
        let broadcast: Bool, promiscuous: Bool
        let passes: [[UInt8]]
        let drops: [[UInt8]]
        /// More addresses than the device holds: refused, the filter kept.
        var refused = false
    }

    static let listed: [UInt8] = [0x02, 0x00, 0x5E, 0x10, 0x00, 0x01]
    static let second: [UInt8] = [0x02, 0x00, 0x5E, 0x10, 0x00, 0x02]
    static let stranger: [UInt8] = [0x02, 0x00, 0x5E, 0x10, 0x00, 0x03]
    static let broadcast = [UInt8](repeating: 0xFF, count: 6)
    /// More addresses than a device's filter holds: refused (OY_E_RANGE),
    /// the filter left as it was (SDK/CLASSES.md).
    static let tooMany = (0..<4096).map { [0x02, 0x00, 0x5F, UInt8($0 >> 8), UInt8($0 & 0xFF), 0x01] }

    static let steps: [Step] = [
        Step(described: "the filter at registration (its own address and broadcast)", macs: nil, broadcast: true, promiscuous: false,
             passes: [broadcast], drops: [stranger, listed]),
        Step(described: "set_filter(1 address, BROADCAST)", macs: [listed], broadcast: true, promiscuous: false,
             passes: [listed, broadcast], drops: [stranger, second]),
        Step(described: "set_filter(2 addresses, no flags)", macs: [listed, second], broadcast: false, promiscuous: false,
             passes: [listed, second], drops: [broadcast, stranger]),
        // Each call replaces the list: the address it no longer names goes
        // (a driver that programs only the entries it is given keeps it).
        Step(described: "set_filter(1 address, no flags) after 2", macs: [listed], broadcast: false, promiscuous: false,
             passes: [listed], drops: [second, broadcast, stranger]),
        Step(described: "set_filter(0 addresses, PROMISCUOUS)", macs: [], broadcast: false, promiscuous: true,
             passes: [stranger, listed], drops: [broadcast]),
        Step(described: "set_filter(4096 addresses, BROADCAST), refused", macs: tooMany, broadcast: true, promiscuous: false,
             passes: [stranger, listed], drops: [broadcast], refused: true),
    ]

    /// What went wrong with `step`, or nil.
    func run(_ step: Step) -> String? {
        if let macs = step.macs {
            let status = interface.setFilter(macs, broadcast: step.broadcast, promiscuous: step.promiscuous)
            if step.refused {
                // Which code refuses it is badinput.null-args' to judge; a
                // device that holds them all leaves nothing to observe here.
                guard !status.isOK else { return nil }
            } else {
                guard status.isOK else { return "\(step.described) answered \(status), expected OY_OK" }
            }
        }
        let destinations = step.passes + step.drops
        let received = Mutex<[[UInt8]]>([])
        interface.setUpperLayer { bytes in received.withLock { $0.append(Array(bytes.prefix(6))) } }
        defer { interface.setUpperLayer(nil) }
        for destination in destinations + [interface.mac] {
            recorder.inject(destination + [0x02, 0x00, 0x5E, 0x10, 0xEE, 0x01] + [0x88, 0xB5] + [UInt8](repeating: 0x5A, count: 46))
        }
        let deadline = Date(timeIntervalSinceNow: 5)
        while !received.withLock({ $0.contains(interface.mac) }) && Date() < deadline { Thread.sleep(forTimeInterval: 0.002) }
        let arrived = Set(received.withLock { $0 })
        let unchanged = step.refused ? "; a refused set_filter must leave the filter unchanged" : ""
        guard arrived.contains(interface.mac) else { return "after \(step.described), a frame to the interface's own address was not passed up" }
        if let lost = destinations.first(where: { step.passes.contains($0) && !arrived.contains($0) }) {
            return "after \(step.described), a frame to \(Self.text(lost)) was not passed up\(unchanged)"
        }
        if let leaked = destinations.first(where: { step.drops.contains($0) && arrived.contains($0) }) {
            return "after \(step.described), a frame to \(Self.text(leaked)) was passed up; the filter should have dropped it\(unchanged)"
        }
        return nil
    }

    static func text(_ mac: [UInt8]) -> String { mac.map { String(format: "%02x", $0) }.joined(separator: ":") }
}

/// Many more frames than a NIC's descriptor rings hold, both ways: the
/// wrap-around of every ring index is where drivers lose frames and
/// completions.
struct RingTraffic {
    let interface: NetInterface
    let recorder: FrameRecorder
    var count = 1000
    /// Frames injected at once: fewer than any receive ring has descriptors.
    static let burst = 16
    static let peer: [UInt8] = [0x02, 0x00, 0x5E, 0x10, 0xEE, 0x02]

    /// Frame `n` of a run: 60 to 1514 bytes, its number in the payload; every
    /// seventh a runt of 18 to 59 bytes, which reaches the wire padded. After
    /// the first trip around a transmit ring the runts land in buffers that
    /// held larger frames, so padding copied from a reused buffer shows.
    static func length(_ n: Int) -> Int { n % 7 == 3 ? 18 + n % 42 : 60 + (n * 97) % 1455 }

    /// The shortest frame on the wire (without FCS), and what a transmitted
    /// frame must look like there: padded with zeros up to it.
    static let minimum = 60
    static func onTheWire(_ frame: [UInt8]) -> [UInt8] { frame + [UInt8](repeating: 0, count: max(0, minimum - frame.count)) }

    /// What is wrong with transmitted frame `n` as the wire saw it, or nil.
    static func problem(_ n: Int, sent frame: [UInt8], wire: [UInt8]) -> String? {
        if wire == onTheWire(frame) { return nil }
        guard wire.count >= frame.count, Array(wire.prefix(frame.count)) == frame else {
            return "transmitted frame \(n) reached the wire altered or out of order"
        }
        if frame.count < minimum, wire.count < minimum {
            return "transmitted frame \(n) (\(frame.count) bytes) reached the wire as \(wire.count) bytes; pad a frame shorter than \(minimum) bytes to \(minimum) with zeros (SDK/CLASSES.md, Network)"
        }
        if frame.count < minimum, wire.count == minimum {
            return "transmitted frame \(n) (\(frame.count) bytes) was padded with bytes that are not zero: a reused buffer's old contents leak onto the wire (Etherleak, CVE-2003-0001); pad with zeros"
        }
        return "transmitted frame \(n) (\(frame.count) bytes) reached the wire as \(wire.count) bytes, with bytes the OS never gave"
    }

    static func frame(_ n: Int, to destination: [UInt8], from source: [UInt8]) -> [UInt8] {
        let length = length(n)
        let number = withUnsafeBytes(of: UInt32(n).bigEndian) { Array($0) }
        return destination + source + [0x88, 0xB5] + number + (0..<(length - 18)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ n) }
    }

    /// What went wrong sending `count` frames through the interface, or nil.
    func transmit() -> String? {
        let wireBefore = recorder.wait(count: 0, timeout: 0).count
        let countersBefore = interface.counters
        let frames = (0..<count).map { Self.frame($0, to: Self.peer, from: interface.mac) }
        for (n, frame) in frames.enumerated() where !interface.send(frame) {
            return "the interface refused frame \(n) of \(count) (its software queue is full: transmits are not completing)"
        }
        // Well inside the check's own time limit, so that a stall is
        // reported with its cause rather than as a timeout.
        let wire = Array(recorder.wait(count: wireBefore + count, timeout: 10).dropFirst(wireBefore))
        for (n, (seen, frame)) in zip(wire, frames).enumerated() {
            if let problem = Self.problem(n, sent: frame, wire: seen) { return problem }
        }
        guard wire.count >= count else {
            let completed = interface.counters.txFrames - countersBefore.txFrames
            let cause = completed < wire.count
                ? "; the driver completed only \(completed) of those: a transmit never completed keeps its place in the driver's queue, so the frames behind it wait (tx_complete exactly once per accepted frame)"
                : " (the ring wraps every few hundred frames)"
            return "\(wire.count) of \(count) transmitted frames reached the wire within 10 s; the rest never left" + cause
        }
        let deadline = Date(timeIntervalSinceNow: 5)
        var completed = 0, failed = 0
        repeat {
            let now = interface.counters
            completed = now.txFrames - countersBefore.txFrames
            failed = now.txErrors - countersBefore.txErrors
            if completed + failed >= count { break }
            Thread.sleep(forTimeInterval: 0.005)
        } while Date() < deadline
        guard failed == 0 else { return "\(failed) of \(count) frames that reached the wire were completed with an error" }
        guard completed == count else {
            return "\(count - completed) of \(count) transmitted frames were sent but never completed (tx_complete exactly once per accepted frame)"
        }
        return nil
    }

    /// What went wrong receiving `count` frames from the wire, or nil.
    func receive() -> String? {
        let received = Mutex<[[UInt8]]>([])
        interface.setUpperLayer { bytes in received.withLock { $0.append(Array(bytes)) } }
        defer { interface.setUpperLayer(nil) }
        let frames = (0..<count).map { Self.frame($0, to: interface.mac, from: Self.peer) }
        for start in stride(from: 0, to: count, by: Self.burst) {
            let end = min(start + Self.burst, count)
            for frame in frames[start..<end] { recorder.inject(frame) }
            let deadline = Date(timeIntervalSinceNow: 5)
            while received.withLock({ $0.count }) < end && Date() < deadline { Thread.sleep(forTimeInterval: 0.001) }
            // This burst's frames only: the earlier ones were compared already.
            let got = received.withLock { Array($0.dropFirst(start)) }
            if let n = zip(got, frames[start...]).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
                return "received frame \(start + n) was passed up altered or out of order"
            }
            guard start + got.count >= end else {
                return "after \(start) frames had come in from the wire, the driver passed up only \(got.count) of the next \(end - start): receiving stopped"
            }
        }
        return nil
    }

    /// Frames that pile up while the driver is not interrupted.
    static let backlogSize = 100

    /// What went wrong taking a backlog, or nil: `backlogSize` frames arrive
    /// while the device's interrupts are lost, then one more, whose
    /// interrupt the driver gets. With no more traffic it must pass all of
    /// them up, however few one run of its handler takes: one that stops
    /// early must have itself called again (e1klite: RXT0 to ICS).
    func takeBacklog(_ slot: BusSlot) -> String? {
        let received = Mutex<[[UInt8]]>([])
        interface.setUpperLayer { bytes in received.withLock { $0.append(Array(bytes)) } }
        defer { interface.setUpperLayer(nil) }
        let frames = (0...Self.backlogSize).map { Self.frame(count + $0, to: interface.mac, from: Self.peer) }
        slot.loseInterrupts(true)
        for frame in frames.dropLast() { recorder.inject(frame) }
        Thread.sleep(forTimeInterval: 0.05)
        slot.loseInterrupts(false)
        recorder.inject(frames.last!)
        let deadline = Date(timeIntervalSinceNow: 5)
        while received.withLock({ $0.count }) < frames.count && Date() < deadline { Thread.sleep(forTimeInterval: 0.002) }
        let got = received.withLock { $0 }
        if let n = zip(got, frames).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
            return "received frame \(n) of a backlog was passed up altered or out of order"
        }
        guard got.count >= frames.count else {
            return "\(Self.backlogSize) frames piled up while the device's interrupts were lost; the interrupt of one more brought up \(got.count) of the \(frames.count), "
                + "then nothing more came: a handler that takes a bounded number of frames per interrupt must have itself called again while filled buffers remain "
                + "(e1klite: write RXT0 to ICS, the datasheet's Interrupts)"
        }
        return nil
    }
}

/// The OS calling back into the driver from inside the driver's calls into
/// it, as it does: its queue hands the next waiting frame to transmit()
/// from inside tx_complete(), and its stack answers a frame (an ARP
/// request, an echo) from inside receive(). A driver that makes either call
/// holding a lock transmit() takes deadlocks.
struct ReentrantTraffic {
    let interface: NetInterface
    let recorder: FrameRecorder
    let nic: E1KLite
    /// Whether the host saw a driver thread take its lock twice.
    let deadlocked: @Sendable () -> Bool
    var depth: Int { max(1, interface.netdev.queueDepth) }
    /// Frames sent while the link partner pauses the transmitter: those
    /// past the driver's depth wait in the OS's queue.
    var sent: Int { depth + min(2 * depth, 256) }
    static let answered = 64

    func fromCompletions() -> String? {
        let before = recorder.wait(count: 0, timeout: 0).count
        let overrunsBefore = nic.statistics.transmitOverruns
        let frames = (0..<sent).map { RingTraffic.frame($0, to: RingTraffic.peer, from: interface.mac) }
        nic.pauseTransmit(true)
        for (n, frame) in frames.enumerated() where !interface.send(frame) {
            nic.pauseTransmit(false)
            return "the interface refused frame \(n) of \(sent) (its software queue is full)"
        }
        nic.pauseTransmit(false)
        let wire = Array(recorder.wait(count: before + sent, timeout: 10).dropFirst(before))
        for (n, (seen, frame)) in zip(wire, frames).enumerated() {
            if let problem = RingTraffic.problem(n, sent: frame, wire: seen) { return problem }
        }
        guard wire.count >= sent else {
            let missing = "\(sent - wire.count) of \(sent) frames never left (sent at once while the link partner paused the transmitter; the driver's depth is \(depth)). "
            let overruns = nic.statistics.transmitOverruns - overrunsBefore
            if overruns > 0 {
                return missing + "The device saw its transmit ring overrun \(overruns) time(s): a TDT write handed over descriptors it had not taken yet, "
                    + "or brought the tail round to the head, and those were lost. A ring of N descriptors holds at most N - 1: "
                    + "answer OY_E_BUSY before it is full, and register a tx_queue_depth below the ring's size (SDK/datasheets/e1klite.md)"
            }
            guard deadlocked() else {
                return missing + "The driver holds frames it never completes, and the ones waiting behind them go to it only as frames complete; "
                    + "call tx_complete exactly once per accepted frame (SDK/CLASSES.md)"
            }
            return missing + "The OS hands a waiting frame to transmit() from inside tx_complete(), on the thread that completes: a driver that calls tx_complete() "
                + "holding a lock its transmit takes deadlocks there. Release your locks before tx_complete() (SDK/CLASSES.md)"
        }
        return nil
    }

    func fromReceive() -> String? {
        let before = recorder.wait(count: 0, timeout: 0).count
        let mac = interface.mac
        interface.setUpperLayer { [interface] bytes in
            // The answer goes out before receive() returns, as the OS's stack sends an ARP reply.
            guard bytes.count >= 18, Array(bytes[6..<12]) == RingTraffic.peer else { return }
            let n = Int(bytes[14]) << 24 | Int(bytes[15]) << 16 | Int(bytes[16]) << 8 | Int(bytes[17])
            _ = interface.send(RingTraffic.frame(n, to: RingTraffic.peer, from: mac))
        }
        defer { interface.setUpperLayer(nil) }
        var answers = 0
        for start in stride(from: 0, to: Self.answered, by: RingTraffic.burst) {
            let end = min(start + RingTraffic.burst, Self.answered)
            for n in start..<end { recorder.inject(RingTraffic.frame(n, to: mac, from: RingTraffic.peer)) }
            answers = recorder.wait(count: before + end, timeout: 5).count - before
            if answers < end { break }  // stuck: the rest would wait in vain
        }
        guard answers >= Self.answered else {
            guard deadlocked() else {
                return "\(Self.answered - answers) of \(Self.answered) frames the OS answered from inside receive() were never sent, or their frames never arrived"
            }
            return "\(Self.answered - answers) of \(Self.answered) frames the OS answered from inside receive() were never sent. "
                + "The OS's stack answers a frame (an ARP request, an echo) from inside receive(), on the thread that delivers it: a driver that calls "
                + "receive() holding a lock its transmit takes deadlocks there. Release your locks before receive() (SDK/CLASSES.md)"
        }
        return nil
    }
}
