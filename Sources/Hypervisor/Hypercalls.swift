/// The hypercalls a partition's code can make, bound to that partition.
///
/// Each partition receives its own instance (its "hypercall page"), so the
/// caller's identity comes from which instance is used, never from an
/// argument: a child cannot claim to be the root. Root-only calls made by a
/// child fail with HV_STATUS_ACCESS_DENIED.
public final class Hypercalls: Sendable {
    public let caller: PartitionID
    private unowned let hypervisor: Hypervisor

    init(caller: PartitionID, hypervisor: Hypervisor) {
        self.caller = caller
        self.hypervisor = hypervisor
    }

    /// HvCallCreatePartition (0x40). Root only.
    public func createPartition(memorySize: Int) throws(HvStatus) -> PartitionID {
        try hypervisor.createPartition(caller: caller, memorySize: memorySize)
    }

    /// HvCallInitializePartition (0x41). Root only.
    public func initializePartition(_ id: PartitionID) throws(HvStatus) {
        try hypervisor.initializePartition(caller: caller, id: id)
    }

    /// HvCallFinalizePartition (0x42). Root only. Stops the partition's VPs.
    public func finalizePartition(_ id: PartitionID) throws(HvStatus) {
        try hypervisor.finalizePartition(caller: caller, id: id)
    }

    /// HvCallDeletePartition (0x43). Root only. Frees all its memory.
    public func deletePartition(_ id: PartitionID) throws(HvStatus) {
        try hypervisor.deletePartition(caller: caller, id: id)
    }

    /// HvCallDepositMemory (0x48). Root only.
    public func depositMemory(_ id: PartitionID, pages: Int) throws(HvStatus) {
        try hypervisor.depositMemory(caller: caller, id: id, pages: pages)
    }

    /// HvCallWithdrawMemory (0x49). Root only. Returns pages withdrawn.
    public func withdrawMemory(_ id: PartitionID, pages: Int) throws(HvStatus) -> Int {
        try hypervisor.withdrawMemory(caller: caller, id: id, pages: pages)
    }

    /// HvCallMapGpaPages (0x4B). Root only: maps deposited pages into a child.
    public func mapGpaPages(_ id: PartitionID, gpaPage: UInt64, count: Int, writable: Bool = true) throws(HvStatus) {
        try hypervisor.mapGpaPages(caller: caller, id: id, gpaPage: gpaPage, count: count, writable: writable)
    }

    /// HvCallUnmapGpaPages (0x4C). Root only.
    public func unmapGpaPages(_ id: PartitionID, gpaPage: UInt64, count: Int) throws(HvStatus) {
        try hypervisor.unmapGpaPages(caller: caller, id: id, gpaPage: gpaPage, count: count)
    }

    /// Maps pages a child granted into the root's foreign window (MapGpaPages
    /// with a source partition). Returns the root GPA of the first page.
    /// Refused with ACCESS_DENIED when the child does not own every page.
    public func mapForeignPages(from id: PartitionID, gpaPages: [UInt64], writable: Bool) throws(HvStatus) -> UInt64 {
        try hypervisor.mapForeign(caller: caller, id: id, gpaPages: gpaPages, writable: writable)
    }

    /// Removes pages from the root's foreign window.
    public func unmapForeignPages(rootGPA: UInt64, count: Int) throws(HvStatus) {
        try hypervisor.unmapForeign(caller: caller, rootGPA: rootGPA, pages: count)
    }

    /// HvCallCreateVp (0x4E). Root only. VPs are created in index order.
    public func createVp(_ id: PartitionID, index: Int) throws(HvStatus) -> VirtualProcessor {
        try hypervisor.createVp(caller: caller, id: id, index: index)
    }

    /// HvCallCreatePort (0x95). Root only.
    public func createPort(in id: PartitionID, port: Partition.Port) throws(HvStatus) {
        try hypervisor.createPort(caller: caller, id: id, port: port)
    }

    /// HvCallDeletePort (0x58). Root only: removes a port and its connections.
    public func deletePort(in id: PartitionID, portID: UInt32) throws(HvStatus) {
        try hypervisor.deletePort(caller: caller, id: id, portID: portID)
    }

    /// HvCallConnectPort (0x96). Root only: lets `from` reach a port.
    public func connectPort(from: PartitionID, connectionID: UInt32, to portPartition: PartitionID, portID: UInt32) throws(HvStatus) {
        try hypervisor.connectPort(caller: caller, from: from, connectionID: connectionID, portPartition: portPartition, portID: portID)
    }

    /// HvCallPostMessage (0x5C). INSUFFICIENT_BUFFERS when the target's queue
    /// is full: retry with back-off.
    public func postMessage(connectionID: UInt32, type: UInt32, payload: [UInt8]) throws(HvStatus) {
        try hypervisor.postMessage(caller: caller, connectionID: connectionID, type: type, payload: payload)
    }

    /// HvCallSignalEvent (0x5D).
    public func signalEvent(connectionID: UInt32, flag: Int) throws(HvStatus) {
        try hypervisor.signalEvent(caller: caller, connectionID: connectionID, flag: flag)
    }
}
