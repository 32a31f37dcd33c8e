@_spi(Conformance) import DriverHost
import Foundation
import Machine
import Synchronization
import Workloads

/// What a block request asks of a disk, in the block layer's own terms.
public enum DiskOperation: String, Sendable {
    case read, write, flush

    /// The driver ABI's operation, at the one place the layer hands a
    /// request to a driver.
    var driverOperation: BlockRequest.Operation {
        switch self {
        case .read: .read
        case .write: .write
        case .flush: .flush
        }
    }
}

/// How a block request ended, in the block layer's own terms: what a
/// caller can act on, with the driver's code kept for the report.
public enum DiskStatus: Sendable, Equatable, CustomStringConvertible {
    case ok
    /// Malformed: no blocks, more than the disk takes at once, no memory.
    case invalid
    /// Beyond the end of the disk.
    case outOfRange
    /// The disk's device was removed.
    case deviceGone
    /// No completion within the wait.
    case timedOut
    /// Withdrawn before the device did it (a driver detached with it).
    case canceled
    /// The OS ran out of I/O memory for it.
    case noMemory
    /// The device's DMA was refused by the IOMMU (the driver gave it a bad address).
    case dmaFault
    /// The device or its driver failed it; the driver's code, named.
    case failed(String)

    public var isOK: Bool { self == .ok }

    /// The one mapping from the driver ABI's codes.
    init(_ status: OyStatus) {
        switch status {
        case .ok: self = .ok
        case .invalid: self = .invalid
        case .range: self = .outOfRange
        case .deviceGone: self = .deviceGone
        case .timeout: self = .timedOut
        case .canceled: self = .canceled
        case .noMemory: self = .noMemory
        case .dmaFault: self = .dmaFault
        default: self = .failed(status.description)
        }
    }

    public var description: String {
        switch self {
        case .ok: "ok"
        case .invalid: "invalid request"
        case .outOfRange: "out of range"
        case .deviceGone: "device gone"
        case .timedOut: "timed out"
        case .canceled: "canceled"
        case .noMemory: "out of I/O memory"
        case .dmaFault: "DMA fault"
        case .failed(let driver): "device error (\(driver))"
        }
    }
}

/// A block I/O failure: which disk, what operation, where, and how it ended.
public struct BlockError: Error, CustomStringConvertible, Sendable {
    public let disk: String
    public let operation: DiskOperation
    public let lba: UInt64
    public let status: DiskStatus

    public var description: String { "\(disk): \(operation) at LBA \(lba) failed: \(status)" }
}

/// Memory for I/O: pages of the OS's own physical memory, which a driver may
/// hand to its device with dma_map. Freed when the buffer is released.
public final class IOBuffer: @unchecked Sendable {
    // @unchecked Sendable: a fixed region; users synchronise on the bytes.
    public let pointer: UnsafeMutableRawPointer
    public let length: Int
    private let memory: KernelMemory
    private let physical: UInt64
    private let pages: Int

    init?(memory: KernelMemory, length: Int, offset: Int = 0) {
        guard let (physical, pages) = memory.allocate(bytes: length + offset), let base = memory.pointer(physical) else { return nil }
        self.memory = memory
        self.physical = physical
        self.pages = pages
        self.pointer = base + offset
        self.length = length
    }

    deinit { memory.free(physical: physical, pages: pages) }

    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: pointer, count: length) }
}

/// Whoever serves a disk now: a driver's registration in the OS's own
/// process, or one in a driver-host process.
public protocol DiskDriverBinding: DriverBinding {
    var geometry: BlockGeometry { get }
    /// Hands `request` to the driver: on `.ok` its completion runs later,
    /// exactly once; `.busy` puts it back at the head of the queue.
    func submit(_ request: BlockRequest) -> OyStatus
}

extension RegisteredDisk: DiskDriverBinding {}

