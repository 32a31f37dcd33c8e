import COyakoSDK
import Foundation

// Calls straight into a driver's class operations with arguments the OS
// never passes: NULLs, impossible operations, lengths out of range. Only the
// conformance suite uses them; a conforming driver answers each with an
// error code and never crashes.

extension RegisteredDisk {
    /// submit(instance, request) with a raw request the host does not track;
    /// `mutate` shapes it (NULL when `request` is false).
    @_spi(Conformance) public func submitUnchecked(request: Bool = true, _ mutate: (inout oy_block_request) -> Void = { _ in }) -> OyStatus {
        guard request else { return OyStatus(submitFunction(instance, nil)) }
        var r = oy_block_request()
        r.struct_size = UInt32(MemoryLayout<oy_block_request>.size)
        mutate(&r)
        return OyStatus(submitFunction(instance, &r))
    }
}

extension RegisteredNetdev {
    @_spi(Conformance) public func transmitUnchecked(frame: Bool) -> OyStatus {
        guard !frame else {
            var f = oy_net_frame()
            f.struct_size = UInt32(MemoryLayout<oy_net_frame>.size)
            f.length = 64
            f.data = nil
            return OyStatus(ops.transmit(instance, &f))
        }
        return OyStatus(ops.transmit(instance, nil))
    }

    /// A 64-byte frame lent as transmit lends one, but with `structSize` in
    /// its struct_size: a driver that refuses it never sees it again; one
    /// that takes it completes it as any other.
    @_spi(Conformance) public func transmitUnchecked(structSize: UInt32) -> OyStatus {
        let frame = NetFrame()
        let bytes = [UInt8](repeating: 0xFF, count: 6) + mac + [0x88, 0xB5] + [UInt8](repeating: 0, count: 50)
        bytes.withUnsafeBytes { frame.prepare($0) { _ in } }
        frame.raw.pointee.struct_size = structSize
        return transmit(frame)
    }

    @_spi(Conformance) public func statsUnchecked() -> OyStatus? {
        guard let getStats = ops.get_stats else { return nil }
        return OyStatus(getStats(instance, nil))
    }

    /// get_stats as an older host calls it: `structSize` smaller than the
    /// structure, in a buffer with room for all of it and more, the rest
    /// filled with 0xA5. Its answer and the buffer as the driver left it.
    @_spi(Conformance) public func statsUnchecked(structSize: UInt32) -> (status: OyStatus, bytes: [UInt8])? {
        guard let getStats = ops.get_stats else { return nil }
        var buffer = [UInt8](repeating: 0xA5, count: MemoryLayout<oy_net_stats>.size + 64)
        withUnsafeBytes(of: structSize) { buffer.replaceSubrange(0..<4, with: $0) }
        let status = buffer.withUnsafeMutableBytes { raw in
            OyStatus(getStats(instance, raw.baseAddress!.bindMemory(to: oy_net_stats.self, capacity: 1)))
        }
        return (status, buffer)
    }

    /// set_filter with NULL addresses but a count, or a huge count.
    @_spi(Conformance) public func setFilterUnchecked(count: UInt32, nullAddresses: Bool) -> OyStatus? {
        guard let setFilter = ops.set_filter else { return nil }
        if nullAddresses { return OyStatus(setFilter(instance, nil, count, 0)) }
        let macs = [UInt8](repeating: 2, count: Int(count) * 6)
        return macs.withUnsafeBufferPointer { OyStatus(setFilter(instance, $0.baseAddress, count, 0)) }
    }
}

extension RegisteredSerialPort {
    /// write with NULL data and a length, or a NULL `written`.
    @_spi(Conformance) public func writeUnchecked(nullData: Bool) -> OyStatus {
        if nullData {
            var written: UInt32 = 0
            return OyStatus(ops.write(instance, nil, 5, &written))
        }
        let byte: UInt8 = 0x41
        return withUnsafeBytes(of: byte) { OyStatus(ops.write(instance, $0.baseAddress, 1, nil)) }
    }

    @_spi(Conformance) public func setLineUnchecked() -> OyStatus? {
        guard let setLine = ops.set_line else { return nil }
        return OyStatus(setLine(instance, nil))
    }

    /// set_line with 9600 8N1 but `structSize` in its struct_size.
    @_spi(Conformance) public func setLineUnchecked(structSize: UInt32) -> OyStatus? {
        guard let setLine = ops.set_line else { return nil }
        var c = oy_serial_line()
        c.struct_size = structSize
        c.baud = 9600
        c.data_bits = 8
        c.parity = UInt8(OY_PARITY_NONE.rawValue)
        c.stop_bits = 1
        return OyStatus(setLine(instance, &c))
    }
}

extension DriverLibrary {
    /// dlopen with RTLD_NOW | RTLD_LOCAL, find the entry, and return the
    /// path of the object it resolved from. Runs no driver code.
    @_spi(Conformance) public static func openEntry(path: String) throws(DriverLoadError) -> String {
        let opened = try DynamicLibrary.openDriver(try DriverFile.inspect(path: path))
        defer { opened.library.close() }
        return opened.mappedPath
    }

    /// Calls the file's entry with `host` and reports what it answered,
    /// without validating or initialising anything.
    @_spi(Conformance) public static func negotiate(path: String, host: ClosedRange<UInt32>) throws(DriverLoadError) -> Negotiation {
        let opened = try DynamicLibrary.openDriver(try DriverFile.inspect(path: path))
        defer { opened.library.close() }
        return negotiate(opened.entry, host: host)
    }
}

extension OyStatus {
    /// A defined code with a real message (not "unknown error code").
    @_spi(Conformance) public var isDocumented: Bool { isDefined && message != "unknown error code" }
}
