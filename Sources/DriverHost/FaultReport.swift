import CSystemShims
import DriverFile
import Foundation
import Glibc

/// file:line for offsets into an object file, where something can tell:
/// the conformance suite and the CLI run addr2line over the driver's debug
/// information; the Kernel names functions only.
public typealias SourceLines = @Sendable (_ object: String, _ offsets: [UInt64]) -> [UInt64: String]

/// What a process that died of a signal left on its standard error (see
/// `oy_shim_install_crash_reporter`): the signal, the faulting address and
/// the faulting thread's frames, symbolized in another process. The hang
/// reports (`oy_shim_report_hangs`, `oy_shim_collect_hangs`) share its frames.
public struct CrashReport: Sendable {
    public struct Frame: Sendable {
        let pc: UInt64
        let base: UInt64
        let object: String
    }

    /// Where a memory fault was: an address, or none the kernel says (a
    /// general protection fault, as from a non-canonical pointer: si_code
    /// SI_KERNEL), with whether a register then held the poison word a
    /// completed request or frame is filled with.
    enum Place: Sendable, Equatable {
        case address(UInt64)
        case nonCanonical(poisonInRegister: Bool)
    }

    let signal: Int32
    let place: Place
    /// The address lies in memory the driver freed and the host held back
    /// inaccessible (dma_free'd pages under the verifier).
    let inFreedMemory: Bool
    let frames: [Frame]

    public static func parse(_ text: String) -> CrashReport? {
        var header: [Substring]?
        var frames: [Frame] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 5)
            if fields.first == "\u{1}oycrash", fields.count >= 3 {
                header = fields
            } else if header != nil, let frame = frame(line) {
                frames.append(frame)
            }
        }
        guard let header, let signal = Int32(header[1]) else { return nil }
        let place: Place = header.count > 3 && Int32(header[3]) == Self.siKernel
            ? .nonCanonical(poisonInRegister: header.count > 4 && header[4] == "1") : .address(hex(header[2]) ?? 0)
        return CrashReport(signal: signal, place: place, inFreedMemory: header.count > 5 && header[5] == "1", frames: frames)
    }

    /// si_code of a fault the kernel raised itself (SI_KERNEL).
    static let siKernel: Int32 = 0x80

    private static func hex(_ text: Substring) -> UInt64? { UInt64(text.dropFirst(2), radix: 16) }

    static func signalName(_ signal: Int32) -> String {
        [4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV"][signal] ?? "signal \(signal)"
    }

    /// One line per frame, innermost first: function+offset and, where the
    /// driver has debug information and addr2line is installed, file:line;
    /// `object+0xoffset` for code without symbols.
    func symbolized(sources: SourceLines?) -> [String] { Self.symbolize(frames, sources: sources) }

    /// The threads a worker found inside driver callbacks when its check ran
    /// out of time (see `oy_shim_report_hangs`): each callback's name and
    /// that thread's frames, innermost first.
    static func hangs(in text: String) -> [(callback: String, frames: [Frame])] {
        var hangs: [(callback: String, frames: [Frame])] = []
        var current: (callback: String, frames: [Frame])?
        for line in text.split(separator: "\n") {
            if line.hasPrefix("\u{1}oyhang-end") {
                if let done = current { hangs.append(done) }
                current = nil
            } else if line.hasPrefix("\u{1}oyhang ") {
                current = (String(line.dropFirst("\u{1}oyhang ".count)), [])
            } else if current != nil, let frame = frame(line) {
                current?.frames.append(frame)
            }
        }
        return hangs
    }

    private static func frame(_ line: Substring) -> Frame? {
        let fields = line.split(separator: " ", maxSplits: 3)
        guard fields.first == "\u{1}oyframe", fields.count >= 4, let pc = hex(fields[1]), let base = hex(fields[2]) else { return nil }
        return Frame(pc: pc, base: base, object: String(fields[3]))
    }

    static func symbolize(_ frames: [Frame], sources lookup: SourceLines?) -> [String] {
        var lines: [String] = []
        var sources: [String: [UInt64: String]] = [:]
        for (object, offsets) in Dictionary(grouping: frames, by: \.object).mapValues({ $0.map { $0.pc &- $0.base } }) where object.hasPrefix("/") {
            sources[object] = lookup?(object, offsets)
        }
        var images: [String: ELFImage] = [:]
        for (i, frame) in frames.enumerated() {
            let offset = frame.pc &- frame.base
            let name = URL(fileURLWithPath: frame.object).lastPathComponent
            var text = "#\(i) "
            if frame.object.hasPrefix("/") {
                if images[frame.object] == nil { images[frame.object] = try? ELFImage(path: frame.object) }
                // A return address points after the call: look up the call.
                let lookup = i == 0 ? offset : offset &- 1
                if let function = images[frame.object]?.function(containing: lookup) {
                    text += "\(Self.demangled(function.name))+0x\(String(function.offset + (offset - lookup), radix: 16)) "
                }
            }
            text += "(\(name)+0x\(String(offset, radix: 16)))"
            if let source = sources[frame.object]?[offset] { text += " at \(source)" }
            lines.append(text)
        }
        return lines
    }

    /// A Swift symbol in readable form (the host's own frames); others as is.
    static func demangled(_ name: String) -> String {
        guard name.hasPrefix("$s") || name.hasPrefix("_$s") else { return name }
        return name.withCString { mangled in
            guard let readable = swift_demangle(mangled, strlen(mangled), nil, nil, 0) else { return name }
            defer { free(readable) }
            return String(cString: readable)
        }
    }
}

