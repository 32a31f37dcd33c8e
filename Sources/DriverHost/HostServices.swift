import COyakoSDK
import CSystemShims
import Foundation
import Logging
import Synchronization

// The resources behind the handles the host table hands out.

/// A BAR a driver claimed: a register window or a port range.
class ClaimedBAR: Resource, @unchecked Sendable {
    let binding: DeviceBinding
    let bar: Int
    /// Whether an access outside the BAR was reported already.
    private let strayReported = Atomic<Bool>(false)

    init(binding: DeviceBinding, bar: Int, kind: String, extent: String) {
        self.binding = binding
        self.bar = bar
        super.init(kind: kind, detail: "BAR \(bar), \(extent)", owner: binding.owner)
    }

    /// An access the SDK forbids (outside the BAR, or a register offset not
    /// naturally aligned): an ABI violation, because on a real bus it reaches
    /// no register of this device, or another device's. The access itself
    /// is not made. Reported once per claim: a polling loop would repeat it
    /// for every turn.
    func reportStray(_ problem: @autoclosure () -> String) {
        guard !strayReported.exchange(true, ordering: .relaxed) else { return }
        binding.library.recordViolation(problem() + "; later ones of this claim are not reported")
    }
}

final class RegisterWindow: ClaimedBAR, @unchecked Sendable {
    let size: UInt64
    init(binding: DeviceBinding, bar: Int, size: UInt64) {
        self.size = size
        super.init(binding: binding, bar: bar, kind: "register window", extent: "\(size) bytes")
    }

    /// Whether `service` may make a `width`-byte access at `offset`:
    /// naturally aligned and inside the window. If not, it is reported.
    func admits(_ offset: UInt64, width: Int, service: String) -> Bool {
        let at = "\(service) at offset 0x\(String(offset, radix: 16))"
        if offset >= size || UInt64(width) > size - offset {
            reportStray("\(at), outside the \(size)-byte register window of BAR \(bar)")
            return false
        }
        if offset % UInt64(width) != 0 {
            reportStray("\(at), not aligned to \(width) bytes: register offsets must be naturally aligned")
            return false
        }
        return true
    }
}

final class PortRange: ClaimedBAR, @unchecked Sendable {
    let count: UInt32
    init(binding: DeviceBinding, bar: Int, count: UInt32) {
        self.count = count
        super.init(binding: binding, bar: bar, kind: "port range", extent: "\(count) ports")
    }

    /// Whether `service` may use `port`: inside the range. If not, it is reported.
    func admits(_ port: UInt32, service: String) -> Bool {
        if port < count { return true }
        reportStray("\(service) on port \(port), outside the \(count)-port range of BAR \(bar)")
        return false
    }
}

final class DMABuffer: Resource, @unchecked Sendable {
    let binding: DeviceBinding
    let region: DMARegion
    init(binding: DeviceBinding, region: DMARegion, kind: String) {
        self.binding = binding
        self.region = region
        super.init(kind: kind, detail: "\(region.length) bytes at device address 0x\(String(region.deviceAddress, radix: 16))", owner: binding.owner)
    }
    override func reclaim() {
        // IOMMU and page-table work: the OS's time, not the calling driver's.
        CallbackBudget.inOS {
            if kind == "DMA buffer" { binding.device.dmaFree(region) } else { binding.device.dmaUnmap(region) }
        }
    }
}

final class InterruptHook: Resource, @unchecked Sendable {
    let binding: DeviceBinding
    let index: Int
    init(binding: DeviceBinding, index: Int) {
        self.binding = binding
        self.index = index
        super.init(kind: "interrupt hook", detail: "vector \(index)", owner: binding.owner)
    }
    private let unhooked = Atomic(false)

    /// Takes the vector's handler away and waits for a running one to
    /// return; once, however many ask.
    func unhook() {
        if !unhooked.exchange(true, ordering: .acquiringAndReleasing) { binding.device.unhookInterrupt(index: index) }
    }

    override func reclaim() {
        unhook()
        binding.releaseVector(index)
    }
}

final class ScheduledItem: Resource, @unchecked Sendable {
    let item: Scheduler.Item
    init(item: Scheduler.Item, kind: String, owner: ResourceOwner) {
        self.item = item
        super.init(kind: kind, detail: "", owner: owner)
    }
    /// Cancels the item for good and waits for a run in progress.
    func retire() {
        do {
            try Scheduler.shared.retire(item)
        } catch {
            // Waiting would deadlock; the item is cancelled and its current
            // run is its last.
            owner.library?.recordViolation("\(kind) destroyed from its own callback, which cannot wait for itself to return; destroy it from another [passive] context")
        }
    }

    override func reclaim() { retire() }
}

