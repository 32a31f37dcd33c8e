import Foundation
import Kernel
import Synchronization
import VhostUser

/// A VM's virtual disk: `blockCount` blocks of a Kernel disk from
/// `firstBlock`, so its I/O goes through the block layer to the vendor's
/// driver. The guest's pages are QEMU's memory, not the machine's, so a
/// device cannot DMA into them: data is bounced through the OS's I/O memory,
/// and a request larger than the driver takes at once is split.
///
/// Made `following` a block layer, the region outlives its disk: when the
/// disk is removed (its driver unloaded, say) requests fail until a driver
/// registers the same device again, and then go to the new disk, as long as
/// it has the block size the guest was given and holds the region.
public final class DiskRegion: VirtioBlockTarget, @unchecked Sendable {
    // @unchecked Sendable: `current` is guarded by its Mutex, the rest fixed; Disk is thread-safe.
    private let current: Mutex<(disk: Disk, removed: Bool)>
    private let blockLayer: BlockLayer?
    /// The device the region's disk lives on ("00:01.0").
    private let location: String
    public let firstBlock: UInt64
    public let blockCount: UInt64
    public let identifier: String
    /// Fixed for the region's life: what the guest was told.
    public let blockSize: Int
    /// Bounce buffers kept for reuse, by length: a request does not pay
    /// for allocating and zeroing I/O memory (every byte of a reused buffer
    /// a request reads is one the device wrote, or one the guest wrote).
    private let spare = Mutex<[Int: [IOBuffer]]>([:])
    static let spareLimit = 64

    public struct OutOfDisk: Error, CustomStringConvertible {
        public let description: String
    }

    /// The whole disk from `firstBlock` when `blockCount` is nil.
    public init(disk: Disk, firstBlock: UInt64 = 0, blockCount: UInt64? = nil, identifier: String? = nil,
                following blockLayer: BlockLayer? = nil) throws(OutOfDisk)
    {
        let total = disk.geometry.blockCount
        guard firstBlock < total else { throw OutOfDisk(description: "\(disk.name) has \(total) blocks; a region cannot start at \(firstBlock)") }
        let count = blockCount ?? total - firstBlock
        guard count > 0, count <= total - firstBlock else {
            throw OutOfDisk(description: "\(disk.name) has \(total) blocks; \(count) from \(firstBlock) do not fit")
        }
        self.current = Mutex((disk, false))
        self.blockLayer = blockLayer
        self.location = disk.driver.location
        self.blockSize = disk.geometry.blockSize
        self.firstBlock = firstBlock
        self.blockCount = count
        self.identifier = identifier ?? "oyako-\(disk.name)"
        watch(disk)
    }

    /// The disk requests go to now.
    public var disk: Disk { current.withLock { $0.disk } }

    private func watch(_ disk: Disk) {
        disk.onRemoval { [weak self] _ in
            self?.current.withLock { if $0.disk === disk { $0.removed = true } }
        }
    }

    /// The disk for the next request: once the region's disk is removed,
    /// the disk its device serves now, if one does and it fits the region.
    /// Until then the removed disk, which fails what it is sent.
    private func target() -> Disk {
        let (disk, removed) = current.withLock { ($0.disk, $0.removed) }
        guard removed, let blockLayer, let next = blockLayer.disk(at: location), next !== disk,
              next.geometry.blockSize == blockSize, next.geometry.blockCount >= firstBlock + blockCount
        else { return disk }
        let adopted = current.withLock { c -> Bool in
            guard c.disk === disk else { return false }
            c = (next, false)
            return true
        }
        if adopted {
            watch(next)
            spare.withLock { $0 = [:] }
        }
        return current.withLock { $0.disk }
    }

    public func submit(_ operation: VirtioBlockOperation, block: UInt64, buffers: GuestBuffers, completion: @escaping @Sendable (Bool) -> Void) {
        let disk = target()
        guard operation != .flush else {
            disk.submit(.flush, lba: 0, blocks: 0, buffer: nil) { completion($0.isOK) }
            return
        }
        let size = blockSize
        let blocks = buffers.count / size
        guard blocks > 0, block < blockCount, UInt64(blocks) <= blockCount - block else { return completion(false) }
        let chunk = max(1, disk.geometry.maxTransferBlocks)
        let pieces = (blocks + chunk - 1) / chunk
        // The request succeeds when every piece did; the last one to finish reports.
        let state = Mutex((left: pieces, ok: true))
        for piece in 0..<pieces {
            let start = piece * chunk, count = min(chunk, blocks - start)
            let range = buffers.slice(from: start * size, length: count * size)
            let finished: @Sendable (Bool) -> Void = { ok in
                let last = state.withLock { s -> Bool in
                    s.ok = s.ok && ok
                    s.left -= 1
                    return s.left == 0
                }
                if last { completion(state.withLock { $0.ok }) }
            }
            guard let bounce = buffer(length: count * size, from: disk) else {
                finished(false)
                continue
            }
            let reading = operation == .read
            if !reading { range.copy(from: 0, into: bounce.bytes) }
            disk.submit(reading ? .read : .write, lba: firstBlock + block + UInt64(start), blocks: count, buffer: bounce) { [self] status in
                if reading && status.isOK { range.copy(UnsafeRawBufferPointer(bounce.bytes), to: 0) }
                recycle(bounce)
                finished(status.isOK)
            }
        }
    }

    private func buffer(length: Int, from disk: Disk) -> IOBuffer? {
        spare.withLock { $0[length]?.popLast() } ?? disk.allocateBuffer(length: length)
    }

    private func recycle(_ buffer: IOBuffer) {
        spare.withLock { pool in
            if pool[buffer.length, default: []].count < Self.spareLimit { pool[buffer.length, default: []].append(buffer) }
        }
    }
}
