import Foundation

/// Something a driver holds that the host must get back: a register window,
/// DMA memory, an interrupt hook, a timer, a lock, an allocation...
/// Subclasses give the thing back to the environment in `reclaim`.
public class Resource: @unchecked Sendable {
    // @unchecked Sendable: immutable after init except `handle`, which is set
    // once by the owner before the handle is handed out.
    let kind: String
    let detail: String
    let owner: ResourceOwner
    var handle: OpaquePointer?

    init(kind: String, detail: String, owner: ResourceOwner) {
        self.kind = kind
        self.detail = detail
        self.owner = owner
    }

    /// Give the underlying thing back. Called exactly once, by the owner.
    func reclaim() {}

    var summary: String { detail.isEmpty ? kind : "\(kind) (\(detail))" }
}

/// Everything one device instance (or a driver's driver-wide scope) holds.
/// Every handle a driver gets is registered here, so that detach can prove
/// everything was released and reclaim what was not.
final class ResourceOwner: @unchecked Sendable {
    // @unchecked Sendable: `resources` is guarded by `lock`.
    let label: String
    /// The driver this owner's resources belong to, for violation reports.
    weak var library: DriverLibrary? {
        didSet { libraryKey = library.map { UInt(bitPattern: Unmanaged.passUnretained($0).toOpaque()) } ?? 0 }
    }
    /// The same driver as a plain value (0: none yet), compared with the
    /// calling driver's on every service call without a weak load.
    private(set) var libraryKey: UInt = 0
    private let lock = NSLock()
    private var resources: [UInt: Resource] = [:]
    private var order: UInt = 0
    private var sequence: [UInt: UInt] = [:]

    init(label: String) { self.label = label }

    /// Registers `resource` and returns the handle the driver gets.
    func adopt(_ resource: Resource) -> OpaquePointer {
        let handle = HandleTable.shared.insert(resource)
        resource.handle = handle
        adopt(resource, key: UInt(bitPattern: handle))
        return handle
    }

    /// Registers a resource keyed by something other than a handle (a
    /// mem_alloc pointer).
    func adopt(_ resource: Resource, key: UInt) {
        lock.lock()
        resources[key] = resource
        order += 1
        sequence[key] = order
        lock.unlock()
    }

    /// Takes back the resource behind `handle` if it is a `T`; nil for
    /// stale, forged or wrong-kind handles. The caller reclaims it.
    static func release<T: Resource>(_ handle: OpaquePointer?, as type: T.Type) -> T? {
        guard let resource = HandleTable.shared.remove(handle, as: type, if: { HostServices.isCallers($0.owner) }) else { return nil }
        resource.owner.forget(key: UInt(bitPattern: handle!))
        return resource
    }

    func forget(key: UInt) {
        lock.lock()
        resources[key] = nil
        sequence[key] = nil
        lock.unlock()
    }

    func resources<T: Resource>(of type: T.Type) -> [T] {
        lock.lock()
        defer { lock.unlock() }
        return resources.values.compactMap { $0 as? T }
    }

    var isEmpty: Bool {
        lock.lock()
        defer { lock.unlock() }
        return resources.isEmpty
    }

    /// Descriptions of what is still held, oldest first.
    var held: [String] {
        lock.lock()
        defer { lock.unlock() }
        return resources.sorted { sequence[$0.key]! < sequence[$1.key]! }.map { $0.value.summary }
    }

    /// Reclaims everything still held, newest first (the reverse of how a
    /// driver acquires), and returns what it was.
    @discardableResult
    func reclaimAll() -> [String] {
        lock.lock()
        let leaked = resources.sorted { sequence[$0.key]! > sequence[$1.key]! }
        resources.removeAll()
        sequence.removeAll()
        lock.unlock()
        for (key, resource) in leaked {
            if resource.handle != nil { HandleTable.shared.remove(OpaquePointer(bitPattern: key), as: Resource.self) }
            resource.reclaim()
        }
        return leaked.reversed().map { $0.value.summary }
    }
}
