import CSystemShims
import Foundation
import Kernel
import OyakoTestSupport
import Testing
import VhostUser
import VirtualizationStack
import Workloads

/// The root as a driver domain for a vhost-user VMM: the guest's virtio
/// ring is filled from the root's device class, i.e. by the vendor's
/// driver file. The front-end here plays QEMU and the guest's virtio
/// driver over a real socket, with the guest's RAM in a memfd.
@Suite(.serialized) struct VhostUserRootTests {
    @Test func aVhostUserGuestGetsEntropyFromTheVendorsDriverInTheRoot() throws {
        let system = try RootSystem(drivers: [try Fixtures.templateDriver()])
        defer { system.shutdown() }
        #expect(system.kernel.entropy.sources.count == 1, "\(system.report.problems)")
        let server = try VhostUserServices.serveRNG(at: system.state + "/rng.sock", entropy: system.kernel.entropy)
        defer { server.stop() }
        let before = system.testbed.rng.wordsDelivered
        let guest = try VirtioFrontEnd(path: server.path)
        let small = guest.postWritable(slot: 0, length: 64)
        #expect(guest.waitForInterrupt())
        let large = guest.postWritable(slot: 1, length: 8192)
        #expect(guest.waitForInterrupt())
        #expect(guest.used.map(\.written) == [64, UInt32(VhostUserServices.entropyPerChain)], "a chain gets at most entropyPerChain bytes")
        #expect(guest.read(small, count: 64) != [UInt8](repeating: 0, count: 64))
        #expect(guest.read(small, count: 64) != guest.read(large, count: 64))
        #expect(guest.read(large + UInt64(VhostUserServices.entropyPerChain), count: 16) == [UInt8](repeating: 0, count: 16), "nothing past what was reported")
        // The bytes were drawn from the rnglite device through the driver.
        #expect(system.testbed.rng.wordsDelivered - before >= (64 + VhostUserServices.entropyPerChain) / 4)
    }

    @Test func withoutAnEntropySourceTheGuestGetsNothingAndTheRootGoesOn() throws {
        let system = try RootSystem(drivers: [])
        defer { system.shutdown() }
        let server = try VhostUserServices.serveRNG(at: system.state + "/rng.sock", entropy: system.kernel.entropy)
        defer { server.stop() }
        let guest = try VirtioFrontEnd(path: server.path)
        guest.postWritable(slot: 0, length: 32)
        #expect(guest.waitForInterrupt())
        #expect(guest.used.map(\.written) == [0])
        // The server still takes new VMMs.
        let second = try VirtioFrontEnd(path: server.path)
        second.postWritable(slot: 0, length: 32)
        #expect(second.waitForInterrupt())
    }
}

/// Hostile VMMs and guests against the root's vhost-user-blk: each is
/// refused (its connection ended, or its corrupted queue no longer served)
/// with the reason logged, while a well-behaved VM on the same server and
/// a child partition on the same disk keep doing verified I/O.
@Suite(.serialized) struct HostileFrontEndTests {
    final class Events: @unchecked Sendable {
        private let lock = NSLock()
        private var lines: [String] = []
        func add(_ line: String) { lock.withLock { lines.append(line) } }
        var all: [String] { lock.withLock { lines } }

        /// Waits (hang guard) for a line containing `text`.
        func wait(for text: String) -> Bool {
            let deadline = Date(timeIntervalSinceNow: 10)
            while !all.contains(where: { $0.contains(text) }) {
                guard Date() < deadline else { return false }
                usleep(2000)
            }
            return true
        }
    }

    static let header = VirtioFrontEnd.blockHeader, data = VirtioFrontEnd.blockData, status = VirtioFrontEnd.blockStatus

    static func request(_ vm: VirtioFrontEnd, write: Bool, sector: UInt64, slot: Int, bytes: [UInt8]? = nil) -> Bool {
        vm.blockRequest(write: write, sector: sector, slot: slot, bytes: bytes)
    }

