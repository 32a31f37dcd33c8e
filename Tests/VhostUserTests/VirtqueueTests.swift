import Machine
import Testing
import Workloads
@testable import VhostUser

/// A guest's RAM (a memfd, as QEMU's memory backend is) and a driver that
/// lays out one split virtqueue in it, as Linux's virtio_ring does.
final class FakeGuest {
    static let ramBase: UInt64 = 0x4000_0000
    static let userBase: UInt64 = 0x7F00_0000_0000
    let ram: PhysicalMemory
    let memory: GuestMemoryMap
    let size: Int
    let table = GuestAddress(ramBase + 0x1000), avail = GuestAddress(ramBase + 0x3000), used = GuestAddress(ramBase + 0x5000)
    private var availIndex: UInt16 = 0

    init(size: Int = 16, ramSize: Int = 1 << 20) throws {
        self.size = size
        ram = try PhysicalMemory(size: ramSize)
        memory = try GuestMemoryMap([.init(guestAddress: Self.ramBase, size: UInt64(ramSize), userAddress: Self.userBase, mmapOffset: 0, fileDescriptor: ram.fileDescriptor)])
    }

    var region: GuestMemory { memory.regions[0].memory }

    func queue(eventIndex: Bool = false) throws -> SplitVirtqueue {
        try SplitVirtqueue(memory: memory, size: size, descriptorTable: table, availRing: avail, usedRing: used, eventIndex: eventIndex)
    }

    func descriptor(_ index: Int, at gpa: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0, in tableAt: GuestAddress? = nil) {
        var bytes = [UInt8](repeating: 0, count: 16)
        bytes.withUnsafeMutableBytes { p in
            p.storeBytes(of: gpa, toByteOffset: 0, as: UInt64.self)
            p.storeBytes(of: length, toByteOffset: 8, as: UInt32.self)
            p.storeBytes(of: flags, toByteOffset: 12, as: UInt16.self)
            p.storeBytes(of: next, toByteOffset: 14, as: UInt16.self)
        }
        #expect(region.write(bytes, at: (tableAt ?? table).adding(16 * index)!))
    }

    /// Posts chain `head` in the avail ring and moves its index.
    func post(_ head: UInt16) {
        write16(head, at: avail.adding(4 + 2 * (Int(availIndex) % size))!)
        availIndex &+= 1
        write16(availIndex, at: avail.adding(2)!)
    }

    func setAvailIndex(_ index: UInt16) { write16(index, at: avail.adding(2)!) }
    func write16(_ v: UInt16, at a: GuestAddress) { #expect(region.write([UInt8(v & 0xFF), UInt8(v >> 8)], at: a)) }
    func read32(_ a: GuestAddress) -> UInt32 { region.read(at: a, count: 4)!.withUnsafeBytes { $0.load(as: UInt32.self) } }
    var usedIndex: UInt16 { region.read(at: used.adding(2)!, count: 2)!.withUnsafeBytes { $0.load(as: UInt16.self) } }
}

@Suite struct VirtqueueTests {
    static let data = FakeGuest.ramBase + 0x10000

    @Test func aChainRoundTrips() throws {
        let g = try FakeGuest()
        let q = try g.queue()
        #expect(try q.nextChain() == nil, "nothing posted yet")
        #expect(g.region.write(Array("request".utf8), at: GuestAddress(Self.data)))
        g.descriptor(0, at: Self.data, length: 7, flags: 1, next: 1)
        g.descriptor(1, at: Self.data + 0x1000, length: 512, flags: 2)
        g.post(0)
        let chain = try #require(try q.nextChain())
        #expect(chain.head == 0 && chain.readableBytes == 7 && chain.writableBytes == 512)
        #expect(Array(chain.readable[0]) == Array("request".utf8))
        chain.writable[0].copyBytes(from: [1, 2, 3])
        q.addUsed(head: chain.head, written: 3)
        #expect(g.usedIndex == 1 && g.read32(g.used.adding(4)!) == 0 && g.read32(g.used.adding(8)!) == 3)
        #expect(g.region.read(at: GuestAddress(Self.data + 0x1000), count: 3) == [1, 2, 3], "written straight into guest memory")
        #expect(try q.nextChain() == nil)
    }

