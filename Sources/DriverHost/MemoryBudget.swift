import Foundation
import Synchronization

/// How much of one kind of memory a driver holds, against the most it may
/// hold. A request past the limit is refused (the driver sees out of
/// memory), so a driver that leaks runs itself dry instead of the OS and
/// the other drivers. A refusal is worth saying once, not once per call:
/// `take` says to report the first refusal since the driver last held at
/// most half its limit.
public final class MemoryBudget: Sendable {
    private struct State {
        var limit: Int
        var held = 0
        var reported = false
    }

    private let state: Mutex<State>

    public init(limit: Int) { state = Mutex(State(limit: limit)) }

    /// The most the driver may hold, in bytes.
    public var limit: Int {
        get { state.withLock { $0.limit } }
        set { state.withLock { $0.limit = newValue } }
    }

    /// What it holds now, in bytes.
    public var held: Int { state.withLock { $0.held } }

    /// What a request for more found.
    public enum Outcome: Equatable, Sendable {
        case taken
        /// Refused; `report`: the first refusal since the driver was last
        /// well under its limit. `held` is what it holds.
        case refused(held: Int, report: Bool)
    }

    /// Takes `bytes` more, if they fit under the limit.
    public func take(_ bytes: Int) -> Outcome {
        state.withLock { s in
            guard bytes <= s.limit - s.held else {
                defer { s.reported = true }
                return .refused(held: s.held, report: !s.reported)
            }
            s.held += bytes
            return .taken
        }
    }

    /// Gives back `bytes` taken before.
    public func give(_ bytes: Int) {
        state.withLock { s in
            s.held = max(0, s.held - bytes)
            if s.held <= s.limit / 2 { s.reported = false }
        }
    }

    /// "1.5 GiB", "24 MiB", "100 bytes": a size as a person reads it.
    public static func describe(_ bytes: Int) -> String {
        let units: [(Int, String)] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        guard let (size, name) = units.first(where: { bytes >= $0.0 }) else { return "\(bytes) bytes" }
        let value = Double(bytes) / Double(size)
        return value >= 10 || value == value.rounded() ? "\(Int(value.rounded())) \(name)" : String(format: "%.1f %@", value, name)
    }
}
