import Foundation
import Logging
import Machine
import SystemPackage

/// The `nvmelite` storage controller: a simplified NVMe.
///
/// One namespace backed by a `DiskImage`; an admin queue pair programmed
/// through AQA/ASQ/ACQ; one I/O queue pair created by admin commands; 64-byte
/// commands and 16-byte completions with a phase bit in DMA memory; PRP data
/// pointers (PRP1, PRP2 or a PRP list); SQ tail / CQ head doorbells; MSI
/// vector 0 for the admin CQ and the vector named at CQ creation for I/O.
///
/// Register writes arrive on the CPU's thread and only latch values and wake
/// the controller thread, which fetches commands, moves data and posts
/// completions on its own, as the hardware would.
public final class NVMeLite: BusDevice, @unchecked Sendable {
    // @unchecked Sendable: register state is guarded by `condition`; queue
    // state is touched only by the controller thread.

    public static let vendorID: UInt16 = 0x0A7A
    public static let deviceID: UInt16 = 0x0001
    /// The controller's memory page size for PRPs (CC.MPS 0): a property of
    /// the device, documented in its datasheet, not the machine's page size.
    public static let pageSize = 4096

    enum Register {
        static let cap: UInt64 = 0x00
        static let vs: UInt64 = 0x08
        static let cc: UInt64 = 0x14
        static let csts: UInt64 = 0x1C
        static let aqa: UInt64 = 0x24
        static let asq: UInt64 = 0x28
        static let acq: UInt64 = 0x30
        static let doorbells: UInt64 = 0x1000
    }

    enum Status: UInt16 {
        case success = 0x00
        case invalidOpcode = 0x01
        case invalidField = 0x02
        case dataTransferError = 0x04
        case internalError = 0x06
        case lbaOutOfRange = 0x80
    }

    public let name = "nvmelite"
    public let identity = DeviceIdentity(vendorID: NVMeLite.vendorID, deviceID: NVMeLite.deviceID, classCode: 0x01_08_02)
    public let bars: [BAR] = [.mmio(size: 0x2000)]
    public let interruptCount = 2

    public let disk: DiskImage
    public let blockSize: Int
    public var blockCount: UInt64 { disk.size / UInt64(blockSize) }
    /// Largest transfer, as 2^mdts pages.
    let mdts: UInt8 = 5
    let maxQueueEntries = 256

    /// Counters, readable any time.
    public struct Statistics: Sendable {
        public var commands = 0, flushes = 0
        public var bytesRead: UInt64 = 0, bytesWritten: UInt64 = 0
        /// Commands whose memory the device could not reach by DMA, and all
        /// commands completed with an error (DMA faults and I/O errors).
        public var dmaFaults = 0, errors = 0
        /// Out-of-range commands performed anyway (with `checksLBARange` off).
        public var uncheckedOutOfRange = 0
        /// SQ doorbell writes that overran the queue: they handed over a
        /// slot whose command the controller had not taken yet, or brought
        /// the tail round to the head (a queue of N slots holds N - 1
        /// commands; with N it looks empty). The commands are lost, as on
        /// real controllers (NVMe: Invalid Doorbell Write Value).
        public var submissionOverruns = 0
    }

    // Registers and doorbells (guarded by `condition`).
    private let engine = DeviceThread()
    private var condition: NSCondition { engine.condition }
    private var cc: UInt32 = 0
    private var csts: UInt32 = 0
    private var aqa: UInt32 = 0
    private var asq: UInt64 = 0
    private var acq: UInt64 = 0
    private var sqTail: [UInt16] = [0, 0]
    private var cqHead: [UInt16] = [0, 0]
    /// CQ head doorbells written since the controller thread last looked:
    /// if the CQ still holds completions, its vector is raised again.
    private var headWritten = [false, false]
    /// Commands fetched when their doorbell rang, by queue and slot, as a
    /// fast controller fetches them: a driver that rings before the command
    /// is in its slot has the device see the slot's old contents.
    private var fetched: [[Int: [UInt8]]] = [[:], [:]]
    /// Where each SQ lies, for fetching at the doorbell (`sqs` is the
    /// controller thread's own).
    private var sqShapes: [(base: UInt64, entries: Int)?] = [nil, nil]
    private var work = false
    private var stats = Statistics()
    private var failIO = false

