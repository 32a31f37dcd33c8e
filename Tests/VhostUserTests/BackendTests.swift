import Foundation
import Glibc
import Machine
import Testing
import Workloads
import VhostUser

/// A device that records what the back-end asks of it.
final class RecordingDevice: VhostUserDevice {
    var deviceFeatures: UInt64 { 1 << 6 }
    let queueCount = 2
    var started: [Int] = []
    var stopped: [Int] = []
    func configSpace() -> [UInt8] { Array(0..<32) }
    /// Set to make the next start fail, as a root out of descriptors would.
    var startFailure: VhostUserError?
    func start(queue index: Int, _ queue: SplitVirtqueue, kick: Int32, call: Int32) throws(VhostUserError) {
        if let startFailure { throw startFailure }
        started.append(index)
    }
    func stop(queue index: Int) { stopped.append(index) }
}

/// A front-end played by the test: builds messages as QEMU sends them.
struct FrontEnd {
    static func message(_ request: VhostUserMessage.Request, _ payload: [UInt8] = [], needReply: Bool = false) -> VhostUserMessage {
        VhostUserMessage(request: request.rawValue, flags: VhostUserMessage.version | (needReply ? VhostUserMessage.needReplyFlag : 0), payload: payload)
    }
    static func u64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    static func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    static func state(_ index: UInt32, _ value: UInt32) -> [UInt8] { u32(index) + u32(value) }
    static func memTable(_ regions: [(UInt64, UInt64, UInt64, UInt64)]) -> [UInt8] {
        u32(UInt32(regions.count)) + u32(0) + regions.flatMap { u64($0.0) + u64($0.1) + u64($0.2) + u64($0.3) }
    }
    static func addresses(_ index: UInt32, descriptor: UInt64, used: UInt64, avail: UInt64) -> [UInt8] {
        u32(index) + u32(0) + u64(descriptor) + u64(used) + u64(avail) + u64(0)
    }
    /// A fresh descriptor (what a kick or call eventfd would be).
    static func descriptor() -> Int32 { dup(STDERR_FILENO) }
}

/// A descriptor to hand over, and a way to tell whether the receiver
/// closed it that does not depend on descriptor numbers (which other
/// threads reuse): the write end of a pipe whose read end sees end-of-file
/// once the last write end is closed.
struct ClosureProbe {
    let handed: Int32
    private let watch: Int32

    init() {
        var ends: [Int32] = [0, 0]
        precondition(pipe(&ends) == 0)
        watch = ends[0]
        handed = ends[1]
        _ = fcntl(watch, F_SETFL, fcntl(watch, F_GETFL) | O_NONBLOCK)
    }

    /// True when the handed end was closed (the read end sees EOF).
    var closed: Bool {
        var byte: UInt8 = 0
        let n = read(watch, &byte, 1)
        return n == 0
    }

    func release() { _ = close(watch) }
}

@Suite struct BackendTests {
    static let user: UInt64 = 0x7F00_0000_0000, ram: UInt64 = 0x4000_0000

