import Machine

/// What the Kernel runs on. The same Kernel boots on bare metal or as the
/// root partition; only this protocol's implementation differs. It answers:
/// where is my memory, which devices do I own, how does a device reach my
/// memory (the IOMMU), and how do its interrupts reach me.
public protocol Platform: AnyObject, Sendable {
    /// "bare" or "root".
    var environmentName: String { get }
    /// The OS's physical memory: what it calls address X.
    var memory: KernelMemory { get }
    /// The bus with the devices this OS owns.
    var bus: Bus { get }

    /// Lets `slot`'s device reach [physical, +length) of the OS's memory;
    /// returns the device address to give it: `deviceAddressBase` +
    /// physical, never the physical address itself.
    func mapForDevice(_ slot: BusSlot, physical: UInt64, length: Int, writable: Bool) -> UInt64
    func unmapForDevice(_ slot: BusSlot, deviceAddress: UInt64, length: Int)

    /// Delivers the device's vector `index` to `handler` (nil removes it;
    /// returns after a running handler finished).
    func routeInterrupt(_ slot: BusSlot, index: Int, handler: (@Sendable () -> Void)?)
    func maskInterrupt(_ slot: BusSlot, index: Int)
    func unmaskInterrupt(_ slot: BusSlot, index: Int)

    /// The memfd of the machine's RAM, and where [physical, +length) of the
    /// OS's memory lies in it (nil when any of it is not RAM): what a
    /// driver-host process maps to share the OS's memory.
    var machineMemoryFile: Int32 { get }
    func machineRuns(physical: UInt64, length: Int) -> [(offset: UInt64, length: Int)]?
}

/// Where the OS's memory appears to its devices: physical address X is
/// device address `deviceAddressBase + X`. Above 4 GiB on purpose, as an
/// IOMMU hands out addresses on a large machine: a driver that keeps a
/// device address in 32 bits, programs only the low half of a 64-bit
/// register, or gives its device a physical address, has the device fault
/// here instead of on a customer's machine.
public let deviceAddressBase: UInt64 = 1 << 36

/// The OS's view of its physical memory: a contiguous CPU mapping of its
/// physical address space and a page allocator over it.
public final class KernelMemory: Sendable {

    /// CPU address of physical address 0. Sendable: fixed for the lifetime.
    public nonisolated(unsafe) let base: UnsafeMutableRawPointer
    public let size: Int
    public let pages: PageAllocator

    public init(base: UnsafeMutableRawPointer, size: Int, pages: PageAllocator) {
        self.base = base
        self.size = size
        self.pages = pages
    }

    public func pointer(_ physical: UInt64) -> UnsafeMutableRawPointer? {
        physical < UInt64(size) ? base + Int(physical) : nil
    }

    /// The physical address of `length` bytes at `pointer`, or nil when any
    /// of them lies outside this memory.
    public func physical(of pointer: UnsafeRawPointer, length: Int = 1) -> UInt64? {
        let offset = pointer - UnsafeRawPointer(base)
        guard offset >= 0, length >= 0, offset <= size, length <= size - offset else { return nil }
        return UInt64(offset)
    }

    /// The whole pages an allocation of `bytes` takes (at least one).
    public static func pages(for bytes: Int) -> Int { max(1, (bytes + PhysicalMemory.pageSize - 1) / PhysicalMemory.pageSize) }

    /// Allocates zeroed, contiguous pages; nil when memory is exhausted.
    public func allocate(bytes: Int) -> (physical: UInt64, pages: Int)? {
        let count = Self.pages(for: bytes)
        guard let first = pages.allocate(count) else { return nil }
        let physical = first * UInt64(PhysicalMemory.pageSize)
        (base + Int(physical)).initializeMemory(as: UInt8.self, repeating: 0, count: count * PhysicalMemory.pageSize)
        return (physical, count)
    }

    public func free(physical: UInt64, pages count: Int) {
        pages.free(physical / UInt64(PhysicalMemory.pageSize), count: count)
    }
}

/// The OS directly on the machine: physical addresses are machine addresses,
/// the IOMMU maps them at `deviceAddressBase` + physical (only the pages the
/// OS mapped), and device interrupts go straight to the OS.
public final class BarePlatform: Platform {
    public let machine: Machine
    public let memory: KernelMemory
    public var bus: Bus { machine.bus }
    public var environmentName: String { "bare" }

    public init(machine: Machine) {
        self.machine = machine
        memory = KernelMemory(base: machine.memory.base, size: machine.memory.size, pages: machine.pages)
    }

    public func mapForDevice(_ slot: BusSlot, physical: UInt64, length: Int, writable: Bool) -> UInt64 {
        machine.iommu.map(domain: Bus.domain(of: slot.address), deviceAddress: deviceAddressBase + physical, machineAddress: physical, length: length, writable: writable)
        return deviceAddressBase + physical
    }

    public func unmapForDevice(_ slot: BusSlot, deviceAddress: UInt64, length: Int) {
        machine.iommu.unmap(domain: Bus.domain(of: slot.address), deviceAddress: deviceAddress, length: length)
    }

    public func routeInterrupt(_ slot: BusSlot, index: Int, handler: (@Sendable () -> Void)?) {
        machine.interrupts.setHandler(slot.vectors.lowerBound + index, handler)
    }

    public func maskInterrupt(_ slot: BusSlot, index: Int) {
        machine.interrupts.mask(slot.vectors.lowerBound + index)
    }

    public func unmaskInterrupt(_ slot: BusSlot, index: Int) {
        machine.interrupts.unmask(slot.vectors.lowerBound + index)
    }

    public var machineMemoryFile: Int32 { machine.memory.fileDescriptor }

    public func machineRuns(physical: UInt64, length: Int) -> [(offset: UInt64, length: Int)]? {
        physical + UInt64(length) <= UInt64(machine.memory.size) ? [(physical, length)] : nil
    }
}