    /// Fault injection: I/O commands complete with an internal-error status.
    public func injectErrors(_ on: Bool) { condition.withLock { failIO = on } }

    /// A stalled controller: while held, doorbells are noted (and their
    /// commands fetched) but none is executed; releasing it processes what
    /// was rung meanwhile. Tests use it to keep requests outstanding for as
    /// long as they need.
    public func holdCommands(_ on: Bool) {
        condition.withLock {
            held = on
            condition.signal()
        }
    }
    private var held = false

    /// Whether the controller refuses LBAs beyond the namespace (real ones
    /// do; some hardware does not). Off, an out-of-range transfer lands on
    /// wrapped-around blocks and counts in `uncheckedOutOfRange`: the
    /// conformance suite turns it off to see that the driver checks itself.
    public var checksLBARange: Bool {
        get { condition.withLock { checksRange } }
        set { condition.withLock { checksRange = newValue } }
    }
    private var checksRange = true

    // Controller-thread state.
    private struct SubmissionQueue { var base: UInt64; var entries: Int; var head: Int; var cq: Int }
    private struct CompletionQueue { var base: UInt64; var entries: Int; var tail: Int; var phase: UInt16; var vector: Int; var interrupts: Bool }
    private var sqs: [SubmissionQueue?] = [nil, nil]
    private var cqs: [CompletionQueue?] = [nil, nil]
    private var port: DevicePort?
    private let logger = Logger(label: "oyako.device.nvmelite")

    /// - Parameters:
    ///   - disk: the backing image; its size sets the namespace size.
    ///   - blockSize: logical block size, a power of two from 512 to 4096.
    /// - Parameter writeCache: a volatile write cache (NVMe's VWC): writes
    ///   complete into it, FLUSH puts them on the medium, `powerCut` loses
    ///   what was not flushed.
    public init(disk: DiskImage, blockSize: Int = 512, writeCache: Bool = false) {
        precondition(blockSize >= 512 && blockSize <= 4096 && blockSize & (blockSize - 1) == 0)
        self.disk = disk
        self.blockSize = blockSize
        cache = writeCache ? VolatileWriteCache(blockSize: blockSize) : nil
    }

    private let cache: VolatileWriteCache?

    /// Power lost: the write cache's contents are gone (the medium keeps
    /// what was flushed). Returns how many blocks were lost.
    @discardableResult
    public func powerCut() -> Int { cache?.discard() ?? 0 }

    /// Blocks written but not yet flushed to the medium.
    public var unflushedBlocks: Int { cache?.dirtyBlocks ?? 0 }

    public var statistics: Statistics {
        condition.lock()
        defer { condition.unlock() }
        return stats
    }

    // MARK: Power

    public func powerOn(_ port: DevicePort) {
        engine.start(name: "nvmelite@\(port.address)", prepare: { self.port = port }) { [self] in controllerLoop() }
    }

    public func powerOff() {
        engine.stop()
    }

    // MARK: Registers (CPU thread)

    public func mmioRead(bar: Int, offset: UInt64, width: Int) -> UInt64 {
        condition.lock()
        defer { condition.unlock() }
        let cap = UInt64(maxQueueEntries - 1) | (1 << 16) /* CQR */ | (20 << 24) /* TO: 10 s */
        let value: UInt64
        switch offset & ~7 {
        case Register.cap: value = cap
        case Register.vs & ~7: value = UInt64(0x0001_0000) | UInt64(0) << 32
        case Register.cc & ~7: value = UInt64(cc) << 32
        case Register.csts & ~7: value = UInt64(csts) << 32
        case Register.aqa & ~7: value = UInt64(aqa) << 32
        case Register.asq: value = asq
        case Register.acq: value = acq
        default: value = 0
        }
        if width == 8 { return value }
        let shifted = offset & 4 != 0 ? value >> 32 : value
        return width == 4 ? shifted & 0xFFFF_FFFF : shifted & ((1 << UInt64(width * 8)) - 1)
    }

