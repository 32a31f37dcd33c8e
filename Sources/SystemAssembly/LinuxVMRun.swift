import Crypto
import ExternalVMM
import Foundation
import Kernel
import SDKTools
import VirtualizationStack

/// The demo's real VM: Debian's kernel under QEMU, its two disks
/// vhost-user-blk on regions of the root's disk (so nvmelite.so does their
/// I/O) and its two NICs vhost-user-net ports on the root's private and
/// external switches (so e1klite.so carries what leaves the box). The
/// guest writes and reads back a seeded pattern, makes a file system that
/// must survive a reboot, pings child0 and the outside, and sends 16 MiB
/// over TCP to the outside; the root checks each from its side.
struct LinuxVMRun {
    static let name = "linux0"
    /// Where the VM's vhost-user sockets go, and the longest of their paths.
    static func socketFolder(state: String) -> String { state + "/vm" }
    static func longestSocketPath(state: String) -> String { socketFolder(state: state) + "/net0.sock" }
    static let mebibyte = 1 << 20
    /// Where its disks live on the root's disk, in MiB (clear of the bare,
    /// root, child and throughput regions).
    static let patternAt = 128, patternMiB = 72, fsAt = 208, fsMiB = 16
    static let privateMAC = "52:54:00:0a:7a:01", externalMAC = "52:54:00:0a:7a:02"
    static let privateAddress = "192.0.2.41", externalAddress = "192.0.2.40"
    static let transferPort = 5001, transferMebibytes = 16

    let kernel: Kernel
    let privateSwitch: VirtualSwitch
    let externalSwitch: VirtualSwitch
    let outside: Outside
    let state: String
    /// Whether a missing QEMU may be installed with apt (as root).
    let installVMM: Bool
    let progress: @Sendable (String) -> Void

    /// The VM's entry for children[]; a VM that could not run has `error` saying why.
    func run() -> DemoReport.ChildEntry {
        var entry = DemoReport.ChildEntry(name: Self.name, partition: 0, virtualDisk: "")
        entry.kind = .linuxVM
        do {
            try runChecked(&entry)
        } catch {
            progress("[\(Self.name)] cannot run a Linux VM: \(error)")
            entry.error = "\(error)"
        }
        return entry
    }