/// A driver's lock: its mutex lives in `LockTable`, which `lock_acquire`
/// and `lock_release` reach without this object; this is what the owner
/// tracks, so a lock left at detach is found and destroyed.
final class HostLock: Resource, @unchecked Sendable {
    let lockHandle: OpaquePointer

    init(handle: OpaquePointer, owner: ResourceOwner) {
        lockHandle = handle
        super.init(kind: "lock", detail: "", owner: owner)
    }

    /// Reclaimed at detach (the driver did not destroy it).
    override func reclaim() {
        HostServices.locks.withLock { _ = $0.removeValue(forKey: UInt(bitPattern: lockHandle)) }
        _ = LockTable.shared.destroy(lockHandle)
    }
}

final class HostEvent: Resource, @unchecked Sendable {
    // `signalled` is guarded by `condition`.
    let condition = NSCondition()
    var signalled = false
    init(owner: ResourceOwner) { super.init(kind: "event", detail: "", owner: owner) }
}

final class MemoryAllocation: Resource, @unchecked Sendable {
    /// Bytes of red zone on each side of every block, filled with `guardByte`
    /// and checked when the block is freed or reclaimed at detach: a driver
    /// that wrote past either end of what it asked for is caught then.
    static let redZone = 32
    static let guardByte: UInt8 = 0xFD

    /// What the driver got (inside the red zones).
    let pointer: UnsafeMutableRawPointer
    let size: Int
    private let base: UnsafeMutableRawPointer

    /// A zeroed block of `size` bytes between red zones; nil when out of memory.
    /// The largest block one mem_alloc gives (a larger request is out of
    /// memory, as kmalloc's has a largest size): zeroing it touches every page.
    static let maxSize = 1 << 30

    /// Where the block's size is given back when it is freed.
    private let budget: MemoryBudget

    init?(size: Int, owner: ResourceOwner, budget: MemoryBudget) {
        var base: UnsafeMutableRawPointer?
        guard size > 0, size <= Self.maxSize, posix_memalign(&base, 16, size + 2 * Self.redZone) == 0, let base else { return nil }
        self.budget = budget
        memset(base, Int32(Self.guardByte), Self.redZone)
        memset(base + Self.redZone, 0, size)
        memset(base + Self.redZone + size, Int32(Self.guardByte), Self.redZone)
        self.base = base
        self.pointer = base + Self.redZone
        self.size = size
        super.init(kind: "memory", detail: "\(size) bytes", owner: owner)
    }

    override func reclaim() {
        checkRedZones()
        free(base)
        budget.give(size)
    }

    private func checkRedZones() {
        let before = UnsafeRawBufferPointer(start: base, count: Self.redZone)
        let after = UnsafeRawBufferPointer(start: pointer + size, count: Self.redZone)
        let overrun = after.lastIndex { $0 != Self.guardByte }.map { $0 + 1 }
        let underrun = before.firstIndex { $0 != Self.guardByte }.map { Self.redZone - $0 }
        guard overrun != nil || underrun != nil else { return }
        let what = [overrun.map { "\($0) byte\($0 == 1 ? "" : "s") past its end" }, underrun.map { "\($0) byte\($0 == 1 ? "" : "s") before its start" }]
            .compactMap { $0 }.joined(separator: " and ")
        owner.library?.recordViolation("a \(size)-byte mem_alloc block was written \(what) (heap overflow, found by its red zones when it was freed)",
                                       inCallback: false)
    }
}

/// The C host-services table, built from non-capturing `@convention(c)`
/// closures. Every handle is checked; every [passive] service refuses to run
/// in [interrupt] context; every violation is reported with the service named.
enum HostServices {
    private static let logger = Logger(label: "oyako.host")
    /// Live host tables and the library each belongs to.
    private static let tables = Mutex<[UInt: DriverLibrary]>([:])
    /// Live locks by handle.
    static let locks = Mutex<[UInt: HostLock]>([:])
    /// mem_alloc pointers and their allocation records.
    private static let allocations = Mutex<[UInt: MemoryAllocation]>([:])
    private static let unattributedCount = Atomic<Int>(0)

    static func register(_ library: DriverLibrary, table: UnsafeMutablePointer<oy_host>) {
        tables.withLock { $0[UInt(bitPattern: table)] = library }
    }

    static func unregister(table: UnsafeMutablePointer<oy_host>) {
        tables.withLock { _ = $0.removeValue(forKey: UInt(bitPattern: table)) }
    }

    static func library(_ host: UnsafePointer<oy_host>?, service: String) -> DriverLibrary? {
        guard let host else {
            unattributed("\(service) called with a NULL host table")
            return nil
        }
        guard let library = tables.withLock({ $0[UInt(bitPattern: host)] }) else {
            unattributed("\(service) called with a host table that is not live (after deinit, or forged)")
            return nil
        }
        return library
    }