    public func mmioWrite(bar: Int, offset: UInt64, width: Int, value: UInt64) {
        condition.lock()
        defer { condition.unlock() }
        switch (offset, width) {
        case (Register.cc, 4):
            cc = UInt32(truncatingIfNeeded: value)
            work = true
        case (Register.aqa, 4): aqa = UInt32(truncatingIfNeeded: value)
        case (Register.asq, 8): asq = value
        case (Register.asq, 4): asq = asq & ~0xFFFF_FFFF | value & 0xFFFF_FFFF
        case (Register.asq + 4, 4): asq = asq & 0xFFFF_FFFF | value << 32
        case (Register.acq, 8): acq = value
        case (Register.acq, 4): acq = acq & ~0xFFFF_FFFF | value & 0xFFFF_FFFF
        case (Register.acq + 4, 4): acq = acq & 0xFFFF_FFFF | value << 32
        case (Register.doorbells..<(Register.doorbells + 16), 4):
            let index = Int((offset - Register.doorbells) / 4)
            if index % 2 == 0 {
                let qid = index / 2
                fetchLocked(qid, from: Int(sqTail[qid]), to: Int(UInt16(truncatingIfNeeded: value)))
                sqTail[qid] = UInt16(truncatingIfNeeded: value)
            } else {
                cqHead[index / 2] = UInt16(truncatingIfNeeded: value)
                headWritten[index / 2] = true
            }
            work = true
        default:
            return
        }
        condition.signal()
    }

    // MARK: Controller thread

    /// Runs on the device's thread, entered and left with `condition` held.
    private func controllerLoop() {
        while engine.running {
            while engine.running && (!work || held) { condition.wait() }
            guard engine.running else { break }
            work = false
            let enable = cc & 1 == 1
            let ready = csts & 1 == 1
            if enable && !ready {
                enableLocked()
            } else if !enable && ready {
                resetLocked()
            }
            guard csts & 1 == 1, let port else { continue }
            let tails = sqTail
            let heads = cqHead
            let rearm = headWritten
            headWritten = [false, false]
            condition.unlock()
            var raised = [false, false]
            for qid in 0..<2 {
                if let cq = processQueue(qid, tail: Int(tails[qid]), cqHeads: heads, port: port) { raised[cq] = true }
            }
            // A handler that stopped early wrote the head short of the tail:
            // raise again, as an MSI-X controller re-sends a pending message.
            for (index, cq) in cqs.enumerated() where rearm[index] && !raised[index] {
                if let cq, cq.interrupts, cq.tail != Int(heads[index]) { port.raiseInterrupt(cq.vector) }
            }
            condition.lock()
        }
    }

    /// Fetches the commands a doorbell handed over, slots `from` up to
    /// `to`, at once (a tail outside the queue fetches nothing; the
    /// controller thread ignores it too).
    private func fetchLocked(_ qid: Int, from: Int, to: Int) {
        guard let sq = sqShapes[qid], let port, from < sq.entries, to < sq.entries else { return }
        var slot = from, retaken = 0
        while slot != to {
            // Still holding a command the controller has not taken: overrun.
            if fetched[qid][slot] != nil { retaken += 1 }
            var command = [UInt8](repeating: 0, count: 64)
            let read: Void? = try? command.withUnsafeMutableBytes { try port.dmaRead(sq.base + UInt64(slot * 64), into: $0) }
            // Not reachable now: the controller thread tries again (and faults) when it gets there.
            fetched[qid][slot] = read == nil ? nil : command
            slot = (slot + 1) % sq.entries
        }
        if retaken > 0 || (from != to && fetched[qid].count >= sq.entries) {
            stats.submissionOverruns += 1
            logger.error("nvmelite: SQ \(qid) doorbell to \(to) overran the queue (\(sq.entries) slots, \(fetched[qid].count) commands not yet taken, \(retaken) slot(s) handed over again); commands are lost")
        }
    }

