import CSystemShims
import Glibc
import Synchronization

/// The locks drivers create (`oy_host.lock_*`), kept apart from the other
/// handles so that taking one costs little more than the mutex itself.
///
/// A lock lives in a slot of type-stable memory: slots are never freed,
/// only reused, so `lock_acquire` and `lock_release` check a handle against
/// its slot's generation with one load and take no table lock and no
/// reference count, and a stale or forged handle is refused as before.
/// What a driver that destroys a lock while another thread uses it can
/// reach is a mutex in a slot, never freed memory; a freed slot waits
/// behind `quarantine` others before it is reused, so such a thread does
/// not take another driver's new lock.
///
/// A handle is `generation << 32 | tag | (index + 1)`: `tag` keeps lock
/// handles apart from `HandleTable`'s; an odd generation is a live lock.
final class LockTable: @unchecked Sendable {
    // @unchecked Sendable: chunk pointers are written under `table` before
    // `published` makes them visible; slot generations are written under
    // `table` with release stores and read with acquire loads.

    private struct Slot {
        var generation: UInt32
        /// The driver the live lock is (its `ResourceOwner.libraryKey`; 0:
        /// not known yet), written before the generation makes it live.
        var owner: UInt
        var mutex: pthread_mutex_t
    }

    static let shared = LockTable()

    static let tag: UInt = 1 << 31
    static let slotsPerChunk = 4096
    static let maxChunks = 256
    /// Freed slots that must wait before the oldest of them is reused.
    static let quarantine = 1024

    private let chunks: UnsafeMutablePointer<UnsafeMutablePointer<Slot>?>
    /// Chunks readers may look at.
    private let published = Atomic<Int>(0)
    private struct Free {
        var slots: [Int] = []
        var head = 0
        var count: Int { slots.count - head }
    }
    /// Slots never used are handed out in order; freed ones in the order freed.
    private let table = Mutex<(used: Int, free: Free)>((0, Free()))

    private init() {
        chunks = .allocate(capacity: Self.maxChunks)
        chunks.initialize(repeating: nil, count: Self.maxChunks)
    }

    /// A new, unlocked lock of the driver `owner`; nil when the table is full.
    func create(owner: UInt = 0) -> OpaquePointer? {
        table.withLock { t -> OpaquePointer? in
            let index: Int
            let full = t.used == Self.maxChunks * Self.slotsPerChunk
            if t.free.count > Self.quarantine || (full && t.free.count > 0) {
                index = t.free.slots[t.free.head]
                t.free.head += 1
                // The queue's consumed front goes once it is most of the array.
                if t.free.head >= Self.slotsPerChunk && t.free.head * 2 >= t.free.slots.count {
                    t.free.slots.removeFirst(t.free.head)
                    t.free.head = 0
                }
            } else {
                guard !full, let fresh = newSlot(t.used) else { return nil }
                index = fresh
                t.used += 1
            }
            slot(at: index).pointee.owner = owner
            let generation = Self.generation(slot(at: index))
            let live = oy_shim_load_acquire_u32(generation) &+ 1  // odd: live
            oy_shim_store_release_u32(generation, live)
            return OpaquePointer(bitPattern: UInt(live) << 32 | Self.tag | UInt(index + 1))
        }
    }

    /// How destroying a lock went.
    enum Destroyed {
        case destroyed
        /// The handle is not a live lock's (stale, forged, destroyed twice).
        case invalid
        /// It was held: the handle is dead, and its slot is retired for good
        /// (the mutex stays held, so its holder's release finds nothing).
        case held
    }

    func destroy(_ handle: OpaquePointer?) -> Destroyed {
        table.withLock { t -> Destroyed in
            guard let (index, slot) = live(handle) else { return .invalid }
            let generation = Self.generation(slot)
            oy_shim_store_release_u32(generation, oy_shim_load_acquire_u32(generation) &+ 1)  // even: refused from now on
            let mutex = mutexPointer(slot)
            guard pthread_mutex_trylock(mutex) == 0 else { return .held }
            pthread_mutex_unlock(mutex)
            t.free.slots.append(index)
            return .destroyed
        }
    }

    /// The mutex of a live lock; nil for a handle that names none, or one
    /// of another driver than `caller` (0: any driver).
    @inline(__always)
    func mutex(_ handle: OpaquePointer?, caller: UInt = 0) -> UnsafeMutablePointer<pthread_mutex_t>? {
        guard let (_, slot) = live(handle) else { return nil }
        let owner = slot.pointee.owner
        guard caller == 0 || owner == 0 || owner == caller else { return nil }
        return mutexPointer(slot)
    }

    @inline(__always)
    private func live(_ handle: OpaquePointer?) -> (index: Int, slot: UnsafeMutablePointer<Slot>)? {
        let raw = UInt(bitPattern: handle)
        let generation = UInt32(truncatingIfNeeded: raw >> 32)
        let index = Int(truncatingIfNeeded: raw & 0x7FFF_FFFF) - 1
        guard raw & Self.tag != 0, generation & 1 == 1, index >= 0 else { return nil }
        let chunk = index / Self.slotsPerChunk
        guard chunk < published.load(ordering: .acquiring), let base = chunks[chunk] else { return nil }
        let slot = base + index % Self.slotsPerChunk
        guard oy_shim_load_acquire_u32(Self.generation(slot)) == generation else { return nil }
        return (index, slot)
    }

    private func slot(at index: Int) -> UnsafeMutablePointer<Slot> {
        chunks[index / Self.slotsPerChunk]! + index % Self.slotsPerChunk
    }

    @inline(__always)
    private static func generation(_ slot: UnsafeMutablePointer<Slot>) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(slot).advanced(by: MemoryLayout<Slot>.offset(of: \.generation)!)
    }

    @inline(__always)
    private func mutexPointer(_ slot: UnsafeMutablePointer<Slot>) -> UnsafeMutablePointer<pthread_mutex_t> {
        UnsafeMutableRawPointer(slot).advanced(by: MemoryLayout<Slot>.offset(of: \.mutex)!).assumingMemoryBound(to: pthread_mutex_t.self)
    }

    /// Makes slot `index` (the next never used) ready, allocating its chunk
    /// when it is the chunk's first. Under `table`.
    private func newSlot(_ index: Int) -> Int? {
        let chunk = index / Self.slotsPerChunk
        if index % Self.slotsPerChunk == 0 {
            let memory = UnsafeMutablePointer<Slot>.allocate(capacity: Self.slotsPerChunk)
            // Error-checking: a thread taking a lock it holds gets EDEADLK
            // (reported, see lock_acquire) instead of hanging unexplained,
            // and one releasing a lock it does not hold gets EPERM.
            var attributes = pthread_mutexattr_t()
            pthread_mutexattr_init(&attributes)
            defer { pthread_mutexattr_destroy(&attributes) }
            pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_ERRORCHECK))
            for i in 0..<Self.slotsPerChunk {
                (memory + i).initialize(to: Slot(generation: 0, owner: 0, mutex: pthread_mutex_t()))
                guard pthread_mutex_init(mutexPointer(memory + i), &attributes) == 0 else { return nil }
            }
            chunks[chunk] = memory
            published.store(chunk + 1, ordering: .releasing)
        }
        return index
    }
}
