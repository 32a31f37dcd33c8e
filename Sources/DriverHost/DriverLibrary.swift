/// The driver host's API speaks the file module's types (DriverFile,
/// DriverMetadata, OyStatus, DriverLoadError): importers of DriverHost get them.
@_exported import DriverFile
import COyakoSDK
import CSystemShims
import Foundation
import Logging
import Synchronization

/// A driver file loaded into this process: negotiated, initialised, ready to
/// probe and attach devices.
///
/// Lifecycle: `load` (dlopen, entry, negotiate, validate, init) -> `attach`
/// any number of devices -> detach them -> `unload` (deinit, dlclose). The
/// host enforces this order; the driver never sees a call out of order.
public final class DriverLibrary: @unchecked Sendable {
    // @unchecked Sendable: immutable after load except `context`, `instances`
    // and `violations`, which are guarded by `lock`.

    /// ABI versions this host speaks.
    public static let hostABI: ClosedRange<UInt32> = OY_ABI_VERSION_1...OY_ABI_VERSION_CURRENT

    public let path: String
    /// The file the dynamic loader actually mapped (found with dladdr on the
    /// entry symbol), and its SHA-256: what really ran.
    public let mappedPath: String
    public let sha256: String
    public let image: ELFImage
    public let metadata: DriverMetadata
    public let abiVersion: UInt32
    public let environment: any HostEnvironment

    let driver: UnsafePointer<oy_driver>
    let entry: oy_driver_entry_fn?
    let hostTable: UnsafeMutablePointer<oy_host>
    /// Host-side fault injection for this driver (conformance suite).
    @_spi(Conformance) public let faults = FaultPlan()
    let globalOwner: ResourceOwner
    private let dl: DynamicLibrary
    private let lock = NSLock()
    private var context: UnsafeMutableRawPointer?
    private var instances: [ObjectIdentifier: DriverInstance] = [:]
    private var violationLog: [String] = []
    /// How fast its log lines are let through (`host->log`).
    let logBudget = Mutex(LogBudget())
    /// The mem_alloc blocks it holds, all its devices together: at most
    /// `memoryLimit`, in process as in a driver host (where the process's
    /// RLIMIT_DATA of the same size also holds).
    public let memory = MemoryBudget(limit: DriverLibrary.memoryLimit)
    /// What a driver may hold in mem_alloc blocks.
    public static let memoryLimit = 1 << 30
    private var unloaded = false
    let logger: Logger
    /// Calls into the driver's class operations (submit, transmit, read,
    /// write, ...) that have not returned yet. A submit may still be on its
    /// way out of the driver after its request completed and the OS moved
    /// on to detach: the code and the host table stay until it is back.
    private let callsOut = Atomic<Int>(0)
    /// How long `unload` waits for those before it leaves the code mapped.
    static let callReturnWait: Duration = .seconds(10)

    /// The name the driver gives itself.
    public var name: String { metadata.name }

    // MARK: Loading

    /// Loads, negotiates and initialises the driver at `path`.
    ///
    /// - Throws: `DriverLoadError` naming what is wrong with the file and
    ///   what to do about it. Nothing stays loaded after a failure.
    public static func load(path: String, environment: any HostEnvironment, hostABI: ClosedRange<UInt32> = hostABI)
        throws(DriverLoadError) -> DriverLibrary
    {
        try load(file: try DriverFile.inspect(path: path), environment: environment, hostABI: hostABI)
    }

    /// Loads a file already inspected (its metadata and hash are reused).
    public static func load(file inspection: DriverFile, environment: any HostEnvironment, hostABI: ClosedRange<UInt32> = hostABI)
        throws(DriverLoadError) -> DriverLibrary
    {
        let path = inspection.path
        let opened = try DynamicLibrary.openDriver(inspection)
        let (dl, mapped) = (opened.library, opened.mappedPath)
        let negotiation = negotiate(opened.entry, host: hostABI)
        guard negotiation.status.isOK, let table = negotiation.driver else {
            dl.close()
            if negotiation.status == .incompatible {
                throw .incompatible(path: path, driver: negotiation.driverRange, host: hostABI)
            }
            if negotiation.status.isOK {
                throw .malformedDriverTable(path: path, problem: .missing)
            }
            throw .entryFailed(path: path, status: negotiation.status)
        }
        guard hostABI.contains(negotiation.version),
            negotiation.driverRange.contains(negotiation.version)
        else {
            dl.close()
            throw .malformedDriverTable(path: path, problem: .versionOutsideCommonRange(chosen: negotiation.version, host: hostABI, driver: negotiation.driverRange))
        }
        if let problem = validate(table, metadata: inspection.metadata) {
            dl.close()
            throw .malformedDriverTable(path: path, problem: problem)
        }

        let library = DriverLibrary(
            path: path, mappedPath: mapped,
            sha256: inspection.sha256,  // openDriver proved the mapped object is this file
            image: inspection.image, metadata: inspection.metadata, abiVersion: negotiation.version,
            environment: environment, driver: table, entry: opened.entry, dl: dl)
        var context: UnsafeMutableRawPointer?
        let status = library.callDriver("init") { OyStatus(table.pointee.`init`(library.hostTable, &context)) }
        guard status.isOK else {
            library.globalOwner.reclaimAll()
            library.teardownHostTable()
            dl.close()
            throw .initFailed(path: path, status: status)
        }
        library.context = context
        return library
    }

