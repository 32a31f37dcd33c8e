import Glibc
import Machine

/// What a vhost-user device (blk, net) adds to the generic protocol.
public protocol VhostUserDevice: AnyObject {
    /// Virtio device features offered (the back-end adds the transport's).
    var deviceFeatures: UInt64 { get }
    var queueCount: Int { get }
    /// The device's virtio config space.
    func configSpace() -> [UInt8]
    /// Queue `index` is ready: serve it (kick is the driver's doorbell,
    /// call the interrupt to raise, either -1 when the front-end polls).
    /// Throws `.deviceStart` when the root lacks what serving it takes.
    func start(queue index: Int, _ queue: SplitVirtqueue, kick: Int32, call: Int32) throws(VhostUserError)
    /// Stop serving queue `index` and return when nothing touches it.
    func stop(queue index: Int)
    /// Whether the VMM reads config space from the back-end (GET_CONFIG).
    var configSpaceFromBackEnd: Bool { get }
}

extension VhostUserDevice {
    public var configSpaceFromBackEnd: Bool { true }
}

/// The generic half of a vhost-user back-end: feature and protocol-feature
/// negotiation, the memory table, ring setup, kick and call descriptors, and
/// config space. It is driven message by message (`handle`), so a test or a
/// fuzzer can play a front-end without a socket or a VMM; every message is
/// validated before it changes anything.
public final class VhostUserBackend: @unchecked Sendable {
    // @unchecked Sendable: handed to the one connection thread that drives
    // it; it is never used from two threads at once.
    public enum ProtocolFeature: UInt64 { case mq = 0, replyAck = 3, config = 9 }
    public static let protocolFeaturesBit: UInt64 = 1 << 30
    /// Transport features every device here has: VERSION_1, EVENT_IDX, INDIRECT_DESC.
    public static let transportFeatures: UInt64 = 1 << 32 | 1 << 29 | 1 << 28
    static let eventIndexBit: UInt64 = 1 << 29
    /// VHOST_USER_MAX_CONFIG_SIZE: the most config space a message carries.
    static let configLimit = 256

    private struct QueueState {
        var size = 0
        var descriptor: UInt64?, used: UInt64?, avail: UInt64?
        var base: UInt16 = 0
        var kick: Int32 = -1, call: Int32 = -1
        /// The running ring, while the device serves it.
        var ring: SplitVirtqueue?
        var enabled = false
    }

    public let device: any VhostUserDevice
    private var owner = false
    private var features: UInt64 = 0
    private var protocolFeatures: UInt64 = 0
    private var memory: GuestMemoryMap?
    private var queues: [QueueState]

    public init(device: any VhostUserDevice) {
        self.device = device
        queues = Array(repeating: QueueState(), count: device.queueCount)
    }

    deinit {
        for i in queues.indices { stopQueue(i) }
        for q in queues { closeFD(q.kick); closeFD(q.call) }
    }

    public var offeredFeatures: UInt64 { device.deviceFeatures | Self.transportFeatures | Self.protocolFeaturesBit }
    /// MQ and REPLY_ACK always; CONFIG when the device's config space is
    /// the back-end's to give (a NIC's is QEMU's: it sets the MAC itself).
    public var offeredProtocolFeatures: UInt64 {
        device.configSpaceFromBackEnd ? ProtocolFeature.allBits : ProtocolFeature.allBits & ~ProtocolFeature.config.bit
    }

