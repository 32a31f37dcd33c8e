import Foundation
import Machine
import NetStack
import VMBus

/// The guest's network client (netvsc): registers receive and send buffers,
/// sends frames through send-buffer sections and returns receive sections
/// after handing each frame up.
public final class NetVSC: @unchecked Sendable {
    // @unchecked Sendable: confined to the guest VP thread.
    public let offer: Offer
    public private(set) var mac: [UInt8] = []
    public private(set) var version: UInt32 = 0
    let os: GuestOS
    let channel: ClientChannel
    private let receive: (gpa: UInt64, pointer: UnsafeMutableRawPointer, size: Int)
    private let sendArea: (gpa: UInt64, pointer: UnsafeMutableRawPointer, sections: Int)
    private var freeSend: [Int]
    private var sendInFlight: [UInt64: Int] = [:]
    private var completions: [UInt64: [UInt8]] = [:]
    private var nextTransaction: UInt64 = 1
    /// Called for each received frame, on the VP thread.
    public var onFrame: (([UInt8]) -> Void)?
    /// Tests turn this off to play a guest that never returns its receive
    /// sections.
    public var returnsReceiveSections = true
    public private(set) var framesReceived = 0
    public private(set) var framesSent = 0
    public private(set) var malformedTransfers = 0

    static let ringPages = 1 + 16
    static let receivePages = 64   // 128 sections of 2 KiB
    static let sendPages = 32      // 64 sections

    init(os: GuestOS, offer: Offer) throws(VMBusError) {
        self.os = os
        self.offer = offer
        guard let ring = os.allocate(pages: 2 * Self.ringPages), let rx = os.allocate(pages: Self.receivePages),
            let tx = os.allocate(pages: Self.sendPages)
        else { throw .outOfGuestMemory("the network channel") }
        receive = (rx.gpa, rx.pointer, Self.receivePages * PhysicalMemory.pageSize)
        let sections = Self.sendPages * PhysicalMemory.pageSize / NetworkProtocol.sectionSize
        sendArea = (tx.gpa, tx.pointer, sections)
        freeSend = Array(0..<sections)
        channel = try os.vmbus.open(relid: offer.relid, ringGPA: ring.gpa, ringPages: 2 * Self.ringPages, outboundPages: Self.ringPages)
        channel.onPacket = { [weak self] packet in self?.received(packet) }
        try initialize()
    }

    private func call(_ payload: [UInt8]) throws(VMBusError) -> [UInt8] {
        let id = nextTransaction
        nextTransaction += 1
        try channel.send(Packet(kind: .inband, flags: Packet.completionRequested, transactionID: id, payload: payload))
        guard os.vp.halt(until: { self.completions[id] != nil || !self.channel.isOpen }, timeout: 10), let reply = completions.removeValue(forKey: id) else {
            throw .noAnswer("answer from the network provider", seconds: 10)
        }
        return reply
    }

    private func initialize() throws(VMBusError) {
        var r = ByteReader(try call(NetworkProtocol.encode(.initialize) { $0.u32(0x0002_0000); $0.u32(0x0006_0001) }))
        do {
            guard try r.u32() == NetworkProtocol.Status.success else { throw VMBusError.noCommonVersion("network protocol") }
            version = try r.u32()
            mac = try (0..<6).map { _ throws(ChannelMessage.DecodeError) in try r.u8() }
        } catch let error as VMBusError {
            throw error
        } catch {
            throw .malformedAnswer("INIT completion: \(error)")
        }
        let rxGPADL = try os.vmbus.createGPADL(relid: offer.relid, gpa: receive.gpa, pages: Self.receivePages)
        var rr = ByteReader(try call(NetworkProtocol.encode(.sendReceiveBuffer) { $0.u32(rxGPADL) }))
        guard (try? rr.u32()) == NetworkProtocol.Status.success else { throw .refused("receive buffer") }
        let txGPADL = try os.vmbus.createGPADL(relid: offer.relid, gpa: sendArea.gpa, pages: Self.sendPages)
        var rs = ByteReader(try call(NetworkProtocol.encode(.sendSendBuffer) { $0.u32(txGPADL) }))
        guard (try? rs.u32()) == NetworkProtocol.Status.success else { throw .refused("send buffer") }
        os.log("network relid \(offer.relid): NVSP 0x\(String(version, radix: 16)), MAC \(mac.map { String(format: "%02x", $0) }.joined(separator: ":"))")
    }

    /// Sends a frame; waits for a free send section if all are in flight.
    public func send(_ frame: [UInt8]) throws(VMBusError) {
        guard frame.count + NetworkProtocol.rndisHeader <= NetworkProtocol.sectionSize else { throw .frameTooLarge(frame.count) }
        if freeSend.isEmpty {
            guard os.vp.halt(until: { !self.freeSend.isEmpty || !self.channel.isOpen }, timeout: 5), !freeSend.isEmpty else {
                throw .noAnswer("send section back", seconds: 5)
            }
        }
        let section = freeSend.removeLast()
        frame.withUnsafeBytes { NetworkProtocol.writeRNDIS($0, to: sendArea.pointer + section * NetworkProtocol.sectionSize) }
        let id = nextTransaction
        nextTransaction += 1
        sendInFlight[id] = section
        let payload = NetworkProtocol.encode(.sendRNDISPacket) { w in
            w.u32(0)  // data channel
            w.u32(UInt32(section))
            w.u32(UInt32(frame.count + NetworkProtocol.rndisHeader))
        }
        do {
            try channel.send(Packet(kind: .inband, flags: Packet.completionRequested, transactionID: id, payload: payload))
        } catch {
            sendInFlight[id] = nil
            freeSend.append(section)
            throw error
        }
        framesSent += 1
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
            } else {
                completions[packet.transactionID] = packet.payload
            }
        case .transferPages:
            guard let ranges = try? NetworkProtocol.transferRanges(packet) else {
                malformedTransfers += 1
                return
            }
            for range in ranges {
                let end = Int(range.offset) + Int(range.length)
                guard range.length >= 14, end <= receive.size else {
                    malformedTransfers += 1
                    continue
                }
                framesReceived += 1
                onFrame?([UInt8](UnsafeRawBufferPointer(start: receive.pointer + Int(range.offset), count: Int(range.length))))
            }
            if returnsReceiveSections {
                try? channel.send(Packet(kind: .completion, transactionID: packet.transactionID, payload: []))
            }
        default:
            malformedTransfers += 1
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
