import Glibc

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