    /// Handles one message with the descriptors that came with it (taken
    /// over: kept or closed). Returns the reply to send, if any.
    public func handle(_ message: VhostUserMessage, fds: [Int32]) throws(VhostUserError) -> VhostUserMessage? {
        var unused = fds
        defer { for fd in unused { closeFD(fd) } }
        guard let request = VhostUserMessage.Request(rawValue: message.request) else { throw .unknownRequest(message.request) }
        let name = "\(request)"
        let p = message.payload
        if let shape = Self.fixedShape(of: request) {
            guard fds.count == shape.fds else { throw .fileDescriptors(request: name, expected: "\(shape.fds)", got: fds.count) }
            if let size = shape.payload, p.count != size { throw .badPayload(request: name, size: p.count) }
        }
        var reply: [UInt8]?
        switch request {
        case .getFeatures:
            reply = VhostUserMessage.bytes(offeredFeatures)
        case .setFeatures:
            features = try Self.acknowledged(p, offered: offeredFeatures, what: "")
        case .getProtocolFeatures:
            reply = VhostUserMessage.bytes(offeredProtocolFeatures)
        case .setProtocolFeatures:
            protocolFeatures = try Self.acknowledged(p, offered: offeredProtocolFeatures, what: "protocol features ")
        case .setOwner:
            owner = true
        case .resetOwner:
            for i in queues.indices { stopQueue(i) }
            owner = false
        case .getQueueNum:
            reply = VhostUserMessage.bytes(UInt64(queues.count))
        case .setMemTable:
            unused = []  // mapped (or refused), and closed, there
            try setMemTable(p, fds: fds)
        case .setVringNum, .setVringBase, .setVringEnable, .getVringBase, .setVringAddr, .setVringKick, .setVringCall, .setVringErr:
            unused = []  // the ring handler keeps or closes them
            reply = try ringRequest(request, p, fds: fds)
        case .getConfig:
            guard p.count >= 12 else { throw .badPayload(request: name, size: p.count) }
            let offset = VhostUserMessage.u32(p, 0), size = VhostUserMessage.u32(p, 4)
            // A VMM asks for its own idea of the config struct's size (newer
            // headers have more fields): what the device does not define reads
            // as zero, up to the protocol's limit.
            var config = device.configSpace()
            guard p.count == 12 + Int(size), UInt64(offset) + UInt64(size) <= UInt64(Self.configLimit) else { throw .config(offset: offset, size: size) }
            config += [UInt8](repeating: 0, count: max(0, Self.configLimit - config.count))
            reply = Array(p[0..<12]) + Array(config[Int(offset)..<Int(offset + size)])
        case .setConfig:
            break  // Config space here is read-only (capacity, MAC): accepted, ignored.
        case .setLogBase, .setLogFD:
            throw .features("dirty logging was not offered")
        }
        if let reply { return message.reply(reply) }
        if message.needsReply && protocolFeatures & ProtocolFeature.replyAck.bit != 0 { return message.reply(VhostUserMessage.bytes(0)) }
        return nil
    }

    /// The ring requests: size, base, enable, addresses, kick/call/err
    /// descriptors. Takes over `fds` (kept or closed).
    private func ringRequest(_ request: VhostUserMessage.Request, _ p: [UInt8], fds: [Int32]) throws(VhostUserError) -> [UInt8]? {
        var unused = fds
        defer { for fd in unused { closeFD(fd) } }
        let name = "\(request)"
        var reply: [UInt8]?
        switch request {
        case .setVringNum, .setVringBase, .setVringEnable:
            try vringState(request, index: VhostUserMessage.u32(p, 0), value: VhostUserMessage.u32(p, 4))
        case .getVringBase:
            let index = try queueIndex(VhostUserMessage.u32(p, 0))
            stopQueue(index)
            reply = Array(p[0..<4]) + withUnsafeBytes(of: UInt32(queues[index].base).littleEndian) { Array($0) }
        case .setVringAddr:
            guard memory != nil else { throw .outOfOrder(request: name, missing: "SET_MEM_TABLE") }
            let index = try queueIndex(VhostUserMessage.u32(p, 0))
            queues[index].descriptor = VhostUserMessage.u64(p, 8)
            queues[index].used = VhostUserMessage.u64(p, 16)
            queues[index].avail = VhostUserMessage.u64(p, 24)
        case .setVringKick, .setVringCall, .setVringErr:
            guard p.count == 8 else { throw .badPayload(request: name, size: p.count) }
            let value = VhostUserMessage.u64(p, 0)
            let polling = value & 0x100 != 0
            guard fds.count == (polling ? 0 : 1) else { throw .fileDescriptors(request: name, expected: polling ? "0" : "1", got: fds.count) }
            let index = try queueIndex(UInt32(value & 0xFF))
            let fd = polling ? -1 : fds[0]
            unused = []
            if request == .setVringKick || request == .setVringCall {
                // The device thread waits on these: stop it before the old
                // descriptor is closed (its number may be reused at once).
                stopQueue(index)
                if request == .setVringKick {
                    closeFD(queues[index].kick)
                    queues[index].kick = fd
                } else {
                    closeFD(queues[index].call)
                    queues[index].call = fd
                }
                try startIfReady(index)
            } else {
                closeFD(fd)
            }
        default:
            break
        }
        return reply
    }

    /// The feature bits a SET_(PROTOCOL_)FEATURES payload acknowledges, when
    /// all of them were offered.
    private static func acknowledged(_ p: [UInt8], offered: UInt64, what: String) throws(VhostUserError) -> UInt64 {
        let wanted = VhostUserMessage.u64(p, 0)
        guard wanted & ~offered == 0 else { throw .features("the front-end acked \(what)0x\(String(wanted & ~offered, radix: 16)), never offered") }
        return wanted
    }

