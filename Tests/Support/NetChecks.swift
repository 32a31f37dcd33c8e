import Devices
import Foundation
import Kernel
import Synchronization

/// Helpers to drive the OS's interfaces and ports from tests.
public enum NetChecks {
    /// An Ethernet frame from `source` to `destination` with a test
    /// EtherType (0x88B5) and a numbered payload, `length` bytes in all.
    public static func frame(from source: [UInt8], to destination: [UInt8], length: Int, seed: Int) -> [UInt8] {
        var f = destination + source + [0x88, 0xB5]
        f += (0..<(length - 14)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed) }
        return f
    }

    /// Sends `frames` on `a` and returns what `b` received within `timeout`.
    public static func roundTrip(from a: NetInterface, to b: NetInterface, frames: [[UInt8]], timeout: Double = 10) -> [[UInt8]] {
        let received = Mutex<[[UInt8]]>([])
        let arrived = DispatchSemaphore(value: 0)
        b.setUpperLayer { bytes in
            received.withLock { $0.append(Array(bytes)) }
            arrived.signal()
        }
        defer { b.setUpperLayer(nil) }
        for f in frames { _ = a.send(f) }
        let deadline = DispatchTime.now() + timeout
        while received.withLock({ $0.count }) < frames.count {
            if arrived.wait(timeout: deadline) == .timedOut { break }
        }
        return received.withLock { $0 }
    }

    /// Writes `bytes` to the OS's port and returns what the far end got.
    public static func serialOut(_ port: SerialPort, _ log: SerialLog, _ bytes: [UInt8], timeout: Double = 10) -> [UInt8] {
        let before = log.contents.count
        port.write(bytes)
        return Array(log.waitFor(before + bytes.count, timeout: timeout).dropFirst(before))
    }

    /// Sends `bytes` from the far end and returns what the OS's port read.
    public static func serialIn(_ port: SerialPort, _ uart: UART16550, _ bytes: [UInt8], timeout: Double = 10) -> [UInt8] {
        uart.send(bytes)
        var got: [UInt8] = []
        let deadline = Date(timeIntervalSinceNow: timeout)
        while got.count < bytes.count && Date() < deadline {
            got += port.read(bytes.count - got.count, timeout: 0.5)
        }
        return got
    }
}

/// Where two byte sequences first differ, or nil when equal (for messages
/// that stay readable when a long transfer goes wrong).
public func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> String? {
    if a == b { return nil }
    let index = zip(a, b).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(a.count, b.count)
    return "lengths \(a.count) and \(b.count), first difference at byte \(index)"
}
