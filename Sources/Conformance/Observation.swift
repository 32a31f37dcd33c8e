import Devices
import DriverHost
import Foundation

/// What a driver made observable in one check, as named facts that do not
/// depend on the environment for a correct driver but can for a broken one:
/// counts the device model itself kept (commands, bytes, flushes, frames),
/// the SHA-256 of the disk image file as the device left it, the geometry
/// or line the driver reported, and the status codes it returned to bad
/// input. `io.same-results` compares them fact by fact across environments.
struct Observation: Sendable, Equatable {
    private(set) var facts: [String: String] = [:]

    init(_ facts: [String: String] = [:]) { self.facts = facts }

    subscript(key: String) -> String? {
        get { facts[key] }
        set { facts[key] = newValue }
    }

    mutating func merge(_ other: Observation) { facts.merge(other.facts) { _, new in new } }

    /// `key=value` pairs in key order, separated by `;` (values never hold `;`).
    var encoded: String { facts.keys.sorted().map { "\($0)=\(facts[$0]!)" }.joined(separator: ";") }

    init(encoded: String) {
        for pair in encoded.split(separator: ";") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            facts[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
        }
    }

    /// The statuses a driver returned, named: `OY_E_RANGE,OY_E_RANGE`.
    static func statuses(_ statuses: [OyStatus]) -> String {
        statuses.map { $0.name ?? "\($0.rawValue)" }.joined(separator: ",")
    }

    /// Keys whose values differ (or exist on one side only), sorted.
    func differences(from other: Observation) -> [String] {
        Set(facts.keys).union(other.facts.keys).filter { facts[$0] != other.facts[$0] }.sorted()
    }
}

extension Rig {
    /// The device side of an observation: what the device model counted and
    /// where the data ended up, for the first device of the driver's class.
    func deviceObservation() -> Observation {
        var o = Observation()
        if let nvme = nvmes.first {
            let s = nvme.statistics
            o["device.commands"] = "\(s.commands)"
            o["device.bytes_read"] = "\(s.bytesRead)"
            o["device.bytes_written"] = "\(s.bytesWritten)"
            o["device.flushes"] = "\(s.flushes)"
            o["device.errors"] = "\(s.errors)"
            o["image.sha256"] = sha256Hex(ofFile: nvme.disk.path) ?? "unreadable"
        }
        if let (nic, recorder) = nics.first {
            let s = nic.statistics
            o["device.frames_sent"] = "\(s.framesSent)"
            o["device.frames_received"] = "\(s.framesReceived)"
            o["device.oversize_transmits"] = "\(s.oversizeTransmits)"
            o["wire.frames"] = "\(recorder.wait(count: 0, timeout: 0).count)"
        }
        if let (uart, _) = uarts.first {
            let s = uart.statistics
            o["device.bytes_received"] = "\(s.received)"
            o["device.overruns"] = "\(s.overruns)"
        }
        if let disk = kernel.blockLayer.disks.first {
            o["driver.geometry"] = "\(disk.geometry.blockSize)x\(disk.geometry.blockCount),max\(disk.geometry.maxTransferBlocks),flush:\(disk.geometry.canFlush)"
        }
        if let tty = kernel.serial.ports.first {
            let line = tty.line
            o["driver.line"] = "\(line.baud)/\(line.dataBits)\(line.parity)\(line.stopBits)"
        }
        if let rng = rngs.first { o["device.words_delivered"] = "\(rng.wordsDelivered)" }
        return o
    }
}
