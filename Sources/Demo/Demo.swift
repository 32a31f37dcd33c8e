import Devices
import DriverHost
import Foundation
import Kernel
import Machine
import Synchronization
import Workloads

extension Disk: BlockTarget {
    public var blockSize: Int { geometry.blockSize }
    public var blockCount: UInt64 { geometry.blockCount }
    public func readBlocks(lba: UInt64, count: Int) throws -> [UInt8] { try read(lba: lba, count: count * geometry.blockSize) }
    public func writeBlocks(lba: UInt64, bytes: [UInt8]) throws { try write(lba: lba, bytes: bytes) }
    public func flushBlocks() throws { try flush() }
}

/// A machine with the reference devices, backed by files in a state folder.
public struct Testbed {
    public let machine: Machine
    public let nvme: NVMeLite
    public let nvmeSlot: BusSlot

    public static let diskImageName = "nvme0.img"

    /// - Parameters:
    ///   - state: folder for the disk image (created when missing).
    ///   - diskSize: bytes for a new disk image.
    public static func make(state: String, diskSize: UInt64 = 64 << 20, memorySize: Int = 128 << 20) throws -> Testbed {
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        let machine = try Machine(configuration: .init(memorySize: memorySize))
        let image = try DiskImage(path: state + "/" + diskImageName, size: diskSize)
        let nvme = NVMeLite(disk: image)
        let slot = machine.bus.plug(nvme)
        return Testbed(machine: machine, nvme: nvme, nvmeSlot: slot)
    }
}

/// Builds every reference driver under Plugins/ with the SDK's flags.
public enum ReferenceDrivers {
    public static func pluginsDirectory(sdk: SDKLocation) -> String { sdk.repositoryRoot + "/Plugins" }

    /// Builds each `Plugins/<name>` into `<output>/<name>.so`; returns the paths.
    public static func build(sdk: SDKLocation, into output: String) throws -> [String] {
        let plugins = pluginsDirectory(sdk: sdk)
        let names = try FileManager.default.contentsOfDirectory(atPath: plugins).filter {
            var isDirectory: ObjCBool = false
            return FileManager.default.fileExists(atPath: plugins + "/" + $0, isDirectory: &isDirectory) && isDirectory.boolValue
        }.sorted()
        return try names.map { name in
            try DriverBuilder.build(directory: plugins + "/" + name, output: output + "/" + name + ".so", sdk: sdk)
        }
    }
}

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

    public var environments: [String: Environment]
    public var stateDirectory: String
    public var durationSeconds: Double

    enum CodingKeys: String, CodingKey {
        case environments
        case stateDirectory = "state_directory", durationSeconds = "duration_seconds"
    }

    /// True when every driver in every environment verified its I/O.
    public var allVerified: Bool {
        environments.values.allSatisfy { env in env.drivers.allSatisfy(\.verified) && env.problems.isEmpty }
    }
}

