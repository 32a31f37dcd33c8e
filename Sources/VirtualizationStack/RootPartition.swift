import Foundation
import Hypervisor
import Kernel
import Machine
import Synchronization
import VMBus

/// The machine with the hypervisor role on: the hypervisor takes the
/// machine, and the same Kernel that runs on bare metal runs here as the
/// root partition, on `platform`. The root's VP 0 takes its interrupts:
/// forwarded device vectors and VMBus SynIC messages and events.
public final class RootPartition: @unchecked Sendable {
    // @unchecked Sendable: immutable after init.
    public let hypervisor: Hypervisor
    public let platform: RootPlatform
    public let vmbus: VMBusServer

    /// - Parameters:
    ///   - memory: bytes of RAM for the root; the rest of the machine stays
    ///     with the hypervisor for child partitions.
    public init(machine: Machine, memory: Int) throws {
        let hypervisor = try Hypervisor(machine: machine, rootMemory: memory)
        let platform = RootPlatform(hypervisor: hypervisor, ramSize: memory)
        let vmbus = VMBusServer(root: hypervisor.root)
        self.hypervisor = hypervisor
        self.platform = platform
        self.vmbus = vmbus
        let vp = hypervisor.root.virtualProcessors[0]
        vp.setHandlers(sint: { sint in vmbus.handleSINT(sint, synic: vp.synic) }, vector: { vector in platform.deliver(vector: vector) })
        vp.start(name: "root-vp0") { vp in
            // The root's VP 0 idles in halt, taking interrupts, until stopped.
            vp.halt(until: { false })
        }
    }

    public var rootVP: VirtualProcessor { hypervisor.root.virtualProcessors[0] }

    /// Stops the root VP. Child partitions must be destroyed first.
    public func shutdown() {
        rootVP.stop()
    }
}

/// The Kernel's platform inside the root partition. Physical addresses are
/// root guest-physical addresses: the IOMMU maps them to wherever the
/// hypervisor put the root's pages (never identity), and device interrupts
/// arrive through the hypervisor on the root's VP.
public final class RootPlatform: Platform, @unchecked Sendable {
    // @unchecked Sendable: `handlers` and `inService` are guarded by `condition`.
    public let hypervisor: Hypervisor
    public let memory: KernelMemory
    public var bus: Bus { hypervisor.machine.bus }
    public var environmentName: String { "root" }

    private let condition = NSCondition()
    private var handlers: [Int: @Sendable () -> Void] = [:]
    private var inService: Set<Int> = []

    init(hypervisor: Hypervisor, ramSize: Int) {
        self.hypervisor = hypervisor
        let root = hypervisor.root!
        // The OS may allocate from its RAM (page 0 reserved); the foreign
        // window above it is addressable but only filled by GPADL mappings.
        let ramPages = (ramSize + PhysicalMemory.pageSize - 1) / PhysicalMemory.pageSize
        memory = KernelMemory(base: root.memory.base, size: root.addressSpaceSize, pages: PageAllocator(firstPage: 1, pageCount: ramPages - 1))
    }

    public func mapForDevice(_ slot: BusSlot, physical: UInt64, length: Int, writable: Bool) -> UInt64 {
        let domain = Bus.domain(of: slot.address)
        guard let runs = hypervisor.machineRuns(partition: hypervisor.root.id, gpa: physical, length: length) else {
            // Unmapped root memory: leave it unmapped, so the device faults.
            return deviceAddressBase + physical
        }
        var deviceAddress = deviceAddressBase + physical
        for run in runs {
            hypervisor.machine.iommu.map(domain: domain, deviceAddress: deviceAddress, machineAddress: run.machine, length: run.length, writable: writable)
            deviceAddress += UInt64(run.length)
        }
        return deviceAddressBase + physical
    }

    public func unmapForDevice(_ slot: BusSlot, deviceAddress: UInt64, length: Int) {
        hypervisor.machine.iommu.unmap(domain: Bus.domain(of: slot.address), deviceAddress: deviceAddress, length: length)
    }

    public func routeInterrupt(_ slot: BusSlot, index: Int, handler: (@Sendable () -> Void)?) {
        let vector = slot.vectors.lowerBound + index
        condition.lock()
        handlers[vector] = handler
        if handler == nil {
            // The handler runs on the root VP: wait until it has returned.
            while inService.contains(vector) { condition.wait() }
        }
        condition.unlock()
        hypervisor.forwardToRoot(vector: vector, enabled: handler != nil)
    }

    public func maskInterrupt(_ slot: BusSlot, index: Int) {
        hypervisor.machine.interrupts.mask(slot.vectors.lowerBound + index)
    }

    public var machineMemoryFile: Int32 { hypervisor.machine.memory.fileDescriptor }

    public func machineRuns(physical: UInt64, length: Int) -> [(offset: UInt64, length: Int)]? {
        hypervisor.machineRuns(partition: hypervisor.root.id, gpa: physical, length: length)?.map { ($0.machine, $0.length) }
    }

    public func unmaskInterrupt(_ slot: BusSlot, index: Int) {
        hypervisor.machine.interrupts.unmask(slot.vectors.lowerBound + index)
    }

    /// A forwarded vector, on the root VP's thread.
    func deliver(vector: Int) {
        condition.lock()
        guard let handler = handlers[vector] else {
            condition.unlock()
            return
        }
        inService.insert(vector)
        condition.unlock()
        handler()
        condition.lock()
        inService.remove(vector)
        condition.broadcast()
        condition.unlock()
    }
}
