import CSystemShims
import Machine
import Synchronization

/// Why a ring can no longer be trusted: the peer wrote something impossible.
/// The channel is closed; nothing outside the ring was touched.
/// Why a ring or a packet read from it cannot be trusted: one case per
/// failure, each carrying the values that were wrong.
public enum RingError: Error, Equatable, CustomStringConvertible, Sendable {
    /// A read or write index outside the data area, or not 8-byte aligned.
    case indexOutOfRange(index: String, value: UInt32, ringSize: Int)
    /// A packet larger than the whole ring (it can never be written).
    case packetNeverFits(bytes: Int, ringSize: Int)
    /// Fewer bytes than the smallest packet.
    case tooFewBytes(available: Int)
    case unknownPacketType(UInt16)
    /// The descriptor's length runs past the bytes written.
    case lengthBeyondData(length: Int, available: Int)
    /// The payload offset lies outside the packet.
    case payloadOffsetOutside(offset: Int, packetLength: Int)
    case missingRangeHeader
    /// A GPA_DIRECT header claiming more ranges than it holds.
    case tooManyRanges(count: Int, headerBytes: Int)
    /// A payload longer than the reader's buffer.
    case payloadTooLarge(length: Int, buffer: Int)

    public var description: String {
        switch self {
        case .indexOutOfRange(let index, let value, let size): "\(index) \(value) is outside the \(size)-byte ring or unaligned"
        case .packetNeverFits(let bytes, let size): "packet of \(bytes) bytes can never fit a \(size)-byte ring"
        case .tooFewBytes(let available): "\(available) bytes in the ring, too few for a packet"
        case .unknownPacketType(let type): "unknown packet type \(type)"
        case .lengthBeyondData(let length, let available): "packet length \(length) does not fit the \(available) bytes available"
        case .payloadOffsetOutside(let offset, let length): "payload offset \(offset) outside the \(length)-byte packet"
        case .missingRangeHeader: "GPA_DIRECT packet without a range header"
        case .tooManyRanges(let count, let bytes): "GPA_DIRECT packet claims \(count) ranges in a \(bytes)-byte header"
        case .payloadTooLarge(let length, let buffer): "payload of \(length) bytes exceeds the \(buffer)-byte buffer"
        }
    }

    /// The description, for callers that log it.
    public var reason: String { description }
}

/// A guest-physical range carried by a GPA_DIRECT packet.
public struct GPARange: Sendable, Equatable {
    public let gpa: UInt64
    public let length: UInt32

    public init(gpa: UInt64, length: UInt32) {
        self.gpa = gpa
        self.length = length
    }

    static let pageSize = UInt64(PhysicalMemory.pageSize)
    /// byte_offset on the wire: where in its first page the range starts.
    var pageOffset: UInt32 { UInt32(gpa % Self.pageSize) }
    /// Pages the range touches (its pfn_array's length).
    var pageCount: Int { Int((UInt64(pageOffset) + UInt64(length) + Self.pageSize - 1) / Self.pageSize) }
}

/// One VMBus packet: a 16-byte descriptor {type, offset8, len8, flags,
/// transaction id}, GPA ranges for GPA_DIRECT, then the payload padded to 8
/// bytes, then an 8-byte trailer.
public struct Packet: Sendable, Equatable {
    public enum Kind: UInt16, Sendable {
        case inband = 6, transferPages = 7, gpadl = 8, gpaDirect = 9, completion = 11
    }

    public static let completionRequested: UInt16 = 1

    /// A TRANSFER_PAGES packet's header (vmtransfer_page_packet_header):
    /// which transfer-page set (a receive buffer's GPADL) and the byte
    /// ranges of it the packet names.
    public struct TransferPages: Sendable, Equatable {
        /// `vmtransfer_page_range`: on the wire `byte_count`, then `byte_offset`.
        public struct Range: Sendable, Equatable {
            /// Where in the page set the range starts (`byte_offset`).
            public let offset: UInt32
            /// Its length in bytes (`byte_count`).
            public let length: UInt32
            public init(offset: UInt32, length: UInt32) {
                self.offset = offset
                self.length = length
            }
        }