    @Test func aWellBehavedFrontEndStartsAQueueAndGetsItsBaseBack() throws {
        let device = RecordingDevice()
        let backend = VhostUserBackend(device: device)
        let memory = try PhysicalMemory(size: 1 << 20)
        let features = try #require(try backend.handle(FrontEnd.message(.getFeatures), fds: []))
        let offered = features.payload.withUnsafeBytes { $0.load(as: UInt64.self) }
        #expect(offered & (1 << 6) != 0 && offered & (1 << 32) != 0 && offered & (1 << 30) != 0)
        _ = try backend.handle(FrontEnd.message(.setFeatures, FrontEnd.u64(offered)), fds: [])
        _ = try backend.handle(FrontEnd.message(.setProtocolFeatures, FrontEnd.u64(1 << 3 | 1 << 9)), fds: [])
        let ack = try backend.handle(FrontEnd.message(.setOwner, needReply: true), fds: [])
        #expect(ack?.payload == FrontEnd.u64(0) && ack?.flags == VhostUserMessage.version | VhostUserMessage.replyFlag, "REPLY_ACK")
        _ = try backend.handle(FrontEnd.message(.setMemTable, FrontEnd.memTable([(Self.ram, 1 << 20, Self.user, 0)])), fds: [dup(memory.fileDescriptor)])
        _ = try backend.handle(FrontEnd.message(.setVringNum, FrontEnd.state(0, 16)), fds: [])
        _ = try backend.handle(FrontEnd.message(.setVringAddr, FrontEnd.addresses(0, descriptor: Self.user + 0x1000, used: Self.user + 0x5000, avail: Self.user + 0x3000)), fds: [])
        _ = try backend.handle(FrontEnd.message(.setVringBase, FrontEnd.state(0, 5)), fds: [])
        let kick = FrontEnd.descriptor(), call = FrontEnd.descriptor()
        _ = try backend.handle(FrontEnd.message(.setVringKick, FrontEnd.u64(0)), fds: [kick])
        _ = try backend.handle(FrontEnd.message(.setVringCall, FrontEnd.u64(0)), fds: [call])
        #expect(device.started.isEmpty, "with protocol features a ring waits for SET_VRING_ENABLE")
        _ = try backend.handle(FrontEnd.message(.setVringEnable, FrontEnd.state(0, 1)), fds: [])
        #expect(device.started == [0])
        // A new call descriptor for a running ring (QEMU sends one when its
        // interrupt routing changes): the device lets go of the old one first.
        _ = try backend.handle(FrontEnd.message(.setVringCall, FrontEnd.u64(0)), fds: [FrontEnd.descriptor()])
        #expect(device.stopped == [0] && device.started == [0, 0], "stopped before the old call descriptor was closed, then restarted")
        let base = try #require(try backend.handle(FrontEnd.message(.getVringBase, FrontEnd.state(0, 0)), fds: []))
        #expect(base.payload == FrontEnd.state(0, 5) && device.stopped == [0, 0], "stopped, and where it stood")
        // A device that cannot start a queue: the front-end is refused with
        // the reason, and the ring is not left half-started.
        device.startFailure = .deviceStart(queue: 0, errno: EMFILE)
        _ = try backend.handle(FrontEnd.message(.setVringEnable, FrontEnd.state(0, 0)), fds: [])
        #expect(throws: VhostUserError.deviceStart(queue: 0, errno: EMFILE)) {
            try backend.handle(FrontEnd.message(.setVringEnable, FrontEnd.state(0, 1)), fds: [])
        }
        _ = try backend.handle(FrontEnd.message(.getVringBase, FrontEnd.state(0, 0)), fds: [])
        #expect(device.stopped == [0, 0], "a queue that never started is not stopped")
        let config = try #require(try backend.handle(FrontEnd.message(.getConfig, FrontEnd.u32(8) + FrontEnd.u32(4) + FrontEnd.u32(0) + [0, 0, 0, 0]), fds: []))
        #expect(config.payload.suffix(4) == [8, 9, 10, 11])
        // A VMM whose headers know a longer config struct reads zeros past the device's fields.
        let longer = try #require(try backend.handle(FrontEnd.message(.getConfig, FrontEnd.u32(28) + FrontEnd.u32(8) + FrontEnd.u32(0) + [UInt8](repeating: 0xEE, count: 8)), fds: []))
        #expect(longer.payload.suffix(8) == [28, 29, 30, 31, 0, 0, 0, 0])
    }

    /// A hostile or broken front-end: every message is refused with its
    /// own error, nothing changes, and no descriptor it sent leaks.
    @Test func malformedMessagesAreRefusedAndTheirDescriptorsClosed() throws {
        let device = RecordingDevice()
        let backend = VhostUserBackend(device: device)
        let memory = try PhysicalMemory(size: 1 << 20)
        func refuse(_ message: VhostUserMessage, fds count: Int = 0, _ expected: VhostUserError, sourceLocation: SourceLocation = #_sourceLocation) {
            let probes = (0..<count).map { _ in ClosureProbe() }
            defer { for probe in probes { probe.release() } }
            #expect(throws: expected, sourceLocation: sourceLocation) { try backend.handle(message, fds: probes.map(\.handed)) }
            let allClosed = probes.allSatisfy { $0.closed }
            #expect(allClosed, "every descriptor sent was closed", sourceLocation: sourceLocation)
        }
        refuse(VhostUserMessage(request: 99), .unknownRequest(99))
        refuse(FrontEnd.message(.setVringAddr, FrontEnd.addresses(0, descriptor: 0, used: 0, avail: 0)), .outOfOrder(request: "setVringAddr", missing: "SET_MEM_TABLE"))
        refuse(FrontEnd.message(.setOwner), fds: 1, .fileDescriptors(request: "setOwner", expected: "0", got: 1))
        refuse(FrontEnd.message(.setMemTable, FrontEnd.memTable([(Self.ram, 1 << 20, Self.user, 0), (0, 4096, 0, 0)])), fds: 1,
               .fileDescriptors(request: "setMemTable", expected: "2 (one per region)", got: 1))
        refuse(FrontEnd.message(.setMemTable, FrontEnd.memTable([(Self.ram, 1 << 20, Self.user, 0)]) + [0]), fds: 1,
               .badPayload(request: "setMemTable", size: 41))
        refuse(FrontEnd.message(.setFeatures, FrontEnd.u64(1 << 60)), .features("the front-end acked 0x1000000000000000, never offered"))
        refuse(FrontEnd.message(.setVringNum, FrontEnd.state(7, 16)), .queueIndex(7, queues: 2))
        refuse(FrontEnd.message(.setVringNum, FrontEnd.state(0, 12)), .queue(index: 0, .badSize(12)))
        refuse(FrontEnd.message(.setVringKick, FrontEnd.u64(0)), .fileDescriptors(request: "setVringKick", expected: "1", got: 0))
        refuse(FrontEnd.message(.getConfig, FrontEnd.u32(254) + FrontEnd.u32(4) + FrontEnd.u32(0) + [0, 0, 0, 0]), .config(offset: 254, size: 4))
        refuse(FrontEnd.message(.setLogBase, FrontEnd.u64(0)), fds: 1, .features("dirty logging was not offered"))
        #expect(device.started.isEmpty)

        // Rings outside the guest's memory: refused when the queue would start.
        _ = try backend.handle(FrontEnd.message(.setMemTable, FrontEnd.memTable([(Self.ram, 1 << 20, Self.user, 0)])), fds: [dup(memory.fileDescriptor)])
        _ = try backend.handle(FrontEnd.message(.setVringNum, FrontEnd.state(1, 16)), fds: [])
        _ = try backend.handle(FrontEnd.message(.setVringAddr, FrontEnd.addresses(1, descriptor: Self.user + (1 << 20) - 8, used: Self.user + 0x5000, avail: Self.user + 0x3000)), fds: [])
        #expect(throws: VhostUserError.queue(index: 1, .ringOutsideMemory("descriptor table"))) {
            try backend.handle(FrontEnd.message(.setVringKick, FrontEnd.u64(1)), fds: [FrontEnd.descriptor()])
        }
        #expect(device.started.isEmpty)
    }

    @Test func headersAreChecked() {
        func header(_ request: UInt32, _ flags: UInt32, _ size: UInt32) -> [UInt8] { FrontEnd.u32(request) + FrontEnd.u32(flags) + FrontEnd.u32(size) }
        #expect(throws: VhostUserError.badVersion(flags: 2)) { try VhostUserMessage.payloadSize(ofHeader: header(1, 2, 0)) }
        #expect(throws: VhostUserError.payloadTooLarge(1 << 20)) { try VhostUserMessage.payloadSize(ofHeader: header(1, 1, 1 << 20)) }
        #expect(throws: VhostUserError.truncated(expected: 12, got: 8)) { try VhostUserMessage.payloadSize(ofHeader: Array(header(1, 1, 0).prefix(8))) }
        #expect(throws: VhostUserError.truncated(expected: 8, got: 3)) { try VhostUserMessage.decode(header: header(2, 1, 8), payload: [1, 2, 3]) }
        let message = FrontEnd.message(.setFeatures, FrontEnd.u64(5))
        let bytes = message.encoded()
        let decoded = try? VhostUserMessage.decode(header: Array(bytes.prefix(12)), payload: Array(bytes.dropFirst(12)))
        #expect(decoded == message)
    }
}

