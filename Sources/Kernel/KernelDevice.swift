import CSystemShims
@_spi(Conformance) import DriverHost
import Foundation
import Glibc
import Machine

/// A bus device as the Kernel offers it to a driver: every access checked,
/// DMA memory from the OS's own pages, mapped through the platform's IOMMU.
final class KernelDevice: HostDevice, @unchecked Sendable {
    // @unchecked Sendable: `allocations` is guarded by `lock`.
    let slot: BusSlot
    let platform: any Platform
    let info: HostDeviceInfo
    private let lock = NSLock()
    /// dma_alloc'd regions by device address: their physical pages.
    private var allocations: [UInt64: (physical: UInt64, pages: Int)] = [:]
    /// The DMA memory the device's driver holds: at most half the OS's
    /// memory, so a driver that leaks DMA buffers (in process or in a
    /// driver host, whose buffers are the OS's pages too) leaves the OS and
    /// the other devices theirs.
    let dmaBudget: MemoryBudget
    private let log: KernelLog?

    init(slot: BusSlot, platform: any Platform, log: KernelLog?) {
        self.slot = slot
        self.platform = platform
        self.log = log
        dmaBudget = MemoryBudget(limit: platform.memory.pages.pageCount * PhysicalMemory.pageSize / 2)
        let device = slot.device
        info = HostDeviceInfo(
            vendorID: device.identity.vendorID, deviceID: device.identity.deviceID, classCode: device.identity.classCode,
            revision: device.identity.revision,
            bars: device.bars.map {
                switch $0 {
                case .mmio(let size): return .mmio(size: size)
                case .ports(let count): return .ports(count: count)
                }
            },
            interruptCount: device.interruptCount, location: slot.address.description)
    }

    func configRead(offset: UInt32, width: Int) throws(OyStatus) -> UInt32 {
        guard [1, 2, 4].contains(width), offset % UInt32(width) == 0, offset < 256 else { throw .invalid }
        return slot.configRead(offset: offset, width: width)
    }

    func configWrite(offset: UInt32, width: Int, value: UInt32) throws(OyStatus) {
        guard [1, 2, 4].contains(width), offset % UInt32(width) == 0, offset < 256 else { throw .invalid }
        slot.configWrite(offset: offset, width: width, value: value)
    }

    func mmioRead(bar: Int, offset: UInt64, width: Int) -> UInt64 {
        slot.mmioRead(bar: bar, offset: offset, width: width)
    }

    func mmioWrite(bar: Int, offset: UInt64, width: Int, value: UInt64) {
        slot.mmioWrite(bar: bar, offset: offset, width: width, value: value)
    }

    func portRead(bar: Int, port: UInt32) -> UInt8 { slot.portRead(bar: bar, port: port) }

    func portWrite(bar: Int, port: UInt32, value: UInt8) { slot.portWrite(bar: bar, port: port, value: value) }

    func dmaAllocate(size: Int) throws(OyStatus) -> DMARegion {
        let rounded = KernelMemory.pages(for: size) * PhysicalMemory.pageSize
        if case .refused(let held, let report) = dmaBudget.take(rounded) {
            if report {
                log?.record(.warning, "kernel", "\(slot.address): a dma_alloc of \(size) bytes refused: its driver holds \(MemoryBudget.describe(held)) "
                                + "of DMA memory, and may hold half the OS's memory, \(MemoryBudget.describe(dmaBudget.limit)) (a leak?)")
            }
            throw .noMemory
        }
        guard let (physical, pages) = platform.memory.allocate(bytes: size), let cpu = platform.memory.pointer(physical) else {
            dmaBudget.give(rounded)
            throw .noMemory
        }
        let address = platform.mapForDevice(slot, physical: physical, length: pages * PhysicalMemory.pageSize, writable: true)
        lock.withLock { allocations[address] = (physical, pages) }
        return DMARegion(cpu: cpu, deviceAddress: address, length: size)
    }

