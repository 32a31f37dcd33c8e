import Foundation
import Machine
import Logging
import VMBus

/// The root's network virtualization service provider for one channel: a
/// child's virtual NIC, attached to a port of a virtual switch.
///
/// Frames from the child are read from its send buffer (sections named in
/// SEND_RNDIS_PACKET) and put on the switch; frames for the child are copied
/// into free sections of its receive buffer and announced as TRANSFER_PAGES
/// packets. A child that never completes them runs out of sections: the VSP
/// then drops frames for that child only, and counts them.
public final class NetworkVSP: ChannelHandler, @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `lock`.
    public let mac: [UInt8]
    let context: ChannelContext
    private let lock = NSLock()
    private let logger = Logger(label: "oyako.netvsp")
    private weak var channel: HostChannel?
    private var port: VirtualSwitch.Port?
    private weak var vswitch: VirtualSwitch?
    private var version: UInt32?
    private var receiveBuffer: GPADLMapping?
    private var freeSections: [Int] = []
    private var sendBuffer: GPADLMapping?
    private var sendSections = 0
    private var announced: [UInt64: Int] = [:]
    private var nextTransaction: UInt64 = 1
    private var warnedNoBuffers = false

    public struct Statistics: Sendable, Equatable {
        public var framesFromChild = 0
        public var framesToChild = 0
        /// Frames for the child dropped because it returned no buffer sections.
        public var droppedNoBuffers = 0
        public var malformedFromChild = 0
        /// Receive-buffer sections announced to the child and not yet returned.
        public var sectionsWithChild = 0
    }

    private var stats = Statistics()
    public var statistics: Statistics {
        lock.withLock {
            var current = stats
            current.sectionsWithChild = announced.count
            return current
        }
    }

    init(mac: [UInt8], context: ChannelContext, vswitch: VirtualSwitch, portName: String) throws(VirtualSwitch.PortRefused) {
        self.mac = mac
        self.context = context
        self.vswitch = vswitch
        self.port = try vswitch.addPort(name: portName, role: .child) { [weak self] frame in self?.deliver(frame) ?? false }
    }

    public var switchPort: VirtualSwitch.Port? { lock.withLock { port } }

    public func packetReceived(_ packet: Packet, on channel: HostChannel) throws(ProtocolViolation) {
        lock.withLock { self.channel = channel }
        if packet.kind == .completion {
            guard let section = lock.withLock({ announced.removeValue(forKey: packet.transactionID) }) else {
                throw .unknownCompletion(transaction: packet.transactionID)
            }
            lock.withLock { freeSections.append(section) }
            return
        }
        guard packet.kind == .inband else { throw .unexpectedPacket(packet.kind, channel: "network") }
        var reader = ByteReader(packet.payload)
        guard let raw = try? reader.u32(), let message = NetworkProtocol.Message(rawValue: raw) else {
            throw .unknownOperation("or truncated network message")
        }
        switch message {
        case .initialize:
            guard lock.withLock({ version }) == nil else { throw .outOfOrder("INIT", state: "an initialized channel") }
            guard let low = try? reader.u32(), let high = try? reader.u32(), low <= high else { throw .truncated("INIT (or its version range is empty)") }
            let range = NetworkProtocol.hostVersions
            let chosen = min(high, range.upperBound)
            guard chosen >= max(low, range.lowerBound) else {
                reply(packet, on: channel) { $0.u32(NetworkProtocol.Status.failure); $0.u32(0) }
                return
            }
            lock.withLock { version = chosen }
            reply(packet, on: channel) { w in
                w.u32(NetworkProtocol.Status.success)
                w.u32(chosen)
                for byte in mac { w.u8(byte) }
            }
        case .sendReceiveBuffer, .sendSendBuffer:
            guard lock.withLock({ version }) != nil else { throw .outOfOrder("\(message)", state: "the time before INIT") }
            guard let id = try? reader.u32(), let mapping = context.gpadl(id), mapping.relid == context.relid,
                mapping.length >= NetworkProtocol.sectionSize
            else {
                reply(packet, on: channel) { $0.u32(NetworkProtocol.Status.failure) }
                return
            }
            let sections = mapping.length / NetworkProtocol.sectionSize
            lock.withLock {
                if message == .sendReceiveBuffer {
                    receiveBuffer = mapping
                    freeSections = Array(0..<sections)
                } else {
                    sendBuffer = mapping
                    sendSections = sections
                }
            }
            reply(packet, on: channel) { w in
                w.u32(NetworkProtocol.Status.success)
                w.u32(UInt32(NetworkProtocol.sectionSize))
                w.u32(UInt32(sections))
            }
        case .sendRNDISPacket:
            guard let _ = try? reader.u32(), let index = try? reader.u32(), let size = try? reader.u32() else {
                throw .truncated("SEND_RNDIS_PACKET")
            }
            guard let buffer = lock.withLock({ sendBuffer }) else { throw .outOfOrder("SEND_RNDIS_PACKET", state: "the time before a send buffer") }
            guard Int(index) < lock.withLock({ sendSections }) else {
                throw .sendSectionOutside(index: index)
            }
            guard let section = buffer.pointer(offset: Int(index) * NetworkProtocol.sectionSize, length: NetworkProtocol.sectionSize) else {
                throw .sendSectionOutside(index: index)
            }
            guard let frame = NetworkProtocol.readRNDIS(section, length: Int(size)), frame.count >= 14, frame.count <= VirtualSwitch.maxFrame else {
                lock.withLock { stats.malformedFromChild += 1 }
                reply(packet, on: channel) { $0.u32(NetworkProtocol.Status.failure) }
                return
            }
            let copy = Array(frame)
            lock.withLock { stats.framesFromChild += 1 }
            lock.withLock { port }?.input(copy)
            reply(packet, on: channel) { $0.u32(NetworkProtocol.Status.success) }
        }
    }

    /// A frame from the switch for the child. Never blocks.
    func deliver(_ frame: [UInt8]) -> Bool {
        let plan = lock.withLock { () -> (HostChannel, Int, UInt64, UnsafeMutableRawPointer)? in
            guard let channel, let buffer = receiveBuffer, sendBuffer != nil else { return nil }
            guard let section = freeSections.popLast() else {
                stats.droppedNoBuffers += 1
                if !warnedNoBuffers {
                    warnedNoBuffers = true
                    logger.warning("child \(context.child) has no free receive sections (it is not returning them as fast as frames arrive); dropping frames for it")
                }
                return nil
            }
            guard let memory = buffer.pointer(offset: section * NetworkProtocol.sectionSize, length: NetworkProtocol.sectionSize) else {
                freeSections.append(section)
                return nil
            }
            let id = nextTransaction
            nextTransaction += 1
            announced[id] = section
            return (channel, section, id, memory)
        }
        guard let (channel, section, id, memory) = plan, frame.count <= NetworkProtocol.sectionSize else { return false }
        frame.withUnsafeBytes { memory.copyMemory(from: $0.baseAddress!, byteCount: frame.count) }
        let ranges = [NetworkProtocol.Range(offset: UInt32(section * NetworkProtocol.sectionSize), length: UInt32(frame.count))]
        guard channel.send(NetworkProtocol.transferPacket(ranges, transactionID: id)) else {
            lock.withLock {
                announced[id] = nil
                freeSections.append(section)
            }
            return false
        }
        lock.withLock { stats.framesToChild += 1 }
        return true
    }

    /// A completion echoing the request's transaction id, with `body` as payload.
    private func reply(_ packet: Packet, on channel: HostChannel, _ body: (inout ByteWriter) -> Void) {
        var w = ByteWriter()
        body(&w)
        channel.send(Packet(kind: .completion, transactionID: packet.transactionID, payload: w.bytes))
    }

    public func channelClosed(_ channel: HostChannel, reason: String?) {
        let (detached, owner) = lock.withLock { () -> (VirtualSwitch.Port?, VirtualSwitch?) in
            defer { port = nil }
            return (port, vswitch)
        }
        if let detached { owner?.removePort(detached) }
    }
}
