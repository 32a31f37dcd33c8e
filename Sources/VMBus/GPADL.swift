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