/// How driver code in a process ended badly, in words a vendor can act on:
/// what happened and where, from what the process left on its standard
/// error (the crash reporter's or the hang reports' lines). The conformance
/// suite words its crash and timeout verdicts with it, `oyako driver call`
/// its errors.
public struct DriverFault: Sendable {
    /// "died with SIGSEGV at address 0x10 in my_read+0x12 (…) at mydriver.c:81".
    public let message: String
    /// The faulting or waiting thread's frames, innermost first.
    public let backtrace: [String]
    /// Where it happened: "in my_read+0x12 (mydriver.so+0x1234) at
    /// mydriver.c:81" (the first frame in the driver's own code when it is
    /// known); empty without frames.
    public let location: String

    /// A process that died of `signal`; its place is the first frame in
    /// `driver`'s own code when there is one (a crash inside memcpy is the
    /// driver's call of it).
    public static func crash(signal: Int32, stderr: String, driver: String? = nil, sources: SourceLines? = nil) -> DriverFault {
        let name = CrashReport.signalName(signal)
        guard let report = CrashReport.parse(stderr) else {
            return DriverFault(message: "died with \(name) and left no backtrace (killed from outside, or its stack was gone)", backtrace: [], location: "")
        }
        let frames = report.symbolized(sources: sources)
        var fault = "", cause = ""
        switch report.place {
        case _ where report.signal != 11 && report.signal != 7: break
        case .address(let address):
            fault = " at address 0x\(String(address, radix: 16))"
            if report.signal == 11 && BorrowedPool.contains(address) {
                cause = "; that is memory the host lent for one call (a borrowed argument: probe's device info, a control call's string), used after the call returned: copy what you need during the call"
            } else if report.signal == 11 && report.inFreedMemory {
                cause = "; that is DMA memory the driver had freed with dma_free, used after it was freed (a ring or buffer the interrupt handler, a timer or the driver's own code still reaches): "
                    + "stop the device and unhook its interrupt before freeing what they use"
            }
        case .nonCanonical(let poisonInRegister):
            fault = " at a non-canonical address (the kernel does not say which)"
            if poisonInRegister {
                cause = "; a register held 0xa5a5a5a5a5a5a5a5, what the host fills a block request or frame with once the driver completes it: likely a pointer read from one after complete() or tx_complete(), when it is the host's again"
            }
        }
        let location = place(frames, preferring: driver.map { "(\(URL(fileURLWithPath: $0).lastPathComponent)+0x" })
        return DriverFault(message: "died with \(name)\(fault)\(location.isEmpty ? "" : " " + location)\(cause)", backtrace: frames, location: location)
    }

