import CSystemShims
import DriverHost
import Foundation
import Glibc
import Kernel
import Machine

/// One request to a running system's control socket: a line of JSON.
public struct ControlRequest: Codable, Sendable, Equatable {
    public enum Command: String, Codable, Sendable {
        /// The loaded drivers and the devices they serve.
        case list
        /// Load `file` and attach it to the devices it matches that have no driver.
        case load
        /// Detach the driver named `driver` from its devices and unload it.
        case unload
        /// Swap the driver named `driver` for the build in `file` on every
        /// disk it serves, live.
        case replace
        /// End the running system.
        case shutdown
        /// Call control method `method` (absent: list them) of the driver
        /// `driver` ("name" for every device it serves, "name@00:01.0" for
        /// one) with `arguments`, each call taking at most `timeout` seconds
        /// in a driver host.
        case call
    }

    public var command: Command
    public var driver: String?
    public var file: String?
    public var method: String?
    public var arguments: [String]?
    public var timeout: Double?

    public init(_ command: Command, driver: String? = nil, file: String? = nil) {
        self.command = command
        self.driver = driver
        self.file = file
    }

    /// A `call` request.
    public static func call(_ driver: String, method: String?, arguments: [String], timeout: Double? = nil) -> ControlRequest {
        var request = ControlRequest(.call, driver: driver)
        request.method = method
        request.arguments = arguments
        request.timeout = timeout
        return request
    }
}

/// The answer: a line of JSON.
public struct ControlResponse: Codable, Sendable {
    public struct Driver: Codable, Sendable, Equatable {
        public let name: String
        public let version: String
        public let sha256: String
        public let devices: [String]
        /// The driver-host process running it, when it has one.
        public var process: Int32?
    }

    public struct Replacement: Codable, Sendable, Equatable {
        public let device: String
        public let old: String
        public let new: String
        /// From holding new requests to handing them to the new driver.
        public let pauseMilliseconds: Double
        public let heldRequests: Int
    }

    /// A driver the OS restarted (it crashed, hung or lost its host), or gave
    /// up on: what `list` tells about the running system's history.
    public struct Recovery: Codable, Sendable, Equatable {
        public let device: String
        public let driver: String
        /// Why: "its driver host ended: killed by signal 9 (SIGKILL)"; for
        /// a hang, where the driver was stuck.
        public let cause: String
        /// True when the policy gave up and the device failed.
        public let gaveUp: Bool
        public let attempts: Int
        /// Requests it had accepted that went to the restarted instance.
        public let reissued: Int
        /// From noticing the failure to serving again (or giving up).
        public let milliseconds: Double
        /// The event in words, as the OS logged it.
        public let description: String
    }

    /// One device's answer to a `call`.
    public struct Call: Codable, Sendable, Equatable {
        public let device: String
        public let ok: Bool
        /// The result (or the method list), or why there is none.
        public let answer: String
    }

    public var ok: Bool
    public var message: String
    public var drivers: [Driver]?
    public var replacements: [Replacement]?
    public var calls: [Call]?
    /// Restarts of drivers so far, oldest first (the supervisor keeps the
    /// last `DriverSupervisor.eventsKept`).
    public var recoveries: [Recovery]?

    static func failed(_ message: String) -> ControlResponse { ControlResponse(ok: false, message: message) }
}

/// Serves a running Kernel's control socket: each connection sends one
/// request line and gets one response line. Loading, unloading and live
/// replacement happen one at a time, in the order requests arrive.
public final class ControlServer: @unchecked Sendable {
    // @unchecked Sendable: `socket` is set once, in init; requests run one at a time under `serial`.
    public let path: String
    private let kernel: Kernel
    private let serial = NSLock()
    private let onShutdown: @Sendable () -> Void
    private var socket: UnixSocketServer?
    /// Longest request line taken.
    static let maxRequest = 64 << 10

    /// How long a client may take to send its line, and to take the answer,
    /// in seconds: requests are served one at a time, so a client that
    /// connects and says nothing must not hold the socket for everyone else.
    let clientTimeout: Int

