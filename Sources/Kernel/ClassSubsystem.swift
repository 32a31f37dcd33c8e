import DriverHost
import Foundation
import Synchronization

/// The Kernel's side of one device class: it takes what drivers register
/// through the class ("oyako.block/1" → a `Disk`) and presents it to the
/// rest of the OS. One type per class (BlockLayer, NetworkSubsystem,
/// SerialSubsystem, EntropySubsystem); the Kernel routes registrations by
/// class ID and switches on nothing else.
protocol ClassSubsystem: Sendable {
    /// The extension ID of the class this subsystem serves.
    var deviceClass: String { get }
    /// Whether the OS has any device of this class now.
    var hasDevices: Bool { get }
    /// A driver registered `registration` (of this class). Throw to refuse.
    func adopt(_ registration: ClassRegistration, log: KernelLog) throws(OyStatus)
    /// It is going away: fail what is queued for it, and forget it.
    func release(_ registration: ClassRegistration, log: KernelLog)
    /// The driver of the device at `location` is being restarted or
    /// replaced: keep the OS's device (its name, its users) for the driver
    /// that registers the same device next, holding what is sent to it
    /// meanwhile; what the driver has is let finish until `drainUntil`.
    func park(location: String, drainUntil: Date)
    /// The restart is over; `failure` when it failed: a device no driver
    /// took over goes (what waits for it fails).
    func unpark(location: String, failure: String?, log: KernelLog)
}

/// Whoever serves one of the OS's devices now: a driver's class object in
/// the OS's own process, or one in a driver-host process. Each class's
/// binding (`DiskDriverBinding`, `NetDriverBinding`, ...) is one, so logs
/// and reports name the driver and device the same way for every class.
public protocol DriverBinding: AnyObject, Sendable {
    /// Driver name and device, e.g. "nvmelite@00:01.0".
    var label: String { get }
    /// The device's bus location ("00:01.0").
    var location: String { get }
    /// The driver's name and version, and the SHA-256 of its file.
    var driverName: String { get }
    var driverVersion: String { get }
    var driverSHA256: String { get }
}

/// A driver's class object in the OS's own process names its driver through
/// the library that registered it.
extension ClassRegistration {
    public var location: String { binding.device.info.location }
    public var driverName: String { binding.library.name }
    public var driverVersion: String { binding.library.metadata.version }
    public var driverSHA256: String { binding.library.sha256 }
}

/// Which hosted driver serves a device: a driver-host binding's identity.
struct HostedOrigin: Sendable {
    let label: String
    let location: String
    let file: DriverFile
}

/// A binding whose driver runs in a driver host: it names its driver by
/// the file the host runs.
protocol HostedBinding: DriverBinding {
    var origin: HostedOrigin { get }
}

extension HostedBinding {
    var label: String { origin.label }
    var location: String { origin.location }
    var driverName: String { origin.file.metadata.name }
    var driverVersion: String { origin.file.metadata.version }
    var driverSHA256: String { origin.file.sha256 }
}

/// A device of the OS that outlives its driver's restarts: while the driver
/// is restarted or replaced, the device (its name, its users) waits for the
/// next one.
protocol ParkableDevice: AnyObject, Sendable {
    /// Its bus location ("00:03.0").
    var location: String { get }
    var awaitsDriver: Bool { get }
    /// Wait for the next driver, holding what is sent meanwhile; what the
    /// old driver has is let finish until `drainUntil`.
    func awaitDriver(drainUntil: Date)
}

/// One class's devices, named in registration order, each kept for the
/// driver that registers the same device after a restart. What the entropy,
/// network and serial subsystems share; a subsystem adds what its class
/// needs (the console, a receive filter) around it.
final class ParkableDevices<Device: ParkableDevice>: Sendable {
    private let named: NamedDevices<Device>
    /// The locations whose devices are parked while their drivers restart.
    private let parked = Mutex(Set<String>())

    init(prefix: String) { named = NamedDevices(prefix: prefix) }

    var all: [Device] { named.all }
    var isEmpty: Bool { named.all.isEmpty }

    /// The parked device at `location` that a restarted driver takes over, if any.
    func awaitingDriver(at location: String) -> Device? {
        guard isParked(location) else { return nil }
        return all.first { $0.location == location && $0.awaitsDriver }
    }

    /// Makes the next device from its name and adds it.
    func add(_ make: (String) -> Device) -> Device { named.add(make) }

    /// Removes the first device `matches` accepts, unless it is parked for
    /// its restarted driver.
    func release(where matches: (Device) -> Bool) -> Device? {
        named.remove { matches($0) && !isParked($0.location) }
    }

    /// The driver at `location` is being restarted or replaced.
    func park(_ location: String, drainUntil: Date) {
        _ = parked.withLock { $0.insert(location) }
        for device in all where device.location == location { device.awaitDriver(drainUntil: drainUntil) }
    }

    /// The restart is over: the device there that no driver took over is
    /// removed and returned (what waits for it is the caller's to fail).
    func unpark(_ location: String) -> Device? {
        _ = parked.withLock { $0.remove(location) }
        return named.remove { $0.location == location && $0.awaitsDriver }
    }

    private func isParked(_ location: String) -> Bool { parked.withLock { $0.contains(location) } }
}

/// The named devices of one subsystem ("disk0", "eth1"...), in the order
/// they were registered. Names are never reused while the OS runs.
final class NamedDevices<Device: AnyObject & Sendable>: Sendable {
    private struct State {
        var devices: [Device] = []
        var next = 0
    }

    private let prefix: String
    private let state = Mutex(State())

    init(prefix: String) { self.prefix = prefix }

    var all: [Device] { state.withLock { $0.devices } }

    /// Makes the next device from its name and adds it.
    func add(_ make: (String) -> Device) -> Device {
        state.withLock { s in
            let device = make("\(prefix)\(s.next)")
            s.next += 1
            s.devices.append(device)
            return device
        }
    }

    /// Removes and returns the first device `matches` accepts.
    func remove(where matches: (Device) -> Bool) -> Device? {
        state.withLock { s in
            guard let index = s.devices.firstIndex(where: matches) else { return nil }
            return s.devices.remove(at: index)
        }
    }
}
