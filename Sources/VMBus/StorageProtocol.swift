import Foundation

/// The storage channel's wire format, as Hyper-V's StorVSP and Linux's
/// storvsc speak it (`drivers/scsi/storvsc_drv.c`), shared by the root's VSP
/// and the guest's VSC.
///
/// Every packet is a 64-byte `vstor_packet`: {operation u32, flags u32,
/// status u32} and a 52-byte union. Initialisation: BEGIN_INITIALIZATION ->
/// QUERY_PROTOCOL_VERSION (newest first) -> QUERY_PROPERTIES ->
/// END_INITIALIZATION, each answered by a COMPLETE_IO packet whose status is
/// 0 on success. I/O is EXECUTE_SRB carrying a `vmscsi_request` with a SCSI
/// CDB; its data is a GPA_DIRECT page list anywhere in the guest's memory
/// (an inband packet when there is no data). The answer is a full-size
/// COMPLETE_IO packet with the SRB and SCSI status, the bytes moved and,
/// after CHECK CONDITION, sense data in the union.
public enum StorageProtocol {
    public static let interfaceType = UUID(uuidString: "BA6163D9-04A1-4D29-B605-72E2FFB1DC7F")!

    /// `sizeof(struct vstor_packet)` from Win8 on.
    public static let packetSize = 64
    /// Offset of the union (`vm_srb`, properties, version) in the packet.
    public static let unionOffset = 12
    /// `REQUEST_COMPLETION_FLAG` in `vstor_packet.flags`.
    public static let requestCompletionFlag: UInt32 = 0x1

    /// `enum vstor_packet_operation`.
    public enum Operation: UInt32, Sendable {
        case completeIO = 1
        case removeDevice = 2
        case executeSRB = 3
        case resetLUN = 4
        case resetAdapter = 5
        case resetBus = 6
        case beginInitialization = 7
        case endInitialization = 8
        case queryProtocolVersion = 9
        case queryProperties = 10
        case enumerateBus = 11
        /// Fibre-channel WWNs (synthetic FC only).
        case fcHBAData = 12
        case createSubChannels = 13
    }

    /// Protocol versions (major << 8 | minor): Win10 6.2, Win8.1 6.0, Win8 5.1.
    public enum Version {
        public static let win10: UInt16 = 0x0602
        public static let win8_1: UInt16 = 0x0600
        public static let win8: UInt16 = 0x0501
    }

    /// Versions the root serves, newest first: the ones with the 52-byte
    /// `vmscsi_request` (Win8 and later). Older ones are refused.
    public static let hostVersions: [UInt16] = [Version.win10, Version.win8_1, Version.win8]
    /// Versions a guest asks for, newest first, as Linux does.
    public static let guestVersions: [UInt16] = [Version.win10, Version.win8_1, Version.win8]

    /// `vstor_packet.status`: NTSTATUS for the packet itself. A SCSI error is
    /// not a packet error: it travels in the SRB with status 0.
    public enum Status {
        public static let success: UInt32 = 0
        public static let unsuccessful: UInt32 = 0xC000_0001
        public static let invalidParameter: UInt32 = 0xC000_000D
        public static let revisionMismatch: UInt32 = 0xC000_0059
        public static let invalidDeviceState: UInt32 = 0xC000_0184
    }

    /// `SRB_STATUS_*`.
    public enum SRBStatus {
        public static let success: UInt8 = 0x01
        public static let aborted: UInt8 = 0x02
        public static let error: UInt8 = 0x04
        public static let busy: UInt8 = 0x05
        public static let invalidRequest: UInt8 = 0x06
        public static let dataOverrun: UInt8 = 0x12
        public static let invalidLUN: UInt8 = 0x20
        public static let queueFrozen: UInt8 = 0x40
        public static let autosenseValid: UInt8 = 0x80

        /// The status without the two flag bits.
        public static func code(_ status: UInt8) -> UInt8 { status & ~(autosenseValid | queueFrozen) }
    }

    /// `vmscsi_request.data_in` (`enum storvsc_request_type`).
    public enum DataDirection: UInt8, Sendable {
        case write = 0
        case read = 1
        case none = 2
    }

