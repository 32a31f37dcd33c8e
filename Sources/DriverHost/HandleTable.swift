import Synchronization

/// Opaque handles for the C ABI: a generation and a slot index packed into
/// a pointer-sized value. A driver holds only these. A stale, foreign or
/// forged handle is recognised and refused instead of being dereferenced,
/// and the table could live in another process (a future driver host).
final class HandleTable: Sendable {
    private struct Slot {
        var generation: UInt32 = 1
        var object: (any AnyObject & Sendable)?
    }

    private struct Storage {
        var slots: [Slot] = []
        var free: [Int] = []
    }

    static let shared = HandleTable()

    private let storage = Mutex(Storage())

    func insert(_ object: any AnyObject & Sendable) -> OpaquePointer {
        storage.withLock { s in
            let index: Int
            if let reused = s.free.popLast() {
                index = reused
            } else {
                index = s.slots.count
                s.slots.append(Slot())
            }
            s.slots[index].object = object
            let raw = UInt(s.slots[index].generation) << 32 | UInt(index + 1)
            return OpaquePointer(bitPattern: raw)!
        }
    }

    func lookup<T: AnyObject>(_ handle: OpaquePointer?, as type: T.Type) -> T? {
        guard let (index, generation) = Self.decode(handle) else { return nil }
        return storage.withLock { s -> T? in
            guard index < s.slots.count, s.slots[index].generation == generation else { return nil }
            return s.slots[index].object as? T
        }
    }

    /// Removes the object; the handle and any copy of it become invalid.
    @discardableResult
    /// Removes the object if it is a `T` and `accept` takes it.
    func remove<T: AnyObject>(_ handle: OpaquePointer?, as type: T.Type, if accept: (T) -> Bool = { _ in true }) -> T? {
        guard let (index, generation) = Self.decode(handle) else { return nil }
        return storage.withLock { s -> T? in
            guard index < s.slots.count, s.slots[index].generation == generation,
                let object = s.slots[index].object as? T, accept(object)
            else { return nil }
            s.slots[index].object = nil
            s.slots[index].generation &+= 1
            if s.slots[index].generation == 0 { s.slots[index].generation = 1 }
            s.free.append(index)
            return object
        }
    }

    private static func decode(_ handle: OpaquePointer?) -> (Int, UInt32)? {
        guard let handle else { return nil }
        let raw = UInt(bitPattern: handle)
        let index = Int(raw & 0xFFFF_FFFF) - 1
        let generation = UInt32(truncatingIfNeeded: raw >> 32)
        guard index >= 0, generation != 0 else { return nil }
        return (index, generation)
    }
}
