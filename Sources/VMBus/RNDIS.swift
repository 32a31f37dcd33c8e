/// RNDIS as NVSP carries it (`include/linux/rndis.h`, the RNDIS structs in
/// `hyperv_net.h`): every message is {type u32, length u32} and a body;
/// offsets inside a body count from the body's start (8 bytes in). A packet
/// message has a 36-byte body (data, OOB and per-packet-info offsets and
/// lengths, VC handle), so frames start 44 bytes in.
public enum RNDIS {
    /// Message types; completions have bit 31 set.
    public enum MessageType {
        public static let packet: UInt32 = 0x0000_0001
        public static let initialize: UInt32 = 0x0000_0002
        public static let halt: UInt32 = 0x0000_0003
        public static let query: UInt32 = 0x0000_0004
        public static let set: UInt32 = 0x0000_0005
        public static let reset: UInt32 = 0x0000_0006
        public static let indicateStatus: UInt32 = 0x0000_0007
        public static let keepalive: UInt32 = 0x0000_0008
        public static let completion: UInt32 = 0x8000_0000
    }

    public enum Status {
        public static let success: UInt32 = 0x0000_0000
        public static let failure: UInt32 = 0xC000_0001
        public static let notSupported: UInt32 = 0xC000_00BB
        public static let invalidLength: UInt32 = 0xC001_0014
        public static let invalidData: UInt32 = 0xC001_0015
        public static let mediaConnect: UInt32 = 0x4001_000B
        public static let mediaDisconnect: UInt32 = 0x4001_000C
    }

    public enum OID {
        public static let maximumFrameSize: UInt32 = 0x0001_0106
        public static let linkSpeed: UInt32 = 0x0001_0107
        public static let currentPacketFilter: UInt32 = 0x0001_010E
        public static let mediaConnectStatus: UInt32 = 0x0001_0114
        public static let permanentAddress: UInt32 = 0x0101_0101
        public static let currentAddress: UInt32 = 0x0101_0102
        public static let offloadParameters: UInt32 = 0xFC01_020C
        public static let offloadHardwareCapabilities: UInt32 = 0xFC01_020D
    }

    /// `NDIS_PACKET_TYPE_DIRECTED | MULTICAST | BROADCAST`, what Linux sets on open.
    public static let defaultPacketFilter: UInt32 = 0x0000_000B
    public static let headerSize = 8
    /// `struct rndis_packet` (36) after the 8-byte header.
    public static let packetHeaderSize = 44
    /// NdisMedium802_3, RNDIS_DF_CONNECTIONLESS.
    public static let medium8023: UInt32 = 0
    public static let connectionless: UInt32 = 1

    /// A malformed RNDIS message: what was wrong with it.
    public enum ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        case truncated(have: Int)
        case lengthBeyondBuffer(messageLength: UInt32, buffer: Int)
        case fieldOutside(String, offset: UInt32, length: UInt32, messageLength: UInt32)

