import Foundation
import Machine
import Kernel
import VMBus

/// The root's storage virtualization service provider for one channel: a
/// child's virtual disk is a region of a disk of the root's OS, so every
/// child I/O goes through the vendor driver that serves that disk.
///
/// Data moves without copies: I/O ranges must lie in the data buffer the
/// child granted (a GPADL), which the root sees in its foreign window, and
/// the disk's driver maps those pages for its device like any OS memory.
///
/// The child is untrusted. A malformed packet, a range outside the data
/// buffer, a duplicate transaction id or I/O before initialisation closes
/// this channel with the reason; an out-of-range LBA is an ordinary error
/// answered with a status. A completion is sent only after the disk
/// completed, so acknowledged writes and flushes are on the disk.
public final class StorageVSP: ChannelHandler, @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `condition`.
    public let disk: Disk
    public let region: Range<UInt64>
    let context: ChannelContext
    public static let maxTransferBytes = 256 << 10
    public static let maxOutstanding = 256

    private enum Phase { case fresh, initializing, ready }

    public struct Statistics: Sendable {
        public var requests = 0
        public var bytesRead: UInt64 = 0
        public var bytesWritten: UInt64 = 0
        public var flushes = 0
        public var errors = 0
    }

    private let condition = NSCondition()
    private var phase = Phase.fresh
    private var version: UInt16?
    private var dataBuffer: GPADLMapping?
    private var outstanding: Set<UInt64> = []
    private var stats = Statistics()

    public init(disk: Disk, region: Range<UInt64>, context: ChannelContext) {
        self.disk = disk
        self.region = region
        self.context = context
    }

    public var statistics: Statistics { condition.withLock { stats } }

    public func packetReceived(_ packet: Packet, on channel: HostChannel) throws(ProtocolViolation) {
        guard packet.kind == .inband || packet.kind == .gpaDirect else {
            throw .unexpectedPacket(packet.kind, channel: "storage")
        }
        guard packet.flags & Packet.completionRequested != 0 else {
            throw .completionNotRequested(transaction: packet.transactionID)
        }
        var reader = ByteReader(packet.payload)
        let header: StorageProtocol.Header
        do {
            header = try StorageProtocol.decodeHeader(&reader)
        } catch {
            throw .truncated("storage packet: \(error.reason)")
        }
        guard let operation = StorageProtocol.Operation(rawValue: header.operation) else {
            throw .unknownOperation("storage operation \(header.operation)")
        }
        let current = condition.withLock { phase }
        if operation != .executeSRB && packet.kind != .inband {
            throw .rangesMismatch("\(operation) sent with GPA ranges")
        }
        switch (operation, current) {
        case (.beginInitialization, .fresh):
            condition.withLock { phase = .initializing }
            reply(packet, on: channel)
        case (.queryProtocolVersion, .initializing):
            let asked = (try? reader.u16()) ?? 0
            if StorageProtocol.hostVersions.contains(asked) {
                condition.withLock { version = asked }
                reply(packet, on: channel)
            } else {
                reply(packet, on: channel, status: StorageProtocol.Status.revisionMismatch)
            }
        case (.queryProperties, .initializing):
            guard condition.withLock({ version }) != nil else { throw .outOfOrder("queryProperties", state: "the time before a version was agreed") }
            let properties = StorageProtocol.Properties(
                maxTransferBytes: UInt32(Self.maxTransferBytes), channelCount: 1, blockSize: UInt32(disk.geometry.blockSize),
                blockCount: UInt64(region.count))
            reply(packet, on: channel) { StorageProtocol.encode(properties, into: &$0) }
        case (.registerDataBuffer, .initializing):
            guard let id = try? reader.u32(), let mapping = context.gpadl(id), mapping.relid == context.relid else {
                reply(packet, on: channel, status: StorageProtocol.Status.invalidParameter)
                return
            }
            condition.withLock { dataBuffer = mapping }
            reply(packet, on: channel)
        case (.endInitialization, .initializing):
            guard condition.withLock({ version != nil && dataBuffer != nil }) else {
                throw .outOfOrder("endInitialization", state: "the time before a version and a data buffer")
            }
            condition.withLock { phase = .ready }
            reply(packet, on: channel)
        case (.executeSRB, .ready):
            try execute(packet, reader: &reader, on: channel)
        default:
            throw .outOfOrder("\(operation)", state: "\(current)")
        }
    }

    /// What an SRB asks for, once fully validated.
    private enum Plan {
        case flush
        case answer(UInt32)
        case transfer(DiskOperation, lba: UInt64, pieces: [(UnsafeMutableRawPointer, Int)], bytes: Int)
    }

    /// Validates an SRB completely, then admits it as outstanding and acts.
    /// A request that breaks the protocol is refused before admission, so it
    /// never holds anything up.
    private func execute(_ packet: Packet, reader: inout ByteReader, on channel: HostChannel) throws(ProtocolViolation) {
        let plan = try plan(packet, reader: &reader)
        condition.withLock {
            outstanding.insert(packet.transactionID)
            stats.requests += 1
        }
        switch plan {
        case .answer(let status):
            finish(packet, on: channel, status: status)
        case .flush:
            disk.submit(.flush, lba: 0, blocks: 0, memory: nil) { [self] status in
                // Counted only when the device flushed: a failed flush is an error.
                if status.isOK { condition.withLock { stats.flushes += 1 } }
                finish(packet, on: channel, status: status.isOK ? StorageProtocol.Status.success : StorageProtocol.Status.ioDeviceError)
            }
        case .transfer(let operation, let start, let pieces, let total):
            let remaining = Countdown(pieces.count)
            var lba = start
            for (pointer, length) in pieces {
                disk.submit(operation, lba: lba, blocks: length / disk.geometry.blockSize, memory: pointer) { [self] status in
                    guard let result = remaining.done(status) else { return }
                    if result.isOK {
                        condition.withLock {
                            if operation == .read { stats.bytesRead += UInt64(total) } else { stats.bytesWritten += UInt64(total) }
                        }
                    }
                    finish(packet, on: channel, status: result.isOK ? StorageProtocol.Status.success : StorageProtocol.Status.ioDeviceError)
                }
                lba += UInt64(length / disk.geometry.blockSize)
            }
        }
    }

    private func plan(_ packet: Packet, reader: inout ByteReader) throws(ProtocolViolation) -> Plan {
        let srb: StorageProtocol.SRB
        do {
            srb = try StorageProtocol.decodeSRB(&reader)
        } catch {
            throw .truncated("SRB: \(error.reason)")
        }
        let transaction = packet.transactionID
        let problem = condition.withLock { () -> ProtocolViolation? in
            if outstanding.contains(transaction) { return .transactionReused(transaction) }
            if outstanding.count >= Self.maxOutstanding { return .tooManyOutstanding(limit: Self.maxOutstanding) }
            return nil
        }
        if let problem { throw problem }
        guard let command = StorageProtocol.Command(rawValue: srb.command) else { return .answer(StorageProtocol.Status.invalidParameter) }
        if command == .synchronizeCache { return .flush }
        // Ranges are checked before anything is submitted.
        let blockSize = disk.geometry.blockSize
        guard packet.kind == .gpaDirect, !packet.ranges.isEmpty else { throw .rangesMismatch("read/write without GPA ranges") }
        guard let buffer = condition.withLock({ dataBuffer }) else { throw .outOfOrder("executeSRB", state: "the time before a data buffer") }
        var pieces: [(UnsafeMutableRawPointer, Int)] = []
        var total = 0
        for range in packet.ranges {
            guard range.length > 0, Int(range.length) % blockSize == 0,
                let pointer = buffer.pointer(gpa: GuestAddress(range.gpa), length: Int(range.length))
            else {
                throw .rangeOutsideDataBuffer(gpa: range.gpa, length: range.length)
            }
            pieces.append((pointer, Int(range.length)))
            total += Int(range.length)
        }
        guard srb.blocks > 0, total == Int(srb.blocks) * blockSize, total <= Self.maxTransferBytes,
            srb.lba < UInt64(region.count), UInt64(srb.blocks) <= UInt64(region.count) - srb.lba
        else { return .answer(StorageProtocol.Status.invalidParameter) }
        return .transfer(command == .read10 ? .read : .write, lba: region.lowerBound + srb.lba, pieces: pieces, bytes: total)
    }

    private func finish(_ packet: Packet, on channel: HostChannel, status: UInt32) {
        reply(packet, on: channel, status: status)
        condition.withLock {
            if status != StorageProtocol.Status.success { stats.errors += 1 }
            outstanding.remove(packet.transactionID)
            condition.broadcast()
        }
    }

    private func reply(_ packet: Packet, on channel: HostChannel, status: UInt32 = StorageProtocol.Status.success,
                       body: (inout ByteWriter) -> Void = { _ in })
    {
        let payload = StorageProtocol.encode(StorageProtocol.Header(operation: .completeIO, status: status), body)
        channel.send(Packet(kind: .completion, transactionID: packet.transactionID, payload: payload))
    }

    /// The channel closed: the child's pages stay mapped until every request
    /// in flight has completed, so no device writes into unmapped memory.
    public func channelClosed(_ channel: HostChannel, reason: String?) {
        condition.withLock {
            let deadline = Date(timeIntervalSinceNow: 30)
            while !outstanding.isEmpty && condition.wait(until: deadline) {}
        }
    }
}

/// Joins the completions of one request's pieces; the first failure wins.
final class Countdown: @unchecked Sendable {
    // @unchecked Sendable: guarded by `lock`.
    private let lock = NSLock()
    private var left: Int
    private var result = DiskStatus.ok

    init(_ count: Int) { left = count }

    /// Records one piece; returns the overall status when it was the last.
    func done(_ status: DiskStatus) -> DiskStatus? {
        lock.withLock {
            if !status.isOK && result.isOK { result = status }
            left -= 1
            return left == 0 ? result : nil
        }
    }
}

