/// The SCSI that storage SRBs carry (SBC-3/SPC-4): operation codes, the CDB
/// layouts a guest builds and a target parses, status and fixed-format sense
/// data. Multi-byte CDB and parameter fields are big-endian.
public enum SCSI {
    public enum Opcode {
        public static let testUnitReady: UInt8 = 0x00
        public static let requestSense: UInt8 = 0x03
        public static let inquiry: UInt8 = 0x12
        public static let modeSense6: UInt8 = 0x1A
        public static let readCapacity10: UInt8 = 0x25
        public static let read10: UInt8 = 0x28
        public static let write10: UInt8 = 0x2A
        public static let synchronizeCache10: UInt8 = 0x35
        public static let modeSense10: UInt8 = 0x5A
        public static let read16: UInt8 = 0x88
        public static let write16: UInt8 = 0x8A
        public static let synchronizeCache16: UInt8 = 0x91
        /// SERVICE ACTION IN(16); service action 0x10 is READ CAPACITY(16).
        public static let serviceActionIn16: UInt8 = 0x9E
        public static let reportLUNs: UInt8 = 0xA0
    }

    public static let readCapacity16ServiceAction: UInt8 = 0x10

    /// SAM status codes.
    public enum Status {
        public static let good: UInt8 = 0x00
        public static let checkCondition: UInt8 = 0x02
        public static let busy: UInt8 = 0x08
    }

    /// Sense keys.
    public enum SenseKey {
        public static let noSense: UInt8 = 0x0
        public static let mediumError: UInt8 = 0x3
        public static let hardwareError: UInt8 = 0x4
        public static let illegalRequest: UInt8 = 0x5
    }

    /// A sense key with its additional sense code and qualifier.
    public struct Sense: Error, Sendable, Equatable, CustomStringConvertible {
        public let key: UInt8
        public let asc: UInt8
        public let ascq: UInt8

        public init(key: UInt8, asc: UInt8, ascq: UInt8 = 0) {
            self.key = key
            self.asc = asc
            self.ascq = ascq
        }

        public static let invalidOpcode = Sense(key: SenseKey.illegalRequest, asc: 0x20)
        public static let lbaOutOfRange = Sense(key: SenseKey.illegalRequest, asc: 0x21)
        public static let invalidFieldInCDB = Sense(key: SenseKey.illegalRequest, asc: 0x24)
        public static let lunNotSupported = Sense(key: SenseKey.illegalRequest, asc: 0x25)
        public static let savingParametersNotSupported = Sense(key: SenseKey.illegalRequest, asc: 0x39)
        public static let unrecoveredReadError = Sense(key: SenseKey.mediumError, asc: 0x11)
        public static let writeError = Sense(key: SenseKey.mediumError, asc: 0x0C)
        public static let internalTargetFailure = Sense(key: SenseKey.hardwareError, asc: 0x44)

        /// Fixed-format sense data (response code 0x70), 18 bytes.
        public var fixedFormat: [UInt8] {
            var bytes = [UInt8](repeating: 0, count: 18)
            bytes[0] = 0x70
            bytes[2] = key
            bytes[7] = 10
            bytes[12] = asc
            bytes[13] = ascq
            return bytes
        }

        /// Parses fixed-format sense data; nil unless it is that.
        public init?(fixedFormat bytes: [UInt8]) {
            guard bytes.count >= 14, bytes[0] & 0x7E == 0x70 else { return nil }
            self.init(key: bytes[2] & 0x0F, asc: bytes[12], ascq: bytes[13])
        }

        public var description: String {
            "sense key 0x\(String(key, radix: 16)) ASC 0x\(String(asc, radix: 16)) ASCQ 0x\(String(ascq, radix: 16))"
        }
    }

    // MARK: CDBs a guest builds

    public static func read10(lba: UInt32, blocks: UInt16) -> [UInt8] { rw10(Opcode.read10, lba: lba, blocks: blocks) }
    public static func write10(lba: UInt32, blocks: UInt16) -> [UInt8] { rw10(Opcode.write10, lba: lba, blocks: blocks) }
    public static func read16(lba: UInt64, blocks: UInt32) -> [UInt8] { rw16(Opcode.read16, lba: lba, blocks: blocks) }
    public static func write16(lba: UInt64, blocks: UInt32) -> [UInt8] { rw16(Opcode.write16, lba: lba, blocks: blocks) }

    /// READ or WRITE: the 10-byte CDB where it reaches, else the 16-byte one.
    public static func transfer(write: Bool, lba: UInt64, blocks: Int) -> [UInt8] {
        if lba + UInt64(blocks) <= UInt64(UInt32.max), blocks <= Int(UInt16.max) {
            return rw10(write ? Opcode.write10 : Opcode.read10, lba: UInt32(lba), blocks: UInt16(blocks))
        }
        return rw16(write ? Opcode.write16 : Opcode.read16, lba: lba, blocks: UInt32(blocks))
    }

    public static let synchronizeCache10: [UInt8] = [Opcode.synchronizeCache10, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    public static let testUnitReady: [UInt8] = [Opcode.testUnitReady, 0, 0, 0, 0, 0]

    public static func inquiry(vpdPage: UInt8? = nil, allocationLength: UInt16) -> [UInt8] {
        [Opcode.inquiry, vpdPage == nil ? 0 : 1, vpdPage ?? 0] + bigEndian(allocationLength) + [0]
    }

    public static func readCapacity16(allocationLength: UInt32 = 32) -> [UInt8] {
        [Opcode.serviceActionIn16, readCapacity16ServiceAction] + [UInt8](repeating: 0, count: 8) + bigEndian(allocationLength) + [0, 0]
    }

    private static func rw10(_ opcode: UInt8, lba: UInt32, blocks: UInt16) -> [UInt8] {
        [opcode, 0] + bigEndian(lba) + [0] + bigEndian(blocks) + [0]
    }

    private static func rw16(_ opcode: UInt8, lba: UInt64, blocks: UInt32) -> [UInt8] {
        [opcode, 0] + bigEndian(lba) + bigEndian(blocks) + [0, 0]
    }

    // MARK: Big-endian fields

    public static func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.bigEndian) { Array($0) }
    }

    /// The big-endian integer in `bytes[at..<at+size]`; the bytes must be there.
    public static func field<T: FixedWidthInteger>(_ bytes: [UInt8], at offset: Int, as: T.Type = T.self) -> T {
        bytes[offset..<offset + MemoryLayout<T>.size].reduce(T(0)) { $0 << 8 | T($1) }
    }
}
