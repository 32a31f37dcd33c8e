import Foundation
import Glibc
import Machine

/// A folder the system keeps its files in (a state folder, the consoles,
/// kept cores) could not be made: which one, and the system's reason.
public struct FolderError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let reason: String
    public var description: String { "cannot create the folder \(path): \(reason)" }
}

/// Creates `path` and its missing parents, as `mkdir -p` does, and names
/// the part that could not be made with the system's reason (Foundation's
/// own error is a dump of its userInfo).
public func createFolder(_ path: String) throws(FolderError) {
    var prefix = path.hasPrefix("/") ? "/" : ""
    for component in path.split(separator: "/") {
        prefix += component
        if mkdir(prefix, 0o755) != 0 {
            let code = errno
            var info = stat()
            let isFolder = stat(prefix, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
            if !isFolder {
                throw FolderError(path: prefix, reason: code == EEXIST ? "a file of that name is in the way" : String(cString: strerror(code)))
            }
        }
        prefix += "/"
    }
}

/// A state folder another process is using (its lock is held): which
/// folder, and who holds it when the lock file says.
public struct StateFolderBusy: Error, CustomStringConvertible, Sendable {
    public let path: String
    /// What the holder wrote: its pid and command, if it wrote them.
    public let holder: String?
    public var description: String {
        "the state folder \(path) is in use by \(holder ?? "another process") (its disk image, drivers and sockets are that process's); stop it, or choose another state folder"
    }
}

/// The lock that gives one process a state folder at a time: `.lock` in the
/// folder, flock'ed for as long as this object lives, with the holder's pid
/// and command in it for the message a second process gets. Without it a
/// second `oyako serve` on the same folder would rebuild the first's
/// drivers and take over its sockets.
public final class StateFolderLock: Sendable {
    public let path: String
    private let fd: Int32

    /// Takes the lock of `folder` (which exists), or says who holds it.
    public init(_ folder: String, holder: String) throws {
        path = folder + "/.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw FolderError(path: folder, reason: "cannot open its lock file .lock: \(String(cString: strerror(errno)))") }
        guard lockExclusively(fd) else {
            var buffer = [UInt8](repeating: 0, count: 512)
            let count = pread(fd, &buffer, buffer.count, 0)
            close(fd)
            let text = count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : ""
            throw StateFolderBusy(path: folder, holder: text.isEmpty ? nil : text)
        }
        let line = Array("pid \(getpid()) (\(holder))\n".utf8)
        if ftruncate(fd, 0) == 0 { _ = pwrite(fd, line, line.count, 0) }
        self.fd = fd
    }

    deinit { close(fd) }
}
