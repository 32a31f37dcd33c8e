import Foundation
import Synchronization

/// virtio-net (device ID 1) as a vhost-user back-end, per virtio 1.2 §5.1:
/// queue 0 receives, queue 1 transmits; every buffer starts with the
/// 12-byte virtio_net_hdr (VERSION_1), which carries no offloads here
/// (none are offered), so frames are plain Ethernet. Config space has the
/// MAC and the link status. The other side is two closures: `transmit`
/// takes the guest's frames; `receive` hands the device a frame for the
/// guest, which lands in the next buffer the guest posted (none posted:
/// dropped, as a NIC with an empty receive ring drops).
public final class VhostUserNet: VhostUserDevice, @unchecked Sendable {
    // @unchecked Sendable: workers are touched only on the connection
    // thread; posted receive buffers are guarded by `posted`.
    public enum Feature: Int, CaseIterable { case mac = 5, status = 16 }
    public static let headerSize = 12
    /// The largest frame either way (no VLAN tag, no jumbo frames offered).
    public static let maxFrame = 1514
    public static let receiveQueue = 0, transmitQueue = 1

    public struct Counters: Sendable, Equatable {
        public var transmitted = 0
        public var received = 0
        /// Frames for the guest dropped: no buffer posted, or one too small.
        public var receiveDrops = 0
        /// Chains from the guest that held no valid frame.
        public var malformed = 0
    }

    public let mac: [UInt8]
    public var deviceFeatures: UInt64 { Feature.allCases.reduce(0) { $0 | 1 << UInt64($1.rawValue) } }
    public let queueCount = 2
    /// QEMU's virtio-net keeps its own config space (the MAC it was given).
    public let configSpaceFromBackEnd = false
    private let failure: VhostUserRNG.Failure
    private let closed: @Sendable () -> Void
    private var workers: [Int: QueueWorker] = [:]
    private let rings: Rings

    /// Gets each frame the guest sends, and calls `sent` once it is done
    /// with it (the guest gets the buffer back then: a guest sends no faster
    /// than what is behind the device takes). Must not block.
    public typealias Transmit = @Sendable (_ frame: [UInt8], _ sent: @escaping @Sendable () -> Void) -> Void

    /// - Parameters:
    ///   - transmit: gets each frame the guest sends (see `Transmit`).
    ///   - closed: told when the device goes away (its connection ended).
    public init(mac: [UInt8], transmit: @escaping Transmit, failure: @escaping VhostUserRNG.Failure = { _ in },
                closed: @escaping @Sendable () -> Void = {}) {
        self.mac = mac
        rings = Rings(transmit: transmit)
        self.failure = failure
        self.closed = closed
    }

    /// A device whose transmitted frames are done with as soon as `transmit` returns.
    public convenience init(mac: [UInt8], transmit: @escaping @Sendable ([UInt8]) -> Void, failure: @escaping VhostUserRNG.Failure = { _ in },
                            closed: @escaping @Sendable () -> Void = {}) {
        self.init(mac: mac, transmit: { frame, sent in
            transmit(frame)
            sent()
        }, failure: failure, closed: closed)
    }

    deinit {
        for worker in workers.values { worker.stop() }
        closed()
    }

    public var counters: Counters { rings.posted.withLock { $0.counters } }

    /// struct virtio_net_config: mac, status (LINK_UP), max_virtqueue_pairs.
    public func configSpace() -> [UInt8] { mac + [1, 0] + [1, 0] }

    public func start(queue index: Int, _ queue: SplitVirtqueue, kick: Int32, call: Int32) throws(VhostUserError) {
        let rings = self.rings
        if index == Self.receiveQueue { rings.posted.withLock { $0.stopping = false } }
        do {
            workers[index] = try QueueWorker(queue: queue, kick: kick, call: call, serve: { chain, done in
                index == Self.receiveQueue ? rings.post(chain, done) : rings.send(chain, done)
            }, failed: failure)
        } catch {
            throw .deviceStart(queue: index, errno: error.code)
        }
    }

    public func stop(queue index: Int) {
        if index == Self.receiveQueue {
            // Buffers the guest posted go back empty, so nothing is in flight.
            let returned = rings.posted.withLock { state -> [QueueWorker.Completion] in
                state.stopping = true
                defer { state.buffers.removeAll() }
                return state.buffers.map(\.done)
            }
            for done in returned { done(written: 0) }
        }
        workers.removeValue(forKey: index)?.stop()
    }

    /// A frame for the guest, from any thread; false when it was dropped.
    @discardableResult
    public func receive(_ frame: [UInt8]) -> Bool { rings.receive(frame) }
}

/// The rings' shared state: buffers the guest posted for receiving, and
/// where transmitted frames go. Queue workers hold it, not the device.
private final class Rings: Sendable {
    typealias Buffer = (chain: DescriptorChain, done: QueueWorker.Completion)
    struct Posted {
        var buffers: [Buffer] = []
        var stopping = false
        var counters = VhostUserNet.Counters()
    }

    let posted = Mutex(Posted())
    let transmit: VhostUserNet.Transmit

    init(transmit: @escaping VhostUserNet.Transmit) { self.transmit = transmit }

    /// A frame for the guest, from any thread; false when it was dropped.
    func receive(_ frame: [UInt8]) -> Bool {
        guard frame.count >= 14, frame.count <= VhostUserNet.maxFrame else { return false }
        while true {
            guard let buffer = posted.withLock({ state -> (chain: DescriptorChain, done: QueueWorker.Completion)? in
                if state.buffers.isEmpty { state.counters.receiveDrops += 1; return nil }
                return state.buffers.removeFirst()
            }) else { return false }
            let output = GuestBuffers(buffer.chain.writable)
            guard output.count >= VhostUserNet.headerSize + frame.count else {
                // Too small for this frame: returned empty, counted, the next is tried.
                posted.withLock { $0.counters.receiveDrops += 1 }
                buffer.done(written: 0)
                continue
            }
            // virtio_net_hdr: no flags, no GSO, one buffer (num_buffers = 1).
            var header = [UInt8](repeating: 0, count: VhostUserNet.headerSize)
            header[10] = 1
            header.withUnsafeBytes { _ = output.copy($0, to: 0) }
            frame.withUnsafeBytes { _ = output.copy($0, to: VhostUserNet.headerSize) }
            posted.withLock { $0.counters.received += 1 }
            buffer.done(written: UInt32(VhostUserNet.headerSize + frame.count))
            return true
        }
    }

    func post(_ chain: DescriptorChain, _ done: QueueWorker.Completion) {
        let keep = posted.withLock { state -> Bool in
            guard !state.stopping else { return false }
            state.buffers.append((chain, done))
            return true
        }
        if !keep { done(written: 0) }
    }

    func send(_ chain: DescriptorChain, _ done: QueueWorker.Completion) {
        let input = GuestBuffers(chain.readable)
        let length = input.count - VhostUserNet.headerSize
        if length >= 14 && length <= VhostUserNet.maxFrame {
            var frame = [UInt8](repeating: 0, count: length)
            frame.withUnsafeMutableBytes { _ = input.copy(from: VhostUserNet.headerSize, into: $0) }
            posted.withLock { $0.counters.transmitted += 1 }
            transmit(frame) { done(written: 0) }
        } else {
            posted.withLock { $0.counters.malformed += 1 }
            done(written: 0)
        }
    }
}
