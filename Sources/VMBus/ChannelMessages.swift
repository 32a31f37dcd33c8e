import Foundation
import Machine

/// VMBus control messages, carried in SynIC messages (SynIC type 1). Each
/// payload starts with the message type (u32) and padding (u32); numbers are
/// those of Hyper-V. Decoding checks every length: a short or malformed
/// message is an error, never an out-of-bounds read.
public enum ChannelMessage: Equatable, Sendable {
    public static let synicMessageType: UInt32 = 1
    /// PFNs that fit in one GPADL header or body message.
    /// PFNs a GPADL_HEADER carries: (240 - 20 - 8) / 8, as Linux computes it.
    public static let pfnsPerMessage = 26
    /// PFNs a GPADL_BODY carries: (240 - 16) / 8.
    public static let pfnsPerBody = 28
    /// struct gpa_range without its PFNs: byte_count, byte_offset.
    static let gpaRangeHeader = 8

    case offerChannel(interfaceType: UUID, instance: UUID, relid: UInt32, connectionID: UInt32)
    case rescindOffer(relid: UInt32)
    case requestOffers
    case allOffersDelivered
    case openChannel(relid: UInt32, openID: UInt32, ringGPADL: UInt32, downstreamPageOffset: UInt32, targetVP: UInt32)
    case openResult(relid: UInt32, openID: UInt32, status: UInt32)
    case closeChannel(relid: UInt32)
    case gpadlHeader(relid: UInt32, gpadl: UInt32, totalPages: UInt32, pfns: [UInt64])
    case gpadlBody(message: UInt32, gpadl: UInt32, pfns: [UInt64])
    case gpadlCreated(relid: UInt32, gpadl: UInt32, status: UInt32)
    case gpadlTeardown(relid: UInt32, gpadl: UInt32)
    case gpadlTorndown(gpadl: UInt32)
    case relidReleased(relid: UInt32)
    /// struct vmbus_channel_initiate_contact: the version asked for, the
    /// VP to interrupt, the message SINT (from 5.0; in the interrupt-page
    /// union) and the two monitor pages (none here: 0).
    case initiateContact(version: UInt32, targetVP: UInt32 = 0, messageSINT: UInt8 = 2)
    /// struct vmbus_channel_version_response: supported, the connection
    /// state, and (from 5.0) the connection id the guest posts messages to.
    case versionResponse(supported: Bool, connectionState: UInt8 = 0, messageConnectionID: UInt32 = 0)
    case unload
    case unloadResponse

    public var typeNumber: UInt32 {
        switch self {
        case .offerChannel: 1
        case .rescindOffer: 2
        case .requestOffers: 3
        case .allOffersDelivered: 4
        case .openChannel: 5
        case .openResult: 6
        case .closeChannel: 7
        case .gpadlHeader: 8
        case .gpadlBody: 9
        case .gpadlCreated: 10
        case .gpadlTeardown: 11
        case .gpadlTorndown: 12
        case .relidReleased: 13
        case .initiateContact: 14
        case .versionResponse: 15
        case .unload: 16
        case .unloadResponse: 17
        }
    }

    /// sizeof(struct vmbus_channel_offer_channel), header included.
    public static let offerSize = 196
    static let offerUserDefinedBytes = 120
    /// sizeof(struct vmbus_channel_open_channel), header included.
    public static let openChannelSize = 148

    public struct DecodeError: Error, CustomStringConvertible, Sendable {
        public let reason: String
        public var description: String { reason }
    }