    static func binding(_ device: OpaquePointer?, service: String) -> DeviceBinding? {
        guard let binding = HandleTable.shared.lookup(device, as: DeviceBinding.self) else {
            unattributed("\(service) called with \(device == nil ? "a NULL" : "an invalid (stale or forged)") oy_device handle")
            return nil
        }
        return binding
    }

    static func resource<T: Resource>(_ handle: OpaquePointer?, _ type: T.Type, service: String) -> T? {
        guard let resource = HandleTable.shared.lookup(handle, as: type), isCallers(resource.owner) else {
            unattributed("\(service) called with an invalid or released handle")
            return nil
        }
        return resource
    }

    /// Whether `owner`'s resources are the calling driver's, the one whose
    /// callback this thread runs. Handles live in one table for every
    /// driver: another driver's (a guess, a stale value that a new resource
    /// reused) is refused like a forged one, so no driver arms another's
    /// timer or takes its lock. True when no driver's callback runs or the
    /// owner is not yet bound to its driver (during init).
    @inline(__always)
    static func isCallers(_ owner: ResourceOwner) -> Bool {
        guard let caller = oy_shim_context_owner(), owner.libraryKey != 0 else { return true }
        return owner.libraryKey == UInt(bitPattern: caller)
    }

    /// The calling driver as `ResourceOwner.libraryKey` has it (0: none).
    static var callerKey: UInt { UInt(bitPattern: oy_shim_context_owner()) }

    /// A violation that cannot be pinned on one driver from its arguments.
    static func unattributed(_ message: String) {
        // Inside one of its callbacks, the driver is known even when the
        // handle it passed leads nowhere.
        if let owner = oy_shim_context_owner() {
            Unmanaged<DriverLibrary>.fromOpaque(owner).takeUnretainedValue().recordViolation(message)
            return
        }
        unattributedCount.add(1, ordering: .relaxed)
        let callback = oy_shim_context_callback().map { String(cString: $0) }
        ViolationLog.record(.init(driver: nil, callback: callback, message: message))
        logger.warning("ABI violation: \(message)\(callback.map { " (during \($0))" } ?? "")")
    }

    /// lock_acquire of a lock the calling thread holds: driver locks are not
    /// recursive, so the thread waits for itself. Said, then done as said:
    /// the thread never returns (the driver's other threads go on; a
    /// supervisor or the suite's watchdog ends it).
    static func waitForEver() -> Never {
        unattributed(ViolationLog.lockTakenTwice + ": driver locks are not recursive, so the thread waits for itself for ever; "
            + "release a lock before a call into the OS that may come back into the driver on the same thread (complete(), receive())")
        while true { _ = sleep(3600) }
    }

    /// Violations that could not be attributed to a driver, since start.
    static var unattributedViolations: Int { unattributedCount.load(ordering: .relaxed) }

    static var inInterrupt: Bool { oy_shim_context() == 1 }

    /// What reports name the [interrupt] context by (static storage, NUL-terminated).
    static var interruptHandlerName: UnsafePointer<CChar> {
        UnsafeRawPointer(("interrupt handler" as StaticString).utf8Start).assumingMemoryBound(to: CChar.self)
    }

    /// False (and a recorded violation) when a [passive] service is called
    /// from an interrupt handler.
    static func requirePassive(_ service: String, _ library: DriverLibrary) -> Bool {
        guard inInterrupt else { return true }
        let callback = oy_shim_context_callback().map { String(cString: $0) } ?? "an interrupt handler"
        library.recordViolation("\(service) is [passive] but was called from [interrupt] context (\(callback))")
        return false
    }

    /// The owner a creating service files a resource under.
    static func owner(_ library: DriverLibrary, _ device: OpaquePointer?, service: String) -> ResourceOwner? {
        guard let device else { return library.globalOwner }
        guard let binding = binding(device, service: service), binding.library === library else { return nil }
        return binding.owner
    }

    static func deviceInfo(_ info: HostDeviceInfo) -> oy_device_info {
        var c = oy_device_info()
        c.struct_size = UInt32(MemoryLayout<oy_device_info>.size)
        c.vendor_id = info.vendorID
        c.device_id = info.deviceID
        c.class_code = info.classCode
        c.revision = info.revision
        c.bar_count = UInt8(min(info.bars.count, 6))
        c.irq_count = UInt16(clamping: info.interruptCount)
        withUnsafeMutableBytes(of: &c.bar_kind) { kinds in
            for (i, bar) in info.bars.prefix(6).enumerated() {
                switch bar {
                case .none: kinds[i] = UInt8(OY_BAR_NONE.rawValue)
                case .mmio: kinds[i] = UInt8(OY_BAR_MMIO.rawValue)
                case .ports: kinds[i] = UInt8(OY_BAR_PORT.rawValue)
                }
            }
        }
        withUnsafeMutableBytes(of: &c.location) { bytes in
            for (i, byte) in info.location.utf8.prefix(bytes.count - 1).enumerated() { bytes[i] = byte }
        }
        return c
    }

