import Foundation
import Glibc
import Synchronization

/// Special-pool memory (with `Verifier` on) for arguments a driver borrows for one call (the
/// device info passed to probe): each lives on pages of its own in a
/// reserved region, and when the call returns the pages are made
/// inaccessible, so a driver that kept the pointer faults at its next use —
/// deterministically, with the address telling what it was — instead of
/// reading stale memory in the field.
/// The checks that cost something on every call — special-pool lending,
/// callback timing — run only where drivers are being verified (the
/// conformance suite's workers), as Driver Verifier's do; red zones and
/// request poisoning are cheap and always on.
@_spi(Conformance) public enum Verifier {
    private static let on = Atomic<Bool>(false)
    private static let timing = Atomic<Bool>(false)

    /// Turns verification on for this process. `timeCallbacks`: judge
    /// callbacks against their time budgets too (not in a driver host, where
    /// every register access is a message and the time says more about the
    /// line than about the driver; the in-process checks judge it).
    public static func enable(timeCallbacks: Bool = true) {
        timing.store(timeCallbacks, ordering: .relaxed)
        on.store(true, ordering: .relaxed)
    }

    private static let guarding = Atomic<Bool>(false)

    /// Also give drivers block request data in guarded pages of its own
    /// (see `Disk`), once verification is on. For a conformance worker, a
    /// process of its own: it moves where a request's DMA goes, which the
    /// OS's own tests look at.
    public static func guardRequestData() { guarding.store(true, ordering: .relaxed) }
    public static var guardsRequestData: Bool { guarding.load(ordering: .relaxed) && isOn }

    private static let quarantining = Atomic<Bool>(false)

    /// Also hold dma_free'd pages back, inaccessible, before the OS reuses
    /// them (see `KernelDevice`), once verification is on: a driver that
    /// touches a ring or buffer after freeing it faults at once, and the
    /// crash report says what the address was. For a conformance worker: it
    /// keeps memory from the OS for a while.
    public static func quarantineFreedDMA() { quarantining.store(true, ordering: .relaxed) }
    public static var quarantinesFreedDMA: Bool { quarantining.load(ordering: .relaxed) && isOn }

    private static let releasePause = Atomic<Int>(0)

    /// Race amplification for teardown: while set (microseconds, 0 is
    /// off), the services that end what a device may still be using
    /// (`unregister_*`, `dma_free`) wait that long before they return to
    /// the driver. A driver that stops its device only afterwards then
    /// leaves it running in a window wide enough for the device to act,
    /// as on a slower or busier machine. Set by a check around a detach.
    public static func pauseAfterRelease(microseconds: Int) { releasePause.store(max(0, microseconds), ordering: .relaxed) }

    /// The pause `pauseAfterRelease(microseconds:)` set (0: none); a
    /// driver host is told it with its detach.
    public static var releasePauseMicroseconds: Int { releasePause.load(ordering: .relaxed) }

    /// Waits the pause `pauseAfterRelease` set, if any.
    static func pauseAfterRelease() {
        let pause = releasePause.load(ordering: .relaxed)
        if pause > 0 { usleep(UInt32(clamping: pause)) }
    }

    static var isOn: Bool { on.load(ordering: .relaxed) }
    static var timesCallbacks: Bool { timing.load(ordering: .relaxed) && isOn }
    /// Whether this process verifies drivers (it then has a driver host do so too).
    public static var isEnabled: Bool { isOn }

    /// A sanitizer runtime is in this process: it slows every instruction,
    /// so callback time budgets would judge the sanitizer, not the driver.
    public static let underSanitizer: Bool = underThreadSanitizer || present("__asan_init")

    /// ThreadSanitizer's runtime is in this process (an instrumented oyako).
    public static let underThreadSanitizer: Bool = present("__tsan_init")

    private static func present(_ symbol: String) -> Bool { dlsym(UnsafeMutableRawPointer(bitPattern: 0), symbol) != nil }
}

@_spi(Conformance) public enum BorrowedPool {
    /// The reserved region: a fault address inside it is a borrowed pointer
    /// used after its call returned. High (where AddressSanitizer leaves
    /// application memory) unless ThreadSanitizer's runtime is in the
    /// process, which allows application mappings only low or near the top.
    public static let base: UInt64 = Verifier.underThreadSanitizer ? lowBase : highBase
    static let highBase: UInt64 = 0x6F00_0000_0000
    static let lowBase: UInt64 = 0x006F_0000_0000
    static let slots = 256
    /// Two pages: the struct sits at the end of them, so an overread faults too.
    static let slotSize = 2 * 4096

    /// Whether `address` is in the region, wherever a worker (sanitized or not) put it.
    public static func contains(_ address: UInt64) -> Bool {
        [highBase, lowBase].contains { address >= $0 && address < $0 + UInt64(slots * slotSize) }
    }

    private static let next = Mutex(0)
    private static var region: UnsafeMutableRawPointer? { regionAddress.flatMap { UnsafeMutableRawPointer(bitPattern: $0) } }
    private static let regionAddress: UInt? = {
        // MAP_FIXED_NOREPLACE: at `base`, or not at all (then plain memory is used).
        let fixedNoReplace: Int32 = 0x100000
        let p = mmap(UnsafeMutableRawPointer(bitPattern: UInt(base)), slots * slotSize, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | fixedNoReplace, -1, 0)
        guard let p, p != MAP_FAILED, UInt64(UInt(bitPattern: p)) == base else { return nil }
        return UInt(bitPattern: p)
    }()

    /// A C string lent for one call: on revocable pages when the pool is on,
    /// else a plain copy. `release` revokes or frees it.
    struct CString {
        let pointer: UnsafeMutablePointer<CChar>
        let release: () -> Void
    }

    static func lend(_ text: String) -> CString? {
        let bytes = Array(text.utf8) + [0]
        guard Verifier.isOn, bytes.count <= slotSize, let region else {
            guard let copy = strdup(text) else { return nil }
            return CString(pointer: copy, release: { free(copy) })
        }
        let page = region + nextSlot() * slotSize
        mprotect(page, slotSize, PROT_READ | PROT_WRITE)
        let at = page + slotSize - bytes.count
        bytes.withUnsafeBytes { at.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        return CString(pointer: at.assumingMemoryBound(to: CChar.self), release: { mprotect(page, slotSize, PROT_NONE) })
    }

    private static func nextSlot() -> Int {
        next.withLock { n -> Int in
            defer { n = (n + 1) % slots }
            return n
        }
    }

    /// Runs `body` with a copy of `value` on borrowed pages, then revokes them.
    static func lend<T, R>(_ value: T, _ body: (UnsafeMutablePointer<T>) -> R) -> R {
        precondition(MemoryLayout<T>.size <= slotSize)
        guard Verifier.isOn, let region else {
            var copy = value
            return body(&copy)
        }
        let page = region + nextSlot() * slotSize
        mprotect(page, slotSize, PROT_READ | PROT_WRITE)
        // At the end of the slot, so that reading past the struct faults too.
        let at = page + slotSize - MemoryLayout<T>.stride
        let pointer = at.bindMemory(to: T.self, capacity: 1)
        pointer.initialize(to: value)
        defer {
            pointer.deinitialize(count: 1)
            mprotect(page, slotSize, PROT_NONE)
        }
        return body(pointer)
    }
}