        public let pageSetID: UInt16
        public let senderOwnsSet: Bool
        public let ranges: [Range]

        public init(pageSetID: UInt16, senderOwnsSet: Bool = false, ranges: [Range]) {
            self.pageSetID = pageSetID
            self.senderOwnsSet = senderOwnsSet
            self.ranges = ranges
        }

        static let maxRanges = 64
    }

    public var kind: Kind
    public var flags: UInt16
    public var transactionID: UInt64
    public var ranges: [GPARange]
    /// For `.transferPages`: the page set and ranges in its header.
    public var transfer: TransferPages?
    public var payload: [UInt8]

    public init(kind: Kind, flags: UInt16 = 0, transactionID: UInt64, ranges: [GPARange] = [], transfer: TransferPages? = nil, payload: [UInt8]) {
        self.kind = kind
        self.flags = flags
        self.transactionID = transactionID
        self.ranges = ranges
        self.transfer = transfer
        self.payload = payload
    }

    /// Bytes of descriptor and range header before the payload: for
    /// GPA_DIRECT, `reserved` and `range_cnt`, then per range {byte_count,
    /// byte_offset, pfn_array[]} (Linux's vmbus_packet_mpb_array).
    var headerLength: Int {
        switch kind {
        case .gpaDirect: 16 + 8 + ranges.reduce(0) { $0 + 8 + 8 * $1.pageCount }
        // xfer_pageset_id, sender_owns_set, reserved, range_cnt, then {byte_count, byte_offset}s.
        case .transferPages: 16 + 8 + 8 * (transfer?.ranges.count ?? 0)
        default: 16
        }
    }
    /// Bytes the packet takes in the ring, trailer included.
    public var ringLength: Int { headerLength + (payload.count + 7) / 8 * 8 + 8 }
}

/// One direction of a channel: a 4 KiB control page, then the data area, in
/// memory both partitions map. Control page: write_index (u32 @0),
/// read_index (u32 @4), interrupt_mask (u32 @8), pending_send_sz (u32 @12),
/// feature_bits (u32 @64). Indices are byte offsets into the data area.
///
/// All index and packet arithmetic of VMBus lives here. Each side keeps a
/// private copy of its own index and only ever reads the peer's, validating
/// it before use, so a hostile peer can make the ring unusable but can never
/// make this side read or write outside it.
public final class Ring: @unchecked Sendable {
    // @unchecked Sendable: one writer and one reader, each used from one
    // thread at a time; shared-memory words are accessed atomically.
    public static let controlSize = PhysicalMemory.pageSize
    static let writeIndexOffset = 0
    static let readIndexOffset = 4
    static let interruptMaskOffset = 8
    static let pendingSendOffset = 12
    static let featureBitsOffset = 64
    public static let featurePendingSendSize: UInt32 = 1

    let control: UnsafeMutableRawPointer
    let data: UnsafeMutableRawPointer
    public let dataSize: Int

    /// Counters for interrupt mitigation, visible to tests and benchmarks.
    public struct Statistics: Sendable {
        public var packetsWritten = 0, packetsRead = 0
        /// Writer signals sent, and those the reader's interrupt mask made unnecessary.
        public var signalsSent = 0, signalsSuppressed = 0
        public var writesRefusedFull = 0
        /// Reader signals for a writer waiting on `pending_send_sz`.
        public var readerSignalsForPendingSend = 0
    }

    private let written = Atomic<Int>(0), readCount = Atomic<Int>(0), sent = Atomic<Int>(0), suppressed = Atomic<Int>(0)
    private let refused = Atomic<Int>(0), pendingSignals = Atomic<Int>(0)
    private var writeIndex: UInt32 = 0
    private var readIndex: UInt32 = 0

