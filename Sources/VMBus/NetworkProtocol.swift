import Foundation

/// The network channel's wire format, as Hyper-V's NetVSP and Linux's
/// netvsc speak it (`drivers/net/hyperv/hyperv_net.h`): NVSP messages on the
/// channel, RNDIS messages inside them. Shared by the root's VSP and the
/// guest's VSC.
///
/// NVSP: INIT {min, max} -> INIT_COMPLETE {version, max MDL chain, status};
/// from version 2 the guest sends SEND_NDIS_CONFIG and SEND_NDIS_VERSION
/// (no answers); then SEND_RECV_BUF (101, GPADL, id 0xCAFE) -> 102 with one
/// section, and SEND_SEND_BUF (104, GPADL, id 0) -> 105 with the section
/// size. RNDIS messages to the root travel in SEND_RNDIS_PKT (107: channel
/// type, send-buffer section or 0xFFFFFFFF with a GPA_DIRECT page list,
/// size), answered by SEND_RNDIS_PKT_COMPLETE (108). RNDIS messages to the
/// guest (frames, control answers, status indications) arrive as
/// TRANSFER_PAGES packets naming receive-buffer ranges, one message per
/// range; the guest's completion (108, same transaction id) returns them.
/// Every NVSP message is sent padded to 32 bytes: Hyper-V does not answer
/// shorter ones (FreeBSD's and OpenBSD's hn drivers document this); the VSP
/// accepts any length that holds the fields a message needs.
public enum NetworkProtocol {
    public static let interfaceType = UUID(uuidString: "F8615163-DF3E-46C5-913F-F2D2F965ED0E")!

    /// NVSP message types.
    public enum Message: UInt32, Sendable {
        case initialize = 1
        case initializeComplete = 2
        case sendNDISVersion = 100
        case sendReceiveBuffer = 101
        case sendReceiveBufferComplete = 102
        case revokeReceiveBuffer = 103
        case sendSendBuffer = 104
        case sendSendBufferComplete = 105
        case revokeSendBuffer = 106
        case sendRNDISPacket = 107
        case sendRNDISPacketComplete = 108
        case sendNDISConfig = 125
    }

    /// `NVSP_STAT_*`.
    public enum Status {
        public static let success: UInt32 = 1
        public static let failure: UInt32 = 2
        public static let protocolTooNew: UInt32 = 3
        public static let protocolTooOld: UInt32 = 4
        public static let invalidRNDISPacket: UInt32 = 5
        public static let busy: UInt32 = 6
    }

    /// `NVSP_PROTOCOL_VERSION_*`.
    public enum Version {
        public static let v1: UInt32 = 0x2
        public static let v2: UInt32 = 0x3_0002
        public static let v4: UInt32 = 0x4_0000
        public static let v5: UInt32 = 0x5_0000
        public static let v6: UInt32 = 0x6_0000
        public static let v61: UInt32 = 0x6_0001
    }

    /// Versions the root serves, newest first.
    public static let hostVersions: [UInt32] = [Version.v61, Version.v6, Version.v5, Version.v4, Version.v2]
    /// Versions a guest offers one at a time (min = max), newest first, as Linux does.
    public static let guestVersions: [UInt32] = [Version.v61, Version.v6, Version.v5, Version.v4, Version.v2, Version.v1]

    /// The size NVSP messages are padded to (the smallest Hyper-V answers).
    public static let messageSize = 32
    /// `NETVSC_RECEIVE_BUFFER_ID` and `NETVSC_SEND_BUFFER_ID`.
    public static let receiveBufferID: UInt16 = 0xCAFE
    public static let sendBufferID: UInt16 = 0
    /// `send_buf_section_index` when the RNDIS message is in a page list instead.
    public static let noSection: UInt32 = 0xFFFF_FFFF
    /// SEND_RNDIS_PKT channel types.
    public static let dataChannel: UInt32 = 0
    public static let controlChannel: UInt32 = 1
    /// Receive-buffer sections the root cuts (an RNDIS header and a full frame fit).
    public static let sectionSize = 2048
    /// Send-buffer sections (`NETVSC_SEND_SECTION_SIZE`, what Hyper-V answers).
    public static let sendSectionSize = 6144

    /// A receive-buffer range named in a TRANSFER_PAGES packet.
    public typealias Range = Packet.TransferPages.Range

    /// An NVSP message: the type, `body`, zero padding to `messageSize`.
    public static func encode(_ message: Message, _ body: (inout ByteWriter) -> Void = { _ in }) -> [UInt8] {
        var w = ByteWriter()
        w.u32(message.rawValue)
        body(&w)
        return w.bytes + [UInt8](repeating: 0, count: max(0, messageSize - w.bytes.count))
    }

    /// The transfer-page set id of the receive buffer (what Linux's netvsc
    /// and Hyper-V use: NETVSC_RECEIVE_BUFFER_ID).
    public static let receivePageSetID: UInt16 = receiveBufferID

    /// A TRANSFER_PAGES packet for frames in the receive buffer: the ranges
    /// go in the packet header; the payload is NVSP's SEND_RNDIS_PKT (data
    /// channel, no send-buffer section: 0xFFFFFFFF, size 0).
    public static func transferPacket(_ ranges: [Range], transactionID: UInt64, pageSetID: UInt16 = receivePageSetID) -> Packet {
        Packet(kind: .transferPages, flags: Packet.completionRequested, transactionID: transactionID,
               transfer: .init(pageSetID: pageSetID, ranges: ranges),
               payload: encode(.sendRNDISPacket) { w in
                   w.u32(dataChannel)
                   w.u32(noSection)
                   w.u32(0)
               })
    }

    /// The ranges a TRANSFER_PAGES packet names, if it is one of ours.
    public static func transferRanges(_ packet: Packet, pageSetID: UInt16 = receivePageSetID) throws(ChannelMessage.DecodeError) -> [Range] {
        var r = ByteReader(packet.payload)
        guard try r.u32() == Message.sendRNDISPacket.rawValue else { throw .init(reason: "transfer packet of the wrong type") }
        guard let transfer = packet.transfer, transfer.pageSetID == pageSetID else {
            throw .init(reason: "transfer packet for page set \(packet.transfer?.pageSetID ?? 0), not the receive buffer's")
        }
        return transfer.ranges
    }
}