    @Test func aLoopIsAnErrorNotAHang() throws {
        let g = try FakeGuest()
        g.descriptor(0, at: Self.data, length: 8, flags: 1, next: 1)
        g.descriptor(1, at: Self.data, length: 8, flags: 1, next: 0)
        g.post(0)
        #expect(throws: VirtqueueError.chainTooLong(head: 0)) { try g.queue().nextChain() }
    }

    @Test(arguments: [
        (FakeGuest.ramBase - 4096, UInt32(512)),         // below the RAM
        (FakeGuest.ramBase + (1 << 20) - 8, UInt32(16)), // runs past its end
        (UInt64.max - 8, UInt32(64)),                    // wraps
        (VirtqueueTests.data, UInt32(0)),                // no bytes
        (VirtqueueTests.data, UInt32.max),               // oversized
    ])
    func buffersOutsideGuestMemoryAreRefused(_ gpa: UInt64, _ length: UInt32) throws {
        let g = try FakeGuest()
        g.descriptor(0, at: gpa, length: length, flags: 2)
        g.post(0)
        #expect(throws: VirtqueueError.bufferOutsideMemory(gpa: gpa, length: length)) { try g.queue().nextChain() }
    }

    @Test func badIndicesAreRefused() throws {
        let g = try FakeGuest()
        g.post(200)
        #expect(throws: VirtqueueError.headOutOfRange(200, size: 16)) { try g.queue().nextChain() }
        let h = try FakeGuest()
        h.setAvailIndex(40)
        #expect(throws: VirtqueueError.availIndexJump(from: 0, to: 40, size: 16)) { try h.queue().nextChain() }
        let n = try FakeGuest()
        n.descriptor(0, at: Self.data, length: 8, flags: 1, next: 99)
        n.post(0)
        #expect(throws: VirtqueueError.nextOutOfRange(99, size: 16)) { try n.queue().nextChain() }
        let w = try FakeGuest()
        w.descriptor(0, at: Self.data, length: 8, flags: 3, next: 1)
        w.descriptor(1, at: Self.data, length: 8, flags: 0)
        w.post(0)
        #expect(throws: VirtqueueError.readableAfterWritable(head: 0)) { try w.queue().nextChain() }
    }

    @Test func indirectTablesAreFollowedOnceAndChecked() throws {
        let g = try FakeGuest()
        let inner = GuestAddress(Self.data + 0x8000)
        g.descriptor(0, at: Self.data, length: 16, flags: 1, next: 1, in: inner)
        g.descriptor(1, at: Self.data + 0x1000, length: 64, flags: 2, in: inner)
        g.descriptor(0, at: inner.raw, length: 32, flags: 4)
        g.post(0)
        let chain = try #require(try g.queue().nextChain())
        #expect(chain.readableBytes == 16 && chain.writableBytes == 64)

        let nested = try FakeGuest()
        nested.descriptor(0, at: inner.raw, length: 16, flags: 4, in: inner)
        nested.descriptor(0, at: inner.raw, length: 16, flags: 4)
        nested.post(0)
        #expect(throws: VirtqueueError.nestedIndirect(head: 0)) { try nested.queue().nextChain() }

        let withNext = try FakeGuest()
        withNext.descriptor(0, at: inner.raw, length: 16, flags: 5, next: 1)
        withNext.post(0)
        #expect(throws: VirtqueueError.indirectWithNext(head: 0)) { try withNext.queue().nextChain() }

        let ragged = try FakeGuest()
        ragged.descriptor(0, at: inner.raw, length: 20, flags: 4)
        ragged.post(0)
        #expect(throws: VirtqueueError.badIndirectTable(length: 20)) { try ragged.queue().nextChain() }

        let loop = try FakeGuest()
        loop.descriptor(0, at: Self.data, length: 8, flags: 1, next: 1, in: inner)
        loop.descriptor(1, at: Self.data, length: 8, flags: 1, next: 0, in: inner)
        loop.descriptor(0, at: inner.raw, length: 32, flags: 4)
        loop.post(0)
        #expect(throws: VirtqueueError.chainTooLong(head: 0)) { try loop.queue().nextChain() }
    }

