import Foundation
import Hypervisor
import Logging
import Machine

/// What a virtualization service provider does with one open channel. The
/// server calls these on the channel's own thread.
public protocol ChannelHandler: AnyObject, Sendable {
    /// A packet from the child. Throw `ProtocolViolation` to close the
    /// channel with that reason; the root and other channels carry on.
    func packetReceived(_ packet: Packet, on channel: HostChannel) throws(ProtocolViolation)
    /// The channel is closed (by the child, a violation, or a rescind). No
    /// more packets arrive; in-flight work may still complete and `send`.
    func channelClosed(_ channel: HostChannel, reason: String?)
}

/// A child broke the protocol. The reason is logged with the channel.

/// The root's end of one channel: reads the child's outbound ring, writes
/// the inbound ring, and runs on a thread of its own so that a slow or
/// hostile child can stall only its own channel.
///
/// Sends never block the caller (completions are posted from disk interrupt
/// paths): packets queue here and the channel thread writes them as the
/// ring has room, waiting on the child's pending-send signal when it is full.
public final class HostChannel: @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `condition`.
    public let relid: UInt32
    public let child: PartitionID
    public let name: String
    let outbound: Ring   // child -> root: we read
    let inbound: Ring    // root -> child: we write
    private let signalChild: @Sendable () -> Void
    private let closed: @Sendable (String?) -> Void
    private let handler: ChannelHandler
    private let logger: Logger

    private let condition = NSCondition()
    /// Serialises writers of the inbound ring (send's fast path and the
    /// channel thread).
    private let writeLock = NSLock()
    private var signalled = false
    private var sendQueue: [Packet] = []
    private var sendHead = 0
    private var closing = false
    private var finished = false
    private(set) var closeCause: ChannelCloseCause?

    /// Most packets that may wait to be written; beyond it the child is not
    /// draining its ring and only it pays.
    public static let sendQueueLimit = 4096

    public struct Statistics: Sendable {
        /// Signals from the child, and those that found nothing to read.
        public var signalsReceived = 0, spuriousSignals = 0
        public var packetsReceived = 0, packetsSent = 0
        public var signalsToChild = 0
    }

    private var stats = Statistics()

    init(relid: UInt32, child: PartitionID, name: String, outbound: Ring, inbound: Ring, handler: ChannelHandler,
         logger: Logger, signalChild: @escaping @Sendable () -> Void, closed: @escaping @Sendable (String?) -> Void)
    {
        self.closed = closed
        self.relid = relid
        self.child = child
        self.name = name
        self.outbound = outbound
        self.inbound = inbound
        self.handler = handler
        self.logger = logger
        self.signalChild = signalChild
    }

    func start() {
        startThread(named: "ch-\(name)") { [self] in run() }
    }

    public var statistics: Statistics { condition.withLock { stats } }
    public var isOpen: Bool { condition.withLock { !closing } }
    /// Why the root closed the channel (nil: still open, or an orderly close).
    public var cause: ChannelCloseCause? { condition.withLock { closeCause } }
    /// The cause, in words (logs, the event log).
    public var reasonClosed: String? { cause?.description }

    /// The child signalled this channel (new data, or space it freed).
    func signal() {
        condition.withLock {
            stats.signalsReceived += 1
            signalled = true
            condition.signal()
        }
    }

    /// Queues a packet for the child. False when the channel is closed or
    /// the child has stopped draining (queue limit reached).
    @discardableResult
    public func send(_ packet: Packet) -> Bool {
        // Fast path: nothing queued ahead, so write the ring now from this
        // thread (a disk completion, say) instead of waking the channel thread.
        if writeLock.try() {
            defer { writeLock.unlock() }
            let direct = condition.withLock { !closing && sendHead == sendQueue.count }
            if direct, let result = try? inbound.write(packet), case .written(let signal) = result {
                condition.withLock { stats.packetsSent += 1 }
                if signal { notifyChild() }
                return true
            }
        }
        return condition.withLock {
            guard !closing, sendQueue.count - sendHead < Self.sendQueueLimit else { return false }
            sendQueue.append(packet)
            condition.signal()
            return true
        }
    }

    /// Closes the channel: the thread stops and the handler is told. Safe
    /// from any thread, including the channel's own.
    public func close(_ cause: ChannelCloseCause?) {
        let first = condition.withLock { () -> Bool in
            guard !closing else { return false }
            closing = true
            closeCause = cause
            condition.broadcast()
            return true
        }
        guard first else { return }
        if let cause { logger.warning("channel \(name) closed: \(cause)") }
    }

    /// Waits until the channel thread has exited.
    func waitUntilFinished() {
        condition.withLock {
            while !finished { condition.wait() }
        }
    }

    private func run() {
        while true {
            condition.lock()
            while !closing && !signalled && sendHead == sendQueue.count { condition.wait() }
            if closing {
                condition.unlock()
                break
            }
            let wasSignalled = signalled
            signalled = false
            condition.unlock()
            do {
                let received = try drainOutbound()
                let sent = flushSends()
                // Woken by the child with nothing to read and nothing it
                // unblocked: the kind of signal a hypervisor throttles.
                if wasSignalled && received == 0 && !sent {
                    condition.withLock { stats.spuriousSignals += 1 }
                }
            } catch let error as RingError {
                close(.violation(.ring(error)))
            } catch let error as ProtocolViolation {
                close(.violation(error))
            } catch {
                close(.violation(.notServed("\(error)")))
            }
        }
        let reason = condition.withLock { closeCause?.description }
        handler.channelClosed(self, reason: reason)
        condition.withLock {
            finished = true
            condition.broadcast()
        }
        closed(reason)
    }

    /// Reads every packet: mask, drain, unmask, re-check (VMBus reader rule).
    private func drainOutbound() throws -> Int {
        var count = 0
        var signalWriter = false
        repeat {
            outbound.maskInterrupts()
            while let packet = try outbound.read(signalWriter: &signalWriter) {
                count += 1
                condition.withLock { stats.packetsReceived += 1 }
                try handler.packetReceived(packet, on: self)
                if !isOpen { return count }
            }
        } while outbound.unmaskInterrupts()
        if signalWriter { notifyChild() }
        return count
    }

    /// Writes queued packets while the ring has room. True if any was written.
    private func flushSends() -> Bool {
        writeLock.lock()
        defer { writeLock.unlock() }
        var wrote = false
        var needSignal = false
        while true {
            let next: Packet? = condition.withLock { sendHead < sendQueue.count ? sendQueue[sendHead] : nil }
            guard let packet = next else { break }
            let result: Ring.WriteResult
            do {
                result = try inbound.write(packet)
            } catch {
                close(.inboundRing(error))
                return wrote
            }
            guard case .written(let signal) = result else { break } // full: the child signals when it frees space
            wrote = true
            needSignal = needSignal || signal
            condition.withLock {
                sendHead += 1
                stats.packetsSent += 1
                if sendHead == sendQueue.count {
                    sendQueue.removeAll(keepingCapacity: true)
                    sendHead = 0
                }
            }
        }
        if needSignal { notifyChild() }
        return wrote
    }

    private func notifyChild() {
        condition.withLock { stats.signalsToChild += 1 }
        signalChild()
    }
}

