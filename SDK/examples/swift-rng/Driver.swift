// Driver.swift — a driver for the `rnglite` entropy source, written in
// Embedded Swift against the same C ABI as every other driver. It imports
// the SDK headers as the COyakoSDK module, exports only `oy_driver_entry`
// (@_cdecl), uses no Swift classes (no runtime allocation on its paths), and
// reaches the machine only through the host table.
import COyakoSDK

private let regData: UInt64 = 0x00
private let regStatus: UInt64 = 0x04
private let regCtrl: UInt64 = 0x08

/// Per-device state, in memory from the host's mem_alloc.
private struct Instance {
    var device: OpaquePointer?
    var regs: OpaquePointer?
}

// Driver-wide state. Written in init/deinit and attach/detach, which the
// host serialises ([passive]); read by the control method.
nonisolated(unsafe) private var host: UnsafePointer<oy_host>?
nonisolated(unsafe) private var instances = oy_instance_set()
nonisolated(unsafe) private var metadataCopy = oy_driver_meta()
nonisolated(unsafe) private var driverTable = oy_driver()
nonisolated(unsafe) private var methods = oy_control_method()
nonisolated(unsafe) private var controlTable = oy_control_table()

/// Global variables have fixed addresses, so pointers to them may be handed
/// to the host for the life of the load.
private func address<T>(of global: inout T) -> UnsafeMutablePointer<T> {
    withUnsafeMutablePointer(to: &global) { $0 }
}

private func cString(_ s: StaticString) -> UnsafePointer<CChar> {
    UnsafeRawPointer(s.utf8Start).assumingMemoryBound(to: CChar.self)
}

private func equal(_ a: UnsafePointer<CChar>, _ b: StaticString) -> Bool {
    var i = 0
    let bytes = b.utf8Start
    while true {
        let x = UInt8(bitPattern: a[i])
        let y = i < b.utf8CodeUnitCount ? bytes[i] : 0
        if x != y { return false }
        if x == 0 { return true }
        i += 1
    }
}

private let random32: @convention(c) (UnsafeMutableRawPointer?) -> UInt32 = { raw in
    guard let host, let raw, oy_instance_contains(address(of: &instances), raw) != 0 else { return 0 }
    let instance = raw.assumingMemoryBound(to: Instance.self)
    for _ in 0..<1000 where host.pointee.reg_read32(instance.pointee.regs, regStatus) & 1 != 0 {
        return host.pointee.reg_read32(instance.pointee.regs, regData)
    }
    return 0
}

private func buildTables() {
    withUnsafeBytes(of: metadataBytes) { bytes in
        withUnsafeMutableBytes(of: &metadataCopy) { $0.copyMemory(from: bytes) }
    }
    methods = oy_control_method(
        struct_size: UInt32(MemoryLayout<oy_control_method>.size), reserved: 0, name: cString("random32"),
        signature: cString("u32()"), description: cString("A random word from the device"),
        function: unsafeBitCast(random32, to: oy_control_fn.self))
    controlTable = oy_control_table(struct_size: UInt32(MemoryLayout<oy_control_table>.size), method_count: 1, methods: address(of: &methods))
    driverTable = oy_driver(
        struct_size: UInt32(MemoryLayout<oy_driver>.size), reserved: 0, meta: UnsafePointer(address(of: &metadataCopy)),
        init: { table, out in
            guard let table, let out else { return OY_E_INVALID.rawValue }
            host = table
            out.pointee = nil
            return OY_OK.rawValue
        },
        deinit: { _ in host = nil },
        probe: { _, info in
            guard let info, info.pointee.struct_size >= UInt32(MemoryLayout<oy_device_info>.size) else { return OY_E_INVALID.rawValue }
            guard info.pointee.vendor_id == 0x0A7A, info.pointee.device_id == 0x0004 else { return OY_E_NOT_SUPPORTED.rawValue }
            return OY_OK.rawValue
        },
        attach: { _, device, out in
            guard let host, let device, let out else { return OY_E_INVALID.rawValue }
            guard let memory = host.pointee.mem_alloc(host, device, MemoryLayout<Instance>.size) else { return OY_E_NOMEM.rawValue }
            let instance = memory.bindMemory(to: Instance.self, capacity: 1)
            instance.initialize(to: Instance(device: device, regs: nil))
            var size: UInt64 = 0
            let status = host.pointee.regs_map(device, 0, &instance.pointee.regs, &size)
            guard status == OY_OK.rawValue, oy_instance_add(address(of: &instances), memory) != 0 else {
                if instance.pointee.regs != nil { host.pointee.regs_unmap(instance.pointee.regs) }
                host.pointee.mem_free(host, memory)
                return status == OY_OK.rawValue ? OY_E_BUSY.rawValue : status
            }
            host.pointee.reg_write32(instance.pointee.regs, regCtrl, 1)
            out.pointee = memory
            return OY_OK.rawValue
        },
        detach: { raw in
            guard let host, let raw else { return OY_E_INVALID.rawValue }
            guard oy_instance_take(address(of: &instances), raw) != 0 else { return OY_E_STATE.rawValue }
            let instance = raw.assumingMemoryBound(to: Instance.self)
            host.pointee.reg_write32(instance.pointee.regs, regCtrl, 0)
            host.pointee.regs_unmap(instance.pointee.regs)
            host.pointee.mem_free(host, raw)
            return OY_OK.rawValue
        },
        remove: nil,
        get_extension: { _, id in
            guard let id, equal(id, "oyako.control/1") else { return nil }
            return UnsafeRawPointer(address(of: &controlTable))
        })
}

/// The one exported symbol.
@_cdecl("oy_driver_entry")
public func oyDriverEntry(_ args: UnsafeMutablePointer<oy_entry_args>?) -> Int32 {
    buildTables()
    return oy_negotiate(args, 1, 1, UnsafePointer(address(of: &driverTable)))
}