    private init(path: String, mappedPath: String, sha256: String, image: ELFImage, metadata: DriverMetadata,
                 abiVersion: UInt32, environment: any HostEnvironment, driver: UnsafePointer<oy_driver>, entry: oy_driver_entry_fn?,
                 dl: DynamicLibrary)
    {
        self.entry = entry
        self.path = path
        self.mappedPath = mappedPath
        self.sha256 = sha256
        self.image = image
        self.metadata = metadata
        self.abiVersion = abiVersion
        self.environment = environment
        self.driver = driver
        self.dl = dl
        self.globalOwner = ResourceOwner(label: "\(metadata.name) (driver-wide)")
        defer { globalOwner.library = self }
        self.logger = Logger(label: "oyako.driver.\(metadata.name)")
        self.hostTable = HostServices.makeTable(abiVersion: abiVersion)
        HostServices.register(self, table: hostTable)
    }

    /// Result of calling a driver's entry with a host range.
    public struct Negotiation: Sendable {
        public let status: OyStatus
        public let version: UInt32
        public let driverRange: ClosedRange<UInt32>
        nonisolated(unsafe) let driver: UnsafePointer<oy_driver>?
    }

    /// Calls `entry` with the host range, as the loader does. Public so the
    /// conformance suite can probe ranges above, inside and below.
    public static func negotiate(_ entry: oy_driver_entry_fn, host: ClosedRange<UInt32>) -> Negotiation {
        var args = oy_entry_args()
        args.struct_size = UInt32(MemoryLayout<oy_entry_args>.size)
        args.host_abi_min = host.lowerBound
        args.host_abi_max = host.upperBound
        let status = OyStatus(entry(&args))
        let low = args.driver_abi_min, high = args.driver_abi_max
        return Negotiation(status: status, version: args.abi_version, driverRange: low <= high ? low...high : high...low, driver: args.driver)
    }

    /// Checks the driver table the entry returned; nil when it is sound.
    static func validate(_ table: UnsafePointer<oy_driver>, metadata: DriverMetadata) -> DriverTableProblem? {
        let t = table.pointee
        guard t.struct_size >= UInt32(MemoryLayout<oy_driver>.size) else {
            return .tooSmall(structSize: t.struct_size, required: MemoryLayout<oy_driver>.size)
        }
        let missing = [("meta", t.meta == nil), ("init", t.`init` == nil), ("deinit", t.deinit == nil),
                       ("probe", t.probe == nil), ("attach", t.attach == nil), ("detach", t.detach == nil)]
            .filter(\.1).map(\.0)
        guard missing.isEmpty else { return .nullCallbacks(missing) }
        let bytes = [UInt8](UnsafeRawBufferPointer(start: t.meta, count: MemoryLayout<oy_driver_meta>.size))
        guard bytes == metadata.bytes else { return .metadataMismatch }
        return nil
    }

    // MARK: Devices

    /// Asks the driver whether it drives `device`. Does not touch hardware.
    public func probe(_ device: any HostDevice) -> OyStatus {
        // Borrowed for the call only: revoked when probe returns.
        BorrowedPool.lend(HostServices.deviceInfo(device.info)) { info in
            callDriver("probe") { OyStatus(driver.pointee.probe(context, info)) }
        }
    }

    /// Attaches the driver to `device`. On failure the host reclaims whatever
    /// the driver's failure path left behind and reports it.
    public func attach(_ device: any HostDevice) throws(AttachError) -> DriverInstance {
        let binding = DeviceBinding(library: self, device: device)
        var instance: UnsafeMutableRawPointer?
        let status = callDriver("attach") { OyStatus(driver.pointee.attach(context, binding.handle, &instance)) }
        guard status.isOK else {
            let leaked = binding.owner.reclaimAll()
            binding.retire()
            throw AttachError(driver: name, device: device.info.location, status: status, leaked: leaked)
        }
        let attached = DriverInstance(library: self, binding: binding, instance: instance)
        lock.withLock { instances[ObjectIdentifier(attached)] = attached }
        return attached
    }

