import Hypervisor

/// The SynIC ports and connections VMBus uses, agreed by both sides.
/// The root creates all of them (only it may) when a child is attached.
public enum Topology {
    /// SINT carrying VMBus control messages, on both sides.
    public static let messageSINT = 2
    /// SINT carrying channel events on the root (children's flags, one
    /// range of `channelsPerChild` per child).
    public static let rootEventSINT = 3
    /// SINT carrying channel events in a child (flag = relid).
    public static let childEventSINT = 2
    /// Channels one child may have; relids are 1..<channelsPerChild.
    public static let channelsPerChild = 64
    /// Children one root event SINT can tell apart.
    public static let maxChildren = 2048 / channelsPerChild

    // Ports in the child.
    public static let childMessagePort: UInt32 = 1
    public static let childEventPort: UInt32 = 2
    // The child's connections to the root.
    /// Where a guest posts VMBus messages: VMBUS_MESSAGE_CONNECTION_ID (1)
    /// before version 5.0; from 5.0, INITIATE_CONTACT goes to
    /// VMBUS_MESSAGE_CONNECTION_ID_4 and the version response names the
    /// connection to use afterwards.
    public static let childMessageConnection: UInt32 = 1
    public static let childMessageConnectionV5: UInt32 = 4

    /// The connection a guest asking for `version` starts with.
    public static func contactConnection(for version: UInt32) -> UInt32 {
        version >= 0x0005_0000 ? childMessageConnectionV5 : childMessageConnection
    }
    /// The connection a channel's guest signals the root on (the offer's
    /// `connection_id`; the guest signals it with flag 0, as Linux's
    /// `vmbus_set_event` does with `sig_event`).
    public static func channelEventConnection(relid: UInt32) -> UInt32 { 0x0001_0000 + relid }

    // Ports in the root and the root's connections to a child, by slot.
    public static func rootMessagePort(slot: Int) -> UInt32 { 0x1000 + UInt32(slot) }
    /// The root's event port for one channel: one flag, the channel's bit
    /// (slot × channelsPerChild + relid) in the root's event SINT.
    public static func rootChannelEventPort(slot: Int, relid: UInt32) -> UInt32 {
        0x0010_0000 + UInt32(slot * channelsPerChild) + relid
    }
    public static func rootMessageConnection(slot: Int) -> UInt32 { 0x3000 + UInt32(slot) }
    public static func rootEventConnection(slot: Int) -> UInt32 { 0x4000 + UInt32(slot) }

    /// VMBus protocol versions (major << 16 | minor) the root accepts, newest
    /// first, as Hyper-V does: 5.3, 5.2, 5.1, 5.0 and 4.0 (Linux tries the
    /// newest first).
    public static let hostVersions: [UInt32] = [0x0005_0003, 0x0005_0002, 0x0005_0001, 0x0005_0000, 0x0004_0000]
}

/// Status in GPADL_CREATED and OPENCHANNEL_RESULT: 0 success.
public enum ChannelStatus {
    public static let success: UInt32 = 0
    public static let refused: UInt32 = 0xC000_0001
}