/// A disk as the OS's block layer presents it: asynchronous submission with
/// a software queue above the driver's depth, and a synchronous convenience
/// API for workloads.
public final class Disk: @unchecked Sendable {
    // @unchecked Sendable: queue state is guarded by `lock`.
    public let name: String
    /// Whoever serves the disk now (a replacement or a restart changes it).
    public var driver: any DiskDriverBinding { lock.withLock { current } }
    /// The in-process registration serving the disk, if that is what serves it.
    public var registered: RegisteredDisk? { driver as? RegisteredDisk }
    private var current: any DiskDriverBinding
    /// Set while the driver behind the disk is being replaced or restarted:
    /// its unregistration then leaves the disk in place for the next driver.
    private var awaitingDriver = false
    /// Set while the driver is restarted after a failure: what it accepted
    /// and gives back unfinished is kept for the next driver, not failed.
    private var recovering = false
    private var toReissue: [Issued] = []
    /// When each request a driver has now was handed to it, and to which.
    private var handedOver: [ObjectIdentifier: (at: ContinuousClock.Instant, to: ObjectIdentifier)] = [:]
    private var nextSequence: UInt64 = 0
    /// By token, in the order they came (tokens only grow).
    private var removalObservers: [UInt64: @Sendable (String) -> Void] = [:]
    private var nextRemovalObserver: UInt64 = 0
    /// Fixed for the disk's life: a replacement driver must serve the same
    /// block size and count, at least the same transfer size and flushing.
    public let geometry: BlockGeometry
    /// Which driver and device serve it ("nvmelite@00:01.0").
    public var driverLabel: String { driver.label }

    private let memory: KernelMemory
    private let lock = NSLock()
    private let spare = QuarantinePool { BlockRequest() }
    private let queue: SubmissionQueue<BlockRequest>

    public struct Statistics: Sendable {
        public var submitted = 0
        public var completed = 0
        public var failed = 0
        public var bytesRead: UInt64 = 0
        public var bytesWritten: UInt64 = 0
        public var queuedInSoftware = 0
        /// Requests a failed driver had accepted and not finished, handed
        /// again to its restarted successor.
        public var reissued = 0
    }

    /// A request as its caller made it: enough to hand it to another driver.
    private struct Issued: @unchecked Sendable {
        // @unchecked Sendable: `memory` stays valid until `completion` runs (the caller's promise).
        let request: BlockRequest
        let operation: DiskOperation
        let lba: UInt64
        let blocks: Int
        let memory: UnsafeMutableRawPointer?
        let sequence: UInt64
        let completion: @Sendable (DiskStatus) -> Void
        /// Under the verifier: where the driver gets the data instead.
        var guarded: GuardedData? = nil
        /// The data as the driver sees it.
        var driverMemory: UnsafeMutableRawPointer? { guarded?.data ?? memory }
    }

    private var stats = Statistics()

    init(name: String, registered: any DiskDriverBinding, memory: KernelMemory) {
        self.name = name
        self.current = registered
        self.geometry = registered.geometry
        self.memory = memory
        queue = SubmissionQueue(depth: registered.geometry.queueDepth, submit: { _ in .deviceGone }, fail: { $0.finishUnsubmitted($1) })
        queue.resume(submit: handOver(to: registered))
    }

    /// The queue's way to the driver: notes when each request went, for
    /// `oldestWithDriver`.
    private func handOver(to registration: any DiskDriverBinding) -> (BlockRequest) -> OyStatus {
        { [weak self] request in
            let key = ObjectIdentifier(request)
            self?.noteHandedOver(key, to: registration)
            let status = registration.submit(request)
            guard !status.isOK, let self else { return status }
            _ = lock.withLock { handedOver.removeValue(forKey: key) }  // not taken: never with the driver
            // Refused by a driver the disk moved on from while this submit
            // ran (a restart or replacement detached it meanwhile; it says
            // STATE or DEVICE_GONE): the request was never its to refuse.
            // Back to the queue as if busy, for whichever driver serves next.
            return status != .busy && hasMovedOn(from: registration) ? .busy : status
        }
    }

