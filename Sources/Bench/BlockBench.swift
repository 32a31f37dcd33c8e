import SystemAssembly
import Glibc
import DriverHost
import Foundation
import Guest
import Histogram
import Kernel
import Machine
import Synchronization
import VirtualizationStack
import VMBus

/// Block I/O on four paths in one run — bare OS, root partition local,
/// child partition through VMBus, a VM's vhost-user-blk device served by
/// the root — all through the same vendor driver.
struct BlockBench {
    let quick: Bool
    let progress: @Sendable (String) -> Void

    struct Workload: Sendable {
        let name: String
        let write: Bool
        let blocks: Int        // 512-byte blocks per request
        let sequential: Bool
        let depth: Int
        let count: Int
        /// Target child/bare ratio, when the issue sets one.
        let target: Double?
        /// Target vhost-user/bare ratio, when the issue sets one.
        var vhostTarget: Double? = nil
    }

    var workloads: [Workload] {
        let scale = quick ? 1 : 5
        return [
            Workload(name: "4k_randread_qd1", write: false, blocks: 8, sequential: false, depth: 1, count: 1000 * scale, target: nil),
            Workload(name: "4k_randwrite_qd1", write: true, blocks: 8, sequential: false, depth: 1, count: 1000 * scale, target: nil),
            Workload(name: "4k_randread_qd32", write: false, blocks: 8, sequential: false, depth: 32, count: 4000 * scale, target: 0.60, vhostTarget: 0.60),
            Workload(name: "4k_randwrite_qd32", write: true, blocks: 8, sequential: false, depth: 32, count: 4000 * scale, target: 0.60, vhostTarget: 0.60),
            Workload(name: "64k_seqread_qd8", write: false, blocks: 128, sequential: true, depth: 8, count: 400 * scale, target: 0.90, vhostTarget: 0.80),
            Workload(name: "64k_seqwrite_qd8", write: true, blocks: 128, sequential: true, depth: 8, count: 400 * scale, target: 0.90, vhostTarget: 0.80),
        ]
    }

    /// Region every path uses: 64 MiB of the disk.
    static let regionBlocks: UInt64 = 131072

    struct Measured: Sendable {
        let opsPerSecond: Double
        let p50us: Double
        let p99us: Double
        /// Context switches (voluntary and not) in the whole process per
        /// request: each is a thread handing work to another.
        var switchesPerRequest: Double = 0
    }

    /// Context switches of the whole process so far (getrusage).
    static func contextSwitches() -> Int {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        return usage.ru_nvcsw + usage.ru_nivcsw
    }

    /// Rounds per workload and path. Each round runs the workload on bare
    /// metal, in the root and in the child back to back, so that a slow
    /// spell of the machine hits all three paths alike; each path reports its
    /// median round.
    var rounds: Int { quick ? 1 : 5 }

