import COyakoSDK
import CSystemShims
import DriverFile
import Glibc

/// The DriverHost's one door to the dynamic loader: dlopen, dlsym, dladdr,
/// dlclose. The entry symbol is cast to its function type here and only here.
struct DynamicLibrary: @unchecked Sendable {
    // @unchecked Sendable: the handle is an opaque token the loader owns.
    struct LoadError: Error {
        let message: String
    }

    private let handle: UnsafeMutableRawPointer

    /// Opens with RTLD_NOW (unresolved imports fail here, not mid-I/O) and
    /// RTLD_LOCAL (a driver's symbols never satisfy another object's imports).
    static func open(_ path: String) throws(LoadError) -> DynamicLibrary {
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            throw LoadError(message: dlerror().map { String(cString: $0) } ?? "unknown dlopen error")
        }
        return DynamicLibrary(handle: handle)
    }

    /// The driver's entry, typed, with its raw address for dladdr.
    func entryPoint() -> (function: oy_driver_entry_fn, address: UnsafeRawPointer)? {
        guard let symbol = dlsym(handle, "oy_driver_entry") else { return nil }
        return (unsafeBitCast(symbol, to: oy_driver_entry_fn.self), UnsafeRawPointer(symbol))
    }

    /// Path of the loaded object that contains `address`.
    static func objectPath(containing address: UnsafeRawPointer) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        guard oy_shim_dladdr_path(address, &buffer, buffer.count) == 0 else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func close() {
        dlclose(handle)
    }

    /// A driver file opened, with its entry found in the file itself.
    struct OpenedDriver {
        let library: DynamicLibrary
        let entry: oy_driver_entry_fn
        /// The object the entry resolved from, as the dynamic loader mapped it.
        let mappedPath: String
    }

    /// The one dlopen → entry → dladdr sequence: opens `file`, finds
    /// `oy_driver_entry` and proves it lives in `file` (not in an object the
    /// driver pulled in). Closes again on failure. Runs no driver code.
    static func openDriver(_ file: DriverFile) throws(DriverLoadError) -> OpenedDriver {
        let dl: DynamicLibrary
        do {
            dl = try open(file.resolvedPath)
        } catch {
            throw .dlopenFailed(path: file.path, message: error.message)
        }
        guard let entry = dl.entryPoint(), let mapped = objectPath(containing: entry.address) else {
            dl.close()
            throw .missingEntry(path: file.path)
        }
        guard realPath(mapped) == file.resolvedPath else {
            dl.close()
            throw .entryFromOtherObject(path: file.path, resolvedIn: mapped)
        }
        return OpenedDriver(library: dl, entry: entry.function, mappedPath: mapped)
    }
}