    /// Whether `registration` no longer serves the disk, or is on its way out.
    private func hasMovedOn(from registration: any DiskDriverBinding) -> Bool {
        lock.withLock { awaitingDriver || current !== registration }
    }

    private func noteHandedOver(_ key: ObjectIdentifier, to registration: any DiskDriverBinding) {
        lock.withLock { handedOver[key] = (.now, ObjectIdentifier(registration)) }
    }

    /// How long the oldest request the driver has now has been with it
    /// (nil when it has none): what a hang watchdog looks at.
    public var oldestWithDriver: Duration? {
        lock.withLock {
            // Only the current driver's: a submit still running in one a restart detached is not this one's hang.
            let serving = ObjectIdentifier(current)
            return handedOver.values.filter { $0.to == serving }.map(\.at).min().map { ContinuousClock.now - $0 }
        }
    }

    // MARK: Live replacement and recovery

    /// Holds new requests in software and waits until the driver has
    /// completed everything it accepted; false if it has not by `deadline`.
    func beginReplacement(deadline: Date) -> Bool {
        lock.withLock { awaitingDriver = true }
        return queue.hold(until: deadline)
    }

    /// The driver failed (hung, or its host died): new requests wait in
    /// software, and what it gives back unfinished (canceled, failed) is
    /// kept to hand to the next driver, in the order callers submitted it.
    /// A submit under way is let return for up to `callWait` before the
    /// driver is detached (bounded: the driver may be hung in it); one that
    /// returns later with a refusal has its request go to the next driver.
    func beginRecovery(callWait: Duration) {
        lock.withLock {
            awaitingDriver = true
            recovering = true
        }
        _ = queue.hold(until: .distantPast)
        _ = queue.waitForCalls(until: Date(timeIntervalSinceNow: callWait.seconds))
    }

    /// Requests a failed driver gave back, waiting for the next one.
    var pendingReissue: Int { lock.withLock { toReissue.count } }

    /// Whether a driver is being replaced or restarted: a new registration
    /// of the same device takes the disk over.
    var awaitsDriver: Bool { lock.withLock { awaitingDriver } }

    /// The next driver registered the same device: requests go to it.
    /// Refused (false) when its geometry is not the disk's.
    func rebind(_ registration: any DiskDriverBinding) -> Bool {
        let g = registration.geometry, old = geometry
        guard g.blockSize == old.blockSize, g.blockCount == old.blockCount, g.maxTransferBlocks >= old.maxTransferBlocks,
            g.canFlush == old.canFlush
        else { return false }
        lock.withLock { current = registration }
        return true
    }

    /// Ends a replacement or recovery: what the failed driver gave back goes
    /// first, in submission order, then what was held, to whichever driver
    /// is current.
    func endReplacement() {
        let (registration, reissue) = lock.withLock { () -> (any DiskDriverBinding, [Issued]) in
            awaitingDriver = false
            recovering = false
            defer { toReissue = [] }
            stats.reissued += toReissue.count
            return (current, toReissue.sorted { $0.sequence < $1.sequence })
        }
        for issued in reissue { prepare(issued) }
        queue.putBack(reissue.map(\.request))
        queue.resume(submit: handOver(to: registration), depth: registration.geometry.queueDepth)
    }

    /// Recovery gave up: what the failed driver gave back fails with
    /// `.deviceGone`, and so does everything held (the disk is removed).
    func abandonRecovery() {
        let reissue = lock.withLock { () -> [Issued] in
            awaitingDriver = false
            recovering = false
            defer { toReissue = [] }
            return toReissue
        }
        for issued in reissue { deliver(issued, .deviceGone) }
    }

