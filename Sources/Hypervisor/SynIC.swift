import Foundation
import Machine

/// One SynIC message: the 256-byte slot format of the TLFS.
public struct HvMessage: Sendable, Equatable {
    public static let maxPayload = 240

    /// Nonzero, most significant bit clear.
    public let type: UInt32
    /// The port the message arrived on (the sender's connection's port).
    public let origin: UInt64
    public let payload: [UInt8]
}

/// The synthetic interrupt controller of one virtual processor: 16 SINTs,
/// a message page of 16 slots and an event-flags page of 16 × 2048 bits,
/// laid out as on Hyper-V.
///
/// Delivery follows the TLFS: a queued message is copied into its SINT's
/// slot only when the slot is empty (type 0), then the SINT is raised. If the
/// slot is busy the message waits and the slot's pending flag is set. The
/// receiver handles the message, writes type 0, and signals end-of-message
/// when pending was set; the hypervisor then delivers the next.
public final class SynIC: @unchecked Sendable {
    // @unchecked Sendable: queues and both pages are guarded by `lock`.
    public static let sintCount = 16
    public static let slotSize = 256
    public static let flagsPerSINT = 2048
    /// Messages a SINT may have waiting before PostMessage fails with
    /// INSUFFICIENT_BUFFERS.
    public static let queueLimit = 16

    private let lock = NSLock()
    private let messagePage = UnsafeMutableRawPointer.allocate(byteCount: PhysicalMemory.pageSize, alignment: PhysicalMemory.pageSize)
    private let eventPage = UnsafeMutableRawPointer.allocate(byteCount: PhysicalMemory.pageSize, alignment: PhysicalMemory.pageSize)
    private var queues = [[HvMessage]](repeating: [], count: SynIC.sintCount)
    /// Raises the SINT on the owning VP.
    private let raise: @Sendable (Int) -> Void

    init(raise: @escaping @Sendable (Int) -> Void) {
        self.raise = raise
        messagePage.initializeMemory(as: UInt8.self, repeating: 0, count: PhysicalMemory.pageSize)
        eventPage.initializeMemory(as: UInt8.self, repeating: 0, count: PhysicalMemory.pageSize)
    }

    deinit {
        messagePage.deallocate()
        eventPage.deallocate()
    }

    private func slot(_ sint: Int) -> UnsafeMutableRawPointer { messagePage + sint * Self.slotSize }

    /// Hypervisor side: queue a message; false when the queue is full.
    func enqueue(_ message: HvMessage, sint: Int) -> Bool {
        lock.lock()
        guard queues[sint].count < Self.queueLimit else {
            lock.unlock()
            return false
        }
        queues[sint].append(message)
        let delivered = deliverLocked(sint)
        lock.unlock()
        if delivered { raise(sint) }
        return true
    }

    /// Copies the next queued message into the slot if it is empty; marks
    /// the slot pending if messages remain. True when a message was placed.
    private func deliverLocked(_ sint: Int) -> Bool {
        let s = slot(sint)
        guard !queues[sint].isEmpty else { return false }
        if s.load(as: UInt32.self) != 0 {
            s.storeBytes(of: s.load(fromByteOffset: 5, as: UInt8.self) | 1, toByteOffset: 5, as: UInt8.self)
            return false
        }
        let message = queues[sint].removeFirst()
        s.initializeMemory(as: UInt8.self, repeating: 0, count: Self.slotSize)
        s.storeBytes(of: UInt8(message.payload.count), toByteOffset: 4, as: UInt8.self)
        s.storeBytes(of: UInt8(queues[sint].isEmpty ? 0 : 1), toByteOffset: 5, as: UInt8.self)
        s.storeBytes(of: message.origin, toByteOffset: 8, as: UInt64.self)
        message.payload.withUnsafeBytes { (s + 16).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        // Type last: a nonzero type publishes the slot.
        s.storeBytes(of: message.type, toByteOffset: 0, as: UInt32.self)
        return true
    }

    /// Guest side: the message in `sint`'s slot, if any.
    public func readMessage(sint: Int) -> HvMessage? {
        lock.lock()
        defer { lock.unlock() }
        let s = slot(sint)
        let type = s.load(as: UInt32.self)
        guard type != 0 else { return nil }
        let size = min(Int(s.load(fromByteOffset: 4, as: UInt8.self)), HvMessage.maxPayload)
        let payload = [UInt8](UnsafeRawBufferPointer(start: s + 16, count: size))
        return HvMessage(type: type, origin: s.load(fromByteOffset: 8, as: UInt64.self), payload: payload)
    }

    /// Guest side: done with the slot. Writes type 0 and, when the pending
    /// flag was set, signals end-of-message so the next one is delivered.
    public func completeMessage(sint: Int) {
        lock.lock()
        let s = slot(sint)
        let pending = s.load(fromByteOffset: 5, as: UInt8.self) & 1 != 0
        s.storeBytes(of: UInt32(0), toByteOffset: 0, as: UInt32.self)
        let delivered = pending && deliverLocked(sint)
        lock.unlock()
        if delivered { raise(sint) }
    }

    /// Whether the slot of `sint` has its pending flag set (for tests).
    public func slotPending(sint: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return slot(sint).load(fromByteOffset: 5, as: UInt8.self) & 1 != 0
    }

    /// Messages waiting behind the slot.
    public func queuedCount(sint: Int) -> Int {
        lock.lock()
        defer { lock.unlock() }
        return queues[sint].count
    }

    /// Hypervisor side: set an event flag; true if it was clear.
    func setEventFlag(sint: Int, flag: Int) -> Bool {
        lock.lock()
        let word = eventPage.assumingMemoryBound(to: UInt64.self) + sint * (Self.flagsPerSINT / 64) + flag / 64
        let bit = UInt64(1) << UInt64(flag % 64)
        let wasClear = word.pointee & bit == 0
        word.pointee |= bit
        lock.unlock()
        raise(sint)
        return wasClear
    }

    /// Guest side: every set flag of `sint`, cleared as it is taken.
    public func takeEventFlags(sint: Int) -> [Int] {
        lock.lock()
        defer { lock.unlock() }
        var flags: [Int] = []
        let words = eventPage.assumingMemoryBound(to: UInt64.self) + sint * (Self.flagsPerSINT / 64)
        for w in 0..<(Self.flagsPerSINT / 64) where words[w] != 0 {
            var bits = words[w]
            words[w] = 0
            while bits != 0 {
                let b = bits.trailingZeroBitCount
                flags.append(w * 64 + b)
                bits &= bits - 1
            }
        }
        return flags
    }
}
