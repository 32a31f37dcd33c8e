// The Machine module's one door to libc: every system call it makes goes
// through here, and errno becomes a typed `Errno` at once.
import CSystemShims
import Glibc
import SystemPackage

/// Takes an exclusive lock (flock) on the open file `fd` without waiting,
/// held until it is closed. False only when another open of the file holds
/// it; on a file system without locks (ENOLCK) there is nothing to take,
/// and that counts as taken.
public func lockExclusively(_ fd: Int32) -> Bool {
    var locked: Int32
    repeat { locked = flock(fd, LOCK_EX | LOCK_NB) } while locked != 0 && errno == EINTR
    return locked == 0 || errno != EWOULDBLOCK
}

/// A failed system call: which call, on what, and the typed errno.
public struct SystemCallError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let subject: String
    public let errno: Errno

    public var description: String { "\(call)(\(subject)) failed: \(errno.description) (errno \(errno.rawValue))" }

    static func capture(_ call: String, _ subject: String) -> SystemCallError {
        SystemCallError(call: call, subject: subject, errno: Errno(rawValue: oy_shim_errno()))
    }
}

/// The calling thread's name as the OS shows it (ps, perf): the first 15
/// bytes. Foundation's `Thread.name` does not reach the OS on Linux.
public func nameCurrentThread(_ name: String) { oy_shim_name_thread(name) }

enum System {
    static func memfdCreate(name: String, size: Int) throws(SystemCallError) -> Int32 {
        let fd = oy_shim_memfd_create(name)
        guard fd >= 0 else { throw .capture("memfd_create", name) }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let error = SystemCallError.capture("ftruncate", name)
            close(fd)
            throw error
        }
        return fd
    }

    /// Maps `length` bytes of `fd` at `offset`, shared. When `at` is given the
    /// mapping replaces whatever was there (MAP_FIXED).
    static func mapShared(fd: Int32, offset: Int, length: Int, at address: UnsafeMutableRawPointer? = nil)
        throws(SystemCallError) -> UnsafeMutableRawPointer
    {
        let flags = MAP_SHARED | (address == nil ? 0 : MAP_FIXED)
        let result = mmap(address, length, PROT_READ | PROT_WRITE, flags, fd, off_t(offset))
        guard let result, result != MAP_FAILED else { throw .capture("mmap", "fd \(fd) offset \(offset)") }
        return result
    }

    /// Reserves address space with no access, to be filled by `mapShared(at:)`.
    static func reserve(length: Int) throws(SystemCallError) -> UnsafeMutableRawPointer {
        let result = mmap(nil, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let result, result != MAP_FAILED else { throw .capture("mmap", "reserve \(length) bytes") }
        return result
    }

    /// Replaces a range with an inaccessible anonymous mapping.
    static func protectNone(_ address: UnsafeMutableRawPointer, length: Int) throws(SystemCallError) {
        let result = mmap(address, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0)
        guard let result, result != MAP_FAILED else { throw .capture("mmap", "PROT_NONE at \(address)") }
    }

    static func unmap(_ address: UnsafeMutableRawPointer, length: Int) {
        munmap(address, length)
    }

    static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    /// A listening Unix stream socket at `path` that `access` may connect
    /// to (a stale socket there goes first; a live one or another file stays).
    static func listen(unixPath path: String, access: SocketAccess) throws(SystemCallError) -> Int32 {
        let fd = oy_shim_unix_listen(path, UInt32(access.mode), access.group.map { Int32(bitPattern: $0) } ?? -1)
        guard fd >= 0 else { throw .capture("listen", path) }
        return fd
    }

    /// The next connection on `listener`, close-on-exec; nil once the
    /// listener is shut down.
    static func accept(_ listener: Int32) -> Int32? {
        while true {
            let connection = Glibc.accept(listener, nil, nil)
            if connection >= 0 {
                _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
                return connection
            }
            if errno != EINTR { return nil }
        }
    }

    /// Ends both directions of a socket; whoever holds it still closes it.
    static func shutdown(_ fd: Int32) {
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }

    static func unlink(_ path: String) {
        _ = Glibc.unlink(path)
    }
}
