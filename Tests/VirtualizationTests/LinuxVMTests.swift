import Crypto
import Devices
import Guest
import SystemAssembly
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

    /// The VM ran its job to the end: QEMU exited 0 and the guest reported
    /// no error (the console's tail in the message when not).
    static func expectCleanExit(_ vm: QEMUMachine, timeout: TimeInterval = 150, sourceLocation: SourceLocation = #_sourceLocation) {
        let exit = vm.waitForExit(timeout: timeout)
        let console = (try? String(contentsOfFile: vm.consolePath, encoding: .utf8)) ?? ""
        #expect(exit == .exited(0), "QEMU: \(exit.map(\.description) ?? "still running"); console:\n\(console.suffix(3000))", sourceLocation: sourceLocation)
        #expect(vm.report("error") == nil, "the guest reported: \(vm.report("error") ?? "")", sourceLocation: sourceLocation)
    }
    static var reason: Comment {
        if case .failure(let problem) = vmm { Comment(rawValue: "skipped: \(problem)") } else { "QEMU is present" }
    }
}

/// An unmodified Debian kernel under QEMU, its disks vhost-user-blk devices
/// served by the root from regions of the root's NVMe disk, so every guest
/// block goes through the vendor's nvmelite.so.
@Suite(.serialized) struct LinuxVMTests {
    @Test(.enabled(if: LinuxVMAvailability.available, LinuxVMAvailability.reason), .timeLimit(.minutes(3)))
    func aLinuxGuestsDisksAreServedByTheVendorsDriverInTheRoot() throws {
        let vmm = try LinuxVMAvailability.vmm.get()
        let image = try GuestImage.prepare()
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver("nvmelite")], diskSize: 128 << 20)
        defer { system.shutdown() }
        let disks = try StorageRig(system)
        defer { disks.stop() }
        var configuration = QEMUMachine.Configuration(name: "linux0", image: image, vmm: vmm, job: GuestJobs.storage(seed: 4242),
                                                      directory: system.state + "/linux0")
        configuration.disks = disks.sockets
        configuration.allowReboot = true
        let vm = try QEMUMachine(configuration)
        defer { vm.stop() }
        LinuxVMAvailability.expectCleanExit(vm)
        try disks.verify(vm, image: image)
    }

    /// QEMU killed in the middle of the guest's writes ends that VM only:
    /// the root and its disk go on, and a new VM on the same sockets runs.
    @Test(.enabled(if: LinuxVMAvailability.available, LinuxVMAvailability.reason), .timeLimit(.minutes(3)))
    func aVMMKilledMidIOEndsOnlyThatVM() throws {
        let vmm = try LinuxVMAvailability.vmm.get()
        let image = try GuestImage.prepare()
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver("nvmelite")], diskSize: 128 << 20)
        defer { system.shutdown() }
        let disks = try StorageRig(system)
        defer { disks.stop() }
        let writing = """
            echo "OYAKO writing"
            while true; do dd if=/dev/urandom of=/dev/vda bs=65536 count=64 oflag=direct 2>/dev/null; done
            """
        var doomed = QEMUMachine.Configuration(name: "doomed", image: image, vmm: vmm, job: writing, directory: system.state + "/doomed")
        doomed.disks = disks.sockets
        let first = try QEMUMachine(doomed)
        defer { first.stop() }
        #expect(first.waitForReport("writing", timeout: 60))
        let before = disks.disk.statistics.bytesWritten
        let deadline = Date(timeIntervalSinceNow: 30)
        while disks.disk.statistics.bytesWritten < before + (4 << 20) && Date() < deadline { usleep(10_000) }
        kill(first.pid, SIGKILL)
        #expect(first.waitForExit(timeout: 30) == .signaled(SIGKILL))

        // The root's disk still serves, and the next VM gets the same devices.
        #expect(throws: Never.self) { try disks.disk.write(lba: 200_000, bytes: [UInt8](repeating: 7, count: 4096)) }
        let check = """
            dd if=/dev/urandom of=/tmp/x bs=1048576 count=1 2>/dev/null
            dd if=/tmp/x of=/dev/vdb bs=1048576 oflag=direct 2>/dev/null || echo "OYAKO error write"
            echo "OYAKO same $( [ "$(sha256sum < /tmp/x)" = "$(dd if=/dev/vdb bs=1048576 count=1 iflag=direct 2>/dev/null | sha256sum)" ] && echo yes || echo no)"
            """
        var next = QEMUMachine.Configuration(name: "next", image: image, vmm: vmm, job: check, directory: system.state + "/next")
        next.disks = disks.sockets
        let second = try QEMUMachine(next)
        defer { second.stop() }
        #expect(second.waitForExit(timeout: 90) == .exited(0))
        #expect(second.report("same") == "yes" && second.report("error") == nil, "\(second.allReports)")
    }
    /// The operator's path, as the README gives it: `oyako serve`, and QEMU
    /// pointed at its vda.sock. A second VMM on the disk is refused while
    /// one is served; the next VM's writes reach the disk image through the
    /// vendor's nvmelite in a driver host.
    @Test(.enabled(if: LinuxVMAvailability.available, LinuxVMAvailability.reason), .timeLimit(.minutes(4)))
    func aVMOnServesDiskWritesThroughTheVendorsDriverToTheImage() throws {
        let vmm = try LinuxVMAvailability.vmm.get()
        let image = try GuestImage.prepare()
        let state = Fixtures.temporaryDirectory("serve-vm")
        let serve = Process()
        serve.executableURL = URL(fileURLWithPath: Fixtures.oyakoBinary)
        serve.arguments = ["serve", "--state", state, "--disk-mib", "64", "--driver", try Fixtures.referenceDriver("nvmelite"), "--verbose"]
        _ = FileManager.default.createFile(atPath: state + "-serve.log", contents: nil)
        let log = try #require(FileHandle(forWritingAtPath: state + "-serve.log"))
        serve.standardOutput = log
        serve.standardError = log
        try serve.run()
        defer {
            serve.terminate()
            let end = Date(timeIntervalSinceNow: 20)
            while serve.isRunning && Date() < end { usleep(50_000) }
            if serve.isRunning { kill(serve.processIdentifier, SIGKILL) }
            serve.waitUntilExit()
        }
        let socket = state + "/vda.sock"
        let deadline = Date(timeIntervalSinceNow: 60)
        while !FileManager.default.fileExists(atPath: state + "/control.sock") && serve.isRunning && Date() < deadline { usleep(50_000) }
        try #require(FileManager.default.fileExists(atPath: socket), "serve is up: \((try? String(contentsOfFile: state + "-serve.log", encoding: .utf8)) ?? "")")

        // A VM that keeps writing (at 32 MiB), and a second one on the same disk meanwhile.
        var busy = QEMUMachine.Configuration(name: "busy", image: image, vmm: vmm, job: """
            echo "OYAKO writing"
            while true; do dd if=/dev/urandom of=/dev/vda bs=65536 seek=512 count=16 oflag=direct 2>/dev/null; done
            """, directory: state + "/busy")
        busy.disks = [socket]
        let first = try QEMUMachine(busy)
        defer { first.stop() }
        #expect(first.waitForReport("writing", timeout: 60))
        var other = QEMUMachine.Configuration(name: "other", image: image, vmm: vmm, job: "echo \"OYAKO served\"", directory: state + "/other")
        other.disks = [socket]
        let second = try QEMUMachine(other)
        defer { second.stop() }
        let refused = second.waitForExit(timeout: 60)
        #expect(refused != nil && refused != .exited(0) && second.report("served") == nil, "the second VMM is refused: \(refused.map(\.description) ?? "still running")")
        #expect(first.process.exit == nil, "the first runs on")
        first.stop()
        _ = first.waitForExit(timeout: 30)

        // The next VM writes 4 MiB at the start of the disk and reads it back.
        var next = QEMUMachine.Configuration(name: "next", image: image, vmm: vmm, job: """
            i=0; while [ ! -b /dev/vda ]; do i=$((i+1)); [ $i -gt 200 ] && echo "OYAKO error no-vda"; sleep 0.05; done
            dd if=/dev/urandom of=/tmp/x bs=1048576 count=4 2>/dev/null
            dd if=/tmp/x of=/dev/vda bs=1048576 oflag=direct conv=fsync 2>/dev/null || echo "OYAKO error write"
            echo "OYAKO written $(sha256sum /tmp/x | cut -d' ' -f1)"
            echo "OYAKO read $(dd if=/dev/vda bs=1048576 count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
            """, directory: state + "/next")
        next.disks = [socket]
        let third = try QEMUMachine(next)
        defer { third.stop() }
        LinuxVMAvailability.expectCleanExit(third, timeout: 90)
        let written = try #require(third.report("written"), "\(third.allReports)")
        #expect(third.report("read") == written, "the guest reads back what it wrote")
        let onDisk = try #require(FileHandle(forReadingAtPath: state + "/nvme0.img")?.readData(ofLength: 4 << 20))
        #expect(SHA256.hash(data: onDisk).map { String(format: "%02x", $0) }.joined() == written, "the disk image holds the guest's bytes")
        let served = (try? String(contentsOfFile: state + "-serve.log", encoding: .utf8)) ?? ""
        #expect(served.contains("another VMM is connected to this device"), "serve logged the refusal:\n\(served.suffix(2000))")
    }
}

