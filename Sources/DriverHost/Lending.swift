import CSystemShims
import Foundation
import Synchronization

/// Something the host lends a driver for one operation (a block request, a
/// frame to transmit). While the driver holds it, the C struct's
/// `host_private` carries a retained reference back here, taken back exactly
/// once: by the driver's completion, or by the host when the driver refused
/// it or a detach cancels it.
public class LentRequest: @unchecked Sendable {
    // @unchecked Sendable: owned by one submitter at a time; handed back by
    // an atomic exchange on `host_private`.
    private var completion: (@Sendable (OyStatus) -> Void)?
    /// The loans it is out on, while the driver holds it.
    fileprivate weak var loans: Loans?
    /// The C struct the driver sees, and its `host_private` field.
    private let cStruct: UnsafeMutableRawBufferPointer
    private let hostPrivate: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    /// What it is, for a violation's words: "block request", "oy_block_request", "complete()".
    private let described: (what: String, type: String, service: String)
    /// Who completed it last, while its struct holds the poison pattern.
    private weak var poisonedBy: DriverLibrary?
    static let poison: UInt8 = 0xA5

    /// Allocates the C struct drivers are lent, `initial` with its
    /// `host_private` field at `field`. It lives as long as this object, then
    /// rests in the graveyard.
    init<Struct>(_ initial: Struct, hostPrivate field: KeyPath<Struct, UnsafeMutableRawPointer?>, described: (what: String, type: String, service: String)) {
        cStruct = .allocate(byteCount: MemoryLayout<Struct>.size, alignment: MemoryLayout<Struct>.alignment)
        cStruct.baseAddress!.initializeMemory(as: Struct.self, repeating: initial, count: 1)
        hostPrivate = Self.hostPrivate(of: cStruct.baseAddress!.assumingMemoryBound(to: Struct.self), field)
        self.described = described
    }

    deinit {
        checkPoison()
        Self.bury(cStruct)
    }

    /// The C struct, as its type.
    func cStruct<Struct>(as type: Struct.Type) -> UnsafeMutablePointer<Struct> { cStruct.baseAddress!.assumingMemoryBound(to: Struct.self) }

    /// The `host_private` field of a C struct (one a driver hands back).
    static func hostPrivate<Struct>(of raw: UnsafeMutablePointer<Struct>, _ field: KeyPath<Struct, UnsafeMutableRawPointer?>) -> UnsafeMutablePointer<UnsafeMutableRawPointer?> {
        (UnsafeMutableRawPointer(raw) + MemoryLayout<Struct>.offset(of: field)!).assumingMemoryBound(to: UnsafeMutableRawPointer?.self)
    }

    func setCompletion(_ completion: @escaping @Sendable (OyStatus) -> Void) { self.completion = completion }

    /// Completes a request that no driver holds (refused, or failed while
    /// still queued in the OS).
    public func finishUnsubmitted(_ status: OyStatus) { finish(status) }

    fileprivate func finish(_ status: OyStatus) {
        let done = completion
        completion = nil
        done?(status)
    }

    /// The `host_private` slots of every request out with a driver. A
    /// completion must name one of them: a pointer the host never lent
    /// (garbage, or a copy of a request the driver made) is refused before
    /// the host reads or writes anything through it.
    private static let outstanding = Mutex(Set<UInt>())