    /// Static for the life of the process; immutable.
    nonisolated(unsafe) static let hostName: UnsafePointer<CChar> = {
        let s = strdup("oyako-kernel")!
        return UnsafePointer(s)
    }()

    /// regs_map and ports_claim: BAR `bar` of the device, when `extent` accepts
    /// its kind, becomes a resource of the driver (`make(binding, bar, extent)`).
    static func claimBAR<Extent>(
        _ device: OpaquePointer?, _ bar: UInt32, service: String, out: UnsafeMutablePointer<OpaquePointer?>?,
        extent extentOut: UnsafeMutablePointer<Extent>?, accepting extent: (BARKind) -> Extent?,
        make: (DeviceBinding, Int, Extent) -> Resource
    ) -> Int32 {
        guard let binding = binding(device, service: service) else { return OY_E_INVALID.rawValue }
        guard requirePassive(service, binding.library) else { return OY_E_WRONG_CONTEXT.rawValue }
        let bars = binding.device.info.bars
        guard let out, Int(bar) < bars.count, let length = extent(bars[Int(bar)]) else { return OY_E_INVALID.rawValue }
        out.pointee = binding.owner.adopt(make(binding, Int(bar), length))
        extentOut?.pointee = length
        return OY_OK.rawValue
    }

    /// reg_read32/64: all ones (what a missing device reads) for a bad handle
    /// or offset (reported).
    static func registerRead(_ handle: OpaquePointer?, _ offset: UInt64, width: Int, service: String) -> UInt64 {
        guard let w = resource(handle, RegisterWindow.self, service: service), w.admits(offset, width: width, service: service) else { return .max }
        return w.binding.device.mmioRead(bar: w.bar, offset: offset, width: width)
    }

    /// reg_write32/64: ignored for a bad handle or offset (reported).
    static func registerWrite(_ handle: OpaquePointer?, _ offset: UInt64, _ value: UInt64, width: Int, service: String) {
        guard let w = resource(handle, RegisterWindow.self, service: service), w.admits(offset, width: width, service: service) else { return }
        w.binding.device.mmioWrite(bar: w.bar, offset: offset, width: width, value: value)
    }

    /// The `*_destroy`/`*_release` services: the resource behind `handle`,
    /// no longer the driver's, or nil (reported) for an invalid handle.
    @discardableResult
    static func release<T: Resource>(_ handle: OpaquePointer?, as type: T.Type, service: String) -> T? {
        guard let resource = ResourceOwner.release(handle, as: type) else {
            unattributed("\(service) with an invalid handle")
            return nil
        }
        return resource
    }

    /// The `*_create` services: a [passive] call that gives the driver a new
    /// resource owned by the device (or the library), unless the arguments
    /// are not `valid` or fault injection fails it.
    static func create(_ host: UnsafePointer<oy_host>?, _ device: OpaquePointer?, _ out: UnsafeMutablePointer<OpaquePointer?>?,
                       service: String, valid: Bool = true, make: (ResourceOwner) -> Resource) -> Int32 {
        create(host, device, out, service: service, valid: valid) { owner in owner.adopt(make(owner)) }
    }

    /// The same, for a resource whose handle `adopt` makes (nil: out of them).
    static func create(_ host: UnsafePointer<oy_host>?, _ device: OpaquePointer?, _ out: UnsafeMutablePointer<OpaquePointer?>?,
                       service: String, valid: Bool = true, adopt: (ResourceOwner) -> OpaquePointer?) -> Int32 {
        guard let library = library(host, service: service) else { return OY_E_INVALID.rawValue }
        guard requirePassive(service, library) else { return OY_E_WRONG_CONTEXT.rawValue }
        guard valid, let out, let owner = owner(library, device, service: service) else { return OY_E_INVALID.rawValue }
        if library.faults.shouldFail() { return OY_E_NOMEM.rawValue }
        guard let handle = adopt(owner) else { return OY_E_NOMEM.rawValue }
        out.pointee = handle
        return OY_OK.rawValue
    }

    /// lock_create: the lock's handle is LockTable's, not HandleTable's.
    static func createLock(_ host: UnsafePointer<oy_host>?, _ device: OpaquePointer?, _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
        create(host, device, out, service: "lock_create") { owner in
            guard let handle = LockTable.shared.create(owner: owner.libraryKey) else { return nil }
            let lock = HostLock(handle: handle, owner: owner)
            locks.withLock { $0[UInt(bitPattern: handle)] = lock }
            owner.adopt(lock, key: UInt(bitPattern: handle))
            return handle
        }
    }

