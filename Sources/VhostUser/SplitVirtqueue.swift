import CSystemShims
import Machine

/// Why a virtqueue can no longer be trusted: the guest put something in it
/// that no correct driver does. The device stops this queue; nothing outside
/// the guest's memory was touched.
public enum VirtqueueError: Error, Equatable, CustomStringConvertible, Sendable {
    case badSize(Int)
    /// A ring structure (descriptor table, avail or used ring) is not wholly
    /// inside one region of guest memory.
    case ringOutsideMemory(String)
    /// The driver claims more new buffers than the queue holds.
    case availIndexJump(from: UInt16, to: UInt16, size: Int)
    case headOutOfRange(UInt16, size: Int)
    case nextOutOfRange(UInt16, size: Int)
    /// A chain longer than the queue (a loop, or a lie).
    case chainTooLong(head: UInt16)
    /// A buffer not wholly inside guest memory (or of zero length).
    case bufferOutsideMemory(gpa: UInt64, length: UInt32)
    /// The virtio rule: device-readable buffers come before writable ones.
    case readableAfterWritable(head: UInt16)
    case indirectWithNext(head: UInt16)
    case nestedIndirect(head: UInt16)
    case badIndirectTable(length: UInt32)
    /// A chain whose buffers add up to more than `limit` bytes.
    case chainTooLarge(head: UInt16, limit: Int)

    public var description: String {
        switch self {
        case .badSize(let n): "queue size \(n) is not a power of two from 1 to 32768"
        case .ringOutsideMemory(let what): "the \(what) is not inside the guest's memory"
        case .availIndexJump(let from, let to, let size): "avail index moved from \(from) to \(to), more than the \(size) entries of the queue"
        case .headOutOfRange(let head, let size): "descriptor head \(head) is outside the \(size)-entry table"
        case .nextOutOfRange(let next, let size): "descriptor next \(next) is outside the \(size)-entry table"
        case .chainTooLong(let head): "descriptor chain at \(head) is longer than the queue (a loop)"
        case .bufferOutsideMemory(let gpa, let length): "buffer 0x\(String(gpa, radix: 16))+\(length) is not inside the guest's memory"
        case .readableAfterWritable(let head): "chain \(head) has a device-readable buffer after a writable one"
        case .indirectWithNext(let head): "chain \(head): an indirect descriptor also has NEXT"
        case .nestedIndirect(let head): "chain \(head): an indirect table names another indirect table"
        case .badIndirectTable(let length): "indirect table of \(length) bytes is empty or not a whole number of descriptors"
        case .chainTooLarge(let head, let limit): "chain \(head) carries more than \(limit) bytes"
        }
    }
}

/// One available buffer chain: host views of its device-readable buffers
/// (what the driver sends) and writable ones (where the device answers), in
/// order, every one checked to lie inside guest memory.
public struct DescriptorChain: @unchecked Sendable {
    // @unchecked Sendable: views of guest memory, valid while the device holds the chain.
    public let head: UInt16
    public let readable: [UnsafeMutableRawBufferPointer]
    public let writable: [UnsafeMutableRawBufferPointer]

    public var readableBytes: Int { readable.reduce(0) { $0 + $1.count } }
    public var writableBytes: Int { writable.reduce(0) { $0 + $1.count } }
}

/// The device side of a split virtqueue (virtio 1.x, 2.7): the descriptor
/// table, the driver's avail ring and the device's used ring, all in guest
/// memory. Every index, address and length the guest wrote is validated
/// before it is used; a violation is a `VirtqueueError` and the queue is
/// not to be used again.
public final class SplitVirtqueue: @unchecked Sendable {
    // @unchecked Sendable: one device thread drives a queue; the rings are
    // shared with the guest through acquire/release accesses.
    static let descriptorSize = 16
    static let flagNext: UInt16 = 1, flagWrite: UInt16 = 2, flagIndirect: UInt16 = 4
    /// Largest chain payload the device takes (a guard against a chain of
    /// huge buffers tying up the device).
    public static let maxChainBytes = 64 << 20

    public let size: Int
    private let memory: GuestMemoryMap
    private let table: UnsafeMutableRawPointer
    private let avail: UnsafeMutableRawPointer
    private let used: UnsafeMutableRawPointer
    private let eventIndex: Bool
    /// The next avail-ring entry the device will take.
    public private(set) var lastAvail: UInt16
    private var usedIndex: UInt16
    /// The used index at the last notification decision (for event idx).
    private var signalledUsed: UInt16

    /// - Parameters:
    ///   - descriptorTable, availRing, usedRing: guest addresses of the three parts.
    ///   - eventIndex: VIRTIO_F_EVENT_IDX was negotiated.
    ///   - lastAvail: where to resume (SET_VRING_BASE).
    public init(memory: GuestMemoryMap, size: Int, descriptorTable: GuestAddress, availRing: GuestAddress, usedRing: GuestAddress,
                eventIndex: Bool, lastAvail: UInt16 = 0) throws(VirtqueueError)
    {
        guard size >= 1, size <= 32768, size & (size - 1) == 0 else { throw .badSize(size) }
        guard let table = memory.pointer(descriptorTable, length: size * Self.descriptorSize) else { throw .ringOutsideMemory("descriptor table") }
        guard let avail = memory.pointer(availRing, length: 6 + 2 * size) else { throw .ringOutsideMemory("avail ring") }
        guard let used = memory.pointer(usedRing, length: 6 + 8 * size) else { throw .ringOutsideMemory("used ring") }
        self.memory = memory
        self.size = size
        self.table = table
        self.avail = avail
        self.used = used
        self.eventIndex = eventIndex
        self.lastAvail = lastAvail
        self.usedIndex = oy_shim_load_acquire_u16(used + 2)
        self.signalledUsed = usedIndex
    }

