/// What a child did that breaks a device protocol on its channel: one case
/// per failure, each with the values that were wrong. The root closes the
/// channel (and rescinds the offer) with it as the reason.
public enum ProtocolViolation: Error, Equatable, CustomStringConvertible, Sendable {
    /// A packet of a kind this channel never takes.
    case unexpectedPacket(Packet.Kind, channel: String)
    case completionNotRequested(transaction: UInt64)
    /// A completion for a transaction the root never sent or already saw completed.
    case unknownCompletion(transaction: UInt64)
    /// A message too short for what it claims to be.
    case truncated(String)
    case unknownOperation(String)
    /// A message sent in a state where it is not allowed.
    case outOfOrder(String, state: String)
    /// An operation that takes no GPA ranges came with some, or one that needs them came without.
    case rangesMismatch(String)
    case transactionReused(UInt64)
    case tooManyOutstanding(limit: Int)
    /// A data range naming pages that are not the child's own memory.
    case rangeOutsideChildMemory(gpa: UInt64, length: UInt32)
    /// An SRB whose data length is not what its page list covers.
    case dataLengthMismatch(srb: UInt32, pageList: Int)
    /// An SRB whose CDB length is 0 or more than 16 bytes.
    case badCDBLength(UInt8)
    /// A network send section beyond the send buffer.
    case sendSectionOutside(index: UInt32)
    /// The ring itself was corrupt.
    case ring(RingError)
    /// The channel's device is not served (the provider refuses everything).
    case notServed(String)

    public var description: String {
        switch self {
        case .unexpectedPacket(let kind, let channel): "unexpected \(kind) packet on the \(channel) channel"
        case .completionNotRequested(let id): "request \(id) does not ask for a completion"
        case .unknownCompletion(let id): "completion for transaction \(id), which was never sent or already completed"
        case .truncated(let what): "truncated \(what)"
        case .unknownOperation(let what): "unknown \(what)"
        case .outOfOrder(let what, let state): "\(what) is not valid during \(state)"
        case .rangesMismatch(let what): what
        case .transactionReused(let id): "transaction id \(id) reused while still outstanding"
        case .tooManyOutstanding(let limit): "more than \(limit) requests outstanding"
        case .rangeOutsideChildMemory(let gpa, let length): "GPA range 0x\(String(gpa, radix: 16))+\(length) is not the child's memory"
        case .dataLengthMismatch(let srb, let pageList): "SRB data_transfer_length \(srb) disagrees with its page list of \(pageList) bytes"
        case .badCDBLength(let length): "SRB cdb_length \(length) is not 1 to 16"
        case .sendSectionOutside(let index): "send section \(index) is outside the send buffer"
        case .ring(let error): "ring: \(error)"
        case .notServed(let reason): reason
        }
    }

    /// The description, for callers that log it.
    public var reason: String { description }
}

/// Why the root closed a channel.
public enum ChannelCloseCause: Equatable, CustomStringConvertible, Sendable {
    /// The child broke the protocol.
    case violation(ProtocolViolation)
    /// The root withdrew the offer.
    case rescinded
    /// The child tore down the ring's GPADL while the channel was open.
    case gpadlTornDown(UInt32)
    /// The root could not write the child's inbound ring.
    case inboundRing(RingError)

    public var description: String {
        switch self {
        case .violation(let violation): violation.description
        case .rescinded: "offer rescinded by the root"
        case .gpadlTornDown(let gpadl): "GPADL \(gpadl) torn down while its channel was open"
        case .inboundRing(let error): "inbound ring: \(error)"
        }
    }
}