    public init(path: String, kernel: Kernel, clientTimeout: Int = 10, onShutdown: @escaping @Sendable () -> Void) throws(SocketError) {
        self.path = path
        self.kernel = kernel
        self.clientTimeout = clientTimeout
        self.onShutdown = onShutdown
        do {
            // One at a time: a request being served when `stop` comes still gets its answer.
            socket = try UnixSocketServer(path: path, serving: .oneAtATime) { [weak self] connection in self?.answer(connection) }
        } catch {
            throw SocketError(what: "listen on", path: path, errno: error.errno.rawValue)
        }
    }

    public struct SocketError: Error, CustomStringConvertible {
        public let what: String
        public let path: String
        public let errno: Int32
        public var description: String { "cannot \(what) \(path): \(String(cString: strerror(errno)))" }
    }

    /// Stops listening and removes the socket file; a request being served finishes first.
    public func stop() { socket?.stop() }

    private func answer(_ connection: Int32) {
        var limit = timeval(tv_sec: clientTimeout, tv_usec: 0)
        for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
            _ = setsockopt(connection, SOL_SOCKET, option, &limit, socklen_t(MemoryLayout<timeval>.size))
        }
        let response: ControlResponse
        switch ControlWire.readLine(connection, limit: Self.maxRequest) {
        case .success(let line): response = handle(line)
        case .failure(.tooLong): response = .failed("no request line: one over \(Self.maxRequest) bytes")
        case .failure(.timedOut): response = .failed("no request line within \(clientTimeout) s; send one line of JSON ending in a newline")
        case .failure(.closed): response = .failed("no request line: the connection ended before a newline")
        }
        ControlWire.writeLine(connection, response)
    }

    /// Decodes and runs one request line.
    func handle(_ line: [UInt8]) -> ControlResponse {
        guard let request = try? JSONDecoder().decode(ControlRequest.self, from: Data(line)) else {
            return .failed("not a control request: expected one line of JSON such as {\"command\":\"list\"}")
        }
        return serial.withLock { run(request) }
    }

    private func run(_ request: ControlRequest) -> ControlResponse {
        switch request.command {
        case .list:
            let listed = drivers()
            let builds = Set(listed.map(\.sha256)).count
            var response = ControlResponse(ok: true, message: "\(builds) driver(s) loaded", drivers: listed)
            response.recoveries = kernel.supervisor.events.map(ControlResponse.Recovery.init)
            return response
        case .load:
            guard let file = request.file else { return .failed("load needs the driver file") }
            do {
                let driver = try DriverFile.inspect(path: file)
                let name = driver.metadata.name
                let ranBefore = kernel.runningBuild(named: name) != nil
                let devices = try kernel.loadAndAttach(driver)
                guard devices.isEmpty else { return ControlResponse(ok: true, message: "attached to \(devices.joined(separator: ", "))", drivers: drivers()) }
                if ranBefore { return ControlResponse(ok: true, message: "\(name) runs already; it matches no other device without a driver", drivers: drivers()) }
                // In process the library stays loaded for devices to come; a
                // driver host exists only for a device, so nothing runs.
                guard kernel.runningBuild(named: name) != nil else {
                    return .failed("\(name) matches no device without a driver; drivers run in driver hosts here, one per device, so nothing was loaded")
                }
                return ControlResponse(ok: true, message: "loaded; it matches no device without a driver", drivers: drivers())
            } catch {
                return .failed("\(error)")
            }
        case .unload:
            guard let name = request.driver else { return .failed("unload needs the driver's name") }
            guard let devices = kernel.unloadDriver(named: name) else { return .failed("no driver named \(name) is loaded; loaded: \(loadedNames)") }
            return ControlResponse(ok: true, message: devices.isEmpty ? "unloaded \(name)" : "unloaded \(name) from \(devices.joined(separator: ", "))", drivers: drivers())
        case .replace:
            return replace(request)
        case .shutdown:
            onShutdown()
            return ControlResponse(ok: true, message: "shutting down")
        case .call:
            return call(request)
        }
    }

    /// How long a control call may take in a driver host, in seconds.
    public static let callTimeouts = 0.1...300.0

    private func call(_ request: ControlRequest) -> ControlResponse {
        guard let target = request.driver else { return .failed("call needs the driver's name (or name@device)") }
        let parts = target.split(separator: "@", maxSplits: 1).map(String.init)
        let name = parts[0]
        var devices = addresses(servedBy: name)
        guard !devices.isEmpty else { return .failed("no device is served by a driver named \(name); loaded: \(loadedNames)") }
        if parts.count == 2 {
            devices = devices.filter { $0.description == parts[1] }
            guard !devices.isEmpty else { return .failed("\(name) serves no device \(parts[1]); it serves \(addresses(servedBy: name).map(\.description).joined(separator: ", "))") }
        }
        let timeout = min(max(request.timeout ?? 10, Self.callTimeouts.lowerBound), Self.callTimeouts.upperBound)
        let calls = devices.map { address -> ControlResponse.Call in
            do {
                let answer = try kernel.controlAnswer(at: address, method: request.method, arguments: request.arguments ?? [], timeout: timeout)
                return .init(device: address.description, ok: true, answer: answer)
            } catch {
                return .init(device: address.description, ok: false, answer: "\(error)")
            }
        }
        let failed = calls.filter { !$0.ok }
        let message = calls.count == 1 ? calls[0].answer
            : failed.isEmpty ? "called on \(calls.count) devices" : "\(failed.count) of \(calls.count) calls failed"
        var response = ControlResponse(ok: failed.isEmpty, message: message)
        response.calls = calls
        return response
    }

    /// The devices a driver of this name serves, in process or in driver hosts.
    private func addresses(servedBy name: String) -> [BusAddress] {
        let hosted = kernel.platform.bus.enumerate().map(\.address).filter { kernel.hostedDriver(at: $0)?.file.metadata.name == name }
        return (kernel.devices(servedBy: name) + hosted).sorted()
    }

    private func replace(_ request: ControlRequest) -> ControlResponse {
        guard let name = request.driver, let file = request.file else { return .failed("replace needs the driver's name and the new file") }
        let hosted = addresses(servedBy: name).filter { kernel.hostedDriver(at: $0) != nil }
        if !hosted.isEmpty {
            // Read, not loaded: the new file runs only in its driver hosts.
            let new: DriverFile
            do {
                new = try DriverFile.inspect(path: file)
            } catch {
                return .failed("\(error)")
            }
            guard new.metadata.name == name else { return .failed("\(file) is the driver \(new.metadata.name), not \(name)") }
            return replaceInDriverHosts(name: name, file: file, at: hosted)
        }
        let devices = kernel.devices(servedBy: name)
        guard !devices.isEmpty else { return .failed("no device is served by a driver named \(name); loaded: \(loadedNames)") }
        let library: DriverLibrary
        do {
            library = try kernel.loadDriver(path: file)
        } catch {
            return .failed("\(error)")
        }
        guard library.name == name else {
            if kernel.devices(servedBy: library.name).isEmpty { _ = kernel.unload(library) }
            return .failed("\(file) is the driver \(library.name), not \(name)")
        }
        let old = kernel.instance(at: devices[0])?.library
        var done: [ControlResponse.Replacement] = []
        for address in devices {
            do {
                let r = try kernel.replaceDriver(at: address, with: library)
                done.append(.init(device: r.device, old: old.map { "\($0.name) \($0.metadata.version)" } ?? r.old,
                                  new: "\(library.name) \(library.metadata.version)", pauseMilliseconds: r.pause.milliseconds, heldRequests: r.heldRequests))
            } catch {
                return ControlResponse(ok: false, message: "\(error)", replacements: done)
            }
        }
        // The old build serves nothing now: unload it, as a new one is loaded.
        if let old, old !== library, !devicesServed(by: old) { _ = kernel.unload(old) }
        return ControlResponse(ok: true, message: "replaced \(name) on \(done.map(\.device).joined(separator: ", "))", drivers: drivers(), replacements: done)
    }

    /// Replacement of a driver that runs in driver-host processes: a new host with the new file.
    private func replaceInDriverHosts(name: String, file: String, at devices: [BusAddress]) -> ControlResponse {
        var done: [ControlResponse.Replacement] = []
        func running(_ address: BusAddress) -> String? { kernel.hostedDriver(at: address).map { "\($0.file.metadata.name) \($0.file.metadata.version)" } }
        for address in devices {
            let old = running(address) ?? name
            do {
                let r = try kernel.replaceDriver(at: address, withFile: file)
                let new = running(address) ?? r.new
                done.append(.init(device: r.device, old: old, new: new, pauseMilliseconds: r.pause.milliseconds, heldRequests: r.heldRequests))
            } catch {
                return ControlResponse(ok: false, message: "\(error)", replacements: done)
            }
        }
        return ControlResponse(ok: true, message: "replaced \(name) on \(done.map(\.device).joined(separator: ", ")) (driver hosts)", drivers: drivers(), replacements: done)
    }

    private func devicesServed(by library: DriverLibrary) -> Bool {
        kernel.platform.bus.enumerate().contains { kernel.instance(at: $0.address)?.library === library }
    }

    private var loadedNames: String {
        let names = Set(drivers().map(\.name)).sorted()
        return names.isEmpty ? "none" : names.joined(separator: ", ")
    }

    private func drivers() -> [ControlResponse.Driver] {
        let inProcess = kernel.loadedDrivers.map { library in
            let devices = kernel.platform.bus.enumerate().filter { kernel.instance(at: $0.address)?.library === library }.map(\.address.description)
            return ControlResponse.Driver(name: library.name, version: library.metadata.version, sha256: library.sha256, devices: devices)
        }
        let hosted = kernel.platform.bus.enumerate().compactMap { slot -> ControlResponse.Driver? in
            guard let (file, pid) = kernel.hostedDriver(at: slot.address) else { return nil }
            return ControlResponse.Driver(name: file.metadata.name, version: file.metadata.version, sha256: file.sha256, devices: [slot.address.description], process: pid)
        }
        return (inProcess + hosted).sorted { ($0.name, $0.sha256) < ($1.name, $1.sha256) }
    }
}