    func dmaFree(_ region: DMARegion) {
        guard let allocation = lock.withLock({ allocations.removeValue(forKey: region.deviceAddress) }) else { return }
        platform.unmapForDevice(slot, deviceAddress: region.deviceAddress, length: allocation.pages * PhysicalMemory.pageSize)
        dmaBudget.give(allocation.pages * PhysicalMemory.pageSize)
        if Verifier.quarantinesFreedDMA, let cpu = platform.memory.pointer(allocation.physical) {
            hold(physical: allocation.physical, pages: allocation.pages, cpu: cpu)
        } else {
            platform.memory.free(physical: allocation.physical, pages: allocation.pages)
        }
    }

    /// dma_free'd pages held back inaccessible (under the verifier), oldest
    /// first, at most `quarantineLimit` pages; given back to the OS when
    /// pushed out or when this device object goes.
    private struct Held {
        let physical: UInt64
        let pages: Int
        let cpu: UnsafeMutableRawPointer
    }
    private var quarantine: [Held] = []
    private var quarantinedPages = 0
    static let quarantineLimit = 256

    private func hold(physical: UInt64, pages: Int, cpu: UnsafeMutableRawPointer) {
        let length = pages * PhysicalMemory.pageSize
        guard mprotect(cpu, length, PROT_NONE) == 0 else {
            platform.memory.free(physical: physical, pages: pages)
            return
        }
        _ = oy_shim_quarantine_add(cpu, length)
        let released = lock.withLock { () -> [Held] in
            quarantine.append(Held(physical: physical, pages: pages, cpu: cpu))
            quarantinedPages += pages
            var out: [Held] = []
            while quarantinedPages > Self.quarantineLimit, quarantine.count > 1 {
                let oldest = quarantine.removeFirst()
                quarantinedPages -= oldest.pages
                out.append(oldest)
            }
            return out
        }
        released.forEach(release)
    }

    private func release(_ held: Held) {
        oy_shim_quarantine_remove(held.cpu)
        _ = mprotect(held.cpu, held.pages * PhysicalMemory.pageSize, PROT_READ | PROT_WRITE)
        platform.memory.free(physical: held.physical, pages: held.pages)
    }

    deinit {
        quarantine.forEach(release)
    }

    func dmaMap(_ pointer: UnsafeMutableRawPointer, length: Int, direction: DMADirection) throws(OyStatus) -> DMARegion {
        // Only the OS's own memory can be mapped: anything else is a driver
        // handing over a pointer the host never gave it.
        guard let physical = platform.memory.physical(of: pointer, length: length) else { throw .invalid }
        let address = platform.mapForDevice(slot, physical: physical, length: length, writable: direction != .toDevice)
        return DMARegion(cpu: pointer, deviceAddress: address, length: length)
    }

    func dmaUnmap(_ region: DMARegion) {
        platform.unmapForDevice(slot, deviceAddress: region.deviceAddress, length: region.length)
    }

    func hookInterrupt(index: Int, handler: @escaping @Sendable () -> Void) throws(OyStatus) {
        guard index >= 0, index < info.interruptCount else { throw .invalid }
        platform.routeInterrupt(slot, index: index, handler: handler)
        platform.unmaskInterrupt(slot, index: index)
    }

    func unhookInterrupt(index: Int) {
        guard isOwn(interrupt: index) else { return }
        platform.maskInterrupt(slot, index: index)
        platform.routeInterrupt(slot, index: index, handler: nil)
    }

    func maskInterrupt(index: Int) {
        if isOwn(interrupt: index) { platform.maskInterrupt(slot, index: index) }
    }

    func unmaskInterrupt(index: Int) {
        if isOwn(interrupt: index) { platform.unmaskInterrupt(slot, index: index) }
    }

    /// One of this device's vectors: an index from a driver host is not
    /// trusted to be, and another device's vector is never touched.
    private func isOwn(interrupt index: Int) -> Bool { index >= 0 && index < info.interruptCount }

    /// Frees what drivers left allocated (after a host-side reclaim they are
    /// already gone; this is the last line for a removed device).
    var liveAllocations: Int { lock.withLock { allocations.count } }
}