    /// Calls `observer` once, with the reason, when the disk is removed
    /// (its device gone, or its driver beyond recovery), unless
    /// `stopObservingRemoval` takes it back first with the token returned.
    @discardableResult
    public func onRemoval(_ observer: @escaping @Sendable (String) -> Void) -> RemovalObserver {
        lock.withLock {
            defer { nextRemovalObserver += 1 }
            removalObservers[nextRemovalObserver] = observer
            return RemovalObserver(token: nextRemovalObserver)
        }
    }

    /// Forgets an observer (its user is gone: a child destroyed).
    public func stopObservingRemoval(_ observer: RemovalObserver) {
        _ = lock.withLock { removalObservers.removeValue(forKey: observer.token) }
    }

    /// What `onRemoval` returns, to take the observer back.
    public struct RemovalObserver: Hashable, Sendable {
        fileprivate let token: UInt64
    }

    /// Removal observers registered now.
    public var removalObserverCount: Int { lock.withLock { removalObservers.count } }

    /// Requests held in software now.
    public var heldRequests: Int { queue.waitingCount }

    public var statistics: Statistics { lock.withLock { stats } }

    /// Allocates I/O memory of `length` bytes, starting `offset` bytes into
    /// its first page (to exercise unaligned buffers).
    public func allocateBuffer(length: Int, offset: Int = 0) -> IOBuffer? {
        IOBuffer(memory: memory, length: length, offset: offset)
    }

    /// Submits asynchronously. `completion` runs exactly once, possibly on
    /// the interrupt thread; keep it short. `buffer` must stay alive until
    /// then (the request holds it).
    public func submit(_ operation: DiskOperation, lba: UInt64, blocks: Int, buffer: IOBuffer?, bufferOffset: Int = 0,
                       completion: @escaping @Sendable (DiskStatus) -> Void)
    {
        if operation != .flush {
            guard let buffer, bufferOffset >= 0, bufferOffset + blocks * geometry.blockSize <= buffer.length else {
                completion(.invalid)
                return
            }
        }
        submit(operation, lba: lba, blocks: blocks, memory: buffer.map { $0.pointer + bufferOffset }) { status in
            withExtendedLifetime(buffer) {}
            completion(status)
        }
    }

    /// Submits asynchronously with data at `memory`: `blocks` × block size
    /// bytes of the OS's own physical memory (an IOBuffer, or pages another
    /// partition granted and the OS mapped). The caller keeps it valid until
    /// `completion` runs.
    public func submit(_ operation: DiskOperation, lba: UInt64, blocks: Int, memory: UnsafeMutableRawPointer?,
                       completion: @escaping @Sendable (DiskStatus) -> Void)
    {
        if let problem = check(operation, lba: lba, blocks: blocks, memory: memory) {
            completion(problem)
            return
        }
        // Completed requests rest in quarantine before reuse, oldest first:
        // a driver's late second complete() then finds the request not
        // outstanding instead of completing someone else's.
        let guarded = operation == .flush || !Verifier.guardsRequestData
            ? nil : guardedCopy(of: memory!, length: blocks * geometry.blockSize, write: operation == .write)
        let issued = lock.withLock { () -> Issued in
            let request = spare.take()
            stats.submitted += 1
            nextSequence += 1
            return Issued(request: request, operation: operation, lba: lba, blocks: blocks, memory: memory, sequence: nextSequence, completion: completion,
                          guarded: guarded)
        }
        prepare(issued)
        let request = issued.request
        switch queue.enqueue(request) {
        case .dispatched: break
        case .queued: lock.withLock { stats.queuedInSoftware += 1 }
        case .refused: request.finishUnsubmitted(.deviceGone)
        }
    }

    private func check(_ operation: DiskOperation, lba: UInt64, blocks: Int, memory: UnsafeMutableRawPointer?) -> DiskStatus? {
        if queue.isRemoved { return .deviceGone }
        if operation == .flush { return nil }
        guard blocks > 0, blocks <= geometry.maxTransferBlocks, memory != nil else { return .invalid }
        guard lba < geometry.blockCount, UInt64(blocks) <= geometry.blockCount - lba else { return .outOfRange }
        return nil
    }

