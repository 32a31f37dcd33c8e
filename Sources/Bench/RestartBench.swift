import Foundation
import Kernel
import Synchronization
import SystemAssembly

/// How long a disk is without its driver: a live replacement's pause and a
/// supervised restart (what the Kernel does to a hung driver), both under
/// continuous I/O, against a plain detach and attach of the same driver on
/// an idle disk measured in the same run.
struct RestartBench {
    let quick: Bool
    let progress: @Sendable (String) -> Void

    func run(drivers: [String], state: String) throws -> [BenchFigure] {
        guard let nvme = drivers.first(where: { $0.hasSuffix("nvmelite.so") }) else { return [] }
        let system = try BootedSystem(.bareMetal, state: state + "/restart", diskSize: 64 << 20, drivers: [nvme])
        defer { system.shutdown() }
        let kernel = system.kernel, address = system.testbed.nvmeSlot.address
        guard let library = kernel.instance(at: address)?.library else { throw DemoError(message: "bench: nvmelite did not attach") }
        let times = quick ? 5 : 21
        // The restarts here are the benchmark's, not failures: no backoff, and the window allows them all.
        kernel.supervisor.policy.backoff = .zero
        kernel.supervisor.policy.maxRestarts = times + 1

        // Baseline: detach and attach again, nothing in flight.
        var cycles: [Double] = []
        for _ in 0..<times {
            let start = ContinuousClock.now
            kernel.detach(address)
            try kernel.attach(library, to: system.testbed.nvmeSlot)
            cycles.append((ContinuousClock.now - start).milliseconds)
        }

        // A plain detach removes the disk; the last attach made the one used from here on.
        guard let disk = kernel.blockLayer.disks.first else { throw DemoError(message: "bench: no disk after re-attaching nvmelite") }

        // Under I/O: two writers of 4 KiB blocks, each on its own region.
        let writers = BackgroundWriters(2, on: disk)
        defer { writers.finish() }
        var pauses: [Double] = [], restarts: [Double] = []
        for _ in 0..<times {
            pauses.append(try kernel.replaceDriver(at: address, with: library).pause.milliseconds)
            usleep(2000)
            guard let event = kernel.supervisor.recover(address, cause: "the benchmark asked"), case .restarted = event.outcome else {
                throw DemoError(message: "bench: the supervised restart did not bring the driver back")
            }
            restarts.append(event.duration.milliseconds)
            usleep(2000)
        }
        let failures = writers.finish()
        guard failures == 0 else { throw DemoError(message: "bench: \(failures) writes failed across restarts") }

        let cycle = median(cycles), pause = median(pauses), restart = median(restarts)
        progress(String(format: "restart: detach+attach %.2f ms idle; live replacement pause %.2f ms, supervised restart %.2f ms under I/O (medians of %d)",
                        cycle, pause, restart, times))
        let note = "median of \(times); under two 4 KiB writers; restart policy without backoff; baseline: detach + attach of the same driver, idle"
        return [
            BenchFigure("driver.detach_attach.nvmelite", cycle, "ms", note: "median of \(times), nothing in flight"),
            BenchFigure("driver.live_replace_pause.nvmelite", pause, "ms", baseline: cycle, note: note + "; from holding new requests to handing them to the new instance"),
            BenchFigure("driver.restart.nvmelite", restart, "ms", baseline: cycle,
                        note: note + "; from the supervisor's decision to the device serving again (the device restarted, the driver re-attached, accepted requests re-issued)"),
        ]
    }

    private func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
}
