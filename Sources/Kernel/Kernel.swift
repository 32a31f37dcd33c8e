import DriverHost
import Foundation
import Logging
import Machine
import Synchronization

/// The operating system. The same code boots directly on the machine or as
/// the root partition of the hypervisor; a `Platform` hides which.
///
/// It owns the device manager (enumerate, match by the drivers' ID tables
/// read from their files, load, probe, attach, detach, surprise removal) and
/// the I/O subsystems drivers register with. It must never contain code that
/// asks which environment it is in.
public final class Kernel: @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `lock`.

    /// A driver file the Kernel knows, loaded or not.
    public struct DriverRecord: Sendable {
        public let name: String
        /// The class extension it provides ("oyako.block/1"...).
        public let deviceClass: String
        public let path: String
        /// Of the file actually mapped, once loaded (dladdr on the entry).
        public let mappedPath: String?
        public let sha256: String
        public let abiVersion: UInt32?
        public let devices: [String]
    }

    /// One device and what became of it at boot.
    public struct DeviceRecord: Sendable {
        public let location: String
        public let vendorID: UInt16
        public let deviceID: UInt16
        public let driver: String?
        public let outcome: String
    }

    /// Something boot could not do, one case per kind of failure.
    public enum BootProblem: Error, Sendable, CustomStringConvertible {
        /// A driver file that could not be read or loaded.
        case unloadable(DriverLoadError)
        /// A driver that matched a device failed to attach to it.
        case attachFailed(device: String, AttachError)
        /// Anything else that failed while binding a device.
        case bindFailed(device: String, String)

        public var description: String {
            switch self {
            case .unloadable(let error): error.description
            case .attachFailed(let device, let error): "\(device): \(error)"
            case .bindFailed(let device, let message): "\(device): \(message)"
            }
        }
    }

    public struct BootReport: Sendable {
        public let environment: String
        public let drivers: [DriverRecord]
        public let devices: [DeviceRecord]
        /// Problems a person should read: unloadable files, failed attaches.
        public let problems: [BootProblem]
    }

    public let platform: any Platform
    public let blockLayer: BlockLayer
    public let network = NetworkSubsystem()
    public let serial = SerialSubsystem()
    public let entropy = EntropySubsystem()
    public let log: KernelLog
    /// Restarts drivers that fail, under `supervisor.policy`.
    public let supervisor = DriverSupervisor()
    private let driverPaths: [String]
    private let environment: KernelEnvironment
    private let lock = NSLock()
    private var libraries: [String: DriverLibrary] = [:]
    private var instances: [BusAddress: DriverInstance] = [:]
    /// Drivers running in driver-host processes.
    private var isolated: [BusAddress: IsolatedDriver] = [:]
    /// When set (before boot), drivers of the classes driver hosts serve
    /// (`IsolatedDriver.servedClasses`) run in driver-host processes started
    /// from this executable (`oyako driver-host`); others stay in process.
    public var driverHostExecutable: String? {
        get { lock.withLock { hostExecutable } }
        set { lock.withLock { hostExecutable = newValue } }
    }
    private var hostExecutable: String?
    private var booted = false

    public init(platform: any Platform, driverPaths: [String], logLevel: LogLevel = .warning) {
        self.platform = platform
        self.driverPaths = driverPaths
        self.blockLayer = BlockLayer(memory: platform.memory)
        self.log = KernelLog(echoLevel: logLevel)
        self.environment = KernelEnvironment(name: platform.environmentName, subsystems: [blockLayer, network, serial, entropy], log: log)
        platform.bus.onSurpriseRemoval { [weak self] slot in self?.deviceRemoved(slot) }
        supervisor.kernel = self
    }

    public var environmentName: String { platform.environmentName }

    /// Enumerates the bus and binds a driver to every device one matches.
    public func boot() -> BootReport {
        lock.withLock { booted = true }
        supervisor.start()
        log.record(.info, "kernel", "booting on \(environmentName) with \(driverPaths.count) driver file(s)")
        var problems: [BootProblem] = []
        var files: [DriverFile] = []
        for path in driverPaths {
            do {
                files.append(try DriverFile.inspect(path: path))
            } catch {
                problems.append(.unloadable(error))
                log.record(.error, "kernel", error.description)
            }
        }
        var devices: [DeviceRecord] = []
        for slot in platform.bus.enumerate() {
            let identity = slot.device.identity
            let candidates = files.filter { $0.metadata.matches(vendorID: identity.vendorID, deviceID: identity.deviceID) }
            var outcome = "no driver"
            var boundDriver: String?
            for file in candidates {
                do {
                    if let executable = hostExecutable(for: file) {
                        boundDriver = try attachIsolated(file: file, to: slot, executable: executable).name
                        outcome = "attached in a driver host"
                    } else {
                        boundDriver = try attach(file: file, to: slot).library.name
                        outcome = "attached"
                    }
                    break
                } catch let error as AttachError where error.status == .notSupported {
                    outcome = "probe declined by \(file.metadata.name)"
                } catch {
                    outcome = "failed"
                    let device = slot.address.description
                    let problem: BootProblem = switch error {
                    case let error as AttachError: .attachFailed(device: device, error)
                    case let error as DriverLoadError: .unloadable(error)
                    default: .bindFailed(device: device, "\(error)")
                    }
                    problems.append(problem)
                    log.record(.error, "kernel", problem.description)
                }
            }
            devices.append(DeviceRecord(location: slot.address.description, vendorID: identity.vendorID, deviceID: identity.deviceID,
                                        driver: boundDriver, outcome: outcome))
        }
        return BootReport(environment: environmentName, drivers: driverRecords(files: files), devices: devices, problems: problems)
    }

    /// Loads `file` (once) and attaches it to the device in `slot`.
    @discardableResult
    public func attach(file: DriverFile, to slot: BusSlot) throws -> DriverInstance {
        try attach(try loadLibrary(file), to: slot)
    }

    /// The driver of the device at `address` is being restarted: its NIC,
    /// serial port or entropy source stays for the next driver (a disk
    /// holds by itself, `Disk.beginRecovery`).
    func parkDevices(at address: BusAddress, drainUntil: Date = .distantPast) {
        for subsystem in classSubsystems { subsystem.park(location: address.description, drainUntil: drainUntil) }
    }

    /// The restart is over; `failure`: it failed, and parked devices go.
    func unparkDevices(at address: BusAddress, failure: String?) {
        for subsystem in classSubsystems { subsystem.unpark(location: address.description, failure: failure, log: log) }
    }

    private var classSubsystems: [any ClassSubsystem] { [blockLayer, network, serial, entropy] }

    /// The device classes the OS has devices of now (what drivers registered).
    public var classesWithDevices: Set<String> { Set(classSubsystems.filter(\.hasDevices).map(\.deviceClass)) }

    /// The device classes whose drivers run in driver hosts when
    /// `driverHostExecutable` is set.
    public static var hostedClasses: Set<String> { IsolatedDriver.servedClasses }

    /// Has every driver host of this process's Kernels report its threads
    /// inside driver callbacks, as `oy_shim_report_hangs` does in process
    /// (hosts do when the verifier is on). Returns how many hosts were asked.
    @discardableResult
    public static func askDriverHostsForHangReports() -> Int { IsolatedDriver.askForHangReports() }

    /// The driver host to run `file` in, when drivers of its class go to one.
    private func hostExecutable(for file: DriverFile) -> String? {
        driverHostExecutable.flatMap { IsolatedDriver.servedClasses.contains(file.metadata.deviceClass) ? $0 : nil }
    }

    /// Starts a driver host for `file` and attaches it to the device in `slot`.
    @discardableResult
    func attachIsolated(file: DriverFile, to slot: BusSlot, executable: String) throws -> IsolatedDriver {
        let driver = try IsolatedDriver.start(file: file, slot: slot, kernel: self, executable: executable)
        lock.withLock { isolated[slot.address] = driver }
        log.record(.info, "kernel", "\(file.metadata.name) attached to \(slot.address) in driver host \(driver.pid)")
        return driver
    }

    /// The driver bound to `address` (in process or in a driver host), and
    /// how to attach it again: what the supervisor restarts.
    func restartable(at address: BusAddress, slot: BusSlot) -> (name: String, attachAgain: () throws -> Void)? {
        lock.withLock {
            if let library = instances[address]?.library {
                return (library.name, { try self.attach(library, to: slot) })
            }
            if let driver = isolated[address], let executable = hostExecutable {
                let file = driver.file
                return (file.metadata.name, { try self.attachIsolated(file: file, to: slot, executable: executable) })
            }
            return nil
        }
    }

    /// The process of the driver host serving `address`, if one does.
    public func driverHostProcess(at address: BusAddress) -> pid_t? { lock.withLock { isolated[address]?.pid } }

    /// The drivers running in driver hosts, by device.
    var hostedDrivers: [BusAddress: IsolatedDriver] { lock.withLock { isolated } }

    /// The driver a driver host runs for `address`: its file and process.
    public func hostedDriver(at address: BusAddress) -> (file: DriverFile, process: pid_t)? {
        lock.withLock { isolated[address].map { ($0.file, $0.pid) } }
    }

    /// Loads a driver file (once per file) without attaching it.
    public func loadDriver(path: String) throws -> DriverLibrary {
        try loadLibrary(try DriverFile.inspect(path: path))
    }

    /// Probes and attaches a loaded driver to the device in `slot`.
    @discardableResult
    public func attach(_ library: DriverLibrary, to slot: BusSlot) throws -> DriverInstance {
        let device = KernelDevice(slot: slot, platform: platform, log: log)
        let probe = library.probe(device)
        guard probe.isOK else {
            throw AttachError(driver: library.name, device: slot.address.description, status: probe, leaked: [])
        }
        let instance = try library.attach(device)
        lock.withLock { instances[slot.address] = instance }
        log.record(.info, "kernel", "\(library.name) attached to \(slot.address) (\(library.mappedPath))")
        return instance
    }

    private func loadLibrary(_ file: DriverFile) throws -> DriverLibrary {
        if let loaded = lock.withLock({ libraries[file.resolvedPath] }) { return loaded }
        let library = try DriverLibrary.load(file: file, environment: environment)
        lock.withLock { libraries[file.resolvedPath] = library }
        log.record(.info, "kernel", "loaded \(library.name) \(library.metadata.version) (ABI \(library.abiVersion)) from \(library.mappedPath)")
        return library
    }

    /// A HostDevice for `slot` as this OS presents it (the suite probes with it).
    public func hostDevice(for slot: BusSlot) -> any HostDevice { KernelDevice(slot: slot, platform: platform, log: log) }

    /// Unloads a driver the kernel loaded (after its instances detached).
    public func unload(_ library: DriverLibrary) -> DriverLibrary.UnloadReport {
        lock.withLock { libraries = libraries.filter { $0.value !== library } }
        return library.unload()
    }

    /// Calls control method `method` (nil: lists them) of the driver that
    /// serves the device at `address`, in this process or in its driver
    /// host, as `oyako driver call` prints the answer. In a driver host the
    /// call may take `timeout` seconds; in process it runs to its end.
    public func controlAnswer(at address: BusAddress, method: String?, arguments: [String], timeout: Double = 10) throws(ControlCallError) -> String {
        if let hosted = lock.withLock({ isolated[address] }) {
            return try hosted.controlAnswer(method, arguments: arguments, timeout: timeout)
        }
        guard let instance = instance(at: address) else { throw ControlCallError(message: "no driver serves \(address)") }
        return try instance.controlAnswer(method, arguments: arguments)
    }

    /// The driver bound to the device at `address`.
    public func instance(at address: BusAddress) -> DriverInstance? {
        lock.withLock { instances[address] }
    }

    public var loadedDrivers: [DriverLibrary] { lock.withLock { Array(libraries.values) } }

    /// Detaches the driver from one device (the device stays).
    @discardableResult
    public func detach(_ address: BusAddress) -> DriverInstance.DetachReport? {
        if let driver = lock.withLock({ isolated.removeValue(forKey: address) }) {
            return driver.detach()
        }
        guard let instance = lock.withLock({ instances.removeValue(forKey: address) }) else { return nil }
        return instance.detach()
    }

    // MARK: Loading and unloading at runtime

    /// Loads a driver file while the system runs and attaches it to every
    /// device it matches that has no driver; returns those devices. A device
    /// whose attach fails is reported in the thrown error after the others
    /// were tried.
    @discardableResult
    public func loadAndAttach(path: String) throws -> [String] {
        try loadAndAttach(try DriverFile.inspect(path: path))
    }

    /// The same, for a file already read.
    @discardableResult
    public func loadAndAttach(_ file: DriverFile) throws -> [String] {
        if let other = runningBuild(named: file.metadata.name), other.sha256 != file.sha256 {
            // Two builds under one name would make every later unload or replace by name a guess.
            throw LoadConflict(name: file.metadata.name, running: other, new: file)
        }
        // Disk drivers go to driver hosts when the Kernel runs them there.
        let hosted = hostExecutable(for: file)
        let library = hosted == nil ? try loadLibrary(file) : nil
        var attached: [String] = [], failures: [String] = []
        for slot in platform.bus.enumerate() where instance(at: slot.address) == nil && driverHostProcess(at: slot.address) == nil && !slot.isRemoved {
            let identity = slot.device.identity
            guard file.metadata.matches(vendorID: identity.vendorID, deviceID: identity.deviceID) else { continue }
            do {
                if let library { try attach(library, to: slot) } else if let hosted { try attachIsolated(file: file, to: slot, executable: hosted) }
                attached.append(slot.address.description)
            } catch {
                failures.append("\(slot.address): \(error)")
            }
        }
        if !failures.isEmpty { throw RuntimeLoadError(driver: file.metadata.name, attached: attached, failures: failures) }
        return attached
    }

    /// A build of the driver named `name` this Kernel runs, in process or
    /// in a driver host: its version and SHA-256.
    public func runningBuild(named name: String) -> (version: String, sha256: String)? {
        lock.withLock {
            if let library = libraries.values.first(where: { $0.name == name }) { return (library.metadata.version, library.sha256) }
            return isolated.values.first { $0.name == name }.map { ($0.file.metadata.version, $0.file.sha256) }
        }
    }

    /// `driver load` of a different build of a driver that runs already.
    public struct LoadConflict: Error, CustomStringConvertible {
        public let name: String
        public let running: (version: String, sha256: String)
        public let new: DriverFile
        public var description: String {
            "\(name) \(running.version) (sha256 \(running.sha256.prefix(16))) runs already; \(new.path) is another build of it "
                + "(\(new.metadata.version), sha256 \(new.sha256.prefix(16))): `oyako driver replace \(name) \(new.path)` swaps builds"
        }
    }

    public struct RuntimeLoadError: Error, CustomStringConvertible {
        public let driver: String
        public let attached: [String]
        public let failures: [String]
        public var description: String {
            "\(driver) did not attach to \(failures.joined(separator: "; "))" + (attached.isEmpty ? "" : " (attached to \(attached.joined(separator: ", ")))")
        }
    }

    /// Detaches the loaded driver named `name` from every device it serves
    /// and unloads it; returns those devices, or nil when no driver of that
    /// name is loaded. What the devices served goes away with it (a disk's
    /// callers get device-gone, children's offers are rescinded).
    public func unloadDriver(named name: String) -> [String]? {
        let hosted = lock.withLock { isolated.filter { $0.value.name == name }.map(\.key) }.sorted()
        if !hosted.isEmpty {
            for address in hosted { detach(address) }
            log.record(.info, "kernel", "stopped the driver hosts of \(name) at \(hosted.map(\.description).joined(separator: ", "))")
            return hosted.map(\.description)
        }
        guard let library = lock.withLock({ libraries.values.first { $0.name == name } }) else { return nil }
        let devices = lock.withLock { instances.filter { $0.value.library === library }.map(\.key) }.sorted()
        for address in devices { detach(address) }
        _ = unload(library)
        log.record(.info, "kernel", "unloaded \(name)" + (devices.isEmpty ? "" : " from \(devices.map(\.description).joined(separator: ", "))"))
        return devices.map(\.description)
    }

    /// The devices the loaded driver named `name` serves now.
    public func devices(servedBy name: String) -> [BusAddress] {
        lock.withLock { instances.filter { $0.value.library.name == name }.map(\.key) }.sorted()
    }

    // MARK: Live replacement

    /// What a live replacement did.
    public struct Replacement: Sendable {
        public let device: String
        public let old: String
        public let new: String
        /// From holding new requests to handing them to the new driver.
        public let pause: Duration
        /// Requests that waited in software meanwhile (none lost).
        public let heldRequests: Int
    }

    /// Why a live replacement did not happen (the device is then served as before, when it can be).
    public enum ReplaceError: Error, CustomStringConvertible {
        case noDriver(String)
        case drainTimedOut(String)
        case attachFailed(String, reason: String, restored: Bool)

        public var description: String {
            switch self {
            case .noDriver(let device): "no driver is bound to \(device)"
            case .drainTimedOut(let device): "the driver of \(device) did not complete what it had accepted in time; it stays bound"
            case .attachFailed(let device, let reason, let restored):
                "the new driver did not attach to \(device): \(reason); " + (restored ? "the old driver serves it again" : "the old driver could not be re-attached either, and the disk is gone")
            }
        }
    }

    /// Swaps the driver of the disk at `address` for `library` while the OS
    /// (and anything above its disk: VSPs, vhost-user back-ends) keeps
    /// submitting: new requests are held, the old driver completes what it
    /// accepted and detaches, the new one attaches and registers the same
    /// geometry, and the held requests go to it. Nothing is lost; if the new
    /// driver fails to attach, the old one is attached again.
    public func replaceDriver(at address: BusAddress, with library: DriverLibrary, drainTimeout: Double = 10) throws(ReplaceError) -> Replacement {
        guard let old = instance(at: address) else { throw .noDriver(address.description) }
        return try swapDriver(at: address, old: old.library.name, new: library.name, drainTimeout: drainTimeout) { slot in
            if let instance = lock.withLock({ instances.removeValue(forKey: address) }) { instance.detach() }
        } attachNew: { slot in
            try attach(library, to: slot)
        } attachOld: { slot in
            try attach(old.library, to: slot)
        }
    }

    /// Swaps the driver-host process serving the disk at `address` for one
    /// running the driver file at `path`, live, as `replaceDriver(at:with:)`
    /// does in process.
    public func replaceDriver(at address: BusAddress, withFile path: String, drainTimeout: Double = 10) throws(ReplaceError) -> Replacement {
        guard let old = lock.withLock({ isolated[address] }), let executable = driverHostExecutable else { throw .noDriver(address.description) }
        let file: DriverFile
        do {
            file = try DriverFile.inspect(path: path)
        } catch {
            throw .attachFailed(address.description, reason: "\(error)", restored: true)
        }
        return try swapDriver(at: address, old: old.name, new: file.metadata.name, drainTimeout: drainTimeout) { slot in
            if let driver = lock.withLock({ isolated.removeValue(forKey: address) }) { driver.detach() }
        } attachNew: { slot in
            try attachIsolated(file: file, to: slot, executable: executable)
        } attachOld: { slot in
            try attachIsolated(file: old.file, to: slot, executable: executable)
        }
    }

    /// The live swap both kinds of replacement share: hold the disk, drain
    /// and detach the old driver, attach the new one (the old one again if
    /// the new fails), hand over what was held.
    private func swapDriver(at address: BusAddress, old: String, new: String, drainTimeout: Double, detachOld: (BusSlot) -> Void,
                            attachNew: (BusSlot) throws -> Void, attachOld: (BusSlot) throws -> Void) throws(ReplaceError) -> Replacement {
        let device = address.description
        guard let slot = platform.bus.enumerate().first(where: { $0.address == address }) else { throw .noDriver(device) }
        guard let disk = blockLayer.disk(at: device) else {
            return try swapParked(slot, old: old, new: new, drainTimeout: drainTimeout, detachOld: detachOld, attachNew: attachNew, attachOld: attachOld)
        }
        let started = ContinuousClock.now
        guard disk.beginReplacement(deadline: Date(timeIntervalSinceNow: drainTimeout)) else {
            disk.endReplacement()
            throw .drainTimedOut(device)
        }
        let previous = disk.driver
        detachOld(slot)
        /// Attaches with `attach`; nil once it has taken the disk over.
        func takeOver(_ attach: (BusSlot) throws -> Void) -> String? {
            do {
                try attach(slot)
                if disk.driver !== previous { return nil }
                detachOld(slot)
                return "it registered no disk of the same geometry"
            } catch {
                return "\(error)"
            }
        }
        if let failure = takeOver(attachNew) {
            let restored = takeOver(attachOld) == nil
            if !restored { _ = blockLayer.remove(disk, reason: "\(device) has no driver: \(new) failed to attach (\(failure)) and \(old) could not be restored") }
            disk.endReplacement()
            throw .attachFailed(device, reason: failure, restored: restored)
        }
        // Everything that arrived while the disk had no driver waited for this one.
        let held = disk.heldRequests
        disk.endReplacement()
        let pause = ContinuousClock.now - started
        log.record(.info, "kernel", "\(device): \(old) replaced by \(new) in \(pause), \(held) request(s) held")
        return Replacement(device: device, old: old, new: new, pause: pause, heldRequests: held)
    }

    /// The swap for a NIC, serial port or entropy source: its OS device is
    /// parked (frames wait, the old driver's drain), the old driver detached
    /// and the new one attached, which takes the device over.
    private func swapParked(_ slot: BusSlot, old: String, new: String, drainTimeout: Double, detachOld: (BusSlot) -> Void,
                            attachNew: (BusSlot) throws -> Void, attachOld: (BusSlot) throws -> Void) throws(ReplaceError) -> Replacement {
        let device = slot.address.description
        let started = ContinuousClock.now
        parkDevices(at: slot.address, drainUntil: Date(timeIntervalSinceNow: drainTimeout))
        detachOld(slot)
        func failure(_ attach: (BusSlot) throws -> Void) -> String? {
            do {
                try attach(slot)
                return nil
            } catch {
                return "\(error)"
            }
        }
        if let failed = failure(attachNew) {
            let restored = failure(attachOld) == nil
            unparkDevices(at: slot.address, failure: restored ? nil : "\(device) has no driver: \(new) failed to attach (\(failed)) and \(old) could not be restored")
            throw .attachFailed(device, reason: failed, restored: restored)
        }
        unparkDevices(at: slot.address, failure: nil)
        let pause = ContinuousClock.now - started
        log.record(.info, "kernel", "\(device): \(old) replaced by \(new) in \(pause)")
        return Replacement(device: device, old: old, new: new, pause: pause, heldRequests: 0)
    }

    /// Detaches every device and unloads every driver.
    public func shutdown() {
        supervisor.stop()
        let (bound, loaded, hosts) = lock.withLock { () -> ([DriverInstance], [DriverLibrary], [IsolatedDriver]) in
            defer {
                instances.removeAll()
                libraries.removeAll()
                isolated.removeAll()
            }
            return (Array(instances.values), Array(libraries.values), Array(isolated.values))
        }
        for host in hosts { host.detach() }
        for instance in bound { instance.detach() }
        for library in loaded { library.unload() }
        log.record(.info, "kernel", "shut down")
    }

    private func deviceRemoved(_ slot: BusSlot) {
        if let driver = lock.withLock({ isolated.removeValue(forKey: slot.address) }) {
            log.record(.warning, "kernel", "\(slot.address) surprise-removed; its driver host is ended")
            driver.end()
            return
        }
        guard let instance = lock.withLock({ instances.removeValue(forKey: slot.address) }) else { return }
        log.record(.warning, "kernel", "\(slot.address) surprise-removed; \(instance.library.name) told to fail outstanding I/O")
        let report = instance.surpriseRemove()
        if !report.leaked.isEmpty {
            log.record(.warning, "kernel", "\(instance.library.name) left \(report.leaked.joined(separator: ", ")) after removal; reclaimed")
        }
    }

    private func driverRecords(files: [DriverFile]) -> [DriverRecord] {
        let (loaded, bound, hosted) = lock.withLock { (libraries, instances, isolated) }
        return files.map { file in
            let library = loaded[file.resolvedPath]
            let devices = (bound.filter { library != nil && $0.value.library === library }.map { $0.key.description }
                + hosted.filter { $0.value.file.resolvedPath == file.resolvedPath }.map { $0.key.description }).sorted()
            return DriverRecord(name: file.metadata.name, deviceClass: file.metadata.deviceClass, path: file.path, mappedPath: library?.mappedPath,
                                sha256: library?.sha256 ?? file.sha256, abiVersion: library?.abiVersion, devices: devices)
        }
    }
}

