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

    public var capacity: UInt64 { blockCount * UInt64(blockSize) }
}

/// One block request, reusable. The C struct the driver sees lives as long
/// as this object; while the driver owns it, `host_private` holds a retained
/// reference back here, taken exactly once by `complete`.
public final class BlockRequest: @unchecked Sendable {
    // @unchecked Sendable: owned by one submitter at a time; the driver's
    // completion hands it back through an atomic exchange.
    public enum Operation: UInt32, Sendable {
        case read = 1, write = 2, flush = 3
    }

    let raw: UnsafeMutablePointer<oy_block_request>
    private var completion: (@Sendable (OyStatus) -> Void)?
    fileprivate weak var disk: RegisteredDisk?

    public init() {
        raw = .allocate(capacity: 1)
        raw.initialize(to: oy_block_request())
    }

    deinit { raw.deallocate() }

    /// Fills the request. `data` must be memory the OS allocated for I/O
    /// (reachable by dma_map); nil for flush.
    public func prepare(_ operation: Operation, lba: UInt64, blockCount: Int, data: UnsafeMutableRawPointer?,
                        completion: @escaping @Sendable (OyStatus) -> Void)
    {
        raw.pointee = oy_block_request()
        raw.pointee.struct_size = UInt32(MemoryLayout<oy_block_request>.size)
        raw.pointee.op = operation.rawValue
        raw.pointee.lba = lba
        raw.pointee.block_count = UInt32(clamping: blockCount)
        raw.pointee.data = data
        self.completion = completion
    }

    /// Completes a request that no driver holds (refused by submit, or
    /// failed while still queued in the OS).
    public func finishUnsubmitted(_ status: OyStatus) {
        finish(status)
    }

    fileprivate func finish(_ status: OyStatus) {
        let done = completion
        completion = nil
        done?(status)
    }

    /// Takes the request back from the driver; nil if it was already taken
    /// (a second completion, or a completion racing a cancel).
    fileprivate static func reclaim(_ raw: UnsafeMutablePointer<oy_block_request>) -> BlockRequest? {
        let previous = withUnsafeMutablePointer(to: &raw.pointee.host_private) { slot in
            oy_shim_exchange_pointer(slot, nil)
        }
        guard let previous else { return nil }
        return Unmanaged<BlockRequest>.fromOpaque(previous).takeRetainedValue()
    }
}

/// A disk a driver registered with the OS (`register_disk`). The OS submits
/// requests here; they go straight to the driver's `submit`.
public final class RegisteredDisk: ClassRegistration, @unchecked Sendable {
    // @unchecked Sendable: `outstanding` and `unregistered` are guarded by `lock`.
    /// The extension ID of this class.
    public static let classID: String = OY_BLOCK_EXTENSION
    public let geometry: BlockGeometry
    let submitFunction: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<oy_block_request>?) -> Int32
    let instance: UnsafeMutableRawPointer?
    private let lock = NSLock()
    private var outstanding: [ObjectIdentifier: BlockRequest] = [:]
    private var unregistered = false

    init?(binding: DeviceBinding, geometry g: oy_block_geometry, ops: oy_block_ops, instance: UnsafeMutableRawPointer?) {
        guard let submit = ops.submit else { return nil }
        self.geometry = BlockGeometry(
            blockSize: Int(g.block_size), blockCount: g.block_count, maxTransferBlocks: Int(g.max_transfer_blocks),
            queueDepth: Int(g.queue_depth), canFlush: g.flags & UInt32(OY_BLOCK_CAN_FLUSH.rawValue) != 0)
        self.submitFunction = submit
        self.instance = instance
        super.init(binding: binding, deviceClass: Self.classID, kind: "disk", detail: "\(g.block_count) × \(g.block_size) B")
    }

    /// Hands `request` to the driver. On `.ok` the completion runs later,
    /// exactly once, possibly on the interrupt thread; otherwise never.
    public func submit(_ request: BlockRequest) -> OyStatus {
        let key = ObjectIdentifier(request)
        let accepted = lock.withLock { () -> Bool in
            guard !unregistered else { return false }
            outstanding[key] = request
            return true
        }
        guard accepted else { return .deviceGone }
        request.disk = self
        request.raw.pointee.host_private = Unmanaged.passRetained(request).toOpaque()
        let status = OyStatus(submitFunction(instance, request.raw))
        if !status.isOK {
            // Refused: the driver must not complete it. Take it back.
            if BlockRequest.reclaim(request.raw) == nil {
                binding.library.recordViolation("submit returned \(status) but completed the request anyway")
            }
            lock.withLock { _ = outstanding.removeValue(forKey: key) }
            if !status.isDefined {
                binding.library.recordViolation("submit returned undefined error code \(status.rawValue)")
            }
        }
        return status
    }

    fileprivate func completed(_ request: BlockRequest, status: OyStatus) {
        _ = lock.withLock { outstanding.removeValue(forKey: ObjectIdentifier(request)) }
        var status = status
        if !status.isDefined {
            binding.library.recordViolation("complete() with undefined status code \(status.rawValue)")
            status = .io
        }
        request.finish(status)
    }

    public override var outstandingCount: Int { lock.withLock { outstanding.count } }

    override func cancelOutstanding() -> Int {
        let pending = lock.withLock { Array(outstanding.values) }
        var count = 0
        for request in pending {
            guard let taken = BlockRequest.reclaim(request.raw) else { continue }
            count += 1
            completed(taken, status: .canceled)
        }
        return count
    }

    override func willUnregister() { lock.withLock { unregistered = true } }
}

/// The host's "oyako.block/1" table.
enum HostBlock {
    static let logger = Logger(label: "oyako.block")
    static let deviceClass = DeviceClass(id: RegisteredDisk.classID, table: UnsafeRawPointer(table))

    /// Static for the life of the process; drivers hold a pointer to it.
    nonisolated(unsafe) static let table: UnsafeMutablePointer<oy_host_block> = {
        let t = UnsafeMutablePointer<oy_host_block>.allocate(capacity: 1)
        t.initialize(to: oy_host_block())
        t.pointee.struct_size = UInt32(MemoryLayout<oy_host_block>.size)
        t.pointee.register_disk = { device, geometry, ops, instance, out in
            ClassRegistration.register(device, out: out, service: "register_disk") { binding in
                guard let geometry, let ops, geometry.pointee.struct_size >= UInt32(MemoryLayout<oy_block_geometry>.size),
                    ops.pointee.struct_size >= UInt32(MemoryLayout<oy_block_ops>.size)
                else { return .invalid }
                let g = geometry.pointee
                guard g.block_size >= 512, g.block_size & (g.block_size - 1) == 0, g.block_count > 0, g.max_transfer_blocks > 0, g.queue_depth > 0 else {
                    return .violation("an impossible geometry (block size \(g.block_size), \(g.block_count) blocks, max transfer \(g.max_transfer_blocks), depth \(g.queue_depth))")
                }
                return RegisteredDisk(binding: binding, geometry: g, ops: ops.pointee, instance: instance).map { .made($0) } ?? .violation("a NULL submit callback")
            }
        }
        t.pointee.unregister_disk = { handle in ClassRegistration.withdraw(handle, as: RegisteredDisk.self, service: "unregister_disk") }
        t.pointee.complete = { raw, status in
            guard let raw, let request = BlockRequest.reclaim(raw) else {
                HostServices.unattributed("complete() for a request that is not outstanding (completed twice, or never accepted)")
                return
            }
            guard let disk = request.disk else {
                request.finish(OyStatus(status))
                return
            }
            disk.completed(request, status: OyStatus(status))
        }
        return t
    }()
}