    static func destroyLock(_ handle: OpaquePointer?) {
        let key = UInt(bitPattern: handle)
        guard let lock = locks.withLock({ $0[key].map(\.owner).map(isCallers) == true ? $0.removeValue(forKey: key) : nil }) else {
            return unattributed("lock_destroy with an invalid handle")
        }
        lock.owner.forget(key: UInt(bitPattern: handle))
        if LockTable.shared.destroy(handle) == .held {
            let message = "lock_destroy of a lock that is held"
            if let library = lock.owner.library { library.recordViolation(message) } else { unattributed(message) }
        }
    }

    /// A driver's host table: one small installer per service group.
    static func makeTable(abiVersion: UInt32) -> UnsafeMutablePointer<oy_host> {
        oy_host.hostTable { t in
            t.abi_version = abiVersion
            t.host_name = hostName

            t.get_extension = { host, id in
                guard HostServices.library(host, service: "get_extension") != nil, let id else { return nil }
                return DeviceClass.table(for: id)
            }
            installLoggingAndTime(&t)
            installMemory(&t)
            installLocksAndEvents(&t)
            installWorkAndTimers(&t)
            installBusAccess(&t)
            installDMA(&t)
            installInterrupts(&t)
        }
    }

    /// The longest log line the host takes from a driver, in bytes.
    static let longestLogLine = 16 << 10

    /// Logging and time.
    private static func installLoggingAndTime(_ t: inout oy_host) {
        t.log = { host, device, level, message in
            guard let library = HostServices.library(host, service: "log") else { return }
            let lines: [(String, LogLevel)]
            switch library.logBudget.withLock({ $0.admit(at: monotonicNanoseconds()) }) {
            case .drop: return
            case .replace(let note):
                lines = [(note, .warning)]
                // A soft limit, like a slow callback's: the check it happens
                // in passes with a warning that says so.
                ViolationLog.record(.init(severity: .warning, driver: library.name, callback: oy_shim_context_callback().map { String(cString: $0) }, message: note))
            case .log(let notes):
                // The driver's pointer, read without trusting it (a freed or garbage one).
                let text: String
                switch DriverMemory.string(message, limit: Self.longestLogLine) {
                case .null: text = "(NULL message)"
                case .string(let line): text = line
                case .unterminated(let prefix): text = prefix + "… (cut at \(Self.longestLogLine) bytes)"
                case .unreadable:
                    library.recordViolation("log with a message that is not readable memory (a freed or garbage pointer)")
                    return
                }
                lines = notes.map { ($0, .warning) } + [(text, LogLevel(rawValue: level) ?? .info)]
            }
            let location = device.flatMap { HandleTable.shared.lookup($0, as: DeviceBinding.self)?.device.info.location }
            // Where the OS puts a line (its log, the console) is its time.
            CallbackBudget.inOS {
                for (line, level) in lines {
                    library.environment.log(level: level, driver: library.name, device: location, message: line)
                    DriverLogMirror.record(level: level, driver: library.name, device: location, message: line)
                }
            }
        }
        t.monotonic_ns = { _ in
            // A driver reading the clock may be waiting for its device (a
            // bounded spin in submit): in a driver host, what it posted on
            // this thread goes out now, or it would wait for itself.
            HostLine.sendThisThreadsBatch()
            return monotonicNanoseconds()
        }
    }

    /// Memory (host allocations with owners and red tape).
    private static func installMemory(_ t: inout oy_host) {
        t.mem_alloc = { host, device, size in
            guard let library = HostServices.library(host, service: "mem_alloc"), size > 0,
                let owner = HostServices.owner(library, device, service: "mem_alloc")
            else { return nil }
            if library.faults.shouldFail() { return nil }
            guard size <= MemoryAllocation.maxSize else { return nil }
            if case .refused(let held, let report) = library.memory.take(size) {
                if report {
                    library.recordWarning("mem_alloc of \(size) bytes refused: the driver holds \(MemoryBudget.describe(held)) of mem_alloc blocks, "
                                          + "and may hold \(MemoryBudget.describe(library.memory.limit)) (a leak?)")
                }
                return nil
            }
            guard let allocation = MemoryAllocation(size: size, owner: owner, budget: library.memory) else {
                library.memory.give(size)
                return nil
            }
            let pointer = allocation.pointer
            owner.adopt(allocation, key: UInt(bitPattern: pointer))
            HostServices.allocations.withLock { $0[UInt(bitPattern: pointer)] = allocation }
            return pointer
        }
        t.mem_free = { host, pointer in
            guard let library = HostServices.library(host, service: "mem_free"), let pointer else { return }
            guard let allocation = HostServices.allocations.withLock({ $0.removeValue(forKey: UInt(bitPattern: pointer)) }) else {
                library.recordViolation("mem_free of a pointer the host did not allocate, or freed twice")
                return
            }
            allocation.owner.forget(key: UInt(bitPattern: pointer))
            allocation.reclaim()
        }
    }

