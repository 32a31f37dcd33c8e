import COyakoSDK
import CSystemShims
import Foundation
import Logging

/// A disk's shape, as the driver registered it.
public struct BlockGeometry: Sendable, Equatable {
    public let blockSize: Int
    public let blockCount: UInt64
    public let maxTransferBlocks: Int
    public let queueDepth: Int
    public let canFlush: Bool

    public init(blockSize: Int, blockCount: UInt64, maxTransferBlocks: Int, queueDepth: Int, canFlush: Bool) {
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.maxTransferBlocks = maxTransferBlocks
        self.queueDepth = queueDepth
        self.canFlush = canFlush
    }

    public var capacity: UInt64 { blockCount * UInt64(blockSize) }

    /// A shape a disk can have: a power-of-two block size of at least 512
    /// bytes, at least one block, a capacity that fits an Int (so no byte
    /// offset on the disk overflows), a transfer and a queue of at least one.
    /// What a driver registers, in process or from a driver host, is checked
    /// against it before the OS uses any of it.
    public var isPossible: Bool {
        blockSize >= 512 && blockSize & (blockSize - 1) == 0 && blockCount > 0 && blockCount <= UInt64(Int.max) / UInt64(blockSize)
            && maxTransferBlocks > 0 && queueDepth > 0
    }
}

extension BlockGeometry {
    init(_ g: oy_block_geometry) {
        self.init(blockSize: Int(g.block_size), blockCount: g.block_count, maxTransferBlocks: Int(g.max_transfer_blocks),
                  queueDepth: Int(g.queue_depth), canFlush: g.flags & UInt32(OY_BLOCK_CAN_FLUSH.rawValue) != 0)
    }
}

/// One block request, reusable. The C struct the driver sees lives as long
/// as this object; while the driver owns it, it is out on loan (`Loans`).
public final class BlockRequest: LentRequest, @unchecked Sendable {
    public enum Operation: UInt32, Sendable {
        case read = 1, write = 2, flush = 3
    }

    /// The C struct the driver sees.
    var raw: UnsafeMutablePointer<oy_block_request> { cStruct(as: oy_block_request.self) }

    public init() { super.init(oy_block_request(), hostPrivate: \.host_private, described: ("block request", "oy_block_request", "complete()")) }

    /// The `host_private` field of a C request.
    static func hostPrivate(_ raw: UnsafeMutablePointer<oy_block_request>) -> UnsafeMutablePointer<UnsafeMutableRawPointer?> { hostPrivate(of: raw, \.host_private) }

    /// What the request asks, as filled by `prepare` (for a driver host's
    /// proxy, which sends it to another process).
    public var operation: Operation? { Operation(rawValue: raw.pointee.op) }
    public var lba: UInt64 { raw.pointee.lba }
    public var blockCount: Int { Int(raw.pointee.block_count) }
    public var data: UnsafeMutableRawPointer? { raw.pointee.data }

    /// Fills the request. `data` must be memory the OS allocated for I/O
    /// (reachable by dma_map); nil for flush.
    public func prepare(_ operation: Operation, lba: UInt64, blockCount: Int, data: UnsafeMutableRawPointer?,
                        completion: @escaping @Sendable (OyStatus) -> Void)
    {
        checkPoison()
        raw.pointee = oy_block_request()
        raw.pointee.struct_size = UInt32(MemoryLayout<oy_block_request>.size)
        raw.pointee.op = operation.rawValue
        raw.pointee.lba = lba
        raw.pointee.block_count = UInt32(clamping: blockCount)
        raw.pointee.data = data
        setCompletion(completion)
    }
}

/// A disk a driver registered with the OS (`register_disk`). The OS submits
/// requests here; they go straight to the driver's `submit`.
public final class RegisteredDisk: ClassRegistration, DescribedRegistration, @unchecked Sendable {
    // @unchecked Sendable: `outstanding` and `unregistered` are guarded by `lock`.
    /// The extension ID of this class.
    public static let classID: String = OY_BLOCK_EXTENSION
    public let geometry: BlockGeometry
    let submitFunction: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<oy_block_request>?) -> Int32
    let instance: UnsafeMutableRawPointer?
    private let loans: Loans

    /// What `register_disk` registers; refused (and named) if block.h rules
    /// out the geometry or the ops.
    init(binding: DeviceBinding, info g: oy_block_geometry, ops: oy_block_ops, instance: UnsafeMutableRawPointer?) throws(Refusal) {
        guard BlockGeometry(g).isPossible else {
            throw .init("an impossible geometry (block size \(g.block_size), \(g.block_count) blocks, max transfer \(g.max_transfer_blocks), depth \(g.queue_depth))")
        }
        guard let submit = ops.submit else { throw .init("a NULL submit callback") }
        self.geometry = BlockGeometry(g)
        self.submitFunction = submit
        self.instance = instance
        self.loans = Loans(library: binding.library)
        super.init(binding: binding, deviceClass: Self.classID, kind: "disk", detail: "\(g.block_count) × \(g.block_size) B")
    }

    /// Hands `request` to the driver. On `.ok` the completion runs later,
    /// exactly once, possibly on the interrupt thread; otherwise never.
    public func submit(_ request: BlockRequest) -> OyStatus {
        loans.lend(request, service: "submit") { OyStatus(submitFunction(instance, request.raw)) }
    }

    public override var outstandingCount: Int { loans.count }

    override func cancelOutstanding() -> Int { loans.cancelAll() }

    override func willUnregister() { loans.close() }
}

/// The host's "oyako.block/1" table.
enum HostBlock {
    static let logger = Logger(label: "oyako.block")
    static let deviceClass = DeviceClass(id: RegisteredDisk.classID, table: UnsafeRawPointer(table))

    /// Static for the life of the process; drivers hold a pointer to it.
    nonisolated(unsafe) static let table = oy_host_block.hostTable { t in
        t.register_disk = { ClassRegistration.register(as: RegisteredDisk.self, $0, $1, $2, $3, $4, service: "register_disk") }
        t.unregister_disk = { handle in ClassRegistration.withdraw(handle, as: RegisteredDisk.self, service: "unregister_disk") }
        t.complete = { LentRequest.completed($0.map(BlockRequest.hostPrivate), status: $1, service: "complete()") }
    }
}
