import CFFIShims
import COyakoSDK
import Foundation

/// A type in the control-method notation (oyako/control.h).
public enum ControlType: String, Sendable, CaseIterable {
    case void, bool, i8, i16, i32, i64, u8, u16, u32, u64, f32, f64, str

    /// How libffi passes the type, and values at the edges of its range.
    private var traits: (ffi: UInt32, boundaries: [String]) {
        switch self {
        case .void: (OY_FFI_VOID.rawValue, [])
        case .bool: (OY_FFI_BOOL.rawValue, ["false", "true"])
        case .i8: (OY_FFI_I8.rawValue, ["\(Int8.min)", "-1", "0", "1", "\(Int8.max)"])
        case .i16: (OY_FFI_I16.rawValue, ["\(Int16.min)", "-1", "0", "\(Int16.max)"])
        case .i32: (OY_FFI_I32.rawValue, ["\(Int32.min)", "-1", "0", "1", "\(Int32.max)"])
        case .i64: (OY_FFI_I64.rawValue, ["\(Int64.min)", "-1", "0", "\(Int64.max)"])
        case .u8: (OY_FFI_U8.rawValue, ["0", "1", "\(UInt8.max)"])
        case .u16: (OY_FFI_U16.rawValue, ["0", "1", "\(UInt16.max)"])
        case .u32: (OY_FFI_U32.rawValue, ["0", "1", "\(UInt32.max)"])
        case .u64: (OY_FFI_U64.rawValue, ["0", "1", "\(UInt64.max)"])
        case .f32: (OY_FFI_F32.rawValue, ["0", "-0", "\(Float.leastNonzeroMagnitude)", "\(Float.greatestFiniteMagnitude)", "-1"])
        case .f64: (OY_FFI_F64.rawValue, ["0", "-0", "1e-300", "1e300", "-1"])
        case .str: (OY_FFI_POINTER.rawValue, ["", "x", String(repeating: "A", count: 4096)])
        }
    }

    var ffiKind: Int32 { Int32(traits.ffi) }

    /// Values at the edges of the type, for boundary-value calls.
    public var boundaryValues: [String] { traits.boundaries }
}

/// A parsed signature: RET(ARG,...).
public struct ControlSignature: Sendable, Equatable, CustomStringConvertible {
    public let result: ControlType
    public let arguments: [ControlType]

    public struct Malformed: Error, CustomStringConvertible, Sendable {
        public let signature: String
        public let reason: String
        public var description: String { "signature \"\(signature)\" is malformed: \(reason)" }
    }

    public init(parsing text: String) throws(Malformed) {
        guard let open = text.firstIndex(of: "("), text.hasSuffix(")") else {
            throw Malformed(signature: text, reason: "expected RET(ARG,...)")
        }
        let resultName = String(text[..<open])
        guard let result = ControlType(rawValue: resultName) else {
            throw Malformed(signature: text, reason: "unknown return type \"\(resultName)\"")
        }
        let inner = text[text.index(after: open)..<text.index(before: text.endIndex)]
        var arguments: [ControlType] = []
        if !inner.isEmpty {
            for part in inner.split(separator: ",", omittingEmptySubsequences: false) {
                guard let type = ControlType(rawValue: String(part)), type != .void else {
                    throw Malformed(signature: text, reason: "unknown or void argument type \"\(part)\"")
                }
                arguments.append(type)
            }
        }
        guard arguments.count <= 16 else { throw Malformed(signature: text, reason: "more than 16 arguments") }
        self.result = result
        self.arguments = arguments
    }

    public var description: String { "\(result.rawValue)(\(arguments.map(\.rawValue).joined(separator: ",")))" }
}

/// One control method a driver instance publishes.
public struct ControlMethod: Sendable {
    public let name: String
    public let signatureText: String
    public let description: String
    /// Nil when the declared signature does not parse.
    public let signature: ControlSignature?
    public let signatureProblem: String?
    let function: oy_control_fn?

    /// One line of a listing: "set_baud i32(u32)  Set the line rate", and
    /// the signature's problem in brackets when it has one.
    public var listing: String { "\(name) \(signatureText)  \(description)\(signatureProblem.map { "  [\($0)]" } ?? "")" }
}

/// Why a control call was refused or failed.
public struct ControlCallError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
    public init(message: String) { self.message = message }
}

/// What a control call answered, as people read it: an i32 result that is
/// a defined error code gets its name ("-11 (OY_E_RANGE: …)").
public func readableControlResult(_ result: String) -> String {
    guard let code = Int32(result), code < 0, OyStatus(code).isDefined else { return result }
    return "\(result) (\(OyStatus(code)))"
}

