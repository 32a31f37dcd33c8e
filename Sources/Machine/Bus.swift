import Synchronization

/// Where a device sits on the bus, printed PCI-style ("00:02.0").
public struct BusAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let bus: UInt8
    public let slot: UInt8
    public let function: UInt8

    public init(bus: UInt8 = 0, slot: UInt8, function: UInt8 = 0) {
        self.bus = bus
        self.slot = slot
        self.function = function
    }

    public var description: String {
        func hex(_ v: UInt8) -> String { v < 16 ? "0" + String(v, radix: 16) : String(v, radix: 16) }
        return "\(hex(bus)):\(hex(slot)).\(function)"
    }

    public static func < (a: BusAddress, b: BusAddress) -> Bool {
        (a.bus, a.slot, a.function) < (b.bus, b.slot, b.function)
    }
}

/// What config space says a device is.
public struct DeviceIdentity: Sendable, Equatable {
    public var vendorID: UInt16
    public var deviceID: UInt16
    /// class << 16 | subclass << 8 | programming interface
    public var classCode: UInt32
    public var revision: UInt8

    public init(vendorID: UInt16, deviceID: UInt16, classCode: UInt32, revision: UInt8 = 1) {
        self.vendorID = vendorID
        self.deviceID = deviceID
        self.classCode = classCode
        self.revision = revision
    }
}

/// A base address register: a register window or a port range.
public enum BAR: Sendable, Equatable {
    case mmio(size: UInt64)
    case ports(count: UInt32)
}

/// A device model as the bus sees it: config identity, register windows,
/// port ranges, and interrupt vectors. Register accesses arrive on the
/// caller's thread (as a CPU's load/store would); the model does its real
/// work on its own thread, started by `powerOn`.
public protocol BusDevice: AnyObject, Sendable {
    var name: String { get }
    var identity: DeviceIdentity { get }
    var bars: [BAR] { get }
    var interruptCount: Int { get }
    func mmioRead(bar: Int, offset: UInt64, width: Int) -> UInt64
    func mmioWrite(bar: Int, offset: UInt64, width: Int, value: UInt64)
    func portRead(bar: Int, port: UInt32) -> UInt8
    func portWrite(bar: Int, port: UInt32, value: UInt8)
    /// Connects the device to the platform and starts its thread.
    func powerOn(_ port: DevicePort)
    /// Stops the device's thread; no DMA or interrupt happens after return.
    func powerOff()
}

extension BusDevice {
    public func portRead(bar: Int, port: UInt32) -> UInt8 { 0xFF }
    public func portWrite(bar: Int, port: UInt32, value: UInt8) {}
}

/// A device's connection to the platform: DMA through the IOMMU under its own
/// domain, and its interrupt vectors. This is all a device model can touch.
public final class DevicePort: Sendable {
    public let address: BusAddress
    public let deviceName: String
    /// "name@bus-address", as DMA faults name the device; built once, not
    /// on every DMA.
    private let faultLabel: String
    private let iommu: IOMMU
    private let interrupts: InterruptController
    private let vectors: Range<InterruptController.Vector>
    private let removed: Atomic<Bool>
    private let lost = Atomic<Bool>(false)
    /// What the device did that went nowhere: DMA the IOMMU refused, and
    /// interrupts raised with no handler hooked (a device its driver left
    /// running).
    private let faults = Atomic<Int>(0)
    /// By vector index.
    private let unhandled: Mutex<[Int]>

    init(address: BusAddress, deviceName: String, iommu: IOMMU, interrupts: InterruptController, vectors: Range<Int>) {
        self.address = address
        self.deviceName = deviceName
        self.faultLabel = "\(deviceName)@\(address)"
        self.iommu = iommu
        self.interrupts = interrupts
        self.vectors = vectors
        self.unhandled = Mutex(Array(repeating: 0, count: vectors.count))
        self.removed = Atomic(false)
    }

    /// The IOMMU domain of this device.
    public var domain: IOMMU.DomainID { Bus.domain(of: address) }

    /// CPU-addressable pieces for a device access; throws a DMA fault for
    /// anything not mapped for this device.
    public func dma(_ deviceAddress: UInt64, length: Int, write: Bool) throws(DMAFault) -> [UnsafeMutableRawBufferPointer] {
        if removed.load(ordering: .acquiring) {
            throw DMAFault(device: deviceName, address: deviceAddress, length: length, write: write, reason: "device removed from the bus")
        }
        do {
            return try iommu.translate(domain: domain, deviceName: faultLabel, deviceAddress: deviceAddress, length: length, write: write)
        } catch {
            faults.add(1, ordering: .relaxed)
            throw error
        }
    }

    /// DMA accesses of this device the IOMMU refused, since power-on.
    public var dmaFaults: Int { faults.load(ordering: .relaxed) }
    /// Interrupts this device raised while no handler was hooked to them.
    public var unhandledInterrupts: Int { unhandledByVector.reduce(0, +) }
    /// The same, by vector index.
    public var unhandledByVector: [Int] { unhandled.withLock { $0 } }

