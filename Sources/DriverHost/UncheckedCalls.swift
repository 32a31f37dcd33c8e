import COyakoSDK
import Foundation

// Calls straight into a driver's class operations with arguments the OS
// never passes: NULLs, impossible operations, lengths out of range. Only the
// conformance suite uses them; a conforming driver answers each with an
// error code and never crashes.

extension RegisteredDisk {
    /// submit(instance, request) with a raw request the host does not track;
    /// `mutate` shapes it (NULL when `request` is false).
    public func submitUnchecked(request: Bool = true, _ mutate: (inout oy_block_request) -> Void = { _ in }) -> OyStatus {
        guard request else { return OyStatus(submitFunction(instance, nil)) }
        var r = oy_block_request()
        r.struct_size = UInt32(MemoryLayout<oy_block_request>.size)
        mutate(&r)
        return OyStatus(submitFunction(instance, &r))
    }
}

extension RegisteredNetdev {
    public func transmitUnchecked(frame: Bool) -> OyStatus {
        guard !frame else {
            var f = oy_net_frame()
            f.struct_size = UInt32(MemoryLayout<oy_net_frame>.size)
            f.length = 64
            f.data = nil
            return OyStatus(ops.transmit(instance, &f))
        }
        return OyStatus(ops.transmit(instance, nil))
    }

    public func statsUnchecked() -> OyStatus? {
        guard let getStats = ops.get_stats else { return nil }
        return OyStatus(getStats(instance, nil))
    }

    /// set_filter with NULL addresses but a count, or a huge count.
    public func setFilterUnchecked(count: UInt32, nullAddresses: Bool) -> OyStatus? {
        guard let setFilter = ops.set_filter else { return nil }
        if nullAddresses { return OyStatus(setFilter(instance, nil, count, 0)) }
        let macs = [UInt8](repeating: 2, count: Int(count) * 6)
        return macs.withUnsafeBufferPointer { OyStatus(setFilter(instance, $0.baseAddress, count, 0)) }
    }
}

extension RegisteredSerialPort {
    /// write with NULL data and a length, or a NULL `written`.
    public func writeUnchecked(nullData: Bool) -> OyStatus {
        if nullData {
            var written: UInt32 = 0
            return OyStatus(ops.write(instance, nil, 5, &written))
        }
        let byte: UInt8 = 0x41
        return withUnsafeBytes(of: byte) { OyStatus(ops.write(instance, $0.baseAddress, 1, nil)) }
    }

    public func setLineUnchecked() -> OyStatus? {
        guard let setLine = ops.set_line else { return nil }
        return OyStatus(setLine(instance, nil))
    }
}

extension DriverLibrary {
    /// dlopen with RTLD_NOW | RTLD_LOCAL, find the entry, and return the
    /// path of the object it resolved from. Runs no driver code.
    public static func openEntry(path: String) throws(DriverLoadError) -> String {
        let file = try DriverFile.inspect(path: path)
        let dl: DynamicLibrary
        do {
            dl = try DynamicLibrary.open(file.resolvedPath)
        } catch {
            throw .dlopenFailed(path: path, message: error.message)
        }
        defer { dl.close() }
        guard let entry = dl.entryPoint(), let mapped = DynamicLibrary.objectPath(containing: entry.address) else {
            throw .missingEntry(path: path)
        }
        guard realPath(mapped) == file.resolvedPath else { throw .entryFromOtherObject(path: path, resolvedIn: mapped) }
        return mapped
    }

    /// Calls the file's entry with `host` and reports what it answered,
    /// without validating or initialising anything.
    public static func negotiate(path: String, host: ClosedRange<UInt32>) throws(DriverLoadError) -> Negotiation {
        let file = try DriverFile.inspect(path: path)
        let dl: DynamicLibrary
        do {
            dl = try DynamicLibrary.open(file.resolvedPath)
        } catch {
            throw .dlopenFailed(path: path, message: error.message)
        }
        defer { dl.close() }
        guard let entry = dl.entryPoint() else { throw .missingEntry(path: path) }
        return negotiate(entry.function, host: host)
    }
}

extension OyStatus {
    /// A defined code with a real message (not "unknown error code").
    public var isDocumented: Bool { isDefined && message != "unknown error code" }
}
