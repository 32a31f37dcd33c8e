import Foundation
import Kernel
import OyakoTestSupport
import Testing
import VhostUser
import VirtualizationStack

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
