import DriverHost
import Foundation
import Machine
import Synchronization

/// How the Kernel restarts a failed driver. The defaults follow UMDF's: a
/// few restarts in a short window, with backoff, then the device fails.
public struct RestartPolicy: Sendable, Equatable {
    /// Restarts allowed within `window`; one more failure gives up.
    public var maxRestarts = 5
    public var window: Duration = .seconds(60)
    /// Wait before the first restart in the window; doubles for each next
    /// one, up to `maxBackoff`.
    public var backoff: Duration = .milliseconds(100)
    public var maxBackoff: Duration = .seconds(2)
    /// A request with the driver for longer than this means the driver is
    /// hung (blk-mq's request timeout plays the same part in Linux); so does
    /// a driver host that answers no heartbeat for as long.
    public var hangTimeout: Duration = .seconds(30)

    public init() {}

    /// The wait before restart number `n` (1-based) in the window.
    public func delay(beforeRestart n: Int) -> Duration {
        var delay = backoff
        for _ in 1..<max(1, n) where delay < maxBackoff { delay *= 2 }
        return min(delay, maxBackoff)
    }
}

/// Something the supervisor did, in order, for the report and the tests.
public struct RecoveryEvent: Sendable, CustomStringConvertible {
    public enum Outcome: Sendable, Equatable {
        /// The driver serves the device again; `reissued` requests it had
        /// accepted went to the restarted instance.
        case restarted(attempts: Int, reissued: Int)
        /// The policy gave up: the device's disk is gone.
        case gaveUp(attempts: Int)

        public var gaveUp: Bool {
            if case .gaveUp = self { true } else { false }
        }
    }

    public let device: String
    public let driver: String
    /// Why the driver was restarted ("a request was with it for 2.0 s").
    public let cause: String
    public let outcome: Outcome
    /// From noticing the failure to the device serving again (or given up).
    public let duration: Duration

    public var description: String {
        switch outcome {
        case .restarted(let attempts, let reissued):
            "\(device): \(driver) restarted after \(cause) (attempt \(attempts), \(reissued) request(s) re-issued, "
                + String(format: "serving again %.2f s after the decision)", duration.seconds)
        case .gaveUp(let attempts):
            "\(device): gave up on \(driver) after \(cause) (\(attempts) failed restart(s) in the window); the device failed"
        }
    }
}

/// Watches the drivers the Kernel bound and restarts one that failed: the
/// device's disk holds new requests, the failed instance is detached (what
/// it accepted and gave back unfinished is kept), the device is restarted,
/// the driver attached again, and the kept requests are re-issued ahead of
/// the held ones. Reads and writes are idempotent at the block level and a
/// flush is re-issued after what came before it, so callers see latency,
/// not errors, and no acknowledged write is lost. When the policy gives up,
/// the disk is removed: callers get `.deviceGone`, observers (a VSP's
/// offer) hear why.
///
/// In process, a hang is what it can notice: a request with the driver
/// longer than the policy's `hangTimeout`. A driver that never returns from
/// a call into it cannot be recovered here; driver-host processes are the
/// place for that, and will report their deaths to `recover`.
public final class DriverSupervisor: @unchecked Sendable {
    // @unchecked Sendable: state is guarded by `state`'s lock; `kernel` is weak.
    private struct State {
        var policy = RestartPolicy()
        /// Restart times per device, within the window.
        var restarts: [BusAddress: [ContinuousClock.Instant]] = [:]
        var recovering: Set<BusAddress> = []
        var events: [RecoveryEvent] = []
        var watching = false
    }

    /// Set once, by the Kernel's init, before any thread can see it.
    weak var kernel: Kernel?
    private let state = Mutex(State())
    private let wake = NSCondition()

    init() {}

    public var policy: RestartPolicy {
        get { state.withLock { $0.policy } }
        set { state.withLock { $0.policy = newValue } }
    }

    /// What the supervisor did so far, oldest first.
    public var events: [RecoveryEvent] { state.withLock { $0.events } }
    /// How many events are kept: the oldest go first (a driver restarted
    /// every minute for weeks must not grow the OS without bound).
    public static let eventsKept = 256