    /// Takes the request whose `host_private` slot is `slot` back from the
    /// driver; nil if it is not out (a second completion, one that raced a
    /// cancel, or a pointer the host never lent).
    static func reclaim(_ slot: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> LentRequest? {
        guard outstanding.withLock({ $0.remove(UInt(bitPattern: slot)) }) != nil,
              let previous = oy_shim_exchange_pointer(slot, nil)
        else { return nil }
        return Unmanaged<LentRequest>.fromOpaque(previous).takeRetainedValue()
    }

    fileprivate func lend() {
        hostPrivate.pointee = Unmanaged.passRetained(self).toOpaque()
        _ = Self.outstanding.withLock { $0.insert(UInt(bitPattern: hostPrivate)) }
    }

    /// The driver gave it back: from now on it is the host's alone. Every
    /// byte of its struct but `host_private` is poisoned, and checked when
    /// the host uses it again, so a driver that writes to it after completing
    /// it is caught, and one that reads it finds no pointer to follow
    /// (Driver Verifier's I/O verification does the same with freed IRPs).
    func retired(from library: DriverLibrary) {
        for i in cStruct.indices where !isHostPrivate(i) { cStruct[i] = Self.poison }
        poisonedBy = library
    }

    /// Records a violation if the driver wrote to the struct after it
    /// completed it. The host calls it before it fills the struct for its
    /// next use, on a look at a quarantine, and before it frees the struct.
    /// `stillRetired`: the struct stays retired after the check (a look at
    /// the quarantine, not a reuse), so a later check looks again; a write
    /// is reported once either way.
    public func checkPoison(stillRetired: Bool = false) {
        guard let library = poisonedBy else { return }
        let changed = cStruct.indices.first { !isHostPrivate($0) && cStruct[$0] != Self.poison }
        if changed != nil || !stillRetired { poisonedBy = nil }
        if let changed {
            library.recordViolation("a \(described.what) was written after the driver completed it (byte \(changed) of \(described.type)); "
                + "once \(described.service) is called it is the host's: touch nothing of it afterwards", inCallback: false)
        }
    }

    /// Frees memory a subclass showed the driver (the C struct, a frame's
    /// bytes) through the graveyard: poisoned whole, and kept a while before
    /// malloc has it back, so a driver's late read of a request that is gone
    /// finds the poison, and its late write lands in memory no one uses,
    /// not in whatever malloc handed out next. (A quarantine of freed memory,
    /// as AddressSanitizer's.)
    static func bury(_ memory: UnsafeMutableRawBufferPointer) {
        memory.initializeMemory(as: UInt8.self, repeating: poison)
        let evicted = graveyard.withLock { resting -> UInt? in
            resting.append(UInt(bitPattern: memory.baseAddress))
            return resting.count > graveyardSize ? resting.removeFirst() : nil
        }
        UnsafeMutableRawPointer(bitPattern: evicted ?? 0)?.deallocate()
    }

    /// Addresses of freed blocks resting before malloc has them back, oldest first.
    private static let graveyard = Mutex<[UInt]>([])
    static let graveyardSize = 256

    private func isHostPrivate(_ index: Int) -> Bool {
        let offset = UnsafeRawPointer(hostPrivate) - UnsafeRawPointer(cStruct.baseAddress!)
        return (offset..<(offset + MemoryLayout<UnsafeMutableRawPointer?>.size)).contains(index)
    }
    fileprivate func takeBack() -> LentRequest? { Self.reclaim(hostPrivate) }

    /// The driver's completion callback: `complete()` or `tx_complete()`.
    static func completed(_ slot: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, status: Int32, service: String) {
        // The host's bookkeeping and what the completion sets off are the OS's time.
        CallbackBudget.inOS {
            guard let slot, let request = reclaim(slot) else {
                HostServices.unattributed("\(service) for a request that is not outstanding (completed twice, never accepted, or not one the host lent, such as a copy)")
                return
            }
            guard let loans = request.loans else {
                request.finish(OyStatus(status))
                return
            }
            loans.returned(request, status: OyStatus(status), service: service)
        }
    }
}

/// What one registration (a disk, an interface) has lent its driver.
final class Loans: @unchecked Sendable {
    // @unchecked Sendable: guarded by `lock`.
    private let lock = NSLock()
    private var outstanding: [ObjectIdentifier: LentRequest] = [:]
    /// Requests whose submit (or transmit) has not returned yet: not the
    /// driver's until it does, so a cancel leaves them to that return.
    private var inCall: Set<ObjectIdentifier> = []
    /// Of those, the ones a cancel passed over: canceled as their call
    /// returns, if the driver took them.
    private var cancelOnReturn: Set<ObjectIdentifier> = []
    private var closed = false
    private let library: DriverLibrary

    init(library: DriverLibrary) { self.library = library }

    var count: Int { lock.withLock { outstanding.count } }