public struct DemoError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// Runs the demo end to end and reports what happened, step by step.
public struct DemoRunner {
    public var sdk: SDKLocation
    /// Keep state here (disk images, built drivers); nil: a temporary folder
    /// removed afterwards.
    public var stateDirectory: String?
    public var diskSize: UInt64 = 64 << 20
    /// Bytes moved by the throughput measurement on each disk.
    public var throughputBytes = 32 << 20
    public var progress: @Sendable (String) -> Void

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
        return DemoReport(environments: ["bare": bare], stateDirectory: temporary ? "(removed)" : state,
                          durationSeconds: Date().timeIntervalSince(started))
    }

    private func runBare(state: String, driverPaths: [String]) throws -> DemoReport.Environment {
        progress("[bare] powering on a machine: 128 MiB RAM, IOMMU, nvmelite on \(state)/\(Testbed.diskImageName)")
        let testbed = try Testbed.make(state: state, diskSize: diskSize)
        defer { testbed.machine.shutdown() }
        let kernel = Kernel(platform: BarePlatform(machine: testbed.machine), driverPaths: driverPaths)
        let boot = kernel.boot()
        for problem in boot.problems { progress("[bare] problem: \(problem)") }
        for device in boot.devices { progress("[bare] \(device.location) \(hex(device.vendorID)):\(hex(device.deviceID)) -> \(device.driver ?? "-") (\(device.outcome))") }
        for library in kernel.loadedDrivers {
            progress("[bare] loaded \(library.name) \(library.metadata.version), ABI \(library.abiVersion)")
            progress("[bare]   mapped file \(library.mappedPath)")
            progress("[bare]   sha256 \(library.sha256)")
        }
        defer { kernel.shutdown() }
        let disks = try exercise(kernel: kernel, label: "bare")
        let drivers = boot.drivers.map { record in
            let served = disks.filter { $0.driver == record.name }
            return DemoReport.DriverEntry(
                name: record.name, path: record.mappedPath ?? record.path, sha256: record.sha256, devices: record.devices,
                verified: !served.isEmpty && served.allSatisfy(\.verified))
        }
        return DemoReport.Environment(drivers: drivers, disks: disks, problems: boot.problems)
    }

    /// Verified I/O and a throughput run on every disk of `kernel`.
    func exercise(kernel: Kernel, label: String) throws -> [DemoReport.DiskEntry] {
        var entries: [DemoReport.DiskEntry] = []
        for disk in kernel.blockLayer.disks {
            let driver = disk.registered.binding.library.name
            let blocks = disk.geometry.blockCount
            progress("[\(label)] \(disk.name): \(disk.geometry.capacity >> 20) MiB, \(disk.geometry.blockSize)-byte blocks, via \(disk.driverLabel)")
            var verified = true
            var moved = VerifiedIO.Result()
            do {
                moved = try VerifiedIO(seed: 0x0A7A_0001, regionStart: 0, regionBlocks: min(blocks, 4096)).run(on: disk)
                progress("[\(label)] \(disk.name): verified \(moved.transfers) transfers of 1 to 256 blocks at odd offsets, with flush")
            } catch {
                verified = false
                progress("[\(label)] \(disk.name): VERIFY FAILED: \(error)")
            }
            let rate = try Throughput.measure(disk: disk, bytes: min(throughputBytes, Int(disk.geometry.capacity / 2)), requestBytes: 128 << 10, depth: 16)
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

/// Sequential asynchronous I/O at a fixed queue depth, verified.
public enum Throughput {
    public struct Result: Sendable {
        public let bytes: Int
        public let writeMiBPerSecond: Double
        public let readMiBPerSecond: Double
        public let verified: Bool
    }

    public static func measure(disk: Disk, bytes: Int, requestBytes: Int, depth: Int) throws -> Result {
        let blockSize = disk.geometry.blockSize
        let requestBlocks = max(1, min(requestBytes / blockSize, disk.geometry.maxTransferBlocks))
        let chunk = requestBlocks * blockSize
        let requests = max(1, bytes / chunk)
        let buffers = (0..<depth).compactMap { _ in disk.allocateBuffer(length: chunk) }
        guard buffers.count == depth else { throw DemoError(message: "\(disk.name): out of I/O memory for \(depth) × \(chunk) bytes") }

        // Checksums of what each request writes, computed before the timed
        // passes so that verifying a read costs one pass over its bytes.
        let checksums = (0..<requests).map { i in
            Pattern.bytes(seed: 0xB0B, lba: UInt64(i * requestBlocks), blockSize: blockSize, count: chunk).withUnsafeBytes(checksum)
        }

        func pass(_ operation: BlockRequest.Operation) throws -> (seconds: Double, verified: Bool) {
            let slots = DispatchSemaphore(value: depth)
            let group = DispatchGroup()
            let failure = Mutex<OyStatus?>(nil)
            let verified = Atomic<Bool>(true)
            let free = Mutex<[Int]>(Array(0..<depth))
            let start = DispatchTime.now()
            for i in 0..<requests {
                slots.wait()
                let index = free.withLock { $0.removeLast() }
                let buffer = buffers[index]
                let lba = UInt64(i * requestBlocks)
                if operation == .write {
                    let data = Pattern.bytes(seed: 0xB0B, lba: lba, blockSize: blockSize, count: chunk)
                    data.withUnsafeBytes { buffer.bytes.copyMemory(from: $0) }
                }
                let expected = checksums[i]
                group.enter()
                disk.submit(operation, lba: lba, blocks: requestBlocks, buffer: buffer) { status in
                    if !status.isOK { failure.withLock { $0 = status } }
                    if operation == .read && status.isOK && checksum(UnsafeRawBufferPointer(buffer.bytes)) != expected {
                        verified.store(false, ordering: .relaxed)
                    }
                    free.withLock { $0.append(index) }
                    slots.signal()
                    group.leave()
                }
            }
            group.wait()
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
            if let status = failure.withLock({ $0 }) {
                throw BlockError(disk: disk.name, operation: "\(operation)", lba: 0, status: status)
            }
            return (seconds, verified.load(ordering: .relaxed))
        }

        let write = try pass(.write)
        try disk.flush()
        let read = try pass(.read)
        let total = Double(requests * chunk) / Double(1 << 20)
        return Result(bytes: requests * chunk, writeMiBPerSecond: total / write.seconds, readMiBPerSecond: total / read.seconds, verified: read.verified)
    }
}

func hex(_ v: UInt16) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 4 - s.count)) + s
}

func format(_ v: Double) -> String { String(format: "%.1f", v) }
