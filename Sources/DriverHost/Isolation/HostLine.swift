import CSystemShims
import Foundation
import Glibc
import Synchronization

/// What the Kernel and a driver-host process say to each other over one
/// SOCK_SEQPACKET socket. Every message is [kind u32][sequence u32][body],
/// little-endian; a reply has its request's sequence and kind | `replyBit`.
/// File descriptors (the machine's memory, interrupt eventfds) travel with
/// the message that needs them (SCM_RIGHTS).
public enum HostMessage: UInt32, Sendable {
    // The Kernel asks the host.
    case attach = 1, submit, detach
    /// Up to a length of entropy from the driver's source.
    case rngRead
    /// Output for the serial port (what fits); new line settings.
    case serialWrite, serialSetLine
    /// A frame to transmit (posted; completed by netTxComplete); the
    /// receive filter; the driver's counters.
    case netTransmit, netSetFilter, netStatistics
    /// Posted; answered by `alive` from the host's request loop, so a host
    /// stuck in a driver call does not answer.
    case heartbeat
    /// Posted, for a verifying Kernel about to give up on a hung check: the
    /// host's threads inside driver callbacks write where they are to its
    /// standard error (see `oy_shim_report_hangs`).
    case reportHangs
    /// A control method of the driver's instance: its name (empty: list
    /// them), the argument count and the arguments, as text.
    case controlCall
    /// Where the host's threads inside driver callbacks are now, answered
    /// from its reader thread: the hang reports as bytes (see
    /// `oy_shim_collect_hangs`), empty when no callback runs.
    case whereStuck
    // The host asks the Kernel (its device, its memory, its registrations).
    case log = 16, configRead, configWrite, mmioRead, mmioWrite, portRead, portWrite
    case dmaAllocate, dmaFree, dmaMap, dmaUnmap
    case hookInterrupt, unhookInterrupt, maskInterrupt, unmaskInterrupt
    case registerDisk, unregisterDisk, complete
    case registerRNG, unregisterRNG
    case registerSerial, unregisterSerial
    /// What the serial driver reports: input, room for output, lost input.
    case serialReceived, serialReady, serialLost
    case registerNetdev, unregisterNetdev
    /// What the NIC driver reports: a frame sent, a frame received, the link.
    case netTxComplete, netReceived, netLink
    /// An ABI violation (or soft-limit warning) the host recorded for the driver.
    case violation
    /// The answer to a heartbeat, with its number.
    case alive
    /// Several completions (disk requests, frames sent) reaped in one run of
    /// the interrupt handler: count, then (kind, tag, status) each.
    case completions
    /// Posted messages one thread made in one run of work (the submits of
    /// one message, one run of an interrupt handler), sent as one: each is
    /// [kind u32][length u32][body]. See `HostLine.batching`.
    case batch = 0x100

    /// Whether a posted message may wait in its thread's batch until the run
    /// ends: the I/O path's messages. Log lines, violations and the rest go
    /// at once, so a host that dies a moment later has said them.
    public var mayWait: Bool {
        switch self {
        case .submit, .netTransmit, .mmioWrite, .portWrite, .dmaUnmap, .maskInterrupt, .unmaskInterrupt,
             .complete, .completions, .netTxComplete, .netReceived, .serialReceived, .serialReady:
            true
        default:
            false
        }
    }

    public static let replyBit: UInt32 = 0x8000_0000
    /// Largest message either side sends.
    public static let maxSize = 64 << 10
}

