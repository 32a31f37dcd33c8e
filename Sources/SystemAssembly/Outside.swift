import Devices
import DriverHost
import Foundation
import NetStack

/// The world beyond a machine's NIC, at 192.0.2.1: a real Linux network
/// namespace reached through a TAP interface when this machine allows it,
/// or else a simulated host on the other end of the cable. Either way the
/// machine's side is the same NIC model and the same vendor driver.
public final class Outside: @unchecked Sendable {
    // @unchecked Sendable: immutable after init.
    public static let address: [UInt8] = [192, 0, 2, 1]
    public let description: String
    public let wire: any Wire
    /// The real namespace at 192.0.2.1, when there is one (nil: a simulated host).
    public let namespace: NetworkNamespace?
    private let tap: TAPWire?
    private let host: SimulatedHost?

    /// Connects `nic` to the outside; prefers a real namespace.
    public init(nic: E1KLite) {
        if TAPWire.unavailableReason == nil, NetworkNamespace.unavailableReason == nil,
            let namespace = try? NetworkNamespace(prefix: "oyako-demo"),
            case let name = "oydemo\(UInt16.random(in: 0...UInt16.max))", let tap = try? TAPWire(name: name)
        {
            nic.wire = tap
            tap.connect(nic)
            if (try? namespace.adopt(name, address: "192.0.2.1/24")) != nil {
                self.namespace = namespace
                self.tap = tap
                self.host = nil
                self.wire = tap
                self.description = "network namespace \(namespace.name) via TAP \(name), 192.0.2.1/24"
                return
            }
            tap.stop()
        }
        let host = SimulatedHost(nic: nic)
        nic.wire = host
        host.connect()
        self.namespace = nil
        self.tap = nil
        self.host = host
        self.wire = host
        let reason = TAPWire.unavailableReason ?? NetworkNamespace.unavailableReason ?? "namespace setup failed"
        self.description = "a simulated host at 192.0.2.1 (no TAP: \(reason))"
    }

    /// Pings `target` from the outside; returns replies received.
    public func ping(_ target: [UInt8], count: Int) -> Int {
        let address = target.map(String.init).joined(separator: ".")
        if let namespace {
            let result = namespace.exec(["ping", "-c", "\(count)", "-W", "2", "-i", "0.2", address])
            let line = result.stdout.split(separator: "\n").first { $0.contains("packets transmitted") } ?? ""
            let parts = line.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            return parts.first { $0.hasSuffix("received") }.flatMap { Int($0.split(separator: " ")[0]) } ?? 0
        }
        return host?.ping(target, count: count) ?? 0
    }

    public func close() {
        tap?.stop()
    }
}

/// A host on the far end of a cable, with an IPv4 stack at 192.0.2.1.
final class SimulatedHost: Wire, WireEnd, @unchecked Sendable {
    // @unchecked Sendable: immutable after init; IPStack locks itself.
    private weak var nic: E1KLite?
    private var stack: IPStack!

    init(nic: E1KLite) {
        self.nic = nic
        let mac: [UInt8] = [0x02, 0x0A, 0x7A, 0xEE, 0x00, 0x01]
        stack = IPStack(mac: mac, ip: Outside.address) { [weak self] frame in self?.nic?.deliver(frame) }
    }

    func connect() { nic?.setCarrier(true) }

    func send(_ frame: [UInt8], from end: any WireEnd) { stack.received(frame) }
    func deliver(_ frame: [UInt8]) { stack.received(frame) }
    func setCarrier(_ up: Bool) {}

    func ping(_ target: [UInt8], count: Int) -> Int { stack.pingAndWait(target, id: 0xEE, count: count) }
}
