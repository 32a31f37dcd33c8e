import Foundation
import Machine
import VMBus
import Workloads

/// The guest's storage client (storvsc): negotiates with the root's VSP and
/// turns block reads and writes into SRBs whose data is passed as GPA ranges
/// in a data buffer the guest granted once (a GPADL).
public final class StorageVSC: BlockTarget, @unchecked Sendable {
    // @unchecked Sendable: confined to the guest VP thread.
    public let offer: Offer
    public private(set) var properties = StorageProtocol.Properties(maxTransferBytes: 0, channelCount: 0, blockSize: 512, blockCount: 0)
    public private(set) var version: UInt16 = 0
    let os: GuestOS
    let channel: ClientChannel
    private let dataGPA: UInt64
    private let dataPointer: UnsafeMutableRawPointer
    public let dataBufferSize: Int
    private var nextTransaction: UInt64 = 1
    private var completions: [UInt64: (UInt32, [UInt8])] = [:]
    private var callbacks: [UInt64: (UInt32) -> Void] = [:]
    /// Largest piece of a transfer sent as one GPA range.
    public var rangeBytes = 64 << 10
    public var timeout: Double = 30

    static let ringPages = 1 + 16   // control page + 64 KiB data, per direction
    static let dataPages = 256      // 1 MiB data buffer

    /// A storage request the root completed with a failure status.
    public enum StorageError: Error, Equatable, CustomStringConvertible {
        case readFailed(lba: UInt64, status: UInt32)
        case writeFailed(lba: UInt64, status: UInt32)
        case flushFailed(status: UInt32)

        public var description: String {
            switch self {
            case .readFailed(let lba, let status): "read at LBA \(lba) failed: 0x\(String(status, radix: 16))"
            case .writeFailed(let lba, let status): "write at LBA \(lba) failed: 0x\(String(status, radix: 16))"
            case .flushFailed(let status): "flush failed: 0x\(String(status, radix: 16))"
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
            for (_, callback) in callbacks { callback(StorageProtocol.Status.invalidDeviceState) }
            callbacks.removeAll()
            os.log("storage relid \(offer.relid) rescinded by the root")
        }
        try initialize()
    }

    public var blockSize: Int { Int(properties.blockSize) }
    public var blockCount: UInt64 { properties.blockCount }
    public var isOpen: Bool { channel.isOpen }

    /// Ring and signalling counters of the channel.
    public var ringStatistics: (outbound: Ring.Statistics, inbound: Ring.Statistics, signalsSent: Int) {
        (channel.outboundStatistics, channel.inboundStatistics, channel.signalsSent)
    }

    private func received(_ packet: Packet) {
        guard packet.kind == .completion else { return }
        var reader = ByteReader(packet.payload)
        let status = (try? StorageProtocol.decodeHeader(&reader).status) ?? StorageProtocol.Status.unsuccessful
        let body = Array(packet.payload.dropFirst(16))
        if let callback = callbacks.removeValue(forKey: packet.transactionID) {
            callback(status)
        } else {
            completions[packet.transactionID] = (status, body)
        }
    }

    /// Sends one request and waits for its completion (status, body).
    private func call(_ operation: StorageProtocol.Operation, ranges: [GPARange] = [], _ body: (inout ByteWriter) -> Void = { _ in })
        throws(VMBusError) -> (UInt32, [UInt8])
    {
        let id = nextTransaction
        nextTransaction += 1
        let payload = StorageProtocol.encode(StorageProtocol.Header(operation: operation), body)
        try channel.send(Packet(kind: ranges.isEmpty ? .inband : .gpaDirect, flags: Packet.completionRequested, transactionID: id, ranges: ranges, payload: payload))
        guard os.vp.halt(until: { self.completions[id] != nil || !self.channel.isOpen }, timeout: timeout), let result = completions.removeValue(forKey: id) else {
            throw channel.isOpen ? .noAnswer("completion for \(operation)", seconds: timeout) : .channelClosed(relid: channel.relid)
        }
        return result
    }