    /// `SRB_FLAGS_*` bits of the Win8 extension that say the direction.
    public enum SRBFlags {
        public static let disableSynchTransfer: UInt32 = 0x0000_0008
        public static let dataIn: UInt32 = 0x0000_0040
        public static let dataOut: UInt32 = 0x0000_0080
    }

    /// `STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL`.
    public static let supportsMultiChannel: UInt32 = 0x1

    /// `struct vmscsi_request` (52 bytes, packed), the Win8 layout.
    public struct SCSIRequest: Sendable, Equatable {
        public static let size = 52
        /// `cdb` and `sense_data` share these bytes.
        public static let cdbAreaSize = 20
        public static let maxCDBLength = 16

        public var length = UInt16(Self.size)
        public var srbStatus: UInt8 = 0
        public var scsiStatus: UInt8 = 0
        public var port: UInt8 = 0
        public var path: UInt8 = 0
        public var target: UInt8 = 0
        public var lun: UInt8 = 0
        public var cdbLength: UInt8 = 0
        public var senseInfoLength: UInt8 = UInt8(Self.cdbAreaSize)
        public var dataIn = DataDirection.none.rawValue
        public var dataTransferLength: UInt32 = 0
        /// The CDB in a request, the sense data in an answer.
        public var area = [UInt8](repeating: 0, count: Self.cdbAreaSize)
        public var queueTag: UInt8 = 0
        public var queueAction: UInt8 = 0
        public var srbFlags: UInt32 = 0
        public var timeoutSeconds: UInt32 = 0
        public var queueSortKey: UInt32 = 0

        public init() {}

        /// A request the way Linux's storvsc_queuecommand fills it.
        public init(cdb: [UInt8], direction: DataDirection, dataTransferLength: Int, lun: UInt8 = 0) {
            cdbLength = UInt8(cdb.count)
            area.replaceSubrange(0..<cdb.count, with: cdb)
            dataIn = direction.rawValue
            self.dataTransferLength = UInt32(dataTransferLength)
            self.lun = lun
            timeoutSeconds = 60
            srbFlags = SRBFlags.disableSynchTransfer
                | (direction == .read ? SRBFlags.dataIn : direction == .write ? SRBFlags.dataOut : 0)
        }

        /// The CDB bytes the request names (nil when its length is impossible).
        public var cdb: [UInt8]? {
            guard (1...Self.maxCDBLength).contains(Int(cdbLength)) else { return nil }
            return Array(area[0..<Int(cdbLength)])
        }

        /// The sense data an answer carries.
        public var sense: [UInt8] { Array(area[0..<min(Int(senseInfoLength), Self.cdbAreaSize)]) }

        public func encode(into w: inout ByteWriter) {
            w.u16(length); w.u8(srbStatus); w.u8(scsiStatus)
            w.u8(port); w.u8(path); w.u8(target); w.u8(lun)
            w.u8(cdbLength); w.u8(senseInfoLength); w.u8(dataIn); w.u8(0)
            w.u32(dataTransferLength)
            w.raw(area)
            w.u16(0); w.u8(queueTag); w.u8(queueAction)
            w.u32(srbFlags); w.u32(timeoutSeconds); w.u32(queueSortKey)
        }

        public static func decode(_ r: inout ByteReader) throws(ChannelMessage.DecodeError) -> SCSIRequest {
            var s = SCSIRequest()
            s.length = try r.u16(); s.srbStatus = try r.u8(); s.scsiStatus = try r.u8()
            s.port = try r.u8(); s.path = try r.u8(); s.target = try r.u8(); s.lun = try r.u8()
            s.cdbLength = try r.u8(); s.senseInfoLength = try r.u8(); s.dataIn = try r.u8()
            try r.skip(1)
            s.dataTransferLength = try r.u32()
            guard r.remaining >= cdbAreaSize else { throw .init(reason: "vmscsi_request cut short") }
            let at = r.offset
            s.area = Array(r.bytes[at..<at + cdbAreaSize])
            try r.skip(cdbAreaSize + 2)
            s.queueTag = try r.u8(); s.queueAction = try r.u8()
            s.srbFlags = try r.u32(); s.timeoutSeconds = try r.u32(); s.queueSortKey = try r.u32()
            return s
        }
    }