    /// Locks and events.
    private static func installLocksAndEvents(_ t: inout oy_host) {
        t.lock_create = { host, device, out in HostServices.createLock(host, device, out) }
        t.lock_destroy = { handle in HostServices.destroyLock(handle) }
        t.lock_acquire = { handle in
            guard let mutex = LockTable.shared.mutex(handle, caller: HostServices.callerKey) else { return HostServices.unattributed("lock_acquire called with an invalid or released handle") }
            if pthread_mutex_lock(mutex) == EDEADLK { HostServices.waitForEver() }
        }
        t.lock_release = { handle in
            guard let mutex = LockTable.shared.mutex(handle, caller: HostServices.callerKey) else { return HostServices.unattributed("lock_release called with an invalid or released handle") }
            if pthread_mutex_unlock(mutex) == EPERM {
                HostServices.unattributed("lock_release of a lock this thread does not hold (a lock is released by the thread that took it)")
            }
        }
        t.event_create = { host, device, out in
            HostServices.create(host, device, out, service: "event_create") { HostEvent(owner: $0) }
        }
        t.event_destroy = { handle in HostServices.release(handle, as: HostEvent.self, service: "event_destroy") }
        t.event_signal = { handle in
            guard let event = HostServices.resource(handle, HostEvent.self, service: "event_signal") else { return }
            event.condition.lock()
            event.signalled = true
            event.condition.signal()
            event.condition.unlock()
        }
        t.event_wait = { handle, timeout in
            HostLine.sendThisThreadsBatch()  // what it waits for may need it
            guard let event = HostServices.resource(handle, HostEvent.self, service: "event_wait") else { return OY_E_INVALID.rawValue }
            if HostServices.inInterrupt {
                let callback = oy_shim_context_callback().map { String(cString: $0) } ?? "an interrupt handler"
                let message = "event_wait is [passive] but was called from [interrupt] context (\(callback))"
                if let library = event.owner.library { library.recordViolation(message) } else { HostServices.unattributed(message) }
                return OY_E_WRONG_CONTEXT.rawValue
            }
            let deadline = Date(timeIntervalSinceNow: Double(min(timeout, 3_600_000_000_000)) / 1e9)
            event.condition.lock()
            defer { event.condition.unlock() }
            while !event.signalled {
                if !event.condition.wait(until: deadline) { break }
            }
            let signalled = event.signalled
            event.signalled = false
            return signalled ? OY_OK.rawValue : OY_E_TIMEOUT.rawValue
        }
    }

    /// Deferred work and timers.
    private static func installWorkAndTimers(_ t: inout oy_host) {
        t.work_create = { host, device, fn, arg, out in
            HostServices.createScheduled(host, device, fn, arg, out, kind: "work item", service: "work_create")
        }
        t.work_queue = { handle in
            guard let work = HostServices.resource(handle, ScheduledItem.self, service: "work_queue") else { return }
            Scheduler.shared.queue(work.item)
        }
        t.work_destroy = { handle in HostServices.destroyScheduled(handle, service: "work_destroy") }
        t.timer_create = { host, device, fn, arg, out in
            HostServices.createScheduled(host, device, fn, arg, out, kind: "timer", service: "timer_create")
        }
        t.timer_arm = { handle, delay in
            guard let timer = HostServices.resource(handle, ScheduledItem.self, service: "timer_arm") else { return }
            Scheduler.shared.arm(timer.item, delayNanoseconds: delay)
        }
        t.timer_cancel = { handle in
            guard let timer = HostServices.resource(handle, ScheduledItem.self, service: "timer_cancel") else { return }
            Scheduler.shared.cancel(timer.item)
        }
        t.timer_destroy = { handle in HostServices.destroyScheduled(handle, service: "timer_destroy") }
    }

