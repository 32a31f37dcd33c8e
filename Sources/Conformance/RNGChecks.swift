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
                var returned = 0
                for size in [16, 256, 1000, 2824] {
                    do { returned += try source.read(size).count } catch { return .failed("a read of \(size) bytes failed: \(error)") }
                }
                let given = (device.wordsDelivered - before) * 4
                guard given >= returned else {
                    return .failed("reads returned \(returned) bytes of entropy while the device gave \(given); pass on what the device gives and make none "
                        + "of your own (a generator stretching a few device words is not entropy: whoever learns its state predicts every key made from it)")
                }
                return .passed("\(returned) bytes returned, \(given) given by the device", observation: Observation(["returned": "\(returned)"]))
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

    /// A rig with the driver attached and its entropy source registered.
    static func withEntropySource(_ c: CheckContext, _ body: (Rig, EntropySource) throws -> CheckOutcome) throws -> CheckOutcome {
        try withDriver(c) { rig in
            guard let source = rig.kernel.entropy.sources.first else { return .failed("the driver registered no entropy source (register_rng in attach)") }
            return try body(rig, source)
        }
    }
}
