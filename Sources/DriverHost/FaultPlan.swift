import COyakoSDK
import Synchronization

/// Host-side fault injection for one loaded driver, used by the conformance
/// suite: make the Nth allocation fail, or every DMA allocation.
/// "Allocations" are every host service that creates something: mem_alloc,
/// dma_alloc, lock/event/work/timer creation.
@_spi(Conformance) public final class FaultPlan: Sendable {
    private struct State {
        var count = 0
        var failAt: Int?
        var failDMA = false
    }

    private let state = Mutex(State())

    public init() {}

    /// The Nth allocation from now (1-based) fails; nil: none fails.
    @_spi(Conformance) public func failAllocation(number: Int?) {
        state.withLock {
            $0.count = 0
            $0.failAt = number
        }
    }

    @_spi(Conformance) public func failDMAAllocations(_ on: Bool) {
        state.withLock { $0.failDMA = on }
    }

    /// Allocations made since the last `failAllocation(number:)`.
    @_spi(Conformance) public var allocations: Int { state.withLock { $0.count } }

    /// Counts an allocation; true when it must fail.
    func shouldFail(dma: Bool = false) -> Bool {
        state.withLock { s in
            s.count += 1
            return s.count == s.failAt || (dma && s.failDMA)
        }
    }
}

/// The driver table exactly as the driver gave it, for calls the host
/// itself never makes out of order: the conformance suite uses this to call
/// detach twice, pass NULL, probe foreign devices, and so on. Every call
/// runs in [passive] context under the driver's name.
@_spi(Conformance) public struct RawDriverCalls: @unchecked Sendable {
    // @unchecked Sendable: a view of static driver tables and pointers the
    // host already holds.
    let library: DriverLibrary

    @_spi(Conformance) public var hasRemove: Bool { library.driver.pointee.remove != nil }

    @_spi(Conformance) public func probe(_ info: HostDeviceInfo?, structSize: UInt32? = nil) -> OyStatus {
        let context = library.driverContext
        guard let info else { return library.callDriver("probe") { OyStatus(library.driver.pointee.probe(context, nil)) } }
        var c = HostServices.deviceInfo(info)
        if let structSize { c.struct_size = structSize }
        return library.callDriver("probe") { OyStatus(library.driver.pointee.probe(context, &c)) }
    }

    /// attach with a NULL device (and out pointer).
    @_spi(Conformance) public func attachWithoutDevice() -> OyStatus {
        let context = library.driverContext
        var out: UnsafeMutableRawPointer?
        return library.callDriver("attach") { OyStatus(library.driver.pointee.attach(context, nil, &out)) }
    }

    @_spi(Conformance) public func detach(_ instance: UnsafeMutableRawPointer?) -> OyStatus {
        library.callDriver("detach") { OyStatus(library.driver.pointee.detach(instance)) }
    }

    @_spi(Conformance) public func remove(_ instance: UnsafeMutableRawPointer?) {
        guard let remove = library.driver.pointee.remove else { return }
        library.callDriver("remove") { remove(instance) }
    }

    @_spi(Conformance) public func deinitialize(_ context: UnsafeMutableRawPointer?) {
        library.callDriver("deinit") { library.driver.pointee.deinit(context) }
    }

    /// get_extension(instance, id), with `id` as raw bytes (NUL added).
    @_spi(Conformance) public func getExtension(_ instance: UnsafeMutableRawPointer?, _ id: [UInt8]) -> UnsafeRawPointer? {
        guard let lookup = library.driver.pointee.get_extension else { return nil }
        let bytes = id.map { CChar(bitPattern: $0) } + [0]
        return library.callDriver("get_extension") { bytes.withUnsafeBufferPointer { lookup(instance, $0.baseAddress) } }
    }

    @_spi(Conformance) public var hasGetExtension: Bool { library.driver.pointee.get_extension != nil }

    /// Calls the driver's entry again with a host range.
    @_spi(Conformance) public func negotiate(host: ClosedRange<UInt32>) -> DriverLibrary.Negotiation? {
        guard let entry = library.entry else { return nil }
        return DriverLibrary.negotiate(entry, host: host)
    }
}

extension DriverLibrary {
    @_spi(Conformance) public var raw: RawDriverCalls { RawDriverCalls(library: self) }
}

extension DriverInstance {
    /// The instance pointer the driver returned from attach (for raw calls).
    @_spi(Conformance) public var rawInstance: UnsafeMutableRawPointer? { instance }

    /// Marks the instance detached without calling the driver (after a raw
    /// detach), reclaiming what the driver still held.
    @discardableResult
    @_spi(Conformance) public func forgetAfterRawDetach() -> [String] {
        let leaked = binding.owner.reclaimAll()
        binding.retire()
        library.forget(self)
        return leaked
    }
}

extension DriverInstance {
    /// Runs `body` with the driver's real host table, this instance's device
    /// handle and a register window of BAR `bar` mapped through the table
    /// (for benchmarks of host services).
    @_spi(Conformance) public func withHostServices<R>(bar: UInt32 = 0, _ body: (UnsafePointer<oy_host>, OpaquePointer?, OpaquePointer?) -> R) -> R {
        let host = UnsafePointer(library.hostTable)
        var regs: OpaquePointer?
        var size: UInt64 = 0
        _ = host.pointee.regs_map(binding.handle, bar, &regs, &size)
        defer { if regs != nil { host.pointee.regs_unmap(regs) } }
        return body(host, binding.handle, regs)
    }
}
