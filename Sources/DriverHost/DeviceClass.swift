import COyakoSDK
import Foundation

/// A device class the host serves (block, net, serial, rng...): the
/// extension a driver looks up by versioned ID, and the host table behind
/// it. Each class lives in one file (Block.swift, Net.swift, Serial.swift,
/// RNG.swift) that defines its table, its registration type and how that
/// cancels outstanding work; `DeviceClass.all` lists them, and nothing else
/// in the host switches on the class.
public struct DeviceClass: Sendable {
    /// The versioned extension ID, e.g. "oyako.block/1".
    public let id: String
    /// The host table `get_extension` returns: static for the life of the
    /// process, starting with its `struct_size`.
    nonisolated(unsafe) let table: UnsafeRawPointer

    init(id: String, table: UnsafeRawPointer) {
        self.id = id
        self.table = table
    }

    /// Every class this host serves.
    static let all: [DeviceClass] = [HostBlock.deviceClass, HostNet.deviceClass, HostSerial.deviceClass, HostRNG.deviceClass]

    /// The host table for extension `id`, or nil for an unknown ID.
    static func table(for id: UnsafePointer<CChar>) -> UnsafeRawPointer? {
        all.first { strcmp($0.id, id) == 0 }?.table
    }

    /// The IDs of every class this host serves.
    public static var ids: [String] { all.map(\.id) }
}

/// Something a driver registered with the OS through a class's host table
/// (a disk, an interface, a port, an entropy source). The OS learns of it
/// through `HostEnvironment.registered` and forgets it through `unregistered`;
/// detach cancels what the driver accepted and did not finish.
public class ClassRegistration: Resource, @unchecked Sendable {
    // @unchecked Sendable: `unregistered` is guarded by `registrationLock`.
    public let binding: DeviceBinding
    /// The extension ID of the class ("oyako.block/1").
    public let deviceClass: String
    private let registrationLock = NSLock()
    private var unregisteredFlag = false

    init(binding: DeviceBinding, deviceClass: String, kind: String, detail: String) {
        self.binding = binding
        self.deviceClass = deviceClass
        super.init(kind: kind, detail: detail, owner: binding.owner)
    }

    /// Driver name and device, e.g. "nvmelite@00:01.0".
    public var label: String { binding.label }

    /// A rule of the ABI the OS saw the driver break, found after the fact
    /// (outside any callback of it).
    public func reportViolation(_ message: String) { binding.library.recordViolation(message, inCallback: false) }

    /// True once unregistered: the OS sends nothing more.
    public var isUnregistered: Bool { registrationLock.withLock { unregisteredFlag } }

    /// `body`, a call into the driver, unless this object is unregistered
    /// (then `gone`); counted, so the driver's unload waits for it.
    func whileRegistered<R>(_ gone: R, _ body: () -> R) -> R {
        binding.library.counted { isUnregistered ? gone : body() }
    }

    /// Requests the driver accepted and has not completed.
    public var outstandingCount: Int { 0 }

    /// Completes whatever the driver accepted and did not finish with
    /// OY_E_CANCELED; returns how many. Called after detach returned.
    func cancelOutstanding() -> Int { 0 }

    /// Called once, before the OS is told: stop new work, wait for a call
    /// into the driver in progress.
    func willUnregister() {}

    /// Unregisters (idempotent): the OS stops using it.
    func unregister() {
        let first = registrationLock.withLock { () -> Bool in
            defer { unregisteredFlag = true }
            return !unregisteredFlag
        }
        guard first else { return }
        willUnregister()
        binding.library.environment.unregistered(self)
    }

    override func reclaim() { unregister() }

    /// Arguments no driver should pass to a `register_*` service (a NULL
    /// or short table, a NULL callback, an impossible geometry), said as
    /// "with `what`": a recorded violation, and OY_E_INVALID.
    struct Refusal: Error {
        let what: String
        init(_ what: String) { self.what = what }
    }

    /// The common shape of every class's `register_*` service: the device's
    /// binding, [passive] context, the driver's tables checked and the
    /// registration made by `make`, then announced to the OS.
    static func register<T: ClassRegistration>(_ device: OpaquePointer?, out: UnsafeMutablePointer<OpaquePointer?>?, service: String,
                                                make: (DeviceBinding) throws(Refusal) -> T) -> Int32
    {
        guard let binding = HostServices.binding(device, service: service) else { return OY_E_INVALID.rawValue }
        guard HostServices.requirePassive(service, binding.library) else { return OY_E_WRONG_CONTEXT.rawValue }
        do throws(Refusal) {
            guard let out else { throw Refusal("a NULL out pointer") }
            return announce(try make(binding), out: out)
        } catch {
            binding.library.recordViolation("\(service) with \(error.what)")
            return OY_E_INVALID.rawValue
        }
    }

    /// Adopts `registration` for its device, tells the OS, and writes the
    /// handle to `out`; on refusal the handle is released again. The common
    /// tail of every class's `register_*` service.
    static func announce<T: ClassRegistration>(_ registration: T, out: UnsafeMutablePointer<OpaquePointer?>) -> Int32 {
        let binding = registration.binding
        // One object of each class per device, in every environment: the
        // OS finds a device's disk (or port...) again by its device across
        // restarts and replacements, and a driver host serves one of each.
        if binding.owner.resources(of: T.self).contains(where: { !$0.isUnregistered }) {
            binding.library.environment.log(
                level: .warning, driver: binding.library.name, device: binding.device.info.location,
                message: "a second \(registration.deviceClass) object for one device was refused (OY_E_NOT_SUPPORTED): "
                    + "a device registers at most one object of each class; unregister the first to register another")
            return OY_E_NOT_SUPPORTED.rawValue
        }
        let handle = binding.owner.adopt(registration)
        binding.record(registration)
        do throws(OyStatus) {
            try binding.library.environment.registered(registration, device: binding.device)
        } catch {
            _ = ResourceOwner.release(handle, as: T.self)
            return error.rawValue
        }
        out.pointee = handle
        return OY_OK.rawValue
    }

    /// The `register_*` service of a class whose registration takes a
    /// struct that describes it and an ops table (`T.Info`, `T.Ops`).
    static func register<T: DescribedRegistration>(as type: T.Type, _ device: OpaquePointer?, _ info: UnsafePointer<T.Info>?, _ ops: UnsafePointer<T.Ops>?,
                                                   _ instance: UnsafeMutableRawPointer?, _ out: UnsafeMutablePointer<OpaquePointer?>?, service: String) -> Int32
    {
        register(device, out: out, service: service) { binding throws(Refusal) in
            try T(binding: binding, info: .read(info), ops: .read(ops), instance: instance)
        }
    }

    /// The common body of every class's `unregister_*` service.
    static func withdraw<T: ClassRegistration>(_ handle: OpaquePointer?, as type: T.Type, service: String) {
        guard let registration = ResourceOwner.release(handle, as: type) else {
            HostServices.unattributed("\(service) with an invalid or already unregistered handle")
            return
        }
        registration.unregister()
        Verifier.pauseAfterRelease()
    }
}

/// A class object registered with a struct that describes it (a disk's
/// geometry, an interface's info, a port's line) and the driver's ops table:
/// made by the class's `register_*` service from what the driver passed,
/// or refused with what the class's header rules out.
protocol DescribedRegistration: ClassRegistration {
    associatedtype Info: VersionedStruct
    associatedtype Ops: VersionedStruct
    init(binding: DeviceBinding, info: Info, ops: Ops, instance: UnsafeMutableRawPointer?) throws(ClassRegistration.Refusal)
}
