/// The hypercalls a partition's code can make, bound to that partition.
///
/// Each partition receives its own instance (its "hypercall page"), so the
/// caller's identity comes from which instance is used, never from an
/// argument: a child cannot claim to be the root. Root-only calls made by a
/// child fail with HV_STATUS_ACCESS_DENIED.
public final class Hypercalls: Sendable {
    public let caller: PartitionID
    /// Weak: the hypervisor owns the partitions that own these. Code that
    /// keeps a partition's hypercalls past the hypervisor's end (a guest
    /// thread still winding down) gets an error, not a crash.
    private weak let owner: Hypervisor?

    init(caller: PartitionID, hypervisor: Hypervisor) {
        self.caller = caller
        self.owner = hypervisor
    }

    /// The hypervisor, while it exists; HV_STATUS_INVALID_PARTITION_STATE after.
    private var hypervisor: Hypervisor {
        get throws(HvStatus) {
            guard let owner else { throw .invalidPartitionState }
            return owner
        }
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

    /// HvCallMapGpaPages (0x4B), a rep hypercall. Root only: maps deposited
    /// pages into a child at [gpaPage, +count), resuming until every rep is done.
    public func mapGpaPages(_ id: PartitionID, gpaPage: UInt64, count: Int, writable: Bool = true) throws(HvStatus) {
        try repeatRep(.mapGpaPages, id, gpaBase: gpaPage, count: count,
                      flags: HypercallInput.mapReadable | (writable ? HypercallInput.mapWritable : 0))
    }

    /// HvCallUnmapGpaPages (0x4C), a rep hypercall. Root only.
    public func unmapGpaPages(_ id: PartitionID, gpaPage: UInt64, count: Int) throws(HvStatus) {
        try repeatRep(.unmapGpaPages, id, gpaBase: gpaPage, count: count, flags: 0)
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
    /// is full: retry with back-off. Goes through the encoded hypercall.
    public func postMessage(connectionID: UInt32, type: UInt32, payload: [UInt8]) throws(HvStatus) {
        guard payload.count <= HvMessage.maxPayload else { throw .invalidParameter }
        let status = invoke(HypercallControl(code: HypercallCode.postMessage.rawValue).rawValue,
                            input: HypercallInput.postMessage(connectionID: connectionID, type: type, payload: payload)).result
        try HypercallResult(rawValue: status).check()
    }

    /// HvCallSignalEvent (0x5D), a fast hypercall: {connection id, flag number} in registers.
    public func signalEvent(connectionID: UInt32, flag: Int) throws(HvStatus) {
        guard let number = UInt16(exactly: flag) else { throw .invalidParameter }
        let status = invoke(HypercallControl(code: HypercallCode.signalEvent.rawValue, fast: true).rawValue,
                            input: HypercallInput.signalEvent(connectionID: connectionID, flag: number)).result
        try HypercallResult(rawValue: status).check()
    }

    // MARK: The hypercall page

    /// A hypercall as the hypercall page takes it: the TLFS control word and
    /// the input (the input page for memory calls, RDX and R8 for fast ones).
    /// Returns the result word. Post, signal and the rep calls (map, unmap)
    /// take this path; other calls are made with their Swift methods.
    public func invoke(_ control: UInt64, input: [UInt8]) -> (result: UInt64, output: [UInt8]) {
        let done: HypercallResult
        do {
            done = try dispatch(try HypercallControl(rawValue: control), input)
        } catch {
            let start = (try? HypercallControl(rawValue: control))?.repStartIndex ?? 0
            done = HypercallResult(status: error, repsCompleted: start)
        }
        return (done.rawValue, [])
    }

    private func dispatch(_ control: HypercallControl, _ input: [UInt8]) throws(HvStatus) -> HypercallResult {
        guard let code = HypercallCode(rawValue: control.code) else { throw .invalidHypercallCode }
        guard !control.isNested, control.variableHeaderSize == 0 else { throw .invalidHypercallInput }
        if code.isRep {
            guard control.repCount > 0, control.repStartIndex < control.repCount, !control.fast else { throw .invalidHypercallInput }
        } else {
            guard control.repCount == 0, control.repStartIndex == 0 else { throw .invalidHypercallInput }
        }
        var r = HypercallInput.Reader(input)
        switch code {
        case .postMessage:
            let connection = try r.u32()
            guard try r.u32() == 0 else { throw .invalidHypercallInput }
            let type = try r.u32(), size = try r.u32()
            guard size <= UInt32(HvMessage.maxPayload) else { throw .invalidParameter }
            try hypervisor.postMessage(caller: caller, connectionID: connection, type: type, payload: try r.bytes(Int(size)))
            return HypercallResult(status: .success)
        case .signalEvent:
            let connection = try r.u32(), flag = try r.u16()
            guard try r.u16() == 0 else { throw .invalidHypercallInput }
            try hypervisor.signalEvent(caller: caller, connectionID: connection, flag: Int(flag))
            return HypercallResult(status: .success)
        case .mapGpaPages, .unmapGpaPages:
            let partition = try r.u64(), gpaBase = try r.u64(), flags = try r.u32()
            guard try r.u32() == 0 else { throw .invalidHypercallInput }
            let count = Int(control.repCount), start = Int(control.repStartIndex)
            let completed = code == .mapGpaPages
                ? try hypervisor.mapGpaPages(caller: caller, id: partition, gpaBase: gpaBase, repCount: count, repStart: start,
                                             writable: flags & HypercallInput.mapWritable != 0)
                : try hypervisor.unmapGpaPages(caller: caller, id: partition, gpaBase: gpaBase, repCount: count, repStart: start)
            return HypercallResult(status: .success, repsCompleted: UInt16(completed))
        default:
            throw .invalidHypercallCode
        }
    }

    /// Issues a GPA-page rep hypercall over [gpaBase, +count) in calls of at
    /// most 4095 reps, resuming each from the reps completed until all are done.
    private func repeatRep(_ code: HypercallCode, _ id: PartitionID, gpaBase: UInt64, count: Int, flags: UInt32) throws(HvStatus) {
        guard count > 0 else { throw .invalidParameter }
        var done = 0
        while done < count {
            let batch = min(count - done, Int(HypercallControl.maxReps))
            let header = HypercallInput.gpaPages(partition: id, gpaBase: gpaBase + UInt64(done), flags: flags)
            var start = 0
            while start < batch {
                let control = HypercallControl(code: code.rawValue, repCount: UInt16(batch), repStartIndex: UInt16(start))
                let result = HypercallResult(rawValue: invoke(control.rawValue, input: header).result)
                try result.check()
                guard Int(result.repsCompleted) > start else { throw .invalidParameter }
                start = Int(result.repsCompleted)
            }
            done += batch
        }
    }
}
