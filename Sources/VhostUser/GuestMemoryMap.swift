import Machine

/// Why a memory table (VHOST_USER_SET_MEM_TABLE) was refused.
public enum MemoryTableError: Error, Equatable, CustomStringConvertible, Sendable {
    case noRegions
    case tooManyRegions(Int, limit: Int)
    case emptyRegion(index: Int)
    /// A region whose guest or user range wraps around 2^64.
    case regionWraps(index: Int)
    /// Two regions claim the same guest-physical bytes.
    case overlapping(Int, Int)
    /// The region's file descriptor could not be mapped.
    case cannotMap(index: Int, String)

    public var description: String {
        switch self {
        case .noRegions: "the memory table has no regions"
        case .tooManyRegions(let n, let limit): "the memory table has \(n) regions; at most \(limit) are taken"
        case .emptyRegion(let i): "memory region \(i) is empty"
        case .regionWraps(let i): "memory region \(i) wraps around the address space"
        case .overlapping(let a, let b): "memory regions \(a) and \(b) overlap in guest-physical space"
        case .cannotMap(let i, let why): "memory region \(i) cannot be mapped: \(why)"
        }
    }
}

/// A virtual machine's memory as a vhost-user back-end sees it: the regions
/// of the front-end's memory table, each mapped here from the descriptor the
/// front-end passed. Every guest address a queue names is translated here
/// and only here; a range not wholly inside the guest's regions is refused.
public final class GuestMemoryMap: @unchecked Sendable {
    // @unchecked Sendable: immutable after creation; the bytes are shared
    // with the guest, which users synchronise with as virtio says.

    /// One region, as the table described it.
    public struct Region: Sendable {
        /// Where the region starts in guest-physical space.
        public let guestAddress: GuestAddress
        public let size: Int
        /// Where the region starts in the front-end's own address space (the
        /// addresses SET_VRING_ADDR uses).
        public let userAddress: UInt64
        /// The region's bytes here.
        public let memory: GuestMemory
    }

    /// vhost-user's traditional limit (VHOST_MEMORY_BASELINE_NREGIONS).
    public static let regionLimit = 8

    public let regions: [Region]
    private let mappings: [SharedMapping]

    /// What SET_MEM_TABLE says of one region.
    public struct Description: Sendable {
        public var guestAddress: UInt64
        public var size: UInt64
        public var userAddress: UInt64
        public var mmapOffset: UInt64
        public var fileDescriptor: Int32
    }

    /// Validates the table and maps every region (the descriptors stay the
    /// caller's to close).
    public init(_ table: [Description]) throws(MemoryTableError) {
        guard !table.isEmpty else { throw .noRegions }
        guard table.count <= Self.regionLimit else { throw .tooManyRegions(table.count, limit: Self.regionLimit) }
        for (i, r) in table.enumerated() {
            guard r.size > 0, r.size <= UInt64(Int.max / 2) else { throw .emptyRegion(index: i) }
            let (guestEnd, wrapsGuest) = r.guestAddress.addingReportingOverflow(r.size)
            let (userEnd, wrapsUser) = r.userAddress.addingReportingOverflow(r.size)
            let (_, wrapsMap) = r.mmapOffset.addingReportingOverflow(r.size)
            guard !wrapsGuest, !wrapsUser, !wrapsMap, guestEnd > 0, userEnd > 0, r.mmapOffset <= UInt64(Int.max / 2) else { throw .regionWraps(index: i) }
            for (j, other) in table.enumerated() where j < i {
                if r.guestAddress < other.guestAddress + other.size && other.guestAddress < guestEnd { throw .overlapping(j, i) }
            }
        }
        var mappings: [SharedMapping] = []
        var regions: [Region] = []
        for (i, r) in table.enumerated() {
            // The offset need not be page-aligned: map from the file's start
            // and skip it, as libvhost-user does.
            let mapping: SharedMapping
            do {
                mapping = try SharedMapping(fileDescriptor: r.fileDescriptor, offset: 0, length: Int(r.size + r.mmapOffset))
            } catch {
                throw .cannotMap(index: i, error.description)
            }
            mappings.append(mapping)
            let memory = GuestMemory(base: mapping.base + Int(r.mmapOffset), size: Int(r.size), start: GuestAddress(r.guestAddress))
            regions.append(Region(guestAddress: GuestAddress(r.guestAddress), size: Int(r.size), userAddress: r.userAddress, memory: memory))
        }
        self.mappings = mappings
        self.regions = regions
    }

    /// The host's pointer to [address, +length) when it lies wholly inside
    /// one region (ring structures must); nil otherwise.
    public func pointer(_ address: GuestAddress, length: Int) -> UnsafeMutableRawPointer? {
        for region in regions { if let p = region.memory.pointer(at: address, count: length) { return p } }
        return nil
    }

    /// The host's pieces of guest range [address, +length), in order, which
    /// may cross from one region into the next; nil unless every byte is in
    /// some region. A zero length is no bytes, and refused.
    public func pieces(_ address: GuestAddress, length: Int) -> [UnsafeMutableRawBufferPointer]? {
        guard length > 0, address.adding(length) != nil else { return nil }
        var out: [UnsafeMutableRawBufferPointer] = []
        var at = address
        var left = length
        while left > 0 {
            guard let region = regions.first(where: { $0.memory.contains(at, count: 1) }) else { return nil }
            let inRegion = min(left, Int(region.guestAddress.raw + UInt64(region.size) - at.raw))
            guard let bytes = region.memory.bytes(at: at, count: inRegion), let next = at.adding(inRegion) else { return nil }
            out.append(bytes)
            at = next
            left -= inRegion
        }
        return out
    }

    /// The guest address of front-end address `user` (SET_VRING_ADDR speaks
    /// these) when [user, +length) lies inside one region; nil otherwise.
    public func guestAddress(ofUser user: UInt64, length: Int) -> GuestAddress? {
        for region in regions where user >= region.userAddress {
            let offset = user - region.userAddress
            guard offset < UInt64(region.size), UInt64(length) <= UInt64(region.size) - offset else { continue }
            return GuestAddress(region.guestAddress.raw + offset)
        }
        return nil
    }
}
