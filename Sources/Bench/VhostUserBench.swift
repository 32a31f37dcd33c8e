import CSystemShims
import Foundation
import Glibc
import Histogram
import Machine
import SystemAssembly
import VhostUser

/// The bench's VMM: a vhost-user front-end in this process that maps its
/// own memfd as guest RAM, fills a split virtqueue with virtio-blk requests
/// the way Linux's virtio_blk does (header, data, status; one kick per
/// batch) and reaps the used ring on the device's interrupt. It measures the
/// back-end path without a guest's emulation in the way.
final class VirtioBlockBenchDriver {
    static let queueSize = 256
    static let userBase: UInt64 = 0x7F00_0000_0000
    // Guest-physical layout: rings, then headers and statuses, then data.
    static let table: UInt64 = 0, avail: UInt64 = 0x1000, used: UInt64 = 0x2000
    static let headers: UInt64 = 0x4000, statuses: UInt64 = 0x6000, data: UInt64 = 0x10000

    let ram: PhysicalMemory
    let frontEnd: VhostUserFrontEnd
    let kick = oy_shim_eventfd(), call = oy_shim_eventfd()
    let depth: Int, slotBytes: Int
    private var availIndex: UInt16 = 0, lastUsed: UInt16 = 0

    init(path: String, depth: Int, slotBytes: Int) throws {
        precondition(depth * 3 <= Self.queueSize)
        self.depth = depth
        self.slotBytes = slotBytes
        ram = try PhysicalMemory(size: Int(Self.data) + depth * slotBytes)
        frontEnd = try VhostUserFrontEnd(path: path)
        try frontEnd.negotiate(wanted: 1 << 32)  // VERSION_1; no event index: an interrupt per batch the device completes
        try frontEnd.setMemoryTable([.init(ram, at: 0, mappedAt: Self.userBase)])
        try frontEnd.setUpRing(0, size: Self.queueSize, descriptors: Self.userBase + Self.table, avail: Self.userBase + Self.avail,
                               used: Self.userBase + Self.used, kick: kick, call: call)
        // Each slot's chain is fixed: header (read), data, status (written).
        for slot in 0..<depth {
            for (i, (address, length, flags)) in [(Self.headers + 16 * UInt64(slot), UInt32(16), UInt16(1)),
                                                  (Self.data + UInt64(slot * slotBytes), UInt32(slotBytes), UInt16(1)),
                                                  (Self.statuses + UInt64(slot), UInt32(1), UInt16(2))].enumerated() {
                let d = ram.base + Int(Self.table) + 16 * (3 * slot + i)
                d.storeBytes(of: address.littleEndian, toByteOffset: 0, as: UInt64.self)
                d.storeBytes(of: length.littleEndian, toByteOffset: 8, as: UInt32.self)
                d.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt16.self)
                d.storeBytes(of: UInt16(3 * slot + i + 1).littleEndian, toByteOffset: 14, as: UInt16.self)
            }
        }
    }

    deinit {
        _ = close(kick)
        _ = close(call)
    }

    /// Runs `w` at its depth over `region` sectors from sector 0 of the device.
    func run(_ w: BlockBench.Workload) throws -> BlockBench.Measured {
        let bytes = w.blocks * 512
        guard bytes <= slotBytes, w.depth <= depth else { throw DemoError(message: "bench: the vhost-user driver was set up for smaller requests") }
        var free = Array(0..<w.depth), issued = [UInt64](repeating: 0, count: w.depth)
        var histogram = latencyHistogram()
        var submitted = 0, completed = 0, failed = 0
        var lba = LBAStream(blocks: UInt64(w.blocks), region: BlockBench.regionBlocks, sequential: w.sequential)
        let began = DispatchTime.now().uptimeNanoseconds
        while completed < w.count {
            var posted = false
            while submitted < w.count, let slot = free.popLast() {
                let header = ram.base + Int(Self.headers) + 16 * slot
                header.storeBytes(of: UInt32(w.write ? 1 : 0).littleEndian, as: UInt32.self)
                header.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)
                header.storeBytes(of: lba.next().littleEndian, toByteOffset: 8, as: UInt64.self)
                let data = ram.base + Int(Self.table) + 16 * (3 * slot + 1)
                data.storeBytes(of: UInt32(bytes).littleEndian, toByteOffset: 8, as: UInt32.self)
                data.storeBytes(of: (UInt16(1) | (w.write ? 0 : 2)).littleEndian, toByteOffset: 12, as: UInt16.self)
                (ram.base + Int(Self.statuses) + slot).storeBytes(of: UInt8(0xFF), as: UInt8.self)
                (ram.base + Int(Self.avail) + 4 + 2 * (Int(availIndex) % Self.queueSize)).storeBytes(of: UInt16(3 * slot).littleEndian, as: UInt16.self)
                availIndex &+= 1
                issued[slot] = DispatchTime.now().uptimeNanoseconds
                submitted += 1
                posted = true
            }
            if posted {
                // Release: the entries before the index that publishes them.
                oy_shim_store_release_u16(ram.base + Int(Self.avail) + 2, availIndex)
                var one: UInt64 = 1
                _ = write(kick, &one, 8)
            }
            let reaped = reap { slot in
                _ = histogram.record(DispatchTime.now().uptimeNanoseconds - issued[slot])
                if (ram.base + Int(Self.statuses) + slot).load(as: UInt8.self) != 0 { failed += 1 }
                completed += 1
                free.append(slot)
            }
            if reaped == 0 { guard waitForCall() else { throw DemoError(message: "bench: vhost-user-blk stalled in \(w.name)") } }
        }
        guard failed == 0 else { throw DemoError(message: "bench: vhost-user-blk failed \(failed) requests in \(w.name)") }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - began) / 1e9
        return BlockBench.Measured(opsPerSecond: Double(w.count) / seconds, p50us: Double(histogram.valueAtPercentile(50)) / 1000,
                                   p99us: Double(histogram.valueAtPercentile(99)) / 1000)
    }

    /// Hands each newly used chain's slot to `done`; returns how many.
    private func reap(_ done: (Int) -> Void) -> Int {
        let index = oy_shim_load_acquire_u16(ram.base + Int(Self.used) + 2)
        var count = 0
        while lastUsed != index {
            let head = (ram.base + Int(Self.used) + 4 + 8 * (Int(lastUsed) % Self.queueSize)).load(as: UInt32.self)
            done(Int(UInt32(littleEndian: head)) / 3)
            lastUsed &+= 1
            count += 1
        }
        return count
    }

    /// Waits (a stall guard of 30 s) for the device's interrupt.
    private func waitForCall() -> Bool {
        var fd = pollfd(fd: call, events: Int16(POLLIN), revents: 0)
        while true {
            let n = poll(&fd, 1, 30_000)
            if n < 0 && errno == EINTR { continue }
            guard n == 1 else { return false }
            var value: UInt64 = 0
            _ = read(call, &value, 8)
            return true
        }
    }
}