    /// Fills the request for the driver; its completion comes to `driverFinished`.
    private func prepare(_ issued: Issued) {
        let blocks = issued.operation == .flush ? 0 : issued.blocks
        issued.request.prepare(issued.operation.driverOperation, lba: issued.lba, blockCount: blocks, data: issued.driverMemory) { [weak self] status in
            guard let self else { return issued.completion(DiskStatus(status)) }
            self.driverFinished(issued, DiskStatus(status))
        }
    }

    /// The driver finished a request, or it never reached one. During a
    /// recovery, anything but success is kept for the next driver; so is a
    /// failure from a driver the disk has moved on from since (it was
    /// canceled when a submit outlasted the restart's wait for it).
    private func driverFinished(_ issued: Issued, _ status: DiskStatus) {
        enum Fate { case deliver, kept, again }
        let fate = lock.withLock { () -> Fate in
            let handed = handedOver.removeValue(forKey: ObjectIdentifier(issued.request))
            guard !status.isOK else { return .deliver }
            if recovering {
                toReissue.append(issued)
                return .kept
            }
            guard let handed, handed.to != ObjectIdentifier(current) else { return .deliver }
            stats.reissued += 1
            return .again
        }
        switch fate {
        case .deliver: deliver(issued, status)
        case .kept: queue.completed()
        case .again:
            prepare(issued)
            queue.putBack([issued.request])
            queue.completed()
        }
    }

    /// A request's data under the verifier (as Driver Verifier's special
    /// pool): OS pages of its own, at the same offset into a page as the
    /// caller's, with guard bytes before and after it, so a driver that
    /// writes outside the data (a bounce copy rounded up to a page) is
    /// caught and corrupts nothing of the caller's.
    struct GuardedData: @unchecked Sendable {
        // @unchecked Sendable: the pages are the request's until it is delivered.
        let physical: UInt64
        let pages: Int
        let data: UnsafeMutableRawPointer
        let before: Int
        let length: Int
        static let band = 256
        static let byte: UInt8 = 0xA7
    }

    private func guardedCopy(of memory: UnsafeMutableRawPointer, length: Int, write: Bool) -> GuardedData? {
        let before = Int(UInt(bitPattern: memory) % UInt(PhysicalMemory.pageSize))
        let span = before + length + GuardedData.band
        guard let (physical, pages) = self.memory.allocate(bytes: span), let base = self.memory.pointer(physical) else { return nil }
        base.initializeMemory(as: UInt8.self, repeating: GuardedData.byte, count: pages * PhysicalMemory.pageSize)
        if write { (base + before).copyMemory(from: memory, byteCount: length) }
        return GuardedData(physical: physical, pages: pages, data: base + before, before: before, length: length)
    }

    /// What the driver wrote outside the data, reported; for a read that
    /// succeeded, the data copied to the caller; the pages freed.
    private func release(_ g: GuardedData, of issued: Issued, _ status: DiskStatus) {
        let base = g.data - g.before, end = g.before + g.length, total = g.pages * PhysicalMemory.pageSize
        let bytes = UnsafeRawBufferPointer(start: base, count: total)
        let under = bytes[..<g.before].firstIndex { $0 != GuardedData.byte }
        let over = bytes[end...].firstIndex { $0 != GuardedData.byte }
        if under != nil || over != nil {
            let what = "\(issued.operation) of \(issued.blocks) block(s) at LBA \(issued.lba)"
            let message = over.map { "the driver wrote past the end of the data of a \(what) (byte \($0 - end) after it); write only block_count × block_size bytes" }
                ?? "the driver wrote before the start of the data of a \(what) (\(g.before - under!) byte(s) before it)"
            let binding = driver
            if let registered = binding as? RegisteredDisk {
                registered.reportViolation(message)
            } else {
                ViolationLog.recordForwarded(.init(driver: binding.driverName, callback: nil, message: message))
            }
        }
        if issued.operation == .read, status.isOK, let memory = issued.memory { memory.copyMemory(from: g.data, byteCount: g.length) }
        self.memory.free(physical: g.physical, pages: g.pages)
    }

