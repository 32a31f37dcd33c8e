import Devices
import DriverHost
import Foundation
import Kernel
import Machine
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
    public static func make(state: String, diskSize: UInt64 = 64 << 20, memorySize: Int = 128 << 20, hypervisorRole: Bool = false) throws -> Testbed {
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        let machine = try Machine(configuration: .init(memorySize: memorySize, hypervisorRole: hypervisorRole))
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

func hex(_ v: UInt16) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 4 - s.count)) + s
}

func format(_ v: Double) -> String { String(format: "%.1f", v) }
