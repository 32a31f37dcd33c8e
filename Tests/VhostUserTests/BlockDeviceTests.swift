import Foundation
import Machine
import Testing
import VhostUser

/// A disk in memory that completes on another thread (as a real one does
/// from its interrupt), records what reached it, and can hold requests.
final class MemoryTarget: VirtioBlockTarget, @unchecked Sendable {
    let blockSize: Int
    let blockCount: UInt64
    let identifier = "memory-target-0123456789abcdef"
    private let lock = NSLock()
    private var bytes: [UInt8]
    private(set) var seen: [(VirtioBlockOperation, UInt64, Int)] = []
    var fails = false
    /// Requests held back until `release()`.
    var holding = false
    private var held: [@Sendable () -> Void] = []

    init(blockSize: Int = 4096, blockCount: UInt64 = 64) {
        self.blockSize = blockSize
        self.blockCount = blockCount
        bytes = [UInt8](repeating: 0, count: blockSize * Int(blockCount))
    }

    var requests: [(VirtioBlockOperation, UInt64, Int)] { lock.withLock { seen } }
    func contents(block: Int, count: Int) -> [UInt8] { lock.withLock { Array(bytes[(block * blockSize)..<((block + count) * blockSize)]) } }

    func submit(_ operation: VirtioBlockOperation, block: UInt64, buffers: GuestBuffers, completion: @escaping @Sendable (Bool) -> Void) {
        lock.withLock { seen.append((operation, block, buffers.count)) }
        let work: @Sendable () -> Void = { [self] in
            let ok = lock.withLock { () -> Bool in
                if fails { return false }
                let start = Int(block) * blockSize
                bytes.withUnsafeMutableBytes { all in
                    let range = UnsafeMutableRawBufferPointer(rebasing: all[start..<(start + buffers.count)])
                    if operation == .read { buffers.copy(UnsafeRawBufferPointer(range), to: 0) }
                    if operation == .write { buffers.copy(from: 0, into: range) }
                }
                return true
            }
            completion(ok)
        }
        if lock.withLock({ holding ? { held.append(work); return true }() : false }) { return }
        DispatchQueue.global().async(execute: work)
    }

    func release() {
        let works = lock.withLock { () -> [@Sendable () -> Void] in
            holding = false
            defer { held = [] }
            return held
        }
        for work in works { DispatchQueue.global().async(execute: work) }
    }
}

@Suite struct BlockDeviceTests {
    static let headers = FakeGuest.ramBase + 0x10000
    static let data = FakeGuest.ramBase + 0x20000
    static let statuses = FakeGuest.ramBase + 0x40000

    /// A guest's virtio-blk driver: builds request chains in its RAM.
    struct Driver {
        let g: FakeGuest
        let bells = Doorbells()
        var nextDescriptor = 0

        /// Posts one request: header (type, sector) in its own descriptor,
        /// then data descriptors of the given lengths (device-writable for a
        /// read), then the status byte; returns where the status lands.
        mutating func request(_ type: UInt32, sector: UInt64, data lengths: [UInt32] = [], at dataAddress: UInt64 = BlockDeviceTests.data,
                              status: Bool = true) -> GuestAddress {
            let head = nextDescriptor
            let slot = UInt64(head)
            var header = [UInt8](repeating: 0, count: 16)
            header.withUnsafeMutableBytes { $0.storeBytes(of: type, as: UInt32.self); $0.storeBytes(of: sector, toByteOffset: 8, as: UInt64.self) }
            #expect(g.region.write(header, at: GuestAddress(BlockDeviceTests.headers + 16 * slot)))
            let writable: UInt16 = type == 0 || type == 8 ? 2 : 0
            var parts: [(UInt64, UInt32, UInt16)] = [(BlockDeviceTests.headers + 16 * slot, 16, 0)]
            var offset = dataAddress
            for length in lengths {
                parts.append((offset, length, writable))
                offset += UInt64(length)
            }
            if status { parts.append((BlockDeviceTests.statuses + slot, 1, 2)) }
            for (i, part) in parts.enumerated() {
                let last = i == parts.count - 1
                g.descriptor(head + i, at: part.0, length: part.1, flags: part.2 | (last ? 0 : 1), next: UInt16(head + i + 1))
            }
            nextDescriptor += parts.count
            g.post(UInt16(head))
            return GuestAddress(BlockDeviceTests.statuses + slot)
        }

        func statusByte(_ at: GuestAddress) -> UInt8 { g.region.read(at: at, count: 1)![0] }
        func used(_ n: Int) -> (head: UInt32, written: UInt32) { (g.read32(g.used.adding(4 + 8 * n)!), g.read32(g.used.adding(8 + 8 * n)!)) }

        /// Kicks and waits (hang guard) until `count` chains are used.
        func kickAndWait(untilUsed count: UInt16) -> Bool {
            bells.ring()
            let deadline = Date(timeIntervalSinceNow: 10)
            // Interrupts follow event index (tested elsewhere): watch the used ring.
            while g.usedIndex < count {
                guard Date() < deadline else { return false }
                usleep(500)
            }
            return true
        }
    }

    private func started(_ target: MemoryTarget, size: Int = 64) throws -> (VhostUserBlock, Driver) {
        let driver = Driver(g: try FakeGuest(size: size))
        let device = VhostUserBlock(target: target)
        try device.start(queue: 0, try driver.g.queue(eventIndex: true), kick: driver.bells.kick, call: driver.bells.call)
        return (device, driver)
    }

