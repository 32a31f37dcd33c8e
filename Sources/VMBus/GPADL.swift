import Foundation
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
/// pages the child does not own. `release()` hands the view back to the
/// child's `ForeignMappingCache`, which keeps recently used page lists mapped
/// (as Xen's blkback keeps persistent grants) so that a guest reusing its
/// buffers does not pay a map and an unmap per request.
public final class RequestMapping: @unchecked Sendable {
    // @unchecked Sendable: immutable after creation; `release` runs once.
    /// The request's data in the root's view, one piece per contiguous run.
    public let pieces: [UnsafeMutableRawBufferPointer]
    private let entry: ForeignMappingCache.Entry
    private let cache: ForeignMappingCache

    /// Why a request's pages could not be mapped.
    public enum Refusal: Error, Sendable, Equatable {
        /// A range names pages the child does not own (or not writable for a read).
        case notChildMemory(gpa: UInt64, length: UInt32)
        /// The root's foreign window is full for now.
        case windowFull
    }

    init(pieces: [UnsafeMutableRawBufferPointer], entry: ForeignMappingCache.Entry, cache: ForeignMappingCache) {
        self.pieces = pieces
        self.entry = entry
        self.cache = cache
    }

    /// Returns the view; call once the device is done with the pages.
    public func release() { cache.release(entry) }
}

/// One child's request mappings in the root's foreign window, keyed by the
/// exact page list (and whether the root may write it). Views in use are
/// never unmapped; unused ones are evicted, least recently used first, when
/// the cache holds more than `capacityPages`. The root changes a child's
/// memory map only when it destroys the child, and the cache is emptied
/// before that (`removeAll`), so a cached view always shows the child's pages.
final class ForeignMappingCache: @unchecked Sendable {
    // @unchecked Sendable: guarded by `lock`.
    final class Entry {
        let key: Key
        let rootGPA: UInt64
        var users = 0
        var lastUse: UInt64 = 0
        init(key: Key, rootGPA: UInt64) {
            self.key = key
            self.rootGPA = rootGPA
        }
    }

    struct Key: Hashable {
        let pages: [UInt64]
        let writable: Bool
    }

    let child: PartitionID
    let capacityPages: Int
    private let hypercalls: Hypercalls
    private let view: GuestMemory
    private let lock = NSLock()
    private var entries: [Key: Entry] = [:]
    private var mappedPages = 0
    private var clock: UInt64 = 0

    init(child: PartitionID, hypercalls: Hypercalls, view: GuestMemory, capacityPages: Int = 1024) {
        self.child = child
        self.hypercalls = hypercalls
        self.view = view
        self.capacityPages = capacityPages
    }

    func map(_ ranges: [GPARange], writable: Bool) throws(RequestMapping.Refusal) -> RequestMapping {
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
        let entry = try acquire(Key(pages: pages, writable: writable), ranges: ranges)
        var pieces: [UnsafeMutableRawBufferPointer] = []
        for start in starts {
            let address = GuestAddress(entry.rootGPA + UInt64(start.index * PhysicalMemory.pageSize + start.offset))
            guard let pointer = view.pointer(at: address, count: start.length) else {
                release(entry)
                throw .windowFull
            }
            if let last = pieces.last, last.baseAddress! + last.count == pointer {
                pieces[pieces.count - 1] = UnsafeMutableRawBufferPointer(start: last.baseAddress, count: last.count + start.length)
            } else {
                pieces.append(UnsafeMutableRawBufferPointer(start: pointer, count: start.length))
            }
        }
        return RequestMapping(pieces: pieces, entry: entry, cache: self)
    }

    private func acquire(_ key: Key, ranges: [GPARange]) throws(RequestMapping.Refusal) -> Entry {
        if let hit = lock.withLock({ () -> Entry? in
            guard let entry = entries[key] else { return nil }
            entry.users += 1
            return entry
        }) { return hit }
        let rootGPA: UInt64
        do {
            rootGPA = try hypercalls.mapForeignPages(from: child, gpaPages: key.pages, writable: key.writable)
        } catch {
            if error == .insufficientMemory, evictUnused(all: true) > 0 { return try acquire(key, ranges: ranges) }
            if error == .insufficientMemory { throw .windowFull }
            throw refusal(ranges, writable: key.writable)
        }
        let entry = Entry(key: key, rootGPA: rootGPA)
        entry.users = 1
        let raced = lock.withLock { () -> Entry? in
            if let existing = entries[key] {
                existing.users += 1
                return existing
            }
            entries[key] = entry
            mappedPages += key.pages.count
            return nil
        }
        if let raced {
            try? hypercalls.unmapForeignPages(rootGPA: rootGPA, count: key.pages.count)
            return raced
        }
        _ = evictUnused(all: false)
        return entry
    }

    /// Names the first range the hypervisor refuses on its own.
    private func refusal(_ ranges: [GPARange], writable: Bool) -> RequestMapping.Refusal {
        let pageSize = UInt64(PhysicalMemory.pageSize)
        let bad = ranges.first { r in
            let first = r.gpa / pageSize, count = Int((r.gpa + UInt64(r.length) - 1) / pageSize - first) + 1
            guard let at = try? hypercalls.mapForeignPages(from: child, gpaPages: Array(first..<first + UInt64(count)), writable: writable) else { return true }
            try? hypercalls.unmapForeignPages(rootGPA: at, count: count)
            return false
        } ?? ranges[0]
        return .notChildMemory(gpa: bad.gpa, length: bad.length)
    }

    func release(_ entry: Entry) {
        let over = lock.withLock { () -> Bool in
            entry.users -= 1
            clock += 1
            entry.lastUse = clock
            return mappedPages > capacityPages
        }
        if over { _ = evictUnused(all: false) }
    }

    /// Unmaps unused views, oldest first, until the cache fits (or all of
    /// them); returns how many pages it unmapped.
    private func evictUnused(all: Bool) -> Int {
        let victims = lock.withLock { () -> [Entry] in
            guard all || mappedPages > capacityPages else { return [] }
            var out: [Entry] = []
            for entry in entries.values.filter({ $0.users == 0 }).sorted(by: { $0.lastUse < $1.lastUse }) {
                guard all || mappedPages > capacityPages else { break }
                entries[entry.key] = nil
                mappedPages -= entry.key.pages.count
                out.append(entry)
            }
            return out
        }
        for entry in victims { try? hypercalls.unmapForeignPages(rootGPA: entry.rootGPA, count: entry.key.pages.count) }
        return victims.reduce(0) { $0 + $1.key.pages.count }
    }

    /// Unmaps every view; the child's requests must all be finished.
    func removeAll() {
        let all = lock.withLock { () -> [Entry] in
            defer { entries.removeAll(); mappedPages = 0 }
            return Array(entries.values)
        }
        for entry in all { try? hypercalls.unmapForeignPages(rootGPA: entry.rootGPA, count: entry.key.pages.count) }
    }

    /// Pages mapped now (tests read it).
    var pagesMapped: Int { lock.withLock { mappedPages } }
}
