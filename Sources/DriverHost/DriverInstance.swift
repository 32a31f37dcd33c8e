import COyakoSDK
import Foundation

/// One device bound to one loaded driver: the `oy_device` the driver sees.
/// Owns everything the driver acquires for this device.
public final class DeviceBinding: @unchecked Sendable {
    // @unchecked Sendable: immutable after init; `owner` synchronises itself.
    public let device: any HostDevice
    /// Strong: what the binding registered (a disk the OS keeps while a
    /// VM's region or a log line still names it) can outlive the unload.
    /// The cycle through the library's attached instances ends at detach.
    public let library: DriverLibrary
    let owner: ResourceOwner
    private(set) var handle: OpaquePointer!
    /// Interrupt indices with a hook, to refuse a second hook on one vector.
    private let hookLock = NSLock()
    private var hooked: Set<Int> = []
    private var registrations: [ClassRegistration] = []

    init(library: DriverLibrary, device: any HostDevice) {
        self.library = library
        self.device = device
        self.owner = ResourceOwner(label: "\(library.name)@\(device.info.location)")
        self.owner.library = library
        self.handle = HandleTable.shared.insert(self)
    }

    public var label: String { owner.label }

    func claimVector(_ index: Int) -> Bool {
        hookLock.withLock { hooked.insert(index).inserted }
    }

    /// Everything registered for this device through a class, including
    /// what was unregistered since: accepted work must still complete
    /// before detach returns.
    var registered: [ClassRegistration] { hookLock.withLock { registrations } }

    func record(_ registration: ClassRegistration) {
        hookLock.withLock { registrations.append(registration) }
    }

    func releaseVector(_ index: Int) {
        hookLock.withLock { _ = hooked.remove(index) }
    }

    /// Invalidates the `oy_device` handle; later calls with it are refused.
    func retire() {
        HandleTable.shared.remove(handle, as: DeviceBinding.self)
    }
}

/// A driver attached to a device.
public final class DriverInstance: @unchecked Sendable {
    // @unchecked Sendable: `state` is guarded by `lock`.
    public enum State: String, Sendable {
        case attached, removed, detached
    }

    /// What detaching found.
    public struct DetachReport: Sendable {
        public let status: OyStatus
        /// Resources detach did not release (reclaimed by the host).
        public let leaked: [String]
        /// Requests the driver accepted but had not completed when detach
        /// returned (completed by the host with OY_E_CANCELED).
        public let unfinishedRequests: Int

        public var isClean: Bool { status.isOK && leaked.isEmpty && unfinishedRequests == 0 }

        /// A report from elsewhere (a driver host's detach, sent over its line).
        public init(status: OyStatus, leaked: [String], unfinishedRequests: Int) {
            self.status = status
            self.leaked = leaked
            self.unfinishedRequests = unfinishedRequests
        }
    }

    public let library: DriverLibrary
    public let binding: DeviceBinding
    let instance: UnsafeMutableRawPointer?
    private let lock = NSLock()
    private var state_: State = .attached
    /// Control calls into this instance under way: detach waits for them
    /// (up to `controlCallWait`), so that none runs in a detached instance.
    private var controlCalls = 0
    static let controlCallWait: Duration = .seconds(10)

    init(library: DriverLibrary, binding: DeviceBinding, instance: UnsafeMutableRawPointer?) {
        self.library = library
        self.binding = binding
        self.instance = instance
    }

    public var state: State { lock.withLock { state_ } }
    public var device: any HostDevice { binding.device }

    /// Resources the instance holds right now, oldest first.
    public var heldResources: [String] { binding.owner.held }

    /// What the driver registered for this device through a class.
    public var registrations: [ClassRegistration] { binding.registered }

    /// Disks the driver registered for this device.
    public var disks: [RegisteredDisk] { registrations.compactMap { $0 as? RegisteredDisk } }

    /// Network interfaces the driver registered for this device.
    public var netdevs: [RegisteredNetdev] { registrations.compactMap { $0 as? RegisteredNetdev } }

    /// Runs `body`, a control call, unless the instance is detached (then
    /// nil); a detach waits for it to return.
    func duringControlCall<R>(_ body: () throws(ControlCallError) -> R) throws(ControlCallError) -> R? {
        let admitted = lock.withLock { () -> Bool in
            guard state_ != .detached else { return false }
            controlCalls += 1
            return true
        }
        guard admitted else { return nil }
        defer { lock.withLock { controlCalls -= 1 } }
        return try body()
    }

    /// Looks up a driver extension ("oyako.block/1") of this instance.
    public func driverExtension(_ id: String) -> UnsafeRawPointer? {
        library.counted { () -> UnsafeRawPointer? in
            // Detached, the driver's tables may be unmapped already.
            guard state != .detached, let lookup = library.driver.pointee.get_extension else { return nil }
            return library.callDriver("get_extension") { lookup(instance, id) }
        }
    }

    /// Surprise removal: the device is already gone. Tells the driver, which
    /// must fail what is outstanding, then detaches.
    @discardableResult
    public func surpriseRemove() -> DetachReport {
        let proceed = lock.withLock { () -> Bool in
            guard state_ == .attached else { return false }
            state_ = .removed
            return true
        }
        if proceed, let remove = library.driver.pointee.remove {
            library.callDriver("remove") { remove(instance) }
        }
        return detach()
    }

    /// Detaches the driver and proves the instance released everything:
    /// whatever is left is reported and reclaimed.
    @discardableResult
    public func detach() -> DetachReport {
        let proceed = lock.withLock { () -> Bool in
            guard state_ != .detached else { return false }
            state_ = .detached
            return true
        }
        guard proceed else { return DetachReport(status: .state, leaked: [], unfinishedRequests: 0) }
        let deadline = ContinuousClock.now + Self.controlCallWait
        while lock.withLock({ controlCalls }) > 0 {
            guard ContinuousClock.now < deadline else {
                library.recordViolation("a control method of \(binding.label) had not returned \(Int(Self.controlCallWait / .seconds(1))) s into its detach; detached anyway", inCallback: false)
                break
            }
            usleep(1000)
        }
        let status = library.callDriver("detach") { OyStatus(library.driver.pointee.detach(instance)) }
        var unfinished = 0
        for registration in binding.registered { unfinished += registration.cancelOutstanding() }
        if unfinished > 0 {
            library.recordViolation("detach of \(binding.label) returned with \(unfinished) accepted request(s) not completed")
        }
        let leaked = binding.owner.reclaimAll()
        for item in leaked { library.recordViolation("detach of \(binding.label) left \(item) behind") }
        binding.retire()
        library.forget(self)
        return DetachReport(status: status, leaked: leaked, unfinishedRequests: unfinished)
    }
}
