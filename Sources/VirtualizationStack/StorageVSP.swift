import Foundation
import Machine
import Kernel
import VMBus

/// The root's storage virtualization service provider for one channel,
/// speaking Hyper-V's StorVSP protocol: a child's virtual disk is a region of
/// a disk of the root's OS behind a small SCSI target, so every child I/O
/// goes through the vendor driver that serves that disk.
///
/// Data moves without copies, as on a real root: each SRB names its data as
/// a GPA_DIRECT page list anywhere in the child's memory; the root maps those
/// pages for the duration of the request (the hypervisor refuses pages the
/// child does not own) and the disk's driver maps them for its device like
/// any OS memory.
///
/// The child is untrusted. A malformed packet, pages that are not the
/// child's, a data length that disagrees with the page list, a duplicate
/// transaction id or I/O before initialisation closes this channel with the
/// reason; a bad CDB or an out-of-range LBA is an ordinary SCSI error
/// (CHECK CONDITION with sense). A completion is sent only after the disk
/// completed, so acknowledged writes and flushes are on the disk.
public final class StorageVSP: ChannelHandler, @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `condition`.
    public let disk: Disk
    public let region: Range<UInt64>
    public let target: SCSITarget
    let context: ChannelContext
    public static let maxTransferBytes = 256 << 10
    public static let maxOutstanding = 256

    private enum Phase { case fresh, initializing, ready }

    public struct Statistics: Sendable {
        public var requests = 0, flushes = 0, errors = 0
        public var bytesRead: UInt64 = 0, bytesWritten: UInt64 = 0
    }

    private let condition = NSCondition()
    private var phase = Phase.fresh
    private var version: UInt16?
    private var outstanding: Set<UInt64> = []
    private var stats = Statistics()

    public init(disk: Disk, region: Range<UInt64>, context: ChannelContext) {
        self.disk = disk
        self.region = region
        self.context = context
        target = SCSITarget(store: DiskSlice(disk: disk, region: region), serial: "oyako-\(context.child)-\(context.relid)",
                            identifier: UUID())
    }

    public var statistics: Statistics { condition.withLock { stats } }

    public func packetReceived(_ packet: Packet, on channel: HostChannel) throws(ProtocolViolation) {
        guard packet.kind == .inband || packet.kind == .gpaDirect else {
            throw .unexpectedPacket(packet.kind, channel: "storage")
        }
        guard packet.flags & Packet.completionRequested != 0 else {
            throw .completionNotRequested(transaction: packet.transactionID)
        }
        let message: StorageProtocol.Message
        do {
            message = try StorageProtocol.Message.decode(packet.payload)
        } catch {
            throw .truncated("vstor_packet: \(error.reason)")
        }
        guard let operation = message.knownOperation else {
            throw .unknownOperation("storage operation \(message.operation)")
        }
        if operation != .executeSRB && packet.kind != .inband {
            throw .rangesMismatch("\(operation) sent with GPA ranges")
        }
        let current = condition.withLock { phase }
        switch (operation, current) {
        case (.beginInitialization, .fresh):
            condition.withLock { phase = .initializing }
            reply(packet, on: channel)
        case (.queryProtocolVersion, .initializing):
            let asked = message.versionNumber
            guard StorageProtocol.hostVersions.contains(asked) else {
                return reply(packet, on: channel, StorageProtocol.Message(.completeIO, flags: 0, status: StorageProtocol.Status.revisionMismatch))
            }
            condition.withLock { version = asked }
            reply(packet, on: channel, .version(asked).answered())
        case (.queryProperties, .initializing):
            guard condition.withLock({ version }) != nil else { throw .outOfOrder("queryProperties", state: "the time before a version was agreed") }
            let properties = StorageProtocol.ChannelProperties(maxChannelCount: 1, flags: 0, maxTransferBytes: UInt32(Self.maxTransferBytes))
            reply(packet, on: channel, .properties(properties))
        case (.endInitialization, .initializing):
            guard condition.withLock({ version != nil }) else { throw .outOfOrder("endInitialization", state: "the time before a version was agreed") }
            condition.withLock { phase = .ready }
            reply(packet, on: channel)
        case (.executeSRB, .ready):
            try execute(packet, message, on: channel)
        case (.resetLUN, .ready), (.resetBus, .ready), (.resetAdapter, .ready):
            // Nothing is held back: every accepted request completes on its own.
            reply(packet, on: channel)
        case (.createSubChannels, _), (.fcHBAData, _):
            // Not offered (no multi-channel flag, not a Fibre Channel HBA).
            reply(packet, on: channel, StorageProtocol.Message(.completeIO, flags: 0, status: StorageProtocol.Status.invalidDeviceState))
        default:
            throw .outOfOrder("\(operation)", state: "\(current)")
        }
    }

    /// Validates an SRB against the protocol, maps its pages, admits it as
    /// outstanding and hands its CDB to the target. A request that breaks
    /// the protocol is refused before admission, so it never holds anything up.
    private func execute(_ packet: Packet, _ message: StorageProtocol.Message, on channel: HostChannel) throws(ProtocolViolation) {
        let srb: StorageProtocol.SCSIRequest
        do {
            srb = try message.srbRequest()
        } catch {
            throw .truncated("vmscsi_request: \(error.reason)")
        }
        guard let cdb = srb.cdb else { throw .badCDBLength(srb.cdbLength) }
        let pageListBytes = packet.kind == .gpaDirect ? packet.ranges.reduce(0) { $0 + Int($1.length) } : 0
        guard Int(srb.dataTransferLength) == pageListBytes else { throw .dataLengthMismatch(srb: srb.dataTransferLength, pageList: pageListBytes) }
        let transaction = packet.transactionID
        let problem = condition.withLock { () -> ProtocolViolation? in
            if outstanding.contains(transaction) { return .transactionReused(transaction) }
            if outstanding.count >= Self.maxOutstanding { return .tooManyOutstanding(limit: Self.maxOutstanding) }
            return nil
        }
        if let problem { throw problem }
        guard srb.path == 0, srb.target == 0, srb.lun == 0 else {
            return reply(packet, on: channel, answer(srb, srbStatus: StorageProtocol.SRBStatus.invalidLUN))
        }
        let direction = StorageProtocol.DataDirection(rawValue: srb.dataIn) ?? .none
        let mapping: RequestMapping?
        do {
            mapping = pageListBytes > 0 ? try context.mapRequest(packet.ranges, writable: direction != .write) : nil
        } catch {
            switch error {
            case .notChildMemory(let gpa, let length): throw .rangeOutsideChildMemory(gpa: gpa, length: length)
            case .windowFull: return reply(packet, on: channel, answer(srb, srbStatus: StorageProtocol.SRBStatus.busy, scsiStatus: SCSI.Status.busy))
            }
        }
        condition.withLock {
            outstanding.insert(transaction)
            stats.requests += 1
        }
        target.execute(cdb: cdb, direction: direction, data: SCSIData(mapping?.pieces ?? [])) { [self] result in
            mapping?.release()
            // Counted before the child can see the completion: its statistics
            // include every command the child has seen finish.
            condition.withLock { count(cdb[0], result) }
            reply(packet, on: channel, answer(srb, result))
            condition.withLock {
                outstanding.remove(transaction)
                condition.broadcast()
            }
        }
    }

    /// Counts a finished command (under `condition`).
    private func count(_ opcode: UInt8, _ result: SCSIResult) {
        guard result.status == SCSI.Status.good else { return stats.errors += 1 }
        switch opcode {
        case SCSI.Opcode.read10, SCSI.Opcode.read16: stats.bytesRead += UInt64(result.transferred)
        case SCSI.Opcode.write10, SCSI.Opcode.write16: stats.bytesWritten += UInt64(result.transferred)
        case SCSI.Opcode.synchronizeCache10, SCSI.Opcode.synchronizeCache16: stats.flushes += 1
        default: break
        }
    }

    /// The completion of an SRB: the request echoed with its outcome.
    private func answer(_ request: StorageProtocol.SCSIRequest, _ result: SCSIResult) -> StorageProtocol.Message {
        guard let sense = result.sense else {
            var srb = request
            srb.dataTransferLength = UInt32(result.transferred)
            return answer(srb, srbStatus: StorageProtocol.SRBStatus.success, scsiStatus: result.status)
        }
        var srb = request
        srb.dataTransferLength = 0
        let bytes = sense.fixedFormat
        srb.area = bytes + [UInt8](repeating: 0, count: StorageProtocol.SCSIRequest.cdbAreaSize - bytes.count)
        srb.senseInfoLength = UInt8(bytes.count)
        return answer(srb, srbStatus: StorageProtocol.SRBStatus.error | StorageProtocol.SRBStatus.autosenseValid, scsiStatus: result.status)
    }

    private func answer(_ request: StorageProtocol.SCSIRequest, srbStatus: UInt8, scsiStatus: UInt8 = SCSI.Status.good) -> StorageProtocol.Message {
        var srb = request
        srb.srbStatus = srbStatus
        srb.scsiStatus = scsiStatus
        if srbStatus != StorageProtocol.SRBStatus.success && scsiStatus != SCSI.Status.checkCondition {
            srb.dataTransferLength = 0
            srb.senseInfoLength = 0
        }
        return .srb(srb, operation: .completeIO, flags: 0)
    }

    private func reply(_ packet: Packet, on channel: HostChannel,
                       _ message: StorageProtocol.Message = StorageProtocol.Message(.completeIO, flags: 0))
    {
        channel.send(Packet(kind: .completion, transactionID: packet.transactionID, payload: message.encoded))
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

