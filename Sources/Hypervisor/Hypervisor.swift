import Foundation
import Logging
import Machine

/// The microkernel: partitions, virtual processors, guest-physical memory
/// maps and SynIC communication. Nothing else. It has no device code and does
/// not know what runs in a partition; it depends only on the Machine.
///
/// It starts by taking over the machine and creating the root partition,
/// whose RAM it maps deliberately out of order (2 MiB chunks reversed), so
/// root guest-physical addresses are never machine addresses.
public final class Hypervisor: @unchecked Sendable {
    // @unchecked Sendable: every mutable structure is guarded by `lock`.
    static let chunkPages = 512

    struct Connection {
        let portPartition: PartitionID
        let portID: UInt32
    }

    public let machine: Machine
    public private(set) var root: Partition!
    /// Root guest-physical range where granted child pages are shown.
    public let foreignWindow: Range<UInt64>

    let lock = NSLock()
    private var partitions: [PartitionID: Partition] = [:]
    private var nextPartition: PartitionID = 1
    /// (calling partition, connection id) -> port.
    private var connections: [PartitionID: [UInt32: Connection]] = [:]
    private var calls: [HypercallCode: Int] = [:]
    private var foreignPages: PageAllocator
    private let logger = Logger(label: "oyako.hypervisor")

    /// Takes over `machine` and creates the root partition with `rootMemory`
    /// bytes of RAM (whole 2 MiB chunks) and a foreign window of
    /// `foreignWindow` bytes above it.
    public init(machine: Machine, rootMemory: Int, foreignWindow: Int = 256 << 20) throws {
        self.machine = machine
        let chunk = Self.chunkPages * PhysicalMemory.pageSize
        let ramSize = (rootMemory + chunk - 1) / chunk * chunk
        self.foreignWindow = UInt64(ramSize)..<UInt64(ramSize + foreignWindow)
        self.foreignPages = PageAllocator(firstPage: UInt64(ramSize / PhysicalMemory.pageSize), pageCount: foreignWindow / PhysicalMemory.pageSize)
        let root = try Partition(id: nextPartition, privileges: .root, addressSpaceSize: ramSize + foreignWindow, memory: machine.memory, hypervisor: self)
        nextPartition += 1
        let chunks = ramSize / chunk
        for i in 0..<chunks {
            guard let spaPage = machine.pages.allocate(Self.chunkPages) else {
                throw HvStatus.insufficientMemory
            }
            // GPA chunk i lives in the i-th allocated chunk from the end.
            let gpaChunk = chunks - 1 - i
            try installLocked(root, gpaPage: UInt64(gpaChunk * Self.chunkPages), machinePages: Array(spaPage..<(spaPage + UInt64(Self.chunkPages))))
        }
        root.state = .initialized
        root.vps = [VirtualProcessor(partition: root.id, index: 0)]
        partitions[root.id] = root
        self.root = root
        logger.info("hypervisor started; root partition \(root.id) with \(ramSize >> 20) MiB")
    }

    // MARK: Queries

    public func partition(_ id: PartitionID) -> Partition? { lock.withLock { partitions[id] } }

    public func state(of id: PartitionID) -> Partition.State? { lock.withLock { partitions[id]?.state } }

    /// Hypercalls made so far, by call code.
    public var hypercallCounts: [HypercallCode: Int] { lock.withLock { calls } }

    func count(_ code: HypercallCode) { calls[code, default: 0] += 1 }

    /// The machine address behind `gpa` in `partition`, if mapped.
    public func machineAddress(partition id: PartitionID, gpa: UInt64) -> PhysicalAddress? {
        lock.withLock {
            guard let entry = partitions[id]?.map[gpa / UInt64(PhysicalMemory.pageSize)] else { return nil }
            return entry.machinePage * UInt64(PhysicalMemory.pageSize) + gpa % UInt64(PhysicalMemory.pageSize)
        }
    }

