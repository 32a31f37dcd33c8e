import COyakoSDK
import CSystemShims
import Foundation

/// What the OS does with a registered interface's traffic.
public protocol NetReceiver: AnyObject, Sendable {
    /// A frame arrived; `frame` is valid only during the call. [any-thread]
    func received(_ frame: UnsafeRawBufferPointer, on netdev: RegisteredNetdev)
    func linkChanged(up: Bool, on netdev: RegisteredNetdev)
}

/// A frame to transmit, reusable. Owns its bytes; while the driver holds
/// it, it is out on loan (`Loans`).
public final class NetFrame: LentRequest, @unchecked Sendable {
    public static let capacity = 2048
    /// The C struct the driver sees.
    var raw: UnsafeMutablePointer<oy_net_frame> { cStruct(as: oy_net_frame.self) }
    public let storage: UnsafeMutableRawPointer

    public init() {
        storage = .allocate(byteCount: Self.capacity, alignment: 16)
        super.init(oy_net_frame(), hostPrivate: \.host_private, described: ("frame", "oy_net_frame", "tx_complete()"))
    }

    deinit { Self.bury(UnsafeMutableRawBufferPointer(start: storage, count: Self.capacity)) }

    /// The `host_private` field of a C frame.
    static func hostPrivate(_ raw: UnsafeMutablePointer<oy_net_frame>) -> UnsafeMutablePointer<UnsafeMutableRawPointer?> { hostPrivate(of: raw, \.host_private) }

    /// Copies `bytes` in (at most `capacity`) and sets the completion.
    public func prepare(_ bytes: UnsafeRawBufferPointer, completion: @escaping @Sendable (OyStatus) -> Void) {
        checkPoison()
        let length = min(bytes.count, Self.capacity)
        if length > 0 { storage.copyMemory(from: bytes.baseAddress!, byteCount: length) }
        raw.pointee = oy_net_frame()
        raw.pointee.struct_size = UInt32(MemoryLayout<oy_net_frame>.size)
        raw.pointee.length = UInt32(bytes.count)
        raw.pointee.data = storage
        setCompletion(completion)
    }

    /// Prepares the frame over `length` bytes that live elsewhere (in a
    /// driver host: the OS's memory, which the driver may dma_map).
    func prepare(at data: UnsafeMutableRawPointer, length: Int, completion: @escaping @Sendable (OyStatus) -> Void) {
        checkPoison()
        raw.pointee = oy_net_frame()
        raw.pointee.struct_size = UInt32(MemoryLayout<oy_net_frame>.size)
        raw.pointee.length = UInt32(length)
        raw.pointee.data = data
        setCompletion(completion)
    }

    public var length: Int { Int(raw.pointee.length) }
}

/// Interface counters as the driver reports them.
public struct NetStatistics: Sendable, Equatable {
    public var txPackets: UInt64 = 0, txBytes: UInt64 = 0, txErrors: UInt64 = 0, txDropped: UInt64 = 0
    public var rxPackets: UInt64 = 0, rxBytes: UInt64 = 0, rxErrors: UInt64 = 0, rxDropped: UInt64 = 0
}

extension NetStatistics {
    /// The counters in `fields` order (missing ones are 0).
    public init(counters: [UInt64]) {
        self.init()
        for (field, value) in zip(Self.fields, counters) { self[keyPath: field] = value }
    }

    /// Every counter, in the order oy_net_stats has them (for a wire format).
    public static var fields: [WritableKeyPath<NetStatistics, UInt64>] { [\.txPackets, \.txBytes, \.txErrors, \.txDropped, \.rxPackets, \.rxBytes, \.rxErrors, \.rxDropped] }
}

