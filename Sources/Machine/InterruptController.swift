import Foundation

/// An MSI-style interrupt controller with one delivering CPU.
///
/// Devices raise vectors; the controller delivers each to its handler on the
/// interrupt thread, one at a time, as a CPU would. A masked vector that is
/// raised stays pending and is delivered on unmask. Raising a vector that is
/// already queued coalesces (edge semantics: the handler drains all work).
public final class InterruptController: @unchecked Sendable {
    // Sendable: all mutable state is guarded by `condition`.
    public typealias Vector = Int
    public typealias Handler = @Sendable () -> Void

    private struct Line {
        var handler: Handler?
        var masked = false
        var pending = false
        var queued = false
        var inService = false
    }

    public struct Statistics: Sendable {
        public var delivered = 0
        public var coalesced = 0
        public var spurious = 0
    }

    private let condition = NSCondition()
    private var lines: [Line] = []
    private var queue: [Vector] = []
    private var queueHead = 0
    private var stats = Statistics()
    private var running = true

    /// Starts the interrupt thread. It keeps the controller alive until
    /// `shutdown()`, as a powered CPU would.
    public init(name: String = "cpu0-irq") {
        startThread(named: name) { [self] in deliveryLoop() }
    }

    /// Stops the interrupt thread; pending interrupts are dropped.
    public func shutdown() {
        condition.withLock {
            running = false
            condition.broadcast()
        }
    }

    /// Allocates `count` consecutive vectors, masked and without handlers.
    public func allocate(count: Int) -> Range<Vector> {
        condition.withLock {
            let start = lines.count
            lines.append(contentsOf: Array(repeating: Line(), count: count))
            return start..<(start + count)
        }
    }

    /// Installs or removes the handler of `vector`. Removing waits until a
    /// running handler has returned, so its context may then be freed.
    public func setHandler(_ vector: Vector, _ handler: Handler?) {
        condition.withLock {
            precondition(lines.indices.contains(vector), "unknown vector \(vector)")
            lines[vector].handler = handler
            if handler == nil {
                lines[vector].pending = false
                while lines[vector].inService { condition.wait() }
            }
        }
    }

    /// Whether a handler is hooked to `vector` now.
    public func isHooked(_ vector: Vector) -> Bool {
        condition.withLock { lines.indices.contains(vector) && lines[vector].handler != nil }
    }

    public func mask(_ vector: Vector) {
        condition.withLock { lines[vector].masked = true }
    }

    public func unmask(_ vector: Vector) {
        condition.withLock {
            lines[vector].masked = false
            if lines[vector].pending {
                lines[vector].pending = false
                enqueueLocked(vector)
            }
        }
    }

    /// Raised by a device. False when no handler is hooked to `vector`: the
    /// interrupt goes nowhere (counted as spurious). [any-thread]
    @discardableResult
    public func raise(_ vector: Vector) -> Bool {
        condition.withLock {
            guard lines.indices.contains(vector), lines[vector].handler != nil else {
                stats.spurious += 1
                return false
            }
            if lines[vector].masked {
                lines[vector].pending = true
            } else {
                enqueueLocked(vector)
            }
            return true
        }
    }

    public var statistics: Statistics { condition.withLock { stats } }

    private func enqueueLocked(_ vector: Vector) {
        if lines[vector].queued {
            stats.coalesced += 1
            return
        }
        lines[vector].queued = true
        queue.append(vector)
        condition.signal()
    }

    private func deliveryLoop() {
        condition.lock()
        while true {
            while running && queueHead == queue.count { condition.wait() }
            if !running { break }
            let vector = queue[queueHead]
            queueHead += 1
            if queueHead == queue.count {
                queue.removeAll(keepingCapacity: true)
                queueHead = 0
            }
            lines[vector].queued = false
            guard let handler = lines[vector].handler else { continue }
            if lines[vector].masked {
                lines[vector].pending = true
                continue
            }
            lines[vector].inService = true
            stats.delivered += 1
            condition.unlock()
            handler()
            condition.lock()
            lines[vector].inService = false
            condition.broadcast()
        }
        condition.unlock()
    }
}