    /// Counts the request, frees its slot and tells the caller.
    private func deliver(_ issued: Issued, _ status: DiskStatus) {
        if let guarded = issued.guarded { release(guarded, of: issued, status) }
        let length = UInt64(issued.blocks * geometry.blockSize)
        lock.withLock {
            if status.isOK {
                stats.completed += 1
                if issued.operation == .read { stats.bytesRead += length }
                if issued.operation == .write { stats.bytesWritten += length }
            } else {
                stats.failed += 1
            }
        }
        spare.give(issued.request)
        queue.completed()
        issued.completion(status)
    }

    /// The disk is gone (device removed, or its driver beyond recovery):
    /// everything still queued in software fails, and observers hear why.
    func markRemoved(reason: String) {
        queue.markRemoved()
        let observers = lock.withLock { () -> [@Sendable (String) -> Void] in
            defer { removalObservers = [:] }
            return removalObservers.sorted { $0.key < $1.key }.map(\.value)
        }
        for observer in observers { observer(reason) }
    }

    // MARK: Synchronous convenience

    /// Runs one request and waits for it.
    public func perform(_ operation: DiskOperation, lba: UInt64, blocks: Int, buffer: IOBuffer?, bufferOffset: Int = 0,
                        timeout: Duration = .seconds(30)) throws(BlockError)
    {
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<DiskStatus>(.timedOut)
        submit(operation, lba: lba, blocks: blocks, buffer: buffer, bufferOffset: bufferOffset) { status in
            result.withLock { $0 = status }
            done.signal()
        }
        let seconds = timeout.seconds
        let status: DiskStatus = done.wait(timeout: .now() + seconds) == .timedOut ? .timedOut : result.withLock { $0 }
        try check(status, of: operation, at: lba)
    }

    /// Nothing if `status` is OK; otherwise the error it is for `operation`
    /// at `lba` on this disk (for callers that collect statuses themselves).
    public func check(_ status: DiskStatus, of operation: DiskOperation, at lba: UInt64) throws(BlockError) {
        guard status.isOK else { throw BlockError(disk: name, operation: operation, lba: lba, status: status) }
    }

    /// Reads `count` bytes (a multiple of the block size) from `lba`.
    public func read(lba: UInt64, count: Int) throws(BlockError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try transfer(.read, lba: lba, count: count) { chunk, offset in
            out.withUnsafeMutableBytes { $0.baseAddress!.advanced(by: offset).copyMemory(from: chunk.baseAddress!, byteCount: chunk.count) }
        }
        return out
    }

    /// Writes `bytes` (a multiple of the block size) at `lba`.
    public func write(lba: UInt64, bytes: [UInt8]) throws(BlockError) {
        try transfer(.write, lba: lba, count: bytes.count) { chunk, offset in
            bytes.withUnsafeBytes { chunk.baseAddress!.copyMemory(from: $0.baseAddress!.advanced(by: offset), byteCount: chunk.count) }
        }
    }

    /// Makes every completed write durable.
    public func flush() throws(BlockError) {
        try perform(.flush, lba: 0, blocks: 0, buffer: nil)
    }

