import DriverHost
import Foundation

/// Where retries after a busy answer wait (they only hand items on).
private let submissionRetries = DispatchQueue(label: "oyako.submission-retry")

/// The software queue above a driver's depth, shared by the block and
/// network layers: at most `depth` items are with the driver, the rest wait
/// in order. A driver's OY_E_BUSY puts the item back at the head until a
/// completion frees a slot, or, when the driver has nothing of ours that
/// could complete, until a short delay has passed (blk-mq reruns a queue the
/// same way after BLK_STS_RESOURCE); any other refusal completes it with
/// that code; removal fails everything still waiting with OY_E_DEVICE_GONE.
/// What one thread enqueues reaches the driver in that order (a sender's
/// frames leave in the order it sent them), while items that find nothing
/// ahead of them go to the driver from their senders' threads at once.
final class SubmissionQueue<Item: AnyObject>: @unchecked Sendable {
    // @unchecked Sendable: state is guarded by `lock`; the closures are the
    // owner's and thread-safe.
    enum Admission {
        /// Handed to the driver now.
        case dispatched
        /// Waiting behind `depth` items already with the driver.
        case queued
        /// Not taken: the queue is full or the device gone.
        case refused
    }

    private let lock = NSCondition()
    private var depth: Int
    /// While held (a driver is being replaced), nothing goes to the driver.
    private var held = false
    private let limit: Int
    private var inflight = 0
    private var waiting: [Item] = []
    private var removed = false
    /// Calls into the driver's submit in progress.
    private var calling = 0
    /// Hands an item to the driver; returns its status.
    private var submit: (Item) -> OyStatus
    /// Completes an item the driver did not take (never called with OK).
    private let fail: (Item, OyStatus) -> Void
    /// The retry after a busy answer with nothing of ours outstanding (no
    /// completion will come to restart the queue).
    private var busyRetry = BusyRetry()
    /// Items taken from `waiting` (counted in flight) that have not gone
    /// to the driver yet, in queue order, and whether a thread is handing
    /// them on. One thread at a time hands them on, in order, and nothing
    /// passes them: an item enqueued meanwhile waits behind them, so one
    /// sender's items reach the driver in the order it sent them.
    private var lane: [Item] = []
    private var handingOn = false

    /// - Parameters:
    ///   - depth: items the driver accepts at once.
    ///   - limit: items that may wait in software (beyond that: refused).
    init(depth: Int, limit: Int = .max, submit: @escaping (Item) -> OyStatus, fail: @escaping (Item, OyStatus) -> Void) {
        self.depth = max(1, depth)
        self.limit = limit
        self.submit = submit
        self.fail = fail
    }

    /// Admits `item`: to the driver if a slot is free and nothing waits
    /// ahead of it, else to the back of the queue.
    func enqueue(_ item: Item) -> Admission {
        let admission = lock.withLock { () -> Admission in
            if removed || waiting.count >= limit { return .refused }
            if !held && inflight < depth && waiting.isEmpty && lane.isEmpty && !handingOn {
                inflight += 1
                return .dispatched
            }
            waiting.append(item)
            return .queued
        }
        // Nothing is ahead of it: it goes from the caller's thread, alongside
        // other senders' (the driver's submit is [any-thread]).
        if case .dispatched = admission { _ = submitOne(item) }
        return admission
    }

    /// One item the driver had came back: waiting items fill the free slots
    /// (this one's, and any a busy answer left free).
    func completed() {
        let start = lock.withLock { () -> Bool in
            inflight -= 1
            if inflight == 0 { lock.broadcast() }
            return held ? false : takeReadyLocked()
        }
        if start { handOn() }
    }

    /// The device went away: fail everything still waiting.
    func markRemoved() {
        let dropped = lock.withLock { () -> [Item] in
            removed = true
            // They complete through `fail` -> the owner's completion path,
            // which calls `completed()` for each: count them as in flight.
            inflight += waiting.count
            defer { waiting.removeAll() }
            return waiting
        }
        for item in dropped { fail(item, .deviceGone) }
    }

    var isRemoved: Bool { lock.withLock { removed } }

    /// Stops handing items to the driver (they wait in order) and waits
    /// until the driver has none; false if it still has some at `deadline`.
    func hold(until deadline: Date) -> Bool {
        lock.withLock {
            held = true
            while inflight > 0 { if !lock.wait(until: deadline) { return inflight == 0 } }
            return true
        }
    }

