import Foundation
import SystemPackage

/// A device's volatile write cache (NVMe's VWC): completed writes live here
/// until a flush puts them on the medium; a power cut loses them. Reads see
/// the cache over the medium, as the host would.
final class VolatileWriteCache: @unchecked Sendable {
    // @unchecked Sendable: guarded by `lock`.
    private let lock = NSLock()
    private let blockSize: Int
    private var blocks: [UInt64: [UInt8]] = [:]

    init(blockSize: Int) { self.blockSize = blockSize }

    var dirtyBlocks: Int { lock.withLock { blocks.count } }

    /// Takes a completed write of whole blocks from `lba`.
    func write(_ pieces: [UnsafeMutableRawBufferPointer], lba: UInt64) {
        let bytes = pieces.flatMap { Array($0) }
        lock.withLock {
            for i in 0..<(bytes.count / blockSize) { blocks[lba + UInt64(i)] = Array(bytes[(i * blockSize)..<((i + 1) * blockSize)]) }
        }
    }

    /// Puts cached blocks over what was read from the medium into `pieces`.
    func overlay(_ pieces: [UnsafeMutableRawBufferPointer], lba: UInt64) {
        lock.withLock {
            guard !blocks.isEmpty else { return }
            var offset = 0
            for piece in pieces {
                var at = 0
                while at < piece.count {
                    let block = lba + UInt64((offset + at) / blockSize), within = (offset + at) % blockSize
                    let take = min(blockSize - within, piece.count - at)
                    if let cached = blocks[block] {
                        cached.withUnsafeBytes { piece.baseAddress!.advanced(by: at).copyMemory(from: $0.baseAddress! + within, byteCount: take) }
                    }
                    at += take
                }
                offset += piece.count
            }
        }
    }

    /// Writes every cached block to `disk` and empties the cache.
    func flush(to disk: DiskImage) throws(Errno) {
        let dirty = lock.withLock { () -> [UInt64: [UInt8]] in
            defer { blocks.removeAll() }
            return blocks
        }
        for (block, var bytes) in dirty {
            let failure = bytes.withUnsafeMutableBytes { buffer -> Errno? in
                do throws(Errno) { try disk.write(from: [buffer], at: block * UInt64(blockSize)) } catch { return error }
                return nil
            }
            if let failure { throw failure }
        }
    }

    /// Power lost: what was not flushed is gone.
    func discard() -> Int {
        lock.withLock {
            defer { blocks.removeAll() }
            return blocks.count
        }
    }
}
