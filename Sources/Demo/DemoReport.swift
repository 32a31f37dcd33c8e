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

    public struct PingEntry: Encodable, Sendable {
        public let from: String
        public let to: String
        public let sent: Int
        public let answered: Int
    }

    public struct NetworkEntry: Encodable, Sendable {
        public var addresses: [String] = []
        public var pings: [PingEntry] = []
        public var verified: Bool { !pings.isEmpty && pings.allSatisfy { $0.answered == $0.sent } }

        enum CodingKeys: String, CodingKey { case addresses, pings, verified }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(addresses, forKey: .addresses)
            try c.encode(pings, forKey: .pings)
            try c.encode(verified, forKey: .verified)
        }
    }

    public struct ChildEntry: Encodable, Sendable {
        public let name: String
        public let partition: UInt64
        public let virtualDisk: String
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
            case name, partition, verified, error, network
            case virtualDisk = "virtual_disk", bytesWritten = "bytes_written", bytesRead = "bytes_read"
            case storageVerified = "storage_verified"
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(name, forKey: .name)
            try c.encode(partition, forKey: .partition)
            try c.encode(virtualDisk, forKey: .virtualDisk)
            try c.encode(bytesWritten, forKey: .bytesWritten)
            try c.encode(bytesRead, forKey: .bytesRead)
            try c.encode(storageVerified, forKey: .storageVerified)
            try c.encode(network, forKey: .network)
            try c.encode(verified, forKey: .verified)
            try c.encodeIfPresent(error, forKey: .error)
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