    private func enableLocked() {
        let sqEntries = Int(aqa & 0xFFF) + 1
        let cqEntries = Int((aqa >> 16) & 0xFFF) + 1
        guard sqEntries >= 2, cqEntries >= 2, asq % UInt64(Self.pageSize) == 0, acq % UInt64(Self.pageSize) == 0, asq != 0, acq != 0 else {
            logger.error("nvmelite: enabled with an invalid admin queue (AQA \(aqa), ASQ \(asq), ACQ \(acq)); controller fatal")
            csts = 2 // CFS
            return
        }
        sqs = [SubmissionQueue(base: asq, entries: sqEntries, head: 0, cq: 0), nil]
        sqShapes = [(asq, sqEntries), nil]
        cqs = [CompletionQueue(base: acq, entries: cqEntries, tail: 0, phase: 1, vector: 0, interrupts: true), nil]
        sqTail = [0, 0]
        cqHead = [0, 0]
        headWritten = [false, false]
        fetched = [[:], [:]]
        csts = 1
    }

    private func resetLocked() {
        sqs = [nil, nil]
        sqShapes = [nil, nil]
        cqs = [nil, nil]
        sqTail = [0, 0]
        cqHead = [0, 0]
        headWritten = [false, false]
        fetched = [[:], [:]]
        csts = 0
    }

    /// Fetches and executes commands of one SQ up to `tail`, posting
    /// completions while the CQ has room; one interrupt per batch. Returns
    /// the CQ whose vector it raised, if it did.
    private func processQueue(_ qid: Int, tail: Int, cqHeads: [UInt16], port: DevicePort) -> Int? {
        guard var sq = sqs[qid], tail < sq.entries, var cq = cqs[sq.cq] else { return nil }
        var posted = false
        while sq.head != tail {
            // Never fill the CQ to equality with the host's head.
            if (cq.tail + 1) % cq.entries == Int(cqHeads[sq.cq]) { break }
            var command = [UInt8](repeating: 0, count: 64)
            var status: Status
            var result: UInt32 = 0
            var cid: UInt16 = 0
            do {
                if let early = condition.withLock({ fetched[qid].removeValue(forKey: sq.head) }) {
                    command = early
                } else {
                    try command.withUnsafeMutableBytes { try port.dmaRead(sq.base + UInt64(sq.head * 64), into: $0) }
                }
                cid = command.withUnsafeBytes { $0.load(fromByteOffset: 2, as: UInt16.self) }
                (status, result) = qid == 0 ? executeAdmin(command, port: port) : executeIO(command, port: port)
            } catch {
                // The command itself could not be fetched: report it at the slot.
                status = .dataTransferError
                countFault()
            }
            sq.head = (sq.head + 1) % sq.entries
            sqs[qid] = sq
            var cqe = [UInt8](repeating: 0, count: 16)
            cqe.withUnsafeMutableBytes { p in
                p.storeBytes(of: result, toByteOffset: 0, as: UInt32.self)
                p.storeBytes(of: UInt16(sq.head), toByteOffset: 8, as: UInt16.self)
                p.storeBytes(of: UInt16(qid), toByteOffset: 10, as: UInt16.self)
                p.storeBytes(of: cid, toByteOffset: 12, as: UInt16.self)
                p.storeBytes(of: status.rawValue << 1 | cq.phase, toByteOffset: 14, as: UInt16.self)
            }
            do {
                try cqe.withUnsafeBytes { try port.dmaWrite(cq.base + UInt64(cq.tail * 16), from: $0) }
            } catch {
                countFault()
            }
            cq.tail += 1
            if cq.tail == cq.entries {
                cq.tail = 0
                cq.phase ^= 1
            }
            cqs[sq.cq] = cq
            posted = true
            // Admin commands can create or delete queues: re-read them.
            if qid == 0 {
                guard let refreshed = sqs[0], let refreshedCQ = cqs[0] else { break }
                sq = refreshed
                cq = refreshedCQ
            }
        }
        guard posted && cq.interrupts else { return nil }
        port.raiseInterrupt(cq.vector)
        return sq.cq
    }

