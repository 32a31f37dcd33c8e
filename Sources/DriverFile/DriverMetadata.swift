import COyakoSDK
import Foundation

/// A driver's self-description from its `oyako_meta` section: who made it,
/// which ABI versions it speaks and which devices it binds to. Read from the
/// file without running driver code, and compared with what the loaded
/// driver reports.
public struct DriverMetadata: Sendable, Equatable, Encodable {
    public struct DeviceID: Sendable, Equatable, Encodable, CustomStringConvertible {
        public let vendorID: UInt16
        public let deviceID: UInt16

        public func matches(vendorID: UInt16, deviceID: UInt16) -> Bool {
            self.vendorID == vendorID && (self.deviceID == UInt16(OY_ID_ANY) || self.deviceID == deviceID)
        }

        public var description: String {
            let device = deviceID == UInt16(OY_ID_ANY) ? "*" : hex(deviceID)
            return "\(hex(vendorID)):\(device)"
        }
    }

    public let name: String
    public let vendor: String
    public let version: String
    public let description: String
    public let deviceClass: String
    public let abiMin: UInt32
    public let abiMax: UInt32
    public let deviceIDs: [DeviceID]
    /// The raw section bytes, for comparison with the loaded driver's copy.
    /// The raw `oy_driver_meta` object, to compare with what the entry reports.
    public let bytes: [UInt8]

    public enum Problem: Error, CustomStringConvertible, Sendable {
        case missing
        case tooSmall(Int)
        case badMagic
        case badField(String)

        public var description: String {
            switch self {
            case .missing: return "no `\(OY_META_SECTION)` section; declare the driver's metadata with OY_DRIVER_METADATA"
            case .tooSmall(let n): return "metadata section is \(n) bytes, smaller than oy_driver_meta (\(MemoryLayout<oy_driver_meta>.size) bytes)"
            case .badMagic: return "metadata does not start with \"\(OY_META_MAGIC)\""
            case .badField(let what): return "metadata field \(what)"
            }
        }
    }

    public func matches(vendorID: UInt16, deviceID: UInt16) -> Bool {
        deviceIDs.contains { $0.matches(vendorID: vendorID, deviceID: deviceID) }
    }

    /// Parses the metadata section of an ELF image.
    public init(image: ELFImage) throws(Problem) {
        guard let section = image.section(named: OY_META_SECTION) else { throw .missing }
        try self.init(bytes: [UInt8](section))
    }

    /// Parses an `oy_driver_meta` object.
    public init(bytes: [UInt8]) throws(Problem) {
        typealias M = oy_driver_meta
        let size = MemoryLayout<M>.size
        guard bytes.count >= size else { throw .tooSmall(bytes.count) }
        self.bytes = Array(bytes[0..<size])
        func u32(_ offset: Int) -> UInt32 { bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self) } }
        func text(_ field: PartialKeyPath<M>, _ length: Int, _ label: String) throws(Problem) -> String {
            let offset = MemoryLayout<M>.offset(of: field)!
            let slice = bytes[offset..<(offset + length)]
            guard let end = slice.firstIndex(of: 0) else { throw .badField("\(label) is not NUL-terminated") }
            return String(decoding: bytes[offset..<end], as: UTF8.self)
        }
        guard Array(bytes[0..<8]) == Array(OY_META_MAGIC.utf8) + [0] else { throw .badMagic }
        let structSize = u32(MemoryLayout<M>.offset(of: \M.struct_size)!)
        guard structSize >= UInt32(size) else { throw .badField("struct_size is \(structSize), expected at least \(size)") }
        abiMin = u32(MemoryLayout<M>.offset(of: \M.abi_min)!)
        abiMax = u32(MemoryLayout<M>.offset(of: \M.abi_max)!)
        guard abiMin >= 1, abiMin <= abiMax else { throw .badField("ABI range \(abiMin)–\(abiMax) is empty or starts below 1") }
        let count = Int(u32(MemoryLayout<M>.offset(of: \M.id_count)!))
        guard count <= Int(OY_META_MAX_IDS) else { throw .badField("id_count \(count) exceeds \(OY_META_MAX_IDS)") }
        name = try text(\M.name, 32, "name")
        guard !name.isEmpty else { throw .badField("name is empty") }
        vendor = try text(\M.vendor, 64, "vendor")
        version = try text(\M.version, 32, "version")
        description = try text(\M.description, 128, "description")
        deviceClass = try text(\M.device_class, 32, "device_class")
        let idsOffset = MemoryLayout<M>.offset(of: \M.ids)!
        deviceIDs = (0..<count).map { i in
            let o = idsOffset + i * MemoryLayout<oy_device_id>.size
            return DeviceID(
                vendorID: bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: o, as: UInt16.self) },
                deviceID: bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: o + 2, as: UInt16.self) })
        }
    }

    enum CodingKeys: String, CodingKey {
        case name, vendor, version, description, deviceClass = "device_class", abiMin = "abi_min", abiMax = "abi_max", deviceIDs = "device_ids"
    }
}

func hex(_ v: UInt16) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 4 - s.count)) + s
}

