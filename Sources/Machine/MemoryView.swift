import Synchronization

/// A contiguous CPU view assembled from pages of machine RAM, in any order:
/// how a partition sees its guest-physical address space. Pages are mapped
/// from the RAM's memfd with MAP_FIXED, so the view and the RAM are the same
/// memory; unmapped parts of the view are inaccessible (PROT_NONE), so a
/// stray access faults instead of reading someone else's page.
public final class MemoryView: @unchecked Sendable {
    // @unchecked Sendable: the reservation is fixed; mapping calls are
    // serialised by `lock`; the bytes are shared memory.
    public let base: UnsafeMutableRawPointer
    public let size: Int
    private let memory: PhysicalMemory
    private let lock = Mutex(())

    /// Reserves `size` bytes of address space, all inaccessible.
    public init(memory: PhysicalMemory, size: Int) throws(SystemCallError) {
        self.memory = memory
        self.size = size
        self.base = try System.reserve(length: size)
    }

    deinit { System.unmap(base, length: size) }

    /// Shows the machine pages at `machineAddress` at `offset` in the view.
    public func map(offset: Int, machineAddress: PhysicalAddress, length: Int) throws(SystemCallError) {
        precondition(offset % PhysicalMemory.pageSize == 0 && Int(machineAddress) % PhysicalMemory.pageSize == 0 && length % PhysicalMemory.pageSize == 0)
        precondition(offset + length <= size && Int(machineAddress) + length <= memory.size)
        try lock.withLock { _ throws(SystemCallError) in
            _ = try System.mapShared(fd: memory.fileDescriptor, offset: Int(machineAddress), length: length, at: base + offset)
        }
    }

    /// Makes [offset, +length) inaccessible again.
    public func unmap(offset: Int, length: Int) throws(SystemCallError) {
        precondition(offset % PhysicalMemory.pageSize == 0 && length % PhysicalMemory.pageSize == 0 && offset + length <= size)
        try lock.withLock { _ throws(SystemCallError) in
            try System.protectNone(base + offset, length: length)
        }
    }
}
