import CSystemShims
import Foundation
import Glibc
import Machine
import VhostUser

/// What QEMU and a guest's virtio driver do to a vhost-user back-end,
/// played over a real Unix socket: the set-up messages QEMU sends (with
/// the guest's RAM as a memfd, and eventfd doorbells), then one split
/// virtqueue (queue 0) driven the way Linux's virtio_ring drives it.
public final class VirtioFrontEnd {
    static let ramBase: UInt64 = 0, userBase: UInt64 = 0x7F00_0000_0000
    static let table: UInt64 = 0x1000, avail: UInt64 = 0x3000, used: UInt64 = 0x5000
    /// Where request buffers live in the guest's RAM.
    public static let buffers: UInt64 = 0x10000

    public let ram: PhysicalMemory
    public let size = 16
    /// The protocol side: what QEMU sends.
    public let connection: VhostUserFrontEnd
    public let kick = oy_shim_eventfd(), call = oy_shim_eventfd()
    private var availIndex: UInt16 = 0
    private var guestRAM: GuestMemory { GuestMemory(base: ram.base, size: ram.size) }

    /// Connects to `path` and, unless `setUp` is false (a hostile
    /// front-end sends what it likes with `sendRaw`), sets up queue 0 as QEMU would.
    public init(path: String, setUp: Bool = true) throws {
        ram = try PhysicalMemory(size: 1 << 20)
        connection = try VhostUserFrontEnd(path: path)
        guard setUp else { return }
        try connection.negotiate(wanted: VhostUserBackend.transportFeatures)
        try connection.setMemoryTable([.init(ram, at: Self.ramBase, mappedAt: Self.userBase)])
        try connection.setUpRing(0, size: size, descriptors: Self.userBase + Self.table, avail: Self.userBase + Self.avail, used: Self.userBase + Self.used,
                                 kick: kick, call: call)
    }

    deinit {
        _ = close(kick)
        _ = close(call)
    }

    /// Where a virtio-blk request's header, 4 KiB of data and status byte go.
    public static let blockHeader: UInt64 = buffers, blockData: UInt64 = buffers + 0x1000, blockStatus: UInt64 = buffers + 0x3000

    /// One 4 KiB virtio-blk request at `sector`, as a well-behaved guest
    /// makes it (descriptors from `slot`); true when it completed OK. A read's
    /// data is then at `blockData`.
    public func blockRequest(write: Bool, sector: UInt64, slot: Int, bytes: [UInt8]? = nil, timeout: TimeInterval = 10) -> Bool {
        let before = used.count
        self.write(Self.bytes(UInt32(write ? 1 : 0)) + [0, 0, 0, 0] + Self.bytes(sector), at: Self.blockHeader)
        if let bytes { self.write(bytes, at: Self.blockData) }
        self.write([0xFF], at: Self.blockStatus)
        postChain([(Self.blockHeader, 16, false), (Self.blockData, 4096, !write), (Self.blockStatus, 1, true)], at: slot)
        return waitForUsed(before + 1, timeout: timeout) && read(Self.blockStatus, count: 1) == [0]
    }

    public func sendRaw(_ request: UInt32, _ payload: [UInt8] = [], fds: [Int32] = [], size: UInt32? = nil) {
        connection.sendRaw(request, payload, fds: fds, size: size)
    }

    public func closedByBackEnd(timeout: Int32 = 10_000) -> Bool { connection.closedByBackEnd(timeout: timeout) }

    /// Posts one writable buffer of `length` bytes as descriptor `slot`
    /// and kicks; returns its guest address.
    @discardableResult
    public func postWritable(slot: Int, length: UInt32) -> UInt64 {
        let address = Self.buffers + UInt64(slot) * 0x1000
        post([Descriptor(address: address, length: length, flags: 2)], at: slot)
        return address
    }

    /// One descriptor as the guest's driver writes it.
    public struct Descriptor {
        public let address: UInt64
        public let length: UInt32
        public let flags: UInt16
        public let next: UInt16
        public init(address: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0) {
            self.address = address
            self.length = length
            self.flags = flags
            self.next = next
        }
    }

    /// Writes `descriptors` into the table from `slot`, posts `head` (slot
    /// by default) and kicks: anything a driver, or a hostile guest, may do.
    public func post(_ descriptors: [Descriptor], at slot: Int, head: Int? = nil) {
        for (i, d) in descriptors.enumerated() {
            let bytes = Self.bytes(d.address) + Self.bytes(d.length) + Self.bytes(d.flags) + Self.bytes(d.next)
            _ = guestRAM.write(bytes, at: GuestAddress(Self.table + 16 * UInt64(slot + i)))
        }
        _ = guestRAM.write(Self.bytes(UInt16(head ?? slot)), at: GuestAddress(Self.avail + 4 + 2 * UInt64(Int(availIndex) % size)))
        _ = guestRAM.write(Self.bytes(availIndex), at: GuestAddress(Self.avail + 4 + 2 * UInt64(size)))
        availIndex &+= 1
        _ = guestRAM.write(Self.bytes(availIndex), at: GuestAddress(Self.avail + 2))
        var one: UInt64 = 1
        _ = Glibc.write(kick, &one, 8)
    }

    /// A buffer chain in order: each (address, length, device-writable).
    public func postChain(_ parts: [(address: UInt64, length: UInt32, writable: Bool)], at slot: Int) {
        post(parts.enumerated().map { i, part in
            Descriptor(address: part.address, length: part.length, flags: (part.writable ? 2 : 0) | (i < parts.count - 1 ? 1 : 0), next: UInt16(slot + i + 1))
        }, at: slot)
    }

    public func write(_ bytes: [UInt8], at address: UInt64) { _ = guestRAM.write(bytes, at: GuestAddress(address)) }

    /// Waits until `count` chains are used (a hang guard, not a timing check).
    public func waitForUsed(_ count: Int, timeout: TimeInterval = 10) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while used.count < count {
            guard Date() < deadline else { return false }
            _ = waitForInterrupt(timeout: 50)
        }
        return true
    }

    /// Waits for the device's interrupt (a hang guard, not a timing check).
    public func waitForInterrupt(timeout: Int32 = 10_000) -> Bool {
        var fd = pollfd(fd: call, events: Int16(POLLIN), revents: 0)
        guard poll(&fd, 1, timeout) == 1 else { return false }
        var value: UInt64 = 0
        return Glibc.read(call, &value, 8) == 8
    }

    /// Used-ring entries so far, as (descriptor, bytes written).
    public var used: [(head: UInt32, written: UInt32)] {
        let index = Self.u16(guestRAM.read(at: GuestAddress(Self.used + 2), count: 2)!)
        return (0..<Int(index)).map { i in
            let entry = guestRAM.read(at: GuestAddress(Self.used + 4 + 8 * UInt64(i % size)), count: 8)!
            return (UInt32(Self.u64(entry) & 0xFFFF_FFFF), UInt32(Self.u64(entry) >> 32))
        }
    }

    public func read(_ address: UInt64, count: Int) -> [UInt8] { guestRAM.read(at: GuestAddress(address), count: count) ?? [] }

    public static func bytes<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    static func u64(_ b: [UInt8]) -> UInt64 { b.prefix(8).enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * $1.offset) } }
    static func u16(_ b: [UInt8]) -> UInt16 { UInt16(b[0]) | UInt16(b[1]) << 8 }
}