    /// Uses `size` bytes at `base` (control page plus a data area that is a
    /// multiple of 8 bytes). Fresh rings must be `reset` by their owner first.
    public init?(base: UnsafeMutableRawPointer, size: Int) {
        guard size > Self.controlSize + 64, (size - Self.controlSize) % 8 == 0 else { return nil }
        control = base
        data = base + Self.controlSize
        dataSize = size - Self.controlSize
        writeIndex = oy_shim_load_acquire_u32(base + Self.writeIndexOffset)
        readIndex = oy_shim_load_acquire_u32(base + Self.readIndexOffset)
        // Indices in memory the peer wrote are input like any other.
        guard writeIndex < UInt32(dataSize), writeIndex % 8 == 0, readIndex < UInt32(dataSize), readIndex % 8 == 0 else { return nil }
    }

    /// Zeroes the control page and advertises pending_send_sz support.
    public func reset() {
        control.initializeMemory(as: UInt8.self, repeating: 0, count: Self.controlSize)
        control.storeBytes(of: Self.featurePendingSendSize, toByteOffset: Self.featureBitsOffset, as: UInt32.self)
        writeIndex = 0
        readIndex = 0
    }

    public var statistics: Statistics {
        Statistics(packetsWritten: written.load(ordering: .relaxed), packetsRead: readCount.load(ordering: .relaxed),
                   signalsSent: sent.load(ordering: .relaxed), signalsSuppressed: suppressed.load(ordering: .relaxed),
                   writesRefusedFull: refused.load(ordering: .relaxed), readerSignalsForPendingSend: pendingSignals.load(ordering: .relaxed))
    }

    /// Control-page words are shared with the other partition. An acquire
    /// load keeps later reads of ring data after it (we never read bytes an
    /// index has not yet published); a release store keeps earlier accesses
    /// before it. The full barriers below order what these alone do not:
    /// a store followed by a load of another word.
    private func load(_ offset: Int) -> UInt32 { oy_shim_load_acquire_u32(control + offset) }
    private func store(_ offset: Int, _ value: UInt32) { oy_shim_store_release_u32(control + offset, value) }

    /// A peer-written index is usable only if it is inside the data area and
    /// 8-byte aligned.
    private func validIndex(_ value: UInt32, _ name: String) throws(RingError) -> UInt32 {
        guard value < UInt32(dataSize), value % 8 == 0 else {
            throw .indexOutOfRange(index: name, value: value, ringSize: dataSize)
        }
        return value
    }

    private func used(write: UInt32, read: UInt32) -> Int {
        write >= read ? Int(write - read) : dataSize - Int(read - write)
    }

    private func copyIn(_ bytes: UnsafeRawBufferPointer, at index: Int) -> Int {
        guard bytes.count > 0 else { return index }
        let first = min(bytes.count, dataSize - index)
        (data + index).copyMemory(from: bytes.baseAddress!, byteCount: first)
        if first < bytes.count { data.copyMemory(from: bytes.baseAddress! + first, byteCount: bytes.count - first) }
        return (index + bytes.count) % dataSize
    }

    private func copyOut(into buffer: UnsafeMutableRawBufferPointer, at index: Int) {
        let count = buffer.count
        guard count > 0 else { return }
        let first = min(count, dataSize - index)
        buffer.baseAddress!.copyMemory(from: data + index, byteCount: first)
        if first < count { (buffer.baseAddress! + first).copyMemory(from: data, byteCount: count - first) }
    }

    // MARK: Writer

    public enum WriteResult: Equatable, Sendable {
        /// Written; `signal` says whether the reader must be signalled.
        case written(signal: Bool)
        /// Not enough room; pending_send_sz was set so the reader signals
        /// once this much space is free.
        case full
    }