    /// Machine runs behind [gpa, +length) of a partition: each element is a
    /// contiguous machine range. Nil if any page is unmapped.
    public func machineRuns(partition id: PartitionID, gpa: UInt64, length: Int) -> [(machine: PhysicalAddress, length: Int)]? {
        lock.withLock {
            guard let p = partitions[id] else { return nil }
            var runs: [(PhysicalAddress, Int)] = []
            var address = gpa
            var remaining = length
            let page = UInt64(PhysicalMemory.pageSize)
            while remaining > 0 {
                guard let entry = p.map[address / page] else { return nil }
                let offset = address % page
                let n = min(remaining, Int(page - offset))
                let spa = entry.machinePage * page + offset
                if let last = runs.last, last.0 + UInt64(last.1) == spa {
                    runs[runs.count - 1].1 += n
                } else {
                    runs.append((spa, n))
                }
                address += UInt64(n)
                remaining -= n
            }
            return runs
        }
    }

    // MARK: Memory plumbing (under `lock`)

    /// Maps machine pages at consecutive GPA pages, in the map and the view.
    private func installLocked(_ p: Partition, gpaPage: UInt64, machinePages: [UInt64], writable: Bool = true, foreignOwner: PartitionID? = nil) throws {
        var i = 0
        while i < machinePages.count {
            var run = 1
            while i + run < machinePages.count && machinePages[i + run] == machinePages[i] + UInt64(run) { run += 1 }
            try p.memory.map(offset: Int(gpaPage + UInt64(i)) * PhysicalMemory.pageSize, machineAddress: machinePages[i] * UInt64(PhysicalMemory.pageSize), length: run * PhysicalMemory.pageSize)
            i += run
        }
        for (k, spa) in machinePages.enumerated() {
            p.map[gpaPage + UInt64(k)] = Partition.PageMapping(machinePage: spa, writable: writable, foreignOwner: foreignOwner)
        }
    }

    private func removeLocked(_ p: Partition, gpaPage: UInt64, count: Int) -> [UInt64] {
        var freed: [UInt64] = []
        for k in 0..<count {
            if let entry = p.map.removeValue(forKey: gpaPage + UInt64(k)) { freed.append(entry.machinePage) }
        }
        try? p.memory.unmap(offset: Int(gpaPage) * PhysicalMemory.pageSize, length: count * PhysicalMemory.pageSize)
        return freed
    }

    // MARK: Hypercall implementations (reached through `Hypercalls`)

    func createPartition(caller: PartitionID, memorySize: Int) throws(HvStatus) -> PartitionID {
        try lock.locked { () throws(HvStatus) -> PartitionID in
            try admit(.createPartition, caller)
            guard memorySize > 0, memorySize % PhysicalMemory.pageSize == 0, memorySize <= 1 << 32 else { throw .invalidParameter }
            let id = nextPartition
            do {
                let p = try Partition(id: id, privileges: .guest, addressSpaceSize: memorySize, memory: machine.memory, hypervisor: self)
                partitions[id] = p
            } catch {
                throw .insufficientMemory
            }
            nextPartition += 1
            return id
        }
    }

    func initializePartition(caller: PartitionID, id: PartitionID) throws(HvStatus) {
        try lock.locked { () throws(HvStatus) in
            try admit(.initializePartition, caller)
            let p = try child(id)
            guard p.state == .created else { throw .invalidPartitionState }
            p.state = .initialized
        }
    }

    /// Stops the partition's VPs: no partition code runs after this.
    func finalizePartition(caller: PartitionID, id: PartitionID) throws(HvStatus) {
        let vps = try lock.locked { () throws(HvStatus) -> [VirtualProcessor] in
            try admit(.finalizePartition, caller)
            let p = try child(id)
            guard p.state == .initialized else { throw .invalidPartitionState }
            p.state = .finalized
            return p.vps
        }
        for vp in vps { vp.stop() }
    }

