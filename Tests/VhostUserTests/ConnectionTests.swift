import Foundation
import Glibc
import Machine
import Synchronization
import Testing
import VhostUser

/// A back-end serving one end of a socket pair on a thread; the test is the
/// front-end on the other end.
final class ServedPair: @unchecked Sendable {
    let frontEnd: Int32
    private var frontEndOpen = true
    let device = RecordingDevice()
    private let ended = DispatchSemaphore(value: 0)
    private let end = Mutex<VhostUserConnection.End?>(nil)

    init() {
        var ends: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        frontEnd = ends[0]
        let backend = VhostUserBackend(device: device)
        let socket = ends[1]
        Thread.detachNewThread { [self] in
            let why = VhostUserConnection.serve(socket: socket, backend: backend)
            _ = close(socket)
            end.withLock { $0 = why }
            ended.signal()
        }
    }

    /// Why the connection ended (nil if it had not within `timeout`).
    func waitForEnd(timeout: Double = 5) -> VhostUserConnection.End? {
        guard ended.wait(timeout: .now() + timeout) == .success else { return nil }
        return end.withLock { $0 }
    }

    func send(_ message: VhostUserMessage, fds: [Int32] = []) { #expect(VhostUserConnection.send(frontEnd, message, fds: fds)) }

    func sendRaw(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { write(frontEnd, $0.baseAddress, $0.count) } }

    /// Reads one reply (header and payload).
    func reply() -> [UInt8]? {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while out.count < 12 || out.count < 12 + Int(out.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self) }) {
            let n = buffer.withUnsafeMutableBytes { read(frontEnd, $0.baseAddress, $0.count) }
            guard n > 0 else { return nil }
            out += buffer.prefix(n)
        }
        return Array(out.dropFirst(12))
    }

    /// Closes the front-end's end (once: a second close could hit a
    /// descriptor another test's thread has just been given).
    func closeFrontEnd() {
        guard frontEndOpen else { return }
        frontEndOpen = false
        _ = close(frontEnd)
    }

    deinit { closeFrontEnd() }
}

@Suite struct ConnectionTests {
    @Test func aFrontEndSetsUpAQueueOverTheSocketWithDescriptors() throws {
        let pair = ServedPair()
        let memory = try PhysicalMemory(size: 1 << 20)
        pair.send(FrontEnd.message(.getFeatures))
        let features = try #require(pair.reply())
        #expect(features.count == 8)
        pair.send(FrontEnd.message(.setMemTable, FrontEnd.memTable([(BackendTests.ram, 1 << 20, BackendTests.user, 0)])), fds: [memory.fileDescriptor])
        pair.send(FrontEnd.message(.setVringNum, FrontEnd.state(0, 16)))
        pair.send(FrontEnd.message(.setVringAddr, FrontEnd.addresses(0, descriptor: BackendTests.user + 0x1000, used: BackendTests.user + 0x5000, avail: BackendTests.user + 0x3000)))
        let kick = FrontEnd.descriptor()
        defer { _ = close(kick) }
        pair.send(FrontEnd.message(.setVringKick, FrontEnd.u64(0)), fds: [kick])
        pair.send(FrontEnd.message(.getQueueNum))
        #expect(pair.reply() == FrontEnd.u64(2), "the connection is alive after the setup")
        #expect(pair.device.started == [0], "without protocol features a ring starts with its kick descriptor")
        pair.closeFrontEnd()
        #expect(pair.waitForEnd() == .frontEndClosed)
    }

    @Test func aHeaderClaimingAHugePayloadEndsTheConnection() {
        let pair = ServedPair()
        pair.sendRaw(FrontEnd.u32(1) + FrontEnd.u32(1) + FrontEnd.u32(1 << 20))
        #expect(pair.waitForEnd() == .refused(.payloadTooLarge(1 << 20)))
    }

    @Test func aPayloadCutShortEndsTheConnection() {
        let pair = ServedPair()
        pair.sendRaw(FrontEnd.u32(2) + FrontEnd.u32(1) + FrontEnd.u32(8) + [1, 2, 3])
        shutdown(pair.frontEnd, Int32(SHUT_WR))
        #expect(pair.waitForEnd() == .refused(.truncated(expected: 8, got: 3)))
    }

    @Test func tooManyDescriptorsEndTheConnectionAndAreClosed() {
        let pair = ServedPair()
        let probes = (0..<9).map { _ in ClosureProbe() }
        defer { for probe in probes { probe.release() } }
        pair.send(FrontEnd.message(.setOwner), fds: probes.map(\.handed))
        for probe in probes { _ = close(probe.handed) }  // the test's own copies
        #expect(pair.waitForEnd() == .refused(.fileDescriptors(request: "a message", expected: "at most 8", got: 9)))
        let allClosed = probes.allSatisfy { $0.closed }
        #expect(allClosed, "the back-end kept none of them")
    }

    @Test func oneBadFrontEndDoesNotDisturbAnother() {
        let bad = ServedPair(), good = ServedPair()
        bad.sendRaw(FrontEnd.u32(77) + FrontEnd.u32(1) + FrontEnd.u32(0))
        #expect(bad.waitForEnd() == .refused(.unknownRequest(77)))
        good.send(FrontEnd.message(.getQueueNum))
        #expect(good.reply() == FrontEnd.u64(2))
    }
}

@Suite struct ServerTests {
    /// A front-end connecting to the socket file, as QEMU's chardev does.
    static func connect(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.enumerated() where i < raw.count - 1 { raw[i] = byte }
        }
        let status = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        #expect(status == 0)
        return fd
    }

    @Test func eachConnectionIsServedAloneAndStopEndsThemAll() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("oyako-vhost-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ends = Mutex<[VhostUserConnection.End]>([])
        let server = try VhostUserServer(path: directory + "/blk.sock", makeBackend: { VhostUserBackend(device: RecordingDevice()) },
                                         ended: { why in ends.withLock { $0.append(why) } })
        let bad = Self.connect(server.path), good = Self.connect(server.path)
        defer { _ = close(bad); _ = close(good) }
        #expect(VhostUserConnection.send(bad, VhostUserMessage(request: 4242)))
        #expect(VhostUserConnection.send(good, FrontEnd.message(.getQueueNum)))
        var reply = [UInt8](repeating: 0, count: 20)
        var got = 0
        while got < 20 {
            let n = reply.withUnsafeMutableBytes { read(good, $0.baseAddress! + got, 20 - got) }
            guard n > 0 else { break }
            got += n
        }
        #expect(Array(reply.suffix(8)) == FrontEnd.u64(2), "the good front-end is served while the bad one is refused")
        server.stop()
        #expect(!FileManager.default.fileExists(atPath: server.path))
        let seen = ends.withLock { $0 }
        #expect(seen.contains(.refused(.unknownRequest(4242))))
        #expect(seen.count == 2, "both connections ended by the time stop returned: \(seen)")
    }

    @Test func aPathThatCannotBeBoundIsAnError() {
        #expect(throws: VhostUserServer.ListenError.self) {
            try VhostUserServer(path: "/nonexistent-oyako-dir/x.sock", makeBackend: { VhostUserBackend(device: RecordingDevice()) })
        }
    }
}
