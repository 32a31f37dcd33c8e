import DriverHost
import Foundation
@testable import Kernel
import Synchronization
import Testing

/// The software queue above a driver's depth, with a scripted driver: which
/// items reached it, and what it answered.
@Suite struct SubmissionQueueTests {
    final class Item: Sendable {
        let id: Int
        init(_ id: Int) { self.id = id }
    }

    /// A driver that answers from a script (then OK), and the items failed.
    final class ScriptedDriver: Sendable {
        private let state = Mutex<(answers: [OyStatus], taken: [Int], failed: [(Int, OyStatus)])>(([], [], []))
        init(answers: [OyStatus]) { state.withLock { $0.answers = answers } }

        func submit(_ item: Item) -> OyStatus {
            state.withLock { s in
                let answer = s.answers.isEmpty ? OyStatus.ok : s.answers.removeFirst()
                if answer.isOK { s.taken.append(item.id) }
                return answer
            }
        }
        func fail(_ item: Item, _ status: OyStatus) { state.withLock { $0.failed.append((item.id, status)) } }
        var taken: [Int] { state.withLock { $0.taken } }
        var failed: [(Int, OyStatus)] { state.withLock { $0.failed } }

        func queue(depth: Int) -> SubmissionQueue<Item> {
            SubmissionQueue(depth: depth, submit: { self.submit($0) }, fail: { self.fail($0, $1) })
        }
    }

    /// Busy with nothing of ours outstanding (a device whose own queue is
    /// full for a moment): no completion will come to restart the queue, so
    /// the queue retries by itself; the item is not stranded.
    @Test func busyWithNothingOutstandingIsRetried() {
        let driver = ScriptedDriver(answers: [.busy, .busy, .busy])
        let queue = driver.queue(depth: 4)
        #expect(queue.enqueue(Item(1)) == .dispatched)
        #expect(queue.enqueue(Item(2)) == .queued, "behind the one put back")
        #expect(eventually(10) { driver.taken == [1, 2] }, "taken: \(driver.taken)")
        #expect(queue.waitingCount == 0)
        #expect(driver.failed.isEmpty)
    }

    /// Busy while other items are with the driver: the item waits at the
    /// head for the next completion, ahead of later items.
    @Test func busyWhileOthersAreOutstandingWaitsForACompletionInOrder() {
        let driver = ScriptedDriver(answers: [.ok, .busy])
        let queue = driver.queue(depth: 2)
        #expect(queue.enqueue(Item(1)) == .dispatched)
        #expect(queue.enqueue(Item(2)) == .dispatched)  // answered busy
        #expect(queue.enqueue(Item(3)) == .queued)
        #expect(driver.taken == [1])
        #expect(queue.waitingCount == 2)
        queue.completed()  // item 1
        #expect(driver.taken == [1, 2, 3])
    }

    /// The device removed while the driver's busy answer was on its way:
    /// the item fails as gone, like those that waited, and is not kept.
    @Test func aBusyAnswerAfterRemovalFailsTheItem() {
        let removedQueue = Mutex<SubmissionQueue<Item>?>(nil)
        let failed = Mutex<[(Int, OyStatus)]>([])
        let queue = SubmissionQueue<Item>(depth: 1, submit: { _ in
            removedQueue.withLock { $0 }?.markRemoved()
            return .busy
        }, fail: { item, status in failed.withLock { $0.append((item.id, status)) } })
        removedQueue.withLock { $0 = queue }
        _ = queue.enqueue(Item(7))
        #expect(failed.withLock { $0.map(\.0) } == [7])
        #expect(failed.withLock { $0.map(\.1) } == [.deviceGone])
        #expect(queue.waitingCount == 0)
    }

    /// A completion takes the next waiting item to hand it on, and its
    /// sender enqueues its next one before that submit has begun, with a
    /// slot free: the later item must wait behind the earlier, not overtake
    /// it from the sender's thread (frames of one sender left out of order).
    @Test func aSendersNextItemDoesNotOvertakeOneBeingHandedOn() {
        let entered = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let taken = Mutex<[Int]>([])
        let queue = SubmissionQueue<Item>(depth: 2, submit: { item in
            if item.id == 3 {
                entered.signal()
                release.wait()  // the completion's thread, about to hand item 3 on
            }
            taken.withLock { $0.append(item.id) }
            return .ok
        }, fail: { _, _ in })
        #expect(queue.enqueue(Item(1)) == .dispatched)
        #expect(queue.enqueue(Item(2)) == .dispatched)
        #expect(queue.enqueue(Item(3)) == .queued)  // the sender's first
        let completion = Thread { queue.completed() }  // item 1: hands item 3 on
        completion.start()
        entered.wait()
        queue.completed()  // item 2: a slot is free
        #expect(queue.enqueue(Item(4)) == .queued, "the sender's second waits behind its first")
        #expect(taken.withLock { $0 } == [1, 2])
        release.signal()
        #expect(eventually(5) { taken.withLock { $0 } == [1, 2, 3, 4] }, "\(taken.withLock { $0 })")
        #expect(queue.waitingCount == 0)
    }

    /// A driver that completes inside submit (a RAM disk, a NIC that copies
    /// the frame out at once) while many items wait: each completion hands
    /// on the next item, and that must not nest one submit inside another
    /// per item (100 000 waiting items would overflow the thread's stack).
    @Test func aDriverCompletingInsideSubmitDoesNotNestTheQueue() {
        let box = Mutex<SubmissionQueue<Item>?>(nil)
        let state = Mutex<(depth: Int, deepest: Int, taken: [Int])>((0, 0, []))
        let queue = SubmissionQueue<Item>(depth: 2, submit: { item in
            state.withLock { s in
                s.depth += 1
                s.deepest = max(s.deepest, s.depth)
                s.taken.append(item.id)
            }
            box.withLock { $0 }?.completed()  // completed before submit returns
            state.withLock { $0.depth -= 1 }
            return .ok
        }, fail: { _, _ in })
        box.withLock { $0 = queue }
        #expect(queue.hold(until: Date()))
        let count = 100_000
        for id in 0..<count { _ = queue.enqueue(Item(id)) }
        queue.resume()
        let (deepest, taken) = state.withLock { ($0.deepest, $0.taken) }
        #expect(taken == Array(0..<count), "every item, in order")
        #expect(deepest == 1, "one submit at a time on this thread, not \(deepest) nested")
        #expect(queue.waitingCount == 0)
    }
}
