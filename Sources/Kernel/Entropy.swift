import DriverHost
import Foundation
import Synchronization

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
public protocol EntropyDriverBinding: DriverBinding {
    /// Up to `buffer.count` bytes (at most `RegisteredRNG.maxRead`) from the
    /// driver; how many it produced.
    func read(into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, OyStatus>
}

extension RegisteredRNG: EntropyDriverBinding {}

/// One entropy source of the OS ("hwrng0"), through its driver. While its
/// driver restarts, reads wait for the next one.
public final class EntropySource: ParkableDevice {
    public let name: String
    public let location: String
    private let state: Mutex<(binding: any EntropyDriverBinding, awaitingDriver: Bool)>

    init(name: String, registered: any EntropyDriverBinding) {
        self.name = name
        self.location = registered.location
        state = Mutex((registered, false))
    }

    /// The driver serving it now.
    public var registered: any EntropyDriverBinding { state.withLock { $0.binding } }
    var awaitsDriver: Bool { state.withLock { $0.awaitingDriver } }
    /// Reads wait for the restarted driver (nothing of the old one's to drain).
    func awaitDriver(drainUntil: Date) { state.withLock { $0.awaitingDriver = true } }
    func rebind(_ binding: any EntropyDriverBinding) { state.withLock { $0 = (binding, false) } }

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
            let (driver, restarting) = state.withLock { ($0.binding, $0.awaitingDriver) }
            let result = out.withUnsafeMutableBytes { driver.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[filled..<(filled + want)])) }
            switch result {
            case .failure(.deviceGone) where restarting || awaitsDriver:
                // Its driver is being restarted: the next one answers.
                if Date() > deadline { throw .starved(source: name, produced: filled, wanted: count) }
                usleep(2000)
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
    private let devices = ParkableDevices<EntropySource>(prefix: "hwrng")
    let deviceClass = RegisteredRNG.classID

    public var sources: [EntropySource] { devices.all }
    var hasDevices: Bool { !devices.isEmpty }

    /// `count` bytes from the first source, as /dev/random gives them.
    public func read(_ count: Int, timeout: Double = 5) throws(EntropyError) -> [UInt8] {
        guard let source = sources.first else { throw .noSource }
        return try source.read(count, timeout: timeout)
    }

    func adopt(_ registration: ClassRegistration, log: KernelLog) throws(OyStatus) {
        guard let registered = registration as? RegisteredRNG else { throw .invalid }
        adopt(source: registered, log: log)
    }

    /// Adds a source, in process or served by a driver host; a restarted
    /// driver takes its device's source over.
    func adopt(source registered: any EntropyDriverBinding, log: KernelLog) {
        if let source = devices.awaitingDriver(at: registered.location) {
            source.rebind(registered)
            log.record(.info, "entropy", "\(source.name): now served by \(registered.label)")
            return
        }
        let source = devices.add { EntropySource(name: $0, registered: registered) }
        log.record(.info, "entropy", "\(source.name): entropy source via \(registered.label)")
    }

    func release(_ registration: ClassRegistration, log: KernelLog) {
        guard let source = registration as? RegisteredRNG else { return }
        release(source: source)
    }

    func release(source: any EntropyDriverBinding) {
        // A parked source stays for the restarted driver.
        _ = devices.release { $0.registered === source }
    }

    func park(location: String, drainUntil: Date) { devices.park(location, drainUntil: drainUntil) }

    func unpark(location: String, failure: String?, log: KernelLog) {
        // No driver took it over: it goes.
        if let gone = devices.unpark(location) {
            log.record(.warning, "entropy", "\(gone.name) is gone: \(failure ?? "its driver did not come back")")
        }
    }
}
