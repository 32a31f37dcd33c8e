import DriverHost
import Foundation
import Synchronization

/// What serves a network interface: the driver's registration in process
/// (`RegisteredNetdev`), or its driver-host process's end of the line. What
/// the driver reports (frames received, link changes) reaches the interface
/// (`NetInterface.deliver`, `.linkChanged`).
public protocol NetDriverBinding: DriverBinding {
    var mac: [UInt8] { get }
    var maxFrame: Int { get }
    var queueDepth: Int { get }
    var linkUp: Bool { get }
    /// Hands a frame to the driver: OK and a completion later, or a refusal.
    func transmit(_ frame: NetFrame) -> OyStatus
    func statistics() -> NetStatistics?
    func setFilter(_ macs: [[UInt8]], broadcast: Bool, promiscuous: Bool) -> OyStatus
}

extension NetDriverBinding {
    public func setFilter(_ macs: [[UInt8]]) -> OyStatus { setFilter(macs, broadcast: true, promiscuous: false) }
}

extension RegisteredNetdev: NetDriverBinding {}

/// A network interface of the OS, over a driver's registered netdev: a
/// bounded software transmit queue above the driver's depth, counters, and
/// one upper layer (a switch port or a protocol stack) that gets its frames.
public final class NetInterface: NetReceiver, ParkableDevice, @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `lock`.
    public let name: String
    public let location: String
    public let mac: [UInt8]
    public static let queueLimit = 1024

    public struct Counters: Sendable, Equatable {
        public var txFrames = 0, txBytes = 0
        /// Frames the driver completed with an error, and frames never
        /// handed to it (bad length, interface gone, transmit queue full).
        public var txErrors = 0, txDropped = 0
        public var rxFrames = 0, rxBytes = 0
    }

    public typealias Handler = @Sendable (UnsafeRawBufferPointer) -> Void

    private let lock = NSLock()
    private var counters_ = Counters()
    private let spare = QuarantinePool { NetFrame() }
    private let queue: SubmissionQueue<NetFrame>
    private var handler: Handler?
    private var linkHandler: (@Sendable (Bool) -> Void)?
    private var roomHandler: (@Sendable () -> Void)?
    /// An `offer` found the transmit queue full since the last room call.
    private var roomWanted = false
    private var netdev_: any NetDriverBinding
    /// Its driver is being restarted: frames wait for the next one.
    private var awaitingDriver = false
    /// The receive filter set through the interface, for the next driver.
    private var filter: (macs: [[UInt8]], broadcast: Bool, promiscuous: Bool)?

    init(name: String, netdev: any NetDriverBinding) {
        self.name = name
        self.location = netdev.location
        self.mac = netdev.mac
        self.netdev_ = netdev
        queue = SubmissionQueue(depth: netdev.queueDepth, limit: Self.queueLimit, submit: { netdev.transmit($0) }, fail: { $0.finishUnsubmitted($1) })
    }

    /// The driver serving it now.
    public var netdev: any NetDriverBinding { lock.withLock { netdev_ } }
    var awaitsDriver: Bool { lock.withLock { awaitingDriver } }

    /// Gives the driver that took the interface over the receive filter the
    /// old one had. Called once its attach is done (not from inside its
    /// register_netdev, nor on its host's line reader, which the call's
    /// answer needs).
    func restoreFilter() {
        guard let filter = lock.withLock({ filter }) else { return }
        _ = netdev.setFilter(filter.macs, broadcast: filter.broadcast, promiscuous: filter.promiscuous)
    }

    /// Its driver is being restarted or replaced: frames to send wait in
    /// software (up to `queueLimit`); those the old driver has are let
    /// complete until `drainUntil`, then canceled by its detach.
    func awaitDriver(drainUntil: Date) {
        lock.withLock { awaitingDriver = true }
        _ = queue.hold(until: drainUntil)
    }

    /// Programs the driver's receive filter; a restarted or replaced driver
    /// gets the same (`restoreFilter`: a switch port stays promiscuous).
    public func setFilter(_ macs: [[UInt8]], broadcast: Bool = true, promiscuous: Bool = false) -> OyStatus {
        let status = netdev.setFilter(macs, broadcast: broadcast, promiscuous: promiscuous)
        if status.isOK { lock.withLock { filter = (macs, broadcast, promiscuous) } }
        return status
    }

    /// The restarted driver serves it (the same MAC): waiting frames go to it.
    func rebind(_ netdev: any NetDriverBinding) -> Bool {
        guard netdev.mac == mac else { return false }
        lock.withLock {
            netdev_ = netdev
            awaitingDriver = false
        }
        queue.resume(submit: { netdev.transmit($0) }, depth: netdev.queueDepth)
        if let link = lock.withLock({ linkHandler }) { link(netdev.linkUp) }
        return true
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
        switch offer(bytes) {
        case .queued: return true
        case .full:
            lock.withLock { counters_.txDropped += 1 }
            return false
        case .dropped: return false
        }
    }

    public func send(_ bytes: [UInt8]) -> Bool { bytes.withUnsafeBytes { send($0) } }

    public enum Offer: Sendable, Equatable {
        /// Queued for transmission.
        case queued
        /// Not taken: the transmit queue is full. The caller keeps the frame;
        /// the room handler (`setRoomHandler`) runs once a frame has gone.
        case full
        /// Dropped and counted: a size the interface cannot send, or the interface is gone.
        case dropped
    }

    /// Offers a frame for transmission, for a caller that holds frames back
    /// while the queue is full (a switch's uplink) instead of losing them.
    public func offer(_ bytes: UnsafeRawBufferPointer) -> Offer {
        guard bytes.count >= 14, bytes.count <= lock.withLock({ netdev_.maxFrame }), !queue.isRemoved else {
            lock.withLock { counters_.txDropped += 1 }
            return .dropped
        }
        let frame = spare.take()
        let length = bytes.count
        frame.prepare(bytes) { [weak self] status in self?.finished(frame, length: length, status: status) }
        guard case .refused = queue.enqueue(frame) else { return .queued }
        spare.give(frame)
        if queue.isRemoved {
            lock.withLock { counters_.txDropped += 1 }
            return .dropped
        }
        // A frame that completed before this flag was set freed a slot the
        // next completion's room call reports: a full queue has frames in flight.
        lock.withLock { roomWanted = true }
        return .full
    }

    public func offer(_ bytes: [UInt8]) -> Offer { bytes.withUnsafeBytes { offer($0) } }

    /// Sets who is told that the transmit queue has room again after an
    /// `offer` found it full. It runs on the thread that completed a frame.
    public func setRoomHandler(_ handler: (@Sendable () -> Void)?) {
        lock.withLock { roomHandler = handler }
    }

    private func finished(_ frame: NetFrame, length: Int, status: OyStatus) {
        lock.withLock {
            if status.isOK {
                counters_.txFrames += 1
                counters_.txBytes += length
            } else {
                counters_.txErrors += 1
            }
        }
        spare.give(frame)
        queue.completed()
        let room = lock.withLock { () -> (@Sendable () -> Void)? in
            guard roomWanted else { return nil }
            roomWanted = false
            return roomHandler
        }
        room?()
    }

    public func received(_ frame: UnsafeRawBufferPointer, on netdev: RegisteredNetdev) { deliver(frame) }
    public func linkChanged(up: Bool, on netdev: RegisteredNetdev) { linkChanged(up: up) }

    /// A frame the driver received.
    func deliver(_ frame: UnsafeRawBufferPointer) {
        let upper = lock.withLock { () -> Handler? in
            counters_.rxFrames += 1
            counters_.rxBytes += frame.count
            return handler
        }
        upper?(frame)
    }

    /// The driver saw the link go up or down.
    func linkChanged(up: Bool) {
        lock.withLock { linkHandler }?(up)
    }

    /// The interface is gone for good: frames in quarantine are checked
    /// for late writes now, while the driver can still be told.
    func markRemoved() {
        queue.markRemoved()
        spare.checkAll()
    }
}

