import Kernel
import NetStack

extension VirtualSwitch {
    /// Binds the switch to a physical interface of the root OS (an external
    /// switch): frames go out through the vendor NIC driver, and the NIC is
    /// put in promiscuous mode so that frames for the children get in. While
    /// the interface's transmit queue is full, frames for the wire wait at
    /// the switch (and their senders with them) until it has room.
    @discardableResult
    public func attachUplink(_ interface: NetInterface) throws(PortRefused) -> Port {
        let port = try addPort(name: "uplink:\(interface.name)", role: .uplink) { frame -> Delivery in
            switch interface.offer(frame) {
            case .queued: .taken
            case .full: .full
            case .dropped: .dropped
            }
        }
        interface.setRoomHandler { [weak port] in port?.ready() }
        interface.setUpperLayer { bytes in port.input(Array(bytes)) }
        let status = interface.setFilter([], broadcast: true, promiscuous: true)
        guard status.isOK else {
            interface.setUpperLayer(nil)
            interface.setRoomHandler(nil)
            removePort(port)
            throw PortRefused(reason: "\(interface.name) cannot receive for other addresses: \(status)")
        }
        return port
    }

    /// Gives the root partition its own port with an IP address (internal
    /// switches, or an external one shared with the root).
    public func attachHost(mac: [UInt8], ip: [UInt8]) throws(PortRefused) -> IPStack {
        let relay = PortRelay()
        let stack = IPStack(mac: mac, ip: ip) { frame in relay.port?.input(frame) }
        relay.port = try addPort(name: "host", role: .host) { frame in
            stack.received(frame)
            return true
        }
        return stack
    }
}

/// Lets the host stack's transmit closure reach a port created after it.
private final class PortRelay: @unchecked Sendable {
    // @unchecked Sendable: set once, before the first frame can flow.
    var port: VirtualSwitch.Port?
}
