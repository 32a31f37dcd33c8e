import Foundation
import Kernel
import VMBus

/// What a SCSI target reads and writes: blocks, submitted asynchronously.
public protocol SCSIBlockStore: AnyObject, Sendable {
    var blockSize: Int { get }
    var blockCount: UInt64 { get }
    /// The most blocks one submission may carry.
    var maxTransferBlocks: Int { get }
    /// Whether writes can sit in a volatile cache that a flush empties.
    var hasWriteCache: Bool { get }
    /// `memory` is memory the device may reach; it stays valid until `completion`.
    func submit(_ operation: DiskOperation, lba: UInt64, blocks: Int, memory: UnsafeMutableRawPointer?,
                completion: @escaping @Sendable (DiskStatus) -> Void)
    /// Memory the device may reach, for data that is not in whole blocks per
    /// piece; it stays valid while the returned object lives.
    func bounceBuffer(length: Int) -> BounceMemory?
}

/// A buffer a block store's device can reach.
public protocol BounceMemory: AnyObject, Sendable {
    var pointer: UnsafeMutableRawPointer { get }
}

extension IOBuffer: BounceMemory {}

/// A region of a disk of the root's OS, as a block store.
public final class DiskSlice: SCSIBlockStore {
    public let disk: Disk
    public let region: Range<UInt64>

    public init(disk: Disk, region: Range<UInt64>) {
        self.disk = disk
        self.region = region
    }

    public var blockSize: Int { disk.geometry.blockSize }
    public var blockCount: UInt64 { UInt64(region.count) }
    public var maxTransferBlocks: Int { max(1, disk.geometry.maxTransferBlocks) }
    public var hasWriteCache: Bool { disk.geometry.canFlush }

    public func submit(_ operation: DiskOperation, lba: UInt64, blocks: Int, memory: UnsafeMutableRawPointer?,
                       completion: @escaping @Sendable (DiskStatus) -> Void)
    {
        disk.submit(operation, lba: operation == .flush ? 0 : region.lowerBound + lba, blocks: blocks, memory: memory, completion: completion)
    }

    public func bounceBuffer(length: Int) -> BounceMemory? { disk.allocateBuffer(length: length) }
}

/// A command's data as the root sees it: pieces of memory, in order.
public struct SCSIData: @unchecked Sendable {
    // @unchecked Sendable: the memory belongs to the request in flight.
    public let pieces: [UnsafeMutableRawBufferPointer]
    public var count: Int { pieces.reduce(0) { $0 + $1.count } }

    public init(_ pieces: [UnsafeMutableRawBufferPointer]) { self.pieces = pieces }
    public static let none = SCSIData([])

    /// Copies `bytes` into the pieces from the start; returns how many fit.
    @discardableResult
    public func store(_ bytes: [UInt8]) -> Int {
        var done = 0
        for piece in pieces where done < bytes.count {
            let n = min(piece.count, bytes.count - done)
            bytes.withUnsafeBytes { piece.baseAddress!.copyMemory(from: $0.baseAddress! + done, byteCount: n) }
            done += n
        }
        return done
    }

    /// Gathers the pieces into `target` (or scatters it back with `toPieces`).
    func copy(_ target: UnsafeMutableRawPointer, toPieces: Bool) {
        var at = 0
        for piece in pieces {
            if toPieces { piece.baseAddress!.copyMemory(from: target + at, byteCount: piece.count) }
            else { (target + at).copyMemory(from: piece.baseAddress!, byteCount: piece.count) }
            at += piece.count
        }
    }
}

/// How a command ended: SCSI status, sense after CHECK CONDITION, bytes moved.
public struct SCSIResult: Sendable, Equatable {
    public let status: UInt8
    public let sense: SCSI.Sense?
    public let transferred: Int

    public static func good(_ transferred: Int = 0) -> SCSIResult { SCSIResult(status: SCSI.Status.good, sense: nil, transferred: transferred) }
    public static func check(_ sense: SCSI.Sense) -> SCSIResult { SCSIResult(status: SCSI.Status.checkCondition, sense: sense, transferred: 0) }
}