    /// Copies device-visible memory into `buffer`.
    public func dmaRead(_ deviceAddress: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(DMAFault) {
        var offset = 0
        for piece in try dma(deviceAddress, length: buffer.count, write: false) {
            (buffer.baseAddress! + offset).copyMemory(from: piece.baseAddress!, byteCount: piece.count)
            offset += piece.count
        }
    }

    /// Copies `bytes` into device-visible memory.
    public func dmaWrite(_ deviceAddress: UInt64, from bytes: UnsafeRawBufferPointer) throws(DMAFault) {
        var offset = 0
        for piece in try dma(deviceAddress, length: bytes.count, write: true) {
            piece.baseAddress!.copyMemory(from: bytes.baseAddress! + offset, byteCount: piece.count)
            offset += piece.count
        }
    }

    /// Raises the device's vector `index` (an MSI write).
    public func raiseInterrupt(_ index: Int) {
        guard !removed.load(ordering: .acquiring), !lost.load(ordering: .relaxed), index >= 0, index < vectors.count else { return }
        if !interrupts.raise(vectors.lowerBound + index) { unhandled.withLock { $0[index] += 1 } }
    }

    func markRemoved() { removed.store(true, ordering: .releasing) }

    /// Fault injection: while set, the device's interrupts are lost.
    func loseInterrupts(_ on: Bool) { lost.store(on, ordering: .relaxed) }
}

/// One occupied position on the bus.
public final class BusSlot: Sendable {
    public let address: BusAddress
    public let device: any BusDevice
    /// The machine-wide interrupt vectors of this device, in index order.
    public let vectors: Range<InterruptController.Vector>
    let port: DevicePort
    private let removedFlag = Atomic(false)
    private let command = Atomic<UInt16>(0)
    private let echoWrites = Atomic(false)

    init(address: BusAddress, device: any BusDevice, vectors: Range<Int>, port: DevicePort) {
        self.address = address
        self.device = device
        self.vectors = vectors
        self.port = port
    }

    public var isRemoved: Bool { removedFlag.load(ordering: .acquiring) }

    /// Fault injection: drop every interrupt the device raises until cleared.
    public func loseInterrupts(_ on: Bool) { port.loseInterrupts(on) }

    /// Raises the device's vector `index` as if the device had (spurious or
    /// test interrupts).
    public func raiseInterrupt(_ index: Int) { port.raiseInterrupt(index) }

    /// Fault injection: while set, every register or port write the CPU
    /// makes is followed at once by all of the device's interrupts, as if
    /// it had something to report: a doorbell write then brings an
    /// interrupt while its command is still with the device.
    public func interruptAfterEveryWrite(_ on: Bool) { echoWrites.store(on, ordering: .relaxed) }

    private func echoWrite() {
        guard echoWrites.load(ordering: .relaxed) else { return }
        for index in 0..<device.interruptCount { port.raiseInterrupt(index) }
    }

    /// DMA of this device the IOMMU refused, since power-on.
    public var dmaFaults: Int { port.dmaFaults }
    /// Interrupts this device raised with no handler hooked.
    public var unhandledInterrupts: Int { port.unhandledInterrupts }
    /// The same, by vector index (`vectors.lowerBound + index`).
    public var unhandledInterruptsByVector: [Int] { port.unhandledByVector }

    /// Type-0 config header: IDs, command, class, BAR kinds, interrupt count.
    /// A removed device reads as all ones.
    public func configRead(offset: UInt32, width: Int) -> UInt32 {
        guard !isRemoved, [1, 2, 4].contains(width), offset % UInt32(width) == 0, offset + UInt32(width) <= 256 else {
            return width == 4 ? 0xFFFF_FFFF : (1 << (width * 8)) - 1
        }
        let dword = configDword(offset & ~3)
        let shifted = dword >> ((offset & 3) * 8)
        return width == 4 ? shifted : shifted & ((1 << UInt32(width * 8)) - 1)
    }

    /// Only the command register is writable.
    public func configWrite(offset: UInt32, width: Int, value: UInt32) {
        guard !isRemoved, offset == 4, width == 2 else { return }
        command.store(UInt16(truncatingIfNeeded: value), ordering: .relaxed)
    }

    private func configDword(_ offset: UInt32) -> UInt32 {
        let id = device.identity
        switch offset {
        case 0x00: return UInt32(id.vendorID) | UInt32(id.deviceID) << 16
        case 0x04: return UInt32(command.load(ordering: .relaxed))
        case 0x08: return UInt32(id.revision) | id.classCode << 8
        case 0x10..<0x28:
            let index = Int((offset - 0x10) / 4)
            guard index < device.bars.count else { return 0 }
            switch device.bars[index] {
            case .mmio: return 0x0
            case .ports: return 0x1
            }
        case 0x2C: return UInt32(id.vendorID) | UInt32(id.deviceID) << 16
        case 0x3C: return UInt32(device.interruptCount) << 16
        default: return 0
        }
    }

