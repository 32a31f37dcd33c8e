import Foundation
import Glibc
import Kernel
import Machine
import SDKTools
import Synchronization

extension DemoReport {
    /// What `oyako demo --chaos` did to the root's drivers while the
    /// children did verified I/O through them.
    public struct ChaosEntry: Encodable, Sendable {
        /// Live replacements of a driver by a rebuilt copy (nvmelite, e1klite).
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

/// The chaos `oyako demo --chaos` plays on the root's drivers, which then
/// run in driver-host processes of their own, while the children do I/O:
/// live replacements by rebuilt copies of nvmelite and of e1klite (new
/// hosts; the disk and the switch's NIC stay), then SIGKILL to the disk
/// driver's host, which the Kernel's supervisor notices and cures by
/// starting another and re-issuing what the dead one had accepted. Children
/// keep doing I/O until it is over.
final class DemoChaos: @unchecked Sendable {
    // @unchecked Sendable: `entry` is guarded by its Mutex; the rest is fixed.
    /// The rebuilt copies the chaos swaps in.
    struct Rebuilt: CustomStringConvertible {
        let disk: String
        let nic: String
        var description: String { "\(disk), \(nic)" }
    }

    private let kernel: Kernel
    private let slot: BusSlot
    private let nicSlot: BusSlot?
    private let rebuilt: Rebuilt
    private let progress: @Sendable (String) -> Void
    private let ioStarted = DispatchSemaphore(value: 0)
    private let over = Atomic<Bool>(false)
    private let entry = Mutex(DemoReport.ChaosEntry())
    private let finished = DispatchSemaphore(value: 0)

    init(kernel: Kernel, disk slot: BusSlot, nic nicSlot: BusSlot?, rebuilt: Rebuilt, progress: @escaping @Sendable (String) -> Void) {
        self.kernel = kernel
        self.slot = slot
        self.nicSlot = nicSlot
        self.rebuilt = rebuilt
        self.progress = progress
        kernel.supervisor.policy.backoff = .milliseconds(50)
    }

    /// Builds the copies of nvmelite and e1klite the chaos swaps in.
    static func rebuild(sdk: SDKLocation, into folder: String) throws -> Rebuilt {
        let plugins = ReferenceDrivers.pluginsDirectory(sdk: sdk)
        return Rebuilt(disk: try DriverBuilder.build(directory: plugins + "/nvmelite", output: folder + "/nvmelite.so", sdk: sdk),
                       nic: try DriverBuilder.build(directory: plugins + "/e1klite", output: folder + "/e1klite.so", sdk: sdk))
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
            replace(slot, with: rebuilt.disk)
            if let nicSlot {
                Thread.sleep(forTimeInterval: 0.2)
                replace(nicSlot, with: rebuilt.nic)
            }
            Thread.sleep(forTimeInterval: 0.3)
            killHost()
            Thread.sleep(forTimeInterval: 0.5)  // and some I/O through the new host
        }
    }

    /// Waits for the chaos to be over; what it did.
    func report() -> DemoReport.ChaosEntry {
        _ = finished.wait(timeout: .now() + 120)
        return entry.withLock { e in
            e.verified = e.replacements == (nicSlot == nil ? 1 : 2) && e.restarts > 0
            return e
        }
    }

    private func replace(_ slot: BusSlot, with file: String) {
        do {
            let r = try kernel.replaceDriver(at: slot.address, withFile: file)
            entry.withLock { $0.replacements += 1 }
            let sha = kernel.hostedDriver(at: slot.address)?.file.sha256.prefix(16) ?? "?"
            note(String(format: "[chaos] %@: %@ replaced by a rebuilt copy (%@, sha256 %@…, driver host %d) under the children's I/O: paused %.2f ms, %d request(s) held",
                        r.device, r.old, file, String(sha), kernel.driverHostProcess(at: slot.address) ?? 0, r.pause.milliseconds, r.heldRequests))
        } catch {
            note("[chaos] the live replacement of \(slot.address) failed: \(error)")
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
