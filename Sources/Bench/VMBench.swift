import ExternalVMM
import Foundation
import Kernel
import SystemAssembly
import VirtualizationStack

/// The real VM's own view: Debian's kernel under QEMU writes and reads its
/// 64 MiB pattern with `dd` (O_DIRECT, 4 KiB to 1 MiB blocks) on a
/// vhost-user-blk disk the root serves through nvmelite.so. Labelled with
/// the accelerator: under TCG the guest's instructions are emulated, so
/// these figures measure QEMU's emulation as much as the I/O path.
struct VMBench {
    let quick: Bool
    let progress: @Sendable (String) -> Void

    func run(drivers: [String], state: String) throws -> [BenchFigure] {
        guard let nvme = drivers.first(where: { $0.hasSuffix("nvmelite.so") }) else { return [] }
        let vmm: VMMInfo
        do {
            vmm = try VMMInfo.detect()
        } catch {
            progress("vm: skipped: \(error)")
            return []
        }
        let image = try GuestImage.prepare { progress("vm: \($0)") }
        let system = try BootedSystem(.rootPartition(memory: 96 << 20), state: state + "/vm", diskSize: 256 << 20, memorySize: 256 << 20, drivers: [nvme])
        defer { system.shutdown() }
        guard let disk = system.kernel.blockLayer.disks.first else { throw DemoError(message: "bench: no disk in the root partition") }
        let perMiB = UInt64((1 << 20) / disk.geometry.blockSize)
        let servers = [try VhostUserServices.serveBlock(at: state + "/vm/vda.sock", region: try DiskRegion(disk: disk, firstBlock: 0, blockCount: 72 * perMiB)),
                       try VhostUserServices.serveBlock(at: state + "/vm/vdb.sock", region: try DiskRegion(disk: disk, firstBlock: 80 * perMiB, blockCount: 16 * perMiB))]
        defer { for server in servers { server.stop() } }

        var writes: [Double] = [], reads: [Double] = []
        for round in 0..<(quick ? 1 : 3) {
            var configuration = QEMUMachine.Configuration(name: "bench\(round)", image: image, vmm: vmm, job: GuestJobs.storage(seed: UInt32(round + 1)),
                                                          directory: state + "/vm/bench\(round)")
            configuration.disks = servers.map(\.path)
            let vm = try QEMUMachine(configuration)
            defer { vm.stop() }
            // One boot is enough: the figures come before the reboot the job asks for.
            guard vm.waitForReport("pattern-read", timeout: 180), let w = GuestJobs.rate(vm.report("pattern-written"), mebibytes: GuestJobs.patternMebibytes),
                let r = GuestJobs.rate(vm.report("pattern-read"), mebibytes: GuestJobs.patternMebibytes)
            else { throw DemoError(message: "bench: the VM did not report its dd figures (console: \(vm.consolePath))") }
            writes.append(w)
            reads.append(r)
        }
        let write = writes.sorted()[writes.count / 2], read = reads.sorted()[reads.count / 2]
        let label = vmm.accelerator.rawValue.uppercased()
        progress(String(format: "vm (%@): guest dd O_DIRECT write %.1f MiB/s, read %.1f MiB/s, median of %d boots", label, write, read, writes.count))
        let note = "Debian \(image.kernel.release) under QEMU \(vmm.version) with \(label); dd oflag/iflag=direct, "
            + GuestJobs.writeSizes.map { "\($0.mebibytes) MiB at \($0.blockSize) B" }.joined(separator: ", ")
            + "; vhost-user-blk served by the root through nvmelite.so; median of \(writes.count) boots"
            + (vmm.accelerator == .tcg ? "; TCG emulates every guest instruction, so this measures emulation as much as I/O" : "")
        return [BenchFigure("vm.\(vmm.accelerator.rawValue).dd_write_direct", write, "MiB/s", note: note),
                BenchFigure("vm.\(vmm.accelerator.rawValue).dd_read_direct", read, "MiB/s", note: note)]
    }
}