/// A message's body, built field by field.
public struct WireWriter: Sendable {
    public fileprivate(set) var bytes: [UInt8] = []
    public init() {}
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    public mutating func i32(_ v: Int32) { u32(UInt32(bitPattern: v)) }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    public mutating func string(_ s: String) {
        let utf8 = Array(s.utf8.prefix(8192))
        u32(UInt32(utf8.count))
        bytes += utf8
    }
    /// Bytes as they are: count, then the bytes.
    public mutating func data(_ data: UnsafeRawBufferPointer) {
        u32(UInt32(data.count))
        bytes += data
    }
    /// Serial line settings.
    public mutating func serialLine(_ line: SerialLine) {
        u32(UInt32(clamping: line.baud)); u32(UInt32(clamping: line.dataBits)); u32(UInt32(clamping: line.parity)); u32(UInt32(clamping: line.stopBits))
    }
    /// Runs of machine memory: count, then (offset, length) pairs.
    public mutating func runs(_ runs: [(offset: UInt64, length: Int)]) {
        u32(UInt32(runs.count))
        for run in runs {
            u64(run.offset)
            u64(UInt64(run.length))
        }
    }
}

/// A message's body, read field by field; a short body is an error.
public struct WireReader: Sendable {
    public struct Short: Error, CustomStringConvertible {
        public var description: String { "a message ended before its fields did" }
    }

    let bytes: [UInt8]
    var offset = 0
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public mutating func u32() throws(Short) -> UInt32 {
        guard offset + 4 <= bytes.count else { throw Short() }
        defer { offset += 4 }
        return (0..<4).reduce(0) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) }
    }
    public mutating func i32() throws(Short) -> Int32 { Int32(bitPattern: try u32()) }
    public mutating func u64() throws(Short) -> UInt64 {
        guard offset + 8 <= bytes.count else { throw Short() }
        defer { offset += 8 }
        return (0..<8).reduce(0) { $0 | UInt64(bytes[offset + $1]) << (8 * $1) }
    }
    public mutating func string() throws(Short) -> String {
        let count = Int(try u32())
        guard count <= 8192, offset + count <= bytes.count else { throw Short() }
        defer { offset += count }
        return String(decoding: bytes[offset..<(offset + count)], as: UTF8.self)
    }
    /// Bytes written by `WireWriter.data`, copied to `into` (at most its count).
    public mutating func data(into buffer: UnsafeMutableRawBufferPointer) throws(Short) -> Int {
        let count = Int(try u32())
        guard count <= buffer.count, offset + count <= bytes.count else { throw Short() }
        guard count > 0 else { return 0 }
        defer { offset += count }
        bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: count) }
        return count
    }
    public mutating func serialLine() throws(Short) -> SerialLine {
        SerialLine(baud: Int(try u32()), dataBits: Int(try u32()), parity: Int(try u32()), stopBits: Int(try u32()))
    }
    /// Bytes written by `WireWriter.data`, as an array.
    public mutating func data() throws(Short) -> [UInt8] {
        let count = Int(try u32())
        guard offset + count <= bytes.count else { throw Short() }
        defer { offset += count }
        return Array(bytes[offset..<(offset + count)])
    }
    public mutating func runs() throws(Short) -> [(offset: UInt64, length: Int)] {
        let count = Int(try u32())
        guard count <= 4096 else { throw Short() }
        var runs: [(offset: UInt64, length: Int)] = []
        for _ in 0..<count { runs.append((try u64(), try length())) }
        return runs
    }
    /// A byte count sent as a u64: one that is no Int (the other end is
    /// broken or hostile) is refused like a short message, never trapped on.
    public mutating func length() throws(Short) -> Int {
        let value = try u64()
        guard value <= UInt64(Int.max) else { throw Short() }
        return Int(value)
    }
}

/// One end of the line: requests with replies, one-way messages, and a
/// reader thread that hands replies to their callers and everything else to
/// `received`. When the other end goes away every caller waiting for a reply
/// gets `Closed`, and `closed` runs once.
public final class HostLine: @unchecked Sendable {
    // @unchecked Sendable: `state` is guarded by its Mutex; `socket` is fixed.
    public struct Closed: Error, CustomStringConvertible {
        public let reason: String
        public var description: String { "the driver host's line is closed: \(reason)" }
    }