    public func encode() -> [UInt8] {
        var w = ByteWriter()
        w.u32(typeNumber)
        w.u32(0)
        switch self {
        case .offerChannel(let type, let instance, let relid, let connection):
            // struct vmbus_channel_offer_channel (196 bytes with the header):
            // the offer proper (interface and instance GUIDs, two reserved
            // u64, channel flags, MMIO megabytes, 120 bytes of user-defined
            // data, sub-channel index, reserved), then the child relid, the
            // monitor id and its allocated bit (no monitor pages: 0), the
            // dedicated-interrupt bit and the connection id.
            w.uuid(type); w.uuid(instance)
            w.u64(0); w.u64(0)
            w.u16(0); w.u16(0)
            w.raw([UInt8](repeating: 0, count: Self.offerUserDefinedBytes))
            w.u16(0); w.u16(0)
            w.u32(relid)
            w.u8(0); w.u8(0)
            w.u16(0)
            w.u32(connection)
        case .rescindOffer(let relid), .closeChannel(let relid), .relidReleased(let relid):
            w.u32(relid)
        case .requestOffers, .allOffersDelivered, .unload, .unloadResponse:
            break
        case .openChannel(let relid, let openID, let ring, let offset, let vp):
            // struct vmbus_channel_open_channel: relid, open id, ring GPADL,
            // target VP, then the downstream ring's page offset, then 120
            // bytes of user data (148 bytes with the header).
            w.u32(relid); w.u32(openID); w.u32(ring); w.u32(vp); w.u32(offset)
            w.raw([UInt8](repeating: 0, count: Self.offerUserDefinedBytes))
        case .openResult(let relid, let openID, let status):
            w.u32(relid); w.u32(openID); w.u32(status)
        case .gpadlHeader(let relid, let gpadl, let total, let pfns):
            // struct vmbus_channel_gpadl_header: relid, gpadl, range_buflen,
            // rangecount (one range, as Linux grants rings), then the
            // gpa_range {byte_count, byte_offset, pfn_array[]} with the PFNs
            // that fit; the rest follow in GPADL_BODY messages.
            w.u32(relid); w.u32(gpadl)
            w.u16(UInt16(clamping: Self.gpaRangeHeader + 8 * Int(total))); w.u16(1)
            w.u32(total &* UInt32(PhysicalMemory.pageSize)); w.u32(0)
            for pfn in pfns { w.u64(pfn) }
        case .gpadlBody(let message, let gpadl, let pfns):
            // struct vmbus_channel_gpadl_body: message number, gpadl, PFNs.
            w.u32(message); w.u32(gpadl)
            for pfn in pfns { w.u64(pfn) }
        case .gpadlCreated(let relid, let gpadl, let status):
            w.u32(relid); w.u32(gpadl); w.u32(status)
        case .gpadlTeardown(let relid, let gpadl):
            w.u32(relid); w.u32(gpadl)
        case .gpadlTorndown(let gpadl):
            w.u32(gpadl)
        case .initiateContact(let version, let vp, let sint):
            w.u32(version); w.u32(vp)
            w.u8(sint); w.u8(0); w.u16(0); w.u32(0)  // msg_sint, msg_vtl, reserved, feature_flags
            w.u64(0); w.u64(0)  // monitor_page1, monitor_page2
        case .versionResponse(let supported, let state, let connection):
            w.u8(supported ? 1 : 0); w.u8(state); w.u16(0); w.u32(connection)
        }
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws(DecodeError) -> ChannelMessage {
        var r = ByteReader(bytes)
        let type = try r.u32()
        _ = try r.u32()
        switch type {
        case 1:
            guard bytes.count >= offerSize else { throw DecodeError(reason: "offer of \(bytes.count) bytes; vmbus_channel_offer_channel is \(offerSize)") }
            let type = try r.uuid(), instance = try r.uuid()
            try r.skip(16 + 4 + offerUserDefinedBytes + 4)
            let relid = try r.u32()
            try r.skip(4)
            return .offerChannel(interfaceType: type, instance: instance, relid: relid, connectionID: try r.u32())
        case 2: return .rescindOffer(relid: try r.u32())
        case 3: return .requestOffers
        case 4: return .allOffersDelivered
        case 5:
            guard bytes.count >= openChannelSize else { throw DecodeError(reason: "open-channel of \(bytes.count) bytes; vmbus_channel_open_channel is \(openChannelSize)") }
            let relid = try r.u32(), openID = try r.u32(), ring = try r.u32(), vp = try r.u32()
            return .openChannel(relid: relid, openID: openID, ringGPADL: ring, downstreamPageOffset: try r.u32(), targetVP: vp)
        case 6: return .openResult(relid: try r.u32(), openID: try r.u32(), status: try r.u32())
        case 7: return .closeChannel(relid: try r.u32())
        case 8:
            let relid = try r.u32(), gpadl = try r.u32(), bufferLength = Int(try r.u16()), ranges = try r.u16()
            let byteCount = try r.u32(), byteOffset = try r.u32()
            guard ranges == 1, bufferLength >= gpaRangeHeader + 8, (bufferLength - gpaRangeHeader) % 8 == 0 else {
                throw DecodeError(reason: "GPADL header with \(ranges) ranges in \(bufferLength) bytes; one whole-page range is supported")
            }
            let total = UInt32((bufferLength - gpaRangeHeader) / 8)
            guard byteOffset == 0, byteCount == total &* UInt32(PhysicalMemory.pageSize) else {
                throw DecodeError(reason: "GPADL range of \(byteCount) bytes at offset \(byteOffset) over \(total) pages; whole pages only")
            }
            // The PFNs this message carries: what its length holds.
            let count = min(UInt32(r.remaining / 8), total)
            guard count <= UInt32(pfnsPerMessage) else { throw DecodeError(reason: "GPADL header with \(count) PFNs") }
            return .gpadlHeader(relid: relid, gpadl: gpadl, totalPages: total, pfns: try (0..<count).map { _ throws(DecodeError) in try r.u64() })
        case 9:
            let message = try r.u32(), gpadl = try r.u32()
            let count = r.remaining / 8
            guard count <= pfnsPerBody else { throw DecodeError(reason: "GPADL body with \(count) PFNs") }
            return .gpadlBody(message: message, gpadl: gpadl, pfns: try (0..<count).map { _ throws(DecodeError) in try r.u64() })
        case 10: return .gpadlCreated(relid: try r.u32(), gpadl: try r.u32(), status: try r.u32())
        case 11: return .gpadlTeardown(relid: try r.u32(), gpadl: try r.u32())
        case 12: return .gpadlTorndown(gpadl: try r.u32())
        case 13: return .relidReleased(relid: try r.u32())
        case 14:
            let version = try r.u32(), vp = try r.u32(), sint = try r.u8()
            try r.skip(7 + 16)
            return .initiateContact(version: version, targetVP: vp, messageSINT: sint)
        case 15:
            let supported = try r.u8() != 0, state = try r.u8()
            try r.skip(2)
            return .versionResponse(supported: supported, connectionState: state, messageConnectionID: try r.u32())
        case 16: return .unload
        case 17: return .unloadResponse
        default: throw DecodeError(reason: "unknown channel message type \(type)")
        }
    }
}

/// Little-endian field writer for protocol payloads.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    public init() {}
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    /// A GUID as Hyper-V puts it on the wire: Microsoft's mixed-endian
    /// order, the first three fields (4, 2 and 2 bytes) little-endian and
    /// the last eight bytes as written.
    public mutating func uuid(_ v: UUID) { withUnsafeBytes(of: v.uuid) { bytes.append(contentsOf: GUIDOrder.swap(Array($0))) } }
    public mutating func raw(_ v: [UInt8]) { bytes.append(contentsOf: v) }
}

