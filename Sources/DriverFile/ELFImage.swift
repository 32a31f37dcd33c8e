import Foundation
import Glibc

/// What an ELF file says about itself, read without loading or running it.
///
/// Enough of ELF64 (little-endian) to judge a driver: type and machine, the
/// dynamic symbol table (exports and imports), needed libraries, text
/// relocations, the stack's executable bit, and named sections.
public struct ELFImage: Sendable {
    public struct Symbol: Sendable, Hashable {
        public let name: String
        public let isFunction: Bool
        public let isWeak: Bool
    }

    public let path: String
    public let machine: UInt16
    public let isSharedObject: Bool
    /// Defined, globally visible dynamic symbols.
    public let exportedSymbols: [Symbol]
    /// Undefined dynamic symbols (imports), without version suffixes.
    public let importedSymbols: [Symbol]
    public let neededLibraries: [String]
    public let hasTextRelocations: Bool
    /// True when PT_GNU_STACK is missing or asks for an executable stack.
    public let hasExecutableStack: Bool
    /// Section name -> (offset, size) in `data`; bytes are sliced on demand.
    private let sections: [String: Range<Int>]
    /// The file's bytes, as read once (DriverFile hashes these, not a second read).
    let data: Data

    public static let hostMachine: UInt16 = {
        #if arch(x86_64)
        return 62
        #elseif arch(arm64)
        return 183
        #elseif arch(riscv64)
        return 243
        #else
        return 0
        #endif
    }()

    public static func machineName(_ machine: UInt16) -> String {
        switch machine {
        case 3: return "x86 (32-bit)"
        case 40: return "ARM (32-bit)"
        case 62: return "x86_64"
        case 183: return "aarch64"
        case 243: return "riscv"
        default: return "machine \(machine)"
        }
    }

    public enum ParseError: Error, CustomStringConvertible, Sendable {
        case unreadable(path: String, reason: String)
        case notELF(path: String)
        case unsupported(path: String, reason: String)
        case malformed(path: String, reason: String)

        public var description: String {
            switch self {
            case .unreadable(let path, let reason): return "\(path): cannot read: \(reason)"
            case .notELF(let path): return "\(path): not an ELF file (no \\x7fELF magic); a driver must be a shared object built for this machine"
            case .unsupported(let path, let reason): return "\(path): unsupported ELF file: \(reason)"
            case .malformed(let path, let reason): return "\(path): malformed ELF file: \(reason)"
            }
        }
    }

    /// The bytes of the section named `name`, if present.
    public func section(named name: String) -> Data? {
        sections[name].map { data.subdata(in: (data.startIndex + $0.lowerBound)..<(data.startIndex + $0.upperBound)) }
    }

    /// The function whose code holds `address` (an offset from the object's
    /// load base), from the full symbol table (.symtab, which has the static
    /// functions too) or else the dynamic one; nil when neither covers it.
    /// Read on demand: loading a driver never pays for it.
    public func function(containing address: UInt64) -> (name: String, offset: UInt64)? {
        for (table, names) in [(".symtab", ".strtab"), (".dynsym", ".dynstr")] {
            guard let symbols = sections[table], let strings = sections[names] else { continue }
            let r = Reader(bytes: [UInt8](data))
            var best: (name: String, offset: UInt64)?
            var index = symbols.lowerBound + 24
            while index + 24 <= symbols.upperBound {
                let info = r.u8(index + 4), value = r.u64(index + 8), size = r.u64(index + 16)
                if info & 0xF == 2, value <= address, address < value + max(size, 1),
                    let name = r.cString(strings.lowerBound + Int(r.u32(index)), limit: strings.upperBound), !name.isEmpty
                {
                    if best == nil || address - value < best!.offset { best = (name, address - value) }
                }
                index += 24
            }
            if let best { return best }
        }
        return nil
    }

    public init(path: String) throws(ParseError) {
        try self.init(path: path, data: try Self.contents(of: path))
    }

    /// The largest file taken as a driver: far past any real one (they are
    /// kilobytes), and a bound on what reading one may cost.
    public static let maxFileSize = 256 << 20

