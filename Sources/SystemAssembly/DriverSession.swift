import DriverHost
import Foundation
import Kernel

/// A driver file attached to its device on a fresh bare machine with the
/// reference devices, for one-off management calls (`oyako driver call`).
public enum DriverSession {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Boots, attaches `path` to the first device it binds, runs `body` with
    /// the instance, and tears everything down.
    public static func withAttached<T>(_ path: String, _ body: (DriverInstance) throws -> T) throws -> T {
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("oyako-call-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        defer { try? FileManager.default.removeItem(atPath: state) }
        let testbed = try Testbed.make(state: state, diskSize: 16 << 20, memorySize: 64 << 20, nics: 1)
        defer { testbed.machine.shutdown() }
        let kernel = Kernel(platform: BarePlatform(machine: testbed.machine), driverPaths: [path])
        let report = kernel.boot()
        defer { kernel.shutdown() }
        if let problem = report.problems.first { throw Failure(description: problem.description) }
        guard let bound = report.devices.first(where: { $0.driver != nil }),
            let slot = testbed.machine.bus.enumerate().first(where: { $0.address.description == bound.location }),
            let instance = kernel.instance(at: slot.address)
        else {
            let ids = (try? DriverFile.inspect(path: path).metadata.deviceIDs.map(\.description).joined(separator: ", ")) ?? "?"
            throw Failure(description: "\(path) binds to none of this machine's devices (it lists \(ids))")
        }
        return try body(instance)
    }
}