    func run(drivers: [String], state: String) throws -> [BenchFigure] {
        guard let nvme = drivers.first(where: { $0.hasSuffix("nvmelite.so") }) else { return [] }
        var bare: [String: [Measured]] = [:]
        var root: [String: [Measured]] = [:]
        var child: [String: [Measured]] = [:]
        var vhost: [String: [Measured]] = [:]

        // All three paths stay up for the whole run.
        let bareSystem = try BootedSystem(.bareMetal, state: state + "/bare", diskSize: 256 << 20, drivers: [nvme])
        defer { bareSystem.shutdown() }
        guard let bareDisk = bareSystem.kernel.blockLayer.disks.first else { throw DemoError(message: "bench: no disk on bare metal") }

        let rootSystem = try BootedSystem(.rootPartition(memory: 96 << 20), state: state + "/root", diskSize: 256 << 20, memorySize: 256 << 20, drivers: [nvme])
        defer { rootSystem.shutdown() }
        guard let partition = rootSystem.partition, let rootDisk = rootSystem.kernel.blockLayer.disks.first else {
            throw DemoError(message: "bench: no disk in the root partition")
        }

        let manager = VMManager(root: partition)
        let vm = try manager.createChild(name: "bench", memorySize: 16 << 20)
        defer { manager.destroy(vm) }
        manager.offerStorage(to: vm, disk: rootDisk, region: Self.regionBlocks..<(2 * Self.regionBlocks))
        let guest = try ChildRunner(manager: manager, vm: vm)
        defer { guest.finish() }

        // A VM's disk: vhost-user-blk on the next region, driven by the bench's own front-end.
        let region = try DiskRegion(disk: rootDisk, firstBlock: 2 * Self.regionBlocks, blockCount: Self.regionBlocks)
        let server = try VhostUserServices.serveBlock(at: state + "/vhost-blk.sock", region: region)
        defer { server.stop() }
        let vmm = try VirtioBlockBenchDriver(path: server.path, depth: workloads.map(\.depth).max() ?? 1,
                                             slotBytes: (workloads.map(\.blocks).max() ?? 8) * 512)

        for _ in 0..<rounds {
            for w in workloads {
                bare[w.name, default: []].append(try counted(w.count) { try Self.host(bareDisk, w, start: 0) })
                root[w.name, default: []].append(try counted(w.count) { try Self.host(rootDisk, w, start: 0) })
                child[w.name, default: []].append(try counted(w.count) { try guest.run(w) })
                vhost[w.name, default: []].append(try counted(w.count) { try vmm.run(w) })
            }
        }

        var figures: [BenchFigure] = []
        let note = { (m: Measured) in
            String(format: "median of %d rounds; %.1f context switches per request; p50/p99 latency in µs", rounds, m.switchesPerRequest)
        }
        for w in workloads {
            guard let b = bare[w.name].map(Self.median), let r = root[w.name].map(Self.median), let c = child[w.name].map(Self.median) else { continue }
            let unit = w.blocks >= 128 ? "MiB/s" : "IOPS"
            let scale = w.blocks >= 128 ? Double(w.blocks * 512) / 1048576 : 1
            let ratio = c.opsPerSecond / b.opsPerSecond
            figures.append(BenchFigure("block.\(w.name).bare", b.opsPerSecond * scale, unit, p50: b.p50us, p99: b.p99us, note: note(b)))
            figures.append(BenchFigure("block.\(w.name).root", r.opsPerSecond * scale, unit, baseline: b.opsPerSecond * scale,
                                       p50: r.p50us, p99: r.p99us, note: note(r)))
            figures.append(BenchFigure(
                "block.\(w.name).child", c.opsPerSecond * scale, unit, baseline: b.opsPerSecond * scale,
                target: w.target.map { String(format: "child/bare ≥ %.2f", $0) }, met: w.target.map { ratio >= $0 }, p50: c.p50us, p99: c.p99us,
                note: note(c)))
            if let v = vhost[w.name].map(Self.median) {
                let vratio = v.opsPerSecond / b.opsPerSecond
                figures.append(BenchFigure(
                    "block.\(w.name).vhost_user", v.opsPerSecond * scale, unit, baseline: b.opsPerSecond * scale,
                    target: w.vhostTarget.map { String(format: "vhost-user/bare ≥ %.2f", $0) }, met: w.vhostTarget.map { vratio >= $0 }, p50: v.p50us, p99: v.p99us,
                    note: note(v) + "; a vhost-user front-end in this process (its own memfd, split virtqueue, eventfd kicks) against the root's vhost-user-blk back-end, data bounced through the root's I/O memory"))
                progress(String(format: "block %@: vhost-user %.0f %@ (vhost-user/bare %.2f); context switches per request %.1f", w.name, v.opsPerSecond * scale, unit, vratio, v.switchesPerRequest))
            }
            progress(String(format: "block %@: bare %.0f, root %.0f, child %.0f %@ (child/bare %.2f); context switches per request %.1f / %.1f / %.1f",
                            w.name, b.opsPerSecond * scale, r.opsPerSecond * scale, c.opsPerSecond * scale, unit, ratio,
                            b.switchesPerRequest, r.switchesPerRequest, c.switchesPerRequest))
        }
        return figures
    }

    /// The round with the median throughput (the upper middle of an even count).
    static func median(_ rounds: [Measured]) -> Measured {
        rounds.sorted { $0.opsPerSecond < $1.opsPerSecond }[rounds.count / 2]
    }

    private func counted(_ count: Int, _ body: () throws -> Measured) throws -> Measured {
        let before = Self.contextSwitches()
        var measured = try body()
        measured.switchesPerRequest = Double(Self.contextSwitches() - before) / Double(count)
        return measured
    }