    /// Takes the next available chain, or nil when the driver has posted
    /// nothing new.
    public func nextChain() throws(VirtqueueError) -> DescriptorChain? {
        // Acquire: the entries and descriptors behind the index are read after it.
        let availIndex = oy_shim_load_acquire_u16(avail + 2)
        let pending = availIndex &- lastAvail
        guard Int(pending) <= size else { throw .availIndexJump(from: lastAvail, to: availIndex, size: size) }
        guard pending > 0 else { return nil }
        let head = (avail + 4 + 2 * (Int(lastAvail) % size)).loadUnaligned(as: UInt16.self)
        guard Int(head) < size else { throw .headOutOfRange(head, size: size) }
        let chain = try walk(head: head)
        lastAvail = lastAvail &+ 1
        return chain
    }

    private struct Descriptor {
        let address: UInt64, length: UInt32, flags: UInt16, next: UInt16
    }

    private static func descriptor(_ table: UnsafeRawPointer, _ index: Int) -> Descriptor {
        let p = table + index * descriptorSize
        return Descriptor(address: p.loadUnaligned(as: UInt64.self), length: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self),
                          flags: p.loadUnaligned(fromByteOffset: 12, as: UInt16.self), next: p.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
    }

    /// Follows a chain (through at most one indirect table), validating
    /// every descriptor; a chain may have at most `size` descriptors in the
    /// table it is in, so a loop ends as an error.
    private func walk(head: UInt16) throws(VirtqueueError) -> DescriptorChain {
        var readable: [UnsafeMutableRawBufferPointer] = [], writable: [UnsafeMutableRawBufferPointer] = []
        var total = 0
        var tableBase = UnsafeRawPointer(table), tableSize = size
        var index = Int(head), steps = 0, indirect = false
        while true {
            steps += 1
            guard steps <= tableSize else { throw .chainTooLong(head: head) }
            let d = Self.descriptor(tableBase, index)
            if d.flags & Self.flagIndirect != 0 {
                guard !indirect else { throw .nestedIndirect(head: head) }
                guard d.flags & Self.flagNext == 0 else { throw .indirectWithNext(head: head) }
                guard d.length > 0, Int(d.length) % Self.descriptorSize == 0, Int(d.length) / Self.descriptorSize <= 32768 else {
                    throw .badIndirectTable(length: d.length)
                }
                guard let inner = memory.pointer(GuestAddress(d.address), length: Int(d.length)) else {
                    throw .bufferOutsideMemory(gpa: d.address, length: d.length)
                }
                (tableBase, tableSize, index, steps, indirect) = (UnsafeRawPointer(inner), Int(d.length) / Self.descriptorSize, 0, 0, true)
                continue
            }
            guard let pieces = memory.pieces(GuestAddress(d.address), length: Int(d.length)) else {
                throw .bufferOutsideMemory(gpa: d.address, length: d.length)
            }
            total += Int(d.length)
            guard total <= Self.maxChainBytes else { throw .chainTooLarge(head: head, limit: Self.maxChainBytes) }
            if d.flags & Self.flagWrite != 0 {
                writable += pieces
            } else {
                guard writable.isEmpty else { throw .readableAfterWritable(head: head) }
                readable += pieces
            }
            guard d.flags & Self.flagNext != 0 else { break }
            guard Int(d.next) < tableSize else { throw .nextOutOfRange(d.next, size: tableSize) }
            index = Int(d.next)
        }
        return DescriptorChain(head: head, readable: readable, writable: writable)
    }

    /// Returns chain `head` to the driver with `written` bytes in its
    /// writable buffers.
    public func addUsed(head: UInt16, written: UInt32) {
        let slot = used + 4 + 8 * (Int(usedIndex) % size)
        slot.storeBytes(of: UInt32(head), toByteOffset: 0, as: UInt32.self)
        slot.storeBytes(of: written, toByteOffset: 4, as: UInt32.self)
        usedIndex = usedIndex &+ 1
        // Release: the element is visible before the index that publishes it.
        oy_shim_store_release_u16(used + 2, usedIndex)
    }

    /// Asks the driver to kick for the next chain it posts, then reports
    /// whether one arrived meanwhile (serve it before waiting for a kick,
    /// or it waits for ever). With EVENT_IDX the wish is avail_event, the
    /// slot after the used ring; without, the used ring's NO_NOTIFY flag
    /// stays clear (this device never sets it).
    public func armKick() -> Bool {
        if eventIndex {
            (used + 4 + 8 * size).storeBytes(of: lastAvail, as: UInt16.self)
        }
        // The wish is visible before the index is read again (store -> load):
        // else a chain posted in between is neither seen nor kicked.
        oy_shim_full_barrier()
        return oy_shim_load_acquire_u16(avail + 2) != lastAvail
    }

    /// Whether the driver wants an interrupt for what was used since the
    /// last call: its used_event index (EVENT_IDX) or its NO_INTERRUPT flag.
    public func needsNotification() -> Bool {
        // Publish the used index before reading the driver's wish (store ->
        // load): else a driver that just re-enabled interrupts is missed.
        oy_shim_full_barrier()
        let old = signalledUsed
        signalledUsed = usedIndex
        if eventIndex {
            let event = (avail + 4 + 2 * size).loadUnaligned(as: UInt16.self)
            // virtio's vring_need_event(event, new, old).
            return usedIndex &- event &- 1 < usedIndex &- old
        }
        return oy_shim_load_acquire_u16(avail) & 1 == 0
    }
}