    /// Splits a transfer into requests the driver accepts, bouncing through
    /// I/O memory (user memory is not DMA-able, as on a real OS).
    private func transfer(_ operation: DiskOperation, lba: UInt64, count: Int,
                          copy: (UnsafeMutableRawBufferPointer, Int) -> Void) throws(BlockError)
    {
        let blockSize = geometry.blockSize
        guard count > 0, count % blockSize == 0 else {
            throw BlockError(disk: name, operation: operation, lba: lba, status: .invalid)
        }
        let maxBytes = geometry.maxTransferBlocks * blockSize
        guard let buffer = allocateBuffer(length: min(count, maxBytes)) else {
            throw BlockError(disk: name, operation: operation, lba: lba, status: .noMemory)
        }
        var offset = 0
        while offset < count {
            let length = min(maxBytes, count - offset)
            let chunk = UnsafeMutableRawBufferPointer(start: buffer.pointer, count: length)
            let chunkLBA = lba + UInt64(offset / blockSize)
            if operation == .write { copy(chunk, offset) }
            try perform(operation, lba: chunkLBA, blocks: length / blockSize, buffer: buffer)
            if operation == .read { copy(chunk, offset) }
            offset += length
        }
    }
}

/// The OS's registry of disks, named in order of registration.
public final class BlockLayer: ClassSubsystem {
    private let named = NamedDevices<Disk>(prefix: "disk")
    let memory: KernelMemory
    let deviceClass = RegisteredDisk.classID

    init(memory: KernelMemory) { self.memory = memory }

    public var disks: [Disk] { named.all }
    var hasDevices: Bool { !named.all.isEmpty }

    func adopt(_ registration: ClassRegistration, log: KernelLog) throws(OyStatus) {
        guard let registered = registration as? RegisteredDisk else { throw .invalid }
        try adopt(disk: registered, log: log)
    }

    /// A disk registered by a driver, here or in a driver-host process.
    func adopt(disk registered: any DiskDriverBinding, log: KernelLog) throws(OyStatus) {
        // A replacement driver takes over its device's disk.
        let location = registered.location
        if let disk = named.all.first(where: { $0.awaitsDriver && $0.driver.location == location }) {
            guard disk.rebind(registered) else {
                log.record(.warning, "block", "\(disk.name): \(registered.label) registered a different geometry; refused")
                throw .invalid
            }
            log.record(.info, "block", "\(disk.name): now served by \(registered.label)")
            return
        }
        let disk = named.add { Disk(name: $0, registered: registered, memory: memory) }
        let g = registered.geometry
        log.record(.info, "block", "\(disk.name): \(g.blockCount) × \(g.blockSize) B via \(registered.label), queue depth \(g.queueDepth)")
    }

    func release(_ registration: ClassRegistration, log: KernelLog) {
        guard let registered = registration as? RegisteredDisk else { return }
        release(disk: registered, log: log)
    }

    // A disk parks itself (Disk.beginRecovery) and is handed on by the supervisor.
    func park(location: String, drainUntil: Date) {}
    func unpark(location: String, failure: String?, log: KernelLog) {}

    func release(disk registered: any DiskDriverBinding, log: KernelLog) {
        // A disk whose driver is being replaced or restarted stays for the next one.
        named.remove { $0.driver === registered && !$0.awaitsDriver }?.markRemoved(reason: "\(registered.label) unregistered it")
    }

    /// Forgets a disk whose device is left without a driver; what waits fails.
    func remove(_ disk: Disk, reason: String) -> Bool {
        guard let removed = named.remove(where: { $0 === disk }) else { return false }
        removed.markRemoved(reason: reason)
        return true
    }

    /// The disk the device at `location` ("00:01.0") serves, if any.
    public func disk(at location: String) -> Disk? {
        named.all.first { $0.driver.location == location }
    }
}

/// The OS's disks are block targets for its userland (verified I/O, the
/// demo's workloads), as a guest's virtual disks are for the guest's.
extension Disk: BlockTarget {
    public var blockSize: Int { geometry.blockSize }
    public var blockCount: UInt64 { geometry.blockCount }
    public func readBlocks(lba: UInt64, count: Int) throws -> [UInt8] { try read(lba: lba, count: count * geometry.blockSize) }
    public func writeBlocks(lba: UInt64, bytes: [UInt8]) throws { try write(lba: lba, bytes: bytes) }
    public func flushBlocks() throws { try flush() }
}
