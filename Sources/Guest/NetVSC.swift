import Foundation
import Machine
import NetStack
import VMBus

/// The guest's network client (netvsc), speaking NVSP and RNDIS as Linux's
/// netvsc does: negotiates the NVSP version, sends its NDIS config and
/// version, registers receive and send buffers, initialises the RNDIS device,
/// learns its MAC with a QUERY and opens it by setting the packet filter.
/// Frames go out as RNDIS packet messages in send-buffer sections (or, when
/// asked, as page lists in its memory); everything from the root arrives in
/// receive-buffer ranges, which it returns after handing each message on.
public final class NetVSC: @unchecked Sendable {
    // @unchecked Sendable: confined to the guest VP thread.
    public let offer: Offer
    public private(set) var mac: [UInt8] = []
    public private(set) var version: UInt32 = 0
    let os: GuestOS
    let channel: ClientChannel
    private let receive: (gpa: UInt64, pointer: UnsafeMutableRawPointer, size: Int)
    private let sendArea: (gpa: UInt64, pointer: UnsafeMutableRawPointer, size: Int)
    private var sendSectionSize = NetworkProtocol.sendSectionSize
    private var freeSend: [Int] = []
    private var sendInFlight: [UInt64: Int] = [:]
    private var completions: [UInt64: [UInt8]] = [:]
    private var rndisAnswers: [UInt32: RNDIS.Message] = [:]
    private var nextTransaction: UInt64 = 1
    private var nextRequest: UInt32 = 1
    /// Called for each received frame, on the VP thread.
    public var onFrame: (([UInt8]) -> Void)?
    /// Tests turn this off to play a guest that never returns its receive
    /// sections.
    public var returnsReceiveSections = true
    /// Send frames as page lists of guest memory instead of send-buffer sections.
    public var sendsThroughPageLists = false
    public private(set) var framesReceived = 0
    public private(set) var framesSent = 0
    public private(set) var malformedTransfers = 0
    /// SEND_RNDIS_PKT completions whose status was not success.
    public private(set) var refusedSends = 0
    /// The last link state the root indicated (up until told otherwise).
    public private(set) var linkUp = true
    /// What the root said in INITIALIZE_COMPLETE: {max packets per message, max transfer, alignment shift}.
    public private(set) var rndisLimits: (maxPackets: UInt32, maxTransfer: UInt32, alignmentShift: UInt32) = (0, 0, 0)

    static let ringPages = 1 + 16
    static let receivePages = 64   // 128 sections of 2 KiB
    static let sendPages = 48      // 32 sections of 6 KiB

    init(os: GuestOS, offer: Offer) throws(VMBusError) {
        self.os = os
        self.offer = offer
        guard let ring = os.allocate(pages: 2 * Self.ringPages), let rx = os.allocate(pages: Self.receivePages),
            let tx = os.allocate(pages: Self.sendPages)
        else { throw .outOfGuestMemory("the network channel") }
        receive = (rx.gpa, rx.pointer, Self.receivePages * PhysicalMemory.pageSize)
        sendArea = (tx.gpa, tx.pointer, Self.sendPages * PhysicalMemory.pageSize)
        channel = try os.vmbus.open(relid: offer.relid, ringGPA: ring.gpa, ringPages: 2 * Self.ringPages, outboundPages: Self.ringPages)
        channel.onPacket = { [weak self] packet in self?.received(packet) }
        try initialize()
    }

    private func post(_ payload: [UInt8], ranges: [GPARange] = [], completion: Bool = true) throws(VMBusError) -> UInt64 {
        let id = nextTransaction
        nextTransaction += 1
        try channel.send(Packet(kind: ranges.isEmpty ? .inband : .gpaDirect, flags: completion ? Packet.completionRequested : 0,
                                transactionID: id, ranges: ranges, payload: payload))
        return id
    }

    private func call(_ payload: [UInt8]) throws(VMBusError) -> ByteReader {
        let id = try post(payload)
        guard os.vp.halt(until: { self.completions[id] != nil || !self.channel.isOpen }, timeout: 10), let reply = completions.removeValue(forKey: id) else {
            throw .noAnswer("answer from the network provider", seconds: 10)
        }
        return ByteReader(reply)
    }

