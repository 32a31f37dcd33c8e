import CSystemShims

/// Memory a driver names that the host only reads (a table it returned, the
/// strings in it), read without trusting it: an address that is not mapped
/// is an answer, not a SIGSEGV in the host. For tables whose size the
/// driver states and the host cannot check otherwise: a count larger than
/// the array, a stale pointer.
enum DriverMemory {
    /// A copy of the `T` at `pointer`, or nil if it is not readable.
    static func load<T>(_ pointer: UnsafeRawPointer?, as type: T.Type) -> T? {
        guard let pointer else { return nil }
        return withUnsafeTemporaryAllocation(of: T.self, capacity: 1) { slot -> T? in
            guard let base = slot.baseAddress, oy_shim_copy_in(base, pointer, MemoryLayout<T>.size) == 0 else { return nil }
            return base.pointee
        }
    }

    /// What reading a driver's C string came to.
    enum Text: Equatable {
        case null
        case string(String)
        /// Not readable memory (a garbage or stale pointer).
        case unreadable
        /// No NUL within `limit` bytes: those bytes.
        case unterminated(prefix: String)
    }

    /// The NUL-terminated string at `pointer`, up to `limit` bytes.
    static func string(_ pointer: UnsafePointer<CChar>?, limit: Int = 4096) -> Text {
        guard let pointer else { return .null }
        var buffer = [CChar](repeating: 0, count: limit + 1)
        let length = buffer.withUnsafeMutableBufferPointer { oy_shim_copy_in_string($0.baseAddress!, $0.count, pointer) }
        let text = { (count: Int) in String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        switch length {
        case -1: return .unreadable
        case ..<0: return .unterminated(prefix: text(limit))
        default: return .string(text(Int(length)))
        }
    }
}