/// The Kernel's side of the driver host: logs, and a subsystem per device
/// class that takes what drivers register.
final class KernelEnvironment: HostEnvironment {
    let name: String
    let log: KernelLog
    private let subsystems: [String: any ClassSubsystem]

    init(name: String, subsystems: [any ClassSubsystem], log: KernelLog) {
        self.name = name
        self.log = log
        self.subsystems = Dictionary(uniqueKeysWithValues: subsystems.map { ($0.deviceClass, $0) })
    }

    func log(level: LogLevel, driver: String, device: String?, message: String) {
        log.record(level, device.map { "\(driver)@\($0)" } ?? driver, message)
    }

    func registered(_ registration: ClassRegistration, device: any HostDevice) throws(OyStatus) {
        guard let subsystem = subsystems[registration.deviceClass] else {
            log.record(.warning, "kernel", "\(registration.label) registered a \(registration.deviceClass) object; this OS has no subsystem for it")
            throw .notSupported
        }
        try subsystem.adopt(registration, log: log)
    }

    func unregistered(_ registration: ClassRegistration) {
        subsystems[registration.deviceClass]?.release(registration, log: log)
    }
}

/// The kernel's log: kept in memory (the demo and tests read it) and echoed
/// through swift-log from `echoLevel` up.
public final class KernelLog: Sendable {
    public struct Entry: Sendable {
        public let level: LogLevel
        public let source: String
        public let message: String
    }