    /// Bus access: config space, register windows, ports.
    private static func installBusAccess(_ t: inout oy_host) {
        t.config_read = { device, offset, width, value in
            guard let binding = HostServices.binding(device, service: "config_read"), let value else { return OY_E_INVALID.rawValue }
            do throws(OyStatus) {
                value.pointee = try binding.device.configRead(offset: offset, width: Int(width))
                return OY_OK.rawValue
            } catch {
                return error.rawValue
            }
        }
        t.config_write = { device, offset, width, value in
            guard let binding = HostServices.binding(device, service: "config_write") else { return OY_E_INVALID.rawValue }
            do throws(OyStatus) {
                try binding.device.configWrite(offset: offset, width: Int(width), value: value)
                return OY_OK.rawValue
            } catch {
                return error.rawValue
            }
        }
        t.regs_map = { device, bar, out, size in
            HostServices.claimBAR(device, bar, service: "regs_map", out: out, extent: size, accepting: \.mmioSize) { RegisterWindow(binding: $0, bar: $1, size: $2) }
        }
        t.regs_unmap = { handle in HostServices.release(handle, as: RegisterWindow.self, service: "regs_unmap") }
        t.reg_read32 = { handle, offset in UInt32(truncatingIfNeeded: HostServices.registerRead(handle, offset, width: 4, service: "reg_read32")) }
        t.reg_write32 = { handle, offset, value in HostServices.registerWrite(handle, offset, UInt64(value), width: 4, service: "reg_write32") }
        t.reg_read64 = { handle, offset in HostServices.registerRead(handle, offset, width: 8, service: "reg_read64") }
        t.reg_write64 = { handle, offset, value in HostServices.registerWrite(handle, offset, value, width: 8, service: "reg_write64") }
        t.ports_claim = { device, bar, out, count in
            HostServices.claimBAR(device, bar, service: "ports_claim", out: out, extent: count, accepting: \.portCount) { PortRange(binding: $0, bar: $1, count: $2) }
        }
        t.ports_release = { handle in HostServices.release(handle, as: PortRange.self, service: "ports_release") }
        t.port_in8 = { handle, port in
            guard let p = HostServices.resource(handle, PortRange.self, service: "port_in8"), p.admits(port, service: "port_in8") else { return 0xFF }
            return p.binding.device.portRead(bar: p.bar, port: port)
        }
        t.port_out8 = { handle, port, value in
            guard let p = HostServices.resource(handle, PortRange.self, service: "port_out8"), p.admits(port, service: "port_out8") else { return }
            p.binding.device.portWrite(bar: p.bar, port: port, value: value)
        }
    }

    /// DMA memory and mappings.
    private static func installDMA(_ t: inout oy_host) {
        t.dma_alloc = { device, size, out, cpu, address in
            guard let binding = HostServices.binding(device, service: "dma_alloc") else { return OY_E_INVALID.rawValue }
            guard HostServices.requirePassive("dma_alloc", binding.library) else { return OY_E_WRONG_CONTEXT.rawValue }
            guard let out, let cpu, let address, size > 0, size <= 64 << 20 else { return OY_E_INVALID.rawValue }
            if binding.library.faults.shouldFail(dma: true) { return OY_E_NOMEM.rawValue }
            do throws(OyStatus) {
                let region = try CallbackBudget.inOS { () throws(OyStatus) in try binding.device.dmaAllocate(size: size) }
                out.pointee = binding.owner.adopt(DMABuffer(binding: binding, region: region, kind: "DMA buffer"))
                cpu.pointee = region.cpu
                address.pointee = region.deviceAddress
                return OY_OK.rawValue
            } catch {
                return error.rawValue
            }
        }
        t.dma_free = { handle in
            if let binding = HandleTable.shared.lookup(handle, as: DMABuffer.self)?.binding,
                !HostServices.requirePassive("dma_free", binding.library)
            {
                return
            }
            guard let buffer = ResourceOwner.release(handle, as: DMABuffer.self), buffer.kind == "DMA buffer" else {
                HostServices.unattributed("dma_free with an invalid handle (or a dma_map handle)")
                return
            }
            buffer.reclaim()
            Verifier.pauseAfterRelease()
        }
        t.dma_map = { device, cpu, length, direction, out, address in
            guard let binding = HostServices.binding(device, service: "dma_map") else { return OY_E_INVALID.rawValue }
            guard let cpu, let out, let address, length > 0, let dir = DMADirection(rawValue: direction) else { return OY_E_INVALID.rawValue }
            do throws(OyStatus) {
                // IOMMU work: the OS's time, not the driver's (a table
                // growing under one driver's submit is not that driver's cost).
                let region = try CallbackBudget.inOS { () throws(OyStatus) in try binding.device.dmaMap(cpu, length: length, direction: dir) }
                out.pointee = binding.owner.adopt(DMABuffer(binding: binding, region: region, kind: "DMA mapping"))
                address.pointee = region.deviceAddress
                return OY_OK.rawValue
            } catch {
                return error.rawValue
            }
        }
        t.dma_unmap = { handle in
            guard let mapping = ResourceOwner.release(handle, as: DMABuffer.self), mapping.kind == "DMA mapping" else {
                HostServices.unattributed("dma_unmap with an invalid handle (or a dma_alloc handle)")
                return
            }
            // IOMMU work, the OS's time as in dma_map: an interrupt handler
            // that unmaps what it reaps is not charged for the page tables.
            CallbackBudget.inOS { mapping.reclaim() }
        }
    }

