/// The simulated platform: RAM, an IOMMU, an interrupt controller and a bus.
///
/// Owns no OS and no driver. It knows devices only through `BusDevice`, so
/// device models live in their own module and are plugged in by whoever
/// assembles the machine.
public final class Machine: Sendable {
    public struct Configuration: Sendable {
        /// Bytes of RAM.
        public var memorySize: Int

        public init(memorySize: Int = 128 << 20) {
            self.memorySize = memorySize
        }
    }

    public let configuration: Configuration
    public let memory: PhysicalMemory
    public let iommu: IOMMU
    public let interrupts: InterruptController
    public let bus: Bus
    /// Free machine pages, handed to whoever boots on the machine.
    public let pages: PageAllocator

    public init(configuration: Configuration = .init()) throws(SystemCallError) {
        self.configuration = configuration
        memory = try PhysicalMemory(size: configuration.memorySize)
        iommu = IOMMU(memory: memory)
        interrupts = InterruptController()
        bus = Bus(iommu: iommu, interrupts: interrupts)
        // Page 0 stays reserved so that a zero device address never works by accident.
        pages = PageAllocator(firstPage: 1, pageCount: memory.pageCount - 1)
    }

    /// Powers every device off and stops interrupt delivery.
    public func shutdown() {
        bus.powerOffAll()
        interrupts.shutdown()
    }
}