    private let entries = Mutex<[Entry]>([])
    private let console = Mutex<SerialPort?>(nil)
    private let echoLevel: LogLevel
    private let logger = Logger(label: "oyako.kernel")

    init(echoLevel: LogLevel) { self.echoLevel = echoLevel }

    /// From now on, lines at info level and above also go out on `port`.
    func attachConsole(_ port: SerialPort?) {
        console.withLock { $0 = port }
    }

    func record(_ level: LogLevel, _ source: String, _ message: String) {
        entries.withLock {
            $0.append(Entry(level: level, source: source, message: message))
            if $0.count > 4096 { $0.removeFirst(1024) }
        }
        // Lines logged from inside a serial driver's write (on a port's
        // transmit queue) are kept but not written to the console: writing
        // them would feed the console driver its own output (Linux drops
        // console recursion the same way). Other lines are queued, never
        // written on the logging thread.
        if level <= .info, !SerialPort.onTransmitQueue, let port = console.withLock({ $0 }) {
            port.writeConsole("[\(level)] [\(source)] \(message)\r\n")
        }
        guard level <= echoLevel else { return }
        switch level {
        case .error: logger.error("[\(source)] \(message)")
        case .warning: logger.warning("[\(source)] \(message)")
        case .info: logger.info("[\(source)] \(message)")
        case .debug: logger.debug("[\(source)] \(message)")
        }
    }

    public var all: [Entry] { entries.withLock { $0 } }
}
