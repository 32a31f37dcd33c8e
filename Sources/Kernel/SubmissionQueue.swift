import DriverHost
import Foundation

/// The software queue above a driver's depth, shared by the block and
/// network layers: at most `depth` items are with the driver, the rest wait
/// in order. A driver's OY_E_BUSY puts the item back at the head until a
/// completion frees a slot; any other refusal completes it with that code;
/// removal fails everything still waiting with OY_E_DEVICE_GONE.
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
            if !held && inflight < depth && waiting.isEmpty {
                inflight += 1
                return .dispatched
            }
            waiting.append(item)
            return .queued
        }
        if case .dispatched = admission { dispatch(item) }
        return admission
    }

    /// One item the driver had came back: its slot goes to the next waiting.
    func completed() {
        let next = lock.withLock { () -> Item? in
            inflight -= 1
            if inflight == 0 { lock.broadcast() }
            guard !held, !waiting.isEmpty, inflight < depth else { return nil }
            inflight += 1
            return waiting.removeFirst()
        }
        if let next { dispatch(next) }
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
        let ready = lock.withLock { () -> [Item] in
            if let newSubmit { submit = newSubmit }
            if let newDepth { depth = max(1, newDepth) }
            held = false
            let n = min(waiting.count, max(0, depth - inflight))
            inflight += n
            defer { waiting.removeFirst(n) }
            return Array(waiting.prefix(n))
        }
        for item in ready { dispatch(item) }
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

    private func dispatch(_ item: Item) {
        let submit = lock.withLock { () -> (Item) -> OyStatus in
            calling += 1
            return self.submit
        }
        let status = submit(item)
        lock.withLock {
            calling -= 1
            if calling == 0 { lock.broadcast() }
        }
        if status == .busy {
            lock.withLock {
                inflight -= 1
                waiting.insert(item, at: 0)
            }
        } else if !status.isOK {
            fail(item, status)
        }
    }
}