    private func runChecked(_ entry: inout DemoReport.ChildEntry) throws {
        let vmm = try obtainVMM()
        entry.vmm = .init(name: vmm.name, version: vmm.version, accelerator: vmm.accelerator.rawValue, why: vmm.acceleratorReason)
        progress("[\(Self.name)] \(vmm.path) \(vmm.version); accelerator \(vmm.accelerator.rawValue.uppercased()): \(vmm.acceleratorReason)")
        let image = try GuestImage.prepare { line in progress("[\(Self.name)] \(line)") }
        entry.kernel = .init(package: image.kernel.package, version: image.kernel.version, sha256: image.kernel.sha256)
        progress("[\(Self.name)] guest: \(image.kernel.package) \(image.kernel.version) (vmlinuz sha256 \(image.kernel.sha256.prefix(16))…, as packaged), busybox \(image.busyboxVersion)")

        guard let disk = kernel.blockLayer.disks.first else { throw DemoError(message: "the root has no disk to give the VM") }
        let perMiB = UInt64(Self.mebibyte / disk.geometry.blockSize)
        let pattern = try DiskRegion(disk: disk, firstBlock: UInt64(Self.patternAt) * perMiB, blockCount: UInt64(Self.patternMiB) * perMiB, following: kernel.blockLayer)
        let fs = try DiskRegion(disk: disk, firstBlock: UInt64(Self.fsAt) * perMiB, blockCount: UInt64(Self.fsMiB) * perMiB, following: kernel.blockLayer)
        entry.virtualDisk = "vda = \(disk.name) MiB \(Self.patternAt)..<\(Self.patternAt + Self.patternMiB), vdb = MiB \(Self.fsAt)..<\(Self.fsAt + Self.fsMiB)"
        let sockets = Self.socketFolder(state: state)
        try FileManager.default.createDirectory(atPath: sockets, withIntermediateDirectories: true)
        let servers = [try VhostUserServices.serveBlock(at: sockets + "/vda.sock", region: pattern),
                       try VhostUserServices.serveBlock(at: sockets + "/vdb.sock", region: fs),
                       try VhostUserServices.serveNetwork(at: sockets + "/net0.sock", vswitch: privateSwitch, port: "\(Self.name):net0", mac: Self.mac(Self.privateMAC)),
                       try VhostUserServices.serveNetwork(at: sockets + "/net1.sock", vswitch: externalSwitch, port: "\(Self.name):net1", mac: Self.mac(Self.externalMAC))]
        defer { for server in servers { server.stop() } }
        progress("[\(Self.name)] root serves vhost-user: vda, vdb (\(disk.driverLabel)), net0 (private switch), net1 (external switch) in \(sockets)")

        // The outside's end of the TCP transfer, when the outside is a real namespace.
        var listener: TCPDigestSink?
        if let namespace = outside.namespace {
            listener = try TCPDigestSink(namespace: namespace, port: Self.transferPort, busybox: image.busyboxPath, directory: sockets)
        } else {
            progress("[\(Self.name)] the outside is simulated (no TCP there): the 16 MiB transfer is skipped")
        }
        defer { listener?.stop() }

        let network = GuestJobs.network(
            nics: [.init(mac: Self.privateMAC, address: Self.privateAddress + "/32", routes: ["192.0.2.10/32"]),
                   .init(mac: Self.externalMAC, address: Self.externalAddress + "/24")],
            pings: [("child0", "192.0.2.10"), ("outside", "192.0.2.1")],
            transfer: listener == nil ? nil : ("192.0.2.1", Self.transferPort), transferMebibytes: Self.transferMebibytes)
        var configuration = QEMUMachine.Configuration(name: Self.name, image: image, vmm: vmm, job: GuestJobs.storage(seed: 0x11AC, firstBoot: network),
                                                      directory: sockets + "/" + Self.name)
        configuration.disks = Array(servers[0..<2].map(\.path))
        configuration.nics = [.init(socket: servers[2].path, mac: Self.privateMAC), .init(socket: servers[3].path, mac: Self.externalMAC)]
        configuration.allowReboot = true
        configuration.consoleLog = state + "/console/\(Self.name).log"
        progress("[\(Self.name)] starting QEMU (\(configuration.memoryMiB) MiB, \(configuration.cpus) vCPU, memfd shared with the root)")
        let vm = try QEMUMachine(configuration)
        defer { vm.stop() }
        let exit = follow(vm, timeout: 300)
        guard exit == .exited(0), vm.report("error") == nil else {
            throw DemoError(message: "the VM did not finish its checks (QEMU \(exit.map(\.description) ?? "still running after 300 s"); guest error: \(vm.report("error") ?? "none")); "
                + "its console: oyako console --state STATE \(Self.name)")
        }
        entry.servedBy = servedBy(disk: disk)
        try verify(vm, disk: disk, pattern: pattern, received: listener, into: &entry)
    }