    // MARK: Watchdog

    /// Starts the hang watchdog (idempotent).
    func start() {
        let first = state.withLock { s -> Bool in
            defer { s.watching = true }
            return !s.watching
        }
        guard first else { return }
        startThread(named: "oyako-driver-watchdog") { [weak self] in self?.watch() }
    }

    /// Stops the watchdog; it leaves within one period.
    func stop() {
        state.withLock { $0.watching = false }
        wake.withLock { wake.broadcast() }
    }

    private func watch() {
        while state.withLock({ $0.watching }) {
            let timeout = policy.hangTimeout
            guard let kernel else { return }
            do {
                for disk in kernel.blockLayer.disks {
                    guard let age = disk.oldestWithDriver, age > timeout else { continue }
                    let address = disk.driver.location
                    guard let slot = kernel.platform.bus.enumerate().first(where: { $0.address.description == address }) else { continue }
                    let cause = String(format: "a request was with it for %.1f s", age.seconds)
                    let host = kernel.hostedDrivers[slot.address]
                    // Off the watchdog's thread: one slow recovery must not stop it watching the others.
                    Thread.detachNewThread { [weak self] in
                        _ = self?.recover(slot.address, cause: cause + (self?.place(host, slot.address, stuckFor: timeout, requestWaiting: true) ?? ""))
                    }
                }
                // Every driver host answers heartbeats from its request loop.
                for (address, driver) in kernel.hostedDrivers {
                    guard let silent = driver.heartbeat(), silent > timeout else { continue }
                    let cause = String(format: "its driver host answered no heartbeat for %.1f s", silent.seconds)
                    Thread.detachNewThread { [weak self] in
                        _ = self?.recover(address, cause: cause + (self?.place(driver, address, stuckFor: timeout, requestWaiting: false) ?? ""))
                    }
                }
            }
            let period = min(timeout / 4, .seconds(1))
            wake.withLock { _ = wake.wait(until: Date(timeIntervalSinceNow: period.seconds)) }
        }
    }

    /// Where a hung driver is, for the cause a restart records: "; the
    /// driver's submit did not return (its thread is in …)". A driver host
    /// is asked over its line; in process, the threads of this process
    /// inside that driver's callbacks report. Only threads inside their
    /// callback for a good part of the hang count (`stuckFor` halved, at
    /// most a second): not one passing through, as another request's submit
    /// may be right then. When there are none and a request is what waits
    /// (`requestWaiting`), the driver took it and never completed it. Not
    /// asked again while that device's recovery runs (the watchdog notices
    /// the hang each period until it is over).
    private func place(_ host: IsolatedDriver?, _ address: BusAddress, stuckFor: Duration, requestWaiting: Bool) -> String {
        guard !isRecovering(address) else { return "" }
        let since = min(stuckFor / 2, .seconds(1))
        let reports: String?, driver: String
        if let host {
            (reports, driver) = (host.hangReports(since: since), host.file.resolvedPath)
        } else if let library = kernel?.instance(at: address)?.library {
            (reports, driver) = (String(decoding: DriverFault.collectHangReports(since: since), as: UTF8.self), library.mappedPath)
        } else {
            return ""
        }
        guard let reports else { return "" }  // a host that does not answer: its death will say more
        if let fault = DriverFault.hang(stderr: reports, driver: driver, driverFramesOnly: true, ownThreadsOnly: true) { return "; " + fault.message }
        return requestWaiting ? "; no call into the driver is running: it took the request and has not completed it (a lost completion or interrupt?)" : ""
    }

    // MARK: Recovery

