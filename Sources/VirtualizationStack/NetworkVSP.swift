import Foundation
import Machine
import Logging
import Synchronization
import VMBus

/// The root's network virtualization service provider for one channel,
/// speaking Hyper-V's NetVSP protocol (NVSP with RNDIS inside): a child's
/// virtual NIC, attached to a port of a virtual switch.
///
/// RNDIS messages from the child come in a send-buffer section, in a
/// GPA_DIRECT page list anywhere in its memory (mapped for the request), or
/// both; packet messages go on the switch, and the SEND_RNDIS_PKT is
/// completed once its frames have left the switch (so a child's send
/// sections pace it to the ports it sends to); control messages
/// (INITIALIZE, QUERY, SET, KEEPALIVE, RESET, HALT) are answered. Everything for the child
/// — frames, control answers, link indications — is an RNDIS message copied
/// into a free receive-buffer section and announced as a TRANSFER_PAGES
/// packet. A child that never returns sections runs out of them: the VSP
/// then drops frames for that child only, and counts them. A malformed RNDIS
/// message is answered INVALID_RNDIS_PKT and counted; a send section outside
/// the send buffer or an out-of-order NVSP message closes the channel.
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
    private var ndisVersion: (major: UInt32, minor: UInt32)?
    private var receiveBuffer: GPADLMapping?
    private var receivePageSet = NetworkProtocol.receiveBufferID
    private var freeSections: [Int] = []
    private var sendBuffer: GPADLMapping?
    private var sendSections = 0
    private var announced: [UInt64: Int] = [:]
    private var nextTransaction: UInt64 = 1
    private var warnedNoBuffers = false
    private var rndis = RNDISState.uninitialized
    private var packetFilter: UInt32 = 0
    private var linkUp = true

    private enum RNDISState { case uninitialized, initialized, halted }

    /// Link speed reported for OID_GEN_LINK_SPEED, in units of 100 bit/s (10 Gbit/s).
    public static let linkSpeed: UInt32 = 100_000_000
    public static let maximumFrameSize: UInt32 = 1500

    public struct Statistics: Sendable, Equatable {
        public var framesFromChild = 0, framesToChild = 0
        /// Frames for the child dropped because it returned no buffer
        /// sections, or because its RNDIS device is not open (no packet filter).
        public var droppedNoBuffers = 0, droppedNotOpen = 0
        public var malformedFromChild = 0
        /// RNDIS control messages answered.
        public var controlMessages = 0
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

    /// The NVSP version agreed with the child, once INIT is done.
    public var protocolVersion: UInt32? { lock.withLock { version } }

    public func packetReceived(_ packet: Packet, on channel: HostChannel) throws(ProtocolViolation) {
        lock.withLock { self.channel = channel }
        if packet.kind == .completion {
            guard let section = lock.withLock({ announced.removeValue(forKey: packet.transactionID) }) else {
                throw .unknownCompletion(transaction: packet.transactionID)
            }
            lock.withLock { freeSections.append(section) }
            return
        }
        guard packet.kind == .inband || packet.kind == .gpaDirect else { throw .unexpectedPacket(packet.kind, channel: "network") }
        var reader = ByteReader(packet.payload)
        guard let raw = try? reader.u32() else { throw .truncated("NVSP message") }
        guard let message = NetworkProtocol.Message(rawValue: raw) else { throw .unknownOperation("NVSP message type \(raw)") }
        if message != .sendRNDISPacket && packet.kind != .inband { throw .rangesMismatch("NVSP \(message) sent with GPA ranges") }
        if message != .initialize && lock.withLock({ version }) == nil { throw .outOfOrder("NVSP \(message)", state: "the time before INIT") }
        switch message {
        case .initialize: try initialize(packet, &reader, on: channel)
        case .sendNDISConfig:
            // {mtu, reserved, capabilities}: nothing to set up; no answer is expected.
            guard (try? reader.u32()) != nil else { throw .truncated("SEND_NDIS_CONFIG") }
        case .sendNDISVersion:
            guard let major = try? reader.u32(), let minor = try? reader.u32() else { throw .truncated("SEND_NDIS_VERSION") }
            lock.withLock { ndisVersion = (major, minor) }
        case .sendReceiveBuffer, .sendSendBuffer: try registerBuffer(message, packet, &reader, on: channel)
        case .revokeReceiveBuffer, .revokeSendBuffer:
            lock.withLock {
                if message == .revokeReceiveBuffer { receiveBuffer = nil; freeSections = [] } else { sendBuffer = nil; sendSections = 0 }
            }
        case .sendRNDISPacket: try sendRNDIS(packet, &reader, on: channel)
        case .initializeComplete, .sendReceiveBufferComplete, .sendSendBufferComplete, .sendRNDISPacketComplete:
            throw .outOfOrder("NVSP \(message)", state: "a request from the child")
        }
    }

    private func initialize(_ packet: Packet, _ reader: inout ByteReader, on channel: HostChannel) throws(ProtocolViolation) {
        guard lock.withLock({ version }) == nil else { throw .outOfOrder("INIT", state: "an initialized channel") }
        guard let low = try? reader.u32(), let high = try? reader.u32() else { throw .truncated("INIT") }
        let chosen = NetworkProtocol.hostVersions.first { (low...max(low, high)).contains($0) }
        lock.withLock { version = chosen }
        reply(packet, on: channel, NetworkProtocol.encode(.initializeComplete) { w in
            w.u32(chosen ?? 0)
            w.u32(0)  // max MDL chain length
            w.u32(chosen == nil ? (low > NetworkProtocol.hostVersions[0] ? NetworkProtocol.Status.protocolTooNew : NetworkProtocol.Status.failure)
                                : NetworkProtocol.Status.success)
        })
    }

    private func registerBuffer(_ message: NetworkProtocol.Message, _ packet: Packet, _ reader: inout ByteReader,
                                on channel: HostChannel) throws(ProtocolViolation)
    {
        guard let id = try? reader.u32(), let pageSet = try? reader.u16() else { throw .truncated("\(message)") }
        let receive = message == .sendReceiveBuffer
        let sectionSize = receive ? NetworkProtocol.sectionSize : NetworkProtocol.sendSectionSize
        guard let mapping = context.gpadl(id), mapping.relid == context.relid, mapping.length >= sectionSize else {
            reply(packet, on: channel, NetworkProtocol.encode(receive ? .sendReceiveBufferComplete : .sendSendBufferComplete) {
                $0.u32(NetworkProtocol.Status.failure)
            })
            return
        }
        let sections = mapping.length / sectionSize
        lock.withLock {
            if receive {
                receiveBuffer = mapping
                receivePageSet = pageSet
                freeSections = Array((0..<sections).reversed())
            } else {
                sendBuffer = mapping
                sendSections = sections
            }
        }
        if receive {
            // One section, cut into sub-allocations of `sectionSize`.
            reply(packet, on: channel, NetworkProtocol.encode(.sendReceiveBufferComplete) { w in
                w.u32(NetworkProtocol.Status.success)
                w.u32(1)
                w.u32(0); w.u32(UInt32(sectionSize)); w.u32(UInt32(sections)); w.u32(UInt32(sections * sectionSize))
            })
        } else {
            reply(packet, on: channel, NetworkProtocol.encode(.sendSendBufferComplete) { w in
                w.u32(NetworkProtocol.Status.success)
                w.u32(UInt32(sectionSize))
            })
        }
    }

    /// SEND_RNDIS_PKT: the message bytes from the send section, the page list, or both (a partial copy).
    private func sendRNDIS(_ packet: Packet, _ reader: inout ByteReader, on channel: HostChannel) throws(ProtocolViolation) {
        guard let _ = try? reader.u32(), let index = try? reader.u32(), let size = try? reader.u32() else {
            throw .truncated("SEND_RNDIS_PKT")
        }
        var bytes: [UInt8] = []
        if index != NetworkProtocol.noSection {
            guard let buffer = lock.withLock({ sendBuffer }) else { throw .outOfOrder("SEND_RNDIS_PKT", state: "the time before a send buffer") }
            guard Int(index) < lock.withLock({ sendSections }), Int(size) <= NetworkProtocol.sendSectionSize,
                let section = buffer.pointer(offset: Int(index) * NetworkProtocol.sendSectionSize, length: max(1, Int(size)))
            else { throw .sendSectionOutside(index: index) }
            bytes = Array(UnsafeRawBufferPointer(start: section, count: Int(size)))
        } else if packet.kind != .gpaDirect {
            throw .rangesMismatch("SEND_RNDIS_PKT with neither a send section nor a page list")
        }
        if packet.kind == .gpaDirect {
            let mapping: RequestMapping
            do {
                mapping = try context.mapRequest(packet.ranges, writable: false)
            } catch {
                switch error {
                case .notChildMemory(let gpa, let length): throw .rangeOutsideChildMemory(gpa: gpa, length: length)
                case .windowFull: return complete(packet, on: channel, NetworkProtocol.Status.busy)
                }
            }
            for piece in mapping.pieces { bytes += Array(UnsafeRawBufferPointer(piece)) }
            mapping.release()
        }
        let (status, frames) = bytes.withUnsafeBytes { process($0) }
        guard !frames.isEmpty else { return complete(packet, on: channel, status) }
        // The child gets its send section back once its frames have left the
        // switch: a child sends no faster than the ports it sends to take.
        let send = SendInFlight(frames: frames.count) { [weak self] in self?.complete(packet, on: channel, status) }
        for (frame, port) in frames { port.input(frame, done: send.frameLeft) }
    }

    /// Handles the RNDIS messages in one SEND_RNDIS_PKT; returns its NVSP
    /// status and the frames in it for the switch, with the port they go in by.
    private func process(_ buffer: UnsafeRawBufferPointer) -> (UInt32, [([UInt8], VirtualSwitch.Port)]) {
        let messages: [RNDIS.Message]
        do {
            messages = try RNDIS.messages(in: buffer)
        } catch {
            lock.withLock { stats.malformedFromChild += 1 }
            logger.debug("child \(context.child): \(error)")
            return (NetworkProtocol.Status.invalidRNDISPacket, [])
        }
        var status = NetworkProtocol.Status.success
        var frames: [([UInt8], VirtualSwitch.Port)] = []
        for message in messages {
            if message.type == RNDIS.MessageType.packet {
                switch forwarding(message) {
                case .none: status = NetworkProtocol.Status.invalidRNDISPacket
                case .some(nil): break
                case .some(let frame?): frames.append(frame)
                }
            } else if let answer = control(message) {
                lock.withLock { stats.controlMessages += 1 }
                _ = announce(answer)
            }
        }
        return (status, frames)
    }

    /// A packet message's frame and the port it goes onto the switch by:
    /// nil when malformed, .some(nil) when the RNDIS device is not open.
    private func forwarding(_ message: RNDIS.Message) -> (([UInt8], VirtualSwitch.Port)?)? {
        guard let frame = try? message.frame(), frame.count >= 14, frame.count <= VirtualSwitch.maxFrame else {
            lock.withLock { stats.malformedFromChild += 1 }
            return nil
        }
        return lock.withLock { () -> ([UInt8], VirtualSwitch.Port)? in
            guard rndis == .initialized, let port else { return nil }
            stats.framesFromChild += 1
            return (frame, port)
        }
    }

    /// The answer to an RNDIS control message (nil for HALT and unknown types).
    private func control(_ message: RNDIS.Message) -> [UInt8]? {
        let requestID = message.field(0)
        switch message.type {
        case RNDIS.MessageType.initialize:
            lock.withLock { rndis = .initialized }
            return RNDIS.initializeComplete(requestID: requestID, status: RNDIS.Status.success, maxPacketsPerMessage: 8,
                                            maxTransfer: UInt32(NetworkProtocol.sendSectionSize), alignmentShift: 3)
        case RNDIS.MessageType.query:
            let (status, information) = query(oid: message.field(4))
            return RNDIS.queryComplete(requestID: requestID, status: status, information: information)
        case RNDIS.MessageType.set:
            guard let information = try? message.information() else {
                lock.withLock { stats.malformedFromChild += 1 }
                return RNDIS.statusComplete(RNDIS.MessageType.set, requestID: requestID, status: RNDIS.Status.invalidData)
            }
            return RNDIS.statusComplete(RNDIS.MessageType.set, requestID: requestID, status: set(oid: message.field(4), information))
        case RNDIS.MessageType.keepalive:
            return RNDIS.statusComplete(RNDIS.MessageType.keepalive, requestID: requestID, status: RNDIS.Status.success)
        case RNDIS.MessageType.reset:
            lock.withLock { packetFilter = 0 }
            return RNDIS.resetComplete(status: RNDIS.Status.success)
        case RNDIS.MessageType.halt:
            lock.withLock { rndis = .halted; packetFilter = 0 }
            return nil
        default:
            lock.withLock { stats.malformedFromChild += 1 }
            return nil
        }
    }

    private func query(oid: UInt32) -> (UInt32, [UInt8]) {
        func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        switch oid {
        case RNDIS.OID.permanentAddress, RNDIS.OID.currentAddress: return (RNDIS.Status.success, mac)
        case RNDIS.OID.maximumFrameSize: return (RNDIS.Status.success, u32(Self.maximumFrameSize))
        case RNDIS.OID.linkSpeed: return (RNDIS.Status.success, u32(Self.linkSpeed))
        case RNDIS.OID.mediaConnectStatus: return (RNDIS.Status.success, u32(lock.withLock { linkUp } ? 0 : 1))
        case RNDIS.OID.currentPacketFilter: return (RNDIS.Status.success, u32(lock.withLock { packetFilter }))
        case RNDIS.OID.offloadHardwareCapabilities: return (RNDIS.Status.success, Self.noOffloads(ndis630: lock.withLock { version ?? 0 } >= NetworkProtocol.Version.v5))
        default: return (RNDIS.Status.notSupported, [])
        }
    }

    /// NDIS_OFFLOAD with every capability zero: no checksum, LSO, IPsec or
    /// RSC offload. Header {type NDIS_OBJECT_TYPE_OFFLOAD, revision, size};
    /// the NDIS 6.30 layout (164 bytes, revision 3) from NVSP 5 on, else 6.0's (112).
    static func noOffloads(ndis630: Bool) -> [UInt8] {
        let size = ndis630 ? 164 : 112
        var bytes = [UInt8](repeating: 0, count: size)
        bytes[0] = 0xA7
        bytes[1] = ndis630 ? 3 : 1
        bytes[2] = UInt8(size & 0xFF)
        bytes[3] = UInt8(size >> 8)
        return bytes
    }

    private func set(oid: UInt32, _ information: [UInt8]) -> UInt32 {
        switch oid {
        case RNDIS.OID.currentPacketFilter:
            guard information.count == 4 else { return RNDIS.Status.invalidLength }
            let filter = information.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self).littleEndian }
            lock.withLock { packetFilter = filter }
            return RNDIS.Status.success
        case RNDIS.OID.offloadParameters:
            // NDIS_OFFLOAD_PARAMETERS: a header, then one byte per offload
            // (0 no change, 1 disabled, more: enable in some direction) and,
            // after the flags, IPsec v2 and RSC. Turning offloads off is
            // granted; turning any on is not supported.
            guard information.count >= 15 else { return RNDIS.Status.invalidLength }
            let requests = Array(information[4..<15]) + Array(information.dropFirst(20).prefix(4))
            return requests.allSatisfy { $0 <= 1 } ? RNDIS.Status.success : RNDIS.Status.notSupported
        default:
            // No other settable OIDs (RSS, configuration parameters...).
            return RNDIS.Status.notSupported
        }
    }

    /// Tells the child its link went up or down (an RNDIS status indication).
    public func indicateLink(up: Bool) {
        let send = lock.withLock { () -> Bool in
            linkUp = up
            return rndis == .initialized
        }
        if send { _ = announce(RNDIS.indicateStatus(up ? RNDIS.Status.mediaConnect : RNDIS.Status.mediaDisconnect)) }
    }

    /// A frame from the switch for the child. Never blocks.
    func deliver(_ frame: [UInt8]) -> Bool {
        let open = lock.withLock { () -> Bool in
            guard rndis == .initialized, packetFilter != 0, linkUp else {
                if receiveBuffer != nil { stats.droppedNotOpen += 1 }
                return false
            }
            return true
        }
        guard open, announce(RNDIS.packet(frame)) else { return false }
        lock.withLock { stats.framesToChild += 1 }
        return true
    }

    /// Copies one RNDIS message into a free receive section and announces it.
    private func announce(_ message: [UInt8]) -> Bool {
        let plan = lock.withLock { () -> (HostChannel, Int, UInt64, UnsafeMutableRawPointer, UInt16)? in
            guard let channel, let buffer = receiveBuffer else { return nil }
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
            return (channel, section, id, memory, receivePageSet)
        }
        guard let (channel, section, id, memory, pageSet) = plan else { return false }
        guard message.count <= NetworkProtocol.sectionSize else {
            lock.withLock { _ = announced.removeValue(forKey: id); freeSections.append(section) }
            return false
        }
        message.withUnsafeBytes { memory.copyMemory(from: $0.baseAddress!, byteCount: message.count) }
        let ranges = [NetworkProtocol.Range(offset: UInt32(section * NetworkProtocol.sectionSize), length: UInt32(message.count))]
        guard channel.send(NetworkProtocol.transferPacket(ranges, transactionID: id, pageSetID: pageSet)) else {
            lock.withLock {
                announced[id] = nil
                freeSections.append(section)
            }
            return false
        }
        return true
    }

    /// SEND_RNDIS_PKT_COMPLETE for the child's request.
    private func complete(_ packet: Packet, on channel: HostChannel, _ status: UInt32) {
        reply(packet, on: channel, NetworkProtocol.encode(.sendRNDISPacketComplete) { $0.u32(status) })
    }

    /// A completion echoing the request's transaction id.
    private func reply(_ packet: Packet, on channel: HostChannel, _ payload: [UInt8]) {
        channel.send(Packet(kind: .completion, transactionID: packet.transactionID, payload: payload))
    }

    public func channelClosed(_ channel: HostChannel, reason: String?) {
        let (detached, owner) = lock.withLock { () -> (VirtualSwitch.Port?, VirtualSwitch?) in
            defer { port = nil }
            return (port, vswitch)
        }
        if let detached { owner?.removePort(detached) }
    }
}

/// One SEND_RNDIS_PKT whose frames are on the switch: completed to the
/// child when the last of them has left it.
private final class SendInFlight: Sendable {
    private let left: Mutex<Int>
    private let complete: @Sendable () -> Void

    init(frames: Int, complete: @escaping @Sendable () -> Void) {
        left = Mutex(frames)
        self.complete = complete
    }

    @Sendable func frameLeft() {
        let last = left.withLock { count -> Bool in
            count -= 1
            return count == 0
        }
        if last { complete() }
    }
}
