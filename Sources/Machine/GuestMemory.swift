/// An address in a guest's physical address space: a partition's or a
/// virtual machine's. A type of its own so that it is never mixed up with a
/// machine address, a host pointer or an offset (rust-vmm's `GuestAddress`).
public struct GuestAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let raw: UInt64

    public init(_ raw: UInt64) { self.raw = raw }

    /// The first byte of guest page `number`.
    public static func page(_ number: UInt64) -> GuestAddress { GuestAddress(number &* UInt64(PhysicalMemory.pageSize)) }

    /// The number of the page this address lies in.
    public var pageNumber: UInt64 { raw / UInt64(PhysicalMemory.pageSize) }
    /// The offset into that page.
    public var pageOffset: Int { Int(raw % UInt64(PhysicalMemory.pageSize)) }

    /// `bytes` further on; nil on overflow.
    public func adding(_ bytes: Int) -> GuestAddress? {
        guard bytes >= 0 else { return nil }
        let (sum, overflow) = raw.addingReportingOverflow(UInt64(bytes))
        return overflow ? nil : GuestAddress(sum)
    }

    public static func < (a: GuestAddress, b: GuestAddress) -> Bool { a.raw < b.raw }
    public var description: String { "GPA 0x" + String(raw, radix: 16) }
}

/// The one door to a guest's memory from the host side: a bounds-checked
/// view of `size` bytes of guest-physical address space starting at guest
/// address 0 (or a window of it). Every access names a `GuestAddress` and a
/// length and is refused (nil) unless it lies wholly inside; nothing else
/// computes `base + gpa`.
public struct GuestMemory: @unchecked Sendable {
    // @unchecked Sendable: a fixed window onto shared memory; callers
    // synchronise on the bytes, as the guest does.

    private let base: UnsafeMutableRawPointer
    /// Bytes of guest-physical space the view covers.
    public let size: Int
    /// The guest address of the first byte of the view.
    public let start: GuestAddress

    /// A view of `size` bytes of guest space at `start`, whose first byte the
    /// host reaches at `base`. Only the owner of the mapping makes one.
    public init(base: UnsafeMutableRawPointer, size: Int, start: GuestAddress = GuestAddress(0)) {
        self.base = base
        self.size = size
        self.start = start
    }

    /// True when [address, +count) lies inside the view (count > 0).
    public func contains(_ address: GuestAddress, count: Int) -> Bool {
        guard count > 0, address >= start else { return false }
        let offset = address.raw - start.raw
        return offset <= UInt64(size) && UInt64(count) <= UInt64(size) - offset
    }

    /// The host's pointer to [address, +count), or nil unless inside.
    public func pointer(at address: GuestAddress, count: Int) -> UnsafeMutableRawPointer? {
        guard contains(address, count: count) else { return nil }
        return base + Int(address.raw - start.raw)
    }

    /// The bytes [address, +count), or nil unless inside.
    public func bytes(at address: GuestAddress, count: Int) -> UnsafeMutableRawBufferPointer? {
        pointer(at: address, count: count).map { UnsafeMutableRawBufferPointer(start: $0, count: count) }
    }

    /// A window of this view: [address, +count) as a view of its own.
    public func window(at address: GuestAddress, count: Int) -> GuestMemory? {
        pointer(at: address, count: count).map { GuestMemory(base: $0, size: count, start: address) }
    }

    /// A copy of [address, +count), or nil unless inside.
    public func read(at address: GuestAddress, count: Int) -> [UInt8]? {
        bytes(at: address, count: count).map { Array($0) }
    }

    /// Copies `data` to `address`; false (and nothing written) unless it fits.
    @discardableResult
    public func write(_ data: [UInt8], at address: GuestAddress) -> Bool {
        guard !data.isEmpty else { return true }
        guard let target = bytes(at: address, count: data.count) else { return false }
        data.withUnsafeBytes { target.copyMemory(from: $0) }
        return true
    }
}

extension MemoryView {
    /// The view as guest memory: guest address N is byte N of the view.
    public var guestMemory: GuestMemory { GuestMemory(base: base, size: size) }
}
