import COyakoSDK
@testable import DriverHost
import Foundation
import OyakoTestSupport
import Synchronization
import Testing

/// A request out with a driver whose submit has not returned yet is not the
/// driver's until that call says so: a cancel (a detach that could not wait
/// for the call) leaves it to the call's return, so it is never finished
/// twice nor handed to another driver while the first may still use it.
@Suite struct LendingTests {
    final class Lent: @unchecked Sendable {
        // @unchecked Sendable: written by one completion, read after it.
        let library: DriverLibrary
        let loans: Loans
        let request = BlockRequest()
        let finished = Mutex<[OyStatus]>([])
        let data = UnsafeMutableRawPointer.allocate(byteCount: 512, alignment: 16)

        init() throws {
            library = try DriverLibrary.load(path: try Fixtures.fixtureDriver(), environment: RecordingEnvironment())
            loans = Loans(library: library)
            request.prepare(.read, lba: 0, blockCount: 1, data: data) { [unowned self] status in finished.withLock { $0.append(status) } }
        }

        /// Lends the request to a "submit" that a cancel interrupts, then answers `answer`.
        func lend(answering answer: OyStatus) -> (status: OyStatus, canceledDuringCall: Int) {
            var canceled = -1
            let status = loans.lend(request, service: "submit") {
                canceled = loans.cancelAll()
                return answer
            }
            return (status, canceled)
        }

        deinit {
            _ = library.unload()
            data.deallocate()
        }
    }

    @Test func aRequestTheSubmitTakesIsCanceledAsTheSubmitReturns() throws {
        let lent = try Lent()
        let (status, canceledDuringCall) = lent.lend(answering: .ok)
        #expect(status == .ok)
        #expect(canceledDuringCall == 0, "the cancel left it to the submit still running")
        #expect(lent.finished.withLock { $0 } == [.canceled], "canceled once, when the submit had returned")
        #expect(lent.loans.count == 0 && lent.library.violations.isEmpty, "\(lent.library.violations)")
    }

    @Test func aRequestTheSubmitRefusesIsTheCallersAgainAndNeverFinishedByTheCancel() throws {
        let lent = try Lent()
        let (status, canceledDuringCall) = lent.lend(answering: .state)
        #expect(status == .state, "the refusal reaches the OS, which hands the request on")
        #expect(canceledDuringCall == 0)
        #expect(lent.finished.withLock { $0 } == [], "not finished here: the OS decides what becomes of a refused request")
        #expect(lent.loans.count == 0)
        #expect(lent.library.violations.isEmpty, "the driver did nothing wrong: \(lent.library.violations)")
    }
}

/// Completed requests rest before they are lent again, so a driver's late
/// write lands in one no one uses, and is found.
@Suite struct QuarantinePoolTests {
    @Test func aRetiredRequestIsReusedOnlyBehindTheQuarantineOldestFirst() {
        let pool = QuarantinePool { BlockRequest() }
        let first = pool.take()
        pool.give(first)
        let others = (0..<QuarantinePool<BlockRequest>.quarantine).map { _ in pool.take() }
        #expect(!others.contains { $0 === first }, "a new one, while fewer than the quarantine rest behind it")
        for request in others { pool.give(request) }
        #expect(pool.take() === first, "the oldest comes back first, once enough rest behind it")
    }

    /// A request the host let go of (its disk or interface gone) is not
    /// malloc's at once: a driver reading it late finds the poison, not
    /// whatever malloc handed out next.
    @Test func aFreedRequestRestsPoisonedBeforeMallocHasItBack() {
        var request: BlockRequest? = BlockRequest()
        let raw = UnsafeRawPointer(request!.raw)
        request!.raw.pointee.lba = 42
        request = nil
        let bytes = UnsafeRawBufferPointer(start: raw, count: MemoryLayout<oy_block_request>.size)
        #expect(bytes.allSatisfy { $0 == LentRequest.poison }, "\(Array(bytes))")
    }

    @Test func aWriteAfterCompletionIsFoundInTheQuarantine() throws {
        let lent = try LendingTests.Lent()
        let pool = QuarantinePool { BlockRequest() }
        #expect(lent.loans.lend(lent.request, service: "submit") { .ok } == .ok)
        LentRequest.completed(BlockRequest.hostPrivate(lent.request.raw), status: 0, service: "complete()")
        #expect(lent.finished.withLock { $0 } == [.ok])
        pool.give(lent.request)
        pool.checkAll()
        #expect(lent.library.violations.isEmpty, "nothing written yet: \(lent.library.violations)")
        lent.request.raw.pointee.block_count = 7  // the driver's late write
        pool.checkAll()
        #expect(lent.library.violations.contains { $0.contains("a block request was written after the driver completed it") }, "\(lent.library.violations)")
    }
}
