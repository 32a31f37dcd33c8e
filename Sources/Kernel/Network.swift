import DriverHost
import Foundation
import Synchronization

/// A network interface of the OS, over a driver's registered netdev: a
/// bounded software transmit queue above the driver's depth, counters, and
/// one upper layer (a switch port or a protocol stack) that gets its frames.
public final class NetInterface: NetReceiver, @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `lock`.
    public let name: String
    public let netdev: RegisteredNetdev
    public var mac: [UInt8] { netdev.mac }
    public static let queueLimit = 1024

    public struct Counters: Sendable, Equatable {
        public var txFrames = 0
        public var txBytes = 0
        public var txErrors = 0
        public var txDropped = 0
        public var rxFrames = 0
        public var rxBytes = 0
    }

    public typealias Handler = @Sendable (UnsafeRawBufferPointer) -> Void

    private let lock = NSLock()
    private var counters_ = Counters()
    private var inflight = 0
    private var queue: [NetFrame] = []
    private var spare: [NetFrame] = []
    private var removed = false
    private var handler: Handler?
    private var linkHandler: (@Sendable (Bool) -> Void)?

    init(name: String, netdev: RegisteredNetdev) {
        self.name = name
        self.netdev = netdev
    }

    public var counters: Counters { lock.withLock { counters_ } }
    public var linkUp: Bool { netdev.linkUp }

    /// Sets who receives frames (and link changes).
    public func setUpperLayer(_ handler: Handler?, link: (@Sendable (Bool) -> Void)? = nil) {
        lock.withLock {
            self.handler = handler
            self.linkHandler = link
        }
    }

    /// Queues a frame for transmission; false if it was dropped (queue full,
    /// interface gone, or a size the interface cannot send).
    @discardableResult
    public func send(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count >= 14, bytes.count <= netdev.maxFrame else {
            lock.withLock { counters_.txDropped += 1 }
            return false
        }
        // Take and fill a frame first; only a prepared frame may be queued,
        // because a completion on another thread dispatches from the queue.
        let taken = lock.withLock { () -> NetFrame? in
            guard !removed, queue.count < Self.queueLimit else {
                counters_.txDropped += 1
                return nil
            }
            return spare.popLast() ?? NetFrame()
        }
        guard let frame = taken else { return false }
        let length = bytes.count
        frame.prepare(bytes) { [weak self] status in self?.finished(frame, length: length, status: status) }
        let dispatchNow = lock.withLock { () -> Bool? in
            if removed {
                spare.append(frame)
                return nil
            }
            if inflight < netdev.queueDepth && queue.isEmpty {
                inflight += 1
                return true
            }
            queue.append(frame)
            return false
        }
        guard let dispatchNow else { return false }
        if dispatchNow { dispatch(frame) }
        return true
    }

    public func send(_ bytes: [UInt8]) -> Bool { bytes.withUnsafeBytes { send($0) } }

    private func dispatch(_ frame: NetFrame) {
        let status = netdev.transmit(frame)
        if status == .busy {
            lock.withLock {
                inflight -= 1
                queue.insert(frame, at: 0)
            }
        } else if !status.isOK {
            frame.finishUnsubmitted(status)
        }
    }

    private func finished(_ frame: NetFrame, length: Int, status: OyStatus) {
        let next = lock.withLock { () -> NetFrame? in
            if status.isOK {
                counters_.txFrames += 1
                counters_.txBytes += length
            } else {
                counters_.txErrors += 1
            }
            inflight -= 1
            spare.append(frame)
            guard !queue.isEmpty, inflight < netdev.queueDepth else { return nil }
            inflight += 1
            return queue.removeFirst()
        }
        if let next { dispatch(next) }
    }

    public func received(_ frame: UnsafeRawBufferPointer, on netdev: RegisteredNetdev) {
        let upper = lock.withLock { () -> Handler? in
            counters_.rxFrames += 1
            counters_.rxBytes += frame.count
            return handler
        }
        upper?(frame)
    }

    public func linkChanged(up: Bool, on netdev: RegisteredNetdev) {
        lock.withLock { linkHandler }?(up)
    }

    func markRemoved() {
        let dropped = lock.withLock { () -> [NetFrame] in
            removed = true
            inflight += queue.count
            defer { queue.removeAll() }
            return queue
        }
        for frame in dropped { frame.finishUnsubmitted(.deviceGone) }
    }
}

/// The OS's network interfaces, named eth0, eth1... in registration order.
public final class NetworkSubsystem: ClassSubsystem {
    private let named = NamedDevices<NetInterface>(prefix: "eth")
    let deviceClass = RegisteredNetdev.classID

    public var interfaces: [NetInterface] { named.all }

    public func interface(named name: String) -> NetInterface? { interfaces.first { $0.name == name } }

    func adopt(_ registration: ClassRegistration, log: KernelLog) throws(OyStatus) {
        guard let netdev = registration as? RegisteredNetdev else { throw .invalid }
        let interface = named.add { NetInterface(name: $0, netdev: netdev) }
        netdev.receiver = interface
        log.record(.info, "net", "\(interface.name): \(RegisteredNetdev.format(netdev.mac)) via \(netdev.label), link \(netdev.linkUp ? "up" : "down")")
    }

    func release(_ registration: ClassRegistration, log: KernelLog) {
        named.remove { $0.netdev === registration }?.markRemoved()
    }
}
