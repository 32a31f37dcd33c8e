import Crypto
import ExternalVMM
import Foundation
import Kernel
import OyakoTestSupport
import Testing
import VhostUser
import VirtualizationStack

/// What a real VM needs here: QEMU (Debian's qemu-system-x86; .ci/run
/// installs it). The guest image is made from Debian's packages on first use.
enum LinuxVMAvailability {
    static let vmm: Result<VMMInfo, VMMInfo.Problem> = Result { () throws(VMMInfo.Problem) in try VMMInfo.detect() }
    static var available: Bool { (try? vmm.get()) != nil }
    static var reason: Comment {
        if case .failure(let problem) = vmm { Comment(rawValue: "skipped: \(problem)") } else { "QEMU is present" }
    }
}

/// An unmodified Debian kernel under QEMU, its disks vhost-user-blk devices
/// served by the root from regions of the root's NVMe disk, so every guest
/// block goes through the vendor's nvmelite.so.
@Suite(.serialized) struct LinuxVMTests {
    static let mebibyte = 1 << 20

    @Test(.enabled(if: LinuxVMAvailability.available, LinuxVMAvailability.reason), .timeLimit(.minutes(3)))
    func aLinuxGuestsDisksAreServedByTheVendorsDriverInTheRoot() throws {
        let vmm = try LinuxVMAvailability.vmm.get()
        let image = try GuestImage.prepare()
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver("nvmelite")], diskSize: 128 << 20)
        defer { system.shutdown() }
        let disk = try #require(system.disk, "\(system.report.problems)")
        let blocksPerMiB = UInt64(Self.mebibyte / disk.geometry.blockSize)
        // vda: the pattern (and some slack); vdb: a file system, from 80 MiB.
        let patternRegion = try DiskRegion(disk: disk, firstBlock: 0, blockCount: 72 * blocksPerMiB)
        let fsRegion = try DiskRegion(disk: disk, firstBlock: 80 * blocksPerMiB, blockCount: 16 * blocksPerMiB)
        let a = try VhostUserServices.serveBlock(at: system.state + "/vda.sock", region: patternRegion)
        defer { a.stop() }
        let b = try VhostUserServices.serveBlock(at: system.state + "/vdb.sock", region: fsRegion)
        defer { b.stop() }

        var configuration = QEMUMachine.Configuration(name: "linux0", image: image, vmm: vmm, job: GuestJobs.storage(seed: 4242),
                                                      directory: system.state + "/linux0")
        configuration.disks = [a.path, b.path]
        configuration.allowReboot = true
        let vm = try QEMUMachine(configuration)
        defer { vm.stop() }
        let exit = vm.waitForExit(timeout: 150)
        let console = (try? String(contentsOfFile: vm.consolePath, encoding: .utf8)) ?? ""
        #expect(exit == .exited(0), "QEMU: \(exit.map(\.description) ?? "still running"); console:\n\(console.suffix(3000))")
        #expect(vm.report("error") == nil)
        #expect(vm.allReports.filter { $0.key == "boot" }.count == 2, "booted, rebooted")
        #expect(vm.report("boot")?.hasPrefix(image.kernel.release) == true)

        // The guest's pattern, read back in the guest and by the root through nvmelite.so.
        let written = try #require(vm.report("pattern-written")?.split(separator: " ").first.map(String.init))
        #expect(vm.report("pattern-read")?.split(separator: " ").first.map(String.init) == written)
        #expect(disk.statistics.bytesWritten >= UInt64(GuestJobs.patternMebibytes * Self.mebibyte), "the guest's writes went through the driver")
        let rootRead = try disk.read(lba: 0, count: GuestJobs.patternMebibytes * Self.mebibyte)
        #expect(SHA256.hash(data: rootRead).map { String(format: "%02x", $0) }.joined() == written, "the root reads what the guest wrote")
        #expect(Array(rootRead[0..<16]) == Array("0000000000000000".utf8) && Array(rootRead[Self.mebibyte..<(Self.mebibyte + 16)]) == Array("0000000000000001".utf8),
                "each MiB where the guest put it")

        // The file system made on boot 1 verified on boot 2.
        let made = try #require(vm.report("fs-made"))
        #expect(vm.report("fs-verified") == made + " 1")
    }
}
