import Devices
import DriverHost
import Foundation
import SDKTools
import VirtualizationStack
import Kernel
import Machine
import Workloads

/// A machine with the reference devices: an nvmelite disk backed by a file
/// in the state folder, e1klite NICs, a UART whose line is logged, and an
/// rnglite entropy source.
public struct Testbed {
    public let machine: Machine
    public let nvme: NVMeLite
    public let nvmeSlot: BusSlot
    public let nics: [E1KLite]
    public let uart: UART16550
    public let rng: RNGLite
    /// The far end of the UART: what the OS wrote to its console.
    public let console: SerialLog

    public static let diskImageName = "nvme0.img"

    /// Locally administered MAC of NIC `index`.
    public static func mac(_ index: Int) -> [UInt8] { [0x02, 0x0A, 0x7A, 0x00, 0x00, UInt8(index + 1)] }

    /// - Parameters:
    ///   - state: folder for the disk image (created when missing).
    ///   - diskSize: bytes for a new disk image.
    ///   - nics: how many e1klite NICs to plug (wire them up yourself).
    ///   - consoleLog: file the UART's output is appended to, if any.
    public static func make(state: String, diskSize: UInt64 = 64 << 20, memorySize: Int = 128 << 20,
                            nics: Int = 0, consoleLog: String? = nil) throws -> Testbed
    {
        try createFolder(state)
        let machine = try Machine(configuration: .init(memorySize: memorySize))
        let image = try DiskImage(path: state + "/" + diskImageName, size: diskSize)
        let nvme = NVMeLite(disk: image)
        let slot = machine.bus.plug(nvme)
        let cards = (0..<nics).map { E1KLite(mac: mac($0)) }
        for card in cards { machine.bus.plug(card) }
        let uart = UART16550()
        let console = SerialLog(path: consoleLog)
        uart.connect(console)
        machine.bus.plug(uart)
        let rng = RNGLite()
        machine.bus.plug(rng)
        return Testbed(machine: machine, nvme: nvme, nvmeSlot: slot, nics: cards, uart: uart, rng: rng, console: console)
    }
}

/// Builds every reference driver under Plugins/, and the SDK template's
/// driver (rnglite), with the SDK's flags.
public enum ReferenceDrivers {
    public static func pluginsDirectory(sdk: SDKLocation) -> String { sdk.repositoryRoot + "/Plugins" }

    /// Builds each `Plugins/<name>` into `<output>/<name>.so`, and
    /// `SDK/template` into `<output>/mydriver.so`; returns the paths.
    public static func build(sdk: SDKLocation, into output: String) throws -> [String] {
        try buildPlugins(sdk: sdk, into: output) + [DriverBuilder.build(directory: sdk.root + "/template", output: output + "/mydriver.so", sdk: sdk)]
    }

    private static func buildPlugins(sdk: SDKLocation, into output: String) throws -> [String] {
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

/// A testbed with the OS booted on it, on bare metal or as the root
/// partition; `shutdown()` takes it down in the reverse order.
public final class BootedSystem {
    public enum Place: Sendable {
        case bareMetal
        /// The root partition, with this much of the machine's memory.
        case rootPartition(memory: Int)
    }

    public let testbed: Testbed
    public let partition: RootPartition?
    public let kernel: Kernel

    /// Boots the OS on a new testbed with `drivers`. `wireUp` runs on the
    /// testbed first (connect NICs, set carriers). `driverHost`: run disk
    /// drivers in driver-host processes of that executable (`oyako`).
    public init(_ place: Place, state: String, diskSize: UInt64 = 64 << 20, memorySize: Int = 128 << 20, nics: Int = 0,
                drivers: [String], driverHost: String? = nil, wireUp: (Testbed) -> Void = { _ in }) throws {
        testbed = try Testbed.make(state: state, diskSize: diskSize, memorySize: memorySize, nics: nics)
        wireUp(testbed)
        switch place {
        case .bareMetal:
            partition = nil
            kernel = Kernel(platform: BarePlatform(machine: testbed.machine), driverPaths: drivers, logLevel: .error)
        case .rootPartition(let memory):
            do {
                let root = try RootPartition(machine: testbed.machine, memory: memory)
                partition = root
                kernel = Kernel(platform: root.platform, driverPaths: drivers, logLevel: .error)
            } catch {
                testbed.machine.shutdown()
                throw error
            }
        }
        kernel.driverHostExecutable = driverHost
        _ = kernel.boot()
    }

    public func shutdown() {
        kernel.shutdown()
        partition?.shutdown()
        testbed.machine.shutdown()
    }
}