    /// A driver file's bytes. Only a regular file is read: a FIFO or a
    /// device would block the reader or never end. The reason for a refusal
    /// is the system's, not Foundation's paraphrase of it.
    static func contents(of path: String) throws(ParseError) -> Data {
        // O_NONBLOCK: opening a FIFO with no writer must not hang.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw .unreadable(path: path, reason: "not a regular file (a folder, device, pipe or socket); give the driver's .so")
        }
        guard info.st_size <= maxFileSize else {
            throw .unreadable(path: path, reason: "\(info.st_size) bytes, more than any driver (\(maxFileSize >> 20) MiB at most)")
        }
        var data = Data(count: Int(info.st_size))
        var filled = 0
        let failure: Int32? = data.withUnsafeMutableBytes { raw -> Int32? in
            while filled < raw.count {
                let n = pread(fd, raw.baseAddress! + filled, raw.count - filled, off_t(filled))
                if n < 0 && errno == EINTR { continue }
                if n < 0 { return errno }
                if n == 0 { break }  // the file shrank meanwhile: what is there is parsed
                filled += n
            }
            return nil
        }
        if let failure { throw .unreadable(path: path, reason: String(cString: strerror(failure))) }
        return data.prefix(filled)
    }

    public init(path: String, data: Data) throws(ParseError) {
        self.path = path
        self.data = data
        let r = Reader(bytes: [UInt8](data))
        guard data.count >= 4, r.u32(0) == 0x464C_457F else { throw .notELF(path: path) }
        guard data.count >= 64 else { throw .malformed(path: path, reason: "the ELF header is cut short (\(data.count) of its 64 bytes); the file is truncated") }
        guard r.u8(4) == 2 else { throw .unsupported(path: path, reason: "32-bit ELF; drivers must be 64-bit") }
        guard r.u8(5) == 1 else { throw .unsupported(path: path, reason: "big-endian ELF") }
        let type = r.u16(16)
        machine = r.u16(18)
        isSharedObject = type == 3
        let phoff = r.offset(32), shoff = r.offset(40)
        let phentsize = Int(r.u16(54)), phnum = Int(r.u16(56))
        let shentsize = Int(r.u16(58)), shnum = Int(r.u16(60)), shstrndx = Int(r.u16(62))

        // Program headers: executable stack.
        var stackSeen = false, stackExec = true
        if phnum > 0 {
            guard phentsize >= 56, r.fits(phoff, phentsize * phnum) else { throw .malformed(path: path, reason: "program headers out of bounds") }
            for i in 0..<phnum where r.u32(phoff + i * phentsize) == 0x6474_E551 {
                stackSeen = true
                stackExec = r.u32(phoff + i * phentsize + 4) & 1 != 0
            }
        }
        hasExecutableStack = !stackSeen || stackExec

        // Section headers.
        var raw: [Section] = []
        if shnum > 0 {
            guard shentsize >= 64, r.fits(shoff, shentsize * shnum), shstrndx < shnum else { throw .malformed(path: path, reason: "section headers out of bounds") }
            for i in 0..<shnum {
                let base = shoff + i * shentsize
                let type = r.u32(base + 4)
                let offset = r.offset(base + 24), size = r.offset(base + 32)
                // SHT_NOBITS (8) occupies no file bytes.
                guard type == 8 || r.fits(offset, size) else { throw .malformed(path: path, reason: "section \(i) out of bounds") }
                raw.append(Section(type: type, offset: offset, size: type == 8 ? 0 : size, link: Int(r.u32(base + 40)), entsize: max(0, r.offset(base + 56))))
                raw[i].name = String(r.u32(base))  // resolved below
            }
            let names = raw[shstrndx]
            for i in raw.indices {
                let nameOffset = Int(raw[i].name) ?? 0
                raw[i].name = r.cString(names.offset + nameOffset, limit: names.offset + names.size) ?? ""
            }
        }
        var sections: [String: Range<Int>] = [:]
        for s in raw where !s.name.isEmpty { sections[s.name] = s.offset..<(s.offset + s.size) }
        self.sections = sections

        // Dynamic symbols.
        (exportedSymbols, importedSymbols) = try Self.dynamicSymbols(r, raw, path: path)

        // Dynamic section: needed libraries and text relocations.
        (neededLibraries, hasTextRelocations) = Self.dynamicSection(r, raw)
    }

    /// A section header, name resolved.
    private struct Section { var name = ""; var type: UInt32; var offset: Int; var size: Int; var link: Int; var entsize: Int }

    /// Defined global (exported) and undefined (imported) dynamic symbols.
    private static func dynamicSymbols(_ r: Reader, _ raw: [Section], path: String) throws(ParseError) -> ([Symbol], [Symbol]) {
        var exported: [Symbol] = [], imported: [Symbol] = []
        if let dynsym = raw.first(where: { $0.type == 11 }) {
            guard dynsym.link < raw.count else { throw .malformed(path: path, reason: ".dynsym has no string table") }
            let strtab = raw[dynsym.link]
            let count = dynsym.entsize > 0 ? dynsym.size / dynsym.entsize : 0
            for i in 1..<max(count, 1) {
                let base = dynsym.offset + i * dynsym.entsize
                let name = r.cString(strtab.offset + Int(r.u32(base)), limit: strtab.offset + strtab.size) ?? ""
                let info = r.u8(base + 4), other = r.u8(base + 5), shndx = r.u16(base + 6)
                let binding = info >> 4, symType = info & 0xF, visibility = other & 3
                guard !name.isEmpty, binding == 1 || binding == 2 || binding == 10 else { continue }
                let symbol = Symbol(name: name, isFunction: symType == 2, isWeak: binding == 2)
                if shndx == 0 {
                    imported.append(symbol)
                } else if visibility == 0 || visibility == 3, symType != 3, symType != 4 {
                    exported.append(symbol)
                }
            }
        }
        return (exported, imported)
    }

    /// DT_NEEDED libraries, and whether the object needs text relocations.
    private static func dynamicSection(_ r: Reader, _ raw: [Section]) -> ([String], Bool) {
        var needed: [String] = [], textrel = false
        if let dynamic = raw.first(where: { $0.type == 6 }), dynamic.link < raw.count {
            let strtab = raw[dynamic.link]
            var offset = dynamic.offset
            while offset + 16 <= dynamic.offset + dynamic.size {
                let tag = r.u64(offset), value = r.u64(offset + 8)
                if tag == 0 { break }
                if tag == 1, value < UInt64(strtab.size), let name = r.cString(strtab.offset + Int(value), limit: strtab.offset + strtab.size) { needed.append(name) }
                if tag == 22 || (tag == 30 && value & 4 != 0) { textrel = true }
                offset += 16
            }
        }
        return (needed, textrel)
    }

    /// Bounds-checked little-endian reads; out-of-range reads return 0.
    /// Bounds-checked little-endian reads. An array, not `Data`: `Data`'s
    /// per-byte subscript dominated driver load time in perf.
    private struct Reader {
        let bytes: [UInt8]
        func fits(_ offset: Int, _ length: Int) -> Bool { offset >= 0 && length >= 0 && offset <= bytes.count && length <= bytes.count - offset }
        func u8(_ o: Int) -> UInt8 { fits(o, 1) ? bytes[o] : 0 }
        func u16(_ o: Int) -> UInt16 { UInt16(u8(o)) | UInt16(u8(o + 1)) << 8 }
        func u32(_ o: Int) -> UInt32 { UInt32(u16(o)) | UInt32(u16(o + 2)) << 16 }
        func u64(_ o: Int) -> UInt64 { UInt64(u32(o)) | UInt64(u32(o + 4)) << 32 }
        /// A file offset or size: -1 (which nothing `fits`) past Int's range.
        func offset(_ o: Int) -> Int { Int(exactly: u64(o)) ?? -1 }
        func cString(_ o: Int, limit: Int) -> String? {
            guard o >= 0, o < min(limit, bytes.count) else { return nil }
            var end = o
            while end < min(limit, bytes.count), bytes[end] != 0 { end += 1 }
            return String(decoding: bytes[o..<end], as: UTF8.self)
        }
    }
}