    @Test func ringsMustLieInGuestMemory() throws {
        let g = try FakeGuest()
        #expect(throws: VirtqueueError.badSize(12)) { try SplitVirtqueue(memory: g.memory, size: 12, descriptorTable: g.table, availRing: g.avail, usedRing: g.used, eventIndex: false) }
        #expect(throws: VirtqueueError.ringOutsideMemory("descriptor table")) {
            try SplitVirtqueue(memory: g.memory, size: 16, descriptorTable: GuestAddress(0x1000), availRing: g.avail, usedRing: g.used, eventIndex: false)
        }
        #expect(throws: VirtqueueError.ringOutsideMemory("used ring")) {
            try SplitVirtqueue(memory: g.memory, size: 16, descriptorTable: g.table, availRing: g.avail, usedRing: GuestAddress(FakeGuest.ramBase + (1 << 20) - 16), eventIndex: false)
        }
    }

    @Test func notificationsFollowEventIndexAndTheNoInterruptFlag() throws {
        let g = try FakeGuest()
        let q = try g.queue(eventIndex: true)
        for i in 0..<3 {
            g.descriptor(i, at: Self.data, length: 8, flags: 2)
            g.post(UInt16(i))
        }
        // used_event = 1: the driver wants to hear once the used index passes 1.
        g.write16(1, at: g.avail.adding(4 + 2 * 16)!)
        q.addUsed(head: try #require(try q.nextChain()).head, written: 0)
        #expect(!q.needsNotification(), "used index 1 has not passed used_event 1")
        q.addUsed(head: try #require(try q.nextChain()).head, written: 0)
        #expect(q.needsNotification(), "used index 2 passed used_event 1")
        let plain = try FakeGuest()
        let p = try plain.queue()
        plain.write16(1, at: plain.avail)  // VRING_AVAIL_F_NO_INTERRUPT
        #expect(!p.needsNotification())
        plain.write16(0, at: plain.avail)
        #expect(p.needsNotification())
    }
}

@Suite struct MemoryTableTests {
    @Test func aBufferMayCrossFromOneRegionIntoTheNext() throws {
        let low = try PhysicalMemory(size: 64 << 10), high = try PhysicalMemory(size: 64 << 10)
        let map = try GuestMemoryMap([
            .init(guestAddress: 0, size: 64 << 10, userAddress: 0x10_0000, mmapOffset: 0, fileDescriptor: low.fileDescriptor),
            .init(guestAddress: 64 << 10, size: 64 << 10, userAddress: 0x90_0000, mmapOffset: 0, fileDescriptor: high.fileDescriptor),
        ])
        let pieces = try #require(map.pieces(GuestAddress((64 << 10) - 100), length: 300))
        #expect(pieces.map(\.count) == [100, 200])
        #expect(map.pointer(GuestAddress((64 << 10) - 100), length: 300) == nil, "rings must not cross regions")
        #expect(map.guestAddress(ofUser: 0x90_0010, length: 16) == GuestAddress((64 << 10) + 0x10))
        #expect(map.guestAddress(ofUser: 0x90_0000 + (64 << 10) - 8, length: 16) == nil)
        #expect(map.pieces(GuestAddress(128 << 10), length: 1) == nil)
    }

    @Test func badTablesAreRefused() throws {
        let ram = try PhysicalMemory(size: 64 << 10)
        let fd = ram.fileDescriptor
        #expect(throws: MemoryTableError.noRegions) { try GuestMemoryMap([]) }
        #expect(throws: MemoryTableError.emptyRegion(index: 0)) { try GuestMemoryMap([.init(guestAddress: 0, size: 0, userAddress: 0, mmapOffset: 0, fileDescriptor: fd)]) }
        #expect(throws: MemoryTableError.overlapping(0, 1)) {
            try GuestMemoryMap([.init(guestAddress: 0, size: 8192, userAddress: 0, mmapOffset: 0, fileDescriptor: fd),
                                .init(guestAddress: 4096, size: 8192, userAddress: 1 << 20, mmapOffset: 0, fileDescriptor: fd)])
        }
        #expect(throws: MemoryTableError.regionWraps(index: 0)) { try GuestMemoryMap([.init(guestAddress: UInt64.max - 100, size: 4096, userAddress: 0, mmapOffset: 0, fileDescriptor: fd)]) }
        let nine = (0..<9).map { GuestMemoryMap.Description(guestAddress: UInt64($0) << 20, size: 4096, userAddress: UInt64($0) << 20, mmapOffset: 0, fileDescriptor: fd) }
        #expect(throws: MemoryTableError.tooManyRegions(9, limit: 8)) { try GuestMemoryMap(nine) }
        #expect(throws: MemoryTableError.self) { try GuestMemoryMap([.init(guestAddress: 0, size: 4096, userAddress: 0, mmapOffset: 0, fileDescriptor: -1)]) }
    }
}