    /// QEMU, installed with apt when missing and allowed (root only).
    private func obtainVMM() throws -> VMMInfo {
        let found = Result { () throws(VMMInfo.Problem) in try VMMInfo.detect() }
        guard case .failure(let problem) = found, problem.isMissing, installVMM, getuid() == 0 else { return try found.get() }
        progress("[\(Self.name)] \(VMMInfo.binary) is missing: installing Debian's qemu-system-x86 with apt-get (once; about 100 MB)")
        let environment = ["DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]
        var result = ProcessRunner.run("apt-get", ["install", "-y", "-q", "qemu-system-x86"], environment: environment, timeout: 1200)
        if result.status != 0 {
            progress("[\(Self.name)] apt-get install failed; refreshing the package lists and trying again")
            _ = ProcessRunner.run("apt-get", ["update", "-q"], environment: environment, timeout: 600)
            result = ProcessRunner.run("apt-get", ["install", "-y", "-q", "qemu-system-x86"], environment: environment, timeout: 1200)
        }
        guard result.status == 0 else { throw DemoError(message: "apt-get install qemu-system-x86 failed: \(result.output.suffix(500))") }
        return try VMMInfo.detect()
    }

    /// Prints the guest's reports as they arrive; returns how QEMU ended.
    private func follow(_ vm: QEMUMachine, timeout: TimeInterval) -> QEMUMachine.Exit? {
        let deadline = Date(timeIntervalSinceNow: timeout)
        var shown = 0
        while true {
            let exit = vm.waitForExit(timeout: 0.2)
            let reports = vm.allReports
            for report in reports.dropFirst(shown) { progress("[\(Self.name)] guest: \(report.key) \(report.value)") }
            shown = reports.count
            if exit != nil || Date() > deadline { return exit }
        }
    }

    private func verify(_ vm: QEMUMachine, disk: Disk, pattern: DiskRegion, received: TCPDigestSink?, into entry: inout DemoReport.ChildEntry) throws {
        let bytes = GuestJobs.patternMebibytes * Self.mebibyte
        let written = vm.report("pattern-written")?.split(separator: " ").first.map(String.init) ?? "none"
        let readInGuest = vm.report("pattern-read")?.split(separator: " ").first.map(String.init)
        let rootRead = try disk.read(lba: pattern.firstBlock, count: bytes)
        let rootSHA = SHA256.hash(data: rootRead).map { String(format: "%02x", $0) }.joined()
        let fsOK = vm.report("fs-made").map { vm.report("fs-verified") == $0 + " 1" } ?? false
        entry.bytesWritten = UInt64(bytes)
        entry.bytesRead = UInt64(bytes) * 2  // the guest's read-back and the root's
        entry.storageVerified = readInGuest == written && rootSHA == written && fsOK
        progress("[\(Self.name)] \(bytes >> 20) MiB pattern: guest wrote \(written.prefix(16))…, guest read \(readInGuest?.prefix(16) ?? "nothing")…, "
            + "root read through \(disk.driverLabel) \(rootSHA.prefix(16))… — \(rootSHA == written && readInGuest == written ? "the same" : "MISMATCH")")
        progress("[\(Self.name)] ext2 made on vdb before the reboot \(fsOK ? "verified after it" : "DID NOT VERIFY after it")")
        for (size, mebibytes) in GuestJobs.writeSizes { progress("[\(Self.name)]   dd oflag=direct bs=\(size): \(mebibytes) MiB") }
        if let w = GuestJobs.rate(vm.report("pattern-written"), mebibytes: GuestJobs.patternMebibytes), let r = GuestJobs.rate(vm.report("pattern-read"), mebibytes: GuestJobs.patternMebibytes) {
            progress("[\(Self.name)] guest dd (\(entry.vmm?.accelerator.uppercased() ?? "?"), emulation included): write \(String(format: "%.1f", w)) MiB/s, read \(String(format: "%.1f", r)) MiB/s")
        }

        var network = DemoReport.NetworkEntry(addresses: [Self.privateAddress, Self.externalAddress])
        for (target, address) in [("child0", "192.0.2.10"), ("outside", "192.0.2.1")] {
            let answered = Int(vm.report("ping-\(target)") ?? "") ?? 0
            network.pings.append(.init(from: Self.name, to: address, sent: 3, answered: answered))
            progress("[\(Self.name)] pinged \(target) (\(address)) \(answered)/3 over the \(target == "child0" ? "private" : "external") switch")
        }
        if let received, let sent = vm.report("tcp-sent")?.split(separator: " ").first.map(String.init) {
            let got = received.digest(timeout: 10)
            network.transfers.append(.init(to: "192.0.2.1:\(Self.transferPort)", bytes: Self.transferMebibytes * Self.mebibyte, sentSHA256: sent, receivedSHA256: got))
            progress("[\(Self.name)] \(Self.transferMebibytes) MiB over TCP to the outside: sent \(sent.prefix(16))…, received \(got?.prefix(16) ?? "nothing")…")
        } else if received != nil {
            network.transfers.append(.init(to: "192.0.2.1:\(Self.transferPort)", bytes: Self.transferMebibytes * Self.mebibyte, sentSHA256: "not sent", receivedSHA256: nil))
        }
        entry.network = network
    }

    /// The root's driver files behind the VM's devices.
    private func servedBy(disk: Disk) -> [DemoReport.ServedBy] {
        var served = [DemoReport.ServedBy(device: "vda, vdb", driver: disk.driver.driverName, sha256: disk.driver.driverSHA256)]
        if let nic = kernel.network.interfaces.first {
            served.append(.init(device: "net1 (external switch uplink)", driver: nic.netdev.driverName, sha256: nic.netdev.driverSHA256))
        }
        return served
    }

    static func mac(_ text: String) -> [UInt8] { text.split(separator: ":").compactMap { UInt8($0, radix: 16) } }
}