    private func countFault() {
        condition.lock()
        stats.dmaFaults += 1
        stats.errors += 1
        condition.unlock()
    }

    private func dword(_ command: [UInt8], _ offset: Int) -> UInt32 {
        command.withUnsafeBytes { $0.load(fromByteOffset: offset, as: UInt32.self) }
    }

    private func qword(_ command: [UInt8], _ offset: Int) -> UInt64 {
        command.withUnsafeBytes { $0.load(fromByteOffset: offset, as: UInt64.self) }
    }

    private func executeAdmin(_ command: [UInt8], port: DevicePort) -> (Status, UInt32) {
        let opcode = command[0]
        let prp1 = qword(command, 24)
        let cdw10 = dword(command, 40)
        let cdw11 = dword(command, 44)
        switch opcode {
        case 0x06: // IDENTIFY
            var data = [UInt8](repeating: 0, count: Self.pageSize)
            switch cdw10 & 0xFF {
            case 1: // controller
                let model = Array("Oyako nvmelite".utf8)
                data.replaceSubrange(24..<(24 + model.count), with: model)
                data[77] = mdts
            case 0: // namespace 1
                guard dword(command, 4) == 1 else { return (.invalidField, 0) }
                withUnsafeBytes(of: blockCount.littleEndian) { data.replaceSubrange(0..<8, with: $0) }
                withUnsafeBytes(of: blockCount.littleEndian) { data.replaceSubrange(8..<16, with: $0) }
                data[130] = UInt8(blockSize.trailingZeroBitCount)
            default:
                return (.invalidField, 0)
            }
            do {
                try data.withUnsafeBytes { try port.dmaWrite(prp1, from: $0) }
            } catch {
                countFault()
                return (.dataTransferError, 0)
            }
            return (.success, 0)
        case 0x05, 0x01: // CREATE I/O CQ / SQ
            let qid = Int(cdw10 & 0xFFFF)
            let entries = Int(cdw10 >> 16) + 1
            guard qid == 1, entries >= 2, entries <= maxQueueEntries, prp1 % UInt64(Self.pageSize) == 0, prp1 != 0 else {
                return (.invalidField, 0)
            }
            if opcode == 0x05 {
                cqs[1] = CompletionQueue(base: prp1, entries: entries, tail: 0, phase: 1, vector: Int(cdw11 >> 16), interrupts: cdw11 & 2 != 0)
            } else {
                let cqid = Int(cdw11 >> 16)
                guard cqid == 1, cqs[1] != nil else { return (.invalidField, 0) }
                sqs[1] = SubmissionQueue(base: prp1, entries: entries, head: 0, cq: 1)
                condition.withLock {
                    sqShapes[1] = (prp1, entries)
                    fetched[1] = [:]
                    sqTail[1] = 0
                }
            }
            return (.success, 0)
        case 0x00: // DELETE I/O SQ
            sqs[1] = nil
            condition.withLock {
                sqShapes[1] = nil
                fetched[1] = [:]
            }
            return (.success, 0)
        case 0x04: // DELETE I/O CQ
            guard sqs[1] == nil else { return (.invalidField, 0) }
            cqs[1] = nil
            return (.success, 0)
        default:
            return (.invalidOpcode, 0)
        }
    }

