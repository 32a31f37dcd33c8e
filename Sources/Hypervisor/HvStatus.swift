/// A hypercall result code, numbered as in the Hyper-V TLFS.
public struct HvStatus: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16

    public init(_ rawValue: UInt16) { self.rawValue = rawValue }

    public static let success = HvStatus(0x0000)
    public static let invalidHypercallCode = HvStatus(0x0002)
    public static let invalidHypercallInput = HvStatus(0x0003)
    public static let invalidParameter = HvStatus(0x0005)
    public static let accessDenied = HvStatus(0x0006)
    public static let invalidPartitionState = HvStatus(0x0007)
    public static let insufficientMemory = HvStatus(0x000B)
    public static let invalidPartitionID = HvStatus(0x000D)
    public static let invalidVPIndex = HvStatus(0x000E)
    public static let invalidPortID = HvStatus(0x0011)
    public static let invalidConnectionID = HvStatus(0x0012)
    public static let insufficientBuffers = HvStatus(0x0013)

    public var description: String {
        let names: [UInt16: String] = [
            0x0: "HV_STATUS_SUCCESS", 0x2: "HV_STATUS_INVALID_HYPERCALL_CODE", 0x3: "HV_STATUS_INVALID_HYPERCALL_INPUT", 0x5: "HV_STATUS_INVALID_PARAMETER",
            0x6: "HV_STATUS_ACCESS_DENIED", 0x7: "HV_STATUS_INVALID_PARTITION_STATE", 0xB: "HV_STATUS_INSUFFICIENT_MEMORY",
            0xD: "HV_STATUS_INVALID_PARTITION_ID", 0xE: "HV_STATUS_INVALID_VP_INDEX", 0x11: "HV_STATUS_INVALID_PORT_ID",
            0x12: "HV_STATUS_INVALID_CONNECTION_ID", 0x13: "HV_STATUS_INSUFFICIENT_BUFFERS",
        ]
        return names[rawValue] ?? "HV_STATUS 0x\(String(rawValue, radix: 16))"
    }
}

/// Hypercall call codes (TLFS), for accounting.
public enum HypercallCode: UInt16, Sendable, CaseIterable {
    case createPartition = 0x40
    case initializePartition = 0x41
    case finalizePartition = 0x42
    case deletePartition = 0x43
    case depositMemory = 0x48
    case withdrawMemory = 0x49
    case mapGpaPages = 0x4B
    case unmapGpaPages = 0x4C
    case createVp = 0x4E
    case postMessage = 0x5C
    case signalEvent = 0x5D
    case createPort = 0x95
    case connectPort = 0x96
    case deletePort = 0x58
}

public typealias PartitionID = UInt64
