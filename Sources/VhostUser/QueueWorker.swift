import CSystemShims
import Foundation
import Glibc
import Synchronization

/// Serves one virtqueue on a thread of its own, the way a vhost-user
/// back-end does: wait for the driver's kick, hand each chain to `serve`,
/// return chains used as the device completes them (at once or later, from
/// any thread), raise the call when the driver wants one, re-arm the kick
/// and check again before sleeping. A queue the guest corrupted is reported
/// once through `failed` and not touched again.
final class QueueWorker: @unchecked Sendable {
    // @unchecked Sendable: the queue is used only by the worker thread;
    // completions cross threads through `pending` and the done doorbell.
    typealias Serve = @Sendable (DescriptorChain, Completion) -> Void
    typealias Failed = @Sendable (VirtqueueError) -> Void

    /// Hands one chain back to the guest; call it exactly once, from any
    /// thread, with the bytes the device wrote into the chain.
    struct Completion: Sendable {
        fileprivate let worker: QueueWorker
        fileprivate let head: UInt16

        func callAsFunction(written: UInt32) { worker.complete(head: head, written: written) }
    }

    /// How often a queue without a kick descriptor (the front-end asked
    /// the back-end to poll) is looked at.
    static let pollInterval: Int32 = 1

    private let queue: SplitVirtqueue
    private let kick: Int32, call: Int32
    private let stopEvent: Int32, doneEvent: Int32
    private let finished = DispatchSemaphore(value: 0)
    private let serve: Serve
    private let failed: Failed
    /// Chains the device finished, not yet returned used; and how many it holds.
    /// `sleeping`: the worker is (about to be) in poll and must be woken.
    private let pending = Mutex<(done: [(UInt16, UInt32)], outstanding: Int, sleeping: Bool)>(([], 0, false))

    /// Throws the errno when a doorbell cannot be made.
    init(queue: SplitVirtqueue, kick: Int32, call: Int32, serve: @escaping Serve, failed: @escaping Failed) throws(Errno) {
        stopEvent = oy_shim_eventfd()
        guard stopEvent >= 0 else { throw Errno(code: oy_shim_errno()) }
        doneEvent = oy_shim_eventfd()
        guard doneEvent >= 0 else {
            let code = oy_shim_errno()
            _ = close(stopEvent)
            throw Errno(code: code)
        }
        self.queue = queue
        self.kick = kick
        self.call = call
        self.serve = serve
        self.failed = failed
        Thread.detachNewThread { [self] in run() }
    }

    struct Errno: Error { let code: Int32 }

    /// Returns once the thread no longer touches the queue and every chain
    /// the device held was completed (a ring is stopped with nothing in
    /// flight, so GET_VRING_BASE's index is exact).
    func stop() {
        var one: UInt64 = 1
        _ = write(stopEvent, &one, 8)
        finished.wait()
        _ = close(stopEvent)
        _ = close(doneEvent)
    }

    private func complete(head: UInt16, written: UInt32) {
        // Only a sleeping worker needs the doorbell; an awake one looks at
        // `pending` before it sleeps again.
        let wake = pending.withLock { state -> Bool in
            state.done.append((head, written))
            defer { state.sleeping = false }
            return state.sleeping
        }
        if wake {
            var one: UInt64 = 1
            _ = write(doneEvent, &one, 8)
        }
    }

    private func run() {
        defer { finished.signal() }
        do {
            while true {
                try drain()
                if queue.armKick() { continue }
                guard waitForKick() else {
                    finishOutstanding()
                    return
                }
            }
        } catch {
            failed(error)
            waitForStop()
        }
    }

    /// Takes every available chain to the device, then returns what it completed.
    private func drain() throws(VirtqueueError) {
        while let chain = try queue.nextChain() {
            pending.withLock { $0.outstanding += 1 }
            serve(chain, Completion(worker: self, head: chain.head))
        }
        returnCompleted()
    }

    private func returnCompleted() {
        let done = pending.withLock { state -> [(UInt16, UInt32)] in
            defer { state.done.removeAll(keepingCapacity: true) }
            state.outstanding -= state.done.count
            return state.done
        }
        guard !done.isEmpty else { return }
        for (head, written) in done { queue.addUsed(head: head, written: written) }
        if call >= 0, queue.needsNotification() {
            var one: UInt64 = 1
            _ = write(call, &one, 8)
        }
    }

    /// Waits for a kick or a completion (true) or for stop (false).
    private func waitForKick() -> Bool {
        // Completions that arrived since the last look are returned first.
        let idle = pending.withLock { state -> Bool in
            guard state.done.isEmpty else { return false }
            state.sleeping = true
            return true
        }
        guard idle else { return true }
        defer { pending.withLock { $0.sleeping = false } }
        var fds = [pollfd(fd: stopEvent, events: Int16(POLLIN), revents: 0), pollfd(fd: doneEvent, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: kick, events: Int16(POLLIN), revents: 0)]
        let count: nfds_t = kick >= 0 ? 3 : 2
        while true {
            let n = poll(&fds, count, kick >= 0 ? -1 : Self.pollInterval)
            if n < 0 && errno == EINTR { continue }
            if fds[0].revents != 0 { return false }
            var value: UInt64 = 0
            if fds[1].revents != 0 { _ = read(doneEvent, &value, 8) }
            if kick >= 0 && fds[2].revents != 0 { _ = read(kick, &value, 8) }
            return true
        }
    }

    /// Stopping: the chains the device still holds are completed and
    /// returned before the ring is let go.
    private func finishOutstanding() {
        while true {
            returnCompleted()
            let waiting = pending.withLock { state -> Bool in
                guard state.outstanding > state.done.count else { return false }
                if state.done.isEmpty { state.sleeping = true }
                return true
            }
            if !waiting && pending.withLock({ $0.outstanding }) == 0 { return }
            if waiting { waitForDone() }
        }
    }

    /// After a corrupt queue: the ring is not touched again, but the chains
    /// the device holds still point into guest memory, so stop waits for
    /// the device to let go of them.
    private func waitForStop() {
        var fd = pollfd(fd: stopEvent, events: Int16(POLLIN), revents: 0)
        while poll(&fd, 1, -1) < 0 && errno == EINTR {}
        while true {
            let held = pending.withLock { state -> Int in
                state.outstanding -= state.done.count
                state.done.removeAll()
                state.sleeping = state.outstanding > 0
                return state.outstanding
            }
            if held == 0 { return }
            waitForDone()
        }
    }

    /// Sleeps until a completion rings the done doorbell (`sleeping` set).
    private func waitForDone() {
        var fd = pollfd(fd: doneEvent, events: Int16(POLLIN), revents: 0)
        while poll(&fd, 1, -1) < 0 && errno == EINTR {}
        var value: UInt64 = 0
        _ = read(doneEvent, &value, 8)
        pending.withLock { $0.sleeping = false }
    }
}