    /// `struct vmstorage_channel_properties` (24 bytes).
    public struct ChannelProperties: Sendable, Equatable {
        public var maxChannelCount: UInt16
        public var flags: UInt32
        public var maxTransferBytes: UInt32

        public init(maxChannelCount: UInt16, flags: UInt32, maxTransferBytes: UInt32) {
            self.maxChannelCount = maxChannelCount
            self.flags = flags
            self.maxTransferBytes = maxTransferBytes
        }
    }

    /// One `vstor_packet`: the header and the union, always 64 bytes.
    public struct Message: Sendable, Equatable {
        public var operation: UInt32
        public var flags: UInt32
        public var status: UInt32
        /// The 52-byte union, raw.
        public var union: [UInt8]

        public init(_ operation: Operation, flags: UInt32 = StorageProtocol.requestCompletionFlag, status: UInt32 = 0,
                    union: [UInt8] = [])
        {
            self.operation = operation.rawValue
            self.flags = flags
            self.status = status
            self.union = union + [UInt8](repeating: 0, count: max(0, SCSIRequest.size - union.count))
        }

        public init(_ operation: Operation, flags: UInt32 = StorageProtocol.requestCompletionFlag, status: UInt32 = 0,
                    body: (inout ByteWriter) -> Void)
        {
            var w = ByteWriter()
            body(&w)
            self.init(operation, flags: flags, status: status, union: w.bytes)
        }

        public static func srb(_ request: SCSIRequest, operation: Operation = .executeSRB,
                               flags: UInt32 = StorageProtocol.requestCompletionFlag) -> Message {
            Message(operation, flags: flags) { request.encode(into: &$0) }
        }

        public static func version(_ version: UInt16) -> Message {
            Message(.queryProtocolVersion) { $0.u16(version); $0.u16(0) }
        }

        public static func properties(_ p: ChannelProperties, status: UInt32 = Status.success) -> Message {
            Message(.completeIO, flags: 0, status: status) {
                $0.u32(0); $0.u16(p.maxChannelCount); $0.u16(0)
                $0.u32(p.flags); $0.u32(p.maxTransferBytes); $0.u64(0)
            }
        }

        public var encoded: [UInt8] {
            var w = ByteWriter()
            w.u32(operation); w.u32(flags); w.u32(status)
            w.raw(Array(union.prefix(SCSIRequest.size)))
            return w.bytes
        }

        /// Decodes a packet payload; it must hold a whole `vstor_packet`.
        public static func decode(_ payload: [UInt8]) throws(ChannelMessage.DecodeError) -> Message {
            var r = ByteReader(payload)
            let operation = try r.u32(), flags = try r.u32(), status = try r.u32()
            guard r.remaining >= SCSIRequest.size else { throw .init(reason: "vstor_packet of \(payload.count) bytes; it is \(packetSize)") }
            var m = Message(.completeIO, flags: flags, status: status, union: Array(payload[unionOffset..<packetSize]))
            m.operation = operation
            return m
        }

        public var knownOperation: Operation? { Operation(rawValue: operation) }

        /// The same union as a successful COMPLETE_IO answer.
        public func answered(status: UInt32 = Status.success) -> Message {
            Message(.completeIO, flags: 0, status: status, union: union)
        }

        public func srbRequest() throws(ChannelMessage.DecodeError) -> SCSIRequest {
            var r = ByteReader(union)
            return try SCSIRequest.decode(&r)
        }

        /// `version.major_minor`.
        public var versionNumber: UInt16 { UInt16(union[0]) | UInt16(union[1]) << 8 }

        public func channelProperties() throws(ChannelMessage.DecodeError) -> ChannelProperties {
            var r = ByteReader(union)
            try r.skip(4)
            let count = try r.u16()
            try r.skip(2)
            let flags = try r.u32()
            return ChannelProperties(maxChannelCount: count, flags: flags, maxTransferBytes: try r.u32())
        }
    }
}