/// Bounds-checked little-endian field reader: running off the end throws.
public struct ByteReader: Sendable {
    public let bytes: [UInt8]
    public private(set) var offset = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var remaining: Int { bytes.count - offset }

    private mutating func take(_ n: Int) throws(ChannelMessage.DecodeError) -> ArraySlice<UInt8> {
        guard n <= remaining else { throw .init(reason: "message truncated: needed \(n) more bytes at offset \(offset), \(remaining) left") }
        defer { offset += n }
        return bytes[offset..<(offset + n)]
    }

    private mutating func integer<T: FixedWidthInteger>(_ type: T.Type) throws(ChannelMessage.DecodeError) -> T {
        let slice = try take(MemoryLayout<T>.size)
        return slice.reversed().reduce(T(0)) { $0 << 8 | T($1) }
    }

    public mutating func u8() throws(ChannelMessage.DecodeError) -> UInt8 { try integer(UInt8.self) }
    public mutating func skip(_ n: Int) throws(ChannelMessage.DecodeError) { _ = try take(n) }
    public mutating func u16() throws(ChannelMessage.DecodeError) -> UInt16 { try integer(UInt16.self) }
    public mutating func u32() throws(ChannelMessage.DecodeError) -> UInt32 { try integer(UInt32.self) }
    public mutating func u64() throws(ChannelMessage.DecodeError) -> UInt64 { try integer(UInt64.self) }
    public mutating func uuid() throws(ChannelMessage.DecodeError) -> UUID {
        let s = GUIDOrder.swap(Array(try take(16)))
        return UUID(uuid: (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11], s[12], s[13], s[14], s[15]))
    }
}

/// RFC 4122 byte order <-> Microsoft's GUID wire order (the swap is its own inverse).
enum GUIDOrder {
    static func swap(_ b: [UInt8]) -> [UInt8] {
        [b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6]] + b[8..<16]
    }
}