    /// Register access as the CPU sees it: all ones for a removed device or an
    /// access outside the window (64 of them for a width no CPU has).
    public func mmioRead(bar: Int, offset: UInt64, width: Int) -> UInt64 {
        guard !isRemoved, inWindow(bar: bar, offset: offset, width: width) else {
            return [1, 2, 4].contains(width) ? (1 << UInt64(width * 8)) - 1 : UInt64.max
        }
        return device.mmioRead(bar: bar, offset: offset, width: width)
    }

    public func mmioWrite(bar: Int, offset: UInt64, width: Int, value: UInt64) {
        guard !isRemoved, inWindow(bar: bar, offset: offset, width: width) else { return }
        device.mmioWrite(bar: bar, offset: offset, width: width, value: value)
        echoWrite()
    }

    public func portRead(bar: Int, port: UInt32) -> UInt8 {
        guard !isRemoved, bar >= 0, bar < device.bars.count, case .ports(let count) = device.bars[bar], port < count else { return 0xFF }
        return device.portRead(bar: bar, port: port)
    }

    public func portWrite(bar: Int, port: UInt32, value: UInt8) {
        guard !isRemoved, bar >= 0, bar < device.bars.count, case .ports(let count) = device.bars[bar], port < count else { return }
        device.portWrite(bar: bar, port: port, value: value)
        echoWrite()
    }

    private func inWindow(bar: Int, offset: UInt64, width: Int) -> Bool {
        guard bar >= 0, bar < device.bars.count, case .mmio(let size) = device.bars[bar] else { return false }
        return [1, 2, 4, 8].contains(width) && offset % UInt64(width) == 0 && offset <= size && UInt64(width) <= size - offset
    }

    func markRemoved() {
        removedFlag.store(true, ordering: .releasing)
        port.markRemoved()
    }
}

/// The platform bus. Devices are plugged in before or after boot; surprise
/// removal pulls one out at any time and tells whoever listens.
public final class Bus: Sendable {
    public typealias RemovalObserver = @Sendable (BusSlot) -> Void

    private struct State {
        var slots: [BusSlot] = []
        var observers: [RemovalObserver] = []
        var nextSlot: UInt8 = 1
    }

    private let state = Mutex(State())
    private let iommu: IOMMU
    private let interrupts: InterruptController

    init(iommu: IOMMU, interrupts: InterruptController) {
        self.iommu = iommu
        self.interrupts = interrupts
    }

    /// The IOMMU domain used for a device address.
    public static func domain(of address: BusAddress) -> IOMMU.DomainID {
        Int(address.bus) << 16 | Int(address.slot) << 8 | Int(address.function)
    }

    /// Plugs a device into the next free slot and powers it on.
    @discardableResult
    public func plug(_ device: any BusDevice) -> BusSlot {
        let vectors = interrupts.allocate(count: device.interruptCount)
        let slot = state.withLock { s -> BusSlot in
            let address = BusAddress(slot: s.nextSlot)
            s.nextSlot += 1
            let port = DevicePort(address: address, deviceName: device.name, iommu: iommu, interrupts: interrupts, vectors: vectors)
            let slot = BusSlot(address: address, device: device, vectors: vectors, port: port)
            s.slots.append(slot)
            return slot
        }
        device.powerOn(slot.port)
        return slot
    }

    /// Devices present on the bus, in address order.
    public func enumerate() -> [BusSlot] {
        state.withLock { $0.slots.filter { !$0.isRemoved }.sorted { $0.address < $1.address } }
    }

    public func onSurpriseRemoval(_ observer: @escaping RemovalObserver) {
        state.withLock { $0.observers.append(observer) }
    }

    /// Stops the device (no DMA or interrupt from it after the stop) and
    /// starts it again, as the OS does before it restarts a failed driver.
    /// Its registers keep their values: the driver's attach resets the
    /// controller, as every reference driver's does.
    public func restart(_ slot: BusSlot) {
        guard !slot.isRemoved else { return }
        slot.device.powerOff()
        slot.device.powerOn(slot.port)
    }

    /// Pulls the device out: it stops, its registers read all ones, its DMA
    /// mappings vanish, and observers (the OS) are told, unless
    /// `tellingObservers` is false (the conformance suite tells the driver
    /// itself, and calls it between its remove and its detach).
    public func surpriseRemove(_ slot: BusSlot, tellingObservers: Bool = true) {
        slot.markRemoved()
        slot.device.powerOff()
        iommu.resetDomain(Self.domain(of: slot.address))
        guard tellingObservers else { return }
        let observers = state.withLock { $0.observers }
        for observer in observers { observer(slot) }
    }

    func powerOffAll() {
        for slot in state.withLock({ $0.slots }) where !slot.isRemoved {
            slot.device.powerOff()
        }
    }
}
