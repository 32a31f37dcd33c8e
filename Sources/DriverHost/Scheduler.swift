import CSystemShims
import Foundation

/// Host worker threads for drivers' deferred work and timer callbacks, both
/// of which run in [passive] context. Work items are created up front and
/// queued without allocating, so queuing is allowed from interrupt handlers.
final class Scheduler: @unchecked Sendable {
    // @unchecked Sendable: all state is guarded by `condition`.
    static let shared = Scheduler(workers: 2)

    /// A work item or timer. An item never runs on two workers at once:
    /// queued while it runs, it runs again after the current run returns.
    final class Item: @unchecked Sendable {
        // Guarded by the scheduler's condition.
        let callback: @Sendable () -> Void
        /// Wants a run: in `ready`, or (while running) to be put there when
        /// the run returns.
        var queued = false
        /// The worker running the callback, while it runs.
        var runner: pthread_t?
        var cancelled = false
        /// Timers only: the deadline while armed.
        var deadline: UInt64?

        var running: Bool { runner != nil }

        init(callback: @escaping @Sendable () -> Void) { self.callback = callback }
    }

    private let condition = NSCondition()
    private var ready: [Item] = []
    private var timers: [Item] = []

    private init(workers: Int) {
        for i in 0..<workers {
            let t = Thread { [unowned self] in
                oy_shim_name_thread("oy-worker")
                self.workerLoop()
            }
            t.name = "oyako-worker-\(i)"
            t.start()
        }
        let t = Thread { [unowned self] in self.timerLoop() }
        t.name = "oyako-timers"
        t.start()
    }

    /// Queues `item` unless it is already queued. Queued while it runs, it
    /// runs once more after the current run. [any-thread]
    func queue(_ item: Item) {
        condition.lock()
        enqueueLocked(item)
        condition.unlock()
    }

    private func enqueueLocked(_ item: Item) {
        guard !item.queued && !item.cancelled else { return }
        item.queued = true
        // A running item goes to `ready` when its run returns (workerLoop).
        if !item.running {
            ready.append(item)
            condition.broadcast()
        }
    }

    /// Arms a timer item to be queued after `delay` nanoseconds. [any-thread]
    func arm(_ item: Item, delayNanoseconds delay: UInt64) {
        condition.lock()
        if !item.cancelled {
            // Saturating: a delay past the end of time is never, not at once.
            let (deadline, overflow) = monotonicNanoseconds().addingReportingOverflow(delay)
            item.deadline = overflow ? .max : deadline
            if !timers.contains(where: { $0 === item }) { timers.append(item) }
            condition.broadcast()
        }
        condition.unlock()
    }

    /// Disarms a timer and dequeues the item; a running callback continues.
    func cancel(_ item: Item) {
        condition.lock()
        item.deadline = nil
        timers.removeAll { $0 === item }
        if item.queued {
            ready.removeAll { $0 === item }
            item.queued = false
        }
        condition.unlock()
    }

    /// Why `retire` refused to wait.
    enum RetireError: Error {
        /// Called from the item's own callback, which would wait for itself.
        case fromOwnCallback
    }

    /// Cancels for good and waits until a running callback has returned;
    /// afterwards the callback never runs again.
    func retire(_ item: Item) throws(RetireError) {
        condition.lock()
        defer { condition.unlock() }
        item.cancelled = true
        item.deadline = nil
        timers.removeAll { $0 === item }
        ready.removeAll { $0 === item }
        item.queued = false
        if let runner = item.runner, pthread_equal(runner, pthread_self()) != 0 { throw .fromOwnCallback }
        while item.running { condition.wait() }
    }

    private func workerLoop() {
        condition.lock()
        while true {
            while ready.isEmpty { condition.wait() }
            let item = ready.removeFirst()
            item.queued = false
            item.runner = pthread_self()
            condition.unlock()
            oy_shim_set_context(0, nil)
            item.callback()
            condition.lock()
            item.runner = nil
            // Queued again while it ran: now it may run again.
            if item.queued && !item.cancelled { ready.append(item) }
            condition.broadcast()
        }
    }

    private func timerLoop() {
        condition.lock()
        while true {
            let now = monotonicNanoseconds()
            var next: UInt64?
            for item in timers {
                guard let deadline = item.deadline else { continue }
                if deadline <= now {
                    item.deadline = nil
                    if !item.queued && !item.cancelled {
                        item.queued = true
                        ready.append(item)
                        condition.broadcast()
                    }
                } else {
                    next = min(next ?? deadline, deadline)
                }
            }
            timers.removeAll { $0.deadline == nil }
            if let next {
                // At most an hour at a time: a Date centuries away traps, and
                // the loop looks again anyway.
                let seconds = min(Double(next - now) / 1e9, 3600)
                _ = condition.wait(until: Date(timeIntervalSinceNow: seconds))
            } else {
                condition.wait()
            }
        }
    }
}

func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
