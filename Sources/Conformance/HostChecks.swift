import DriverHost
import Foundation
import Glibc
import Kernel
import Machine
import Synchronization

/// Checks with the driver in a driver-host process of its own (`oyako
/// driver-host`), as the Kernel runs drivers of the classes hosts serve
/// (`Kernel.hostedClasses`): the host starts from the driver file alone, so
/// a driver that needs anything else (a file beside it, state from another
/// process, memory the OS did not give it for DMA) fails here.
extension Catalogue {
    static let hostChecks: [CheckDefinition] = [
        CheckDefinition("host.attach", "attached in a driver-host process of its own; detach and deinit there leave nothing", requires: ["lifecycle.attach"], classes: Kernel.hostedClasses, timeout: 30) { c in
            try withHostedDriver(c) { rig, address, pid in
                guard let report = rig.kernel.detach(address) else {
                    return .failed("the driver host ended without answering detach (it crashed or hung while detaching); run the check with --in-process to debug the driver's detach")
                }
                guard report.status.isOK else { return .failed("detach in the driver host returned \(report.status)") }
                guard report.leaked.isEmpty else { return .failed("detach and deinit in the driver host left \(report.leaked.joined(separator: ", "))") }
                guard report.unfinishedRequests == 0 else { return .failed("\(report.unfinishedRequests) request(s) were still with the driver when detach returned") }
                return .passed("served from driver host \(pid), then detached and unloaded cleanly")
            }
        },
        CheckDefinition("host.io", "the class's I/O checks pass again with the driver in a driver host", requires: ["host.attach", "io.basic"], classes: Kernel.hostedClasses, timeout: 180) { c in
            // Each check that passed in process, now with its rig's driver in
            // a host (one that failed there has reported its defect already).
            var hosted = c
            hosted.hosted = true
            // Time bounds (a serial line kept busy) would judge the line's
            // round trips here, not the driver: they are judged in process.
            hosted.timeBudget = nil
            return rerun(hosted, where: \.hostable, label: "with the driver in a driver host") { done in
                let note = done.skipped.isEmpty ? "" : "; skipped \(done.skipped.joined(separator: ", "))"
                return .passed("\(done.passed.joined(separator: ", ")) passed with the driver in a driver host" + note, observation: done.observation)
            }
        },
        CheckDefinition("host.reattach", "detached, then attached in a new driver host: I/O works again", requires: ["host.io"], classes: Kernel.hostedClasses, timeout: 60) { c in
            try withHostedDriver(c) { rig, address, first in
                _ = try rig.exerciseIO(seed: 1)
                _ = rig.kernel.detach(address)
                do {
                    _ = try rig.kernel.loadAndAttach(path: c.driverPath)
                } catch {
                    return .failed("attaching again in a new driver host failed: \(error)")
                }
                guard let second = rig.kernel.driverHostProcess(at: address), second != first else { return .failed("no new driver host serves the device") }
                _ = try rig.exerciseIO(seed: 2)
                return .passed("hosts \(first) then \(second)")
            }
        },
        CheckDefinition("host.crash", "its driver host killed (SIGKILL) during I/O: restarted, and the I/O goes on without an error", requires: ["host.io"], classes: Kernel.hostedClasses, timeout: 60) { c in
            try withHostedDriver(c) { rig, address, first in
                var policy = RestartPolicy()
                policy.backoff = .milliseconds(10)
                policy.hangTimeout = .seconds(86_400)
                rig.kernel.supervisor.policy = policy
                // A disk holds its requests across the restart, so its I/O
                // runs on meanwhile; other classes are used after it.
                let concurrent = rig.deviceClass == RegisteredDisk.classID
                let rounds = Atomic<Int>(0), stop = Atomic<Bool>(false), failure = Mutex<String?>(nil)
                let finished = DispatchSemaphore(value: 0)
                if concurrent {
                    Thread.detachNewThread {
                        defer { finished.signal() }
                        while !stop.load(ordering: .acquiring) {
                            do {
                                _ = try rig.exerciseIO(seed: UInt64(rounds.add(1, ordering: .relaxed).newValue))
                            } catch {
                                failure.withLock { $0 = "\(error)" }
                                return
                            }
                        }
                    }
                    let started = Date(timeIntervalSinceNow: 10)
                    while rounds.load(ordering: .relaxed) < 2 && failure.withLock({ $0 }) == nil && Date() < started { usleep(1000) }
                }
                kill(first, SIGKILL)
                let deadline = Date(timeIntervalSinceNow: 20)
                while rig.kernel.supervisor.events.isEmpty && Date() < deadline { usleep(2000) }
                if concurrent {
                    // A few more rounds on the new host, then stop.
                    let after = rounds.load(ordering: .relaxed)
                    while rounds.load(ordering: .relaxed) < after + 2 && failure.withLock({ $0 }) == nil && Date() < deadline { usleep(1000) }
                    stop.store(true, ordering: .releasing)
                    finished.wait()
                }
                if let failure = failure.withLock({ $0 }) { return .failed("I/O across the restart failed: \(failure)") }
                guard let event = rig.kernel.supervisor.events.first else { return .failed("the Kernel did not restart the driver within 20 s of its host's death") }
                guard case .restarted = event.outcome else { return .failed("the restart failed: \(event.description)") }
                guard let second = rig.kernel.driverHostProcess(at: address), second != first else { return .failed("no new driver host serves the device") }
                _ = try rig.exerciseIO(seed: 99)
                return .passed("host \(first) killed, \(second) serving" + (concurrent ? " after \(rounds.load(ordering: .relaxed)) rounds of verified I/O" : ""))
            }
        },
    ]

    /// A rig whose driver runs in a driver host, attached to the first
    /// device it binds: the body gets the device's address and the host's
    /// process. Whatever the body does, the host is ended afterwards.
    static func withHostedDriver(_ c: CheckContext, disk: Rig.DiskShape = Rig.DiskShape(), prepare: (Rig) -> Void = { _ in },
                                 _ body: (Rig, BusAddress, pid_t) throws -> CheckOutcome) throws -> CheckOutcome {
        guard let executable = c.hostExecutable else { return .skipped("no oyako executable to run driver hosts from") }
        let rig = try Rig(c, load: false, disk: disk)
        defer { rig.shutdown() }
        prepare(rig)
        rig.kernel.driverHostExecutable = executable
        guard let slot = rig.slots.first else { return .failed("the driver binds none of the devices the suite offers") }
        do {
            _ = try rig.kernel.loadAndAttach(path: c.driverPath)
        } catch {
            // The Kernel's log says what became of the host; the error only how attach ended.
            let reasons = rig.kernel.log.all.filter { $0.level <= .warning && $0.message.contains("driver host") }.map(\.message).suffix(2)
            return .failed("attach in a driver host failed: " + (reasons.isEmpty ? "\(error)" : reasons.joined(separator: "; "))
                + "; it attached in the suite's own process, so the driver depends on something only that process has (SDK/README.md, \"Your driver may run in a process of its own\")")
        }
        guard let pid = rig.kernel.driverHostProcess(at: slot.address) else { return .failed("the driver was not attached in a driver host") }
        guard pid != getpid() else { return .failed("the driver host is the suite's own process") }
        return try body(rig, slot.address, pid)
    }
}
