@_spi(Conformance) import DriverHost
import Foundation
import Kernel
import Synchronization

/// Checks of the network class, "oyako.net/1".
extension Catalogue {
    static let netChecks: [CheckDefinition] = [
        CheckDefinition("io.net.frames", "minimum and maximum frames round-trip", requires: ["io.basic"], classes: net, hostable: true) { c in
            try withDriver(c) { rig in
                guard let interface = rig.kernel.network.interfaces.first, let (_, recorder) = rig.nics.first else { return .failed("no interface registered") }
                var sent: [[UInt8]] = []
                for length in [60, 61, 1000, 1514] {
                    let frame = interface.mac + [0x02, 0, 0, 0, 0, 9] + [0x88, 0xB5] + (0..<(length - 14)).map { UInt8(truncatingIfNeeded: $0 &+ length) }
                    sent.append(frame)
                    guard interface.send(frame) else { return .failed("transmit refused a \(length)-byte frame") }
                }
                let wire = recorder.wait(count: sent.count)
                guard wire.count >= sent.count, zip(wire.suffix(sent.count), sent).allSatisfy({ Array($0.0.prefix($0.1.count)) == $0.1 }) else {
                    return .failed("frames did not reach the wire intact and in order")
                }
                let received = Mutex<[[UInt8]]>([])
                interface.setUpperLayer { bytes in received.withLock { $0.append(Array(bytes)) } }
                for frame in sent { recorder.inject(frame) }
                let deadline = Date(timeIntervalSinceNow: 5)
                while received.withLock({ $0.count }) < sent.count && Date() < deadline { Thread.sleep(forTimeInterval: 0.005) }
                guard received.withLock({ $0 }) == sent else { return .failed("received \(received.withLock { $0.count }) of \(sent.count) frames, or altered") }
                return .passed("60 to 1514 bytes both ways", observation: rig.deviceObservation())
            }
        },
        CheckDefinition("io.net.oversize", "oversize and runt frames refused", requires: ["io.basic"], classes: net) { c in
            try withAttached(c) { rig, instance in
                guard let netdev = instance.netdevs.first else { return .failed("no interface registered") }
                var statuses: [OyStatus] = []
                for length in [netdev.maxFrame + 1, 9000, 13] {
                    let frame = NetFrame()
                    let bytes = [UInt8](repeating: 0x02, count: length)
                    bytes.withUnsafeBytes { frame.prepare($0) { _ in } }
                    let status = netdev.transmit(frame)
                    guard status == .invalid else {
                        return .failed("transmit " + (status.isOK ? "accepted" : "answered \(status) to") + " a \(length)-byte frame (max_frame \(netdev.maxFrame)); refuse it with OY_E_INVALID")
                    }
                    statuses.append(status)
                }
                var observation = rig.deviceObservation()
                observation["statuses"] = Observation.statuses(statuses)
                return .passed(observation: observation)
            }
        },
        CheckDefinition("io.net.link", "link down and up observed", requires: ["io.basic"], classes: net, hostable: true) { c in
            try withDriver(c) { rig in
                guard let interface = rig.kernel.network.interfaces.first, let (nic, _) = rig.nics.first else { return .failed("no interface registered") }
                let events = Mutex<[Bool]>([])
                interface.setUpperLayer(nil) { up in events.withLock { $0.append(up) } }
                nic.setCarrier(false)
                Thread.sleep(forTimeInterval: 0.2)
                nic.setCarrier(true)
                let deadline = Date(timeIntervalSinceNow: 5)
                while events.withLock({ $0 }) != [false, true] && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
                let seen = events.withLock { $0 }
                return seen == [false, true] ? .passed(observation: Observation(["link_events": "down,up"])) : .failed("link changes reported: \(seen), expected down then up; call link_changed from the interrupt handler")
            }
        },
    ]
}
