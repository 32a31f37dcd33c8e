import Foundation
import Glibc
import Kernel
import Machine
import SDKTools
import Synchronization

extension DemoReport {
    /// What `oyako demo --chaos` did to the root's disk driver while the
    /// children did verified I/O through it.
    public struct ChaosEntry: Encodable, Sendable {
        /// Live replacements of nvmelite by a rebuilt copy.
        public var replacements = 0
        /// Supervised restarts of a driver whose host was killed.
        public var restarts = 0
        /// Requests the dead host had accepted, re-issued to the next one.
        public var reissued = 0
        /// What happened, in order.
        public var events: [String] = []
        /// Both happened (the children's I/O verifies on its own); set when the chaos is over.
        public var verified = false
    }
}

/// The chaos `oyako demo --chaos` plays on the root's disk driver, which
/// then runs in a driver-host process of its own, while the children do
/// I/O: a live replacement by a rebuilt copy of nvmelite (a new host), then
/// SIGKILL to that host, which the Kernel's supervisor notices and cures by
/// starting another and re-issuing what the dead one had accepted. Children
/// keep doing I/O until it is over.
final class DemoChaos: @unchecked Sendable {
    // @unchecked Sendable: `entry` is guarded by its Mutex; the rest is fixed.
    private let kernel: Kernel
    private let slot: BusSlot
    private let rebuilt: String
    private let progress: @Sendable (String) -> Void
    private let ioStarted = DispatchSemaphore(value: 0)
    private let over = Atomic<Bool>(false)
    private let entry = Mutex(DemoReport.ChaosEntry())
    private let finished = DispatchSemaphore(value: 0)

    init(kernel: Kernel, slot: BusSlot, rebuilt: String, progress: @escaping @Sendable (String) -> Void) {
        self.kernel = kernel
        self.slot = slot
        self.rebuilt = rebuilt
        self.progress = progress
        kernel.supervisor.policy.backoff = .milliseconds(50)
    }

    /// Builds the copy of nvmelite the chaos swaps in.
    static func rebuild(sdk: SDKLocation, into folder: String) throws -> String {
        try DriverBuilder.build(directory: ReferenceDrivers.pluginsDirectory(sdk: sdk) + "/nvmelite", output: folder + "/nvmelite.so", sdk: sdk)
    }

    /// A child's I/O has begun.
    func childStartedIO() { ioStarted.signal() }

    /// Children keep their I/O going while this is true.
    var running: Bool { !over.load(ordering: .acquiring) }

    /// Starts the chaos once a child's I/O runs.
    func start() {
        Thread.detachNewThread { [self] in
            defer {
                over.store(true, ordering: .releasing)
                finished.signal()
            }
            guard ioStarted.wait(timeout: .now() + 60) == .success else {
                note("[chaos] no child started I/O within 60 s; nothing done")
                return
            }
            Thread.sleep(forTimeInterval: 0.3)
            replace()
            Thread.sleep(forTimeInterval: 0.3)
            killHost()
            Thread.sleep(forTimeInterval: 0.5)  // and some I/O through the new host
        }
    }

    /// Waits for the chaos to be over; what it did.
    func report() -> DemoReport.ChaosEntry {
        _ = finished.wait(timeout: .now() + 120)
        return entry.withLock { e in
            e.verified = e.replacements > 0 && e.restarts > 0
            return e
        }
    }

    private func replace() {
        do {
            let r = try kernel.replaceDriver(at: slot.address, withFile: rebuilt)
            entry.withLock { $0.replacements += 1 }
            let sha = kernel.blockLayer.disk(at: slot.address.description)?.driver.driverSHA256.prefix(16) ?? "?"
            note(String(format: "[chaos] %@: %@ replaced by a rebuilt copy (%@, sha256 %@…, driver host %d) under the children's I/O: paused %.2f ms, %d request(s) held",
                        r.device, r.old, rebuilt, String(sha), kernel.driverHostProcess(at: slot.address) ?? 0, r.pause.milliseconds, r.heldRequests))
        } catch {
            note("[chaos] the live replacement failed: \(error)")
        }
    }

    private func killHost() {
        let before = kernel.supervisor.events.count
        guard let pid = kernel.driverHostProcess(at: slot.address) else {
            note("[chaos] nvmelite does not run in a driver host; nothing to kill")
            return
        }
        note("[chaos] \(slot.address): SIGKILL to nvmelite's driver host \(pid) in the middle of the children's I/O")
        kill(pid, SIGKILL)
        let deadline = Date(timeIntervalSinceNow: 60)
        while kernel.supervisor.events.count == before && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        guard let event = kernel.supervisor.events.dropFirst(before).first else {
            note("[chaos] the supervisor did not notice the death within 60 s")
            return
        }
        if case .restarted(_, let reissued) = event.outcome {
            entry.withLock {
                $0.restarts += 1
                $0.reissued += reissued
            }
        }
        note("[chaos] \(event); now driver host \(kernel.driverHostProcess(at: slot.address) ?? 0)")
    }

    private func note(_ line: String) {
        entry.withLock { $0.events.append(line) }
        progress(line)
    }
}