    /// An NVSP answer {type, status, ...}: the status checked, the reader after it.
    private func answer(_ reader: ByteReader, _ expected: NetworkProtocol.Message, _ what: String) throws(VMBusError) -> ByteReader {
        var r = reader
        guard (try? r.u32()) == expected.rawValue, let status = try? r.u32() else { throw .malformedAnswer("\(what): not \(expected)") }
        guard status == NetworkProtocol.Status.success else { throw .refused("\(what) (NVSP status \(status))") }
        return r
    }

    private func initialize() throws(VMBusError) {
        for candidate in NetworkProtocol.guestVersions {
            var r = try call(NetworkProtocol.encode(.initialize) { $0.u32(candidate); $0.u32(candidate) })
            guard (try? r.u32()) == NetworkProtocol.Message.initializeComplete.rawValue, let agreed = try? r.u32() else {
                throw .malformedAnswer("INIT_COMPLETE")
            }
            _ = try? r.u32()
            if (try? r.u32()) == NetworkProtocol.Status.success {
                version = agreed
                break
            }
        }
        guard version != 0 else { throw .noCommonVersion("NVSP: the provider speaks none of \(NetworkProtocol.guestVersions)") }
        if version >= NetworkProtocol.Version.v2 {
            _ = try post(NetworkProtocol.encode(.sendNDISConfig) { $0.u32(1500); $0.u32(0); $0.u64(0) }, completion: false)
        }
        let ndisMinor: UInt32 = version <= NetworkProtocol.Version.v4 ? 1 : 30
        _ = try post(NetworkProtocol.encode(.sendNDISVersion) { $0.u32(6); $0.u32(ndisMinor) }, completion: false)

        let rxGPADL = try os.vmbus.createGPADL(relid: offer.relid, gpa: receive.gpa, pages: Self.receivePages)
        var rx = try answer(try call(NetworkProtocol.encode(.sendReceiveBuffer) { $0.u32(rxGPADL); $0.u16(NetworkProtocol.receiveBufferID) }),
                            .sendReceiveBufferComplete, "receive buffer")
        guard (try? rx.u32()) == 1, (try? rx.u32()) == 0 else { throw .malformedAnswer("receive buffer: not one section at offset 0") }
        let txGPADL = try os.vmbus.createGPADL(relid: offer.relid, gpa: sendArea.gpa, pages: Self.sendPages)
        var tx = try answer(try call(NetworkProtocol.encode(.sendSendBuffer) { $0.u32(txGPADL); $0.u16(NetworkProtocol.sendBufferID) }),
                            .sendSendBufferComplete, "send buffer")
        guard let size = try? tx.u32(), size >= 64 else { throw .malformedAnswer("send buffer: no section size") }
        sendSectionSize = Int(size)
        freeSend = Array((0..<(sendArea.size / sendSectionSize)).reversed())

        let initialized = try rndis(RNDIS.initialize(requestID: takeRequestID()))
        guard initialized.field(4) == RNDIS.Status.success else { throw .refused("RNDIS INITIALIZE (status 0x\(String(initialized.field(4), radix: 16)))") }
        rndisLimits = (initialized.field(24), initialized.field(28), initialized.field(32))
        let (status, address) = try query(RNDIS.OID.permanentAddress)
        guard status == RNDIS.Status.success, address.count == 6 else { throw .malformedAnswer("RNDIS permanent address") }
        mac = address
        let (_, media) = try query(RNDIS.OID.mediaConnectStatus)
        linkUp = media.first == 0
        guard try set(RNDIS.OID.currentPacketFilter, value: RNDIS.defaultPacketFilter) == RNDIS.Status.success else { throw .refused("RNDIS packet filter") }
        os.log("network relid \(offer.relid): NVSP 0x\(String(version, radix: 16)), MAC \(mac.map { String(format: "%02x", $0) }.joined(separator: ":"))")
    }

    private func takeRequestID() -> UInt32 {
        defer { nextRequest += 1 }
        return nextRequest
    }

