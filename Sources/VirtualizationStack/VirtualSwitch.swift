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
public final class VirtualSwitch: @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `condition`.
    public enum Kind: String, Sendable {
        case external, `internal`, `private`
    }

    public enum PortRole: String, Sendable {
        case child, host, uplink
    }

    public struct Counters: Sendable, Equatable {
        /// Frames the port handed to the switch and the switch accepted.
        public var inFrames = 0
        /// Frames (and their bytes) the switch delivered out of the port.
        public var outFrames = 0, outBytes = 0
        /// Dropped because the port's ingress queue was full.
        public var ingressDrops = 0
        /// Dropped because the port's owner could not take them.
        public var egressDrops = 0
        /// Dropped as malformed (runt, oversize, multicast source).
        public var malformed = 0
    }

    public final class Port: @unchecked Sendable {
        // @unchecked Sendable: mutable state is guarded by the switch's condition.
        public let name: String
        public let role: PortRole
        /// The switch it belongs to. Weak, not unowned: the port's user (a
        /// NetVSP channel, a vhost-user queue) may hold it past the switch's
        /// end, and a frame it sends then is dropped, not a crash.
        private(set) weak var owner: VirtualSwitch?
        let deliver: @Sendable ([UInt8]) -> Bool
        var queue: [[UInt8]] = []
        var counters = Counters()
        var attached = true

        init(name: String, role: PortRole, owner: VirtualSwitch, deliver: @escaping @Sendable ([UInt8]) -> Bool) {
            self.name = name
            self.role = role
            self.owner = owner
            self.deliver = deliver
        }

        /// A frame from the port's owner into the switch. Never blocks.
        public func input(_ frame: [UInt8]) { owner?.enqueue(frame, from: self) }

    }

    public let name: String
    public let kind: Kind
    public static let queueLimit = 256
    public static let burst = 8
    public static let maxFrame = 1514
    public static let macTableLimit = 4096
    public static let agingSeconds = 300.0

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

    /// Adds a port. `deliver` hands a frame to the port's owner and returns
    /// false when it could not take it (counted as an egress drop); it must
    /// not block.
    public func addPort(name: String, role: PortRole, deliver: @escaping @Sendable ([UInt8]) -> Bool) throws(PortRefused) -> Port {
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

    /// Detaches a port: its queue is dropped and the MAC table forgets it.
    public func removePort(_ port: Port) {
        condition.withLock {
            port.attached = false
            port.queue.removeAll()
            ports.removeAll { $0 === port }
            table = table.filter { $0.value.port !== port }
        }
    }

    public var allPorts: [Port] { condition.withLock { ports } }

    public func counters(of port: Port) -> Counters { condition.withLock { port.counters } }

    /// Learned addresses and their ports.
    public var macTable: [String: String] {
        condition.withLock { Dictionary(uniqueKeysWithValues: table.map { (Self.format($0.key), $0.value.port.name) }) }
    }

    /// Stops the forwarding thread.
    public func shutdown() {
        condition.withLock {
            running = false
            condition.broadcast()
            while !finished { condition.wait() }
        }
    }

    static func format(_ mac: [UInt8]) -> String { mac.map { String(format: "%02x", $0) }.joined(separator: ":") }

    fileprivate func enqueue(_ frame: [UInt8], from port: Port) {
        condition.withLock {
            guard port.attached else { return }
            guard frame.count >= 14, frame.count <= Self.maxFrame, frame[6] & 1 == 0 else {
                port.counters.malformed += 1
                return
            }
            guard port.queue.count < Self.queueLimit else {
                port.counters.ingressDrops += 1
                return
            }
            port.counters.inFrames += 1
            port.queue.append(frame)
            condition.signal()
        }
    }

    private func forwardLoop() {
        condition.lock()
        while running {
            guard ports.contains(where: { !$0.queue.isEmpty }) else {
                condition.wait()
                continue
            }
            // One round: up to `burst` frames from each port, in turn.
            var batch: [(frame: [UInt8], from: Port, to: [Port])] = []
            let count = ports.count
            for step in 0..<count {
                let port = ports[(cursor + step) % count]
                for _ in 0..<min(Self.burst, port.queue.count) {
                    let frame = port.queue.removeFirst()
                    batch.append((frame, port, destinations(of: frame, from: port)))
                }
            }
            cursor = count > 0 ? (cursor + 1) % count : 0
            condition.unlock()
            for (frame, _, targets) in batch {
                for target in targets {
                    let taken = target.deliver(frame)
                    condition.withLock {
                        if taken {
                            target.counters.outFrames += 1
                            target.counters.outBytes += frame.count
                        } else {
                            target.counters.egressDrops += 1
                        }
                    }
                }
            }
            condition.lock()
        }
        finished = true
        condition.broadcast()
        condition.unlock()
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
