import DriverHost
import Foundation
import Guest
import Hypervisor
import Kernel
import Machine
import Synchronization
import VirtualizationStack
import VMBus
import Workloads

/// What the demo shows, as printed by `oyako demo --json`.
public struct DemoReport: Encodable, Sendable {
    public struct DriverEntry: Encodable, Sendable {
        public let name: String
        public let path: String
        public let sha256: String
        public let devices: [String]
        public let verified: Bool
    }

    public struct DiskEntry: Encodable, Sendable {
        public let name: String
        public let driver: String
        public let capacityBytes: UInt64
        public let verified: Bool
        public let bytesWritten: UInt64
        public let bytesRead: UInt64
        public let writeMiBPerSecond: Double
        public let readMiBPerSecond: Double

        enum CodingKeys: String, CodingKey {
            case name, driver, verified
            case capacityBytes = "capacity_bytes", bytesWritten = "bytes_written", bytesRead = "bytes_read"
            case writeMiBPerSecond = "write_mib_per_s", readMiBPerSecond = "read_mib_per_s"
        }
    }

    public struct Environment: Encodable, Sendable {
        public let drivers: [DriverEntry]
        public let disks: [DiskEntry]
        public let problems: [String]
    }

    public struct ChildEntry: Encodable, Sendable {
        public let name: String
        public let partition: UInt64
        public let virtualDisk: String
        public let bytesWritten: UInt64
        public let bytesRead: UInt64
        public let verified: Bool
        public let error: String?

        enum CodingKeys: String, CodingKey {
            case name, partition, verified, error
            case virtualDisk = "virtual_disk", bytesWritten = "bytes_written", bytesRead = "bytes_read"
        }
    }

    public var environments: [String: Environment]
    public var children: [ChildEntry]
    /// True only when every driver's SHA-256 matches across environments and
    /// all I/O (bare, root, children) was verified.
    public var reusedUnmodified: Bool
    public var driverBinariesReused: Int
    public var hypervisorSpecificDrivers: Int
    public var stateDirectory: String
    public var durationSeconds: Double

    enum CodingKeys: String, CodingKey {
        case environments, children
        case reusedUnmodified = "reused_unmodified", driverBinariesReused = "driver_binaries_reused"
        case hypervisorSpecificDrivers = "hypervisor_specific_drivers"
        case stateDirectory = "state_directory", durationSeconds = "duration_seconds"
    }

    /// True when every driver in every environment and every child verified.
    public var allVerified: Bool {
        environments.values.allSatisfy { env in env.drivers.allSatisfy(\.verified) && env.problems.isEmpty } && children.allSatisfy(\.verified)
    }
}

public struct DemoError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// Runs the demo end to end and reports what happened, step by step: the
/// bare OS with the vendor driver, then the same machine rebooted with the
/// hypervisor role, the root partition loading the very same files, and
/// child partitions doing verified I/O through VMBus into those drivers.
public struct DemoRunner {
    public var sdk: SDKLocation
    /// Keep state here (disk images, built drivers); nil: a temporary folder
    /// removed afterwards.
    public var stateDirectory: String?
    public var diskSize: UInt64 = 128 << 20
    public var childCount = 2
    /// Bytes moved by the throughput measurement on each disk.
    public var throughputBytes = 32 << 20
    public var progress: @Sendable (String) -> Void

    /// Where each run works on the 512-byte-block disk: bare and root
    /// verification regions, one region per child, and a throughput region.
    static let bareRegion: Range<UInt64> = 0..<4096
    static let rootRegion: Range<UInt64> = 4096..<8192
    static let childBlocks: UInt64 = 32768
    static let childBase: UInt64 = 65536
    static let throughputStart: UInt64 = 131072

    public init(sdk: SDKLocation, stateDirectory: String?, progress: @escaping @Sendable (String) -> Void) {
        self.sdk = sdk
        self.stateDirectory = stateDirectory
        self.progress = progress
    }