    /// Sends an RNDIS control message and waits for the answer with its request id.
    public func rndis(_ message: [UInt8]) throws(VMBusError) -> RNDIS.Message {
        let requestID = message.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: RNDIS.headerSize, as: UInt32.self).littleEndian }
        try sendRNDIS(message, channelType: NetworkProtocol.controlChannel)
        guard os.vp.halt(until: { self.rndisAnswers[requestID] != nil || !self.channel.isOpen }, timeout: 10),
            let answer = rndisAnswers.removeValue(forKey: requestID)
        else { throw .noAnswer("RNDIS answer to request \(requestID)", seconds: 10) }
        return answer
    }

    /// HALT: the device stops; no answer comes.
    public func halt() throws(VMBusError) {
        try sendRNDIS(RNDIS.simple(RNDIS.MessageType.halt, requestID: takeRequestID()), channelType: NetworkProtocol.controlChannel)
    }

    /// QUERY: (status, information buffer).
    public func query(_ oid: UInt32) throws(VMBusError) -> (UInt32, [UInt8]) {
        let answer = try rndis(RNDIS.request(RNDIS.MessageType.query, requestID: takeRequestID(), oid: oid))
        guard answer.type == RNDIS.MessageType.query | RNDIS.MessageType.completion else { throw .malformedAnswer("RNDIS QUERY answered with type \(answer.type)") }
        return (answer.field(4), (try? answer.information()) ?? [])
    }

    /// SET with a u32 value; returns the status.
    public func set(_ oid: UInt32, value: UInt32) throws(VMBusError) -> UInt32 {
        try set(oid, information: withUnsafeBytes(of: value.littleEndian) { Array($0) })
    }

    public func set(_ oid: UInt32, information: [UInt8]) throws(VMBusError) -> UInt32 {
        try rndis(RNDIS.request(RNDIS.MessageType.set, requestID: takeRequestID(), oid: oid, information: information)).field(4)
    }

    /// Sends a frame; waits for a free send section if all are in flight.
    public func send(_ frame: [UInt8]) throws(VMBusError) {
        guard frame.count + RNDIS.packetHeaderSize <= sendSectionSize else { throw .frameTooLarge(frame.count) }
        try sendRNDIS(RNDIS.packet(frame), channelType: NetworkProtocol.dataChannel)
        framesSent += 1
    }

    /// One RNDIS message in SEND_RNDIS_PKT, through a send section or a page list.
    private func sendRNDIS(_ message: [UInt8], channelType: UInt32) throws(VMBusError) {
        if freeSend.isEmpty {
            guard os.vp.halt(until: { !self.freeSend.isEmpty || !self.channel.isOpen }, timeout: 5), !freeSend.isEmpty else {
                throw .noAnswer("send section back", seconds: 5)
            }
        }
        let section = freeSend.removeLast()
        let memory = sendArea.pointer + section * sendSectionSize
        message.withUnsafeBytes { memory.copyMemory(from: $0.baseAddress!, byteCount: message.count) }
        let ranges = sendsThroughPageLists ? [GPARange(gpa: sendArea.gpa + UInt64(section * sendSectionSize), length: UInt32(message.count))] : []
        let payload = NetworkProtocol.encode(.sendRNDISPacket) { w in
            w.u32(channelType)
            w.u32(ranges.isEmpty ? UInt32(section) : NetworkProtocol.noSection)
            w.u32(ranges.isEmpty ? UInt32(message.count) : 0)
        }
        do {
            let id = try post(payload, ranges: ranges)
            sendInFlight[id] = section
        } catch {
            freeSend.append(section)
            throw error
        }
    }

    /// Puts `bytes` in a send section as they are and sends it claiming
    /// `declaredSize` bytes (tests use it to play a hostile guest).
    public func sendRawRNDIS(_ bytes: [UInt8], declaredSize: UInt32? = nil) throws(VMBusError) {
        guard let section = freeSend.popLast() else { throw .noAnswer("free send section", seconds: 0) }
        let memory = sendArea.pointer + section * sendSectionSize
        bytes.withUnsafeBytes { memory.copyMemory(from: $0.baseAddress!, byteCount: min(bytes.count, sendSectionSize)) }
        let id = try post(NetworkProtocol.encode(.sendRNDISPacket) { w in
            w.u32(NetworkProtocol.dataChannel); w.u32(UInt32(section)); w.u32(declaredSize ?? UInt32(bytes.count))
        })
        sendInFlight[id] = section
    }

    /// Writes a packet as is (tests use it to play a hostile guest).
    public func sendRaw(_ packet: Packet) throws(VMBusError) { try channel.send(packet) }

    /// False once the root closed or rescinded the channel.
    public var isOpen: Bool { channel.isOpen }

    private func received(_ packet: Packet) {
        switch packet.kind {
        case .completion:
            if let section = sendInFlight.removeValue(forKey: packet.transactionID) {
                freeSend.append(section)
                var r = ByteReader(packet.payload)
                if (try? r.u32()) != NetworkProtocol.Message.sendRNDISPacketComplete.rawValue || (try? r.u32()) != NetworkProtocol.Status.success {
                    refusedSends += 1
                }
            } else {
                completions[packet.transactionID] = packet.payload
            }
        case .transferPages:
            guard let ranges = try? NetworkProtocol.transferRanges(packet) else {
                malformedTransfers += 1
                return
            }
            for range in ranges {
                guard Int(range.offset) + Int(range.length) <= receive.size,
                    let message = try? RNDIS.messages(in: UnsafeRawBufferPointer(start: receive.pointer + Int(range.offset), count: Int(range.length))).first
                else {
                    malformedTransfers += 1
                    continue
                }
                take(message)
            }
            if returnsReceiveSections {
                try? channel.send(Packet(kind: .completion, transactionID: packet.transactionID,
                                         payload: NetworkProtocol.encode(.sendRNDISPacketComplete) { $0.u32(NetworkProtocol.Status.success) }))
            }
        default:
            malformedTransfers += 1
        }
    }

    /// One RNDIS message from the root.
    private func take(_ message: RNDIS.Message) {
        switch message.type {
        case RNDIS.MessageType.packet:
            guard let frame = try? message.frame(), frame.count >= 14 else {
                malformedTransfers += 1
                return
            }
            framesReceived += 1
            onFrame?(frame)
        case RNDIS.MessageType.indicateStatus:
            if message.field(0) == RNDIS.Status.mediaConnect { linkUp = true }
            if message.field(0) == RNDIS.Status.mediaDisconnect { linkUp = false }
        case RNDIS.MessageType.reset | RNDIS.MessageType.completion:
            rndisAnswers[0] = message  // RESET_C carries no request id
        default:
            rndisAnswers[message.field(0)] = message
        }
    }
}