    /// Writes one packet. Refused when free space <= the packet's size (the
    /// ring is never filled to equality, so full and empty stay distinct).
    public func write(_ packet: Packet) throws(RingError) -> WriteResult {
        let total = packet.ringLength
        guard total < dataSize else { throw RingError.packetNeverFits(bytes: total, ringSize: dataSize) }
        let read = try validIndex(load(Self.readIndexOffset), "read_index")
        let free = dataSize - used(write: writeIndex, read: read)
        if free <= total {
            // A write needs free > total, so ask to be woken at total + 1.
            store(Self.pendingSendOffset, UInt32(total + 1))
            // Store pending_send_sz before loading read_index again (store ->
            // load): without it the re-check could read a stale index while
            // the reader, not yet seeing our request, drains without
            // signalling us, and both would wait forever.
            oy_shim_full_barrier()
            // The reader may have drained meanwhile: check once more.
            let again = try validIndex(load(Self.readIndexOffset), "read_index")
            if dataSize - used(write: writeIndex, read: again) <= total {
                refused.add(1, ordering: .relaxed)
                return .full
            }
        }
        store(Self.pendingSendOffset, 0)
        let old = writeIndex
        var index = Int(old)
        var descriptor = (packet.kind.rawValue, UInt16(packet.headerLength / 8), UInt16((total - 8) / 8), packet.flags, packet.transactionID)
        index = withUnsafeBytes(of: &descriptor) { copyIn(UnsafeRawBufferPointer(rebasing: $0[0..<16]), at: index) }
        if packet.kind == .gpaDirect {
            var count = (UInt32(0), UInt32(packet.ranges.count))  // reserved, range_cnt
            index = withUnsafeBytes(of: &count) { copyIn($0, at: index) }
            for range in packet.ranges {
                var entry = (range.length, range.pageOffset)  // byte_count, byte_offset
                index = withUnsafeBytes(of: &entry) { copyIn($0, at: index) }
                for page in 0..<range.pageCount {
                    var pfn = range.gpa / GPARange.pageSize + UInt64(page)
                    index = withUnsafeBytes(of: &pfn) { copyIn($0, at: index) }
                }
            }
        }
        if packet.kind == .transferPages {
            let transfer = packet.transfer ?? .init(pageSetID: 0, ranges: [])
            var head = (transfer.pageSetID, UInt8(transfer.senderOwnsSet ? 1 : 0), UInt8(0), UInt32(transfer.ranges.count))
            index = withUnsafeBytes(of: &head) { copyIn(UnsafeRawBufferPointer(rebasing: $0[0..<8]), at: index) }
            for range in transfer.ranges {
                var entry = (range.length, range.offset)
                index = withUnsafeBytes(of: &entry) { copyIn($0, at: index) }
            }
        }
        if !packet.payload.isEmpty { index = packet.payload.withUnsafeBytes { copyIn($0, at: index) } }
        let padding = (8 - packet.payload.count % 8) % 8
        var zeros: UInt64 = 0
        if padding > 0 { index = withUnsafeBytes(of: &zeros) { copyIn(UnsafeRawBufferPointer(rebasing: $0[0..<padding]), at: index) } }
        var trailer = UInt64(old) << 32
        index = withUnsafeBytes(of: &trailer) { copyIn($0, at: index) }
        // The packet's bytes before the write_index that publishes them
        // (store -> store): else the reader could see the new index and read
        // a packet not yet written.
        oy_shim_full_barrier()
        writeIndex = UInt32(index)
        store(Self.writeIndexOffset, writeIndex)
        // Publish write_index before loading interrupt_mask and read_index
        // (store -> load): else a reader that just unmasked and found the
        // ring empty would never be signalled for this packet (the
        // lost-wakeup Linux's hv_ringbuffer_write guards against).
        oy_shim_full_barrier()
        // Signal only on empty -> non-empty, and only if the reader asked.
        let signal = load(Self.interruptMaskOffset) == 0 && old == load(Self.readIndexOffset)
        written.add(1, ordering: .relaxed)
        if signal { sent.add(1, ordering: .relaxed) } else { suppressed.add(1, ordering: .relaxed) }
        return .written(signal: signal)
    }

    // MARK: Reader

    /// A validated descriptor at the reader's index.
    private struct Descriptor {
        let kind: Packet.Kind
        let flags: UInt16
        let transactionID: UInt64
        let length: Int          // descriptor + ranges + padded payload
        let payloadOffset: Int
        let available: Int
    }