/// The OS's network interfaces, named eth0, eth1... in registration order.
public final class NetworkSubsystem: ClassSubsystem {
    private let devices = ParkableDevices<NetInterface>(prefix: "eth")
    let deviceClass = RegisteredNetdev.classID

    public var interfaces: [NetInterface] { devices.all }
    var hasDevices: Bool { !devices.isEmpty }

    public func interface(named name: String) -> NetInterface? { interfaces.first { $0.name == name } }

    func adopt(_ registration: ClassRegistration, log: KernelLog) throws(OyStatus) {
        guard let netdev = registration as? RegisteredNetdev else { throw .invalid }
        netdev.receiver = adopt(netdev: netdev, log: log)
    }

    /// Adds an interface, in process or served by a driver host (a
    /// restarted driver takes its device's interface over); the caller
    /// routes what the driver reports to it.
    @discardableResult
    func adopt(netdev: any NetDriverBinding, log: KernelLog) -> NetInterface {
        if let interface = devices.awaitingDriver(at: netdev.location), interface.rebind(netdev) {
            log.record(.info, "net", "\(interface.name): now served by \(netdev.label)")
            return interface
        }
        let interface = devices.add { NetInterface(name: $0, netdev: netdev) }
        log.record(.info, "net", "\(interface.name): \(RegisteredNetdev.format(netdev.mac)) via \(netdev.label), link \(netdev.linkUp ? "up" : "down")")
        return interface
    }

    func release(_ registration: ClassRegistration, log: KernelLog) {
        guard let netdev = registration as? RegisteredNetdev else { return }
        release(netdev: netdev)
    }

    func release(netdev: any NetDriverBinding) {
        // A parked interface stays for the restarted driver.
        devices.release { $0.netdev === netdev }?.markRemoved()
    }

    func park(location: String, drainUntil: Date) { devices.park(location, drainUntil: drainUntil) }

    func unpark(location: String, failure: String?, log: KernelLog) {
        let gone = devices.unpark(location)
        // The driver that took an interface over gets its receive filter.
        for interface in interfaces where interface.location == location && !interface.awaitsDriver { interface.restoreFilter() }
        guard let gone else { return }
        gone.markRemoved()
        log.record(.warning, "net", "\(gone.name) is gone: \(failure ?? "its driver did not come back")")
    }
}
