import DriverHost
import Foundation
import SDKTools

/// A network namespace the test creates and always deletes. Addresses come
/// from 192.0.2.0/24 (TEST-NET-1) only.
public final class NetworkNamespace {
    public let name: String

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Why namespace tests cannot run here, or nil.
    public static var unavailableReason: String? {
        if geteuid() != 0 { return "not running as root" }
        if !FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") && !FileManager.default.isExecutableFile(atPath: "/sbin/ip") {
            return "iproute2 (ip) is not installed"
        }
        if !FileManager.default.isExecutableFile(atPath: "/usr/bin/ping") && !FileManager.default.isExecutableFile(atPath: "/bin/ping") {
            return "ping (iputils-ping) is not installed"
        }
        return nil
    }

    public init(prefix: String = "oyako") throws {
        name = "\(prefix)-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        try run(["netns", "add", name])
        try run(["netns", "exec", name, "ip", "link", "set", "lo", "up"])
    }

    deinit { _ = ProcessRunner.run("ip", ["netns", "del", name]) }

    /// Runs `ip ARGS`.
    @discardableResult
    public func run(_ arguments: [String]) throws -> String {
        let result = ProcessRunner.run("ip", arguments)
        guard result.status == 0 else { throw Failure(description: "ip \(arguments.joined(separator: " ")): \(result.output)") }
        return result.stdout
    }

    /// Moves `interface` in, gives it `address` (CIDR) and brings it up.
    public func adopt(_ interface: String, address: String) throws {
        try run(["link", "set", interface, "netns", name])
        try run(["netns", "exec", name, "ip", "addr", "add", address, "dev", interface])
        try run(["netns", "exec", name, "ip", "link", "set", interface, "up"])
    }

    /// Runs a command inside the namespace.
    public func exec(_ command: [String]) -> ProcessRunner.Result {
        ProcessRunner.run("ip", ["netns", "exec", name] + command)
    }
}
