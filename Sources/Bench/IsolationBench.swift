import Foundation
import Glibc
import Kernel
import Synchronization
import SystemAssembly

/// The same nvmelite.so in process and in a driver-host process, at QD1 and
/// QD32, in one run; and how long a disk is without its driver when the
/// host is killed mid-I/O (death noticed → serving again).
struct IsolationBench {
    let quick: Bool
    let progress: @Sendable (String) -> Void

    /// This executable: `oyako`, which is also the driver host.
    static var executable: String { URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path }

    func run(drivers: [String], state: String) throws -> [BenchFigure] {
        guard let nvme = drivers.first(where: { $0.hasSuffix("nvmelite.so") }) else { return [] }
        let inProcess = try BootedSystem(.bareMetal, state: state + "/in-process", diskSize: 128 << 20, drivers: [nvme])
        defer { inProcess.shutdown() }
        let isolated = try BootedSystem(.bareMetal, state: state + "/isolated", diskSize: 128 << 20, drivers: [nvme], driverHost: Self.executable)
        defer { isolated.shutdown() }
        guard let local = inProcess.kernel.blockLayer.disks.first, let remote = isolated.kernel.blockLayer.disks.first,
            isolated.kernel.driverHostProcess(at: isolated.testbed.nvmeSlot.address) != nil
        else { throw DemoError(message: "bench: nvmelite did not attach in process and in a driver host") }

        let scale = quick ? 1 : 5, rounds = quick ? 1 : 3
        let workloads = [
            BlockBench.Workload(name: "4k_randread_qd1", write: false, blocks: 8, sequential: false, depth: 1, count: 1000 * scale, target: nil),
            BlockBench.Workload(name: "4k_randread_qd32", write: false, blocks: 8, sequential: false, depth: 32, count: 4000 * scale, target: nil),
        ]
        var figures: [BenchFigure] = []
        for w in workloads {
            var here: [BlockBench.Measured] = [], there: [BlockBench.Measured] = []
            for _ in 0..<rounds {
                here.append(try BlockBench.host(local, w, start: 0))
                there.append(try BlockBench.host(remote, w, start: 0))
            }
            let h = BlockBench.median(here), t = BlockBench.median(there)
            let note = "median of \(rounds) round(s), the same nvmelite.so in a driver-host process against in process, bare metal"
            if w.depth == 1 {
                figures.append(BenchFigure("block.\(w.name).driver_host_latency", t.p50us, "µs", baseline: h.p50us, target: "≤ 1.3× in process",
                                           met: t.p50us <= 1.3 * h.p50us, p50: t.p50us, p99: t.p99us, note: note + "; median latency"))
            }
            figures.append(BenchFigure("block.\(w.name).driver_host", t.opsPerSecond, "IOPS", baseline: h.opsPerSecond,
                                       target: w.depth == 32 ? "≥ 0.9 of in process" : nil, met: w.depth == 32 ? t.opsPerSecond >= 0.9 * h.opsPerSecond : nil,
                                       p50: t.p50us, p99: t.p99us, note: note))
            progress(String(format: "isolation %@: in process %.0f IOPS (p50 %.1f µs), driver host %.0f IOPS (p50 %.1f µs)", w.name, h.opsPerSecond, h.p50us, t.opsPerSecond, t.p50us))
        }
        figures.append(try restartAfterKill(isolated))
        return figures
    }

    /// SIGKILL the host under two writers, several times: from the death
    /// noticed to the disk served by a new host, median.
    private func restartAfterKill(_ system: BootedSystem) throws -> BenchFigure {
        let kernel = system.kernel, address = system.testbed.nvmeSlot.address
        let times = quick ? 3 : 9
        kernel.supervisor.policy.backoff = .zero
        kernel.supervisor.policy.maxRestarts = times + 1
        guard let disk = kernel.blockLayer.disks.first else { throw DemoError(message: "bench: no disk in a driver host") }
        let writers = BackgroundWriters(2, on: disk)
        defer { writers.finish() }
        // The Kernel logs each death as an error: say first that they are ours.
        progress("isolation: killing nvmelite's driver host \(times) times with SIGKILL under two writers (the kernel logs each death)")
        var restarts: [Double] = []
        for _ in 0..<times {
            let before = kernel.supervisor.events.count
            guard let pid = kernel.driverHostProcess(at: address) else { throw DemoError(message: "bench: no driver host to kill") }
            usleep(20_000)
            kill(pid, SIGKILL)
            let deadline = Date(timeIntervalSinceNow: 30)
            while kernel.supervisor.events.count == before && Date() < deadline { usleep(1000) }
            guard let event = kernel.supervisor.events.dropFirst(before).first, !event.outcome.gaveUp else {
                throw DemoError(message: "bench: the killed driver host was not replaced")
            }
            restarts.append(event.duration.milliseconds)
        }
        let failures = writers.finish()
        guard failures == 0 else { throw DemoError(message: "bench: \(failures) writes failed across host deaths") }
        let median = restarts.sorted()[restarts.count / 2]
        progress(String(format: "isolation: a killed driver host is replaced and serving again in %.1f ms (median of %d)", median, times))
        return BenchFigure("driver_host.restart_after_kill.nvmelite", median, "ms",
                           note: "median of \(times) SIGKILLs under two 4 KiB writers: from the death noticed to the disk served by a new host, requests re-issued; no backoff")
    }
}
