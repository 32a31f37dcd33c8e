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
        public let bytesWritten: UInt64, bytesRead: UInt64
        public let writeMiBPerSecond: Double, readMiBPerSecond: Double

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

    public struct PingEntry: Encodable, Sendable {
        public let from: String, to: String
        /// Echo requests sent, and replies that came back.
        public let sent: Int, answered: Int
    }

    /// Bytes sent over TCP and checked at the far end by SHA-256.
    public struct TransferEntry: Encodable, Sendable {
        public let to: String
        public let bytes: Int
        /// SHA-256 of what was sent, and of what the far end received (nil if nothing arrived).
        public let sentSHA256: String, receivedSHA256: String?
        public var verified: Bool { receivedSHA256 == sentSHA256 }

        enum CodingKeys: String, CodingKey { case to, bytes, verified, sentSHA256 = "sent_sha256", receivedSHA256 = "received_sha256" }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(to, forKey: .to)
            try c.encode(bytes, forKey: .bytes)
            try c.encode(sentSHA256, forKey: .sentSHA256)
            try c.encode(receivedSHA256, forKey: .receivedSHA256)
            try c.encode(verified, forKey: .verified)
        }
    }

    public struct NetworkEntry: Encodable, Sendable {
        public var addresses: [String] = []
        public var pings: [PingEntry] = []
        public var transfers: [TransferEntry] = []
        public var verified: Bool { !pings.isEmpty && pings.allSatisfy { $0.answered == $0.sent } && transfers.allSatisfy(\.verified) }

        enum CodingKeys: String, CodingKey { case addresses, pings, transfers, verified }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(addresses, forKey: .addresses)
            try c.encode(pings, forKey: .pings)
            if !transfers.isEmpty { try c.encode(transfers, forKey: .transfers) }
            try c.encode(verified, forKey: .verified)
        }
    }

    /// A real VM's kernel: Debian's package, as shipped.
    public struct KernelEntry: Encodable, Sendable {
        public let package: String
        public let version: String
        public let sha256: String
    }

    /// The VMM that ran a real VM, and how it executed the guest.
    public struct VMMEntry: Encodable, Sendable {
        public let name: String
        public let version: String
        public let accelerator: String
        public let why: String
    }

    /// The driver files that served a real VM's devices in the root.
    public struct ServedBy: Encodable, Sendable {
        public let device: String
        public let driver: String
        public let sha256: String
    }

    public struct ChildEntry: Encodable, Sendable {
        public enum Kind: String, Encodable, Sendable {
            /// A child partition of Oyako's hypervisor, over VMBus.
            case partition
            /// A real VM under an external VMM, over vhost-user.
            case linuxVM = "linux-vm"
        }

        public let name: String
        public var kind = Kind.partition
        public let partition: UInt64
        public var virtualDisk: String
        public var kernel: KernelEntry?
        public var vmm: VMMEntry?
        public var servedBy: [ServedBy] = []
        public var bytesWritten: UInt64 = 0
        public var bytesRead: UInt64 = 0
        public var storageVerified = false
        public var network: NetworkEntry?
        public var error: String?

        public init(name: String, partition: UInt64, virtualDisk: String, error: String? = nil) {
            self.name = name
            self.partition = partition
            self.virtualDisk = virtualDisk
            self.error = error
        }

        /// Storage verified, and every ping this child took part in answered.
        public var verified: Bool { error == nil && storageVerified && (network?.verified ?? false) }

        enum CodingKeys: String, CodingKey {
            case name, kind, partition, verified, error, network, kernel, vmm
            case virtualDisk = "virtual_disk", bytesWritten = "bytes_written", bytesRead = "bytes_read"
            case storageVerified = "storage_verified", servedBy = "served_by"
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(name, forKey: .name)
            try c.encode(kind, forKey: .kind)
            if kind == .partition { try c.encode(partition, forKey: .partition) }
            try c.encodeIfPresent(kernel, forKey: .kernel)
            try c.encodeIfPresent(vmm, forKey: .vmm)
            if kind == .linuxVM { try c.encode(servedBy, forKey: .servedBy) }
            try c.encode(virtualDisk, forKey: .virtualDisk)
            try c.encode(bytesWritten, forKey: .bytesWritten)
            try c.encode(bytesRead, forKey: .bytesRead)
            try c.encode(storageVerified, forKey: .storageVerified)
            try c.encode(network, forKey: .network)
            try c.encode(verified, forKey: .verified)
            try c.encodeIfPresent(error, forKey: .error)
        }
    }

    /// A driver file the root loaded that the bare OS did not: its SHA-256
    /// is not among those of the files the bare OS loaded.
    public struct DriverFileEntry: Encodable, Sendable, Equatable {
        public let name: String
        public let path: String
        public let sha256: String
    }

    public var environments: [String: Environment]
    public var children: [ChildEntry]
    /// Driver binaries whose file, byte for byte, served bare metal, the root
    /// partition and the children, with all their I/O verified.
    public var driverBinariesReused: Int
    /// Data the bare OS wrote before the reboot read back intact in the root.
    public var bareDataSurvivedReboot: Bool
    public var stateDirectory: String
    public var durationSeconds: Double
    /// What `--chaos` did (nil without it).
    public var chaos: ChaosEntry?

    public init(environments: [String: Environment], children: [ChildEntry], driverBinariesReused: Int, bareDataSurvivedReboot: Bool,
                stateDirectory: String, durationSeconds: Double)
    {
        self.environments = environments
        self.children = children
        self.driverBinariesReused = driverBinariesReused
        self.bareDataSurvivedReboot = bareDataSurvivedReboot
        self.stateDirectory = stateDirectory
        self.durationSeconds = durationSeconds
    }

    /// Driver files the root loaded whose SHA-256 is not among those the bare
    /// OS loaded: drivers the hypervisor role needed of its own.
    public var hypervisorSpecificDrivers: [DriverFileEntry] {
        Self.hypervisorSpecific(bare: environments["bare"]?.drivers ?? [], root: environments["root"]?.drivers ?? [])
    }

    static func hypervisorSpecific(bare: [DriverEntry], root: [DriverEntry]) -> [DriverFileEntry] {
        let bareFiles = Set(bare.map(\.sha256))
        return root.filter { !bareFiles.contains($0.sha256) }.map { DriverFileEntry(name: $0.name, path: $0.path, sha256: $0.sha256) }
    }

    /// True only when no hypervisor-specific driver was needed, every driver
    /// was reused, and all I/O (bare, root, children, the reboot) verified.
    public var reusedUnmodified: Bool {
        let bare = environments["bare"]?.drivers ?? []
        return !bare.isEmpty && driverBinariesReused == bare.count && hypervisorSpecificDrivers.isEmpty && allVerified
    }

    enum CodingKeys: String, CodingKey {
        case environments, children
        case reusedUnmodified = "reused_unmodified", driverBinariesReused = "driver_binaries_reused"
        case hypervisorSpecificDrivers = "hypervisor_specific_drivers", hypervisorSpecificDriverFiles = "hypervisor_specific_driver_files"
        case bareDataSurvivedReboot = "bare_data_survived_reboot", verified
        case stateDirectory = "state_directory", durationSeconds = "duration_seconds", chaos
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(environments, forKey: .environments)
        try c.encode(children, forKey: .children)
        try c.encode(allVerified, forKey: .verified)
        try c.encode(bareDataSurvivedReboot, forKey: .bareDataSurvivedReboot)
        try c.encode(reusedUnmodified, forKey: .reusedUnmodified)
        try c.encode(driverBinariesReused, forKey: .driverBinariesReused)
        try c.encode(hypervisorSpecificDrivers.count, forKey: .hypervisorSpecificDrivers)
        try c.encode(hypervisorSpecificDrivers, forKey: .hypervisorSpecificDriverFiles)
        try c.encode(stateDirectory, forKey: .stateDirectory)
        try c.encode(durationSeconds, forKey: .durationSeconds)
        try c.encodeIfPresent(chaos, forKey: .chaos)
    }

    /// Every driver in every environment and every child verified, and the
    /// bare OS's data survived the reboot into the root.
    public var allVerified: Bool {
        environments.values.allSatisfy { env in env.drivers.allSatisfy(\.verified) && env.problems.isEmpty }
            && children.allSatisfy(\.verified) && bareDataSurvivedReboot && chaos?.verified != false
    }
}
