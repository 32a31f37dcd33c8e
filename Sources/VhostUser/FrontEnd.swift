import CSystemShims
import Foundation
import Glibc
import Machine

/// The front-end (VMM) side of the vhost-user protocol, as QEMU plays it:
/// connect, negotiate features, hand over the guest's memory and set up
/// rings. For the bench's in-process "VMM" and for tests; a real VM's
/// front-end is QEMU itself.
public final class VhostUserFrontEnd {
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// One region of guest memory handed over with SET_MEM_TABLE: all of a
    /// memory file, which the region keeps open until the table is sent.
    public struct Region: Sendable {
        public let memory: PhysicalMemory
        public let guestAddress: UInt64
        /// Where the front-end maps it (the address rings are given in).
        public let userAddress: UInt64

        public init(_ memory: PhysicalMemory, at guestAddress: UInt64, mappedAt userAddress: UInt64) {
            self.memory = memory
            self.guestAddress = guestAddress
            self.userAddress = userAddress
        }
    }

    private let socket: Int32
    /// REPLY_ACK is in force (only once SET_PROTOCOL_FEATURES agreed it).
    private var acknowledged = false
    public private(set) var features: UInt64 = 0

    public init(path: String) throws(Failure) {
        socket = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        guard path.utf8.count < MemoryLayout.size(ofValue: address.sun_path) else { throw Failure(description: "\(path): too long for a Unix socket") }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(socket, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            let reason = String(cString: strerror(errno))
            _ = close(socket)
            throw Failure(description: "connect \(path): \(reason)")
        }
    }

    deinit { _ = close(socket) }

    /// GET_FEATURES, then SET_FEATURES with what both sides have of
    /// `wanted` (plus the protocol-features bit), then REPLY_ACK and SET_OWNER.
    @discardableResult
    public func negotiate(wanted: UInt64) throws(Failure) -> UInt64 {
        let offered = Self.u64(try request(.getFeatures)?.payload ?? [])
        features = offered & (wanted | VhostUserBackend.protocolFeaturesBit)
        try request(.setFeatures, Self.bytes(features))
        if features & VhostUserBackend.protocolFeaturesBit != 0 {
            let offeredProtocol = Self.u64(try request(.getProtocolFeatures)?.payload ?? [])
            try request(.setProtocolFeatures, Self.bytes(offeredProtocol & VhostUserBackend.ProtocolFeature.replyAck.bit))
            acknowledged = offeredProtocol & VhostUserBackend.ProtocolFeature.replyAck.bit != 0
        }
        try request(.setOwner)
        return features
    }

    public func setMemoryTable(_ regions: [Region]) throws(Failure) {
        var payload = Self.bytes(UInt32(regions.count)) + Self.bytes(UInt32(0))
        for r in regions { payload += Self.bytes(r.guestAddress) + Self.bytes(UInt64(r.memory.size)) + Self.bytes(r.userAddress) + Self.bytes(UInt64(0)) }
        try request(.setMemTable, payload, fds: regions.map(\.memory.fileDescriptor))
    }

    /// Sets up ring `index` (addresses as the front-end maps them) with its
    /// doorbells, and enables it.
    public func setUpRing(_ index: Int, size: Int, descriptors: UInt64, avail: UInt64, used: UInt64, kick: Int32, call: Int32) throws(Failure) {
        let i = UInt32(index)
        try request(.setVringNum, Self.bytes(i) + Self.bytes(UInt32(size)))
        try request(.setVringBase, Self.bytes(i) + Self.bytes(UInt32(0)))
        try request(.setVringAddr, Self.bytes(i) + Self.bytes(UInt32(0)) + Self.bytes(descriptors) + Self.bytes(used) + Self.bytes(avail) + Self.bytes(UInt64(0)))
        try request(.setVringKick, Self.bytes(UInt64(index)), fds: [kick])
        try request(.setVringCall, Self.bytes(UInt64(index)), fds: [call])
        if features & VhostUserBackend.protocolFeaturesBit != 0 { try request(.setVringEnable, Self.bytes(i) + Self.bytes(UInt32(1))) }
    }

    /// Sends a message and returns its reply: a GET's answer, or the
    /// acknowledgement every other message asks for once REPLY_ACK is in force.
    @discardableResult
    public func request(_ request: VhostUserMessage.Request, _ payload: [UInt8] = [], fds: [Int32] = []) throws(Failure) -> VhostUserMessage? {
        let isGet = [.getFeatures, .getProtocolFeatures, .getQueueNum, .getVringBase, .getConfig].contains(request)
        let needsAck = !isGet && acknowledged
        let flags = VhostUserMessage.version | (needsAck ? VhostUserMessage.needReplyFlag : 0)
        guard VhostUserConnection.send(socket, VhostUserMessage(request: request.rawValue, flags: flags, payload: payload), fds: fds) else {
            throw Failure(description: "\(request): the back-end closed the socket")
        }
        guard isGet || needsAck else { return nil }
        var header = [UInt8](repeating: 0, count: VhostUserMessage.headerSize)
        try readExactly(&header)
        let size: Int
        do { size = try VhostUserMessage.payloadSize(ofHeader: header) } catch { throw Failure(description: "\(request): a bad reply header: \(error)") }
        var body = [UInt8](repeating: 0, count: size)
        try readExactly(&body)
        let reply: VhostUserMessage
        do { reply = try VhostUserMessage.decode(header: header, payload: body) } catch { throw Failure(description: "\(request): a bad reply: \(error)") }
        if needsAck && Self.u64(reply.payload) != 0 { throw Failure(description: "\(request): the back-end answered \(Self.u64(reply.payload))") }
        return reply
    }

    /// Sends `payload` under `request`'s header with `fds`, expecting
    /// nothing back; `size` overrides the header's payload size (a hostile
    /// front-end's lie).
    public func sendRaw(_ request: UInt32, _ payload: [UInt8] = [], fds: [Int32] = [], size: UInt32? = nil) {
        var message = VhostUserMessage(request: request, flags: VhostUserMessage.version, payload: payload).encoded()
        if let size { message.replaceSubrange(8..<12, with: Self.bytes(size)) }
        _ = message.withUnsafeBytes { oy_shim_send_fds(socket, $0.baseAddress, $0.count, fds, Int32(fds.count)) }
    }

    /// Whether the back-end closed the connection within `timeout` ms.
    public func closedByBackEnd(timeout: Int32 = 10_000) -> Bool {
        var fd = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        guard poll(&fd, 1, timeout) == 1 else { return false }
        var byte: UInt8 = 0
        return Glibc.recv(socket, &byte, 1, Int32(MSG_PEEK)) == 0 || fd.revents & Int16(POLLHUP) != 0
    }

    private func readExactly(_ buffer: inout [UInt8]) throws(Failure) {
        var offset = 0
        while offset < buffer.count {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(socket, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure(description: "the back-end closed the socket mid-reply") }
            offset += n
        }
    }

    public static func bytes<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    public static func u64(_ b: [UInt8]) -> UInt64 { b.prefix(8).enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * $1.offset) } }
}