    /// An incoming request or one-way message.
    public struct Incoming: @unchecked Sendable {
        // @unchecked Sendable: handed from the reader thread to one handler.
        public let kind: UInt32
        public let sequence: UInt32
        public var body: WireReader
        public let fds: [Int32]
    }

    private final class Waiter: @unchecked Sendable {
        // @unchecked Sendable: written once before `done` is signalled.
        let done = DispatchSemaphore(value: 0)
        var reply: (WireReader, [Int32])?
    }

    public let socket: Int32
    private let state = Mutex<(next: UInt32, waiting: [UInt32: Waiter], closed: String?)>((1, [:], nil))

    /// Posted messages held back in `batching` runs, of every thread, in
    /// the order they were made: [kind u32][length u32][body], each.
    private struct Held {
        var framed = WireWriter()
        var count = 0
        var firstKind: UInt32 = 0
    }
    /// What is held, and the right to send: everything this end sends goes
    /// out under this lock, what is held first.
    private let outgoing = Mutex(Held())

    public init(socket: Int32) { self.socket = socket }

    /// Starts the reader thread. `received` gets what one message carried:
    /// one request or posted message, or the posted messages of a batch, in
    /// the order they were made.
    public func start(received: @escaping @Sendable ([Incoming]) -> Void, closed: @escaping @Sendable (String) -> Void) {
        Thread.detachNewThread { [self] in
            oy_shim_name_thread("line reader")  // for ps, perf and gdb
            let reason = readLoop(received)
            let waiters = state.withLock { s -> [Waiter] in
                s.closed = reason
                defer { s.waiting.removeAll() }
                return Array(s.waiting.values)
            }
            // `closed` first: callers that learn of the end from their call
            // find its consequences (a restart begun) already in place.
            closed(reason)
            for waiter in waiters { waiter.done.signal() }
        }
    }

    public var isClosed: Bool { state.withLock { $0.closed != nil } }

    /// Sends a request and waits for its reply.
    public func call(_ kind: HostMessage, _ body: WireWriter = WireWriter(), fds: [Int32] = []) throws(Closed) -> (WireReader, [Int32]) {
        do {
            return try call(kind, body, fds: fds, timeout: nil)
        } catch {
            switch error {
            case .closed(let closed): throw closed
            case .timedOut: throw Closed(reason: "no answer")  // no time limit was set: not reached
            }
        }
    }

    /// Why a request with a time limit got no reply.
    public enum Unanswered: Error {
        case closed(Closed)
        /// No reply within the limit; one that comes later is dropped.
        case timedOut
    }

    /// Sends a request and waits at most `seconds` for its reply.
    public func call(_ kind: HostMessage, _ body: WireWriter = WireWriter(), within seconds: Double) throws(Unanswered) -> (WireReader, [Int32]) {
        try call(kind, body, fds: [], timeout: seconds)
    }

    private func call(_ kind: HostMessage, _ body: WireWriter, fds: [Int32], timeout: Double?) throws(Unanswered) -> (WireReader, [Int32]) {
        let waiter = Waiter()
        let sequence = try state.withLock { s throws(Unanswered) -> UInt32 in
            if let reason = s.closed { throw .closed(Closed(reason: reason)) }
            defer { s.next = s.next &+ 1 == 0 ? 1 : s.next &+ 1 }
            s.waiting[s.next] = waiter
            return s.next
        }
        // What is held goes first: a call sees the writes made before it.
        guard write(kind.rawValue, sequence, body, fds: fds) else {
            _ = state.withLock { $0.waiting.removeValue(forKey: sequence) }
            throw .closed(Closed(reason: "the other end is gone"))
        }
        if let timeout {
            if waiter.done.wait(timeout: .now() + timeout) == .timedOut {
                // Given up, unless the reader took the reply meanwhile: then its signal is on the way.
                guard state.withLock({ $0.waiting.removeValue(forKey: sequence) }) == nil else { throw .timedOut }
                waiter.done.wait()
            }
        } else {
            waiter.done.wait()
        }
        guard let reply = waiter.reply else { throw .closed(Closed(reason: state.withLock { $0.closed } ?? "closed")) }
        return reply
    }

