import Foundation
import Kernel
import Machine
import VhostUser
import VirtualizationStack

/// A system that keeps running: the OS booted (as the root partition, or
/// bare) with the vendor drivers, its first disk served to real VMs over
/// vhost-user-blk, and a control socket through which drivers are listed,
/// loaded, unloaded and replaced live. What `oyako serve` runs.
public final class ServeSession: @unchecked Sendable {
    // @unchecked Sendable: fixed after init; `finished` is thread-safe.
    public struct Options: Sendable {
        public var state: String
        public var drivers: [String]
        public var diskSize: UInt64 = 256 << 20
        public var bareMetal = false
        /// Run disk drivers in driver-host processes of this executable (`oyako`).
        public var driverHost: String?
        /// Who may connect to the VM-facing sockets (vda.sock); the control
        /// socket is always this user's alone.
        public var vmAccess: SocketAccess = .owner

        public init(state: String, drivers: [String]) {
            self.state = state
            self.drivers = drivers
        }
    }

    public let system: BootedSystem
    public let control: ControlServer
    /// vhost-user-blk over the whole of the first disk, when there is one.
    public let blockServer: VhostUserServer?
    private let finished = DispatchSemaphore(value: 0)

    public static func controlPath(state: String) -> String { state + "/control.sock" }
    public static func blockPath(state: String) -> String { state + "/vda.sock" }

    public init(_ options: Options) throws {
        system = try BootedSystem(options.bareMetal ? .bareMetal : .rootPartition(memory: 96 << 20), state: options.state,
                                  diskSize: options.diskSize, memorySize: 256 << 20, nics: 1, drivers: options.drivers, driverHost: options.driverHost)
        do {
            if let disk = system.kernel.blockLayer.disks.first {
                let region = try DiskRegion(disk: disk, following: system.kernel.blockLayer)
                blockServer = try VhostUserServices.serveBlock(at: Self.blockPath(state: options.state), access: options.vmAccess, region: region)
            } else {
                blockServer = nil
            }
            control = try ControlServer(path: Self.controlPath(state: options.state), kernel: system.kernel) { [finished] in finished.signal() }
        } catch {
            system.shutdown()
            throw error
        }
    }

    public var kernel: Kernel { system.kernel }

    /// Returns once a `shutdown` request or `requestShutdown()` came.
    public func wait() { finished.wait() }

    public func requestShutdown() { finished.signal() }

    public func shutdown() {
        control.stop()
        blockServer?.stop()
        system.shutdown()
    }
}
