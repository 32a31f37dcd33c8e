import Foundation
import Logging

/// A layer-2 learning switch in the root partition.
///
/// Kinds, as in Hyper-V: `private` connects child partitions only;
/// `internal` adds the root's own port; `external` adds a physical NIC
/// (through the vendor driver), optionally shared with the root.
///
/// Every port has a bounded ingress queue; one forwarding thread serves the
/// queues round-robin, a few frames per port per round, so a port that
/// floods fills and overflows only its own queue while the others keep
/// their share. Malformed frames (runts, oversize, multicast sources) are
/// dropped and counted at the port they came in on.
///
/// Back-pressure: a port's owner that cannot take a frame now (a NIC whose
/// transmit queue is full) answers `.full`; that frame and the ones after it
/// wait at the switch, in order, until the owner calls `Port.ready()` (or at
/// most `backlogLifetime`, then they are dropped). A sender that passes
/// `done` to `Port.input` learns when its frame has left the switch, so it
/// can hold its own sender back (NetVSP completes a child's send then).
public final class VirtualSwitch: @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `condition`.
    public enum Kind: String, Sendable {
        case external, `internal`, `private`
    }

    public enum PortRole: String, Sendable {
        case child, host, uplink
    }

    /// What a port's owner did with a frame the switch handed it.
    public enum Delivery: Sendable, Equatable {
        /// It took the frame (delivered it, or queued it to be sent).
        case taken
        /// It dropped the frame (counted as an egress drop).
        case dropped
        /// It cannot take frames now; it calls `Port.ready()` once it can.
        /// The frame and those after it wait at the switch.
        case full
    }

    public struct Counters: Sendable, Equatable {
        /// Frames the port handed to the switch and the switch accepted.
        public var inFrames = 0
        /// Frames (and their bytes) the switch delivered out of the port.
        public var outFrames = 0, outBytes = 0
        /// Dropped because the port's ingress queue was full.
        public var ingressDrops = 0
        /// Dropped because the port's owner could not take them (it dropped
        /// them, its backlog at the switch was full, or they waited there
        /// longer than `backlogLifetime`).
        public var egressDrops = 0
        /// Dropped as malformed (runt, oversize, multicast source).
        public var malformed = 0
        /// Frames that waited at the switch for the port's owner to make room.
        public var waitedForRoom = 0
    }

    public final class Port: @unchecked Sendable {
        // @unchecked Sendable: mutable state is guarded by the switch's condition.
        public let name: String
        public let role: PortRole
        /// The switch it belongs to. Weak, not unowned: the port's user (a
        /// NetVSP channel, a vhost-user queue) may hold it past the switch's
        /// end, and a frame it sends then is dropped, not a crash.
        private(set) weak var owner: VirtualSwitch?
        let deliver: @Sendable ([UInt8]) -> Delivery
        /// Frames in from the owner, not yet forwarded.
        var queue: [Transit] = []
        /// Frames for the owner that wait for it to make room, oldest first.
        var backlog: [Parked] = []
        /// The owner answered `.full` and has not called `ready()` since.
        var stalled = false
        var stalledSince: UInt64 = 0
        /// How many times the owner called `ready()`: one that comes while
        /// a delivery is on its way is not lost.
        var readiness = 0
        var counters = Counters()
        var attached = true

        init(name: String, role: PortRole, owner: VirtualSwitch, deliver: @escaping @Sendable ([UInt8]) -> Delivery) {
            self.name = name
            self.role = role
            self.owner = owner
            self.deliver = deliver
        }

        /// A frame from the port's owner into the switch. Never blocks.
        /// `done`, if given, is called once, when the frame has left the
        /// switch: taken or dropped by every port it went to, or dropped on
        /// the way in (it may run on the caller's thread or the switch's).
        public func input(_ frame: [UInt8], done: (@Sendable () -> Void)? = nil) {
            let transit = Transit(frame, done: done)
            guard let owner else { return transit.finish() }
            owner.enqueue(transit, from: self)
        }

        /// The owner can take frames again (after it answered `.full`).
        public func ready() { owner?.ready(self) }
    }

    /// A frame on its way through the switch; `remaining` counts the ports
    /// it has still to be taken or dropped by. Guarded by the switch's condition.
    final class Transit {
        let frame: [UInt8]
        var remaining = 0
        private let done: (@Sendable () -> Void)?

        init(_ frame: [UInt8], done: (@Sendable () -> Void)?) {
            self.frame = frame
            self.done = done
        }

        /// Called without the switch's lock.
        func finish() { done?() }
    }

    /// A frame in a port's backlog, and since when it has waited.
    struct Parked {
        let transit: Transit
        let since: UInt64
    }

    public let name: String
    public let kind: Kind
    public static let queueLimit = 256
    public static let burst = 8
    public static let maxFrame = 1514
    public static let macTableLimit = 4096
    public static let agingSeconds = 300.0
    /// How long a frame may wait for a port's owner to make room.
    public static let backlogLifetime = 1.0
    /// How long a port stays stalled without a `ready()` before the switch
    /// offers it a frame again.
    static let stallRetry = 0.05

    let condition = NSCondition()
    private var ports: [Port] = []
    private var table: [[UInt8]: (port: Port, seen: Date)] = [:]
    private var cursor = 0
    private var running = true
    private var finished = false
    private let logger = Logger(label: "oyako.vswitch")

    public init(name: String, kind: Kind) {
        self.name = name
        self.kind = kind
        let thread = Thread { [self] in forwardLoop() }
        thread.name = "vswitch-\(name)"
        thread.start()
    }

    public struct PortRefused: Error, CustomStringConvertible {
        public let reason: String
        public var description: String { reason }
    }

    /// Adds a port whose owner takes a frame or drops it (false: counted as
    /// an egress drop). `deliver` must not block.
    public func addPort(name: String, role: PortRole, deliver: @escaping @Sendable ([UInt8]) -> Bool) throws(PortRefused) -> Port {
        try addPort(name: name, role: role) { frame -> Delivery in deliver(frame) ? .taken : .dropped }
    }

    /// Adds a port whose owner may also answer `.full` (see `Delivery`).
    /// `deliver` must not block.
    public func addPort(name: String, role: PortRole, deliver: @escaping @Sendable ([UInt8]) -> Delivery) throws(PortRefused) -> Port {
        let outcome = condition.withLock { () -> Result<Port, PortRefused> in
            switch (kind, role) {
            case (.private, .host), (.private, .uplink), (.internal, .uplink):
                return .failure(PortRefused(reason: "a \(kind.rawValue) switch has no \(role.rawValue) port"))
            case (_, .uplink) where ports.contains { $0.role == .uplink }:
                return .failure(PortRefused(reason: "switch \(self.name) already has an uplink"))
            default:
                let port = Port(name: name, role: role, owner: self, deliver: deliver)
                ports.append(port)
                return .success(port)
            }
        }
        return try outcome.get()
    }

    /// Detaches a port: its queues are dropped and the MAC table forgets it.
    public func removePort(_ port: Port) {
        let left = condition.withLock { () -> [Transit] in
            port.attached = false
            ports.removeAll { $0 === port }
            table = table.filter { $0.value.port !== port }
            return abandon(port)
        }
        for transit in left { transit.finish() }
    }

    public var allPorts: [Port] { condition.withLock { ports } }

    public func counters(of port: Port) -> Counters { condition.withLock { port.counters } }

    /// Learned addresses and their ports.
    public var macTable: [String: String] {
        condition.withLock { Dictionary(uniqueKeysWithValues: table.map { (Self.format($0.key), $0.value.port.name) }) }
    }

    /// Stops the forwarding thread; frames still at the switch are dropped
    /// (and their senders told).
    public func shutdown() {
        condition.withLock {
            running = false
            condition.broadcast()
            while !finished { condition.wait() }
        }
    }

    static func format(_ mac: [UInt8]) -> String { mac.map { String(format: "%02x", $0) }.joined(separator: ":") }

    fileprivate func enqueue(_ transit: Transit, from port: Port) {
        let accepted = condition.withLock { () -> Bool in
            guard running, port.attached else { return false }
            let frame = transit.frame
            guard frame.count >= 14, frame.count <= Self.maxFrame, frame[6] & 1 == 0 else {
                port.counters.malformed += 1
                return false
            }
            guard port.queue.count < Self.queueLimit else {
                port.counters.ingressDrops += 1
                return false
            }
            port.counters.inFrames += 1
            port.queue.append(transit)
            condition.signal()
            return true
        }
        if !accepted { transit.finish() }
    }

    fileprivate func ready(_ port: Port) {
        condition.withLock {
            port.readiness += 1
            if port.stalled {
                port.stalled = false
                condition.signal()
            }
        }
    }

    /// The frames still at the switch for or from `port`, which no longer
    /// takes any; returns those that have now left the switch. Called locked.
    private func abandon(_ port: Port) -> [Transit] {
        var left: [Transit] = port.queue
        for parked in port.backlog {
            port.counters.egressDrops += 1
            if Self.resolve(parked.transit) { left.append(parked.transit) }
        }
        port.queue.removeAll()
        port.backlog.removeAll()
        port.stalled = false
        return left
    }

    /// One port fewer to go for `transit`; true when it has left the switch.
    private static func resolve(_ transit: Transit) -> Bool {
        transit.remaining -= 1
        return transit.remaining == 0
    }

    /// One frame offered to one port in a round, with the port's readiness
    /// when it was picked (a `ready()` since then undoes a `.full`).
    private struct Handover {
        let transit: Transit
        let port: Port
        let readiness: Int
        /// Since when it waited in the port's backlog (nil: straight from ingress).
        let since: UInt64?
    }

    private static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    private func forwardLoop() {
        condition.lock()
        while running {
            var left = expireBacklogs()
            let round = takeRound(&left)
            guard !round.isEmpty || !left.isEmpty else {
                waitForWork()
                continue
            }
            condition.unlock()
            for transit in left { transit.finish() }
            let outcomes = hand(round)
            condition.lock()
            let settled = settle(round, outcomes)
            condition.unlock()
            for transit in settled { transit.finish() }
            condition.lock()
        }
        let left = ports.flatMap { abandon($0) }
        condition.unlock()
        for transit in left { transit.finish() }
        condition.withLock {
            finished = true
            condition.broadcast()
        }
    }

    /// This round's frames: each port's backlog first (unless it is
    /// stalled), then up to `burst` frames from each ingress queue in turn,
    /// routed. A frame for a port with a backlog joins the back of it.
    /// Frames that went nowhere are added to `left`. Called locked.
    private func takeRound(_ left: inout [Transit]) -> [Handover] {
        var round: [Handover] = []
        for port in ports where !port.stalled && !port.backlog.isEmpty {
            let taken = min(Self.burst, port.backlog.count)
            for parked in port.backlog.prefix(taken) {
                round.append(Handover(transit: parked.transit, port: port, readiness: port.readiness, since: parked.since))
            }
            port.backlog.removeFirst(taken)
        }
        let count = ports.count
        for step in 0..<count {
            let port = ports[(cursor + step) % count]
            for _ in 0..<min(Self.burst, port.queue.count) {
                let transit = port.queue.removeFirst()
                let targets = destinations(of: transit.frame, from: port)
                transit.remaining = targets.count
                if targets.isEmpty { left.append(transit) }
                for target in targets {
                    if target.stalled || !target.backlog.isEmpty {
                        park(transit, at: target, &left)
                    } else {
                        round.append(Handover(transit: transit, port: target, readiness: target.readiness, since: nil))
                    }
                }
            }
        }
        cursor = count > 0 ? (cursor + 1) % count : 0
        return round
    }

    /// A frame from ingress to the back of `port`'s backlog, or an egress
    /// drop when the backlog is full. Called locked.
    private func park(_ transit: Transit, at port: Port, _ left: inout [Transit]) {
        guard port.backlog.count < Self.queueLimit else {
            port.counters.egressDrops += 1
            if Self.resolve(transit) { left.append(transit) }
            return
        }
        port.counters.waitedForRoom += 1
        port.backlog.append(Parked(transit: transit, since: Self.now()))
    }

    /// Offers the round's frames to their ports' owners, unlocked. A port
    /// that answered `.full` is offered nothing more this round (nil).
    private func hand(_ round: [Handover]) -> [Delivery?] {
        var full = Set<ObjectIdentifier>()
        return round.map { handover in
            let id = ObjectIdentifier(handover.port)
            guard !full.contains(id) else { return nil }
            let outcome = handover.port.deliver(handover.transit.frame)
            if outcome == .full { full.insert(id) }
            return outcome
        }
    }

    /// Counts what the owners did; frames a full port did not take go back
    /// to the head of its backlog, in order. Returns the frames that have
    /// left the switch. Called locked.
    private func settle(_ round: [Handover], _ outcomes: [Delivery?]) -> [Transit] {
        var settled: [Transit] = []
        var returned: [ObjectIdentifier: (port: Port, frames: [Parked])] = [:]
        let now = Self.now()
        for (handover, outcome) in zip(round, outcomes) {
            let port = handover.port
            switch outcome {
            case .taken:
                port.counters.outFrames += 1
                port.counters.outBytes += handover.transit.frame.count
            case .dropped:
                port.counters.egressDrops += 1
            case .full, nil:
                if outcome == .full && port.readiness == handover.readiness {
                    port.stalled = true
                    port.stalledSince = now
                }
                if handover.since == nil { port.counters.waitedForRoom += 1 }
                returned[ObjectIdentifier(port), default: (port, [])].frames.append(Parked(transit: handover.transit, since: handover.since ?? now))
                continue
            }
            if Self.resolve(handover.transit) { settled.append(handover.transit) }
        }
        for (port, frames) in returned.values {
            guard port.attached else {
                port.counters.egressDrops += frames.count
                settled += frames.map(\.transit).filter(Self.resolve)
                continue
            }
            port.backlog.insert(contentsOf: frames, at: 0)
        }
        return settled
    }

    /// Drops frames that waited longer than `backlogLifetime`, and offers
    /// frames again to a port stalled for `stallRetry` without a `ready()`.
    /// Returns the frames that have left the switch. Called locked.
    private func expireBacklogs() -> [Transit] {
        var left: [Transit] = []
        let now = Self.now()
        let lifetime = UInt64(Self.backlogLifetime * 1e9), retry = UInt64(Self.stallRetry * 1e9)
        for port in ports where !port.backlog.isEmpty {
            var expired = 0
            while let oldest = port.backlog.first, now - oldest.since > lifetime {
                port.backlog.removeFirst()
                expired += 1
                if Self.resolve(oldest.transit) { left.append(oldest.transit) }
            }
            if expired > 0 {
                port.counters.egressDrops += expired
                logger.warning("switch \(name): port \(port.name) made no room for \(Self.backlogLifetime) s; dropped \(expired) frame(s) that waited for it")
            }
            if port.stalled && (port.backlog.isEmpty || now - port.stalledSince > retry) { port.stalled = false }
        }
        return left
    }

    /// Sleeps until a frame comes in or a port makes room; while frames wait
    /// for a stalled port, no longer than `stallRetry`. Called locked.
    private func waitForWork() {
        guard !ports.contains(where: { !$0.queue.isEmpty || (!$0.stalled && !$0.backlog.isEmpty) }) else { return }
        if ports.contains(where: { !$0.backlog.isEmpty }) {
            _ = condition.wait(until: Date(timeIntervalSinceNow: Self.stallRetry))
        } else {
            condition.wait()
        }
    }

    /// Learns the source and picks where a frame goes. Called locked.
    private func destinations(of frame: [UInt8], from port: Port) -> [Port] {
        let now = Date()
        let source = Array(frame[6..<12])
        if table[source] == nil && table.count >= Self.macTableLimit {
            table = table.filter { now.timeIntervalSince($0.value.seen) < Self.agingSeconds }
        }
        if table[source] != nil || table.count < Self.macTableLimit { table[source] = (port, now) }
        let destination = Array(frame[0..<6])
        if destination[0] & 1 == 0, let entry = table[destination], now.timeIntervalSince(entry.seen) < Self.agingSeconds, entry.port.attached {
            return entry.port === port ? [] : [entry.port]
        }
        return ports.filter { $0 !== port }
    }
}
