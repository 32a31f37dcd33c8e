import Synchronization

/// A machine (system-physical) address.
public typealias PhysicalAddress = UInt64

/// The machine's RAM: one `memfd` mapping, so that later it can be shared
/// with another process (a driver host) or handed to KVM as guest memory.
///
/// Owns the bytes; knows nothing of who uses which page. Page ownership is
/// the business of `PageAllocator`s built on top of it.
public final class PhysicalMemory: @unchecked Sendable {
    // Sendable: the mapping is fixed for the object's lifetime; the bytes
    // behind it are shared memory whose users synchronise themselves.
    public static let pageSize = 4096

    public let size: Int
    public let base: UnsafeMutableRawPointer
    /// The memfd behind the mapping; other views (a partition's contiguous
    /// guest-physical view) map pages of it again.
    public let fileDescriptor: Int32

    /// Creates `size` bytes of zeroed RAM (rounded up to whole pages).
    public init(size: Int) throws(SystemCallError) {
        let rounded = (size + Self.pageSize - 1) / Self.pageSize * Self.pageSize
        fileDescriptor = try System.memfdCreate(name: "oyako-ram", size: rounded)
        do {
            base = try System.mapShared(fd: fileDescriptor, offset: 0, length: rounded)
        } catch {
            System.close(fileDescriptor)
            throw error
        }
        self.size = rounded
    }

    deinit {
        System.unmap(base, length: size)
        System.close(fileDescriptor)
    }

    public var pageCount: Int { size / Self.pageSize }

    /// The CPU pointer for `length` bytes at `address`, or nil when any byte
    /// lies outside RAM.
    public func pointer(_ address: PhysicalAddress, length: Int = 1) -> UnsafeMutableRawPointer? {
        guard length >= 0, address <= UInt64(size), UInt64(length) <= UInt64(size) - address else { return nil }
        return base + Int(address)
    }

    /// The machine address of a CPU pointer into this RAM, or nil.
    public func address(of pointer: UnsafeRawPointer) -> PhysicalAddress? {
        let offset = pointer - UnsafeRawPointer(base)
        guard offset >= 0, offset < size else { return nil }
        return PhysicalAddress(offset)
    }
}