    /// Restarts the driver of the device at `address` after a failure
    /// (`cause` says which), under the policy. Returns what happened, or nil
    /// when there is nothing to recover (no driver, no disk, or a recovery
    /// of that device already running).
    @discardableResult
    public func recover(_ address: BusAddress, cause: String) -> RecoveryEvent? {
        guard let kernel, let slot = kernel.platform.bus.enumerate().first(where: { $0.address == address }),
            let bound = kernel.restartable(at: address, slot: slot),
            state.withLock({ $0.recovering.insert(address).inserted })
        else { return nil }
        defer { _ = state.withLock { $0.recovering.remove(address) } }
        // A disk holds its requests across the restart; other classes' devices
        // (an entropy source) are simply registered again by the new driver.
        let disk = kernel.blockLayer.disk(at: address.description)
        let started = ContinuousClock.now
        let name = bound.name
        kernel.log.record(.warning, "kernel", "\(address): \(name) failed (\(cause)); restarting it")
        let previous = disk?.driver
        // A submit still in the driver gets as long as a hang takes to notice, at most 10 s.
        disk?.beginRecovery(callWait: min(policy.hangTimeout, .seconds(10)))
        kernel.parkDevices(at: address)
        kernel.detach(address)
        kernel.platform.bus.restart(slot)
        var attempts = 0
        while let delay = nextRestart(of: address) {
            attempts += 1
            Thread.sleep(forTimeInterval: delay.seconds)
            if let failure = reattach(bound.attachAgain, to: slot, disk: disk, replacing: previous, kernel: kernel) {
                kernel.log.record(.warning, "kernel", "\(address): restart \(attempts) of \(name) failed: \(failure)")
                continue
            }
            let reissued = disk?.pendingReissue ?? 0
            disk?.endReplacement()
            kernel.unparkDevices(at: address, failure: nil)
            return record(RecoveryEvent(device: address.description, driver: name, cause: cause,
                                        outcome: .restarted(attempts: attempts, reissued: reissued), duration: .now - started), kernel)
        }
        let event = RecoveryEvent(device: address.description, driver: name, cause: cause, outcome: .gaveUp(attempts: attempts),
                                  duration: .now - started)
        // Recorded before anyone can see the device fail: whoever learns of
        // it from the disk's removal finds the reason here.
        _ = record(event, kernel)
        kernel.unparkDevices(at: address, failure: event.description)
        if let disk {
            // Removed (children's offers rescinded with the reason) before
            // the requests it kept fail, so a caller that sees the failure
            // finds the device gone and why.
            _ = kernel.blockLayer.remove(disk, reason: event.description)
            disk.abandonRecovery()
        }
        return event
    }

    /// Whether a restart of the device at `address` is under way.
    func isRecovering(_ address: BusAddress) -> Bool { state.withLock { $0.recovering.contains(address) } }

    /// The wait before the next restart of the device, or nil when the
    /// policy allows no more within its window. Counts the restart.
    private func nextRestart(of address: BusAddress) -> Duration? {
        state.withLock { s in
            let now = ContinuousClock.now
            var recent = s.restarts[address, default: []].filter { now - $0 < s.policy.window }
            guard recent.count < s.policy.maxRestarts else {
                s.restarts[address] = recent
                return nil
            }
            recent.append(now)
            s.restarts[address] = recent
            return s.policy.delay(beforeRestart: recent.count)
        }
    }

    /// Attaches the driver again; nil once it serves the device (and its
    /// disk, if it had one), else why not.
    private func reattach(_ attach: () throws -> Void, to slot: BusSlot, disk: Disk?, replacing previous: (any DiskDriverBinding)?, kernel: Kernel) -> String? {
        do {
            try attach()
        } catch {
            return "\(error)"
        }
        guard let disk else { return nil }
        if disk.driver !== previous { return nil }
        kernel.detach(slot.address)
        return "it registered no disk of the same geometry"
    }

    private func record(_ event: RecoveryEvent, _ kernel: Kernel) -> RecoveryEvent {
        state.withLock { s in
            s.events.append(event)
            if s.events.count > Self.eventsKept { s.events.removeFirst(s.events.count - Self.eventsKept) }
        }
        kernel.log.record(event.outcome.gaveUp ? .error : .info, "kernel", event.description)
        return event
    }
}

extension Duration {
    /// As a Double, for timeouts, logs and figures.
    public var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
    public var milliseconds: Double { Double(components.seconds) * 1000 + Double(components.attoseconds) / 1e15 }
}
