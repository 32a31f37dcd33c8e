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

    /// Sends `frames` from `a` and returns what `b` received, once
    /// `expecting` frames (all of them, by default) arrived or at `timeout`.
    public static func roundTrip(from a: NetInterface, to b: NetInterface, frames: [[UInt8]], expecting: Int? = nil, timeout: Double = 10) -> [[UInt8]] {
        let received = Mutex<[[UInt8]]>([])
        let arrived = DispatchSemaphore(value: 0)
        b.setUpperLayer { bytes in
            received.withLock { $0.append(Array(bytes)) }
            arrived.signal()
        }
        defer { b.setUpperLayer(nil) }
        for f in frames { _ = a.send(f) }
        let deadline = DispatchTime.now() + timeout
        while received.withLock({ $0.count }) < expecting ?? frames.count {
            if arrived.wait(timeout: deadline) == .timedOut { break }
        }
        return received.withLock { $0 }
    }

    /// Writes `bytes` to the OS's port; true when the far end received them
    /// in order, as one run (the kernel's console lines may come before or
    /// after, never inside one write).
    public static func serialOut(_ port: SerialPort, _ log: SerialLog, _ bytes: [UInt8], timeout: Double = 10) -> Bool {
        let before = log.contents.count
        port.write(bytes)
        let deadline = Date(timeIntervalSinceNow: timeout)
        while Date() < deadline {
            let seen = Array(log.waitFor(log.contents.count + 1, timeout: 0.2).dropFirst(before))
            if contains(seen, bytes) { return true }
        }
        return false
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, haystack.count >= needle.count else { return needle.isEmpty }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if Array(haystack[start..<(start + needle.count)]) == needle { return true }
        }
        return false
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