    /// A process stopped for taking too long: which driver callbacks had
    /// not returned, and where the first one's thread was (in the driver's
    /// own code when it is there). Nil when no callback was running.
    /// `driverFramesOnly`: the backtrace keeps only the driver's frames, and
    /// no other object's symbols are read (a debug build of the host's own
    /// executable takes seconds).
    /// `ownThreadsOnly`: leave out the threads with no frame in the driver
    /// (in a process that runs several drivers, the others' callbacks).
    public static func hang(stderr: String, driver: String, sources: SourceLines? = nil, driverFramesOnly: Bool = false,
                            ownThreadsOnly: Bool = false) -> DriverFault? {
        let name = URL(fileURLWithPath: driver).lastPathComponent
        let hangs = CrashReport.hangs(in: stderr).filter { hang in
            !ownThreadsOnly || hang.frames.contains { URL(fileURLWithPath: $0.object).lastPathComponent == name }
        }
        guard let first = hangs.first else { return nil }
        let ownFrames = first.frames.filter { URL(fileURLWithPath: $0.object).lastPathComponent == name }
        let frames = CrashReport.symbolize(driverFramesOnly ? ownFrames : first.frames, sources: sources)
        let module = "(\(name)+0x"
        let others = hangs.dropFirst().map(\.callback)
        let location = place(frames, preferring: module)
        return DriverFault(message: "the driver's \(first.callback) did not return (its thread is\(location.isEmpty ? "" : " " + location)"
                               + (others.isEmpty ? "" : "; also running: \(others.joined(separator: ", "))") + ")",
                           backtrace: frames, location: location)
    }

    /// Where the threads of this process inside driver callbacks are now:
    /// their hang reports (see `oy_shim_collect_hangs`), collected into a
    /// memfd (a signal handler's writes must not block), at most `limit`
    /// bytes; empty when no thread is inside a callback. `since`: only
    /// threads inside their callback at least that long.
    public static func collectHangReports(since: Duration = .zero, limit: Int = 64 << 10, timeoutMilliseconds: Int32 = 500) -> [UInt8] {
        let fd = oy_shim_memfd_create("oyako-hang-reports")
        guard fd >= 0 else { return [] }
        defer { _ = close(fd) }
        _ = oy_shim_collect_hangs(fd, timeoutMilliseconds, since.wholeNanoseconds)
        var text = [UInt8](repeating: 0, count: limit)
        let length = max(0, pread(fd, &text, limit, 0))
        return Array(text.prefix(length))
    }

    /// "in FUNCTION+OFFSET (…)": the first frame that names `preferring`,
    /// else the innermost one; empty without frames.
    private static func place(_ frames: [String], preferring module: String? = nil) -> String {
        let frame = module.flatMap { m in frames.first { $0.contains(m) } } ?? frames.first
        return frame.map { "in \($0.drop { $0 != " " }.dropFirst())" } ?? ""
    }
}

/// The Swift runtime's demangler (exported by libswiftCore).
@_silgen_name("swift_demangle")
private func swift_demangle(_ mangled: UnsafePointer<CChar>?, _ length: Int, _ output: UnsafeMutablePointer<CChar>?,
                            _ outputLength: UnsafeMutablePointer<Int>?, _ flags: UInt32) -> UnsafeMutablePointer<CChar>?

extension Duration {
    /// Whole nanoseconds, 0 for a negative duration: what the shim's and a
    /// driver host's line's u64 ages take.
    public var wholeNanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0, attoseconds >= 0 else { return 0 }
        return UInt64(seconds) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
    }
}