    /// Reads and validates the next descriptor against the bytes actually
    /// available; nil when the ring is empty.
    private func nextDescriptor() throws(RingError) -> Descriptor? {
        let write = try validIndex(load(Self.writeIndexOffset), "write_index")
        let available = used(write: write, read: readIndex)
        guard available > 0 else { return nil }
        guard available >= 24 else { throw RingError.tooFewBytes(available: available) }
        var raw = (UInt16(0), UInt16(0), UInt16(0), UInt16(0), UInt64(0))
        withUnsafeMutableBytes(of: &raw) { copyOut(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<16]), at: Int(readIndex)) }
        let length = Int(raw.2) * 8, payloadOffset = Int(raw.1) * 8
        guard let kind = Packet.Kind(rawValue: raw.0) else { throw RingError.unknownPacketType(raw.0) }
        guard length >= 16, length + 8 <= available else {
            throw RingError.lengthBeyondData(length: length, available: available)
        }
        guard payloadOffset >= 16, payloadOffset <= length else {
            throw RingError.payloadOffsetOutside(offset: payloadOffset, packetLength: length)
        }
        return Descriptor(kind: kind, flags: raw.3, transactionID: raw.4, length: length, payloadOffset: payloadOffset, available: available)
    }

    /// Moves the reader past `d`, publishing the index and working out
    /// whether a blocked writer must now be signalled.
    private func consume(_ d: Descriptor, signalWriter: inout Bool) {
        let freeBefore = dataSize - d.available
        readIndex = UInt32((Int(readIndex) + d.length + 8) % dataSize)
        // Finish reading the packet before read_index gives its space back
        // (load -> store): else the writer could overwrite bytes still
        // being read.
        oy_shim_full_barrier()
        store(Self.readIndexOffset, readIndex)
        // Publish read_index before loading pending_send_sz (store -> load),
        // as Linux's hv_pkt_iter_close does: else a writer that set it after
        // our load would block while we skip its signal.
        oy_shim_full_barrier()
        let pending = Int(load(Self.pendingSendOffset))
        let freeAfter = freeBefore + d.length + 8
        if pending > 0 && freeBefore < pending && freeAfter >= pending {
            signalWriter = true
            pendingSignals.add(1, ordering: .relaxed)
        }
        readCount.add(1, ordering: .relaxed)
    }

    /// Takes the next packet, validating the descriptor against the bytes
    /// actually available. Returns nil when the ring is empty; `signalWriter`
    /// becomes true when this read freed the space a blocked writer waits for.
    public func read(signalWriter: inout Bool) throws(RingError) -> Packet? {
        guard let d = try nextDescriptor() else { return nil }
        var body = [UInt8](repeating: 0, count: d.length - 16)
        body.withUnsafeMutableBytes { copyOut(into: $0, at: (Int(readIndex) + 16) % dataSize) }
        var ranges: [GPARange] = []
        var transfer: Packet.TransferPages?
        if d.kind == .gpaDirect {
            guard d.payloadOffset >= 24 else { throw RingError.missingRangeHeader }
            ranges = try Self.gpaRanges(in: body, headerBytes: d.payloadOffset)
        }
        if d.kind == .transferPages {
            guard d.payloadOffset >= 24 else { throw RingError.missingRangeHeader }
            transfer = try Self.transferPages(in: body, headerBytes: d.payloadOffset)
        }
        let payload = Array(body[(d.payloadOffset - 16)...])
        consume(d, signalWriter: &signalWriter)
        return Packet(kind: d.kind, flags: d.flags, transactionID: d.transactionID, ranges: ranges, transfer: transfer, payload: payload)
    }

    /// The ranges of a GPA_DIRECT header (`body` starts after the 16-byte
    /// descriptor): `reserved`, `range_cnt`, then per range {byte_count,
    /// byte_offset, pfn_array[]}. Runs of consecutive PFNs become one
    /// guest-physical range each, so a range over scattered pages is a
    /// list of pieces in order. Everything is checked against the header's
    /// own length.
    static func gpaRanges(in body: [UInt8], headerBytes: Int) throws(RingError) -> [GPARange] {
        let end = headerBytes - 16
        func u32(_ at: Int) -> UInt32 { body.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt32.self) } }
        func u64(_ at: Int) -> UInt64 { body.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt64.self) } }
        let count = Int(u32(4))
        guard count <= 64 else { throw RingError.tooManyRanges(count: count, headerBytes: headerBytes) }
        var ranges: [GPARange] = []
        var at = 8
        for _ in 0..<count {
            guard at + 8 <= end else { throw RingError.tooManyRanges(count: count, headerBytes: headerBytes) }
            let byteCount = u32(at), byteOffset = u32(at + 4)
            at += 8
            guard byteOffset < UInt32(GPARange.pageSize) else { throw RingError.tooManyRanges(count: count, headerBytes: headerBytes) }
            let pages = Int((UInt64(byteOffset) + UInt64(byteCount) + GPARange.pageSize - 1) / GPARange.pageSize)
            guard pages >= 1, at + 8 * pages <= end else { throw RingError.tooManyRanges(count: count, headerBytes: headerBytes) }
            var left = UInt64(byteCount), offset = UInt64(byteOffset)
            var run: (start: UInt64, length: UInt64)?
            var previous: UInt64?
            for page in 0..<pages {
                let pfn = u64(at + 8 * page)
                let take = min(left, GPARange.pageSize - offset)
                if let p = previous, pfn == p &+ 1, let r = run {
                    run = (r.start, r.length + take)
                } else {
                    if let r = run { ranges.append(GPARange(gpa: r.start, length: UInt32(r.length))) }
                    run = (pfn &* GPARange.pageSize &+ offset, take)
                }
                previous = pfn
                left -= take
                offset = 0
            }
            if let r = run { ranges.append(GPARange(gpa: r.start, length: UInt32(r.length))) }
            at += 8 * pages
        }
        return ranges
    }

    /// A TRANSFER_PAGES header (`body` starts after the descriptor), its
    /// range count checked against the header's own length.
    static func transferPages(in body: [UInt8], headerBytes: Int) throws(RingError) -> Packet.TransferPages {
        let count = Int(body.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) })
        guard count <= Packet.TransferPages.maxRanges, 16 + 8 + 8 * count <= headerBytes else {
            throw RingError.tooManyRanges(count: count, headerBytes: headerBytes)
        }
        return body.withUnsafeBytes { p in
            Packet.TransferPages(pageSetID: p.loadUnaligned(as: UInt16.self), senderOwnsSet: p[2] & 1 != 0, ranges: (0..<count).map { i in
                .init(offset: p.loadUnaligned(fromByteOffset: 12 + 8 * i, as: UInt32.self), length: p.loadUnaligned(fromByteOffset: 8 + 8 * i, as: UInt32.self))
            })
        }
    }

    /// Like `read`, without allocating: copies the (padded) payload into
    /// `buffer` and returns its length, or nil when the ring is empty. A
    /// payload larger than `buffer` is an error.
    public func readPayload(into buffer: UnsafeMutableRawBufferPointer, signalWriter: inout Bool) throws(RingError) -> Int? {
        guard let d = try nextDescriptor() else { return nil }
        let length = d.length - d.payloadOffset
        guard length <= buffer.count else { throw RingError.payloadTooLarge(length: length, buffer: buffer.count) }
        copyOut(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length]), at: (Int(readIndex) + d.payloadOffset) % dataSize)
        consume(d, signalWriter: &signalWriter)
        return length
    }

    /// Reader: ask the writer not to signal while draining.
    public func maskInterrupts() { store(Self.interruptMaskOffset, 1) }

    /// Reader: ask to be signalled again. Returns true if data arrived after
    /// the last read, in which case the reader must drain again (the writer
    /// saw the mask set and did not signal).
    public func unmaskInterrupts() -> Bool {
        store(Self.interruptMaskOffset, 0)
        // Clear the mask before re-reading write_index (store -> load): a
        // writer that saw the mask still set did not signal, so its packet
        // must be found here.
        oy_shim_full_barrier()
        return load(Self.writeIndexOffset) != readIndex
    }

    /// Bytes waiting to be read (by the reader's own index).
    public var bytesAvailable: Int {
        let write = load(Self.writeIndexOffset)
        guard write < UInt32(dataSize), write % 8 == 0 else { return 0 }
        return used(write: write, read: readIndex)
    }
}
