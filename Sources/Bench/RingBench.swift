import CBenchShims
import Foundation
import Synchronization
import VMBus

/// VMBus ring throughput between two threads, with the real signalling
/// rules (signal on empty -> non-empty, pending send size when full), next
/// to a plain memcpy of the same bytes.
struct RingBench {
    let quick: Bool
    let progress: @Sendable (String) -> Void

    func run() -> [BenchFigure] {
        let packets64 = quick ? 300_000 : 3_000_000
        let packets4k = quick ? 20_000 : 200_000
        let small = measure(payload: 64 - 24, count: packets64)  // 16 B descriptor + 40 B payload + 8 B trailer = 64 B
        let large = measure(payload: 4096, count: packets4k)
        let copy = memcpyBandwidth(length: 4096, count: packets4k * 4)
        let largeBytesPerSecond = large.packetsPerSecond * 4096
        progress(String(format: "ring: 64-byte packets %.2f M/s (%d signals); 4 KiB packets %.0f MiB/s vs memcpy %.0f MiB/s",
                        small.packetsPerSecond / 1e6, small.signals, largeBytesPerSecond / 1048576, copy / 1048576))
        return [
            BenchFigure("ring.packets_64B", small.packetsPerSecond, "packets/s", target: "≥ 5,000,000", met: small.packetsPerSecond >= 5_000_000,
                        note: "writer and reader threads, \(small.signals) signals for \(small.count) packets"),
            BenchFigure("ring.bytes_4KiB", largeBytesPerSecond / 1048576, "MiB/s", baseline: copy / 1048576,
                        target: "time per byte within 2× of memcpy (ratio ≥ 0.5)", met: largeBytesPerSecond >= copy / 2,
                        note: "payload bytes moved through the ring; baseline: memcpy of 4 KiB pieces through the same 256 KiB footprint"),
        ]
    }

    struct Result {
        let count: Int
        let packetsPerSecond: Double
        let signals: Int
    }

    private func measure(payload: Int, count: Int) -> Result {
        let size = Ring.controlSize + 256 * 1024
        let memory = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        defer { memory.deallocate() }
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        let writer = Ring(base: memory, size: size)!
        writer.reset()
        let reader = Ring(base: memory, size: size)!
        let dataReady = DispatchSemaphore(value: 0)
        let spaceReady = DispatchSemaphore(value: 0)
        let signals = Atomic<Int>(0)
        let packet = Packet(kind: .inband, transactionID: 0, payload: [UInt8](repeating: 0x5A, count: payload))
        let done = DispatchSemaphore(value: 0)
        let received = Atomic<Int>(0)
        let box = RingBox(reader: reader)
        let start = DispatchTime.now()
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: payload + 64)
            var got = 0
            while got < count {
                var signalWriter = false
                box.reader.maskInterrupts()
                while case let length?? = try? buffer.withUnsafeMutableBytes({ try box.reader.readPayload(into: $0, signalWriter: &signalWriter) }), length >= 0 {
                    got += 1
                }
                if signalWriter { spaceReady.signal() }
                if got >= count { break }
                if !box.reader.unmaskInterrupts() { dataReady.wait() }
            }
            received.store(got, ordering: .relaxed)
            done.signal()
        }
        var sent = 0
        while sent < count {
            switch try? writer.write(packet) {
            case .written(let signal)?:
                sent += 1
                if signal {
                    signals.add(1, ordering: .relaxed)
                    dataReady.signal()
                }
            case .full?:
                _ = spaceReady.wait(timeout: .now() + 0.01)
            case nil:
                sent = count
            }
        }
        done.wait()
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        return Result(count: received.load(ordering: .relaxed), packetsPerSecond: Double(count) / seconds, signals: signals.load(ordering: .relaxed))
    }

    /// memcpy in `length` pieces through the same 256 KiB footprint as the
    /// ring's data area, so that both see the same caches.
    private func memcpyBandwidth(length: Int, count: Int) -> Double {
        let region = 256 * 1024
        let source = UnsafeMutableRawPointer.allocate(byteCount: region, alignment: 64)
        let destination = UnsafeMutableRawPointer.allocate(byteCount: region, alignment: 64)
        defer {
            source.deallocate()
            destination.deallocate()
        }
        source.initializeMemory(as: UInt8.self, repeating: 1, count: region)
        destination.initializeMemory(as: UInt8.self, repeating: 0, count: region)
        let ns = (0..<3).map { _ in oy_bench_memcpy(destination, source, UInt64(region), UInt64(length), UInt64(count)) }.min()!
        return Double(length) * Double(count) / (Double(ns) / 1e9)
    }
}

/// Hands the reader's Ring to the reader thread. @unchecked Sendable: after
/// the hand-off only that thread uses it.
private final class RingBox: @unchecked Sendable {
    let reader: Ring
    init(reader: Ring) { self.reader = reader }
}
