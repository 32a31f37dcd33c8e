/// The hypercall input value (the control word a caller puts in RCX), as the
/// Hyper-V TLFS lays it out: call code in bits 0-15, the fast bit 16, the
/// variable header size (in 8-byte units) in bits 17-26, "is nested" bit 31,
/// the rep count in bits 32-43 and the rep start index in bits 48-59. Every
/// other bit is reserved and must be zero.
public struct HypercallControl: Equatable, Sendable {
    public var code: UInt16
    public var fast: Bool
    public var variableHeaderSize: UInt16
    public var isNested: Bool
    public var repCount: UInt16
    public var repStartIndex: UInt16

    static let reservedBits: UInt64 = 0x7800_0000 | 0x0000_F000_0000_0000 | 0xF000_0000_0000_0000
    public static let maxReps: UInt16 = 0xFFF

    public init(code: UInt16, fast: Bool = false, variableHeaderSize: UInt16 = 0, isNested: Bool = false,
                repCount: UInt16 = 0, repStartIndex: UInt16 = 0)
    {
        self.code = code
        self.fast = fast
        self.variableHeaderSize = variableHeaderSize
        self.isNested = isNested
        self.repCount = repCount
        self.repStartIndex = repStartIndex
    }

    public var rawValue: UInt64 {
        UInt64(code) | (fast ? 1 << 16 : 0) | UInt64(variableHeaderSize & 0x3FF) << 17 | (isNested ? 1 << 31 : 0)
            | UInt64(repCount & 0xFFF) << 32 | UInt64(repStartIndex & 0xFFF) << 48
    }

    /// Decodes a control word; reserved bits set is HV_STATUS_INVALID_HYPERCALL_INPUT.
    public init(rawValue: UInt64) throws(HvStatus) {
        guard rawValue & Self.reservedBits == 0 else { throw .invalidHypercallInput }
        self.init(code: UInt16(truncatingIfNeeded: rawValue), fast: rawValue & (1 << 16) != 0,
                  variableHeaderSize: UInt16(truncatingIfNeeded: rawValue >> 17) & 0x3FF, isNested: rawValue & (1 << 31) != 0,
                  repCount: UInt16(truncatingIfNeeded: rawValue >> 32) & 0xFFF, repStartIndex: UInt16(truncatingIfNeeded: rawValue >> 48) & 0xFFF)
    }
}

/// The hypercall result value (RAX): status in bits 0-15, reps completed in
/// bits 32-43. A rep hypercall that stops early returns success with fewer
/// reps completed than asked; the caller re-issues it with the rep start
/// index set to the reps completed.
public struct HypercallResult: Equatable, Sendable {
    public var status: HvStatus
    public var repsCompleted: UInt16

    public init(status: HvStatus, repsCompleted: UInt16 = 0) {
        self.status = status
        self.repsCompleted = repsCompleted
    }

    public var rawValue: UInt64 { UInt64(status.rawValue) | UInt64(repsCompleted & 0xFFF) << 32 }

    public init(rawValue: UInt64) {
        self.init(status: HvStatus(UInt16(truncatingIfNeeded: rawValue)), repsCompleted: UInt16(truncatingIfNeeded: rawValue >> 32) & 0xFFF)
    }
}

/// HV_PARTITION_PRIVILEGE_MASK: what a partition may do. The low 32 bits
/// grant access to synthetic MSRs, the high 32 to hypercalls.
public struct PartitionPrivileges: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    // Synthetic MSRs
    public static let accessVpRunTimeReg = PartitionPrivileges(rawValue: 1 << 0)
    public static let accessPartitionReferenceCounter = PartitionPrivileges(rawValue: 1 << 1)
    public static let accessSynicRegs = PartitionPrivileges(rawValue: 1 << 2)
    public static let accessSyntheticTimerRegs = PartitionPrivileges(rawValue: 1 << 3)
    public static let accessIntrCtrlRegs = PartitionPrivileges(rawValue: 1 << 4)
    public static let accessHypercallMsrs = PartitionPrivileges(rawValue: 1 << 5)
    public static let accessVpIndex = PartitionPrivileges(rawValue: 1 << 6)
    // Hypercalls
    public static let createPartitions = PartitionPrivileges(rawValue: 1 << 32)
    public static let accessPartitionId = PartitionPrivileges(rawValue: 1 << 33)
    public static let accessMemoryPool = PartitionPrivileges(rawValue: 1 << 34)
    public static let postMessages = PartitionPrivileges(rawValue: 1 << 36)
    public static let signalEvents = PartitionPrivileges(rawValue: 1 << 37)
    public static let createPort = PartitionPrivileges(rawValue: 1 << 38)
    public static let connectPort = PartitionPrivileges(rawValue: 1 << 39)
    public static let cpuManagement = PartitionPrivileges(rawValue: 1 << 44)

    /// What every partition gets: its SynIC, hypercall page and VP index,
    /// and posting messages and signalling events on connections it has.
    public static let guest: PartitionPrivileges = [
        .accessVpRunTimeReg, .accessPartitionReferenceCounter, .accessSynicRegs, .accessSyntheticTimerRegs,
        .accessIntrCtrlRegs, .accessHypercallMsrs, .accessVpIndex, .postMessages, .signalEvents,
    ]
    /// The root partition's: a guest's and partition, memory, port and CPU management.
    public static let root: PartitionPrivileges = guest.union([
        .createPartitions, .accessPartitionId, .accessMemoryPool, .createPort, .connectPort, .cpuManagement,
    ])
}

