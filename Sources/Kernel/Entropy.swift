import DriverHost
import Foundation

/// Why the OS could not read entropy.
public enum EntropyError: Error, Equatable, CustomStringConvertible, Sendable {
    /// No driver registered an entropy source.
    case noSource
    /// The driver failed the read.
    case device(source: String, OyStatus)
    /// The source produced fewer bytes than asked before the deadline.
    case starved(source: String, produced: Int, wanted: Int)

    public var description: String {
        switch self {
        case .noSource: "no entropy source is registered (no driver for an rng device)"
        case .device(let source, let status): "\(source): read failed: \(status)"
        case .starved(let source, let produced, let wanted): "\(source): produced \(produced) of \(wanted) bytes before the deadline"
        }
    }
}

/// What serves an entropy source: the driver's registration in process
/// (`RegisteredRNG`), or its driver-host process's end of the line.
public protocol EntropyDriverBinding: AnyObject, Sendable {
    /// Which driver and device, for logs.
    var label: String { get }
    /// Up to `buffer.count` bytes (at most `RegisteredRNG.maxRead`) from the
    /// driver; how many it produced.
    func read(into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, OyStatus>
}

extension RegisteredRNG: EntropyDriverBinding {}

/// One entropy source of the OS ("hwrng0"), through its driver.
public final class EntropySource: Sendable {
    public let name: String
    public let registered: any EntropyDriverBinding

    init(name: String, registered: any EntropyDriverBinding) {
        self.name = name
        self.registered = registered
    }

    /// Which driver and device serve it.
    public var driverLabel: String { registered.label }

    /// Reads exactly `count` bytes, asking the driver as often as it takes
    /// (a source may produce less than asked per call), until `timeout`.
    public func read(_ count: Int, timeout: Double = 5) throws(EntropyError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var filled = 0
        let deadline = Date(timeIntervalSinceNow: timeout)
        while filled < count {
            let want = min(count - filled, RegisteredRNG.maxRead)
            let result = out.withUnsafeMutableBytes { registered.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[filled..<(filled + want)])) }
            switch result {
            case .failure(let status): throw .device(source: name, status)
            case .success(let produced): filled += produced
            }
            if filled < count && Date() > deadline { throw .starved(source: name, produced: filled, wanted: count) }
        }
        return out
    }
}

/// The OS's entropy sources; `read` is its /dev/random, served by the first.
public final class EntropySubsystem: ClassSubsystem {
    private let named = NamedDevices<EntropySource>(prefix: "hwrng")
    let deviceClass = RegisteredRNG.classID

    public var sources: [EntropySource] { named.all }

    /// `count` bytes from the first source, as /dev/random gives them.
    public func read(_ count: Int, timeout: Double = 5) throws(EntropyError) -> [UInt8] {
        guard let source = sources.first else { throw .noSource }
        return try source.read(count, timeout: timeout)
    }

    func adopt(_ registration: ClassRegistration, log: KernelLog) throws(OyStatus) {
        guard let registered = registration as? RegisteredRNG else { throw .invalid }
        adopt(source: registered, log: log)
    }

    /// Adds a source, in process or served by a driver host.
    func adopt(source registered: any EntropyDriverBinding, log: KernelLog) {
        let source = named.add { EntropySource(name: $0, registered: registered) }
        log.record(.info, "entropy", "\(source.name): entropy source via \(registered.label)")
    }

    func release(_ registration: ClassRegistration, log: KernelLog) {
        _ = named.remove { $0.registered === registration }
    }

    func release(source: any EntropyDriverBinding) {
        _ = named.remove { $0.registered === source }
    }
}