/// Two vhost-user-blk devices on regions of the root's NVMe disk (vda: the
/// pattern, vdb: a file system from 80 MiB), and the checks of what the
/// guest's storage job reported against what the root reads through nvmelite.so.
struct StorageRig {
    static let mebibyte = 1 << 20
    let disk: Disk
    let servers: [VhostUserServer]
    var sockets: [String] { servers.map(\.path) }

    init(_ system: RootSystem) throws {
        disk = try #require(system.disk, "\(system.report.problems)")
        let blocksPerMiB = UInt64(Self.mebibyte / disk.geometry.blockSize)
        let pattern = try DiskRegion(disk: disk, firstBlock: 0, blockCount: 72 * blocksPerMiB)
        let fs = try DiskRegion(disk: disk, firstBlock: 80 * blocksPerMiB, blockCount: 16 * blocksPerMiB)
        servers = [try VhostUserServices.serveBlock(at: system.state + "/vda.sock", region: pattern),
                   try VhostUserServices.serveBlock(at: system.state + "/vdb.sock", region: fs)]
    }

    func stop() { for server in servers { server.stop() } }

    func verify(_ vm: QEMUMachine, image: GuestImage) throws {
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

/// The whole VM: its disks as above, and on the root's switches a vhost-user-net port on a private
/// switch it shares with a simulated child, and one on the external switch
/// whose uplink is the vendor's e1klite.so in front of a TAP in a network
/// namespace the test made (the "outside"). Addresses: 192.0.2.0/26 outside,
/// 192.0.2.64/26 private.
@Suite(.serialized) struct LinuxVMNetworkTests {
    static var unavailable: String? {
        if case .failure(let problem) = LinuxVMAvailability.vmm { return "\(problem)" }
        return TAPWire.unavailableReason ?? NetworkNamespace.unavailableReason
    }

    @Test(.enabled(if: unavailable == nil, Comment(rawValue: "skipped: \(unavailable ?? "")")), .timeLimit(.minutes(3)))
    func aLinuxGuestsDisksAndNICsAreServedByTheVendorsDriversInTheRoot() throws {
        let vmm = try LinuxVMAvailability.vmm.get()
        let image = try GuestImage.prepare()
        let namespace = try NetworkNamespace()
        let tapName = "oytap\(UInt16.random(in: 0...UInt16.max))"
        let tap = try TAPWire(name: tapName)
        let system = try RootSystem(drivers: [try Fixtures.referenceDriver("nvmelite"), try Fixtures.referenceDriver("e1klite")],
                                    diskSize: 128 << 20, nics: 1) { testbed in
            testbed.nics[0].wire = tap
            tap.connect(testbed.nics[0])
        }
        defer {
            system.shutdown()
            tap.stop()
        }
        try namespace.adopt(tapName, address: "192.0.2.1/26")
        let eth0 = try #require(system.kernel.network.interfaces.first)
        let external = VirtualSwitch(name: "external", kind: .external)
        defer { external.shutdown() }
        try external.attachUplink(eth0)
        let privateSwitch = VirtualSwitch(name: "private", kind: .private)
        defer { privateSwitch.shutdown() }

        // A simulated child on the private switch.
        let ready = DispatchSemaphore(value: 0)
        let child = try system.vms.createChild(name: "peer", memorySize: 8 << 20)
        system.vms.offerNetwork(to: child, vswitch: privateSwitch)
        system.vms.start(child) { p, vp in networkGuest(ip: [192, 0, 2, 65], ready: ready)(GuestOS(name: "peer", partition: p, vp: vp)) }
        #expect(ready.wait(timeout: .now() + 10) == .success)

        // The outside's end of the TCP transfer: busybox from the same Debian package.
        let listener = try TCPDigestSink(namespace: namespace, port: 5001, busybox: image.busyboxPath, directory: system.state)
        defer { listener.stop() }

        let privateMAC = "52:54:00:0a:00:01", externalMAC = "52:54:00:0a:00:02"
        let p = try VhostUserServices.serveNetwork(at: system.state + "/net0.sock", vswitch: privateSwitch, port: "linux0:net0", mac: Self.bytes(privateMAC))
        defer { p.stop() }
        let e = try VhostUserServices.serveNetwork(at: system.state + "/net1.sock", vswitch: external, port: "linux0:net1", mac: Self.bytes(externalMAC))
        defer { e.stop() }
        let disks = try StorageRig(system)
        defer { disks.stop() }
        let network = GuestJobs.network(nics: [.init(mac: privateMAC, address: "192.0.2.66/26"), .init(mac: externalMAC, address: "192.0.2.2/26")],
                                    pings: [("child", "192.0.2.65"), ("outside", "192.0.2.1")], transfer: ("192.0.2.1", 5001))
        var configuration = QEMUMachine.Configuration(name: "linux0", image: image, vmm: vmm, job: GuestJobs.storage(seed: 77, firstBoot: network),
                                                      directory: system.state + "/linux0")
        configuration.disks = disks.sockets
        configuration.allowReboot = true
        configuration.nics = [.init(socket: p.path, mac: privateMAC), .init(socket: e.path, mac: externalMAC)]
        let vm = try QEMUMachine(configuration)
        defer { vm.stop() }
        LinuxVMAvailability.expectCleanExit(vm)
        #expect(vm.report("ping-child") == "3", "the private switch: VM to simulated child")
        #expect(vm.report("ping-outside") == "3", "the external switch: VM to the namespace through e1klite.so")
        let sent = try #require(vm.report("tcp-sent")?.split(separator: " ").first.map(String.init))
        let got = listener.digest(timeout: 10)
        #expect(got == sent, "16 MiB over TCP arrived intact outside")
        #expect(eth0.counters.txFrames > 16 << 20 / 1514, "the transfer left through the vendor's NIC driver")
        try disks.verify(vm, image: image)
    }

    static func bytes(_ mac: String) -> [UInt8] { mac.split(separator: ":").map { UInt8($0, radix: 16)! } }
}