    /// Interrupts.
    private static func installInterrupts(_ t: inout oy_host) {
        t.irq_hook = { device, index, fn, arg, out in
            guard let binding = HostServices.binding(device, service: "irq_hook") else { return OY_E_INVALID.rawValue }
            guard HostServices.requirePassive("irq_hook", binding.library) else { return OY_E_WRONG_CONTEXT.rawValue }
            guard let fn, let out, Int(index) < binding.device.info.interruptCount else { return OY_E_INVALID.rawValue }
            guard binding.claimVector(Int(index)) else { return OY_E_BUSY.rawValue }
            let call = InterruptCall(function: fn, argument: arg)
            do throws(OyStatus) {
                let library = binding.library, label = binding.label
                try binding.device.hookInterrupt(index: Int(index)) {
                    // The name must outlive the call: a static string, not a temporary C copy.
                    oy_shim_set_context(1, HostServices.interruptHandlerName)
                    oy_shim_set_context_owner(Unmanaged.passUnretained(library).toOpaque())
                    let spent = CallbackBudget.measure { call.function(call.argument) }
                    CallbackBudget.interrupt.judge(spent, what: "the interrupt handler of \(label) (vector \(index))", library: library)
                    oy_shim_set_context_owner(nil)
                    oy_shim_set_context(0, nil)
                }
            } catch {
                binding.releaseVector(Int(index))
                return error.rawValue
            }
            out.pointee = binding.owner.adopt(InterruptHook(binding: binding, index: Int(index)))
            return OY_OK.rawValue
        }
        t.irq_unhook = { handle in
            if let hook = HandleTable.shared.lookup(handle, as: InterruptHook.self) {
                guard HostServices.requirePassive("irq_unhook", hook.binding.library) else { return }
                // Unhook and wait for a running handler while the handle is
                // still valid: the handler may mask or unmask its own vector
                // meanwhile, as Linux's free_irq lets it. Then free.
                hook.unhook()
            }
            HostServices.release(handle, as: InterruptHook.self, service: "irq_unhook")?.reclaim()
        }
        t.irq_mask = { handle in
            guard let hook = HostServices.resource(handle, InterruptHook.self, service: "irq_mask") else { return }
            hook.binding.device.maskInterrupt(index: hook.index)
        }
        t.irq_unmask = { handle in
            guard let hook = HostServices.resource(handle, InterruptHook.self, service: "irq_unmask") else { return }
            hook.binding.device.unmaskInterrupt(index: hook.index)
        }
    }

    private static func createScheduled(
        _ host: UnsafePointer<oy_host>?, _ device: OpaquePointer?, _ fn: oy_work_fn?, _ arg: UnsafeMutableRawPointer?,
        _ out: UnsafeMutablePointer<OpaquePointer?>?, kind: String, service: String
    ) -> Int32 {
        create(host, device, out, service: service, valid: fn != nil) { owner in
            let call = InterruptCall(function: fn!, argument: arg)  // `valid` checked it
            // It runs as its driver's callback, like an interrupt handler:
            // a handle it passes is checked against that driver, and what it
            // does wrong is pinned on it. Looked up when it runs (an item
            // made in init runs once the owner knows its driver); weak: the
            // owner holds the item.
            let callback: StaticString = kind == "timer" ? "timer callback" : "work callback"
            return ScheduledItem(item: Scheduler.Item { [weak owner] in
                guard let library = owner?.library else { return call.function(call.argument) }
                library.callDriver(callback) { call.function(call.argument) }
            }, kind: kind, owner: owner)
        }
    }

    private static func destroyScheduled(_ handle: OpaquePointer?, service: String) {
        if inInterrupt {
            unattributed("\(service) is [passive] but was called from [interrupt] context")
            return
        }
        guard let item = resource(handle, ScheduledItem.self, service: service) else { return }
        // Cancel and wait first, with the handle still valid: a run in
        // progress may queue (or arm) the item again, which is then dropped
        // quietly, as Linux's cancel_work_sync allows. Then free.
        item.retire()
        guard let released = ResourceOwner.release(handle, as: ScheduledItem.self) else {
            unattributed("\(service) of an item another thread destroyed meanwhile")
            return
        }
        released.reclaim()
    }
}

/// A C callback and its argument, carried into a Swift closure.
/// @unchecked Sendable: the driver promises the callback may run on host
/// threads; the pointer is the driver's and only passed back to it.
private struct InterruptCall: @unchecked Sendable {
    let function: @convention(c) (UnsafeMutableRawPointer?) -> Void
    let argument: UnsafeMutableRawPointer?
}