    public func run() throws -> DemoReport {
        let started = Date()
        let temporary = stateDirectory == nil
        let state = stateDirectory ?? FileManager.default.temporaryDirectory.appendingPathComponent("oyako-demo-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        defer { if temporary { try? FileManager.default.removeItem(atPath: state) } }
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        progress("state folder: \(state)\(temporary ? " (temporary)" : "")")

        progress("building reference drivers with cc and \(sdk.root)/oyako.mk")
        let driverPaths = try ReferenceDrivers.build(sdk: sdk, into: state + "/drivers")
        for path in driverPaths { progress("  built \(path)") }

        let bare = try runBare(state: state, driverPaths: driverPaths)
        let (root, children) = try runWithHypervisor(state: state, driverPaths: driverPaths)

        // The claim, checked: the same files, byte for byte, everywhere.
        progress("")
        progress("driver        bare sha256        root sha256        same file")
        var reused = 0
        for driver in bare.drivers {
            let other = root.drivers.first { $0.name == driver.name }
            let same = other?.sha256 == driver.sha256
            if same && driver.verified && other?.verified == true { reused += 1 }
            progress("\(driver.name.padding(toLength: 13, withPad: " ", startingAt: 0)) \(driver.sha256.prefix(16))…  \((other?.sha256.prefix(16)).map { "\($0)…" } ?? "-")  \(same ? "yes" : "NO")")
        }
        let allVerified = bare.drivers.allSatisfy(\.verified) && root.drivers.allSatisfy(\.verified) && children.allSatisfy(\.verified)
        let reusedUnmodified = reused == bare.drivers.count && !bare.drivers.isEmpty && allVerified
        progress("\(reused) driver binar\(reused == 1 ? "y" : "ies") reused unmodified on bare metal, in the root partition and for \(children.count) child partitions; 0 hypervisor-specific drivers needed.")
        return DemoReport(
            environments: ["bare": bare, "root": root], children: children, reusedUnmodified: reusedUnmodified,
            driverBinariesReused: reused, hypervisorSpecificDrivers: 0,
            stateDirectory: temporary ? "(removed)" : state, durationSeconds: Date().timeIntervalSince(started))
    }

    private func runBare(state: String, driverPaths: [String]) throws -> DemoReport.Environment {
        progress("[bare] powering on: 128 MiB RAM, IOMMU, nvmelite on \(state)/\(Testbed.diskImageName)")
        let testbed = try Testbed.make(state: state, diskSize: diskSize)
        defer { testbed.machine.shutdown() }
        let kernel = Kernel(platform: BarePlatform(machine: testbed.machine), driverPaths: driverPaths)
        let boot = kernel.boot()
        defer { kernel.shutdown() }
        let disks = try exercise(kernel: kernel, label: "bare", boot: boot, region: Self.bareRegion, seed: 0xBA2E)
        return environment(boot: boot, disks: disks)
    }

    private func runWithHypervisor(state: String, driverPaths: [String]) throws -> (DemoReport.Environment, [DemoReport.ChildEntry]) {
        progress("")
        progress("[root] enabling the hypervisor role and rebooting the same machine (256 MiB RAM)")
        let testbed = try Testbed.make(state: state, diskSize: diskSize, memorySize: 256 << 20, hypervisorRole: true)
        defer { testbed.machine.shutdown() }
        let root = try RootPartition(machine: testbed.machine, memory: 96 << 20)
        defer { root.shutdown() }
        let hv = root.hypervisor
        let sample = hv.machineAddress(partition: hv.root.id, gpa: 0x10_0000) ?? 0
        progress("[root] hypervisor started; root partition \(hv.root.id) with 96 MiB; root GPA 0x100000 is machine address 0x\(String(sample, radix: 16))")
        let kernel = Kernel(platform: root.platform, driverPaths: driverPaths)
        let boot = kernel.boot()
        defer { kernel.shutdown() }

        let disks = try exercise(kernel: kernel, label: "root", boot: boot, region: Self.rootRegion, seed: 0x2007)
        // The data the bare OS wrote before the reboot is still there.
        if let disk = kernel.blockLayer.disks.first {
            let expected = Pattern.bytes(seed: 0xBA2E, lba: Self.bareRegion.lowerBound, blockSize: disk.geometry.blockSize, count: disk.geometry.blockSize)
            let survived = (try? disk.read(lba: Self.bareRegion.lowerBound, count: disk.geometry.blockSize)) == expected
            progress("[root] \(disk.name): data the bare OS wrote before the reboot \(survived ? "reads back intact" : "DID NOT SURVIVE")")
        }
        let children = try runChildren(root: root, kernel: kernel)
        return (environment(boot: boot, disks: disks), children)
    }

    private func runChildren(root: RootPartition, kernel: Kernel) throws -> [DemoReport.ChildEntry] {
        guard let disk = kernel.blockLayer.disks.first else { return [] }
        let manager = VMManager(root: root)
        let results = Mutex<[Int: DemoReport.ChildEntry]>([:])
        let group = DispatchGroup()
        var children: [VMManager.Child] = []
        for i in 0..<childCount {
            let name = "child\(i)"
            let start = Self.childBase + UInt64(i) * Self.childBlocks
            let child = try manager.createChild(name: name, memorySize: 16 << 20)
            manager.offerStorage(to: child, disk: disk, region: start..<(start + Self.childBlocks))
            progress("[root] created partition \(child.id) '\(name)' (16 MiB, 1 VP); virtual disk = \(disk.name) blocks \(start)..<\(start + Self.childBlocks) via \(disk.driverLabel)")
            children.append(child)
            let progress = self.progress
            let vdisk = "\(disk.name)[\(start)..<\(start + Self.childBlocks)]"
            group.enter()
            manager.start(child) { partition, vp in
                let os = GuestOS(name: name, partition: partition, vp: vp, console: progress)
                let entry: DemoReport.ChildEntry
                do {
                    try os.boot()
                    guard let storage = try os.openStorage().first else { throw DemoError(message: "no storage offered") }
                    var io = VerifiedIO(seed: 0xC0 + UInt64(i), regionBlocks: storage.blockCount)
                    io.sizesInBlocks = [1, 7, 8, 64, 255, 256, 512, 2048, 4096]
                    let result = try io.run(on: storage)
                    os.log("verified \(result.transfers) transfers, \(result.bytesWritten >> 10) KiB written and read back through VMBus")
                    entry = .init(name: name, partition: partition.id, virtualDisk: vdisk, bytesWritten: result.bytesWritten, bytesRead: result.bytesRead, verified: true, error: nil)
                } catch {
                    os.log("FAILED: \(error)")
                    entry = .init(name: name, partition: partition.id, virtualDisk: vdisk, bytesWritten: 0, bytesRead: 0, verified: false, error: "\(error)")
                }
                results.withLock { $0[i] = entry }
                group.leave()
            }
        }
        if group.wait(timeout: .now() + 120) == .timedOut { progress("[root] children did not finish within 120 s") }
        for child in children {
            let providers = manager.storageProviders(of: child)
            let served = providers.reduce(0) { $0 + $1.statistics.requests }
            progress("[root] \(child.name): storage VSP served \(served) requests; destroying the partition")
            manager.destroy(child)
        }
        let collected = results.withLock { $0 }
        return (0..<childCount).map { i in
            collected[i] ?? .init(name: "child\(i)", partition: 0, virtualDisk: "", bytesWritten: 0, bytesRead: 0, verified: false, error: "did not finish")
        }
    }

    private func environment(boot: Kernel.BootReport, disks: [DemoReport.DiskEntry]) -> DemoReport.Environment {
        let drivers = boot.drivers.map { record in
            let served = disks.filter { $0.driver == record.name }
            return DemoReport.DriverEntry(
                name: record.name, path: record.mappedPath ?? record.path, sha256: record.sha256, devices: record.devices,
                verified: !served.isEmpty && served.allSatisfy(\.verified))
        }
        return DemoReport.Environment(drivers: drivers, disks: disks, problems: boot.problems)
    }

    /// Verified I/O and a throughput run on every disk of `kernel`.
    func exercise(kernel: Kernel, label: String, boot: Kernel.BootReport, region: Range<UInt64>, seed: UInt64) throws -> [DemoReport.DiskEntry] {
        for problem in boot.problems { progress("[\(label)] problem: \(problem)") }
        for device in boot.devices { progress("[\(label)] \(device.location) \(hex(device.vendorID)):\(hex(device.deviceID)) -> \(device.driver ?? "-") (\(device.outcome))") }
        for library in kernel.loadedDrivers {
            progress("[\(label)] loaded \(library.name) \(library.metadata.version), ABI \(library.abiVersion), mapped file \(library.mappedPath)")
            progress("[\(label)]   sha256 \(library.sha256)")
        }
        var entries: [DemoReport.DiskEntry] = []
        for disk in kernel.blockLayer.disks {
            let driver = disk.registered.binding.library.name
            progress("[\(label)] \(disk.name): \(disk.geometry.capacity >> 20) MiB, \(disk.geometry.blockSize)-byte blocks, via \(disk.driverLabel)")
            var verified = true
            var moved = VerifiedIO.Result()
            do {
                moved = try VerifiedIO(seed: seed, regionStart: region.lowerBound, regionBlocks: UInt64(region.count)).run(on: disk)
                progress("[\(label)] \(disk.name): verified \(moved.transfers) transfers of 1 to 256 blocks at odd offsets, with flush")
            } catch {
                verified = false
                progress("[\(label)] \(disk.name): VERIFY FAILED: \(error)")
            }
            let room = Int((disk.geometry.blockCount - min(disk.geometry.blockCount, Self.throughputStart)) * UInt64(disk.geometry.blockSize))
            let rate = try Throughput.measure(disk: disk, startLBA: Self.throughputStart, bytes: min(throughputBytes, room), requestBytes: 128 << 10, depth: 16)
            verified = verified && rate.verified
            progress("[\(label)] \(disk.name): sequential 128 KiB at QD 16: write \(format(rate.writeMiBPerSecond)) MiB/s, read \(format(rate.readMiBPerSecond)) MiB/s, data \(rate.verified ? "verified" : "MISMATCH")")
            entries.append(DemoReport.DiskEntry(
                name: disk.name, driver: driver, capacityBytes: disk.geometry.capacity, verified: verified,
                bytesWritten: moved.bytesWritten + UInt64(rate.bytes), bytesRead: moved.bytesRead + UInt64(rate.bytes),
                writeMiBPerSecond: rate.writeMiBPerSecond, readMiBPerSecond: rate.readMiBPerSecond))
        }
        return entries
    }
}
