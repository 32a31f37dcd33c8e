import CSystemShims
import Foundation
import Glibc

/// Serves one virtqueue on a thread of its own, the way a vhost-user
/// back-end does: wait for the driver's kick, hand each chain to `serve`,
/// return it used, raise the call when the driver wants one, re-arm the
/// kick and check again before sleeping. A queue the guest corrupted is
/// reported once through `failed` and not touched again.
final class QueueWorker: @unchecked Sendable {
    // @unchecked Sendable: the queue is used only by the worker thread;
    // the stop descriptor is written from the owner, read by the thread.
    typealias Serve = @Sendable (DescriptorChain) -> UInt32
    typealias Failed = @Sendable (VirtqueueError) -> Void

    /// How often a queue without a kick descriptor (the front-end asked
    /// the back-end to poll) is looked at.
    static let pollInterval: Int32 = 1

    private let queue: SplitVirtqueue
    private let kick: Int32, call: Int32
    private let stopEvent: Int32
    private let finished = DispatchSemaphore(value: 0)
    private let serve: Serve
    private let failed: Failed

    /// Throws the errno when the stop doorbell cannot be made.
    init(queue: SplitVirtqueue, kick: Int32, call: Int32, serve: @escaping Serve, failed: @escaping Failed) throws(Errno) {
        stopEvent = oy_shim_eventfd()
        guard stopEvent >= 0 else { throw Errno(code: oy_shim_errno()) }
        self.queue = queue
        self.kick = kick
        self.call = call
        self.serve = serve
        self.failed = failed
        Thread.detachNewThread { [self] in run() }
    }

    struct Errno: Error { let code: Int32 }

    /// Returns once the thread no longer touches the queue.
    func stop() {
        var one: UInt64 = 1
        _ = write(stopEvent, &one, 8)
        finished.wait()
        _ = close(stopEvent)
    }

    private func run() {
        defer { finished.signal() }
        do {
            while true {
                try drain()
                if queue.armKick() { continue }
                guard waitForKick() else { return }
            }
        } catch {
            failed(error)
            waitForStop()
        }
    }

    private func drain() throws(VirtqueueError) {
        var used = false
        while let chain = try queue.nextChain() {
            queue.addUsed(head: chain.head, written: serve(chain))
            used = true
        }
        if used, call >= 0, queue.needsNotification() {
            var one: UInt64 = 1
            _ = write(call, &one, 8)
        }
    }

    /// Waits for a kick (true) or for stop (false).
    private func waitForKick() -> Bool {
        var fds = [pollfd(fd: stopEvent, events: Int16(POLLIN), revents: 0), pollfd(fd: kick, events: Int16(POLLIN), revents: 0)]
        let count: nfds_t = kick >= 0 ? 2 : 1
        while true {
            let n = poll(&fds, count, kick >= 0 ? -1 : Self.pollInterval)
            if n < 0 && errno == EINTR { continue }
            if fds[0].revents != 0 { return false }
            if kick >= 0 && fds[1].revents != 0 {
                var value: UInt64 = 0
                _ = read(kick, &value, 8)
            }
            return true
        }
    }

    private func waitForStop() {
        var fd = pollfd(fd: stopEvent, events: Int16(POLLIN), revents: 0)
        while poll(&fd, 1, -1) < 0 && errno == EINTR {}
    }
}
