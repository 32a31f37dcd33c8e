import Foundation
import Machine
import Hypervisor
import Kernel
import VMBus

/// Creates, starts and destroys child partitions, and offers them devices.
/// Everything goes through the root's hypercalls; the manager only keeps
/// track of what it made.
public final class VMManager: @unchecked Sendable {
    // @unchecked Sendable: `children` is guarded by `lock`.
    public struct Child: Sendable {
        public let id: PartitionID
        public let name: String
        public let memorySize: Int
        public let partition: Partition
        public let vp: VirtualProcessor
    }

    public enum Failure: Error, CustomStringConvertible {
        case hypercall(String, HvStatus)
        case noSuchChild(PartitionID)

        public var description: String {
            switch self {
            case .hypercall(let what, let status): return "\(what) failed: \(status)"
            case .noSuchChild(let id): return "no child partition \(id)"
            }
        }
    }

    public let root: RootPartition
    private let lock = NSLock()
    private var children: [PartitionID: Child] = [:]
    private var vsps: [PartitionID: [StorageVSP]] = [:]
    private var nics: [PartitionID: [NetworkVSP]] = [:]
    private var nicCount: [PartitionID: Int] = [:]
    /// The removal observers each child's virtual disks left on the root's
    /// disks, taken back when it is destroyed (a disk outlives children).
    private var diskObservers: [PartitionID: [(disk: Disk, observer: Disk.RemovalObserver)]] = [:]

    public init(root: RootPartition) {
        self.root = root
    }

    private var hypercalls: Hypercalls { root.hypervisor.root.hypercalls }

    /// Creates a child with `memorySize` bytes of RAM at GPA 0 and one VP,
    /// and connects it to VMBus. It runs nothing until `start`.
    public func createChild(name: String, memorySize: Int) throws(Failure) -> Child {
        let pages = memorySize / PhysicalMemory.pageSize
        func call<T>(_ what: String, _ body: () throws(HvStatus) -> T) throws(Failure) -> T {
            do { return try body() } catch { throw .hypercall(what, error) }
        }
        let id = try call("CreatePartition") { () throws(HvStatus) in try hypercalls.createPartition(memorySize: pages * PhysicalMemory.pageSize) }
        do throws(Failure) {
            try call("InitializePartition") { () throws(HvStatus) in try hypercalls.initializePartition(id) }
            try call("DepositMemory") { () throws(HvStatus) in try hypercalls.depositMemory(id, pages: pages) }
            try call("MapGpaPages") { () throws(HvStatus) in try hypercalls.mapGpaPages(id, gpaPage: 0, count: pages) }
            let vp = try call("CreateVp") { () throws(HvStatus) in try hypercalls.createVp(id, index: 0) }
            try call("VMBus ports") { () throws(HvStatus) in try root.vmbus.attach(child: id) }
            guard let partition = root.hypervisor.partition(id) else { throw Failure.noSuchChild(id) }
            let child = Child(id: id, name: name, memorySize: pages * PhysicalMemory.pageSize, partition: partition, vp: vp)
            lock.withLock { children[id] = child }
            return child
        } catch {
            try? hypercalls.finalizePartition(id)
            try? hypercalls.deletePartition(id)
            throw error
        }
    }

    /// Offers a virtual disk: `region` (in blocks) of a disk of the root OS.
    @discardableResult
    public func offerStorage(to child: Child, disk: Disk, region: Range<UInt64>) -> UInt32? {
        // The closures keep the child's ID, not the child: the disk keeps its
        // removal observers as long as it lives, and a Child holds its
        // partition (all its memory) and VP.
        let id = child.id
        let offer = DeviceOffer(interfaceType: StorageProtocol.interfaceType, instance: UUID(), name: "storvsp") { [weak self] context in
            let vsp = StorageVSP(disk: disk, region: region, context: context)
            self?.lock.withLock { self?.vsps[id, default: []].append(vsp) }
            return vsp
        }
        guard let relid = root.vmbus.offer(offer, to: id) else { return nil }
        // A disk that goes away (its device removed, its driver beyond
        // restart) takes the child's channel with it, as Hyper-V rescinds.
        let observer = disk.onRemoval { [weak self] reason in self?.root.vmbus.rescind(relid: relid, child: id, reason: reason) }
        lock.withLock { diskObservers[id, default: []].append((disk, observer)) }
        return relid
    }

    /// The MAC the root assigns to a child's virtual NIC number `index`.
    public static func mac(child: PartitionID, index: Int = 0) -> [UInt8] {
        [0x02, 0x0A, 0x7A, 0x10 + UInt8(index & 0x0F), UInt8(truncatingIfNeeded: child >> 8), UInt8(truncatingIfNeeded: child)]
    }

    /// Offers a virtual NIC connected to a port of `vswitch`.
    @discardableResult
    public func offerNetwork(to child: Child, vswitch: VirtualSwitch) -> UInt32? {
        let index = lock.withLock { () -> Int in
            defer { nicCount[child.id, default: 0] += 1 }
            return nicCount[child.id, default: 0]
        }
        let mac = Self.mac(child: child.id, index: index)
        let (id, name) = (child.id, child.name)
        let offer = DeviceOffer(interfaceType: NetworkProtocol.interfaceType, instance: UUID(), name: "netvsp") { [weak self] context in
            do {
                let vsp = try NetworkVSP(mac: mac, context: context, vswitch: vswitch, portName: name)
                self?.lock.withLock { self?.nics[id, default: []].append(vsp) }
                return vsp
            } catch {
                return RefusingHandler(reason: "\(error)")
            }
        }
        return root.vmbus.offer(offer, to: child.id)
    }

    /// Network providers serving a child.
    public func networkProviders(of child: Child) -> [NetworkVSP] { lock.withLock { nics[child.id] ?? [] } }

    /// Storage providers serving a child (one per opened channel).
    public func storageProviders(of child: Child) -> [StorageVSP] { lock.withLock { vsps[child.id] ?? [] } }

    /// Runs `guest` on the child's VP 0: the child's OS.
    public func start(_ child: Child, guest: @escaping @Sendable (Partition, VirtualProcessor) -> Void) {
        child.vp.start(name: "\(child.name)-vp0") { vp in guest(child.partition, vp) }
    }

    /// Stops the child's VPs, closes its channels and frees its memory.
    public func destroy(_ child: Child) {
        try? hypercalls.finalizePartition(child.id)
        root.vmbus.detach(child: child.id)
        try? hypercalls.deletePartition(child.id)
        let observers = lock.withLock { () -> [(disk: Disk, observer: Disk.RemovalObserver)] in
            children[child.id] = nil
            vsps[child.id] = nil
            nics[child.id] = nil
            nicCount[child.id] = nil
            return diskObservers.removeValue(forKey: child.id) ?? []
        }
        for (disk, observer) in observers { disk.stopObservingRemoval(observer) }
    }

    public var running: [Child] { lock.withLock { Array(children.values) } }
}

/// A handler for a channel the root cannot serve: the first packet closes it
/// with the reason.
final class RefusingHandler: ChannelHandler, @unchecked Sendable {
    let reason: String
    init(reason: String) { self.reason = reason }
    func packetReceived(_ packet: Packet, on channel: HostChannel) throws(ProtocolViolation) { throw .notServed(reason) }
    func channelClosed(_ channel: HostChannel, reason: String?) {}
}
