import Foundation
import Machine
import VMBus
import Workloads

/// The guest's storage client (storvsc), speaking Hyper-V's protocol as
/// Linux's storvsc does: it negotiates with the root's VSP, learns the disk
/// with READ CAPACITY(16) and turns block reads and writes into SCSI CDBs in
/// SRBs whose data is a GPA_DIRECT page list in its own memory.
public final class StorageVSC: BlockTarget, @unchecked Sendable {
    // @unchecked Sendable: confined to the guest VP thread.
    public let offer: Offer
    public private(set) var properties = StorageProtocol.ChannelProperties(maxChannelCount: 0, flags: 0, maxTransferBytes: 0)
    public private(set) var version: UInt16 = 0
    public private(set) var blockSize = 512
    public private(set) var blockCount: UInt64 = 0
    let os: GuestOS
    let channel: ClientChannel
    private let dataGPA: UInt64
    private let dataPointer: UnsafeMutableRawPointer
    public let dataBufferSize: Int
    private var nextTransaction: UInt64 = 1
    private var completions: [UInt64: StorageProtocol.Message] = [:]
    private var callbacks: [UInt64: (Outcome) -> Void] = [:]
    public var timeout: Double = 30

    static let ringPages = 1 + 16   // control page + 64 KiB data, per direction
    static let dataPages = 256      // 1 MiB of the guest's memory for data

    /// How the root answered an SRB.
    public struct Outcome: Sendable, Equatable, CustomStringConvertible {
        public let srbStatus: UInt8
        public let scsiStatus: UInt8
        /// Sense data, after CHECK CONDITION with autosense.
        public let sense: SCSI.Sense?
        public let transferred: Int

        public var isGood: Bool {
            StorageProtocol.SRBStatus.code(srbStatus) == StorageProtocol.SRBStatus.success && scsiStatus == SCSI.Status.good
        }

        /// What a request gets when its channel is gone.
        static let channelGone = Outcome(srbStatus: StorageProtocol.SRBStatus.aborted, scsiStatus: 0, sense: nil, transferred: 0)

        init(srbStatus: UInt8, scsiStatus: UInt8, sense: SCSI.Sense?, transferred: Int) {
            self.srbStatus = srbStatus
            self.scsiStatus = scsiStatus
            self.sense = sense
            self.transferred = transferred
        }

        public init(_ answer: StorageProtocol.Message) {
            guard answer.status == StorageProtocol.Status.success, let srb = try? answer.srbRequest() else {
                self = .channelGone
                return
            }
            let autosense = srb.srbStatus & StorageProtocol.SRBStatus.autosenseValid != 0
            self.init(srbStatus: srb.srbStatus, scsiStatus: srb.scsiStatus,
                      sense: autosense && srb.scsiStatus == SCSI.Status.checkCondition ? SCSI.Sense(fixedFormat: srb.sense) : nil,
                      transferred: Int(srb.dataTransferLength))
        }

        public var description: String {
            if let sense { return "CHECK CONDITION, \(sense)" }
            return "SRB status 0x\(String(srbStatus, radix: 16)), SCSI status 0x\(String(scsiStatus, radix: 16))"
        }
    }

    /// A storage request the root completed with a failure.
    public enum StorageError: Error, Equatable, CustomStringConvertible {
        case readFailed(lba: UInt64, Outcome)
        case writeFailed(lba: UInt64, Outcome)
        case flushFailed(Outcome)
        case commandFailed(opcode: UInt8, Outcome)

        public var description: String {
            switch self {
            case .readFailed(let lba, let outcome): "read at LBA \(lba) failed: \(outcome)"
            case .writeFailed(let lba, let outcome): "write at LBA \(lba) failed: \(outcome)"
            case .flushFailed(let outcome): "flush failed: \(outcome)"
            case .commandFailed(let opcode, let outcome): "SCSI command 0x\(String(opcode, radix: 16)) failed: \(outcome)"
            }
        }
    }

