import Foundation

/// The network channel's wire format (netvsc-shaped), shared by the root's
/// VSP and the guest's VSC.
///
/// INIT carries the guest's version range; the root answers with the
/// version it picked and the MAC it assigned. The guest then registers a
/// receive buffer and a send buffer, each a GPADL divided into fixed
/// sections. Frames to the root go in a send-buffer section (an RNDIS
/// packet message followed by the frame) named by SEND_RNDIS_PACKET; the
/// completion frees the section. Frames to the guest arrive as
/// TRANSFER_PAGES packets naming receive-buffer sections; the guest's
/// completion (same transaction id) returns them.
public enum NetworkProtocol {
    public static let interfaceType = UUID(uuidString: "F8615163-DF3E-46C5-913F-F2D2F965ED0E")!

    public enum Message: UInt32, Sendable {
        case initialize = 1
        case sendReceiveBuffer = 101
        case sendSendBuffer = 104
        case sendRNDISPacket = 107
    }

    public enum Status {
        public static let success: UInt32 = 1
        public static let failure: UInt32 = 2
    }

    /// Versions the root serves (NVSP-style numbering), newest first.
    public static let hostVersions: ClosedRange<UInt32> = 0x0002_0000...0x0006_0001
    public static let sectionSize = 2048
    /// RNDIS_PACKET_MSG header: type, message length, data offset, data length.
    public static let rndisHeader = 16
    public static let rndisPacketMessage: UInt32 = 1

    /// A receive-buffer section named in a TRANSFER_PAGES packet.
    public struct Range: Sendable, Equatable {
        public let offset: UInt32
        public let length: UInt32
        public init(offset: UInt32, length: UInt32) {
            self.offset = offset
            self.length = length
        }
    }

    public static func encode(_ message: Message, _ body: (inout ByteWriter) -> Void = { _ in }) -> [UInt8] {
        var w = ByteWriter()
        w.u32(message.rawValue)
        body(&w)
        return w.bytes
    }

    /// The transfer-page set id of the receive buffer (what Linux's netvsc
    /// and Hyper-V use: NETVSC_RECEIVE_BUFFER_ID).
    public static let receivePageSetID: UInt16 = 0xCAFE

    /// A TRANSFER_PAGES packet for frames in the receive buffer: the ranges
    /// go in the packet header; the payload is NVSP's SEND_RNDIS_PKT (data
    /// channel, no send-buffer section: 0xFFFFFFFF, size 0).
    public static func transferPacket(_ ranges: [Range], transactionID: UInt64) -> Packet {
        Packet(kind: .transferPages, flags: Packet.completionRequested, transactionID: transactionID,
               transfer: .init(pageSetID: receivePageSetID, ranges: ranges.map { .init(byteCount: $0.length, byteOffset: $0.offset) }),
               payload: encode(.sendRNDISPacket) { w in
                   w.u32(0)
                   w.u32(0xFFFF_FFFF)
                   w.u32(0)
               })
    }

    /// The ranges a TRANSFER_PAGES packet names, if it is one of ours.
    public static func transferRanges(_ packet: Packet) throws(ChannelMessage.DecodeError) -> [Range] {
        var r = ByteReader(packet.payload)
        guard try r.u32() == Message.sendRNDISPacket.rawValue else { throw .init(reason: "transfer packet of the wrong type") }
        guard let transfer = packet.transfer, transfer.pageSetID == receivePageSetID else {
            throw .init(reason: "transfer packet for page set \(packet.transfer?.pageSetID ?? 0), not the receive buffer's")
        }
        return transfer.ranges.map { Range(offset: $0.byteOffset, length: $0.byteCount) }
    }

    /// Writes an RNDIS packet message with `frame` at `section`.
    public static func writeRNDIS(_ frame: UnsafeRawBufferPointer, to section: UnsafeMutableRawPointer) {
        section.storeBytes(of: rndisPacketMessage.littleEndian, toByteOffset: 0, as: UInt32.self)
        section.storeBytes(of: UInt32(rndisHeader + frame.count).littleEndian, toByteOffset: 4, as: UInt32.self)
        section.storeBytes(of: UInt32(rndisHeader).littleEndian, toByteOffset: 8, as: UInt32.self)
        section.storeBytes(of: UInt32(frame.count).littleEndian, toByteOffset: 12, as: UInt32.self)
        (section + rndisHeader).copyMemory(from: frame.baseAddress!, byteCount: frame.count)
    }

    /// The frame inside an RNDIS packet message of `length` bytes at
    /// `section`, or nil when the header is inconsistent.
    public static func readRNDIS(_ section: UnsafeRawPointer, length: Int) -> UnsafeRawBufferPointer? {
        guard length >= rndisHeader, length <= sectionSize else { return nil }
        let type = UInt32(littleEndian: section.loadUnaligned(as: UInt32.self))
        let total = Int(UInt32(littleEndian: section.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
        let offset = Int(UInt32(littleEndian: section.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        let count = Int(UInt32(littleEndian: section.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
        guard type == rndisPacketMessage, total <= length, offset >= rndisHeader, count >= 0, offset <= total, count <= total - offset else { return nil }
        return UnsafeRawBufferPointer(start: section + offset, count: count)
    }
}