    /// Frees everything: GPA pages back to the machine, ports, connections,
    /// and every view of its pages in the root's foreign window.
    func deletePartition(caller: PartitionID, id: PartitionID) throws(HvStatus) {
        try lock.locked { () throws(HvStatus) in
            try admit(.deletePartition, caller)
            let p = try child(id)
            guard p.state == .finalized || p.state == .created else { throw .invalidPartitionState }
            // Revoke the root's views of this child's pages first.
            let shown = root.map.filter { $0.value.foreignOwner == id }.map(\.key)
            for gpaPage in shown {
                _ = removeLocked(root, gpaPage: gpaPage, count: 1)
                foreignPages.free(gpaPage, count: 1)
            }
            let pages = Array(p.map.keys)
            var freed: [UInt64] = []
            for gpaPage in pages { freed += removeLocked(p, gpaPage: gpaPage, count: 1) }
            freed += p.deposited
            p.deposited.removeAll()
            for spa in freed { machine.pages.free(spa, count: 1) }
            connections[id] = nil
            for (caller, table) in connections {
                connections[caller] = table.filter { $0.value.portPartition != id }
            }
            p.state = .deleted
            partitions[id] = nil
        }
    }

    func depositMemory(caller: PartitionID, id: PartitionID, pages: Int) throws(HvStatus) {
        try lock.locked { () throws(HvStatus) in
            try admit(.depositMemory, caller)
            let p = try child(id)
            guard pages > 0 else { throw .invalidParameter }
            var taken: [UInt64] = []
            for _ in 0..<pages {
                guard let page = machine.pages.allocate(1) else {
                    for t in taken { machine.pages.free(t, count: 1) }
                    throw .insufficientMemory
                }
                taken.append(page)
            }
            p.deposited += taken
        }
    }

    func withdrawMemory(caller: PartitionID, id: PartitionID, pages: Int) throws(HvStatus) -> Int {
        try lock.locked { () throws(HvStatus) -> Int in
            try admit(.withdrawMemory, caller)
            let p = try child(id)
            let n = min(pages, p.deposited.count)
            for spa in p.deposited.suffix(n) { machine.pages.free(spa, count: 1) }
            p.deposited.removeLast(n)
            return n
        }
    }

    /// Maps deposited pages at GPA pages [gpaPage, +count) of the child.
    /// Reps one call does before it returns to its caller, as Hyper-V ends a
    /// rep hypercall when its time slice is up; the caller resumes it.
    public static let repsPerCall = 256

    /// HvCallMapGpaPages as a rep hypercall: maps deposited pages at GPA pages
    /// gpaBase + [start, repCount); does at most `repsPerCall` of them and
    /// returns the reps completed so far.
    func mapGpaPages(caller: PartitionID, id: PartitionID, gpaBase: UInt64, repCount: Int, repStart: Int, writable: Bool) throws(HvStatus) -> Int {
        try lock.locked { () throws(HvStatus) -> Int in
            try admit(.mapGpaPages, caller)
            let p = try child(id)
            guard p.state == .initialized else { throw .invalidPartitionState }
            guard repCount > 0, repStart >= 0, repStart < repCount,
                (gpaBase + UInt64(repCount)) * UInt64(PhysicalMemory.pageSize) <= UInt64(p.addressSpaceSize)
            else { throw .invalidParameter }
            let pages = min(Self.repsPerCall, repCount - repStart)
            let first = gpaBase + UInt64(repStart)
            guard (0..<pages).allSatisfy({ p.map[first + UInt64($0)] == nil }) else { throw .invalidParameter }
            guard p.deposited.count >= pages else { throw .insufficientMemory }
            let spa = Array(p.deposited.suffix(pages))
            p.deposited.removeLast(pages)
            do {
                try installLocked(p, gpaPage: first, machinePages: spa, writable: writable)
            } catch {
                p.deposited += spa
                throw .insufficientMemory
            }
            return repStart + pages
        }
    }