/// A small SCSI direct-access target (one LUN) over a block store: what a
/// Hyper-V child's storvsc and Linux's sd driver ask of a disk. Anything it
/// does not implement, a bad field or an LBA out of range is CHECK CONDITION
/// with ILLEGAL REQUEST sense, as SPC-4 says.
public final class SCSITarget: Sendable {
    public let store: SCSIBlockStore
    public let serial: String
    /// 16 bytes naming the disk (an NAA-6 designator is made of it).
    public let identifier: [UInt8]
    public static let vendor = "Oyako"
    public static let product = "Virtual Disk"
    public static let revision = "1.0"
    /// VPD pages answered, in order.
    public static let vpdPages: [UInt8] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]

    public init(store: SCSIBlockStore, serial: String, identifier: UUID) {
        self.store = store
        self.serial = serial
        self.identifier = withUnsafeBytes(of: identifier.uuid) { Array($0) }
    }

    /// Runs one CDB. `direction` is what the initiator said the data does;
    /// `completion` runs exactly once, possibly on another thread.
    public func execute(cdb: [UInt8], direction: StorageProtocol.DataDirection, data: SCSIData,
                        completion: @escaping @Sendable (SCSIResult) -> Void)
    {
        guard let opcode = cdb.first, cdb.count >= Self.cdbLength(opcode) ?? Int.max else {
            return completion(.check(cdb.isEmpty || Self.cdbLength(cdb[0]) == nil ? .invalidOpcode : .invalidFieldInCDB))
        }
        switch opcode {
        case SCSI.Opcode.read10, SCSI.Opcode.write10:
            transfer(write: opcode == SCSI.Opcode.write10, lba: UInt64(SCSI.field(cdb, at: 2, as: UInt32.self)),
                     blocks: Int(SCSI.field(cdb, at: 7, as: UInt16.self)), direction: direction, data: data, completion: completion)
        case SCSI.Opcode.read16, SCSI.Opcode.write16:
            transfer(write: opcode == SCSI.Opcode.write16, lba: SCSI.field(cdb, at: 2, as: UInt64.self),
                     blocks: Int(SCSI.field(cdb, at: 10, as: UInt32.self)), direction: direction, data: data, completion: completion)
        case SCSI.Opcode.synchronizeCache10, SCSI.Opcode.synchronizeCache16:
            store.submit(.flush, lba: 0, blocks: 0, memory: nil) { status in
                completion(status.isOK ? .good() : .check(.writeError))
            }
        default:
            completion(answer(cdb, direction: direction, data: data))
        }
    }

    /// The CDB length an opcode needs, nil for opcodes this target does not know.
    static func cdbLength(_ opcode: UInt8) -> Int? {
        switch opcode {
        case SCSI.Opcode.testUnitReady, SCSI.Opcode.requestSense, SCSI.Opcode.inquiry, SCSI.Opcode.modeSense6: 6
        case SCSI.Opcode.readCapacity10, SCSI.Opcode.read10, SCSI.Opcode.write10, SCSI.Opcode.synchronizeCache10, SCSI.Opcode.modeSense10: 10
        case SCSI.Opcode.reportLUNs: 12
        case SCSI.Opcode.read16, SCSI.Opcode.write16, SCSI.Opcode.synchronizeCache16, SCSI.Opcode.serviceActionIn16: 16
        default: nil
        }
    }

    // MARK: Commands answered from the target's own data

    private func answer(_ cdb: [UInt8], direction: StorageProtocol.DataDirection, data: SCSIData) -> SCSIResult {
        let reply: Result<(bytes: [UInt8], allocation: Int), SCSI.Sense>
        switch cdb[0] {
        case SCSI.Opcode.testUnitReady: return .good()
        case SCSI.Opcode.requestSense: reply = .success((SCSI.Sense(key: SCSI.SenseKey.noSense, asc: 0).fixedFormat, Int(cdb[4])))
        case SCSI.Opcode.inquiry: reply = inquiry(cdb).map { ($0, Int(SCSI.field(cdb, at: 3, as: UInt16.self))) }
        case SCSI.Opcode.readCapacity10: reply = .success((readCapacity10(), 8))
        case SCSI.Opcode.serviceActionIn16:
            guard cdb[1] & 0x1F == SCSI.readCapacity16ServiceAction else { return .check(.invalidFieldInCDB) }
            reply = .success((readCapacity16(), Int(SCSI.field(cdb, at: 10, as: UInt32.self))))
        case SCSI.Opcode.reportLUNs:
            reply = .success(([0, 0, 0, 8, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 8), Int(SCSI.field(cdb, at: 6, as: UInt32.self))))
        case SCSI.Opcode.modeSense6: reply = modeSense(cdb, long: false).map { ($0, Int(cdb[4])) }
        case SCSI.Opcode.modeSense10: reply = modeSense(cdb, long: true).map { ($0, Int(SCSI.field(cdb, at: 7, as: UInt16.self))) }
        default: return .check(.invalidOpcode)
        }
        switch reply {
        case .failure(let sense): return .check(sense)
        case .success(let (bytes, allocation)):
            guard direction == .read || data.count == 0 else { return .check(.invalidFieldInCDB) }
            return .good(data.store(Array(bytes.prefix(allocation))))
        }
    }

    private func inquiry(_ cdb: [UInt8]) -> Result<[UInt8], SCSI.Sense> {
        let evpd = cdb[1] & 1 != 0, page = cdb[2]
        guard evpd else { return page == 0 ? .success(standardInquiry()) : .failure(.invalidFieldInCDB) }
        let body: [UInt8]
        switch page {
        case 0x00: body = Self.vpdPages
        case 0x80: body = Array(serial.utf8)
        case 0x83:
            // NAA IEEE Registered Extended (type 3, binary, LUN association), 16 bytes.
            var naa = identifier
            naa[0] = 0x60 | (naa[0] & 0x0F)
            let t10 = Array(Self.padded(Self.vendor, 8).utf8) + Array(serial.utf8)
            body = [0x01, 0x03, 0x00, UInt8(naa.count)] + naa + [0x02, 0x01, 0x00, UInt8(t10.count)] + t10
        case 0xB0:
            // Block limits: transfer lengths in blocks; no UNMAP, no WRITE SAME.
            var limits = [UInt8](repeating: 0, count: 0x3C)
            let maxBlocks = UInt32(clamping: StorageVSP.maxTransferBytes / store.blockSize)
            limits.replaceSubrange(4..<8, with: SCSI.bigEndian(maxBlocks))   // MAXIMUM TRANSFER LENGTH (bytes 8-11)
            limits.replaceSubrange(8..<12, with: SCSI.bigEndian(maxBlocks))  // OPTIMAL TRANSFER LENGTH (bytes 12-15)
            body = limits
        case 0xB1:
            var characteristics = [UInt8](repeating: 0, count: 0x3C)
            characteristics[1] = 1  // MEDIUM ROTATION RATE = 1: non-rotating
            body = characteristics
        case 0xB2: body = [0, 0, 0, 0]  // Logical block provisioning: fully provisioned, no unmap
        default: return .failure(.invalidFieldInCDB)
        }
        return .success([0x00, page] + SCSI.bigEndian(UInt16(body.count)) + body)
    }

    private func standardInquiry() -> [UInt8] {
        // Direct-access block device, SPC-4, response format 2, CMDQUE.
        [0x00, 0x00, 0x06, 0x02, 31, 0x00, 0x00, 0x02]
            + Array(Self.padded(Self.vendor, 8).utf8) + Array(Self.padded(Self.product, 16).utf8) + Array(Self.padded(Self.revision, 4).utf8)
    }

    private func readCapacity10() -> [UInt8] {
        let last = store.blockCount == 0 ? 0 : store.blockCount - 1
        return SCSI.bigEndian(UInt32(clamping: last)) + SCSI.bigEndian(UInt32(store.blockSize))
    }

    private func readCapacity16() -> [UInt8] {
        let last = store.blockCount == 0 ? 0 : store.blockCount - 1
        return SCSI.bigEndian(last) + SCSI.bigEndian(UInt32(store.blockSize)) + [UInt8](repeating: 0, count: 20)
    }

    /// MODE SENSE with the caching page (0x08) only; no block descriptors.
    private func modeSense(_ cdb: [UInt8], long: Bool) -> Result<[UInt8], SCSI.Sense> {
        let control = cdb[2] >> 6, page = cdb[2] & 0x3F
        guard control != 3 else { return .failure(.savingParametersNotSupported) }
        guard page == 0x08 || page == 0x3F else { return .failure(.invalidFieldInCDB) }
        var caching = [UInt8](repeating: 0, count: 20)
        caching[0] = 0x08
        caching[1] = 0x12
        // WCE: a write cache is present; changeable values (control 1) are all zero.
        if control != 1 && store.hasWriteCache { caching[2] = 0x04 }
        if long {
            return .success(SCSI.bigEndian(UInt16(6 + caching.count)) + [0, 0, 0, 0, 0, 0] + caching)
        }
        return .success([UInt8(3 + caching.count), 0, 0, 0] + caching)
    }

    private static func padded(_ s: String, _ n: Int) -> String {
        String(s.prefix(n)).padding(toLength: n, withPad: " ", startingAt: 0)
    }

    // MARK: READ and WRITE

    private func transfer(write: Bool, lba: UInt64, blocks: Int, direction: StorageProtocol.DataDirection, data: SCSIData,
                          completion: @escaping @Sendable (SCSIResult) -> Void)
    {
        let blockSize = store.blockSize
        guard lba <= store.blockCount, UInt64(blocks) <= store.blockCount - lba else { return completion(.check(.lbaOutOfRange)) }
        guard blocks > 0 else { return completion(.good()) }
        guard data.count == blocks * blockSize, direction == (write ? .write : .read) else { return completion(.check(.invalidFieldInCDB)) }
        let operation: DiskOperation = write ? .write : .read
        let failure: SCSI.Sense = write ? .writeError : .unrecoveredReadError
        let direct = Self.segments(data, blockSize: blockSize, maxBlocks: store.maxTransferBlocks)
        // Pieces that split blocks: the data moves through memory of the store's own.
        let bounce = direct == nil ? store.bounceBuffer(length: data.count) : nil
        if direct == nil && bounce == nil { return completion(.check(.internalTargetFailure)) }
        if write, let bounce { data.copy(bounce.pointer, toPieces: false) }
        let parts = direct ?? Self.segments(SCSIData([UnsafeMutableRawBufferPointer(start: bounce!.pointer, count: data.count)]),
                                            blockSize: blockSize, maxBlocks: store.maxTransferBlocks) ?? []
        let remaining = Countdown(parts.count)
        var at = lba
        for (pointer, count) in parts {
            store.submit(operation, lba: at, blocks: count, memory: pointer) { status in
                guard let result = remaining.done(status) else { return }
                if let bounce, result.isOK, !write { data.copy(bounce.pointer, toPieces: true) }
                withExtendedLifetime(bounce) {}
                completion(result.isOK ? .good(blocks * blockSize) : .check(result == .outOfRange ? .lbaOutOfRange : failure))
            }
            at += UInt64(count)
        }
    }

    /// The pieces cut into submissions of whole blocks, at most `maxBlocks`
    /// each; nil when a piece is not whole blocks.
    static func segments(_ data: SCSIData, blockSize: Int, maxBlocks: Int) -> [(UnsafeMutableRawPointer, Int)]? {
        var out: [(UnsafeMutableRawPointer, Int)] = []
        for piece in data.pieces {
            guard piece.count % blockSize == 0 else { return nil }
            var done = 0
            while done < piece.count {
                let blocks = min(maxBlocks, (piece.count - done) / blockSize)
                out.append((piece.baseAddress! + done, blocks))
                done += blocks * blockSize
            }
        }
        return out
    }
}
