import SystemAssembly
import Devices
import Foundation
import Guest
import Hypervisor
import Kernel
import Machine
import Synchronization
import VirtualizationStack
import VMBus

/// A machine with the hypervisor role on: hypervisor, root partition running
/// the Kernel with `drivers`, and a VM manager. Shut down with `shutdown`.
public final class RootSystem: @unchecked Sendable {
    public let testbed: Testbed
    public var machine: Machine { testbed.machine }
    public var nvme: NVMeLite { testbed.nvme }
    public let root: RootPartition
    public let kernel: Kernel
    public let vms: VMManager
    public let report: Kernel.BootReport
    public let state: String

    /// `driverHost`: run disk drivers in driver-host processes of that executable.
    public init(drivers: [String], diskSize: UInt64 = 32 << 20, nics: Int = 0, driverHost: String? = nil, wire: (Testbed) -> Void = { _ in }) throws {
        state = Fixtures.temporaryDirectory("root")
        testbed = try Testbed.make(state: state, diskSize: diskSize, memorySize: 160 << 20, nics: nics)
        wire(testbed)
        root = try RootPartition(machine: testbed.machine, memory: 64 << 20)
        kernel = Kernel(platform: root.platform, driverPaths: drivers)
        kernel.driverHostExecutable = driverHost
        report = kernel.boot()
        vms = VMManager(root: root)
    }

    public var disk: Disk? { kernel.blockLayer.disks.first }

    /// Creates a child with a virtual disk of `blocks` blocks at `start` of
    /// the root's first disk, and runs `guest` as its OS. Returns at once.
    @discardableResult
    public func startChild(name: String, start: UInt64, blocks: UInt64, memory: Int = 8 << 20,
                           guest: @escaping @Sendable (GuestOS) -> Void) throws -> VMManager.Child
    {
        let child = try vms.createChild(name: name, memorySize: memory)
        if let disk { vms.offerStorage(to: child, disk: disk, region: start..<(start + blocks)) }
        vms.start(child) { partition, vp in guest(GuestOS(name: name, partition: partition, vp: vp)) }
        return child
    }

    public func shutdown() {
        for child in vms.running { vms.destroy(child) }
        kernel.shutdown()
        root.shutdown()
        machine.shutdown()
        try? FileManager.default.removeItem(atPath: state)
    }
}

/// Collects a guest's outcome for the test thread to wait on.
public final class GuestOutcome<T: Sendable>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let value = Mutex<Result<T, any Error>?>(nil)

    public init() {}

    public func finish(_ body: () throws -> T) {
        let result = Result { try body() }
        value.withLock { $0 = result }
        done.signal()
    }

    public func wait(timeout: Double = 60) throws -> T {
        guard done.wait(timeout: .now() + timeout) == .success else { throw OutcomeTimeout() }
        return try value.withLock { $0! }.get()
    }

    public struct OutcomeTimeout: Error {}
}