    @Test func aWriteSplitOverSegmentsIsReadBackThroughTheTarget() throws {
        let target = MemoryTarget()
        var (device, driver) = try started(target)
        defer { device.stop(queue: 0); driver.bells.close() }
        let pattern = (0..<8192).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) }
        #expect(driver.g.region.write(pattern, at: GuestAddress(Self.data)))
        // 8 KiB at sector 16 (block 2) in three segments of odd sizes.
        let written = driver.request(1, sector: 16, data: [1000, 5000, 2192])
        #expect(driver.kickAndWait(untilUsed: 1))
        #expect(driver.statusByte(written) == 0 && driver.used(0).written == 1)
        #expect(target.contents(block: 2, count: 2) == pattern)
        // Read it back elsewhere in the guest, in two segments.
        let read = driver.request(0, sector: 16, data: [4096, 4096], at: Self.data + 0x8000)
        #expect(driver.kickAndWait(untilUsed: 2))
        #expect(driver.statusByte(read) == 0 && driver.used(1).written == 8193, "data read plus the status byte")
        #expect(driver.g.region.read(at: GuestAddress(Self.data + 0x8000), count: 8192) == pattern)
    }

    @Test func flushGetIDAndUnknownTypes() throws {
        let target = MemoryTarget()
        var (device, driver) = try started(target)
        defer { device.stop(queue: 0); driver.bells.close() }
        let flush = driver.request(4, sector: 0)
        let id = driver.request(8, sector: 0, data: [20])
        let unknown = driver.request(11, sector: 0)  // secure erase: not offered
        #expect(driver.kickAndWait(untilUsed: 3))
        #expect([flush, id, unknown].map(driver.statusByte) == [0, 0, 2])
        #expect(target.requests.map(\.0) == [.flush], "only the flush reached the disk")
        #expect(driver.g.region.read(at: GuestAddress(Self.data), count: 20) == Array(target.identifier.utf8.prefix(20)))
    }

    /// The guest is not trusted to have checked: bad requests are answered
    /// IOERR and never reach the target.
    @Test func badRequestsAreRefusedBeforeTheTarget() throws {
        let target = MemoryTarget(blockSize: 4096, blockCount: 64)
        var (device, driver) = try started(target)
        defer { device.stop(queue: 0); driver.bells.close() }
        let unaligned = driver.request(1, sector: 1, data: [4096])
        let partial = driver.request(0, sector: 0, data: [512])
        let beyond = driver.request(0, sector: 8 * 63, data: [8192])
        let huge = driver.request(1, sector: UInt64.max - 7, data: [4096])
        let empty = driver.request(0, sector: 0)
        _ = driver.request(1, sector: 0, data: [4096], status: false)  // nothing writable: nowhere to answer
        #expect(driver.kickAndWait(untilUsed: 6))
        #expect([unaligned, partial, beyond, huge, empty].map(driver.statusByte) == [1, 1, 1, 1, 1])
        #expect(driver.used(5).written == 0)
        #expect(target.requests.isEmpty)
    }

    @Test func aFailingTargetIsAnIOErrorAndTheQueueGoesOn() throws {
        let target = MemoryTarget()
        target.fails = true
        var (device, driver) = try started(target)
        defer { device.stop(queue: 0); driver.bells.close() }
        let failed = driver.request(0, sector: 0, data: [4096])
        #expect(driver.kickAndWait(untilUsed: 1))
        #expect(driver.statusByte(failed) == 1 && driver.used(0).written == 1, "no data claimed")
        target.fails = false
        let next = driver.request(1, sector: 0, data: [4096])
        #expect(driver.kickAndWait(untilUsed: 2))
        #expect(driver.statusByte(next) == 0)
    }

    /// GET_VRING_BASE must report an index with nothing in flight: stopping
    /// waits for the target to finish what it holds and returns it used.
    @Test func stoppingWaitsForRequestsTheTargetHolds() throws {
        let target = MemoryTarget()
        target.holding = true
        let (device, startedDriver) = try started(target)
        var driver = startedDriver
        defer { driver.bells.close() }
        let held = driver.request(1, sector: 0, data: [4096])
        driver.bells.ring()
        let deadline = Date(timeIntervalSinceNow: 10)
        while target.requests.isEmpty && Date() < deadline { usleep(1000) }
        let stopped = Reports<Bool>()
        Thread.detachNewThread { device.stop(queue: 0); stopped.add(true) }
        #expect(driver.g.usedIndex == 0)
        target.release()
        #expect(stopped.next(), "stop returned once the request completed")
        #expect(driver.g.usedIndex == 1 && driver.statusByte(held) == 0)
    }

    @Test func configSpaceTellsTheGuestTheGeometry() {
        let device = VhostUserBlock(target: MemoryTarget(blockSize: 4096, blockCount: 100), queues: 2)
        let config = device.configSpace()
        func u64(_ o: Int) -> UInt64 { config.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: o, as: UInt64.self) } }
        func u32(_ o: Int) -> UInt32 { config.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: o, as: UInt32.self) } }
        #expect(u64(0) == 800, "capacity in 512-byte sectors")
        #expect(u32(20) == 4096 && u32(8) == VhostUserBlock.segmentLimit && u32(12) == VhostUserBlock.segmentCount)
        #expect(config[34] == 2 && device.queueCount == 2)
        #expect(device.deviceFeatures & (1 << 9) != 0, "FLUSH offered: the guest flushes its cache")
    }
}