    /// Runs a workload on the OS's block layer at the workload's depth.
    static func host(_ disk: Disk, _ w: Workload, start: UInt64) throws -> Measured {
        let length = w.blocks * disk.geometry.blockSize
        let buffers = (0..<w.depth).compactMap { _ in disk.allocateBuffer(length: length) }
        guard buffers.count == w.depth else { throw DemoError(message: "bench: out of I/O memory") }
        let slots = DispatchSemaphore(value: w.depth)
        let free = Mutex<[Int]>(Array(0..<w.depth))
        let histogram = Mutex(latencyHistogram())
        let failures = Atomic<Int>(0)
        let group = DispatchGroup()
        var lba = LBAStream(blocks: UInt64(w.blocks), region: Self.regionBlocks, sequential: w.sequential)
        let began = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<w.count {
            slots.wait()
            let index = free.withLock { $0.removeLast() }
            group.enter()
            let issued = DispatchTime.now().uptimeNanoseconds
            disk.submit(w.write ? .write : .read, lba: start + lba.next(), blocks: w.blocks, buffer: buffers[index]) { status in
                let latency = DispatchTime.now().uptimeNanoseconds - issued
                histogram.withLock { _ = $0.record(latency) }
                if !status.isOK { failures.add(1, ordering: .relaxed) }
                free.withLock { $0.append(index) }
                slots.signal()
                group.leave()
            }
        }
        group.wait()
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - began) / 1e9
        guard failures.load(ordering: .relaxed) == 0 else { throw DemoError(message: "bench: \(failures.load(ordering: .relaxed)) I/O errors in \(w.name)") }
        return histogram.withLock { h in
            Measured(opsPerSecond: Double(w.count) / seconds, p50us: Double(h.valueAtPercentile(50)) / 1000, p99us: Double(h.valueAtPercentile(99)) / 1000)
        }
    }

    /// Runs on the child's VP: keeps `depth` SRBs in flight, each on its own
    /// slice of the data buffer.
    fileprivate static func guestRun(_ vsc: StorageVSC, _ w: Workload) throws -> Measured {
        let length = w.blocks * vsc.blockSize
        var free = Array(0..<w.depth)
        var histogram = latencyHistogram()
        var completed = 0, failed = 0, submitted = 0
        var lba = LBAStream(blocks: UInt64(w.blocks), region: regionBlocks, sequential: w.sequential)
        let began = DispatchTime.now().uptimeNanoseconds
        while completed < w.count {
            while submitted < w.count, let slot = free.popLast() {
                let issued = DispatchTime.now().uptimeNanoseconds
                try vsc.submit(write: w.write, lba: lba.next(), blocks: w.blocks, bufferOffset: slot * length) { outcome in
                    _ = histogram.record(DispatchTime.now().uptimeNanoseconds - issued)
                    if !outcome.isGood { failed += 1 }
                    completed += 1
                    free.append(slot)
                }
                submitted += 1
            }
            let before = completed
            guard vsc.wait(until: { completed > before }, timeout: 30) else { throw DemoError(message: "child: I/O stalled in \(w.name)") }
        }
        guard failed == 0 else { throw DemoError(message: "child: \(failed) I/O errors in \(w.name)") }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - began) / 1e9
        return Measured(opsPerSecond: Double(w.count) / seconds, p50us: Double(histogram.valueAtPercentile(50)) / 1000,
                        p99us: Double(histogram.valueAtPercentile(99)) / 1000)
    }
}

/// A child partition that runs workloads on its own VP, one at a time, on
/// request: the benchmark hands it a workload and waits for the result.
private final class ChildRunner: Sendable {
    private let request = Mutex<BlockBench.Workload?>(nil)
    private let result = Mutex<Result<BlockBench.Measured, DemoError>?>(nil)
    private let requested = DispatchSemaphore(value: 0)
    private let answered = DispatchSemaphore(value: 0)
    private let stopping = Atomic<Bool>(false)

    init(manager: VMManager, vm: VMManager.Child) throws {
        manager.start(vm) { [self] p, vp in
            let os = GuestOS(name: "bench", partition: p, vp: vp)
            var disks: [StorageVSC] = []
            do {
                try os.boot()
                disks = try os.openStorage()
                guard !disks.isEmpty else { throw DemoError(message: "no storage offered") }
                result.withLock { $0 = .success(BlockBench.Measured(opsPerSecond: 0, p50us: 0, p99us: 0)) }
            } catch {
                result.withLock { $0 = .failure(DemoError(message: "child: \(error)")) }
            }
            answered.signal()
            while let vsc = disks.first {
                requested.wait()
                if stopping.load(ordering: .acquiring) { break }
                guard let w = request.withLock({ $0.take() }) else { continue }
                let outcome = Result { try BlockBench.guestRun(vsc, w) }.mapError { $0 as? DemoError ?? DemoError(message: "child: \($0)") }
                result.withLock { $0 = outcome }
                answered.signal()
            }
            _ = withExtendedLifetime((os, disks)) { vp.halt(until: { false }) }
        }
        _ = try wait()
    }

    func run(_ w: BlockBench.Workload) throws -> BlockBench.Measured {
        request.withLock { $0 = w }
        requested.signal()
        return try wait()
    }

    private func wait() throws -> BlockBench.Measured {
        guard answered.wait(timeout: .now() + 300) == .success else { throw DemoError(message: "bench: the child did not answer") }
        return try result.withLock { $0.take()! }.get()
    }

    /// Lets the child's VP go idle so that the partition can be destroyed.
    func finish() {
        stopping.store(true, ordering: .releasing)
        requested.signal()
    }
}

/// LBAs for a workload: sequential, or a fixed pseudo-random sequence so
/// that every path sees the same pattern.
struct LBAStream {
    let blocks: UInt64
    let region: UInt64
    let sequential: Bool
    private var position: UInt64 = 0
    private var state: UInt64 = 0x0A7A_2026

    init(blocks: UInt64, region: UInt64, sequential: Bool) {
        self.blocks = blocks
        self.region = region
        self.sequential = sequential
    }

    mutating func next() -> UInt64 {
        if sequential {
            defer { position = (position + blocks) % (region - blocks) }
            return position
        }
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return (state >> 33) % (region / blocks) * blocks
    }
}
