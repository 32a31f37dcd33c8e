import Foundation

/// What a virtio-blk device is in front of: a range of blocks that can be
/// read, written and flushed asynchronously. In the root it is a region of a
/// Kernel disk, so the vendor's block driver does the I/O.
public protocol VirtioBlockTarget: AnyObject, Sendable {
    /// Bytes per block: a power of two, at least 512.
    var blockSize: Int { get }
    var blockCount: UInt64 { get }
    /// What GET_ID returns (up to 20 bytes are used).
    var identifier: String { get }
    /// Reads or writes `buffers.count` bytes (whole blocks) at `block`, or
    /// flushes (`buffers` empty). `completion` runs exactly once, from any
    /// thread, true when the target did it; the buffers stay valid until then.
    func submit(_ operation: VirtioBlockOperation, block: UInt64, buffers: GuestBuffers, completion: @escaping @Sendable (Bool) -> Void)
}

public enum VirtioBlockOperation: Sendable { case read, write, flush }

/// virtio-blk (device ID 2) as a vhost-user back-end, per virtio 1.2 §5.2:
/// each chain is a 16-byte header (type, reserved, sector), the data, and a
/// status byte the device writes. Read, write, flush and get-id are served;
/// anything else is answered UNSUPP. A request that is malformed, unaligned
/// or beyond the capacity is answered IOERR, never passed on: the guest is
/// not trusted to have checked.
public final class VhostUserBlock: VhostUserDevice, @unchecked Sendable {
    // @unchecked Sendable: start and stop come from the one connection
    // thread; `workers` is touched only there; requests carry what they need.
    public enum Feature: Int, CaseIterable {
        case sizeMax = 1, segMax = 2, blockSize = 6, flush = 9
    }

    public enum RequestType: UInt32 { case read = 0, write = 1, flush = 4, getID = 8 }
    public enum Status: UInt8 { case ok = 0, ioError = 1, unsupported = 2 }

    public static let headerSize = 16
    public static let sectorSize = 512
    /// The largest segment a request may have, told to the guest (size_max).
    public static let segmentLimit: UInt32 = 1 << 20
    /// The most segments a request may have (seg_max); Linux keeps two
    /// descriptors of a chain for the header and the status.
    public static let segmentCount: UInt32 = 126

    public var deviceFeatures: UInt64 { Feature.allCases.reduce(0) { $0 | 1 << UInt64($1.rawValue) } }
    public let queueCount: Int
    private let target: any VirtioBlockTarget
    private let failure: VhostUserRNG.Failure
    private var workers: [Int: QueueWorker] = [:]

    public init(target: any VirtioBlockTarget, queues: Int = 1, failure: @escaping VhostUserRNG.Failure = { _ in }) {
        self.target = target
        self.queueCount = max(1, queues)
        self.failure = failure
    }

    /// struct virtio_blk_config: capacity (in 512-byte sectors), size_max,
    /// seg_max, geometry (none), blk_size, topology, writeback, num_queues.
    public func configSpace() -> [UInt8] {
        var config = [UInt8](repeating: 0, count: 60)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { config.replaceSubrange(offset..<(offset + $0.count), with: $0) }
        }
        put(target.blockCount * UInt64(target.blockSize / Self.sectorSize), at: 0)
        put(Self.segmentLimit, at: 8)
        put(Self.segmentCount, at: 12)
        put(UInt32(target.blockSize), at: 20)
        put(UInt8(1), at: 32)  // writeback: the guest must flush
        put(UInt16(queueCount), at: 34)
        return config
    }

    public func start(queue index: Int, _ queue: SplitVirtqueue, kick: Int32, call: Int32) throws(VhostUserError) {
        let target = self.target
        do {
            workers[index] = try QueueWorker(queue: queue, kick: kick, call: call, serve: { chain, done in
                Self.serve(chain, target: target) { done(written: $0) }
            }, failed: failure)
        } catch {
            throw .deviceStart(queue: index, errno: error.code)
        }
    }

    public func stop(queue index: Int) {
        workers.removeValue(forKey: index)?.stop()
    }

    deinit { for worker in workers.values { worker.stop() } }

    /// One request: parsed, checked, passed to the target; `done` gets the
    /// bytes written into the chain (data read plus the status byte).
    static func serve(_ chain: DescriptorChain, target: any VirtioBlockTarget, done: @escaping @Sendable (UInt32) -> Void) {
        let input = GuestBuffers(chain.readable), output = GuestBuffers(chain.writable)
        // Without a header and a status byte there is nothing to answer.
        guard input.count >= headerSize, output.count >= 1 else { return done(0) }
        let header = input.prefix(headerSize)
        let type = header.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
        let sector = header.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
        let status = output.slice(from: output.count - 1, length: 1)
        let finish: @Sendable (Status, Int) -> Void = { code, data in
            var byte = code.rawValue
            withUnsafeBytes(of: &byte) { _ = status.copy($0, to: 0) }
            done(UInt32(data + 1))
        }
        switch RequestType(rawValue: type) {
        case .read, .write:
            let reading = type == RequestType.read.rawValue
            let data = reading ? output.dropLast(1) : input.dropFirst(headerSize)
            guard let block = blockAddress(sector: sector, bytes: data.count, target: target) else { return finish(.ioError, 0) }
            target.submit(reading ? .read : .write, block: block, buffers: data) { ok in
                finish(ok ? .ok : .ioError, ok && reading ? data.count : 0)
            }
        case .flush:
            target.submit(.flush, block: 0, buffers: GuestBuffers([])) { ok in finish(ok ? .ok : .ioError, 0) }
        case .getID:
            let id = Array(target.identifier.utf8.prefix(20))
            let data = output.dropLast(1)
            let written = id.withUnsafeBytes { data.copy($0, to: 0) }
            finish(.ok, written)
        case nil:
            finish(.unsupported, 0)
        }
    }

    /// The target block a request starts at, if it is whole blocks, aligned
    /// and within the capacity; nil otherwise.
    static func blockAddress(sector: UInt64, bytes: Int, target: any VirtioBlockTarget) -> UInt64? {
        let perBlock = UInt64(target.blockSize / sectorSize)
        guard bytes > 0, bytes % target.blockSize == 0, sector % perBlock == 0 else { return nil }
        let block = sector / perBlock, count = UInt64(bytes / target.blockSize)
        guard block < target.blockCount, count <= target.blockCount - block else { return nil }
        return block
    }
}
