// swift-tools-version:6.0
//
// Oyako's module graph mirrors the layer picture in ARCHITECTURE.md (see the
// README's layout table): each target below names only the layers under it.
// The hypervisor sees only the Machine; the virtualization stack sees the
// Kernel's block layer but never the driver ABI; DriverFile reads driver
// files without loading them.
import PackageDescription

let package = Package(
    name: "Oyako",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "oyako", targets: ["OyakoCLI"]),
        .library(name: "DriverHost", targets: ["DriverHost"]),
        .library(name: "Kernel", targets: ["Kernel"]),
        .library(name: "Machine", targets: ["Machine"]),
        .library(name: "Devices", targets: ["Devices"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // The driver ABI headers, compiled into the host; the layout asserts run on every build.
        .target(
            name: "COyakoSDK",
            path: "SDK",
            exclude: ["oyako.mk", "oyako-driver.map", "abi"],
            sources: ["src"],
            publicHeadersPath: "include"
        ),
        .target(name: "CSystemShims", path: "Sources/CSystemShims"),
        // libffi for control methods, behind a two-function C door.
        .target(name: "CFFIShims", linkerSettings: [.linkedLibrary("ffi")]),
        .target(
            name: "Machine",
            dependencies: [
                "CSystemShims",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .target(
            name: "Devices",
            dependencies: [
                "Machine", "CSystemShims",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // The microkernel: partitions, VPs, GPA maps, hypercalls, SynIC.
        // Only the Machine below it; no device, driver or OS code.
        .target(
            name: "Hypervisor",
            dependencies: ["Machine", .product(name: "Logging", package: "swift-log")]
        ),
        // VMBus, used by both sides: ring buffers, packets, channel messages,
        // the root's server and the guest's client. On the hypervisor's SynIC.
        .target(
            name: "VMBus",
            dependencies: ["Hypervisor", "Machine", "CSystemShims", .product(name: "Logging", package: "swift-log")]
        ),
        // Reads driver files and never runs their code: ELF, metadata,
        // SHA-256, the import policy. No dlopen, no libffi.
        .target(
            name: "DriverFile",
            dependencies: ["COyakoSDK", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // The vendor's tools: where the SDK is, building a driver, running a process.
        .target(name: "SDKTools"),
        // Loads and runs drivers: dlopen, negotiation, host services, class bridges, control methods.
        .target(
            name: "DriverHost",
            dependencies: [
                "DriverFile", "COyakoSDK", "CSystemShims", "CFFIShims",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "Kernel",
            dependencies: ["DriverHost", "Machine", "Workloads", "CSystemShims", .product(name: "Logging", package: "swift-log")]
        ),
        // The root's virtualization stack: root partition boot, VSPs, VM manager.
        .target(
            name: "VirtualizationStack",
            dependencies: ["Hypervisor", "VMBus", "VhostUser", "Kernel", "Machine", "NetStack", .product(name: "Logging", package: "swift-log")]
        ),
        // The root as a driver domain for real VMs: the vhost-user back-end's
        // view of a VM's memory and its split virtqueues, every guest address
        // validated. On the virtualization-stack layer.
        .target(name: "VhostUser", dependencies: ["Machine", "CSystemShims"]),
        // Real VMs under an external VMM: the guest image from Debian's
        // packages and the QEMU processes the root supervises.
        .target(name: "ExternalVMM", dependencies: ["CSystemShims", "SDKTools", .product(name: "Crypto", package: "swift-crypto")]),
        // The child-partition OS: VMBus client, VSCs, on its own VP.
        .target(
            name: "Guest",
            dependencies: ["Hypervisor", "VMBus", "Machine", "Workloads", "NetStack"]
        ),
        // The plugin conformance suite: checks, worker protocol, reporters.
        .target(
            name: "Conformance",
            dependencies: ["DriverHost", "DriverFile", "SDKTools", "Kernel", "Machine", "Devices", "VirtualizationStack", "COyakoSDK"]
        ),
        // Benchmarks: every figure next to a baseline measured in the same run.
        .target(name: "CBenchShims", dependencies: ["COyakoSDK"]),
        .target(
            name: "Bench",
            dependencies: [
                "CBenchShims", "CSystemShims", "VhostUser", "ExternalVMM", "SystemAssembly", "DriverHost", "Kernel", "Machine", "Devices", "VirtualizationStack", "Guest", "VMBus",
                "Workloads", "NetStack",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // Userland shared by every OS here: verified block I/O workloads.
        .target(name: "Workloads"),
        // A minimal IPv4 host (ARP, ICMP echo, UDP echo) any OS here can run.
        .target(name: "NetStack"),
        // Assembles whole systems (machine, devices, OS, drivers, workloads)
        // for the demo, the bench and the tests; the CLI only parses and prints.
        .target(
            name: "SystemAssembly",
            dependencies: ["Kernel", "Devices", "DriverHost", "SDKTools", "Machine", "Workloads", "NetStack", "Hypervisor", "VMBus", "VirtualizationStack", "Guest", "CSystemShims", "VhostUser",
                           "ExternalVMM", .product(name: "Crypto", package: "swift-crypto")]
        ),
        .executableTarget(
            name: "OyakoCLI",
            dependencies: [
                "SystemAssembly", "Conformance", "Bench", "Kernel", "Devices", "DriverHost", "DriverFile", "SDKTools", "Machine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Builds fixture drivers and test machines for the test targets.
        .target(
            name: "OyakoTestSupport",
            dependencies: ["VhostUser", "CSystemShims", "SystemAssembly", "Workloads", "NetStack", "VirtualizationStack", "Guest", "Hypervisor", "VMBus", "DriverHost", "SDKTools", "Kernel", "Machine", "Devices"],
            path: "Tests/Support"
        ),
        .testTarget(name: "HypervisorTests", dependencies: ["Hypervisor", "Machine"]),
        // Linux's VMBus message structs in C with _Static_asserts, for the wire-format tests.
        .target(name: "CVMBusLayouts", path: "Tests/CVMBusLayouts"),
        .testTarget(name: "VMBusTests", dependencies: ["VMBus", "Hypervisor", "Machine", "CVMBusLayouts", "Workloads"]),
        .testTarget(name: "ExternalVMMTests", dependencies: ["ExternalVMM"]),
        .testTarget(name: "VhostUserTests", dependencies: ["VhostUser", "Machine", "CSystemShims", "Workloads"]),
        .testTarget(
            name: "VirtualizationTests",
            dependencies: ["ExternalVMM", .product(name: "Crypto", package: "swift-crypto"), "VirtualizationStack", "VhostUser", "Guest", "VMBus", "Hypervisor", "Kernel", "Workloads", "NetStack", "Devices", "DriverHost", "SystemAssembly", "OyakoTestSupport"]
        ),
        .testTarget(name: "MachineTests", dependencies: ["Machine", "Devices", "SDKTools", "OyakoTestSupport"]),
        .testTarget(name: "DriverHostTests", dependencies: ["DriverHost", "DriverFile", "SDKTools", "Kernel", "Machine", "Devices", "Workloads", "OyakoTestSupport"]),
        .testTarget(name: "KernelTests", dependencies: ["Kernel", "DriverHost", "Machine", "Devices", "SystemAssembly", "Workloads", "OyakoTestSupport"]),
        .testTarget(name: "CLITests", dependencies: ["ExternalVMM", "OyakoCLI", "SystemAssembly", "DriverHost", "SDKTools", "OyakoTestSupport"]),
        .testTarget(name: "ConformanceTests", dependencies: ["Conformance", "OyakoCLI", "DriverHost", "SDKTools", "OyakoTestSupport"]),
    ]
)