/// A hostile VMM at random: messages of every request with random payloads
/// (mostly of the right size, so they get past the framing), sometimes
/// descriptors, after a valid memory table. Each is handled or refused;
/// none ends the root, and every descriptor sent is closed or kept.
@Suite struct RandomBackendTests {
    @Test func randomMessagesAreHandledOrRefused() throws {
        var random = SeededGenerator(seed: 0xB0B)
        let sizes: [UInt32: Int] = [2: 8, 5: 40, 8: 8, 9: 40, 10: 8, 11: 8, 12: 8, 13: 8, 14: 8, 16: 8, 18: 8, 24: 12 + 16, 25: 12 + 4]
        var handled = 0, refused = 0, started = 0
        for _ in 0..<40 {
            let device = RecordingDevice()
            let backend = VhostUserBackend(device: device)
            let memory = try PhysicalMemory(size: 1 << 20)
            _ = try backend.handle(FrontEnd.message(.setMemTable, FrontEnd.memTable([(BackendTests.ram, 1 << 20, BackendTests.user, 0)])), fds: [dup(memory.fileDescriptor)])
            // Queue 0 set up but for its kick, so that a random kick can start it.
            _ = try backend.handle(FrontEnd.message(.setVringNum, FrontEnd.state(0, 16)), fds: [])
            _ = try backend.handle(FrontEnd.message(.setVringAddr, FrontEnd.addresses(0, descriptor: BackendTests.user + 0x1000, used: BackendTests.user + 0x5000,
                                                                                    avail: BackendTests.user + 0x3000)), fds: [])
            for _ in 0..<100 {
                let request = [1, 2, 3, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 25, 99].randomElement(using: &random)! as UInt32
                let size = Int.random(in: 0..<8, using: &random) == 0 ? Int.random(in: 0...64, using: &random) : sizes[request] ?? 0
                var payload = (0..<size).map { _ in UInt8.random(in: 0...255, using: &random) }
                // Small queue indices and ring addresses inside the table half the time.
                if size >= 8, Bool.random(using: &random) { payload.replaceSubrange(0..<4, with: FrontEnd.u32(UInt32.random(in: 0...2, using: &random))) }
                if request == 9, size == 40, Bool.random(using: &random) {
                    payload.replaceSubrange(8..<32, with: FrontEnd.u64(BackendTests.user + 0x1000) + FrontEnd.u64(BackendTests.user + 0x5000) + FrontEnd.u64(BackendTests.user + 0x3000))
                }
                if request == 8, size == 8 { payload.replaceSubrange(4..<8, with: FrontEnd.u32([1, 16, 256, 0, 3, 1 << 15, 1 << 16].randomElement(using: &random)!)) }
                let fds = (0..<Int.random(in: 0...(request == 5 ? 2 : 1), using: &random)).map { _ in
                    request == 5 ? dup(memory.fileDescriptor) : FrontEnd.descriptor()
                }
                do {
                    _ = try backend.handle(VhostUserMessage(request: request, flags: VhostUserMessage.version, payload: payload), fds: fds)
                    handled += 1
                } catch {
                    refused += 1
                }
            }
            started += device.started.count
        }
        #expect(handled > 300 && refused > 300, "both outcomes reached: \(handled) handled, \(refused) refused")
        #expect(started > 0, "some queues started from what the random VMM set up")
    }
}