    /// HvCallUnmapGpaPages as a rep hypercall; the pages go back to the deposit.
    func unmapGpaPages(caller: PartitionID, id: PartitionID, gpaBase: UInt64, repCount: Int, repStart: Int) throws(HvStatus) -> Int {
        try lock.locked { () throws(HvStatus) -> Int in
            try admit(.unmapGpaPages, caller)
            let p = try child(id)
            guard repCount > 0, repStart >= 0, repStart < repCount else { throw .invalidParameter }
            let pages = min(Self.repsPerCall, repCount - repStart)
            p.deposited += removeLocked(p, gpaPage: gpaBase + UInt64(repStart), count: pages)
            return repStart + pages
        }
    }

    /// Shows child pages in the root's foreign window: the child granted
    /// them (a GPADL). Refused unless every page is mapped in the child.
    func mapForeign(caller: PartitionID, id: PartitionID, gpaPages: [UInt64], writable: Bool) throws(HvStatus) -> UInt64 {
        try lock.locked { () throws(HvStatus) -> UInt64 in
            try admit(.mapGpaPages, caller)
            let p = try child(id)
            guard !gpaPages.isEmpty else { throw .invalidParameter }
            var spa: [UInt64] = []
            for page in gpaPages {
                guard let entry = p.map[page] else { throw .accessDenied }
                if writable && !entry.writable { throw .accessDenied }
                spa.append(entry.machinePage)
            }
            guard let window = foreignPages.allocate(gpaPages.count) else { throw .insufficientMemory }
            do {
                try installLocked(root, gpaPage: window, machinePages: spa, writable: writable, foreignOwner: id)
            } catch {
                foreignPages.free(window, count: gpaPages.count)
                throw .insufficientMemory
            }
            return window * UInt64(PhysicalMemory.pageSize)
        }
    }

    func unmapForeign(caller: PartitionID, rootGPA: UInt64, pages: Int) throws(HvStatus) {
        try lock.locked { () throws(HvStatus) in
            try admit(.unmapGpaPages, caller)
            let first = rootGPA / UInt64(PhysicalMemory.pageSize)
            guard foreignWindow.contains(rootGPA), (0..<pages).allSatisfy({ root.map[first + UInt64($0)]?.foreignOwner != nil }) else {
                throw .invalidParameter
            }
            _ = removeLocked(root, gpaPage: first, count: pages)
            foreignPages.free(first, count: pages)
        }
    }

    func createVp(caller: PartitionID, id: PartitionID, index: Int) throws(HvStatus) -> VirtualProcessor {
        try lock.locked { () throws(HvStatus) -> VirtualProcessor in
            try admit(.createVp, caller)
            let p = try child(id)
            guard p.state == .initialized else { throw .invalidPartitionState }
            guard index == p.vps.count, index < 64 else { throw .invalidVPIndex }
            let vp = VirtualProcessor(partition: id, index: index)
            p.vps.append(vp)
            return vp
        }
    }

    func createPort(caller: PartitionID, id: PartitionID, port: Partition.Port) throws(HvStatus) {
        try lock.locked { () throws(HvStatus) in
            try admit(.createPort, caller)
            guard let p = partitions[id] else { throw .invalidPartitionID }
            guard port.vp < p.vps.count else { throw .invalidVPIndex }
            guard port.sint >= 0, port.sint < SynIC.sintCount, p.ports[port.id] == nil else { throw .invalidParameter }
            if case .event(let base, let count) = port.kind, base < 0 || count <= 0 || base + count > SynIC.flagsPerSINT {
                throw .invalidParameter
            }
            p.ports[port.id] = port
        }
    }

    /// Deletes a port and every connection to it.
    func deletePort(caller: PartitionID, id: PartitionID, portID: UInt32) throws(HvStatus) {
        try lock.locked { () throws(HvStatus) in
            try admit(.deletePort, caller)
            guard let p = partitions[id] else { throw .invalidPartitionID }
            guard p.ports.removeValue(forKey: portID) != nil else { throw .invalidPortID }
            for (from, table) in connections {
                connections[from] = table.filter { !($0.value.portPartition == id && $0.value.portID == portID) }
            }
        }
    }

