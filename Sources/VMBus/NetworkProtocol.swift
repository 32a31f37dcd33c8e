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

    /// Payload of a TRANSFER_PAGES packet: the message type, then the ranges.
    public static func encodeTransfer(_ ranges: [Range]) -> [UInt8] {
        encode(.sendRNDISPacket) { w in
            w.u32(UInt32(ranges.count))
            for range in ranges {
                w.u32(range.offset)
                w.u32(range.length)
            }
        }
    }

    public static func decodeTransfer(_ payload: [UInt8]) throws(ChannelMessage.DecodeError) -> [Range] {
        var r = ByteReader(payload)
        guard try r.u32() == Message.sendRNDISPacket.rawValue else { throw .init(reason: "transfer packet of the wrong type") }
        let count = try r.u32()
        guard count <= 64 else { throw .init(reason: "transfer packet with \(count) ranges") }
        return try (0..<count).map { _ throws(ChannelMessage.DecodeError) in Range(offset: try r.u32(), length: try r.u32()) }
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