extension DriverInstance {
    /// Calls `method` (nil: lists the methods, one per line; a driver
    /// without any says so) and answers as `oyako driver call` prints it.
    public func controlAnswer(_ method: String?, arguments: [String]) throws(ControlCallError) -> String {
        guard let method else {
            let methods = try controlMethods()
            return methods.isEmpty ? "\(library.name) has no control methods" : methods.map(\.listing).joined(separator: "\n")
        }
        return readableControlResult(try callControl(method, arguments: arguments))
    }

    /// The control methods the instance publishes ("oyako.control/1"), or
    /// an empty list. The table is the driver's memory, read without
    /// trusting it: sizes and counts are checked before anything else is
    /// read, and an entry or string that is not readable (a method_count
    /// larger than the array) is an error, not a crash of the host.
    public func controlMethods() throws(ControlCallError) -> [ControlMethod] {
        guard let raw = driverExtension(OY_CONTROL_EXTENSION) else { return [] }
        guard let table = DriverMemory.load(raw, as: oy_control_table.self) else {
            throw ControlCallError(message: "the control table get_extension returned is not readable memory")
        }
        guard table.struct_size >= UInt32(MemoryLayout<oy_control_table>.size) else {
            throw ControlCallError(message: "control table struct_size \(table.struct_size) is smaller than oy_control_table v1")
        }
        guard table.method_count <= 256, table.method_count == 0 || table.methods != nil else {
            throw ControlCallError(message: "control table claims \(table.method_count) methods")
        }
        let count = Int(table.method_count), entrySize = MemoryLayout<oy_control_method>.size
        return try (0..<count).map { i throws(ControlCallError) -> ControlMethod in
            let beyond = "is method_count (\(count)) larger than the array?"
            guard let m = DriverMemory.load(UnsafeRawPointer(table.methods! + i), as: oy_control_method.self) else {
                throw ControlCallError(message: "method \(i) of the control table is not readable memory: \(beyond)")
            }
            // What follows the last entry is whatever the driver's data holds.
            guard m.struct_size >= UInt32(entrySize) else {
                throw ControlCallError(message: "method \(i) of the control table has struct_size \(m.struct_size), smaller than oy_control_method v1 (\(entrySize)): \(beyond)")
            }
            return try Self.method(m, index: i)
        }
    }

    /// One entry of a control table, its strings read without trusting them.
    private static func method(_ m: oy_control_method, index: Int) throws(ControlCallError) -> ControlMethod {
        func text(_ pointer: UnsafePointer<CChar>?, _ what: String) throws(ControlCallError) -> String {
            switch DriverMemory.string(pointer) {
            case .null: return ""
            case .string(let text): return text
            case .unreadable: throw ControlCallError(message: "the \(what) of method \(index) of the control table is not readable memory")
            case .unterminated(_): throw ControlCallError(message: "the \(what) of method \(index) of the control table has no NUL in its first 4096 bytes")
            }
        }
        let name = try text(m.name, "name"), signatureText = try text(m.signature, "signature"), summary = try text(m.description, "description")
        var parsed: ControlSignature?
        var problem: String?
        do {
            parsed = try ControlSignature(parsing: signatureText)
        } catch {
            problem = error.description
        }
        if m.function == nil { problem = "method has a NULL function" }
        if m.name == nil { problem = "method has no name" }
        return ControlMethod(name: name, signatureText: signatureText, description: summary, signature: parsed, signatureProblem: problem, function: m.function)
    }

    /// Calls `name` with `arguments` given as text, checked against the
    /// declared signature before the driver runs; returns the result as text.
    /// A detached instance takes no calls: its driver may have freed it, or
    /// been unloaded. A call under way holds off the instance's detach and
    /// the library's unload until it returns.
    public func callControl(_ name: String, arguments: [String]) throws(ControlCallError) -> String {
        let result = try library.counted { () throws(ControlCallError) -> String? in
            try duringControlCall { () throws(ControlCallError) -> String in try callAttached(name, arguments: arguments) }
        }
        guard let result else {
            throw ControlCallError(message: "\(library.name) is detached from \(device.info.location); call the driver the device has now")
        }
        return result
    }

