@_spi(Conformance) import DriverHost
import Foundation
import Kernel

/// Checks of the entropy class, "oyako.rng/1" (SDK/include/oyako/rng.h).
extension Catalogue {
    static let rngChecks: [CheckDefinition] = [
        CheckDefinition("io.rng.bytes", "bytes arrive: 4 KiB of entropy, in reads of every size up to the maximum", requires: ["io.basic"], classes: rng, hostable: true) { c in
            try withEntropySource(c) { rig, source in
                var all: [UInt8] = []
                for size in [1, 3, 4, 5, 64, 1000, 3019] {
                    do {
                        let bytes = try source.read(size)
                        guard bytes.count == size else { return .failed("asked for \(size) bytes, got \(bytes.count)") }
                        all += bytes
                    } catch {
                        return .failed("a read of \(size) bytes failed: \(error)")
                    }
                }
                // 4096 random bytes take nearly all 256 values; a stuck or
                // zero-filling driver does not.
                let distinct = Set(all).count
                guard distinct >= 200 else { return .failed("4096 bytes of entropy hold only \(distinct) distinct byte values; the data is not random") }
                var observation = rig.deviceObservation()
                observation["bytes"] = "\(all.count)"
                return .passed("\(all.count) bytes, \(distinct) distinct values", observation: observation)
            }
        },
        CheckDefinition("io.rng.distinct", "no two reads return the same bytes", requires: ["io.basic"], classes: rng, hostable: true) { c in
            try withEntropySource(c) { _, source in
                var seen: Set<[UInt8]> = []
                for i in 0..<64 {
                    let bytes: [UInt8]
                    do { bytes = try source.read(16) } catch { return .failed("read \(i + 1) failed: \(error)") }
                    guard seen.insert(bytes).inserted else {
                        return .failed("read \(i + 1) returned the same 16 bytes as an earlier read; give fresh entropy from the device every time")
                    }
                }
                return .passed("64 reads of 16 bytes, all different")
            }
        },
        CheckDefinition("io.rng.from-device", "every byte of entropy comes from the device: what reads return, the device gave", requires: ["io.basic"], classes: rng, hostable: true) { c in
            try withEntropySource(c) { rig, source in
                guard let device = rig.rngs.first else { return .failed("no entropy device in the rig") }
                let before = device.wordsDelivered
                var bytes: [UInt8] = []
                for size in [16, 256, 1000, 2824] {
                    do { bytes += try source.read(size) } catch { return .failed("a read of \(size) bytes failed: \(error)") }
                }
                let returned = bytes.count
                let given = (device.wordsDelivered - before) * 4
                guard given >= returned else {
                    return .failed("reads returned \(returned) bytes of entropy while the device gave \(given); pass on what the device gives and make none "
                        + "of your own (a generator stretching a few device words is not entropy: whoever learns its state predicts every key made from it)")
                }
                if let words = device.wordsDelivered(since: before), let problem = bytesNotGiven(bytes, by: words) { return .failed(problem) }
                return .passed("\(returned) bytes returned, \(given) given by the device", observation: Observation(["returned": "\(returned)"]))
            }
        },
        // A reader of /dev/random waits on the driver: a driver that waits
        // for the device without a bound hangs it.
        CheckDefinition("io.rng.starved", "with the device's noise source dry, a read returns within the class's 100 ms wait, OY_OK and nothing produced; then reads work again",
                        requires: ["io.basic"], classes: rng, timeout: 40, hostable: true) { c in
            try withEntropySource(c) { rig, source in
                guard let device = rig.rngs.first else { return .failed("no entropy device in the rig") }
                device.exhaust(true)
                let answer = starvedRead(source.registered, within: rngStarvedBound)
                device.exhaust(false)
                switch answer {
                case nil:
                    return .failed(String(format: "a read with no entropy ready had not returned after %.0f s; wait for the first word at most 100 ms, with the host's clock, then return OY_OK with *produced 0 (SDK/CLASSES.md, Entropy)", rngStarvedBound))
                case .failure(let status)?:
                    return .failed("a read with no entropy ready answered \(status.name ?? "code \(status.rawValue)"); a source that has nothing yet is not an error: return OY_OK with *produced 0 after waiting at most 100 ms (SDK/CLASSES.md, Entropy)")
                case .success(let produced)? where produced > 0:
                    return .failed("a read with the device's FIFO empty produced \(produced) byte(s) the device never gave; return only what the device gives")
                case .success?:
                    break
                }
                do {
                    _ = try source.read(64, timeout: 10)
                } catch {
                    return .failed("once the device had entropy again, reads did not get it: \(error)")
                }
                return .passed("a read of a dry source returned OY_OK with nothing produced; reads work again after")
            }
        },
        CheckDefinition("io.rng.bad-length", "NULL buffers, length 0 and over OY_RNG_MAX_READ are refused", requires: ["io.basic"], classes: rng) { c in
            try withEntropySource(c) { _, source in
                guard let source = source.registered as? RegisteredRNG else { return .skipped("the source is served by a driver host; raw reads need the driver in process") }
                let cases: [(String, OyStatus, () -> OyStatus)] = [
                    ("read(NULL buffer, 16)", .invalid, { source.readUnchecked(nullBuffer: true, length: 16) }),
                    ("read(buffer, 0)", .invalid, { source.readUnchecked(nullBuffer: false, length: 0) }),
                    ("read(buffer, 16, produced NULL)", .invalid, { source.readUnchecked(nullBuffer: false, length: 16, nullProduced: true) }),
                    ("read(NULL, OY_RNG_MAX_READ + 1)", .range, { source.readUnchecked(nullBuffer: true, length: UInt32(RegisteredRNG.maxRead) + 1) }),
                ]
                var statuses: [OyStatus] = []
                for (call, expected, run) in cases {
                    let status = run()
                    // A NULL buffer with a too-large length is wrong twice over: either code.
                    let acceptable: Set<OyStatus> = call.hasPrefix("read(NULL, OY") ? [.range, .invalid] : [expected]
                    guard acceptable.contains(status) else { return .failed("\(call) returned \(status); answer \(expected.name ?? "") (SDK/include/oyako/rng.h)") }
                    statuses.append(status)
                }
                return .passed("\(cases.count) bad reads refused", observation: Observation(["statuses": Observation.statuses(statuses)]))
            }
        },
    ]