    /// Sends a message that has no reply. False once the line is closed.
    /// Inside `batching` on this thread, an I/O message (`mayWait`) is held
    /// back until the run ends; anything else sends what is held first.
    @discardableResult
    public func post(_ kind: HostMessage, _ body: WireWriter = WireWriter(), fds: [Int32] = []) -> Bool {
        if inRun, fds.isEmpty, kind.mayWait, body.bytes.count + 16 <= HostMessage.maxSize {
            guard !isClosed else { return false }
            return hold(kind.rawValue, body)
        }
        return write(kind.rawValue, 0, body, fds: fds)
    }

    /// Answers `request`.
    @discardableResult
    public func reply(to request: Incoming, _ body: WireWriter = WireWriter(), fds: [Int32] = []) -> Bool {
        write(request.kind | HostMessage.replyBit, request.sequence, body, fds: fds)
    }

    /// Runs `body` with this thread's posted I/O messages to this line held
    /// back and sent together when the run ends: under load one system call
    /// and one wake-up of the other end per run instead of one per request.
    /// Only for work that does not wait on the other end: a submit, an
    /// interrupt handler.
    ///
    /// Held messages keep the order they were made in, across threads: all
    /// threads' runs hold into one queue, and anything sent on the line —
    /// a call, a reply, a message that may not wait, the end of any run —
    /// sends the whole queue first. So the other end sees every message in
    /// the order it was made, as if none had waited, however the driver
    /// orders its threads (a lock, an event, an atomic flag of its own): a
    /// register read sees every register write made before it, on any
    /// thread, as on hardware. (Holding per thread broke this: a UART
    /// driver's interrupt handler filled the FIFO under its lock, and its
    /// write path, taking the lock next, read LSR before those writes had
    /// gone, saw the FIFO empty and overfilled it.)
    public func batching<R>(_ body: () throws -> R) rethrows -> R {
        if inRun { return try body() }
        let outer = oy_shim_batching_line()
        // Another line's run, open further out on this thread, sends first.
        if let outer { Unmanaged<HostLine>.fromOpaque(outer).takeUnretainedValue().sendHeld() }
        oy_shim_set_batching_line(Unmanaged.passUnretained(self).toOpaque())
        defer {
            oy_shim_set_batching_line(outer)
            sendHeld()
        }
        return try body()
    }

    /// Sends what is held on the line of this thread's open run, if any:
    /// the thread is about to wait, and what it waits for may need it.
    public static func sendThisThreadsBatch() {
        guard let raw = oy_shim_batching_line() else { return }
        Unmanaged<HostLine>.fromOpaque(raw).takeUnretainedValue().sendHeld()
    }

    /// This thread is in a `batching` run of this line.
    private var inRun: Bool { oy_shim_batching_line() == Unmanaged.passUnretained(self).toOpaque() }

    private func hold(_ kind: UInt32, _ body: WireWriter) -> Bool {
        outgoing.withLock { held in
            if 8 + held.framed.bytes.count + 8 + body.bytes.count > HostMessage.maxSize, !transmitHeld(&held) { return false }
            if held.count == 0 { held.firstKind = kind }
            held.count += 1
            held.framed.u32(kind)
            held.framed.u32(UInt32(body.bytes.count))
            held.framed.bytes += body.bytes
            return true
        }
    }

    @discardableResult
    private func sendHeld() -> Bool { outgoing.withLock { transmitHeld(&$0) } }

    /// Sends what is held: one message as itself, more as a batch. Under `outgoing`.
    private func transmitHeld(_ held: inout Held) -> Bool {
        guard held.count > 0 else { return true }
        defer {
            held.count = 0
            held.framed.bytes.removeAll(keepingCapacity: true)
        }
        if held.count == 1 { return transmit(held.firstKind, 0, held.framed.bytes[8...], fds: []) }
        return transmit(HostMessage.batch.rawValue, 0, held.framed.bytes[...], fds: [])
    }

