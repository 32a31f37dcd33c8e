/// What the driver host needs from the OS it runs in. The Kernel implements
/// it once; the platform underneath (bare machine or root partition) decides
/// what addresses and interrupts really are. Drivers never see the difference.
public protocol HostEnvironment: AnyObject, Sendable {
    /// "bare" or "root": for logs and reports.
    var name: String { get }
    /// A line a driver logged.
    func log(level: LogLevel, driver: String, device: String?, message: String)
    /// A driver registered a class object for `device` (a `RegisteredDisk`,
    /// `RegisteredNetdev`, `RegisteredSerialPort`, `RegisteredRNG`; its
    /// `deviceClass` says which). Throw to refuse it (the driver gets the code).
    func registered(_ registration: ClassRegistration, device: any HostDevice) throws(OyStatus)
    /// The object is going away: use it no more.
    func unregistered(_ registration: ClassRegistration)
}

public enum LogLevel: Int32, Sendable, Comparable, CustomStringConvertible {
    case error = 0, warning = 1, info = 2, debug = 3

    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue < b.rawValue }
    public var description: String { ["error", "warning", "info", "debug"][Int(rawValue)] }
}

public enum BARKind: Sendable, Equatable {
    case none
    case mmio(size: UInt64)
    case ports(count: UInt32)

    /// The register window's size, when this is one.
    public var mmioSize: UInt64? {
        if case .mmio(let size) = self { size } else { nil }
    }

    /// The number of ports, when this is a port range.
    public var portCount: UInt32? {
        if case .ports(let count) = self { count } else { nil }
    }
}

/// A device as the OS offers it to a driver.
public struct HostDeviceInfo: Sendable, Equatable {
    public var vendorID: UInt16
    public var deviceID: UInt16
    public var classCode: UInt32
    public var revision: UInt8
    public var bars: [BARKind]
    public var interruptCount: Int
    public var location: String

    public init(vendorID: UInt16, deviceID: UInt16, classCode: UInt32, revision: UInt8, bars: [BARKind], interruptCount: Int, location: String) {
        self.vendorID = vendorID
        self.deviceID = deviceID
        self.classCode = classCode
        self.revision = revision
        self.bars = bars
        self.interruptCount = interruptCount
        self.location = location
    }
}

public enum DMADirection: UInt32, Sendable {
    case toDevice = 1, fromDevice = 2, bidirectional = 3
}

/// Memory both the CPU and a device can reach.
public struct DMARegion: Sendable, Equatable {
    /// Where the CPU finds it. Sendable: a plain address into machine memory.
    public nonisolated(unsafe) let cpu: UnsafeMutableRawPointer
    /// Where the device finds it (after the IOMMU).
    public let deviceAddress: UInt64
    public let length: Int

    public init(cpu: UnsafeMutableRawPointer, deviceAddress: UInt64, length: Int) {
        self.cpu = cpu
        self.deviceAddress = deviceAddress
        self.length = length
    }
}

/// One device, as the environment lets a driver reach it: config space,
/// registers, ports, DMA and interrupts. Each call is checked by the
/// environment; a bad argument is an error, never a crash.
public protocol HostDevice: AnyObject, Sendable {
    var info: HostDeviceInfo { get }
    func configRead(offset: UInt32, width: Int) throws(OyStatus) -> UInt32
    func configWrite(offset: UInt32, width: Int, value: UInt32) throws(OyStatus)
    func mmioRead(bar: Int, offset: UInt64, width: Int) -> UInt64
    func mmioWrite(bar: Int, offset: UInt64, width: Int, value: UInt64)
    func portRead(bar: Int, port: UInt32) -> UInt8
    func portWrite(bar: Int, port: UInt32, value: UInt8)
    /// Zeroed, contiguous, page-aligned memory mapped for the device.
    func dmaAllocate(size: Int) throws(OyStatus) -> DMARegion
    func dmaFree(_ region: DMARegion)
    /// Makes host memory the OS handed out reachable by the device.
    func dmaMap(_ pointer: UnsafeMutableRawPointer, length: Int, direction: DMADirection) throws(OyStatus) -> DMARegion
    func dmaUnmap(_ region: DMARegion)
    /// Routes vector `index` to `handler`, called on the interrupt thread.
    func hookInterrupt(index: Int, handler: @escaping @Sendable () -> Void) throws(OyStatus)
    /// Removes the handler; returns once a running handler has returned.
    func unhookInterrupt(index: Int)
    func maskInterrupt(index: Int)
    func unmaskInterrupt(index: Int)
}