    /// The descriptors a request carries and its payload size, where the
    /// request alone fixes them (nil payload: checked by its handler). Nil
    /// for SET_MEM_TABLE, the kick/call/err descriptors (their count depends
    /// on the payload) and the refused dirty-log requests.
    private static func fixedShape(of request: VhostUserMessage.Request) -> (fds: Int, payload: Int?)? {
        switch request {
        case .getFeatures, .getProtocolFeatures, .setOwner, .resetOwner, .getQueueNum, .getConfig, .setConfig: (0, nil)
        case .setFeatures, .setProtocolFeatures, .setVringNum, .setVringBase, .setVringEnable, .getVringBase: (0, 8)
        case .setVringAddr: (0, 40)
        case .setMemTable, .setVringKick, .setVringCall, .setVringErr, .setLogBase, .setLogFD: nil
        }
    }

    private func queueIndex(_ index: UInt32) throws(VhostUserError) -> Int {
        guard Int(index) < queues.count else { throw .queueIndex(index, queues: queues.count) }
        return Int(index)
    }

    private func vringState(_ request: VhostUserMessage.Request, index raw: UInt32, value: UInt32) throws(VhostUserError) {
        let index = try queueIndex(raw)
        switch request {
        case .setVringNum:
            guard value >= 1, value <= 32768, value & (value - 1) == 0 else { throw .queue(index: index, .badSize(Int(value))) }
            queues[index].size = Int(value)
        case .setVringBase:
            guard value <= 0xFFFF else { throw .badPayload(request: "setVringBase", size: 8) }
            queues[index].base = UInt16(value)
        default:
            queues[index].enabled = value != 0
            if value == 0 { stopQueue(index) } else { try startIfReady(index) }
        }
    }

    private func setMemTable(_ p: [UInt8], fds: [Int32]) throws(VhostUserError) {
        defer { for fd in fds { closeFD(fd) } }
        guard p.count >= 8 else { throw .badPayload(request: "setMemTable", size: p.count) }
        let count = Int(VhostUserMessage.u32(p, 0))
        guard count <= GuestMemoryMap.regionLimit, p.count == 8 + 32 * count else { throw .badPayload(request: "setMemTable", size: p.count) }
        guard fds.count == count else { throw .fileDescriptors(request: "setMemTable", expected: "\(count) (one per region)", got: fds.count) }
        let table = (0..<count).map { i in
            GuestMemoryMap.Description(guestAddress: VhostUserMessage.u64(p, 8 + 32 * i), size: VhostUserMessage.u64(p, 16 + 32 * i),
                                       userAddress: VhostUserMessage.u64(p, 24 + 32 * i), mmapOffset: VhostUserMessage.u64(p, 32 + 32 * i),
                                       fileDescriptor: fds[i])
        }
        let map: GuestMemoryMap
        do { map = try GuestMemoryMap(table) } catch { throw .memoryTable(error) }
        // Rings set up on the old table must be set up again.
        for i in queues.indices { stopQueue(i) }
        memory = map
    }

    /// Starts queue `index` once it has a size, addresses and a kick
    /// descriptor, and (with protocol features) was enabled.
    private func startIfReady(_ index: Int) throws(VhostUserError) {
        let q = queues[index]
        let needsEnable = features & Self.protocolFeaturesBit != 0
        guard q.ring == nil, q.size > 0, q.kick >= 0, !needsEnable || q.enabled, let memory,
            let d = q.descriptor, let u = q.used, let a = q.avail
        else { return }
        guard let table = memory.guestAddress(ofUser: d, length: 16 * q.size) else { throw .queue(index: index, .ringOutsideMemory("descriptor table")) }
        guard let avail = memory.guestAddress(ofUser: a, length: 6 + 2 * q.size) else { throw .queue(index: index, .ringOutsideMemory("avail ring")) }
        guard let used = memory.guestAddress(ofUser: u, length: 6 + 8 * q.size) else { throw .queue(index: index, .ringOutsideMemory("used ring")) }
        let queue: SplitVirtqueue
        do {
            queue = try SplitVirtqueue(memory: memory, size: q.size, descriptorTable: table, availRing: avail, usedRing: used,
                                       eventIndex: features & Self.eventIndexBit != 0, lastAvail: q.base)
        } catch {
            throw .queue(index: index, error)
        }
        try device.start(queue: index, queue, kick: q.kick, call: q.call)
        queues[index].ring = queue
    }

    /// Stops queue `index`; where it stood becomes the base GET_VRING_BASE
    /// reports and a restart resumes from.
    private func stopQueue(_ index: Int) {
        guard let ring = queues[index].ring else { return }
        device.stop(queue: index)
        queues[index].base = ring.lastAvail
        queues[index].ring = nil
    }

    private func closeFD(_ fd: Int32) { if fd >= 0 { _ = Glibc.close(fd) } }
}

extension VhostUserBackend.ProtocolFeature: CaseIterable {
    var bit: UInt64 { 1 << rawValue }
    static var allBits: UInt64 { allCases.reduce(0) { $0 | $1.bit } }
}