    /// Shuts the line down both ways (the reader thread then ends).
    public func shutDown() { _ = Glibc.shutdown(socket, Int32(SHUT_RDWR)) }

    /// Sends a message now, after what is held.
    private func write(_ kind: UInt32, _ sequence: UInt32, _ body: WireWriter, fds: [Int32]) -> Bool {
        outgoing.withLock { held in
            guard transmitHeld(&held) else { return false }
            return transmit(kind, sequence, body.bytes[...], fds: fds)
        }
    }

    /// One message on the socket. Under `outgoing`.
    private func transmit(_ kind: UInt32, _ sequence: UInt32, _ body: ArraySlice<UInt8>, fds: [Int32]) -> Bool {
        var message = WireWriter()
        message.u32(kind)
        message.u32(sequence)
        let bytes = message.bytes + body
        guard bytes.count <= HostMessage.maxSize else { return false }
        return bytes.withUnsafeBytes { raw in
            fds.withUnsafeBufferPointer { oy_shim_send_fds(socket, raw.baseAddress, raw.count, $0.baseAddress, Int32(fds.count)) == raw.count }
        }
    }

    private func readLoop(_ received: @Sendable ([Incoming]) -> Void) -> String {
        var buffer = [UInt8](repeating: 0, count: HostMessage.maxSize)
        var fds = [Int32](repeating: -1, count: 8)
        while true {
            var fdCount: Int32 = 0, truncated: Int32 = 0
            let n = buffer.withUnsafeMutableBytes { raw in
                fds.withUnsafeMutableBufferPointer { oy_shim_recv_fds(socket, raw.baseAddress, raw.count, $0.baseAddress, 8, &fdCount, &truncated) }
            }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return n == 0 ? "the other end closed the line" : "recv failed: \(String(cString: strerror(errno)))" }
            let received_fds = Array(fds.prefix(Int(fdCount)))
            guard n >= 8, truncated == 0 else {
                for fd in received_fds { _ = close(fd) }
                return "a malformed message (\(n) bytes)"
            }
            var header = WireReader(Array(buffer[0..<n]))
            let kind = (try? header.u32()) ?? 0, sequence = (try? header.u32()) ?? 0
            let body = WireReader(Array(buffer[8..<n]))
            if kind & HostMessage.replyBit != 0 {
                let waiter = state.withLock { $0.waiting.removeValue(forKey: sequence) }
                guard let waiter else {
                    for fd in received_fds { _ = close(fd) }
                    continue
                }
                waiter.reply = (body, received_fds)
                waiter.done.signal()
            } else if kind == HostMessage.batch.rawValue {
                guard received_fds.isEmpty, let parts = Self.split(batch: buffer[8..<n]) else {
                    for fd in received_fds { _ = close(fd) }
                    return "a malformed batch of messages (\(n) bytes)"
                }
                received(parts)
            } else {
                received([Incoming(kind: kind, sequence: sequence, body: body, fds: received_fds)])
            }
        }
    }

    /// A batch's posted messages; nil when it is malformed (a part runs
    /// past the end, is a reply, or is a batch itself).
    private static func split(batch: ArraySlice<UInt8>) -> [Incoming]? {
        var reader = WireReader(Array(batch)), parts: [Incoming] = []
        while reader.offset < reader.bytes.count {
            guard let kind = try? reader.u32(), let length = try? reader.u32(), kind & HostMessage.replyBit == 0, kind != HostMessage.batch.rawValue,
                Int(length) <= reader.bytes.count - reader.offset
            else { return nil }
            parts.append(Incoming(kind: kind, sequence: 0, body: WireReader(Array(reader.bytes[reader.offset..<(reader.offset + Int(length))])), fds: []))
            reader.offset += Int(length)
        }
        return parts.isEmpty ? nil : parts
    }
}
