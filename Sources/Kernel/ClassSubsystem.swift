import DriverHost
import Synchronization

/// The Kernel's side of one device class: it takes what drivers register
/// through the class ("oyako.block/1" → a `Disk`) and presents it to the
/// rest of the OS. One type per class (BlockLayer, NetworkSubsystem,
/// SerialSubsystem, EntropySubsystem); the Kernel routes registrations by
/// class ID and switches on nothing else.
protocol ClassSubsystem: Sendable {
    /// The extension ID of the class this subsystem serves.
    var deviceClass: String { get }
    /// A driver registered `registration` (of this class). Throw to refuse.
    func adopt(_ registration: ClassRegistration, log: KernelLog) throws(OyStatus)
    /// It is going away: fail what is queued for it, and forget it.
    func release(_ registration: ClassRegistration, log: KernelLog)
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