    init(os: GuestOS, offer: Offer) throws(VMBusError) {
        self.os = os
        self.offer = offer
        guard let ring = os.allocate(pages: 2 * Self.ringPages), let data = os.allocate(pages: Self.dataPages) else {
            throw .outOfGuestMemory("the storage channel")
        }
        channel = try os.vmbus.open(relid: offer.relid, ringGPA: ring.gpa, ringPages: 2 * Self.ringPages, outboundPages: Self.ringPages)
        dataGPA = data.gpa
        dataPointer = data.pointer
        dataBufferSize = Self.dataPages * PhysicalMemory.pageSize
        channel.onPacket = { [weak self] packet in self?.received(packet) }
        channel.onRescind = { [weak self] in
            guard let self else { return }
            for (_, callback) in callbacks { callback(.channelGone) }
            callbacks.removeAll()
            os.log("storage relid \(offer.relid) rescinded by the root")
        }
        try initialize()
    }

    public var isOpen: Bool { channel.isOpen }

    /// Ring and signalling counters of the channel.
    public var ringStatistics: (outbound: Ring.Statistics, inbound: Ring.Statistics, signalsSent: Int) {
        (channel.outboundStatistics, channel.inboundStatistics, channel.signalsSent)
    }

    private func received(_ packet: Packet) {
        guard packet.kind == .completion else { return }
        let answer = (try? StorageProtocol.Message.decode(packet.payload))
            ?? StorageProtocol.Message(.completeIO, flags: 0, status: StorageProtocol.Status.unsuccessful)
        if let callback = callbacks.removeValue(forKey: packet.transactionID) {
            callback(Outcome(answer))
        } else {
            completions[packet.transactionID] = answer
        }
    }

    /// Sends one packet and waits for its completion.
    private func call(_ message: StorageProtocol.Message, ranges: [GPARange] = []) throws(VMBusError) -> StorageProtocol.Message {
        let id = try send(message, ranges: ranges)
        guard os.vp.halt(until: { self.completions[id] != nil || !self.channel.isOpen }, timeout: timeout),
            let answer = completions.removeValue(forKey: id)
        else {
            throw channel.isOpen ? .noAnswer("completion for storage operation \(message.operation)", seconds: timeout) : .channelClosed(relid: channel.relid)
        }
        return answer
    }

    private func send(_ message: StorageProtocol.Message, ranges: [GPARange]) throws(VMBusError) -> UInt64 {
        let id = nextTransaction
        nextTransaction += 1
        try channel.send(Packet(kind: ranges.isEmpty ? .inband : .gpaDirect, flags: Packet.completionRequested, transactionID: id,
                                ranges: ranges, payload: message.encoded))
        return id
    }

    private func initialize() throws(VMBusError) {
        let begun = try call(StorageProtocol.Message(.beginInitialization))
        guard begun.status == StorageProtocol.Status.success else { throw .refused("storage initialization (0x\(String(begun.status, radix: 16)))") }
        for candidate in StorageProtocol.guestVersions where try call(.version(candidate)).status == StorageProtocol.Status.success {
            version = candidate
            break
        }
        guard version != 0 else { throw .noCommonVersion("the storage provider speaks none of \(StorageProtocol.guestVersions)") }
        do {
            properties = try call(StorageProtocol.Message(.queryProperties)).channelProperties()
        } catch let error as VMBusError {
            throw error
        } catch {
            throw .malformedAnswer("storage properties: \(error)")
        }
        _ = try call(StorageProtocol.Message(.endInitialization))
        let capacity = try command(SCSI.readCapacity16(), reading: 32)
        guard capacity.outcome.isGood, capacity.bytes.count >= 12 else {
            throw .malformedAnswer("READ CAPACITY(16): \(capacity.outcome)")
        }
        blockCount = SCSI.field(capacity.bytes, at: 0, as: UInt64.self) + 1
        blockSize = Int(SCSI.field(capacity.bytes, at: 8, as: UInt32.self))
        os.log("storage relid \(offer.relid): protocol \(version >> 8).\(version & 0xFF), \(blockCount) × \(blockSize) B")
    }

