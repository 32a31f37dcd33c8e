import Foundation
import Kernel
import Synchronization
import VhostUser

/// A VM's virtual disk: `blockCount` blocks of a Kernel disk from
/// `firstBlock`, so its I/O goes through the block layer to the vendor's
/// driver. The guest's pages are QEMU's memory, not the machine's, so a
/// device cannot DMA into them: data is bounced through the OS's I/O memory,
/// and a request larger than the driver takes at once is split.
public final class DiskRegion: VirtioBlockTarget, @unchecked Sendable {
    // @unchecked Sendable: immutable after init; Disk is thread-safe.
    public let disk: Disk
    public let firstBlock: UInt64
    public let blockCount: UInt64
    public let identifier: String
    public var blockSize: Int { disk.geometry.blockSize }
    /// Bounce buffers kept for reuse, by length: a request does not pay
    /// for allocating and zeroing I/O memory (every byte of a reused buffer
    /// a request reads is one the device wrote, or one the guest wrote).
    private let spare = Mutex<[Int: [IOBuffer]]>([:])
    static let spareLimit = 64

    public struct OutOfDisk: Error, CustomStringConvertible {
        public let description: String
    }

    /// The whole disk from `firstBlock` when `blockCount` is nil.
    public init(disk: Disk, firstBlock: UInt64 = 0, blockCount: UInt64? = nil, identifier: String? = nil) throws(OutOfDisk) {
        let total = disk.geometry.blockCount
        guard firstBlock < total else { throw OutOfDisk(description: "\(disk.name) has \(total) blocks; a region cannot start at \(firstBlock)") }
        let count = blockCount ?? total - firstBlock
        guard count > 0, count <= total - firstBlock else {
            throw OutOfDisk(description: "\(disk.name) has \(total) blocks; \(count) from \(firstBlock) do not fit")
        }
        self.disk = disk
        self.firstBlock = firstBlock
        self.blockCount = count
        self.identifier = identifier ?? "oyako-\(disk.name)"
    }

    public func submit(_ operation: VirtioBlockOperation, block: UInt64, buffers: GuestBuffers, completion: @escaping @Sendable (Bool) -> Void) {
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
            guard let bounce = buffer(length: count * size) else {
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

    private func buffer(length: Int) -> IOBuffer? {
        spare.withLock { $0[length]?.popLast() } ?? disk.allocateBuffer(length: length)
    }

    private func recycle(_ buffer: IOBuffer) {
        spare.withLock { pool in
            if pool[buffer.length, default: []].count < Self.spareLimit { pool[buffer.length, default: []].append(buffer) }
        }
    }
}
