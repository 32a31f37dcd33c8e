import Foundation
import Kernel
import Synchronization
import Testing
import VirtualizationStack
import VMBus

/// A block store in ordinary memory, so each SCSI command can be checked
/// on its own; it can fail requests and counts flushes.
final class MemoryBlockStore: SCSIBlockStore, @unchecked Sendable {
    // @unchecked Sendable: `bytes` is touched by one request at a time in these tests; counters are atomic.
    let blockSize: Int
    let blockCount: UInt64
    let maxTransferBlocks: Int
    let hasWriteCache: Bool
    var bytes: [UInt8]
    let flushes = Atomic<Int>(0)
    let submissions = Atomic<Int>(0)
    let failing = Atomic<Bool>(false)

    init(blockSize: Int = 512, blockCount: UInt64 = 2048, maxTransferBlocks: Int = 64, hasWriteCache: Bool = true) {
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.maxTransferBlocks = maxTransferBlocks
        self.hasWriteCache = hasWriteCache
        bytes = [UInt8](repeating: 0, count: blockSize * Int(blockCount))
    }

    func submit(_ operation: DiskOperation, lba: UInt64, blocks: Int, memory: UnsafeMutableRawPointer?,
                completion: @escaping @Sendable (DiskStatus) -> Void)
    {
        submissions.add(1, ordering: .relaxed)
        if failing.load(ordering: .relaxed) { return completion(.failed("injected")) }
        if operation == .flush {
            flushes.add(1, ordering: .relaxed)
            return completion(.ok)
        }
        guard blocks <= maxTransferBlocks, lba + UInt64(blocks) <= blockCount, let memory else { return completion(.invalid) }
        let at = Int(lba) * blockSize, count = blocks * blockSize
        bytes.withUnsafeMutableBytes { disk in
            if operation == .write { (disk.baseAddress! + at).copyMemory(from: memory, byteCount: count) }
            else { memory.copyMemory(from: disk.baseAddress! + at, byteCount: count) }
        }
        completion(.ok)
    }

    final class Bounce: BounceMemory, @unchecked Sendable {
        let pointer: UnsafeMutableRawPointer
        init(_ length: Int) { pointer = .allocate(byteCount: length, alignment: 4096) }
        deinit { pointer.deallocate() }
    }

    func bounceBuffer(length: Int) -> BounceMemory? { Bounce(length) }
}

@Suite struct SCSITargetTests {
    let store = MemoryBlockStore()
    var target: SCSITarget { SCSITarget(store: store, serial: "SN-0042", identifier: UUID(uuidString: "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0")!) }

