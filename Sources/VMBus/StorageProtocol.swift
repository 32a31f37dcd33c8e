import Foundation

/// The storage channel's wire format (storvsc-shaped), shared by the root's
/// VSP and the guest's VSC.
///
/// Every packet payload starts with {operation u32, flags u32, status u32,
/// reserved u32}. Initialisation: BEGIN -> QUERY_PROTOCOL_VERSION (newest
/// first) -> QUERY_PROPERTIES -> REGISTER_DATA_BUFFER -> END, each answered by
/// a completion. I/O is EXECUTE_SRB in a GPA_DIRECT packet whose ranges lie in
/// the registered data buffer; the completion echoes the transaction id.
public enum StorageProtocol {
    public static let interfaceType = UUID(uuidString: "BA6163D9-04A1-4D29-B605-72E2FFB1DC7F")!

    public enum Operation: UInt32, Sendable {
        case completeIO = 1
        case executeSRB = 3
        case beginInitialization = 7
        case endInitialization = 8
        case queryProtocolVersion = 9
        case queryProperties = 10
        /// Modelled on netvsc's buffer registration: the GPADL that I/O
        /// ranges must lie in.
        case registerDataBuffer = 12
    }

    /// NTSTATUS-style results.
    public enum Status {
        public static let success: UInt32 = 0
        public static let unsuccessful: UInt32 = 0xC000_0001
        public static let invalidParameter: UInt32 = 0xC000_000D
        public static let invalidDeviceState: UInt32 = 0xC000_0184
        public static let ioDeviceError: UInt32 = 0xC000_0185
        public static let revisionMismatch: UInt32 = 0xC000_0059
    }

    /// SCSI operation codes used in SRBs.
    public enum Command: UInt8, Sendable {
        case read10 = 0x28
        case write10 = 0x2A
        case synchronizeCache = 0x35
    }

    /// Versions the root serves, newest first (major << 8 | minor).
    public static let hostVersions: [UInt16] = [0x0602, 0x0600]
    /// Versions a guest asks for, newest first.
    public static let guestVersions: [UInt16] = [0x0700, 0x0602, 0x0600]

    public struct Header: Sendable, Equatable {
        public var operation: UInt32
        public var flags: UInt32 = 0
        public var status: UInt32 = 0

        public init(operation: Operation, status: UInt32 = 0) {
            self.operation = operation.rawValue
            self.status = status
        }

        init(raw operation: UInt32, flags: UInt32, status: UInt32) {
            self.operation = operation
            self.flags = flags
            self.status = status
        }
    }

    public struct Properties: Sendable, Equatable {
        public var maxTransferBytes: UInt32
        public var channelCount: UInt16
        public var blockSize: UInt32
        public var blockCount: UInt64

        public init(maxTransferBytes: UInt32, channelCount: UInt16, blockSize: UInt32, blockCount: UInt64) {
            self.maxTransferBytes = maxTransferBytes
            self.channelCount = channelCount
            self.blockSize = blockSize
            self.blockCount = blockCount
        }
    }

    public struct SRB: Sendable, Equatable {
        public var command: UInt8
        public var blocks: UInt32
        public var lba: UInt64

        public init(command: Command, blocks: UInt32, lba: UInt64) {
            self.command = command.rawValue
            self.blocks = blocks
            self.lba = lba
        }
    }

    public static func encode(_ header: Header, _ body: (inout ByteWriter) -> Void = { _ in }) -> [UInt8] {
        var w = ByteWriter()
        w.u32(header.operation)
        w.u32(header.flags)
        w.u32(header.status)
        w.u32(0)
        body(&w)
        return w.bytes
    }

    public static func decodeHeader(_ reader: inout ByteReader) throws(ChannelMessage.DecodeError) -> Header {
        let operation = try reader.u32(), flags = try reader.u32(), status = try reader.u32()
        _ = try reader.u32()
        return Header(raw: operation, flags: flags, status: status)
    }

    public static func encode(_ properties: Properties, into w: inout ByteWriter) {
        w.u32(properties.maxTransferBytes)
        w.u16(properties.channelCount)
        w.u16(0)
        w.u32(properties.blockSize)
        w.u32(0)
        w.u64(properties.blockCount)
    }

    public static func decodeProperties(_ r: inout ByteReader) throws(ChannelMessage.DecodeError) -> Properties {
        let max = try r.u32(), channels = try r.u16()
        _ = try r.u16()
        let blockSize = try r.u32()
        _ = try r.u32()
        return Properties(maxTransferBytes: max, channelCount: channels, blockSize: blockSize, blockCount: try r.u64())
    }

    public static func encode(_ srb: SRB, into w: inout ByteWriter) {
        w.u8(srb.command)
        w.u8(0); w.u8(0); w.u8(0)
        w.u32(srb.blocks)
        w.u64(srb.lba)
    }

    public static func decodeSRB(_ r: inout ByteReader) throws(ChannelMessage.DecodeError) -> SRB {
        let command = try r.u8()
        _ = try r.u8(); _ = try r.u8(); _ = try r.u8()
        let blocks = try r.u32()
        var srb = SRB(command: .read10, blocks: blocks, lba: try r.u64())
        srb.command = command
        return srb
    }
}