    func forget(_ instance: DriverInstance) {
        lock.withLock { _ = instances.removeValue(forKey: ObjectIdentifier(instance)) }
    }

    public var attachedInstances: [DriverInstance] { lock.withLock { Array(instances.values) } }

    // MARK: Unloading

    /// What unloading found.
    public struct UnloadReport: Sendable {
        /// Driver-wide resources deinit did not release (reclaimed by the host).
        public let leaked: [String]
    }

    /// Detaches what is still attached, calls deinit, verifies driver-wide
    /// resources were released, and closes the file.
    @discardableResult
    public func unload() -> UnloadReport {
        let remaining: [DriverInstance] = lock.withLock {
            guard !unloaded else { return [] }
            unloaded = true
            return Array(instances.values)
        }
        for instance in remaining { instance.detach() }
        callDriver("deinit") { driver.pointee.deinit(context) }
        let leaked = globalOwner.reclaimAll()
        for item in leaked { recordViolation("deinit left a driver-wide resource behind: \(item)") }
        guard callsReturned(within: Self.callReturnWait) else {
            // Unmapping code a thread still runs would crash the OS; a
            // mapping kept is only memory.
            let running = callsOut.load(ordering: .sequentiallyConsistent)
            recordViolation("\(running) call(s) into the driver had not returned \(Int(Self.callReturnWait / .seconds(1))) s after deinit; its code stays mapped", inCallback: false)
            return UnloadReport(leaked: leaked)
        }
        teardownHostTable()
        dl.close()
        return UnloadReport(leaked: leaked)
    }

    /// Runs `body`, a call into one of the driver's class operations,
    /// counted so that `unload` waits for it to return. Count before
    /// checking that the class object is still registered: then a call
    /// that saw it registered is one `unload` waits for. [any-thread]
    func counted<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        callsOut.add(1, ordering: .sequentiallyConsistent)
        defer { callsOut.subtract(1, ordering: .sequentiallyConsistent) }
        return try body()
    }

    private func callsReturned(within wait: Duration) -> Bool {
        let deadline = ContinuousClock.now + wait
        while callsOut.load(ordering: .sequentiallyConsistent) > 0 {
            guard ContinuousClock.now < deadline else { return false }
            usleep(1000)
        }
        return true
    }

    private func teardownHostTable() {
        HostServices.unregister(table: hostTable)
    }

    // MARK: Context and violations

    /// Runs a driver callback in [passive] context, naming it for reports
    /// (hang reports, the callback a violation happened in).
    /// `keepingContext`: an [any-thread] operation (a submit, a transmit)
    /// runs in the context of its caller, which may be an interrupt
    /// handler's completion handing on the next request.
    func callDriver<R>(_ callback: StaticString, keepingContext: Bool = false, _ body: () -> R) -> R {
        let previous = oy_shim_context()
        let previousName = oy_shim_context_callback()
        let previousOwner = oy_shim_context_owner()
        // StaticString storage is static and NUL-terminated, so the pointer outlives the call.
        oy_shim_set_context(keepingContext ? previous : 0, UnsafeRawPointer(callback.utf8Start).assumingMemoryBound(to: CChar.self))
        oy_shim_set_context_owner(Unmanaged.passUnretained(self).toOpaque())
        defer {
            oy_shim_set_context(previous, previousName)
            oy_shim_set_context_owner(previousOwner)
        }
        return body()
    }

    /// A rule of the ABI the driver broke (a service from the wrong context,
    /// a stale handle, a request completed twice). Logged and kept.
    /// `inCallback` false: found later than it happened (the callback
    /// running now is not the one that broke the rule).
    func recordViolation(_ message: String, inCallback: Bool = true) {
        lock.withLock {
            violationLog.append(message)
            if violationLog.count > 256 { violationLog.removeFirst() }
        }
        let callback = inCallback ? oy_shim_context_callback().map { String(cString: $0) } : nil
        ViolationLog.record(.init(driver: name, callback: callback, message: message))
        logger.warning("ABI violation by \(name): \(message)\(callback.map { " (in \($0))" } ?? "")")
    }

    /// A soft limit crossed, short of a violation (a callback slower than
    /// it should be, memory refused at its limit): kept for the conformance
    /// suite's verdict, logged.
    func recordWarning(_ message: String, severity: ViolationLog.Severity = .warning) {
        ViolationLog.record(.init(severity: severity, driver: name, callback: oy_shim_context_callback().map { String(cString: $0) }, message: message))
        logger.warning("\(name): \(message)")
    }

    /// ABI violations seen so far, oldest first.
    public var violations: [String] { lock.withLock { violationLog } }

    var driverContext: UnsafeMutableRawPointer? { lock.withLock { context } }
}