    /// Runs one CDB with `length` bytes of data-in (or the given pieces).
    func run(_ cdb: [UInt8], direction: StorageProtocol.DataDirection = .read, length: Int = 0,
             pieces: [UnsafeMutableRawBufferPointer]? = nil, on target: SCSITarget? = nil) -> (SCSIResult, [UInt8]) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(length, 1), alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xEE)
        let data = SCSIData(pieces ?? (length > 0 ? [UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])] : []))
        let result = Mutex<SCSIResult?>(nil)
        (target ?? self.target).execute(cdb: cdb, direction: length > 0 || pieces != nil ? direction : .none, data: data) { r in
            result.withLock { $0 = r }
        }
        let r = result.withLock { $0 }!
        return (r, Array(buffer.prefix(min(r.transferred, length))))
    }

    @Test func testUnitReadyIsGood() {
        #expect(run(SCSI.testUnitReady).0 == .good())
    }

    @Test func standardInquiryNamesADirectAccessSPC4Disk() {
        let (result, data) = run(SCSI.inquiry(allocationLength: 96), length: 96)
        #expect(result == .good(36), "36 bytes of standard data, not the allocation length")
        #expect(data[0] == 0x00 && data[2] == 0x06 && data[3] == 0x02 && data[4] == 31)
        #expect(String(decoding: data[8..<16], as: UTF8.self) == "Oyako   ")
        #expect(String(decoding: data[16..<32], as: UTF8.self) == "Virtual Disk    ")
        #expect(String(decoding: data[32..<36], as: UTF8.self) == "1.0 ")
    }

    @Test func inquiryStopsAtTheAllocationLength() {
        let (result, data) = run(SCSI.inquiry(allocationLength: 5), length: 96)
        #expect(result == .good(5) && data.count == 5 && data[4] == 31)
    }

    @Test func vpdPagesAreTheOnesLinuxAsksFor() {
        let (supported, list) = run(SCSI.inquiry(vpdPage: 0x00, allocationLength: 255), length: 255)
        #expect(supported == .good(10) && Array(list[4...]) == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2] && list[3] == 6)

        let serial = run(SCSI.inquiry(vpdPage: 0x80, allocationLength: 255), length: 255).1
        #expect(serial[1] == 0x80 && String(decoding: serial[4...], as: UTF8.self) == "SN-0042")

        let ids = run(SCSI.inquiry(vpdPage: 0x83, allocationLength: 255), length: 255).1
        // First designator: NAA (type 3, binary), 16 bytes, NAA 6.
        #expect(ids[1] == 0x83 && Array(ids[4..<8]) == [0x01, 0x03, 0x00, 16] && ids[8] >> 4 == 6)
        // Second: T10 vendor ID (type 1, ASCII) = vendor + serial.
        #expect(Array(ids[24..<28]) == [0x02, 0x01, 0x00, 15] && String(decoding: ids[28..<43], as: UTF8.self) == "Oyako   SN-0042")

        let limits = run(SCSI.inquiry(vpdPage: 0xB0, allocationLength: 255), length: 255).1
        #expect(limits[1] == 0xB0 && SCSI.field(limits, at: 2, as: UInt16.self) == 0x3C)
        #expect(SCSI.field(limits, at: 8, as: UInt32.self) == UInt32(StorageVSP.maxTransferBytes / 512), "maximum transfer length in blocks")

        let characteristics = run(SCSI.inquiry(vpdPage: 0xB1, allocationLength: 255), length: 255).1
        #expect(characteristics[1] == 0xB1 && SCSI.field(characteristics, at: 4, as: UInt16.self) == 1, "non-rotating")

        let provisioning = run(SCSI.inquiry(vpdPage: 0xB2, allocationLength: 255), length: 255).1
        #expect(provisioning == [0x00, 0xB2, 0x00, 0x04, 0, 0, 0, 0])
    }

    @Test func unknownVPDPageOrAPageWithoutEVPDIsAnInvalidField() {
        #expect(run(SCSI.inquiry(vpdPage: 0x89, allocationLength: 255), length: 255).0 == .check(.invalidFieldInCDB))
        #expect(run([SCSI.Opcode.inquiry, 0, 0x80, 0, 255, 0], length: 255).0 == .check(.invalidFieldInCDB))
    }

    @Test func readCapacityTenAndSixteen() {
        let ten = run([SCSI.Opcode.readCapacity10] + [UInt8](repeating: 0, count: 9), length: 8)
        #expect(ten.0 == .good(8) && ten.1 == SCSI.bigEndian(UInt32(2047)) + SCSI.bigEndian(UInt32(512)))
        let sixteen = run(SCSI.readCapacity16(), length: 32)
        #expect(sixteen.0 == .good(32) && Array(sixteen.1[0..<12]) == SCSI.bigEndian(UInt64(2047)) + SCSI.bigEndian(UInt32(512)))
        // SERVICE ACTION IN(16) serves READ CAPACITY(16) only; other service actions (GET LBA STATUS...) are refused.
        var other = SCSI.readCapacity16()
        other[1] = 0x12
        #expect(run(other, length: 32).0 == .check(.invalidFieldInCDB))
    }

    @Test func readCapacityTenSaturatesOnHugeDisks() {
        let huge = SCSITarget(store: MemoryBlockStore(blockCount: 1), serial: "x", identifier: UUID())
        #expect(run([SCSI.Opcode.readCapacity10] + [UInt8](repeating: 0, count: 9), length: 8, on: huge).1 == [0, 0, 0, 0, 0, 0, 2, 0])
    }

    @Test func reportLUNsListsLUNZero() {
        let (result, data) = run([SCSI.Opcode.reportLUNs, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], length: 64)
        #expect(result == .good(16) && data == [0, 0, 0, 8, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 8))
    }

    @Test func modeSenseCachingPageSaysWhetherAWriteCacheIsPresent() {
        let six = run([SCSI.Opcode.modeSense6, 0x08, 0x08, 0, 255, 0], length: 255)
        #expect(six.0 == .good(24) && six.1[0] == 23 && six.1[3] == 0, "header: length, no block descriptors")
        #expect(six.1[4] == 0x08 && six.1[5] == 0x12 && six.1[6] & 0x04 != 0, "caching page with WCE")
        let ten = run([SCSI.Opcode.modeSense10, 0x08, 0x3F, 0, 0, 0, 0, 0, 255, 0], length: 255)
        #expect(ten.0 == .good(28) && SCSI.field(ten.1, at: 0, as: UInt16.self) == 26 && ten.1[8] == 0x08 && ten.1[10] & 0x04 != 0)
        let noCache = SCSITarget(store: MemoryBlockStore(hasWriteCache: false), serial: "x", identifier: UUID())
        #expect(run([SCSI.Opcode.modeSense6, 0x08, 0x08, 0, 255, 0], length: 255, on: noCache).1[6] & 0x04 == 0)
        // Changeable values are all zero; saved values are not supported; other pages are not there.
        #expect(run([SCSI.Opcode.modeSense6, 0x08, 0x48, 0, 255, 0], length: 255).1[6] == 0)
        #expect(run([SCSI.Opcode.modeSense6, 0x08, 0xC8, 0, 255, 0], length: 255).0 == .check(.savingParametersNotSupported))
        #expect(run([SCSI.Opcode.modeSense6, 0x08, 0x0A, 0, 255, 0], length: 255).0 == .check(.invalidFieldInCDB))
    }

    @Test func writeThenReadTenAndSixteenRoundTrip() {
        let pattern = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 8)
        defer { source.deallocate() }
        source.copyBytes(from: pattern)
        #expect(run(SCSI.write10(lba: 100, blocks: 8), direction: .write, pieces: [source]).0 == .good(4096))
        #expect(Array(store.bytes[100 * 512..<108 * 512]) == pattern)
        #expect(run(SCSI.read16(lba: 100, blocks: 8), length: 4096) == (.good(4096), pattern))
        #expect(run(SCSI.write16(lba: 2040, blocks: 8), direction: .write, pieces: [source]).0 == .good(4096), "the last 8 blocks")
        #expect(run(SCSI.read10(lba: 2040, blocks: 8), length: 4096).1 == pattern)
    }

    @Test func transfersSplitAtTheStoresMaximum() {
        let before = store.submissions.load(ordering: .relaxed)
        #expect(run(SCSI.read10(lba: 0, blocks: 200), length: 200 * 512).0 == .good(200 * 512))
        #expect(store.submissions.load(ordering: .relaxed) - before == 4, "200 blocks at 64 per submission")
    }

    @Test func piecesThatSplitBlocksGoThroughABounceBuffer() {
        let pattern = (0..<1024).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let a = UnsafeMutableRawBufferPointer.allocate(byteCount: 300, alignment: 8), b = UnsafeMutableRawBufferPointer.allocate(byteCount: 724, alignment: 8)
        defer { a.deallocate(); b.deallocate() }
        a.copyBytes(from: pattern[0..<300])
        b.copyBytes(from: pattern[300...])
        #expect(run(SCSI.write10(lba: 5, blocks: 2), direction: .write, pieces: [a, b]).0 == .good(1024))
        #expect(Array(store.bytes[5 * 512..<7 * 512]) == pattern)
        a.initializeMemory(as: UInt8.self, repeating: 0)
        b.initializeMemory(as: UInt8.self, repeating: 0)
        #expect(run(SCSI.read10(lba: 5, blocks: 2), direction: .read, pieces: [a, b]).0 == .good(1024))
        #expect(Array(a) + Array(b) == pattern)
    }

    @Test func anLBAOutOfRangeIsIllegalRequestAndTouchesNothing() {
        let before = store.submissions.load(ordering: .relaxed)
        #expect(run(SCSI.read10(lba: 2047, blocks: 2), length: 1024).0 == .check(.lbaOutOfRange))
        #expect(run(SCSI.write16(lba: UInt64.max - 1, blocks: 4), direction: .write, length: 2048).0 == .check(.lbaOutOfRange))
        #expect(store.submissions.load(ordering: .relaxed) == before)
        let sense = SCSI.Sense.lbaOutOfRange.fixedFormat
        #expect(sense.count == 18 && sense[0] == 0x70 && sense[2] == 0x05 && sense[7] == 10 && sense[12] == 0x21 && sense[13] == 0)
    }

    @Test func aTransferLengthThatDisagreesWithTheDataOrDirectionIsAnInvalidField() {
        #expect(run(SCSI.read10(lba: 0, blocks: 8), length: 512).0 == .check(.invalidFieldInCDB))
        #expect(run(SCSI.read10(lba: 0, blocks: 1), direction: .write, length: 512).0 == .check(.invalidFieldInCDB))
        #expect(run(SCSI.read10(lba: 0, blocks: 0)).0 == .good(0), "zero blocks is no transfer")
    }

    @Test func synchronizeCacheFlushesTheStore() {
        #expect(run(SCSI.synchronizeCache10).0 == .good())
        #expect(run([SCSI.Opcode.synchronizeCache16] + [UInt8](repeating: 0, count: 15)).0 == .good())
        #expect(store.flushes.load(ordering: .relaxed) == 2)
    }

    @Test func deviceFailuresAreMediumErrors() {
        store.failing.store(true, ordering: .relaxed)
        #expect(run(SCSI.read10(lba: 0, blocks: 1), length: 512).0 == .check(.unrecoveredReadError))
        #expect(run(SCSI.write10(lba: 0, blocks: 1), direction: .write, length: 512).0 == .check(.writeError))
        #expect(run(SCSI.synchronizeCache10).0 == .check(.writeError))
    }

    @Test func unknownOpcodesAndShortCDBsAreRefused() {
        #expect(run([0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0]).0 == .check(.invalidOpcode), "UNMAP is refused: VPD B0/B2 advertise no unmap")
        #expect(run([SCSI.Opcode.read10, 0, 0, 0]).0 == .check(.invalidFieldInCDB), "a READ(10) CDB of 4 bytes")
        #expect(run([]).0 == .check(.invalidOpcode))
    }
}
