import Glibc
import Machine
import SystemPackage

/// Why a disk image could not be opened, one case per failure, each with
/// what to do about it.
public enum DiskImageError: Error, CustomStringConvertible, Sendable, Equatable {
    case zeroSize(path: String)
    case cannotOpen(path: String, Errno)
    /// Another open of the image holds its lock: a second writer would corrupt it.
    case inUse(path: String)
    case cannotStat(path: String, Errno)
    case cannotGrow(path: String, size: UInt64, Errno)
    case tooSmall(path: String, size: UInt64, required: UInt64)

    public var description: String {
        switch self {
        case .zeroSize(let path): "disk image \(path): requested size is 0 bytes"
        case .cannotOpen(let path, let e): "disk image \(path): cannot open or create: \(e); check the folder exists and is writable"
        case .inUse(let path):
            "disk image \(path): in use: another disk (in this process or another, such as a running `oyako serve`) has it open, and two writers would corrupt it; stop that one, or use another image"
        case .cannotStat(let path, let e): "disk image \(path): cannot stat: \(e)"
        case .cannotGrow(let path, let size, let e): "disk image \(path): cannot grow to \(size) bytes: \(e)"
        case .tooSmall(let path, let size, let required):
            "disk image \(path): is \(size) bytes, smaller than the \(required) bytes required; delete it to have a new one created, or pass a smaller size"
        }
    }
}

/// A real file behind a virtual disk. Reads and writes go straight between
/// the file and machine memory (preadv/pwritev); `flush` is `fdatasync`.
///
/// This is the Devices module's one door to file system calls.
public final class DiskImage: Sendable {
    public let path: String
    public let size: UInt64
    private let fd: Int32

    /// Opens the image at `path`, creating it with `size` bytes when missing.
    /// An existing image must be at least `size` bytes; its own size is used.
    /// The image is locked (flock, as QEMU locks its images) for as long as
    /// this object lives: a second `DiskImage` of the same file, in any
    /// process, is refused. A new image is its owner's alone (0600): it
    /// holds a machine's disk.
    public init(path: String, size: UInt64) throws(DiskImageError) {
        self.path = path
        guard size > 0 else { throw .zeroSize(path: path) }
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw .cannotOpen(path: path, Errno(rawValue: errno))
        }
        guard lockExclusively(fd) else {
            close(fd)
            throw .inUse(path: path)
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = Errno(rawValue: errno)
            close(fd)
            throw .cannotStat(path: path, e)
        }
        if st.st_size == 0 {
            guard ftruncate(fd, off_t(size)) == 0 else {
                let e = Errno(rawValue: errno)
                close(fd)
                throw .cannotGrow(path: path, size: size, e)
            }
            self.size = size
        } else if UInt64(st.st_size) < size {
            close(fd)
            throw .tooSmall(path: path, size: UInt64(st.st_size), required: size)
        } else {
            self.size = UInt64(st.st_size)
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Fills `pieces`, in order, from the file starting at `offset`.
    public func read(into pieces: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(Errno) {
        try transfer(pieces, at: offset, write: false)
    }

    /// Writes `pieces`, in order, to the file starting at `offset`.
    public func write(from pieces: [UnsafeMutableRawBufferPointer], at offset: UInt64) throws(Errno) {
        try transfer(pieces, at: offset, write: true)
    }

    /// Makes every completed write durable.
    public func flush() throws(Errno) {
        guard fdatasync(fd) == 0 else { throw Errno(rawValue: errno) }
    }

    private func transfer(_ pieces: [UnsafeMutableRawBufferPointer], at offset: UInt64, write: Bool) throws(Errno) {
        var vectors = pieces.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
        var total = pieces.reduce(0) { $0 + $1.count }
        var position = off_t(offset)
        var first = 0
        while total > 0 {
            let done = vectors[first...].withUnsafeMutableBufferPointer { v -> Int in
                write ? pwritev(fd, v.baseAddress, Int32(min(v.count, 1024)), position)
                      : preadv(fd, v.baseAddress, Int32(min(v.count, 1024)), position)
            }
            if done < 0 {
                if errno == EINTR { continue }
                throw Errno(rawValue: errno)
            }
            if done == 0 {
                // Reading past the end of a sparse file cannot happen (size is
                // checked); treat a short file as an I/O error.
                throw Errno.ioError
            }
            total -= done
            position += off_t(done)
            var consumed = done
            while consumed > 0 && first < vectors.count {
                if consumed >= vectors[first].iov_len {
                    consumed -= vectors[first].iov_len
                    first += 1
                } else {
                    vectors[first].iov_base = vectors[first].iov_base! + consumed
                    vectors[first].iov_len -= consumed
                    consumed = 0
                }
            }
        }
    }
}