    /// Hands items to the driver again (a new one, `submit`, if given), up to `depth`.
    func resume(submit newSubmit: ((Item) -> OyStatus)? = nil, depth newDepth: Int? = nil) {
        let start = lock.withLock { () -> Bool in
            if let newSubmit { submit = newSubmit }
            if let newDepth { depth = max(1, newDepth) }
            held = false
            return takeReadyLocked()
        }
        if start { handOn() }
    }

    /// Puts `items` (which the driver gave back unfinished) at the head of
    /// the queue, in the given order, ahead of everything waiting.
    func putBack(_ items: [Item]) {
        guard !items.isEmpty else { return }
        lock.withLock { waiting.insert(contentsOf: items, at: 0) }
    }

    /// Items waiting in software now.
    var waitingCount: Int { lock.withLock { waiting.count } }

    /// Waits until no call into the driver's submit is in progress (a hold
    /// stops new ones); false if one still is at `deadline`. The OS detaches
    /// a driver only then: a submit racing its detach is an accepted request
    /// the detach cannot see.
    func waitForCalls(until deadline: Date) -> Bool {
        lock.withLock {
            while calling > 0 { if !lock.wait(until: deadline) { return calling == 0 } }
            return true
        }
    }

    /// What one submit came to.
    private enum Outcome { case taken, busy }

    /// What became of an item the driver answered.
    private enum Bounce {
        /// Taken, or refused for good (`fail` has it).
        case none
        /// Back at the head; items still with the driver restart the queue.
        case waiting
        /// Back at the head, and nothing is with the driver to restart it.
        case retry(after: Duration)
        /// The device went away meanwhile: they fail as gone.
        case gone([Item])
    }

    /// Hands `item` (counted in flight) to the driver. A busy answer puts
    /// it back at the head of the queue, ahead of what waits (and of the
    /// lane, which follows it), and ends the lane's run; any other refusal
    /// fails it.
    private func submitOne(_ item: Item) -> Outcome {
        let submit = lock.withLock { () -> (Item) -> OyStatus in
            calling += 1
            return self.submit
        }
        let status = submit(item)
        let bounce = lock.withLock { () -> Bounce in
            calling -= 1
            if calling == 0 { lock.broadcast() }
            guard status == .busy else {
                if status.isOK { busyRetry.reset() }
                return .none
            }
            let back = [item] + lane
            lane.removeAll()
            // Removed meanwhile: nothing waits any more; these fail through
            // `fail` like those that waited (still in flight).
            if removed { return .gone(back) }
            inflight -= back.count
            waiting.insert(contentsOf: back, at: 0)
            if inflight == 0 { lock.broadcast() }
            // With nothing of ours at the driver, no completion restarts the queue.
            guard inflight == 0, let delay = busyRetry.schedule() else { return .waiting }
            return .retry(after: delay)
        }
        switch bounce {
        case .none:
            if !status.isOK { fail(item, status) }
            return .taken
        case .waiting:
            break
        case .retry(let delay):
            submissionRetries.asyncAfter(deadline: .now() + delay.seconds) { [weak self] in self?.retry() }
        case .gone(let items):
            for item in items { fail(item, .deviceGone) }
        }
        return .busy
    }

    /// Hands the lane's items to the driver, in order, then what waits as
    /// slots allow, until nothing is ready or the driver answers busy; at
    /// once if no thread is at it, else that thread takes what was added.
    ///
    /// A driver may complete inside its submit, and that completion makes
    /// items ready: they join this loop instead of nesting another submit
    /// per item (a long queue would overflow the stack).
    private func handOn() {
        let first = lock.withLock { () -> Bool in
            guard !handingOn else { return false }
            handingOn = true
            return true
        }
        guard first else { return }
        while let item = lock.withLock({ () -> Item? in
            if lane.isEmpty, !held, !removed { _ = takeReadyLocked() }
            guard !lane.isEmpty else {
                handingOn = false
                return nil
            }
            return lane.removeFirst()
        }) {
            if submitOne(item) == .busy {
                lock.withLock { handingOn = false }
                return
            }
        }
    }

    /// The retry after a busy answer: waiting items go to the driver as far
    /// as slots are free (unless held or removed since).
    private func retry() {
        let start = lock.withLock { () -> Bool in
            busyRetry.ran()
            guard !held, !removed else { return false }
            return takeReadyLocked()
        }
        if start { handOn() }
    }

    /// Moves the waiting items that fit the free slots to the lane, now
    /// counted in flight. Whether the lane has items. Under `lock`.
    private func takeReadyLocked() -> Bool {
        let n = min(waiting.count, max(0, depth - inflight))
        inflight += n
        lane += waiting.prefix(n)
        waiting.removeFirst(n)
        return !lane.isEmpty
    }
}