    func connectPort(caller: PartitionID, from: PartitionID, connectionID: UInt32, portPartition: PartitionID, portID: UInt32) throws(HvStatus) {
        try lock.locked { () throws(HvStatus) in
            try admit(.connectPort, caller)
            guard partitions[from] != nil else { throw .invalidPartitionID }
            guard let target = partitions[portPartition] else { throw .invalidPartitionID }
            guard target.ports[portID] != nil else { throw .invalidPortID }
            guard connections[from]?[connectionID] == nil else { throw .invalidConnectionID }
            connections[from, default: [:]][connectionID] = Connection(portPartition: portPartition, portID: portID)
        }
    }

    func postMessage(caller: PartitionID, connectionID: UInt32, type: UInt32, payload: [UInt8]) throws(HvStatus) {
        let (synic, sint, origin) = try lock.locked { () throws(HvStatus) -> (SynIC, Int, UInt64) in
            try admit(.postMessage, caller)
            guard type != 0, type & 0x8000_0000 == 0, payload.count <= HvMessage.maxPayload else { throw .invalidParameter }
            let (target, port) = try resolve(caller, connectionID)
            guard port.kind == .message else { throw .invalidPortID }
            return (target.vps[port.vp].synic, port.sint, UInt64(port.id))
        }
        guard synic.enqueue(HvMessage(type: type, origin: origin, payload: payload), sint: sint) else { throw .insufficientBuffers }
    }

    func signalEvent(caller: PartitionID, connectionID: UInt32, flag: Int) throws(HvStatus) {
        let (synic, sint, bit) = try lock.locked { () throws(HvStatus) -> (SynIC, Int, Int) in
            try admit(.signalEvent, caller)
            let (target, port) = try resolve(caller, connectionID)
            guard case .event(let base, let flags) = port.kind else { throw .invalidPortID }
            guard flag >= 0, flag < flags else { throw .invalidParameter }
            return (target.vps[port.vp].synic, port.sint, base + flag)
        }
        _ = synic.setEventFlag(sint: sint, flag: bit)
    }

    // MARK: Device interrupts for the root

    /// Forwards a machine interrupt vector to the root's VP 0, whose OS
    /// handles it as an external interrupt; `enabled: false` stops it.
    public func forwardToRoot(vector: Int, enabled: Bool) {
        guard enabled else {
            machine.interrupts.setHandler(vector, nil)
            return
        }
        let vp = root.vps[0]
        machine.interrupts.setHandler(vector) { vp.injectVector(vector) }
    }

    // MARK: Checks

    /// Counts a hypercall and checks the caller holds the privilege it needs
    /// (HV_STATUS_ACCESS_DENIED otherwise).
    private func admit(_ code: HypercallCode, _ caller: PartitionID) throws(HvStatus) {
        count(code)
        guard let p = partitions[caller] else { throw .invalidPartitionID }
        guard p.privileges.contains(code.privilege) else { throw .accessDenied }
    }

    private func child(_ id: PartitionID) throws(HvStatus) -> Partition {
        guard let p = partitions[id], p.state != .deleted else { throw .invalidPartitionID }
        guard !p.isRoot else { throw .accessDenied }
        return p
    }

    private func resolve(_ caller: PartitionID, _ connectionID: UInt32) throws(HvStatus) -> (Partition, Partition.Port) {
        guard let connection = connections[caller]?[connectionID],
            let target = partitions[connection.portPartition], target.state != .finalized, target.state != .deleted
        else { throw .invalidConnectionID }
        guard let port = target.ports[connection.portID] else { throw .invalidPortID }
        return (target, port)
    }
}

extension NSLock {
    /// `withLock` with typed throws, so hypercall errors stay `HvStatus`.
    func locked<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lock()
        defer { unlock() }
        return try body()
    }
}