    @Test func hostileFrontEndsAreRefusedWhileAGoodVMAndAChildKeepWorking() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver("nvmelite")], diskSize: 32 << 20)
        defer { system.shutdown() }
        let disk = try #require(system.disk)
        let events = Events()
        let region = try DiskRegion(disk: disk, firstBlock: 0, blockCount: 8192)
        let server = try VhostUserServices.serveBlock(at: system.state + "/blk.sock", region: region, events: { events.add($0) })
        defer { server.stop() }
        // The hostile VMMs' own disk: one device serves one VMM at a time.
        let hostileServer = try VhostUserServices.serveBlock(at: system.state + "/hostile.sock", region: try DiskRegion(disk: disk, firstBlock: 8192, blockCount: 8192),
                                                             events: { events.add($0) })
        defer { hostileServer.stop() }

        // A child partition doing verified I/O on another region meanwhile.
        let outcome = GuestOutcome<VerifiedIO.Result>()
        try system.startChild(name: "child", start: 16384, blocks: 16384) { os in
            outcome.finish {
                try os.boot()
                let storage = try #require(try os.openStorage().first)
                var io = VerifiedIO(seed: 9, regionBlocks: storage.blockCount)
                io.sizesInBlocks = [1, 8, 64, 255, 2048]
                var total = VerifiedIO.Result()
                for _ in 0..<4 { total = try io.run(on: storage) }
                return total
            }
        }
        let good = try VirtioFrontEnd(path: server.path)
        var slot = 0
        func goodVMStillWorks(_ round: Int) -> Bool {
            defer { slot = (slot + 3) % 15 }
            let pattern = [UInt8](repeating: UInt8(round), count: 4096)
            return Self.request(good, write: true, sector: UInt64(round) * 8, slot: slot, bytes: pattern)
                && Self.request(good, write: false, sector: UInt64(round) * 8, slot: (slot + 3) % 15) && good.read(Self.data, count: 4096) == pattern
        }

        // Messages a VMM must not send: each ends that connection, with the reason.
        let messages: [(String, (VirtioFrontEnd) -> Void, String)] = [
            ("a ring address before SET_MEM_TABLE", { $0.sendRaw(VhostUserMessage.Request.setVringAddr.rawValue, [UInt8](repeating: 0, count: 40)) }, "SET_MEM_TABLE"),
            ("a memory table without its descriptor", { $0.sendRaw(VhostUserMessage.Request.setMemTable.rawValue, VirtioFrontEnd.bytes(UInt32(1)) + [UInt8](repeating: 0, count: 36)) }, "one per region"),
            ("an extra descriptor", { vm in
                let fd = oy_shim_eventfd()
                vm.sendRaw(VhostUserMessage.Request.setOwner.rawValue, fds: [fd])
                close(fd)
            }, "setOwner"),
            ("a header claiming a huge payload", { $0.sendRaw(VhostUserMessage.Request.getFeatures.rawValue, size: 1 << 30) }, "payload"),
            ("an unknown request", { $0.sendRaw(999) }, "999"),
        ]
        for (round, (what, send, reason)) in messages.enumerated() {
            let hostile = try VirtioFrontEnd(path: hostileServer.path, setUp: false)
            send(hostile)
            #expect(hostile.closedByBackEnd(), "\(what): the connection is ended")
            #expect(events.wait(for: reason), "\(what): logged with the reason \(reason): \(events.all)")
            #expect(goodVMStillWorks(round), "after \(what)")
        }

        // Queues a guest must not post: each stops that guest's queue only.
        let ramEnd = UInt64(1 << 20)
        let queues: [(String, [VirtioFrontEnd.Descriptor], String)] = [
            ("a descriptor loop", [.init(address: Self.header, length: 16, flags: 1, next: 1), .init(address: Self.data, length: 16, flags: 1, next: 0)], "loop"),
            ("an address outside the memory table", [.init(address: ramEnd + 0x1000, length: 16, flags: 1, next: 1), .init(address: Self.status, length: 1, flags: 2)], "not inside the guest's memory"),
            ("an oversized length", [.init(address: Self.header, length: 0xFFFF_FFF0, flags: 1, next: 1), .init(address: Self.status, length: 1, flags: 2)], "0x10000+4294967280 is not inside"),
            ("a next beyond the table", [.init(address: Self.header, length: 16, flags: 1, next: 500)], "next 500 is outside the 16-entry table"),
        ]
        for (i, (what, descriptors, reason)) in queues.enumerated() {
            let before = events.all.filter { $0.contains("corrupted") }.count
            let hostile = try VirtioFrontEnd(path: hostileServer.path)
            hostile.post(descriptors, at: 0)
            let deadline = Date(timeIntervalSinceNow: 10)
            while events.all.filter({ $0.contains("corrupted") }).count == before && Date() < deadline { usleep(2000) }
            let report = events.all.filter { $0.contains("corrupted") }.dropFirst(before).first ?? "nothing"
            #expect(report.contains(reason), "\(what): \(report)")
            #expect(hostile.used.isEmpty, "\(what): nothing was served")
            #expect(goodVMStillWorks(messages.count + i), "after \(what)")
        }
        let result = try outcome.wait(timeout: 120)
        #expect(result.bytesWritten > 0, "the child's I/O verified throughout")
        #expect(system.kernel.blockLayer.disks.count == 1, "the root's disk is still there")
    }

    /// Two VMs on one virtual disk would share its blocks: a second VMM is
    /// refused while one is served, and the next one after it has gone is
    /// served at once.
    @Test func aSecondVMMOnADiskIsRefusedWhileTheFirstIsServed() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver("nvmelite")], diskSize: 32 << 20)
        defer { system.shutdown() }
        let events = Events()
        let region = try DiskRegion(disk: try #require(system.disk), firstBlock: 0, blockCount: 8192)
        let server = try VhostUserServices.serveBlock(at: system.state + "/blk.sock", region: region, events: { events.add($0) })
        defer { server.stop() }
        let pattern = [UInt8](repeating: 0x5A, count: 4096)
        var first: VirtioFrontEnd? = try VirtioFrontEnd(path: server.path)
        #expect(first?.blockRequest(write: true, sector: 8, slot: 0, bytes: pattern) == true)

        let started = ContinuousClock.now
        let second = try VirtioFrontEnd(path: server.path, setUp: false)
        #expect(second.closedByBackEnd(), "the second VMM's connection is closed unserved")
        #expect(ContinuousClock.now - started >= VhostUserServer.reconnectGrace, "after the grace a reconnecting VMM gets")
        #expect(events.wait(for: "another VMM is connected to this device"), "\(events.all)")
        #expect(first?.blockRequest(write: false, sector: 8, slot: 3) == true && first?.read(Self.data, count: 4096) == pattern, "the first VMM is served on")

        first = nil
        let next = try VirtioFrontEnd(path: server.path)
        #expect(next.blockRequest(write: false, sector: 8, slot: 0) && next.read(Self.data, count: 4096) == pattern,
                "a VMM connecting after the first has gone is served, and reads what the first wrote")
    }
}