/// A network interface a driver registered with the OS (`register_netdev`).
public final class RegisteredNetdev: ClassRegistration, DescribedRegistration, @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `lock`.
    /// The extension ID of this class.
    public static let classID: String = OY_NET_EXTENSION
    public let mac: [UInt8]
    public let mtu: Int
    public let maxFrame: Int
    public let queueDepth: Int
    let ops: oy_net_ops
    let instance: UnsafeMutableRawPointer?
    private let lock = NSLock()
    private let loans: Loans
    private var unregistered = false
    private var link_: Bool
    private weak var receiver_: (any NetReceiver)?

    /// What `register_netdev` registers; refused (and named) if net.h rules
    /// out the info or the ops.
    init(binding: DeviceBinding, info: oy_net_info, ops: oy_net_ops, instance: UnsafeMutableRawPointer?) throws(Refusal) {
        guard Self.isPossible(maxFrame: Int(info.max_frame), queueDepth: Int(info.tx_queue_depth)) else {
            throw .init("an impossible oy_net_info (max_frame \(info.max_frame), tx_queue_depth \(info.tx_queue_depth)): max_frame is 60 to 65535, tx_queue_depth 1 to 4096")
        }
        guard Self.isLinkState(info.link) else { throw .init("an undefined link state \(info.link) in its oy_net_info (\(Self.linkStates))") }
        guard ops.transmit != nil else { throw .init("a NULL transmit callback") }
        self.mac = withUnsafeBytes(of: info.mac) { Array($0) }
        self.mtu = Int(info.mtu)
        self.maxFrame = Int(info.max_frame)
        self.queueDepth = Int(info.tx_queue_depth)
        self.ops = ops
        self.instance = instance
        self.link_ = info.link == UInt32(OY_LINK_UP.rawValue)
        self.loans = Loans(library: binding.library)
        super.init(binding: binding, deviceClass: Self.classID, kind: "network interface", detail: lowercaseHex(withUnsafeBytes(of: info.mac) { Array($0) }, separator: UInt8(ascii: ":")))
    }

    /// Frames of 60 bytes to 64 KiB, 1 to 4096 of them with the driver at
    /// once: what a NIC can register, in process or from a driver host.
    public static func isPossible(maxFrame: Int, queueDepth: Int) -> Bool {
        (60...65_535).contains(maxFrame) && (1...4096).contains(queueDepth)
    }

    /// Whether `state` is an `oy_link_state`.
    static func isLinkState(_ state: UInt32) -> Bool { state == UInt32(OY_LINK_DOWN.rawValue) || state == UInt32(OY_LINK_UP.rawValue) }
    static let linkStates = "OY_LINK_DOWN 0 or OY_LINK_UP 1"

    public static func format(_ mac: [UInt8]) -> String { lowercaseHex(mac, separator: UInt8(ascii: ":")) }

    public var linkUp: Bool { lock.withLock { link_ } }

    /// Who gets received frames and link changes (set by the OS).
    public var receiver: (any NetReceiver)? {
        get { lock.withLock { receiver_ } }
        set { lock.withLock { receiver_ = newValue } }
    }

    /// Hands `frame` to the driver; on `.ok` the completion runs later,
    /// exactly once, possibly on the interrupt thread.
    public func transmit(_ frame: NetFrame) -> OyStatus {
        loans.lend(frame, service: "transmit") { OyStatus(ops.transmit(instance, frame.raw)) }
    }

    /// The driver's counters, or nil if it has no get_stats.
    public func statistics() -> NetStatistics? {
        guard let getStats = ops.get_stats else { return nil }
        var s = oy_net_stats()
        s.struct_size = UInt32(MemoryLayout<oy_net_stats>.size)
        guard whileRegistered(OY_E_DEVICE_GONE.rawValue, { getStats(instance, &s) }) == 0 else { return nil }
        return NetStatistics(txPackets: s.tx_packets, txBytes: s.tx_bytes, txErrors: s.tx_errors, txDropped: s.tx_dropped,
                             rxPackets: s.rx_packets, rxBytes: s.rx_bytes, rxErrors: s.rx_errors, rxDropped: s.rx_dropped)
    }

    /// Programs the receive filter.
    public func setFilter(_ macs: [[UInt8]], broadcast: Bool = true, promiscuous: Bool = false) -> OyStatus {
        guard let setFilter = ops.set_filter else { return .notSupported }
        let flat = macs.flatMap { $0 }
        let flags = (broadcast ? UInt32(OY_NET_FILTER_BROADCAST.rawValue) : 0) | (promiscuous ? UInt32(OY_NET_FILTER_PROMISCUOUS.rawValue) : 0)
        return whileRegistered(.deviceGone) {
            binding.library.callDriver("set_filter") { flat.withUnsafeBufferPointer { OyStatus(setFilter(instance, $0.baseAddress, UInt32(macs.count), flags)) } }
        }
    }

    fileprivate func deliver(_ data: UnsafeRawBufferPointer) {
        let target = lock.withLock { unregistered ? nil : receiver_ }
        target?.received(data, on: self)
    }

    fileprivate func setLink(_ up: Bool) {
        let target = lock.withLock { () -> (any NetReceiver)? in
            link_ = up
            return unregistered ? nil : receiver_
        }
        target?.linkChanged(up: up, on: self)
    }

    /// Completes frames the driver still holds with OY_E_CANCELED.
    override func cancelOutstanding() -> Int { loans.cancelAll() }

    public override var outstandingCount: Int { loans.count }

    override func willUnregister() {
        lock.withLock { unregistered = true }
        loans.close()
    }
}

/// The host's "oyako.net/1" table.
enum HostNet {
    static let deviceClass = DeviceClass(id: RegisteredNetdev.classID, table: UnsafeRawPointer(table))

    /// Static for the life of the process; drivers hold a pointer to it.
    nonisolated(unsafe) static let table = oy_host_net.hostTable { t in
        t.register_netdev = { ClassRegistration.register(as: RegisteredNetdev.self, $0, $1, $2, $3, $4, service: "register_netdev") }
        t.unregister_netdev = { handle in ClassRegistration.withdraw(handle, as: RegisteredNetdev.self, service: "unregister_netdev") }
        t.tx_complete = { LentRequest.completed($0.map(NetFrame.hostPrivate), status: $1, service: "tx_complete") }
        t.receive = { handle, data, length in
            guard let netdev = HostServices.resource(handle, RegisteredNetdev.self, service: "receive") else { return }
            guard let data else {
                netdev.binding.library.recordViolation("receive with NULL data and a length of \(length)")
                return
            }
            guard length >= 14, Int(length) <= max(netdev.maxFrame, 1514) + 4 else {
                netdev.binding.library.recordViolation("receive with an impossible frame length \(length)")
                return
            }
            CallbackBudget.inOS { netdev.deliver(UnsafeRawBufferPointer(start: data, count: Int(length))) }
        }
        t.link_changed = { handle, state in
            guard let netdev = HostServices.resource(handle, RegisteredNetdev.self, service: "link_changed") else { return }
            guard RegisteredNetdev.isLinkState(state) else {
                netdev.binding.library.recordViolation("link_changed with an undefined link state \(state) (\(RegisteredNetdev.linkStates))")
                return
            }
            CallbackBudget.inOS { netdev.setLink(state == UInt32(OY_LINK_UP.rawValue)) }
        }
    }
}