    /// Lends `request` for `call` (the driver's submit or transmit). On OK
    /// the completion runs later, exactly once, possibly on the interrupt
    /// thread; on a refusal the request is taken back and never completed.
    func lend(_ request: LentRequest, service: StaticString, _ call: () -> OyStatus) -> OyStatus {
        library.counted { lendCounted(request, service: service, call) }
    }

    private func lendCounted(_ request: LentRequest, service: StaticString, _ call: () -> OyStatus) -> OyStatus {
        let key = ObjectIdentifier(request)
        let admitted = lock.withLock { () -> Bool in
            guard !closed else { return false }
            outstanding[key] = request
            inCall.insert(key)
            return true
        }
        guard admitted else { return .deviceGone }
        request.loans = self
        request.lend()
        var status = OyStatus.ok
        // Named while it runs: a hang report finds a thread stuck in it.
        let spent = CallbackBudget.measure { status = library.callDriver(service, keepingContext: true, call) }
        CallbackBudget.anyThread.judge(spent, what: "\(service)", library: library)
        let canceled = lock.withLock { () -> Bool in
            inCall.remove(key)
            return cancelOnReturn.remove(key) != nil
        }
        if !status.isOK {
            if request.takeBack() == nil { library.recordViolation("\(service) returned \(status) but completed the request anyway") }
            _ = lock.withLock { outstanding.removeValue(forKey: key) }
            if !status.isDefined { library.recordViolation("\(service) returned undefined error code \(status.rawValue)") }
        } else if canceled, let taken = request.takeBack() {
            // Taken by a driver whose requests were canceled while this call
            // ran (a detach that could not wait for it): canceled now.
            returned(taken, status: .canceled, service: "cancel")
        }
        return status
    }

    /// The driver completed `request` (already taken back).
    func returned(_ request: LentRequest, status: OyStatus, service: String) {
        _ = lock.withLock { outstanding.removeValue(forKey: ObjectIdentifier(request)) }
        request.retired(from: library)
        var status = status
        if !status.isDefined {
            library.recordViolation("\(service) with undefined status code \(status.rawValue)")
            status = .io
        }
        request.finish(status)
    }

    /// Completes everything the driver still holds with OY_E_CANCELED;
    /// returns how many there were.
    /// A request whose submit has not returned is the call's to settle:
    /// it is canceled as the call returns, if the driver took it.
    func cancelAll() -> Int {
        let pending = lock.withLock { () -> [LentRequest] in
            cancelOnReturn.formUnion(inCall)
            return outstanding.filter { !inCall.contains($0.key) }.map(\.value)
        }
        var count = 0
        for request in pending {
            guard let taken = request.takeBack() else { continue }
            count += 1
            returned(taken, status: .canceled, service: "cancel")
        }
        return count
    }

    /// Nothing more is lent (the registration is going away).
    func close() { lock.withLock { closed = true } }
}

/// Requests (or frames) of one kind for reuse. A completed one rests in
/// quarantine behind `quarantine` others before it is lent again, oldest
/// first: a driver's late write or second completion then finds a retired
/// struct, not one lent out again, and the write is found when the struct
/// is reused (its poison checked) or when the pool's owner goes away
/// (`checkAll`). (Driver Verifier keeps freed IRPs out of use the same way.)
public final class QuarantinePool<Request: LentRequest>: Sendable {
    private let spare = Mutex<[Request]>([])
    private let make: @Sendable () -> Request
    public static var quarantine: Int { 32 }

    public init(_ make: @escaping @Sendable () -> Request) { self.make = make }

    /// The oldest retired one once enough rest behind it; a new one before.
    public func take() -> Request {
        spare.withLock { $0.count > Self.quarantine ? $0.removeFirst() : nil } ?? make()
    }

    /// A request the host has back (completed, or never lent).
    public func give(_ request: Request) { spare.withLock { $0.append(request) } }

    /// Checks every retired one for writes since its completion (under the
    /// pool's lock: none is taken for reuse meanwhile).
    public func checkAll() {
        spare.withLock { for request in $0 { request.checkPoison(stillRetired: true) } }
    }
}