        public var description: String {
            switch self {
            case .truncated(let have): "RNDIS message of \(have) bytes is shorter than its header"
            case .lengthBeyondBuffer(let length, let buffer): "RNDIS message_length \(length) is beyond the \(buffer) bytes it came in"
            case .fieldOutside(let field, let offset, let length, let total):
                "RNDIS \(field) at offset \(offset) length \(length) is outside the \(total)-byte message"
            }
        }
    }

    /// One message, its body checked against its own length.
    public struct Message: Sendable, Equatable {
        public let type: UInt32
        /// The whole message, header included.
        public let bytes: [UInt8]

        /// The u32 at `offset` in the body.
        public func field(_ offset: Int) -> UInt32 {
            let at = headerSize + offset
            guard at + 4 <= bytes.count else { return 0 }
            return UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
        }

        /// The body bytes [offset, +length), where offset counts from the
        /// body's start; nil when any of it is outside the message.
        public func body(offset: UInt32, length: UInt32) -> [UInt8]? {
            let start = UInt64(headerSize) + UInt64(offset), end = start + UInt64(length)
            guard end <= UInt64(bytes.count) else { return nil }
            return Array(bytes[Int(start)..<Int(end)])
        }

        /// The frame of a packet message.
        public func frame() throws(ParseError) -> [UInt8] {
            try area("data", offsetField: 0, lengthField: 4)
        }

        /// The information buffer of a QUERY or SET request.
        public func information() throws(ParseError) -> [UInt8] {
            try area("information buffer", offsetField: 12, lengthField: 8)
        }

        private func area(_ name: String, offsetField: Int, lengthField: Int) throws(ParseError) -> [UInt8] {
            let offset = field(offsetField), length = field(lengthField)
            guard let data = body(offset: offset, length: length) else {
                throw .fieldOutside(name, offset: offset, length: length, messageLength: UInt32(bytes.count))
            }
            return data
        }
    }

    /// The messages in `buffer`, one after another (Linux may pack several
    /// packet messages into one send section); each must fit in the buffer.
    public static func messages(in buffer: UnsafeRawBufferPointer) throws(ParseError) -> [Message] {
        var out: [Message] = []
        var at = 0
        while at < buffer.count {
            guard buffer.count - at >= headerSize else { throw .truncated(have: buffer.count - at) }
            let type = buffer.loadUnaligned(fromByteOffset: at, as: UInt32.self).littleEndian
            let length = buffer.loadUnaligned(fromByteOffset: at + 4, as: UInt32.self).littleEndian
            guard length >= UInt32(headerSize), UInt64(length) <= UInt64(buffer.count - at) else {
                throw .lengthBeyondBuffer(messageLength: length, buffer: buffer.count - at)
            }
            out.append(Message(type: type, bytes: Array(buffer[at..<at + Int(length)])))
            at += Int(length)  // a sender's alignment padding is inside message_length
        }
        return out
    }

    // MARK: Building messages

    static func message(_ type: UInt32, _ body: (inout ByteWriter) -> Void) -> [UInt8] {
        var w = ByteWriter()
        body(&w)
        var out = ByteWriter()
        out.u32(type)
        out.u32(UInt32(headerSize + w.bytes.count))
        out.raw(w.bytes)
        return out.bytes
    }

    /// A packet message carrying `frame`, no OOB data or per-packet info.
    public static func packet(_ frame: [UInt8]) -> [UInt8] {
        message(MessageType.packet) { w in
            w.u32(36); w.u32(UInt32(frame.count))   // data offset (from the body), data length
            w.u32(0); w.u32(0); w.u32(0)            // OOB offset, length, count
            w.u32(0); w.u32(0)                      // per-packet info offset, length
            w.u32(0); w.u32(0)                      // VC handle, reserved
            w.raw(frame)
        }
    }

    public static func initialize(requestID: UInt32, maxTransfer: UInt32 = 0x4000) -> [UInt8] {
        message(MessageType.initialize) { $0.u32(requestID); $0.u32(1); $0.u32(0); $0.u32(maxTransfer) }
    }

    public static func initializeComplete(requestID: UInt32, status: UInt32, maxPacketsPerMessage: UInt32, maxTransfer: UInt32,
                                          alignmentShift: UInt32) -> [UInt8] {
        message(MessageType.initialize | MessageType.completion) { w in
            w.u32(requestID); w.u32(status); w.u32(1); w.u32(0)
            w.u32(connectionless); w.u32(medium8023)
            w.u32(maxPacketsPerMessage); w.u32(maxTransfer); w.u32(alignmentShift)
            w.u32(0); w.u32(0)  // no address-family list
        }
    }

    /// QUERY or SET: {request id, OID, buffer length, buffer offset (20), VC handle} and the buffer.
    public static func request(_ type: UInt32, requestID: UInt32, oid: UInt32, information: [UInt8] = []) -> [UInt8] {
        message(type) { w in
            w.u32(requestID); w.u32(oid); w.u32(UInt32(information.count)); w.u32(information.isEmpty ? 0 : 20); w.u32(0)
            w.raw(information)
        }
    }

    public static func queryComplete(requestID: UInt32, status: UInt32, information: [UInt8]) -> [UInt8] {
        message(MessageType.query | MessageType.completion) { w in
            w.u32(requestID); w.u32(status); w.u32(UInt32(information.count)); w.u32(information.isEmpty ? 0 : 16)
            w.raw(information)
        }
    }

    /// SET_C and KEEPALIVE_C: {request id, status}.
    public static func statusComplete(_ type: UInt32, requestID: UInt32, status: UInt32) -> [UInt8] {
        message(type | MessageType.completion) { $0.u32(requestID); $0.u32(status) }
    }

    /// RESET_C: {status, addressing reset}.
    public static func resetComplete(status: UInt32) -> [UInt8] {
        message(MessageType.reset | MessageType.completion) { $0.u32(status); $0.u32(0) }
    }

    /// HALT and KEEPALIVE: {request id}; RESET: {reserved}.
    public static func simple(_ type: UInt32, requestID: UInt32) -> [UInt8] {
        message(type) { $0.u32(requestID) }
    }

    /// INDICATE_STATUS with no status buffer.
    public static func indicateStatus(_ status: UInt32) -> [UInt8] {
        message(MessageType.indicateStatus) { $0.u32(status); $0.u32(0); $0.u32(0) }
    }
}