    private func executeIO(_ command: [UInt8], port: DevicePort) -> (Status, UInt32) {
        let opcode = command[0]
        condition.lock()
        stats.commands += 1
        let failing = failIO
        condition.unlock()
        if failing { return (.internalError, 0) }
        switch opcode {
        case 0x00: // FLUSH
            do {
                try cache?.flush(to: disk)
                try disk.flush()
            } catch {
                logger.error("nvmelite: fdatasync of \(disk.path) failed: \(error)")
                return (.internalError, 0)
            }
            condition.lock()
            stats.flushes += 1
            condition.unlock()
            return (.success, 0)
        case 0x01, 0x02: // WRITE, READ
            let write = opcode == 0x01
            var lba = UInt64(dword(command, 40)) | UInt64(dword(command, 44)) << 32
            let blocks = Int(dword(command, 48) & 0xFFFF) + 1
            let length = blocks * blockSize
            if !(lba < blockCount && UInt64(blocks) <= blockCount - lba) {
                let trusting = condition.withLock { () -> Bool in
                    if !checksRange { stats.uncheckedOutOfRange += 1 }
                    return !checksRange
                }
                guard trusting else { return (.lbaOutOfRange, 0) }
                // Hardware that trusts its driver: the address wraps (its
                // upper bits dropped) and the transfer lands on other blocks.
                lba = (lba % blockCount) > blockCount - UInt64(min(UInt64(blocks), blockCount)) ? 0 : lba % blockCount
            }
            guard length <= (1 << Int(mdts)) * Self.pageSize else { return (.invalidField, 0) }
            let pieces: [UnsafeMutableRawBufferPointer]
            do {
                pieces = try dataPieces(prp1: qword(command, 24), prp2: qword(command, 32), length: length, deviceWrites: !write, port: port)
            } catch let fault as DMAFault {
                _ = fault
                countFault()
                return (.dataTransferError, 0)
            } catch {
                return (.invalidField, 0)
            }
            do {
                if write, let cache {
                    cache.write(pieces, lba: lba)
                } else if write {
                    try disk.write(from: pieces, at: lba * UInt64(blockSize))
                } else {
                    try disk.read(into: pieces, at: lba * UInt64(blockSize))
                    cache?.overlay(pieces, lba: lba)
                }
            } catch {
                logger.error("nvmelite: \(write ? "write" : "read") of \(disk.path) failed: \(error)")
                condition.lock()
                stats.errors += 1
                condition.unlock()
                return (.internalError, 0)
            }
            condition.lock()
            if write { stats.bytesWritten += UInt64(length) } else { stats.bytesRead += UInt64(length) }
            condition.unlock()
            return (.success, 0)
        default:
            return (.invalidOpcode, 0)
        }
    }

    struct InvalidPRP: Error {}

    /// Resolves PRP1/PRP2 (or a PRP list) into CPU pieces of memory through
    /// the IOMMU. Only PRP1 may have a page offset.
    private func dataPieces(prp1: UInt64, prp2: UInt64, length: Int, deviceWrites: Bool, port: DevicePort) throws -> [UnsafeMutableRawBufferPointer] {
        let page = UInt64(Self.pageSize)
        let first = min(length, Int(page - prp1 % page))
        var segments: [(UInt64, Int)] = [(prp1, first)]
        var remaining = length - first
        if remaining > 0 {
            if remaining <= Self.pageSize {
                guard prp2 % page == 0 else { throw InvalidPRP() }
                segments.append((prp2, remaining))
            } else {
                guard prp2 % 8 == 0 else { throw InvalidPRP() }
                let count = (remaining + Self.pageSize - 1) / Self.pageSize
                var list = [UInt64](repeating: 0, count: count)
                try list.withUnsafeMutableBytes { try port.dmaRead(prp2, into: $0) }
                for entry in list {
                    guard entry % page == 0 else { throw InvalidPRP() }
                    segments.append((entry, min(remaining, Self.pageSize)))
                    remaining -= Self.pageSize
                }
            }
        }
        var pieces: [UnsafeMutableRawBufferPointer] = []
        pieces.reserveCapacity(segments.count)
        for (address, count) in segments {
            pieces.append(contentsOf: try port.dma(address, length: count, write: deviceWrites))
        }
        return pieces
    }
}
