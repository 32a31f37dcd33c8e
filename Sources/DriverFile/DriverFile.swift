import Crypto
import Foundation
import Glibc

/// What `oyako driver inspect` and the loader learn from a file before any
/// of its code runs.
public struct DriverFile: Sendable {
    public let path: String
    public let resolvedPath: String
    public let image: ELFImage
    public let metadata: DriverMetadata
    public let sha256: String

    public static func inspect(path: String) throws(DriverLoadError) -> DriverFile {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { throw .fileNotFound(path: path) }
        guard !isDirectory.boolValue else { throw .folder(path: path) }
        let image: ELFImage
        do {
            image = try ELFImage(path: path)
        } catch {
            throw .invalidFile(path: path, reason: error.description)
        }
        guard image.machine == ELFImage.hostMachine else {
            throw .wrongArchitecture(path: path, found: ELFImage.machineName(image.machine), expected: ELFImage.machineName(ELFImage.hostMachine))
        }
        guard image.isSharedObject else { throw .notSharedObject(path: path) }
        let metadata: DriverMetadata
        do {
            metadata = try DriverMetadata(image: image)
        } catch {
            throw .badMetadata(path: path, problem: error.description)
        }
        return DriverFile(path: path, resolvedPath: realPath(path), image: image, metadata: metadata, sha256: lowercaseHex(SHA256.hash(data: image.data)))
    }
}

public func realPath(_ path: String) -> String {
    guard let resolved = Glibc.realpath(path, nil) else { return path }
    defer { Glibc.free(resolved) }
    return String(cString: resolved)
}

/// Hex SHA-256 of a file's bytes, or nil when it cannot be read.
public func sha256Hex(ofFile path: String) -> String? {
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    return lowercaseHex(SHA256.hash(data: data))
}

/// Two lowercase hex digits per byte, no separators. (`String(format:)` per
/// byte went through CoreFoundation and showed up in driver load time.)
public func lowercaseHex<Bytes: Sequence<UInt8>>(_ bytes: Bytes, separator: UInt8? = nil) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.underestimatedCount * 3)
    for byte in bytes {
        if let separator, !out.isEmpty { out.append(separator) }
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0x0F)])
    }
    return String(decoding: out, as: UTF8.self)
}
