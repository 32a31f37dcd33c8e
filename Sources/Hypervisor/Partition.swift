import Machine

/// A partition: an address space (GPA -> SPA map with access rights) and
/// virtual processors. The root partition is privileged; children are not.
///
/// The partition's `memory` is the contiguous CPU view of its guest-physical
/// space, built from the SPA pages it owns; only the code running in the
/// partition (its OS) is handed that view.
public final class Partition: @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by the hypervisor's lock.
    public enum State: String, Sendable {
        case created, initialized, finalized, deleted
    }

    public struct Port: Sendable {
        public enum Kind: Sendable, Equatable {
            case message
            case event(baseFlag: Int, flagCount: Int)
        }

        public let id: UInt32
        public let kind: Kind
        public let vp: Int
        public let sint: Int

        /// A message port (HV_PORT_INFO's MessagePortInfo): messages posted
        /// to it land in `sint`'s slot of `vp`'s message page.
        public static func message(id: UInt32, vp: Int = 0, sint: Int) -> Port {
            Port(id: id, kind: .message, vp: vp, sint: sint)
        }

        /// An event port (EventPortInfo): a signal sets one flag of `flags`
        /// in `sint`'s slot of `vp`'s event-flags page.
        public static func event(id: UInt32, flags: Range<Int>, vp: Int = 0, sint: Int) -> Port {
            Port(id: id, kind: .event(baseFlag: flags.lowerBound, flagCount: flags.count), vp: vp, sint: sint)
        }
    }

    struct PageMapping {
        var machinePage: UInt64
        var writable: Bool
        /// A child page shown in the root's foreign window.
        var foreignOwner: PartitionID?
    }

    public let id: PartitionID
    /// What this partition may do (HV_PARTITION_PRIVILEGE_MASK).
    public let privileges: PartitionPrivileges
    /// The root is the partition that may create partitions.
    public var isRoot: Bool { privileges.contains(.createPartitions) }
    /// Size of the guest-physical address space (RAM plus, for the root, the
    /// window where granted child pages are shown).
    public let addressSpaceSize: Int
    /// The CPU view of this partition's guest-physical space.
    public let memory: MemoryView
    /// The calls this partition's code may make, bound to its identity.
    public private(set) var hypercalls: Hypercalls!

    var state: State = .created
    var map: [UInt64: PageMapping] = [:]
    var deposited: [UInt64] = []
    var vps: [VirtualProcessor] = []
    var ports: [UInt32: Port] = [:]

    init(id: PartitionID, privileges: PartitionPrivileges, addressSpaceSize: Int, memory: PhysicalMemory, hypervisor: Hypervisor) throws(SystemCallError) {
        self.id = id
        self.privileges = privileges
        self.addressSpaceSize = addressSpaceSize
        self.memory = try MemoryView(memory: memory, size: addressSpaceSize)
        self.hypercalls = Hypercalls(caller: id, hypervisor: hypervisor)
    }

    /// The partition's virtual processors.
    public var virtualProcessors: [VirtualProcessor] { vps }
}
