import Hypervisor
import Machine

/// Child pages the root was granted (a GPADL), shown contiguously in the
/// root's foreign window: the only way the root touches child memory for
/// rings and network buffers. Every access is checked against the grant.
public final class GPADLMapping: @unchecked Sendable {
    // @unchecked Sendable: immutable after creation.
    public let id: UInt32
    public let relid: UInt32
    /// The child's page numbers, in grant order.
    public let pfns: [UInt64]
    /// The granted pages as the root sees them, in grant order.
    private let window: GuestMemory
    /// Child page number -> index of its first grant.
    private let index: [UInt64: Int]

    init(id: UInt32, relid: UInt32, pfns: [UInt64], window: GuestMemory) {
        self.id = id
        self.relid = relid
        self.pfns = pfns
        self.window = window
        var index: [UInt64: Int] = [:]
        for (i, pfn) in pfns.enumerated() where index[pfn] == nil { index[pfn] = i }
        self.index = index
    }

    /// Root guest-physical address of the first granted page.
    public var rootGPA: GuestAddress { window.start }

    /// Bytes granted.
    public var length: Int { pfns.count * PhysicalMemory.pageSize }

    /// The root's pointer for child range [gpa, +length), or nil unless every
    /// byte lies in this GPADL on pages granted consecutively.
    public func pointer(gpa: GuestAddress, length: Int) -> UnsafeMutableRawPointer? {
        guard length > 0, let first = index[gpa.pageNumber], let end = gpa.adding(length - 1) else { return nil }
        let count = Int(end.pageNumber - gpa.pageNumber) + 1
        guard first + count <= pfns.count else { return nil }
        for k in 0..<count where pfns[first + k] != gpa.pageNumber + UInt64(k) { return nil }
        return pointer(offset: first * PhysicalMemory.pageSize + gpa.pageOffset, length: length)
    }

    /// The root's pointer for [offset, +length) of the granted bytes, in
    /// grant order; nil unless inside.
    public func pointer(offset: Int, length: Int) -> UnsafeMutableRawPointer? {
        guard offset >= 0, let address = window.start.adding(offset) else { return nil }
        return window.pointer(at: address, count: length)
    }
}

/// The child pages of one request, shown in the root's foreign window for
/// as long as the request is in flight: the way a real root serves an I/O
/// whose data lies anywhere in the child's memory. The hypervisor refuses
/// pages the child does not own; `release()` unmaps them.
public final class RequestMapping: @unchecked Sendable {
    // @unchecked Sendable: immutable after creation; `release` runs once.
    /// The request's data in the root's view, one piece per contiguous run.
    public let pieces: [UnsafeMutableRawBufferPointer]
    private let rootGPA: UInt64
    private let pageCount: Int
    private let hypercalls: Hypercalls

    /// Why a request's pages could not be mapped.
    public enum Refusal: Error, Sendable, Equatable {
        /// A range names pages the child does not own (or not writable for a read).
        case notChildMemory(gpa: UInt64, length: UInt32)
        /// The root's foreign window is full for now.
        case windowFull
    }

    init(ranges: [GPARange], child: PartitionID, writable: Bool, hypercalls: Hypercalls, view: GuestMemory) throws(Refusal) {
        let pageSize = UInt64(PhysicalMemory.pageSize)
        var pages: [UInt64] = []
        var starts: [(index: Int, offset: Int, length: Int)] = []
        for range in ranges {
            guard range.length > 0, range.gpa <= UInt64.max - UInt64(range.length) else {
                throw .notChildMemory(gpa: range.gpa, length: range.length)
            }
            let first = range.gpa / pageSize, last = (range.gpa + UInt64(range.length) - 1) / pageSize
            starts.append((pages.count, Int(range.gpa % pageSize), Int(range.length)))
            pages.append(contentsOf: first...last)
        }
        let rootGPA: UInt64
        do {
            rootGPA = try hypercalls.mapForeignPages(from: child, gpaPages: pages, writable: writable)
        } catch {
            if error == .insufficientMemory { throw .windowFull }
            // Name the first range the hypervisor refuses on its own.
            let bad = ranges.first { r in
                let first = r.gpa / pageSize, count = Int((r.gpa + UInt64(r.length) - 1) / pageSize - first) + 1
                guard let at = try? hypercalls.mapForeignPages(from: child, gpaPages: Array(first..<first + UInt64(count)), writable: writable) else { return true }
                try? hypercalls.unmapForeignPages(rootGPA: at, count: count)
                return false
            } ?? ranges[0]
            throw .notChildMemory(gpa: bad.gpa, length: bad.length)
        }
        var pieces: [UnsafeMutableRawBufferPointer] = []
        for start in starts {
            let address = GuestAddress(rootGPA + UInt64(start.index * PhysicalMemory.pageSize + start.offset))
            guard let pointer = view.pointer(at: address, count: start.length) else {
                try? hypercalls.unmapForeignPages(rootGPA: rootGPA, count: pages.count)
                throw .windowFull
            }
            if let last = pieces.last, last.baseAddress! + last.count == pointer {
                pieces[pieces.count - 1] = UnsafeMutableRawBufferPointer(start: last.baseAddress, count: last.count + start.length)
            } else {
                pieces.append(UnsafeMutableRawBufferPointer(start: pointer, count: start.length))
            }
        }
        self.pieces = pieces
        self.rootGPA = rootGPA
        self.pageCount = pages.count
        self.hypercalls = hypercalls
    }

    /// Unmaps the pages; call once the device is done with them.
    public func release() {
        try? hypercalls.unmapForeignPages(rootGPA: rootGPA, count: pageCount)
    }
}
