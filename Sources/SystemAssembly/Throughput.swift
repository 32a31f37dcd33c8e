import Dispatch
import DriverHost
import Kernel
import Synchronization
import Workloads

/// Sequential asynchronous I/O at a fixed queue depth, verified.
public enum Throughput {
    public struct Result: Sendable {
        public let bytes: Int
        public let writeMiBPerSecond: Double
        public let readMiBPerSecond: Double
        public let verified: Bool
    }

    public static func measure(disk: Disk, startLBA: UInt64 = 0, bytes: Int, requestBytes: Int, depth: Int) throws -> Result {
        let blockSize = disk.geometry.blockSize
        let requestBlocks = max(1, min(requestBytes / blockSize, disk.geometry.maxTransferBlocks))
        let chunk = requestBlocks * blockSize
        let requests = max(1, bytes / chunk)
        let buffers = (0..<depth).compactMap { _ in disk.allocateBuffer(length: chunk) }
        guard buffers.count == depth else { throw DemoError(message: "\(disk.name): out of I/O memory for \(depth) × \(chunk) bytes") }

        // Checksums of what each request writes, computed before the timed
        // passes so that verifying a read costs one pass over its bytes.
        let checksums = (0..<requests).map { i in
            Pattern.bytes(seed: 0xB0B, lba: startLBA + UInt64(i * requestBlocks), blockSize: blockSize, count: chunk).withUnsafeBytes(checksum)
        }

        func pass(_ operation: DiskOperation) throws -> (seconds: Double, verified: Bool) {
            let slots = DispatchSemaphore(value: depth)
            let group = DispatchGroup()
            let failure = Mutex<(status: DiskStatus, lba: UInt64)?>(nil)
            let verified = Atomic<Bool>(true)
            let free = Mutex<[Int]>(Array(0..<depth))
            let start = DispatchTime.now()
            for i in 0..<requests {
                slots.wait()
                let index = free.withLock { $0.removeLast() }
                let buffer = buffers[index]
                let lba = startLBA + UInt64(i * requestBlocks)
                if operation == .write {
                    let data = Pattern.bytes(seed: 0xB0B, lba: lba, blockSize: blockSize, count: chunk)
                    data.withUnsafeBytes { buffer.bytes.copyMemory(from: $0) }
                }
                let expected = checksums[i]
                group.enter()
                disk.submit(operation, lba: lba, blocks: requestBlocks, buffer: buffer) { status in
                    if !status.isOK { failure.withLock { $0 = (status, lba) } }
                    if operation == .read && status.isOK && checksum(UnsafeRawBufferPointer(buffer.bytes)) != expected {
                        verified.store(false, ordering: .relaxed)
                    }
                    free.withLock { $0.append(index) }
                    slots.signal()
                    group.leave()
                }
            }
            group.wait()
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
            if let failed = failure.withLock({ $0 }) { try disk.check(failed.status, of: operation, at: failed.lba) }
            return (seconds, verified.load(ordering: .relaxed))
        }

        let write = try pass(.write)
        try disk.flush()
        let read = try pass(.read)
        let total = Double(requests * chunk) / Double(1 << 20)
        return Result(bytes: requests * chunk, writeMiBPerSecond: total / write.seconds, readMiBPerSecond: total / read.seconds, verified: read.verified)
    }
}
