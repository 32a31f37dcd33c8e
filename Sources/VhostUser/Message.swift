import Glibc

/// One vhost-user message (QEMU's docs/interop/vhost-user.rst): a 12-byte
/// header — request, flags, payload size — then the payload, with file
/// descriptors passed alongside (SCM_RIGHTS). Little-endian.
public struct VhostUserMessage: Equatable, Sendable {
    /// Front-end requests this back-end understands.
    public enum Request: UInt32, Sendable {
        case getFeatures = 1, setFeatures = 2, setOwner = 3, resetOwner = 4, setMemTable = 5
        case setLogBase = 6, setLogFD = 7, setVringNum = 8, setVringAddr = 9, setVringBase = 10
        case getVringBase = 11, setVringKick = 12, setVringCall = 13, setVringErr = 14
        case getProtocolFeatures = 15, setProtocolFeatures = 16, getQueueNum = 17, setVringEnable = 18
        case getConfig = 24, setConfig = 25
    }

    public static let headerSize = 12
    /// Largest payload taken (a full memory table is 8 + 8 × 32 bytes;
    /// GET_CONFIG carries up to 256 bytes of config space).
    public static let maxPayload = 4096
    /// Flags: version 1 in bits 0–1, REPLY (bit 2), NEED_REPLY (bit 3).
    public static let version: UInt32 = 0x1, replyFlag: UInt32 = 0x4, needReplyFlag: UInt32 = 0x8

    public var request: UInt32
    public var flags: UInt32
    public var payload: [UInt8]

    public init(request: UInt32, flags: UInt32 = VhostUserMessage.version, payload: [UInt8] = []) {
        self.request = request
        self.flags = flags
        self.payload = payload
    }

    public var needsReply: Bool { flags & Self.needReplyFlag != 0 }

    /// The header's payload size, after checking the header itself.
    public static func payloadSize(ofHeader header: [UInt8]) throws(VhostUserError) -> Int {
        guard header.count == headerSize else { throw .truncated(expected: headerSize, got: header.count) }
        let flags = u32(header, 4), size = Int(u32(header, 8))
        guard flags & 0x3 == version else { throw .badVersion(flags: flags) }
        guard size <= maxPayload else { throw .payloadTooLarge(size) }
        return size
    }

    /// A message from its header and payload.
    public static func decode(header: [UInt8], payload: [UInt8]) throws(VhostUserError) -> VhostUserMessage {
        let size = try payloadSize(ofHeader: header)
        guard payload.count == size else { throw .truncated(expected: size, got: payload.count) }
        return VhostUserMessage(request: u32(header, 0), flags: u32(header, 4), payload: payload)
    }

    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.headerSize + payload.count)
        for v in [request, flags, UInt32(payload.count)] { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        return out + payload
    }

    /// A reply to `self` with `payload`.
    public func reply(_ payload: [UInt8]) -> VhostUserMessage {
        VhostUserMessage(request: request, flags: Self.version | Self.replyFlag, payload: payload)
    }

    static func u32(_ b: [UInt8], _ o: Int) -> UInt32 { b.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt32.self)) } }
    static func u64(_ b: [UInt8], _ o: Int) -> UInt64 { b.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt64.self)) } }
    static func bytes(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
}

/// Why a front-end's message was refused: one case per failure. The
/// back-end logs it and stops serving that front-end; the root goes on.
public enum VhostUserError: Error, Equatable, CustomStringConvertible, Sendable {
    case truncated(expected: Int, got: Int)
    case badVersion(flags: UInt32)
    case payloadTooLarge(Int)
    case unknownRequest(UInt32)
    /// The payload is not the size this request's layout has.
    case badPayload(request: String, size: Int)
    /// Descriptors sent with a request that takes none, or too many / few.
    case fileDescriptors(request: String, expected: String, got: Int)
    /// A request that needs state not yet set up (e.g. a ring address
    /// before the memory table).
    case outOfOrder(request: String, missing: String)
    case queueIndex(UInt32, queues: Int)
    case features(String)
    case memoryTable(MemoryTableError)
    case queue(index: Int, VirtqueueError)
    case config(offset: UInt32, size: UInt32)
    /// The device could not start serving a queue (the root ran out of a
    /// resource, e.g. descriptors); errno says which.
    case deviceStart(queue: Int, errno: Int32)

    public var description: String {
        switch self {
        case .truncated(let expected, let got): "message truncated: \(got) of \(expected) bytes"
        case .badVersion(let flags): "header flags 0x\(String(flags, radix: 16)) do not say version 1"
        case .payloadTooLarge(let size): "payload of \(size) bytes is over \(VhostUserMessage.maxPayload)"
        case .unknownRequest(let r): "unknown request \(r)"
        case .badPayload(let request, let size): "\(request) with a \(size)-byte payload"
        case .fileDescriptors(let request, let expected, let got): "\(request) came with \(got) file descriptor(s), expected \(expected)"
        case .outOfOrder(let request, let missing): "\(request) before \(missing)"
        case .queueIndex(let i, let queues): "queue \(i) does not exist (the device has \(queues))"
        case .features(let what): "features: \(what)"
        case .memoryTable(let error): "memory table: \(error)"
        case .queue(let index, let error): "queue \(index): \(error)"
        case .config(let offset, let size): "config access at \(offset)+\(size) is outside config space"
        case .deviceStart(let queue, let errno): "queue \(queue) could not start: \(String(cString: strerror(errno)))"
        }
    }
}
