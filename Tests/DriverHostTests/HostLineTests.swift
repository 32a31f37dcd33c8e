import COyakoSDK
@testable import DriverHost
import Foundation
import Glibc
import Synchronization
import Testing

/// Two ends of one SOCK_SEQPACKET pair; `far` records what it receives,
/// one entry per message that arrived, and answers calls.
private final class Pair: Sendable {
    final class Inbox: Sendable {
        let deliveries = Mutex<[[(kind: UInt32, value: UInt32)]]>([])
        let closedBecause = Mutex<String?>(nil)
        let arrived = DispatchSemaphore(value: 0)
        var count: Int { deliveries.withLock { $0.joined().count } }
    }

    let near: HostLine, far: HostLine
    let inbox = Inbox()
    let rawNear: Int32

    init() throws {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &fds) == 0 else { throw POSIXError(.EMFILE) }
        rawNear = fds[0]
        near = HostLine(socket: fds[0])
        far = HostLine(socket: fds[1])
        near.start(received: { _ in }, closed: { _ in })
        far.start(received: { [inbox, far] messages in
            var values: [(kind: UInt32, value: UInt32)] = []
            for var message in messages {
                values.append((message.kind, (try? message.body.u32()) ?? UInt32.max))
                if message.kind == HostMessage.configRead.rawValue {
                    // Answers with how many posted messages arrived before the call.
                    var reply = WireWriter()
                    reply.u32(UInt32(inbox.count))
                    far.reply(to: message, reply)
                }
            }
            inbox.deliveries.withLock { $0.append(values) }
            inbox.arrived.signal()
        }, closed: { [inbox] reason in
            inbox.closedBecause.withLock { $0 = reason }
            inbox.arrived.signal()
        })
    }

    deinit {
        near.shutDown()
        far.shutDown()
    }

    func post(_ kind: HostMessage, _ value: UInt32, padding: Int = 0) {
        var body = WireWriter()
        body.u32(value)
        if padding > 0 { [UInt8](repeating: 0xEE, count: padding).withUnsafeBytes { body.data($0) } }
        #expect(near.post(kind, body))
    }

    /// What arrived, once `count` values have (or after 5 s).
    func received(_ count: Int) -> [[(kind: UInt32, value: UInt32)]] {
        let deadline = Date(timeIntervalSinceNow: 5)
        while inbox.count < count, Date() < deadline { _ = inbox.arrived.wait(timeout: .now() + 0.1) }
        return inbox.deliveries.withLock { $0 }
    }

    /// Why the far end's line closed, once it has (or after 5 s).
    func closedBecause() -> String? {
        let deadline = Date(timeIntervalSinceNow: 5)
        while inbox.closedBecause.withLock({ $0 }) == nil, Date() < deadline { _ = inbox.arrived.wait(timeout: .now() + 0.1) }
        return inbox.closedBecause.withLock { $0 }
    }
}

/// The line between the Kernel and a driver host: what a thread posts while
/// `batching` goes as one message, in order, and never behind something
/// that must not wait for it.
@Suite struct HostLineTests {
    @Test func postsOutsideABatchGoOneByOne() throws {
        let pair = try Pair()
        pair.post(.mmioWrite, 1)
        pair.post(.complete, 2)
        let got = pair.received(2)
        #expect(got.map(\.count) == [1, 1])
    }

    @Test func postsInABatchArriveAsOneMessageInOrder() throws {
        let pair = try Pair()
        pair.near.batching {
            pair.post(.mmioWrite, 1)
            pair.post(.complete, 2)
            pair.post(.submit, 3)
        }
        let got = pair.received(3)
        #expect(got.count == 1, "one message: \(got)")
        #expect(got.joined().map(\.value) == [1, 2, 3])
        #expect(got.joined().map(\.kind) == [HostMessage.mmioWrite, .complete, .submit].map(\.rawValue))
    }

    @Test func aMessageThatMayNotWaitGoesAtOnceAfterWhatWaited() throws {
        let pair = try Pair()
        pair.near.batching {
            pair.post(.mmioWrite, 1)
            pair.post(.log, 2)
            // The log line is out before the batch ends: a host that dies now has said it.
            #expect(pair.received(2).joined().map(\.value) == [1, 2])
            pair.post(.complete, 3)
        }
        #expect(pair.received(3).joined().map(\.value) == [1, 2, 3])
    }

    @Test func aCallSendsTheBatchBeforeIt() throws {
        let pair = try Pair()
        let seenBefore = try pair.near.batching { () throws -> UInt32 in
            pair.post(.mmioWrite, 1)
            pair.post(.mmioWrite, 2)
            var reply = try pair.near.call(.configRead, WireWriter()).0
            return try reply.u32()
        }
        #expect(seenBefore == 2, "a register read sees the writes made before it")
    }

