import COyakoSDK

/// A struct of the C ABI that begins with `struct_size`: the writer says how
/// much of the struct it knew, so a newer reader can tell an older writer's
/// shorter struct from a complete one (ARCHITECTURE.md, ABI rules).
protocol VersionedStruct {
    init()
    var struct_size: UInt32 { get set }
}

extension VersionedStruct {
    /// The size of the version this host was built against.
    static var currentSize: UInt32 { UInt32(MemoryLayout<Self>.size) }

    /// The struct a driver passed, if the host can read it: not NULL, and
    /// written by a driver that knew at least the version this host reads
    /// (no version had a `struct_size` smaller than version 1's). A refusal
    /// names the C struct (an `oy_` one).
    static func read(_ pointer: UnsafePointer<Self>?) throws(ClassRegistration.Refusal) -> Self {
        let name = String(describing: Self.self)
        guard let pointer else { throw .init("a NULL \(name)") }
        let size = pointer.pointee.struct_size
        guard size >= currentSize else { throw .init("an \(name) whose struct_size \(size) is smaller than its \(currentSize) bytes") }
        return pointer.pointee
    }

    /// A host table for drivers: zeroed, `struct_size` set, filled by `fill`,
    /// and never freed (drivers keep the pointer for the life of the process).
    static func hostTable(_ fill: (inout Self) -> Void) -> UnsafeMutablePointer<Self> {
        var value = Self()
        value.struct_size = currentSize
        fill(&value)
        let table = UnsafeMutablePointer<Self>.allocate(capacity: 1)
        table.initialize(to: value)
        return table
    }
}

extension oy_host: VersionedStruct {}
extension oy_host_block: VersionedStruct {}
extension oy_host_net: VersionedStruct {}
extension oy_host_serial: VersionedStruct {}
extension oy_host_rng: VersionedStruct {}
extension oy_block_geometry: VersionedStruct {}
extension oy_block_ops: VersionedStruct {}
extension oy_net_info: VersionedStruct {}
extension oy_net_ops: VersionedStruct {}
extension oy_serial_line: VersionedStruct {}
extension oy_serial_ops: VersionedStruct {}
extension oy_rng_ops: VersionedStruct {}