/// Sends one request to a control socket and returns the response.
public enum ControlClient {
    public static func send(_ request: ControlRequest, to path: String) throws -> ControlResponse {
        let fd = oy_shim_unix_connect(path)
        guard fd >= 0 else {
            throw ControlServer.SocketError(what: "connect to", path: path, errno: oy_shim_errno())
        }
        defer { _ = close(fd) }
        ControlWire.writeLine(fd, request)
        guard case .success(let line) = ControlWire.readLine(fd, limit: 16 << 20) else {
            throw ControlServer.SocketError(what: "read an answer from", path: path, errno: EPIPE)
        }
        return try JSONDecoder().decode(ControlResponse.self, from: Data(line))
    }
}

/// Lines of JSON on a stream socket.
enum ControlWire {
    enum ReadFailure: Error {
        /// The stream ended (or failed) before a newline.
        case closed
        /// More than the limit came before a newline.
        case tooLong
        /// Nothing completed the line within the socket's receive timeout.
        case timedOut
    }

    /// Bytes up to the first newline.
    static func readLine(_ fd: Int32, limit: Int) -> Result<[UInt8], ReadFailure> {
        var line: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while line.count <= limit {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return .failure(.timedOut) }
            guard n > 0 else { return .failure(.closed) }
            if let newline = chunk[0..<n].firstIndex(of: UInt8(ascii: "\n")) {
                return line.count + newline <= limit ? .success(line + chunk[0..<newline]) : .failure(.tooLong)
            }
            line += chunk[0..<n]
        }
        return .failure(.tooLong)
    }

    static func writeLine<T: Encodable>(_ fd: Int32, _ value: T) {
        guard var bytes = try? JSONEncoder().encode(value) else { return }
        bytes.append(UInt8(ascii: "\n"))
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            offset += n
        }
    }
}

extension ControlResponse.Recovery {
    init(_ event: RecoveryEvent) {
        let (attempts, reissued): (Int, Int)
        switch event.outcome {
        case .restarted(let tries, let requests): (attempts, reissued) = (tries, requests)
        case .gaveUp(let tries): (attempts, reissued) = (tries, 0)
        }
        self.init(device: event.device, driver: event.driver, cause: event.cause, gaveUp: event.outcome.gaveUp, attempts: attempts,
                  reissued: reissued, milliseconds: event.duration.milliseconds, description: event.description)
    }
}