/// A hostile guest's descriptors, at random: every chain the queue hands
/// out lies inside guest memory, and everything else is an error, never a
/// crash or a hang.
@Suite struct RandomVirtqueueTests {
    /// An address a guest might write: inside its RAM, just outside it, or anything.
    static func address(_ random: inout SeededGenerator) -> UInt64 {
        switch Int.random(in: 0..<8, using: &random) {
        case 0: UInt64.random(in: 0...UInt64.max, using: &random)
        case 1: UInt64.max - UInt64.random(in: 0..<8192, using: &random)
        case 2: FakeGuest.ramBase - UInt64.random(in: 1...4096, using: &random)
        case 3: FakeGuest.ramBase + (1 << 20) - UInt64.random(in: 0...4096, using: &random)
        default: FakeGuest.ramBase + 0x8000 + UInt64.random(in: 0..<0x40000, using: &random)
        }
    }

    static func length(_ random: inout SeededGenerator) -> UInt32 {
        switch Int.random(in: 0..<6, using: &random) {
        case 0: UInt32.random(in: 0...UInt32.max, using: &random)
        case 1: 0
        case 2: UInt32(16 * Int.random(in: 1...40, using: &random))  // an indirect table's size
        default: UInt32.random(in: 1...8192, using: &random)
        }
    }

    /// NEXT a third of the time, WRITE half, INDIRECT a tenth, as often in
    /// a driver's tables as garbage is not.
    static func flags(_ random: inout SeededGenerator) -> UInt16 {
        (Int.random(in: 0..<3, using: &random) == 0 ? 1 : 0) | (Bool.random(using: &random) ? 2 : 0) | (Int.random(in: 0..<10, using: &random) == 0 ? 4 : 0)
    }

    @Test func randomDescriptorsGiveChainsInsideMemoryOrErrors() throws {
        var random = SeededGenerator(seed: 0x5EED)
        var chains = 0, errors = 0
        for _ in 0..<2000 {
            let g = try FakeGuest(size: 16)
            // A random table, and a random indirect table where indirect descriptors often point.
            for i in 0..<16 {
                g.descriptor(i, at: Self.address(&random), length: Self.length(&random), flags: Self.flags(&random),
                             next: UInt16.random(in: 0..<20, using: &random))
            }
            let indirect = GuestAddress(FakeGuest.ramBase + 0x8000)
            for i in 0..<8 {
                g.descriptor(i, at: Self.address(&random), length: Self.length(&random), flags: Self.flags(&random),
                             next: UInt16.random(in: 0..<10, using: &random), in: indirect)
            }
            for _ in 0..<Int.random(in: 1...16, using: &random) { g.post(UInt16.random(in: 0..<18, using: &random)) }
            let q = try g.queue(eventIndex: Bool.random(using: &random))
            let ram: UnsafeMutableRawPointer = try #require(g.memory.pointer(GuestAddress(FakeGuest.ramBase), length: 1))
            let base = UInt(bitPattern: ram)
            for _ in 0..<17 {
                do {
                    guard let chain = try q.nextChain() else { break }
                    chains += 1
                    for buffer in chain.readable + chain.writable {
                        let offset = UInt(bitPattern: buffer.baseAddress) &- base
                        #expect(offset < 1 << 20 && offset + UInt(buffer.count) <= 1 << 20, "a buffer outside guest memory")
                    }
                    q.addUsed(head: chain.head, written: UInt32.random(in: 0...UInt32(chain.writableBytes), using: &random))
                } catch {
                    errors += 1
                    break
                }
            }
        }
        #expect(chains > 300 && errors > 300, "both outcomes reached: \(chains) chains, \(errors) errors")
    }
}