    /// How long a read of a dry source may take: the class's 100 ms wait,
    /// with room for a loaded machine and a driver host's line.
    static let rngStarvedBound = 2.0

    /// Whether every byte reads returned is one the device gave, counting
    /// repeats (in any order: a driver may reorder the bytes of a word), or
    /// what is wrong. A driver that pads, zeroes or repeats bytes returns
    /// values more often than the device gave them.
    static func bytesNotGiven(_ bytes: [UInt8], by words: [UInt32]) -> String? {
        var given = [Int](repeating: 0, count: 256), returned = [Int](repeating: 0, count: 256)
        for word in words { for shift in stride(from: 0, to: 32, by: 8) { given[Int(word >> UInt32(shift) & 0xFF)] += 1 } }
        for byte in bytes { returned[Int(byte)] += 1 }
        let extra = (0..<256).map { max(0, returned[$0] - given[$0]) }
        let total = extra.reduce(0, +)
        guard total > 0, let worst = extra.indices.max(by: { extra[$0] < extra[$1] }) else { return nil }
        return String(format: "%d of the %d bytes reads returned were not among what the device gave (byte 0x%02X came back %d times; the device gave it %d times): "
            + "return only bytes read from the device, and no padding or leftovers in the buffer (SDK/CLASSES.md, Entropy)",
            total, bytes.count, worst, returned[worst], given[worst])
    }

    /// One read of 16 bytes on a thread of its own; nil when it had not
    /// returned within `seconds` (it is left to return when it will).
    static func starvedRead(_ binding: any EntropyDriverBinding, within seconds: Double) -> Result<Int, OyStatus>? {
        firstAnswer(within: seconds) { answer in
            Thread.detachNewThread {
                var buffer = [UInt8](repeating: 0, count: 16)
                answer(buffer.withUnsafeMutableBytes { binding.read(into: $0) })
            }
        }
    }

    /// A rig with the driver attached and its entropy source registered.
    static func withEntropySource(_ c: CheckContext, _ body: (Rig, EntropySource) throws -> CheckOutcome) throws -> CheckOutcome {
        try withDriver(c) { rig in
            guard let source = rig.kernel.entropy.sources.first else { return .failed("the driver registered no entropy source (register_rng in attach)") }
            return try body(rig, source)
        }
    }
}