    private func callAttached(_ name: String, arguments: [String]) throws(ControlCallError) -> String {
        let methods = try controlMethods()
        guard let method = methods.first(where: { $0.name == name }) else {
            let known = methods.map { "\($0.name)(\($0.signatureText))" }.joined(separator: ", ")
            throw ControlCallError(message: "\(library.name) has no control method \"\(name)\"; it has: \(known.isEmpty ? "none" : known)")
        }
        guard let signature = method.signature, method.signatureProblem == nil, let function = method.function else {
            throw ControlCallError(message: "\(name): \(method.signatureProblem ?? "unusable")")
        }
        guard arguments.count == signature.arguments.count else {
            throw ControlCallError(message: "\(name) takes \(signature.arguments.count) argument(s) (\(signature)), got \(arguments.count)")
        }
        // Argument storage: 8 bytes per scalar, C strings kept alive.
        var storage = [UInt64](repeating: 0, count: signature.arguments.count + 1)
        // Strings are borrowed for the call: revoked (in the conformance
        // suite's special pool) or freed when it returns.
        var strings: [BorrowedPool.CString] = []
        defer { for s in strings { s.release() } }
        storage[0] = UInt64(UInt(bitPattern: instance))
        for (i, (type, text)) in zip(signature.arguments, arguments).enumerated() {
            guard let bits = Self.encode(text, as: type, strings: &strings) else {
                throw ControlCallError(message: "\(name): argument \(i + 1) \"\(text)\" is not a valid \(type.rawValue)")
            }
            storage[i + 1] = bits
        }
        var kinds: [Int32] = [Int32(OY_FFI_POINTER.rawValue)] + signature.arguments.map(\.ffiKind)
        var result: UInt64 = 0
        let status = storage.withUnsafeMutableBufferPointer { slots -> Int32 in
            var values: [UnsafeMutableRawPointer?] = (0..<slots.count).map { UnsafeMutableRawPointer(slots.baseAddress! + $0) }
            return library.callDriver("control method") {
                oy_ffi_invoke(function, signature.result.ffiKind, UInt32(kinds.count), &kinds, &values, &result)
            }
        }
        guard status == 0 else { throw ControlCallError(message: "\(name): libffi cannot describe \(signature)") }
        return Self.decode(result, as: signature.result)
    }

    /// Text to the 8-byte slot libffi reads (little-endian, low bytes).
    static func encode(_ text: String, as type: ControlType, strings: inout [BorrowedPool.CString]) -> UInt64? {
        switch type {
        case .void: return nil
        case .bool:
            switch text.lowercased() {
            case "true", "1", "yes": return 1
            case "false", "0", "no": return 0
            default: return nil
            }
        case .i8: return Int8(text).map { UInt64(UInt8(bitPattern: $0)) }
        case .i16: return Int16(text).map { UInt64(UInt16(bitPattern: $0)) }
        case .i32: return Int32(text).map { UInt64(UInt32(bitPattern: $0)) }
        case .i64: return Int64(text).map { UInt64(bitPattern: $0) }
        case .u8: return UInt8(text).map(UInt64.init)
        case .u16: return UInt16(text).map(UInt64.init)
        case .u32: return UInt32(text).map(UInt64.init)
        case .u64: return UInt64(text)
        case .f32: return finite(text, as: Float.self).map { UInt64($0.bitPattern) }
        case .f64: return finite(text, as: Double.self).map { $0.bitPattern }
        case .str:
            guard let copy = BorrowedPool.lend(text) else { return nil }
            strings.append(copy)
            return UInt64(UInt(bitPattern: copy.pointer))
        }
    }

    /// A float written as text; nil for a number too large for the type,
    /// which would arrive as infinity ("1e40" for an f32). Infinity and NaN
    /// written as such pass.
    static func finite<F: BinaryFloatingPoint & LosslessStringConvertible>(_ text: String, as type: F.Type) -> F? {
        guard let value = F(text) else { return nil }
        let unsigned = text.lowercased().drop { $0 == "+" || $0 == "-" }
        return value.isInfinite && unsigned != "inf" && unsigned != "infinity" ? nil : value
    }

    static func decode(_ bits: UInt64, as type: ControlType) -> String {
        switch type {
        case .void: return ""
        case .bool: return bits & 0xFF != 0 ? "true" : "false"
        case .i8: return "\(Int8(bitPattern: UInt8(truncatingIfNeeded: bits)))"
        case .i16: return "\(Int16(bitPattern: UInt16(truncatingIfNeeded: bits)))"
        case .i32: return "\(Int32(bitPattern: UInt32(truncatingIfNeeded: bits)))"
        case .i64: return "\(Int64(bitPattern: bits))"
        case .u8: return "\(UInt8(truncatingIfNeeded: bits))"
        case .u16: return "\(UInt16(truncatingIfNeeded: bits))"
        case .u32: return "\(UInt32(truncatingIfNeeded: bits))"
        case .u64: return "\(bits)"
        case .f32: return "\(Float(bitPattern: UInt32(truncatingIfNeeded: bits)))"
        case .f64: return "\(Double(bitPattern: bits))"
        case .str:
            guard let pointer = UnsafePointer<CChar>(bitPattern: UInt(bits)) else { return "(null)" }
            return String(cString: pointer)
        }
    }
}