extension HypercallCode {
    /// The privilege a caller needs for this hypercall.
    public var privilege: PartitionPrivileges {
        switch self {
        case .createPartition, .initializePartition, .finalizePartition, .deletePartition, .mapGpaPages, .unmapGpaPages: .createPartitions
        case .depositMemory, .withdrawMemory: .accessMemoryPool
        case .createVp: .cpuManagement
        case .postMessage: .postMessages
        case .signalEvent: .signalEvents
        case .createPort, .deletePort: .createPort
        case .connectPort: .connectPort
        }
    }

    /// Rep hypercalls take a rep count (and may complete only part of it).
    public var isRep: Bool { self == .mapGpaPages || self == .unmapGpaPages }
}

extension HypercallResult {
    /// Throws the status unless it is success.
    public func check() throws(HvStatus) {
        guard status == .success else { throw status }
    }
}

/// The input layouts of the hypercalls that take the encoded path.
public enum HypercallInput {
    /// HV_MAP_GPA_READABLE and HV_MAP_GPA_WRITABLE.
    public static let mapReadable: UInt32 = 0x1
    public static let mapWritable: UInt32 = 0x2

    /// HV_INPUT_POST_MESSAGE: {connection id, reserved, message type, payload size, payload[240]}.
    public static func postMessage(connectionID: UInt32, type: UInt32, payload: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = []
        append(&bytes, connectionID)
        append(&bytes, UInt32(0))
        append(&bytes, type)
        append(&bytes, UInt32(payload.count))
        return bytes + payload + [UInt8](repeating: 0, count: HvMessage.maxPayload - payload.count)
    }

    /// The header of HvCallMapGpaPages and HvCallUnmapGpaPages:
    /// {target partition, target GPA page base, map flags, reserved}.
    public static func gpaPages(partition: UInt64, gpaBase: UInt64, flags: UInt32) -> [UInt8] {
        var bytes: [UInt8] = []
        append(&bytes, partition)
        append(&bytes, gpaBase)
        append(&bytes, flags)
        append(&bytes, UInt32(0))
        return bytes
    }

    /// HV_INPUT_SIGNAL_EVENT in RDX: {connection id, flag number, reserved}.
    public static func signalEvent(connectionID: UInt32, flag: UInt16) -> [UInt8] {
        var bytes: [UInt8] = []
        append(&bytes, connectionID)
        append(&bytes, flag)
        append(&bytes, UInt16(0))
        return bytes
    }

    static func append<T: FixedWidthInteger>(_ bytes: inout [UInt8], _ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    /// Reads little-endian fields; running out is HV_STATUS_INVALID_HYPERCALL_INPUT.
    struct Reader {
        let bytes: [UInt8]
        var at = 0
        init(_ bytes: [UInt8]) { self.bytes = bytes }

        mutating func bytes(_ n: Int) throws(HvStatus) -> [UInt8] {
            guard n >= 0, at + n <= bytes.count else { throw .invalidHypercallInput }
            defer { at += n }
            return Array(bytes[at..<at + n])
        }

        mutating func value<T: FixedWidthInteger>(_: T.Type) throws(HvStatus) -> T {
            let n = MemoryLayout<T>.size
            guard at + n <= bytes.count else { throw .invalidHypercallInput }
            defer { at += n }
            return bytes.withUnsafeBytes { [at] in T(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: T.self)) }
        }

        mutating func u16() throws(HvStatus) -> UInt16 { try value(UInt16.self) }
        mutating func u32() throws(HvStatus) -> UInt32 { try value(UInt32.self) }
        mutating func u64() throws(HvStatus) -> UInt64 { try value(UInt64.self) }
    }
}
