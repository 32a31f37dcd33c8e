import DriverHost
import Foundation
import Guest
import Hypervisor
import Kernel
import Machine
import OyakoTestSupport
import Testing
import VirtualizationStack
import VMBus
import Workloads

@Suite(.serialized) struct RootPartitionTests {
    /// The same driver file binds in the root, and its device sees root
    /// guest-physical addresses that are not machine addresses.
    @Test func rootRunsTheSameDriverWithNonIdentityDMA() throws {
        let path = try Fixtures.referenceDriver()
        let system = try RootSystem(drivers: [path])
        defer { system.shutdown() }
        #expect(system.kernel.environmentName == "root")
        #expect(system.report.problems.isEmpty, "\(system.report.problems)")
        let library = try #require(system.kernel.loadedDrivers.first)
        #expect(library.sha256 == sha256Hex(ofFile: path))
        let disk = try #require(system.disk)
        let result = try VerifiedIO(seed: 5, regionBlocks: 4096).run(on: disk)
        #expect(result.bytesRead == result.bytesWritten && result.bytesRead > 0)
        // A DMA buffer's device address is a root GPA that maps elsewhere.
        let buffer = try #require(disk.allocateBuffer(length: 4096))
        let gpa = try #require(system.kernel.platform.memory.physical(of: buffer.pointer))
        let spa = try #require(system.root.hypervisor.machineAddress(partition: system.root.hypervisor.root.id, gpa: gpa))
        #expect(spa != gpa)
        #expect(system.root.rootVP.statistics.interrupts > 0, "device interrupts arrived through the hypervisor")
    }

    @Test func twoChildrenDoVerifiedIOConcurrentlyThroughVMBus() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let outcomes = (0..<2).map { _ in GuestOutcome<VerifiedIO.Result>() }
        for i in 0..<2 {
            try system.startChild(name: "child\(i)", start: 8192 + UInt64(i) * 16384, blocks: 16384) { os in
                outcomes[i].finish {
                    try os.boot()
                    let disk = try #require(try os.openStorage().first)
                    var io = VerifiedIO(seed: 100 + UInt64(i), regionBlocks: disk.blockCount)
                    io.sizesInBlocks = [1, 8, 64, 255, 256, 512, 2048]  // 2048 blocks > the 256 KiB max transfer: split
                    return try io.run(on: disk)
                }
            }
        }
        for (i, outcome) in outcomes.enumerated() {
            let result = try outcome.wait()
            #expect(result.bytesWritten > 1 << 20, "child\(i)")
        }
        // Child 1's first block is at root LBA 8192 + 16384, in the image file.
        let image = try Data(contentsOf: URL(fileURLWithPath: system.state + "/nvme0.img"))
        let expected = Pattern.bytes(seed: 101, lba: 0, blockSize: 512, count: 512)
        #expect([UInt8](image[(24576 * 512)..<(24577 * 512)]) == expected)
        let vsps = system.vms.running.flatMap { system.vms.storageProviders(of: $0) }
        #expect(vsps.count == 2 && vsps.allSatisfy { $0.statistics.flushes == 1 && $0.statistics.errors == 0 })
    }

    @Test func childOutOfRangeLBAIsAnErrorNotAViolation() throws {
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let outcome = GuestOutcome<(String, Bool)>()
        try system.startChild(name: "c", start: 0, blocks: 128) { os in
            outcome.finish {
                try os.boot()
                let disk = try #require(try os.openStorage().first)
                var message = ""
                do { _ = try disk.readBlocks(lba: 127, count: 2) } catch { message = "\(error)" }
                // Still usable afterwards.
                try disk.writeBlocks(lba: 0, bytes: [UInt8](repeating: 9, count: 512))
                return (message, try disk.readBlocks(lba: 0, count: 1) == [UInt8](repeating: 9, count: 512))
            }
        }
        let (message, stillWorks) = try outcome.wait()
        #expect(message.contains("0xc000000d"), "\(message)")
        #expect(stillWorks)
    }
}