    /// The range covering [offset, +length) of the data buffer.
    private func ranges(offset: Int, length: Int) -> [GPARange] {
        length == 0 ? [] : [GPARange(gpa: dataGPA + UInt64(offset), length: UInt32(length))]
    }

    private func srb(_ cdb: [UInt8], direction: StorageProtocol.DataDirection, length: Int) -> StorageProtocol.Message {
        .srb(StorageProtocol.SCSIRequest(cdb: cdb, direction: direction, dataTransferLength: length))
    }

    /// Runs one CDB that reads up to `reading` bytes into the data buffer.
    public func command(_ cdb: [UInt8], reading length: Int) throws(VMBusError) -> (outcome: Outcome, bytes: [UInt8]) {
        let direction: StorageProtocol.DataDirection = length > 0 ? .read : .none
        let outcome = Outcome(try call(srb(cdb, direction: direction, length: length), ranges: ranges(offset: 0, length: length)))
        return (outcome, Array(UnsafeRawBufferPointer(start: dataPointer, count: min(outcome.transferred, length))))
    }

    private var chunkBlocks: Int { min(Int(properties.maxTransferBytes), dataBufferSize) / blockSize }

    private func transfer(write: Bool, lba: UInt64, blocks: Int) throws(VMBusError) -> Outcome {
        let length = blocks * blockSize
        let message = srb(SCSI.transfer(write: write, lba: lba, blocks: blocks), direction: write ? .write : .read, length: length)
        return Outcome(try call(message, ranges: ranges(offset: 0, length: length)))
    }

    public func readBlocks(lba: UInt64, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count * blockSize)
        var done = 0
        while done < count {
            let n = min(chunkBlocks, count - done)
            let outcome = try transfer(write: false, lba: lba + UInt64(done), blocks: n)
            guard outcome.isGood else { throw StorageError.readFailed(lba: lba + UInt64(done), outcome) }
            out.withUnsafeMutableBytes { ($0.baseAddress! + done * blockSize).copyMemory(from: dataPointer, byteCount: n * blockSize) }
            done += n
        }
        return out
    }

    public func writeBlocks(lba: UInt64, bytes: [UInt8]) throws {
        let count = bytes.count / blockSize
        var done = 0
        while done < count {
            let n = min(chunkBlocks, count - done)
            bytes.withUnsafeBytes { dataPointer.copyMemory(from: $0.baseAddress! + done * blockSize, byteCount: n * blockSize) }
            let outcome = try transfer(write: true, lba: lba + UInt64(done), blocks: n)
            guard outcome.isGood else { throw StorageError.writeFailed(lba: lba + UInt64(done), outcome) }
            done += n
        }
    }

    public func flushBlocks() throws {
        let outcome = Outcome(try call(srb(SCSI.synchronizeCache10, direction: .none, length: 0)))
        guard outcome.isGood else { throw StorageError.flushFailed(outcome) }
    }

    // MARK: Asynchronous I/O (benchmarks)

    /// Issues a READ or WRITE on data at `offset` in the data buffer without
    /// waiting; `completion` runs on the VP thread when the root answers.
    public func submit(write: Bool, lba: UInt64, blocks: Int, bufferOffset: Int,
                       completion: @escaping (Outcome) -> Void) throws(VMBusError)
    {
        let length = blocks * blockSize
        let message = srb(SCSI.transfer(write: write, lba: lba, blocks: blocks), direction: write ? .write : .read, length: length)
        let id = nextTransaction
        callbacks[id] = completion
        do {
            _ = try send(message, ranges: ranges(offset: bufferOffset, length: length))
        } catch {
            callbacks[id] = nil
            throw error
        }
    }

    /// The data buffer, for asynchronous I/O.
    public var dataBuffer: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: dataPointer, count: dataBufferSize) }

    /// Halts until `done()` holds, taking completions meanwhile.
    public func wait(until done: () -> Bool, timeout: Double = 30) -> Bool { os.vp.halt(until: done, timeout: timeout) }
}