    @Test func aFullBatchIsSentAndANewOneBegun() throws {
        let pair = try Pair()
        pair.near.batching {
            for value in 0..<100 as Range<UInt32> { pair.post(.netReceived, value, padding: 1500) }
        }
        let got = pair.received(100)
        #expect(got.joined().map(\.value) == Array(0..<100), "all, in order")
        #expect(got.count > 1 && got.count < 100, "split only where a message would pass \(HostMessage.maxSize) bytes: \(got.map(\.count))")
    }

    @Test func aMalformedBatchClosesTheLineAndSaysSo() throws {
        let pair = try Pair()
        // A batch whose one part claims 100 bytes and has 4.
        var raw = WireWriter()
        raw.u32(HostMessage.batch.rawValue); raw.u32(0)
        raw.u32(HostMessage.mmioWrite.rawValue); raw.u32(100); raw.u32(7)
        let sent = raw.bytes.withUnsafeBytes { send(pair.rawNear, $0.baseAddress, $0.count, 0) }
        #expect(sent == raw.bytes.count)
        let reason = try #require(pair.closedBecause())
        #expect(reason.contains("malformed batch"), "\(reason)")
        #expect(pair.inbox.count == 0, "nothing of it delivered")
    }

    // MARK: Order across threads

    /// A thread that wrote registers under a driver lock and released it
    /// may still be in its run, its writes held. The next holder's read
    /// under the lock must come after them, as on hardware: a UART driver
    /// filling the FIFO from its write path and from its interrupt handler
    /// otherwise sees the FIFO empty from the other thread and overfills it.
    @Test func writesMadeUnderALockGoBeforeTheNextHoldersCall() throws {
        let pair = try Pair()
        let host = HostServices.makeTable(abiVersion: OY_ABI_VERSION_CURRENT)
        let lock = try #require(LockTable.shared.create())
        defer { _ = LockTable.shared.destroy(lock) }
        let released = DispatchSemaphore(value: 0), read = DispatchSemaphore(value: 0)
        // Pointers cross to the thread as their bits.
        let hostBits = UInt(bitPattern: host), lockBits = UInt(bitPattern: lock)
        let writer = Thread { [pair] in
            let host = UnsafeMutablePointer<oy_host>(bitPattern: hostBits)!, lock = OpaquePointer(bitPattern: lockBits)
            pair.near.batching {
                host.pointee.lock_acquire(lock)
                pair.post(.portWrite, 1)
                pair.post(.portWrite, 2)
                host.pointee.lock_release(lock)
                released.signal()
                // The run stays open until the other thread has read.
                read.wait()
            }
        }
        writer.start()
        released.wait()
        host.pointee.lock_acquire(lock)
        let seenBefore = Result { () throws -> UInt32 in
            var reply = try pair.near.call(.configRead, WireWriter()).0
            return try reply.u32()
        }
        host.pointee.lock_release(lock)
        read.signal()
        #expect(try seenBefore.get() == 2, "the read under the lock sees both writes made under it before")
        #expect(pair.received(3).joined().map(\.value).prefix(2) == [1, 2])
    }

    /// No lock of the host's: a driver's own flag in its memory orders its
    /// threads just as well, and the line keeps that order too. Here the
    /// second thread's own run ends first, while the first's is still open.
    @Test func heldMessagesOfSeveralThreadsGoInTheOrderTheyWereMade() throws {
        let pair = try Pair()
        let flag = Atomic<Int>(0)
        let done = DispatchSemaphore(value: 0), finish = DispatchSemaphore(value: 0)
        let first = Thread { [pair] in
            pair.near.batching {
                pair.post(.mmioWrite, 1)
                flag.store(1, ordering: .releasing)
                finish.wait()
                pair.post(.mmioWrite, 4)
            }
            done.signal()
        }
        first.start()
        while flag.load(ordering: .acquiring) == 0 { usleep(100) }
        pair.near.batching {
            pair.post(.mmioWrite, 2)
            pair.post(.mmioWrite, 3)
        }
        // The second run has ended: all made so far has gone, the first thread's too.
        #expect(pair.received(3).joined().map(\.value) == [1, 2, 3])
        finish.signal()
        done.wait()
        #expect(pair.received(4).joined().map(\.value) == [1, 2, 3, 4])
    }

    /// The thread that released the lock taking it again sends nothing
    /// early: a run of submits under one lock is still one message.
    @Test func retakingOnesOwnLockKeepsTheBatch() throws {
        let pair = try Pair()
        let host = HostServices.makeTable(abiVersion: OY_ABI_VERSION_CURRENT)
        let lock = try #require(LockTable.shared.create())
        defer { _ = LockTable.shared.destroy(lock) }
        pair.near.batching {
            for value in 1...4 as ClosedRange<UInt32> {
                host.pointee.lock_acquire(lock)
                pair.post(.mmioWrite, value)
                host.pointee.lock_release(lock)
            }
        }
        let got = pair.received(4)
        #expect(got.count == 1, "one message: \(got)")
        #expect(got.joined().map(\.value) == [1, 2, 3, 4])
    }
}
