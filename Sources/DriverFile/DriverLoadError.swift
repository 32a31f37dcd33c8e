import COyakoSDK
/// Why a driver file could not be loaded, in words a vendor can act on.
public enum DriverLoadError: Error, CustomStringConvertible, Sendable, Equatable {
    case fileNotFound(path: String)
    /// A folder where a driver file was expected (often a driver's source folder).
    case folder(path: String)
    case invalidFile(path: String, reason: String)
    case wrongArchitecture(path: String, found: String, expected: String)
    case notSharedObject(path: String)
    case badMetadata(path: String, problem: String)
    case dlopenFailed(path: String, message: String)
    case missingEntry(path: String)
    case entryFromOtherObject(path: String, resolvedIn: String)
    case incompatible(path: String, driver: ClosedRange<UInt32>, host: ClosedRange<UInt32>)
    case entryFailed(path: String, status: OyStatus)
    case malformedDriverTable(path: String, problem: DriverTableProblem)
    case initFailed(path: String, status: OyStatus)

    public var description: String {
        switch self {
        case .fileNotFound(let path):
            return "\(path): no such file; check the path to the driver's .so"
        case .folder(let path):
            return "\(path): a folder, not a driver file; give the driver's .so (`oyako driver build \(path)` builds a source folder and prints it)"
        case .invalidFile(_, let reason):
            return reason
        case .wrongArchitecture(let path, let found, let expected):
            return "\(path): built for \(found), but this machine is \(expected); rebuild the driver for \(expected)"
        case .notSharedObject(let path):
            return "\(path): not a shared object (ELF type is not DYN); build the driver with -shared -fPIC"
        case .badMetadata(let path, let problem):
            return "\(path): \(problem)"
        case .dlopenFailed(let path, let message):
            return "\(path): dlopen failed: \(message)"
        case .missingEntry(let path):
            return "\(path): does not export oy_driver_entry; declare it with OY_EXPORT and list it in the linker version script"
        case .entryFromOtherObject(let path, let other):
            return "\(path): oy_driver_entry resolved from \(other), not from the driver itself; the driver must define its own entry"
        case .incompatible(let path, let driver, let host):
            return "\(path): no common ABI version: the driver speaks \(Self.range(driver)), this host speaks \(Self.range(host)); "
                + (driver.lowerBound > host.upperBound
                    ? "update Oyako to a release that speaks ABI \(driver.lowerBound), or rebuild the driver against an older SDK"
                    : "rebuild the driver against the current SDK (ABI \(host.upperBound))")
        case .entryFailed(let path, let status):
            return "\(path): oy_driver_entry failed with \(status)"
        case .malformedDriverTable(let path, let problem):
            return "\(path): malformed driver table: \(problem)"
        case .initFailed(let path, let status):
            return "\(path): driver init failed with \(status)"
        }
    }

    public static func range(_ r: ClosedRange<UInt32>) -> String {
        r.lowerBound == r.upperBound ? "ABI \(r.lowerBound)" : "ABI \(r.lowerBound)–\(r.upperBound)"
    }
}

/// What is wrong with the `oy_driver` table an entry returned.
public enum DriverTableProblem: Sendable, Equatable, CustomStringConvertible {
    /// The entry returned OY_OK without a table.
    case missing
    /// The driver chose an ABI version outside the range both speak.
    case versionOutsideCommonRange(chosen: UInt32, host: ClosedRange<UInt32>, driver: ClosedRange<UInt32>)
    case tooSmall(structSize: UInt32, required: Int)
    case nullCallbacks([String])
    /// `meta` does not point at the file's OY_DRIVER_METADATA object.
    case metadataMismatch

    public var description: String {
        switch self {
        case .missing:
            "oy_driver_entry returned OY_OK but no driver table"
        case .versionOutsideCommonRange(let chosen, let host, let driver):
            "driver chose ABI \(chosen), outside the common range of host \(DriverLoadError.range(host)) and driver \(DriverLoadError.range(driver))"
        case .tooSmall(let size, let required):
            "struct_size is \(size), smaller than oy_driver v1 (\(required) bytes)"
        case .nullCallbacks(let names):
            "mandatory callback\(names.count > 1 ? "s" : "") \(names.joined(separator: ", ")) \(names.count > 1 ? "are" : "is") NULL"
        case .metadataMismatch:
            "oy_driver.meta differs from the file's oyako_meta section; point meta at the OY_DRIVER_METADATA object"
        }
    }
}