extension GuestOS {
    /// Opens every network device offered.
    public func openNetwork() throws(VMBusError) -> [NetVSC] {
        var nics: [NetVSC] = []
        for offer in vmbus.offers where offer.interfaceType == NetworkProtocol.interfaceType {
            nics.append(try NetVSC(os: self, offer: offer))
        }
        return nics
    }

    /// Brings up an IPv4 host on `nic` with address `ip`.
    public func bringUp(_ nic: NetVSC, ip: [UInt8]) -> IPStack {
        let stack = IPStack(mac: nic.mac, ip: ip) { frame in try? nic.send(frame) }
        nic.onFrame = { frame in stack.received(frame) }
        log("IPv4 \(ip.map(String.init).joined(separator: ".")) on \(nic.mac.map { String(format: "%02x", $0) }.joined(separator: ":"))")
        return stack
    }

    /// Pings `target` `count` times, one second apart at most each; returns
    /// how many answered.
    public func ping(_ stack: IPStack, _ target: [UInt8], count: Int, timeout: Double = 2) -> Int {
        var answered = 0
        for sequence in 1...UInt16(count) {
            stack.ping(target, id: 0x0A7A, sequence: sequence)
            if vp.halt(until: { stack.hasReply(id: 0x0A7A, sequence: sequence) }, timeout: timeout) { answered += 1 }
        }
        return answered
    }
}