    private func initialize() throws(VMBusError) {
        _ = try call(.beginInitialization)
        for candidate in StorageProtocol.guestVersions {
            let (status, _) = try call(.queryProtocolVersion) { $0.u16(candidate); $0.u16(0) }
            if status == StorageProtocol.Status.success {
                version = candidate
                break
            }
        }
        guard version != 0 else { throw .noCommonVersion("the storage provider speaks none of \(StorageProtocol.guestVersions)") }
        let (_, body) = try call(.queryProperties)
        var reader = ByteReader(body)
        do {
            properties = try StorageProtocol.decodeProperties(&reader)
        } catch {
            throw .malformedAnswer("storage properties: \(error.reason)")
        }
        let gpadl = try os.vmbus.createGPADL(relid: offer.relid, gpa: dataGPA, pages: Self.dataPages)
        let (registered, _) = try call(.registerDataBuffer) { $0.u32(gpadl) }
        guard registered == StorageProtocol.Status.success else { throw .refused("data buffer (0x\(String(registered, radix: 16)))") }
        _ = try call(.endInitialization)
        os.log("storage relid \(offer.relid): protocol \(version >> 8).\(version & 0xFF), \(properties.blockCount) × \(properties.blockSize) B")
    }

    /// Ranges covering [offset, +length) of the data buffer.
    private func ranges(offset: Int, length: Int) -> [GPARange] {
        stride(from: 0, to: length, by: rangeBytes).map {
            GPARange(gpa: dataGPA + UInt64(offset + $0), length: UInt32(min(rangeBytes, length - $0)))
        }
    }

    private func srb(_ command: StorageProtocol.Command, lba: UInt64, blocks: Int, offset: Int) throws(VMBusError) -> UInt32 {
        let length = blocks * blockSize
        let (status, _) = try call(.executeSRB, ranges: command == .synchronizeCache ? [] : ranges(offset: offset, length: length)) {
            StorageProtocol.encode(StorageProtocol.SRB(command: command, blocks: UInt32(blocks), lba: lba), into: &$0)
        }
        return status
    }

    private var chunkBlocks: Int { min(Int(properties.maxTransferBytes), dataBufferSize) / blockSize }

    public func readBlocks(lba: UInt64, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count * blockSize)
        var done = 0
        while done < count {
            let n = min(chunkBlocks, count - done)
            let status = try srb(.read10, lba: lba + UInt64(done), blocks: n, offset: 0)
            guard status == StorageProtocol.Status.success else { throw StorageError.readFailed(lba: lba + UInt64(done), status: status) }
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
            let status = try srb(.write10, lba: lba + UInt64(done), blocks: n, offset: 0)
            guard status == StorageProtocol.Status.success else { throw StorageError.writeFailed(lba: lba + UInt64(done), status: status) }
            done += n
        }
    }

    public func flushBlocks() throws {
        let status = try srb(.synchronizeCache, lba: 0, blocks: 0, offset: 0)
        guard status == StorageProtocol.Status.success else { throw StorageError.flushFailed(status: status) }
    }

    // MARK: Asynchronous I/O (benchmarks)

    /// Issues an SRB on data at `offset` in the data buffer without waiting;
    /// `completion` runs on the VP thread when the root answers.
    public func submit(_ command: StorageProtocol.Command, lba: UInt64, blocks: Int, bufferOffset: Int,
                       completion: @escaping (UInt32) -> Void) throws(VMBusError)
    {
        let id = nextTransaction
        nextTransaction += 1
        callbacks[id] = completion
        let payload = StorageProtocol.encode(StorageProtocol.Header(operation: .executeSRB)) {
            StorageProtocol.encode(StorageProtocol.SRB(command: command, blocks: UInt32(blocks), lba: lba), into: &$0)
        }
        let ranges = command == .synchronizeCache ? [] : ranges(offset: bufferOffset, length: blocks * blockSize)
        do {
            try channel.send(Packet(kind: ranges.isEmpty ? .inband : .gpaDirect, flags: Packet.completionRequested, transactionID: id, ranges: ranges, payload: payload))
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
