import Foundation
import Machine

/// A virtual processor: a thread that runs partition code, halts, and wakes
/// on interrupts. Interrupts (SynIC SINTs and, for the root, forwarded
/// device vectors) are delivered on the VP's own thread while it is halted,
/// as a CPU takes interrupts when they are enabled.
public final class VirtualProcessor: @unchecked Sendable {
    // @unchecked Sendable: pending state and handlers are guarded by `condition`.
    public let partition: PartitionID
    public let index: Int
    public private(set) var synic: SynIC!

    public struct Statistics: Sendable {
        public var halts = 0
        public var interrupts = 0
    }

    private let condition = NSCondition()
    private var pendingSINTs: UInt16 = 0
    private var pendingVectors: [Int] = []
    private var sintHandler: (@Sendable (Int) -> Void)?
    private var vectorHandler: (@Sendable (Int) -> Void)?
    private var stopped = false
    private var finished = true
    private var stats = Statistics()

    init(partition: PartitionID, index: Int) {
        self.partition = partition
        self.index = index
        self.synic = SynIC { [unowned self] sint in self.raiseSINT(sint) }
    }

    /// Installs the OS's interrupt handlers (called on the VP thread).
    public func setHandlers(sint: @escaping @Sendable (Int) -> Void, vector: (@Sendable (Int) -> Void)? = nil) {
        condition.withLock {
            sintHandler = sint
            vectorHandler = vector
        }
    }

    /// Starts the VP's thread running `body`.
    public func start(name: String, body: @escaping @Sendable (VirtualProcessor) -> Void) {
        condition.withLock {
            stopped = false
            finished = false
        }
        startThread(named: name) { [self] in
            body(self)
            condition.withLock {
                finished = true
                condition.broadcast()
            }
        }
    }

    /// Asks the running code to return (halts end) and waits until it has.
    public func stop() {
        condition.withLock {
            stopped = true
            condition.broadcast()
            while !finished { condition.wait() }
        }
    }

    public var isStopped: Bool { condition.withLock { stopped } }

    public var statistics: Statistics { condition.withLock { stats } }

    /// Halts until `done()` is true, the VP is stopped, or `timeout` passed,
    /// delivering interrupts meanwhile. Returns false on timeout or stop.
    /// Call only on the VP's own thread.
    @discardableResult
    public func halt(until done: () -> Bool, timeout: Double = .infinity) -> Bool {
        // wait(until: .distantFuture) traps on Linux: no deadline means wait().
        let deadline = timeout.isFinite ? Date(timeIntervalSinceNow: timeout) : nil
        condition.lock()
        while true {
            if pendingSINTs != 0 || !pendingVectors.isEmpty {
                let sints = pendingSINTs
                let vectors = pendingVectors
                pendingSINTs = 0
                pendingVectors.removeAll(keepingCapacity: true)
                let (onSINT, onVector) = (sintHandler, vectorHandler)
                stats.interrupts += sints.nonzeroBitCount + vectors.count
                condition.unlock()
                for sint in 0..<SynIC.sintCount where sints & (1 << sint) != 0 { onSINT?(sint) }
                for vector in vectors { onVector?(vector) }
                condition.lock()
                continue
            }
            condition.unlock()
            if done() { return true }
            condition.lock()
            if stopped {
                condition.unlock()
                return false
            }
            if pendingSINTs != 0 || !pendingVectors.isEmpty { continue }
            stats.halts += 1
            if let deadline {
                if !condition.wait(until: deadline) && pendingSINTs == 0 && pendingVectors.isEmpty {
                    condition.unlock()
                    return done()
                }
            } else {
                condition.wait()
            }
        }
    }

    func raiseSINT(_ sint: Int) {
        condition.withLock {
            pendingSINTs |= 1 << UInt16(sint)
            condition.signal()
        }
    }

    func injectVector(_ vector: Int) {
        condition.withLock {
            pendingVectors.append(vector)
            condition.signal()
        }
    }
}
