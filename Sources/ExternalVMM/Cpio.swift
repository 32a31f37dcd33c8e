import Foundation

/// An initramfs archive in the "new ASCII" (newc) cpio format the kernel
/// unpacks at boot (Documentation/driver-api/early-userspace/buffer-format.rst):
/// a 110-byte hexadecimal header per entry, the NUL-terminated name and the
/// data each padded to four bytes, ended by "TRAILER!!!". Written here so
/// the image needs neither root nor the cpio tool; owners are root.
public struct CpioArchive {
    public enum Kind {
        case directory
        case file(Data, executable: Bool)
        case symlink(String)
        case characterDevice(major: UInt32, minor: UInt32)
    }

    private var entries: [(String, Kind)] = []

    public init() {}

    public mutating func add(_ path: String, _ kind: Kind) { entries.append((path, kind)) }

    /// Adds `path` and every directory above it not added yet.
    public mutating func addDirectories(_ path: String) {
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix += prefix.isEmpty ? String(part) : "/" + part
            if !entries.contains(where: { $0.0 == prefix }) { add(prefix, .directory) }
        }
    }

    public func encoded() -> Data {
        var out = Data()
        for (index, (path, kind)) in entries.enumerated() {
            let (mode, data, rdev): (UInt32, Data, (UInt32, UInt32)) = switch kind {
            case .directory: (0o040755, Data(), (0, 0))
            case .file(let data, let executable): (executable ? 0o100755 : 0o100644, data, (0, 0))
            case .symlink(let target): (0o120777, Data(target.utf8), (0, 0))
            case .characterDevice(let major, let minor): (0o020600, Data(), (major, minor))
            }
            Self.append(name: path, inode: UInt32(index + 1), mode: mode, links: kind.isDirectory ? 2 : 1, data: data, rdev: rdev, to: &out)
        }
        Self.append(name: "TRAILER!!!", inode: 0, mode: 0, links: 1, data: Data(), rdev: (0, 0), to: &out)
        return out
    }

    private static func append(name: String, inode: UInt32, mode: UInt32, links: UInt32, data: Data, rdev: (UInt32, UInt32), to out: inout Data) {
        let nameBytes = Array(name.utf8) + [0]
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
        // devminor, rdevmajor, rdevminor, namesize, check.
        let fields: [UInt32] = [inode, mode, 0, 0, links, 0, UInt32(data.count), 0, 0, rdev.0, rdev.1, UInt32(nameBytes.count), 0]
        out.append(contentsOf: Array("070701".utf8))
        for field in fields { out.append(contentsOf: Array(String(format: "%08X", field).utf8)) }
        out.append(contentsOf: nameBytes)
        pad(&out)
        out.append(data)
        pad(&out)
    }

    private static func pad(_ out: inout Data) {
        while out.count % 4 != 0 { out.append(0) }
    }
}

extension CpioArchive.Kind {
    var isDirectory: Bool { if case .directory = self { true } else { false } }
}
