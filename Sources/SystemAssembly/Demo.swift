import Devices
import DriverHost
import Foundation
import SDKTools
import Guest
import Hypervisor
import Kernel
import Machine
import NetStack
import Synchronization
import VirtualizationStack
import VMBus
import Workloads

public struct DemoError: Error, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// Runs the demo end to end and reports what happened, step by step: the
/// bare OS with the vendor drivers, then the same machine rebooted with the
/// hypervisor role, the root partition loading the very same files, and
/// child partitions doing verified I/O and networking through VMBus into
/// those drivers.
public struct DemoRunner {
    public var sdk: SDKLocation
    /// Keep state here (disk images, built drivers, consoles); nil: a
    /// temporary folder removed afterwards.
    public var stateDirectory: String?
    /// Room for every run's region, the real VM's disks included (from 128 MiB).
    public var diskSize: UInt64 = 256 << 20
    /// Bytes moved by the throughput measurement on each disk.
    public var throughputBytes = 32 << 20
    public var progress: @Sendable (String) -> Void
    /// Driver files the root partition loads instead of the bare OS's build
    /// of the driver with the same metadata name: what a hypervisor-specific
    /// driver looks like, and the report counts it.
    public var rootDriverOverrides: [String] = []
    /// Run a real Linux VM under QEMU beside the child partitions.
    public var linuxVM = true
    /// Install a missing QEMU with apt (as root) rather than skip the VM.
    public var installVMM = true
    /// Run the root's disk driver in a driver-host process; while the
    /// children do I/O, replace it with a rebuilt copy and kill its host with
    /// SIGKILL, for the Kernel to restart; the children's I/O must still verify.
    public var chaos = false
    /// Run each driver, bare and in the root, in a driver-host process of
    /// this executable (`oyako driver-host`); nil: in the OS's process
    /// (under --chaos the root's drivers go to hosts of this process's
    /// executable anyway).
    public var driverHost: String?

    /// Where each run works on the 512-byte-block disk.
    static let bareRegion: Range<UInt64> = 0..<4096
    static let rootRegion: Range<UInt64> = 4096..<8192
    static let childBlocks: UInt64 = 32768
    static let childBase: UInt64 = 65536
    static let throughputStart: UInt64 = 131072
    /// Addresses (TEST-NET-1 only).
    static let bareAddress: [UInt8] = [192, 0, 2, 2]
    static let rootAddress: [UInt8] = [192, 0, 2, 3]
    static let privateAddresses: [[UInt8]] = [[192, 0, 2, 10], [192, 0, 2, 11]]
    static let externalAddress: [UInt8] = [192, 0, 2, 20]

    public init(sdk: SDKLocation, stateDirectory: String?, progress: @escaping @Sendable (String) -> Void) {
        self.sdk = sdk
        self.stateDirectory = stateDirectory
        self.progress = progress
    }

    public func run() throws -> DemoReport {
        let started = Date()
        let temporary = stateDirectory == nil
        let state = stateDirectory ?? FileManager.default.temporaryDirectory.appendingPathComponent("oyako-demo-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        defer { if temporary { try? FileManager.default.removeItem(atPath: state) } }
        // Known now, not after the bare and root runs: the VM's sockets live in the folder.
        let socket = LinuxVMRun.longestSocketPath(state: state)
        guard socket.utf8.count <= UnixSocketServer.maxPathBytes else {
            throw DemoError(message: "the state folder \(state) is too deep for the VM's sockets: \(socket) would be longer than the \(UnixSocketServer.maxPathBytes) bytes a Unix socket's path may have; choose a shorter folder")
        }
        try createFolder(state + "/console")
        let lock = try StateFolderLock(state, holder: "oyako demo")
        defer { withExtendedLifetime(lock) {} }
        progress("state folder: \(state)\(temporary ? " (temporary)" : "")")

        progress("building vendor drivers with cc and \(sdk.root)/oyako.mk")
        let driverPaths = try ReferenceDrivers.build(sdk: sdk, into: state + "/drivers")
        for path in driverPaths { progress("  built \(path)") }
        // Checked now, not after the bare run: a --root-driver the root cannot use is known already.
        let rootDriverPaths = try Self.replacing(driverPaths, with: rootDriverOverrides)

        let rebuilt = chaos ? try DemoChaos.rebuild(sdk: sdk, into: state + "/drivers/rebuilt") : nil
        if let rebuilt { progress("  built \(rebuilt.disk) and \(rebuilt.nic) (rebuilt copies of nvmelite and e1klite for --chaos)") }

        let bare = try runBare(state: state, driverPaths: driverPaths)
        let (root, survived, children, chaosEntry) = try runWithHypervisor(state: state, driverPaths: rootDriverPaths, rebuilt: rebuilt)

        // The claim, checked: the same files, byte for byte, everywhere.
        progress("")
        progress("driver        bare sha256        root sha256        same file  verified")
        var reused = 0
        for driver in bare.drivers {
            let other = root.drivers.first { $0.name == driver.name }
            let same = other?.sha256 == driver.sha256
            let verified = driver.verified && other?.verified == true
            if same && verified { reused += 1 }
            let name = driver.name.padding(toLength: 13, withPad: " ", startingAt: 0)
            progress("\(name) \(driver.sha256.prefix(16))…  \((other?.sha256.prefix(16)).map { "\($0)…" } ?? "-")  \(same ? "yes" : "NO ")        \(verified ? "yes" : "NO")")
        }
        var report = DemoReport(
            environments: ["bare": bare, "root": root], children: children, driverBinariesReused: reused, bareDataSurvivedReboot: survived,
            stateDirectory: temporary ? "(removed)" : state, durationSeconds: Date().timeIntervalSince(started))
        report.chaos = chaosEntry
        if let c = chaosEntry {
            let partitionsVerified = children.filter { $0.kind == .partition }.allSatisfy(\.verified)
            progress("chaos: \(c.replacements) live replacement(s) (nvmelite, e1klite) and \(c.restarts) restart(s) of nvmelite (\(c.reissued) request(s) re-issued) "
                + "under the children's I/O; their I/O verified: \(partitionsVerified ? "yes" : "NO")")
        }
        for vm in children where vm.kind == .linuxVM {
            let bareFiles = Dictionary(bare.drivers.map { ($0.name, $0.sha256) }, uniquingKeysWith: { a, _ in a })
            let served = vm.servedBy.map { "\($0.driver) \($0.sha256.prefix(16))… (\(bareFiles[$0.driver] == $0.sha256 ? "the bare OS's file" : "NOT the bare OS's file"))" }
            progress("\(vm.name) (\(vm.kernel.map { "\($0.package) \($0.version)" } ?? "Linux"), \(vm.vmm.map { "QEMU \($0.accelerator.uppercased())" } ?? "no VMM")): "
                + (vm.error.map { "did not run: \($0)" } ?? "served by \(served.joined(separator: ", ")); verified \(vm.verified ? "yes" : "NO")"))
        }
        let specific = report.hypervisorSpecificDrivers
        let partitions = children.filter { $0.kind == .partition }.count, vms = children.count - partitions
        progress("\(reused) driver binar\(reused == 1 ? "y" : "ies") reused unmodified on bare metal, in the root partition, for \(partitions) child partitions"
            + (vms > 0 ? " and \(vms) Linux VM\(vms == 1 ? "" : "s")" : "") + "; "
            + "\(specific.count) hypervisor-specific driver\(specific.count == 1 ? "" : "s") needed"
            + (specific.isEmpty ? "." : ": " + specific.map { "\($0.name) (\($0.path), sha256 \($0.sha256.prefix(16))…, not loaded on bare metal)" }.joined(separator: ", ")))
        if !temporary { progress("consoles: oyako console --state \(state) NAME   (bare, root, child0, child1\(linuxVM ? ", linux0" : ""))") }
        return report
    }

    /// `paths` with each driver whose metadata name matches one of
    /// `overrides` replaced by that file.
    static func replacing(_ paths: [String], with overrides: [String]) throws -> [String] {
        var result = paths
        for override in overrides {
            let name = try DriverFile.inspect(path: override).metadata.name
            guard let index = try result.firstIndex(where: { try DriverFile.inspect(path: $0).metadata.name == name }) else {
                throw DemoError(message: "\(override): its driver \"\(name)\" is not one the demo loads (\(paths.map { URL(fileURLWithPath: $0).lastPathComponent }.joined(separator: ", ")))")
            }
            result[index] = override
        }
        return result
    }

    // MARK: Bare metal

    private func runBare(state: String, driverPaths: [String]) throws -> DemoReport.Environment {
        progress("[bare] powering on: 128 MiB RAM, IOMMU, nvmelite, e1klite, uart16550, rnglite")
        let testbed = try Testbed.make(state: state, diskSize: diskSize, nics: 1, consoleLog: state + "/console/bare.log")
        let outside = Outside(nic: testbed.nics[0])
        defer {
            outside.close()
            testbed.machine.shutdown()
        }
        progress("[bare] eth0's cable leads to \(outside.description)")
        let kernel = Kernel(platform: BarePlatform(machine: testbed.machine), driverPaths: driverPaths)
        kernel.driverHostExecutable = driverHost
        let boot = kernel.boot()
        defer { kernel.shutdown() }
        let disks = try exercise(kernel: kernel, label: "bare", boot: boot, region: Self.bareRegion, seed: 0xBA2E)
        let serial = checkSerial(kernel: kernel, testbed: testbed, label: "bare")
        let entropy = checkEntropy(kernel: kernel, label: "bare")
        var network = false
        if let eth0 = kernel.network.interfaces.first {
            let stack = Self.hostStack(on: eth0, ip: Self.bareAddress)
            let out = stack.pingAndWait(Outside.address, id: 0xBA, count: 3)
            let back = outside.ping(Self.bareAddress, count: 3)
            network = out == 3 && back == 3
            progress("[bare] eth0 192.0.2.2: pinged the outside \(out)/3; the outside pinged us \(back)/3 (through e1klite)")
            eth0.setUpperLayer(nil)
        }
        return environment(boot: boot, disks: disks, network: network, serial: serial, entropy: entropy)
    }

    // MARK: Hypervisor role

    private func runWithHypervisor(state: String, driverPaths: [String], rebuilt: DemoChaos.Rebuilt?) throws
        -> (DemoReport.Environment, Bool, [DemoReport.ChildEntry], DemoReport.ChaosEntry?)
    {
        progress("")
        progress("[root] enabling the hypervisor role and rebooting the same machine (256 MiB RAM)")
        let testbed = try Testbed.make(state: state, diskSize: diskSize, memorySize: 256 << 20, nics: 1, consoleLog: state + "/console/root.log")
        let outside = Outside(nic: testbed.nics[0])
        defer {
            outside.close()
            testbed.machine.shutdown()
        }
        let root = try RootPartition(machine: testbed.machine, memory: 96 << 20)
        defer { root.shutdown() }
        let hv = root.hypervisor
        let sample = hv.machineAddress(partition: hv.root.id, gpa: 0x10_0000) ?? 0
        progress("[root] hypervisor started; root partition \(hv.root.id) with 96 MiB; root GPA 0x100000 is machine address 0x\(String(sample, radix: 16))")
        let kernel = Kernel(platform: root.platform, driverPaths: driverPaths)
        // --chaos: the disk driver runs in a driver-host process, to be killed.
        kernel.driverHostExecutable = driverHost ?? (rebuilt != nil ? URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path : nil)
        let boot = kernel.boot()
        defer { kernel.shutdown() }

        let disks = try exercise(kernel: kernel, label: "root", boot: boot, region: Self.rootRegion, seed: 0x2007)
        var survived = false
        if let disk = kernel.blockLayer.disks.first {
            // The bare run's first transfer: its pattern, at the region's start.
            let expected = Pattern.bytes(seed: 0xBA2E, lba: Self.bareRegion.lowerBound, blockSize: disk.geometry.blockSize, count: disk.geometry.blockSize)
            survived = (try? disk.read(lba: Self.bareRegion.lowerBound, count: disk.geometry.blockSize)) == expected
            progress("[root] \(disk.name): data the bare OS wrote before the reboot \(survived ? "reads back intact" : "DID NOT SURVIVE")")
        } else {
            progress("[root] no disk: cannot check that the bare OS's data survived the reboot")
        }
        let serial = checkSerial(kernel: kernel, testbed: testbed, label: "root")
        let entropy = checkEntropy(kernel: kernel, label: "root")

        // Switches: a private one for the children, an external one on eth0
        // shared with the root.
        let privateSwitch = VirtualSwitch(name: "private", kind: .private)
        let externalSwitch = VirtualSwitch(name: "external", kind: .external)
        defer {
            privateSwitch.shutdown()
            externalSwitch.shutdown()
        }
        var rootNetwork = false
        var rootStack: IPStack?
        if let eth0 = kernel.network.interfaces.first {
            try externalSwitch.attachUplink(eth0)
            rootStack = try externalSwitch.attachHost(mac: [0x02, 0x0A, 0x7A, 0x20, 0, 1], ip: Self.rootAddress)
            progress("[root] external switch bound to eth0 (e1klite, promiscuous), shared with the root at 192.0.2.3; eth0's cable leads to \(outside.description)")
            let back = outside.ping(Self.rootAddress, count: 3)
            rootNetwork = back == 3
            progress("[root] the outside pinged the root's switch port \(back)/3")
        }
        let nicSlot = testbed.machine.bus.enumerate().first { $0.device === testbed.nics[0] }
        let chaos = rebuilt.map { DemoChaos(kernel: kernel, disk: testbed.nvmeSlot, nic: nicSlot, rebuilt: $0, progress: progress) }
        let children = try runChildren(root: root, kernel: kernel, privateSwitch: privateSwitch, externalSwitch: externalSwitch,
                                       outside: outside, state: state, nic: testbed.nics[0], chaos: chaos)
        _ = rootStack
        let childrenReachedOutside = children.contains { $0.network?.pings.contains { $0.to == "192.0.2.1" && $0.answered == $0.sent } == true }
        return (environment(boot: boot, disks: disks, network: rootNetwork && childrenReachedOutside, serial: serial, entropy: entropy), survived, children,
                chaos?.report())
    }

    private func runChildren(root: RootPartition, kernel: Kernel, privateSwitch: VirtualSwitch, externalSwitch: VirtualSwitch,
                             outside: Outside, state: String, nic: E1KLite, chaos: DemoChaos?) throws -> [DemoReport.ChildEntry]
    {
        guard let disk = kernel.blockLayer.disks.first else { return [] }
        let manager = VMManager(root: root)
        let results = Mutex<[Int: DemoReport.ChildEntry]>([:])
        let finished = DispatchGroup()
        let child0Ready = DispatchSemaphore(value: 0)
        let progress = self.progress
        var children: [VMManager.Child] = []

        for i in 0..<2 {
            let name = "child\(i)"
            let start = Self.childBase + UInt64(i) * Self.childBlocks
            let child = try manager.createChild(name: name, memorySize: 16 << 20)
            manager.offerStorage(to: child, disk: disk, region: start..<(start + Self.childBlocks))
            manager.offerNetwork(to: child, vswitch: privateSwitch)
            if i == 0 { manager.offerNetwork(to: child, vswitch: externalSwitch) }
            progress("[root] created partition \(child.id) '\(name)' (16 MiB, 1 VP): virtual disk = \(disk.name) blocks \(start)..<\(start + Self.childBlocks) via \(disk.driverLabel); NIC on the private switch\(i == 0 ? " and one on the external switch" : "")")
            children.append(child)
        }

        chaos?.start()
        // child0 first: it serves; child1 pings it once it is up.
        var nicBefore = nic.statistics
        for (i, child) in children.enumerated() {
            if i == 1 { nicBefore = nic.statistics }
            let name = child.name
            let vdisk = "\(disk.name)[\(Self.childBase + UInt64(i) * Self.childBlocks)..<\(Self.childBase + UInt64(i + 1) * Self.childBlocks)]"
            let console = SerialLog(path: state + "/console/\(name).log")
            finished.enter()
            manager.start(child) { partition, vp in
                let os = GuestOS(name: name, partition: partition, vp: vp) { line in
                    progress(line)
                    console.received(Array((line + "\n").utf8))
                }
                let entry = Self.childWorkload(os, index: i, name: name, partition: partition.id, virtualDisk: vdisk, chaos: chaos)
                results.withLock { $0[i] = entry }
                if i == 0 { child0Ready.signal() }
                finished.leave()
                // Keep answering the network until the partition is stopped.
                vp.halt(until: { false })
            }
            if i == 0 {
                if child0Ready.wait(timeout: .now() + 60) == .timedOut { progress("[root] child0 did not come up within 60 s") }
                let answered = outside.ping(Self.externalAddress, count: 3)
                progress("[root] the outside pinged child0 at 192.0.2.20: \(answered)/3 (namespace or host -> e1klite -> external switch -> VMBus)")
                results.withLock { $0[0]?.network?.pings.append(.init(from: "outside", to: "192.0.2.20", sent: 3, answered: answered)) }
            }
        }
        if finished.wait(timeout: .now() + 120) == .timedOut { progress("[root] children did not finish within 120 s") }
        let privateFrames = privateSwitch.allPorts.reduce(0) { $0 + privateSwitch.counters(of: $1).outFrames }
        let nicAfter = nic.statistics
        progress("[root] private switch forwarded \(privateFrames) frames; the physical NIC sent \(nicAfter.framesSent - nicBefore.framesSent) meanwhile (child1's pings never left the box)")
        // The real VM joins while child0 still answers on the private switch.
        var vm: DemoReport.ChildEntry?
        if linuxVM {
            progress("")
            progress("[root] a real VM: Debian's Linux under QEMU, its disks and NICs served by the root over vhost-user")
            vm = LinuxVMRun(kernel: kernel, privateSwitch: privateSwitch, externalSwitch: externalSwitch, outside: outside, state: state,
                            installVMM: installVMM, progress: progress).run()
        } else {
            progress("[root] no real VM (--no-vm)")
        }
        for child in children {
            let served = manager.storageProviders(of: child).reduce(0) { $0 + $1.statistics.requests }
            let frames = manager.networkProviders(of: child).reduce(0) { $0 + $1.statistics.framesFromChild }
            progress("[root] \(child.name): storage VSP served \(served) requests, network VSP carried \(frames) frames from it; destroying the partition")
            manager.destroy(child)
        }
        let collected = results.withLock { $0 }
        return (0..<children.count).map { i in
            collected[i] ?? DemoReport.ChildEntry(name: "child\(i)", partition: 0, virtualDisk: "", error: "did not finish")
        } + (vm.map { [$0] } ?? [])
    }

    /// What child `index` does once booted: verified I/O on its virtual disk
    /// through VMBus, then pings (child0 the outside, child1 child0).
    private static func childWorkload(_ os: GuestOS, index i: Int, name: String, partition: UInt64, virtualDisk: String, chaos: DemoChaos?)
        -> DemoReport.ChildEntry
    {
        var entry = DemoReport.ChildEntry(name: name, partition: partition, virtualDisk: virtualDisk)
        do {
            try os.boot()
            guard let storage = try os.openStorage().first else { throw DemoError(message: "no storage offered") }
            var io = VerifiedIO(seed: 0xC0 + UInt64(i), regionBlocks: storage.blockCount)
            io.sizesInBlocks = [1, 7, 8, 64, 255, 256, 512, 2048, 4096]
            chaos?.childStartedIO()
            var transfers = 0
            repeat {  // under --chaos, until the chaos is over
                let result = try io.run(on: storage)
                entry.bytesWritten += result.bytesWritten
                entry.bytesRead += result.bytesRead
                transfers += result.transfers
                io.seed += 1
            } while chaos?.running == true
            entry.storageVerified = true
            os.log("disk: verified \(transfers) transfers, \(entry.bytesWritten >> 10) KiB written and read back through VMBus")
            let nics = try os.openNetwork()
            var network = DemoReport.NetworkEntry()
            let privateStack = os.bringUp(nics[0], ip: Self.privateAddresses[i])
            network.addresses.append(Self.dotted(Self.privateAddresses[i]))
            if i == 0, nics.count > 1 {
                let external = os.bringUp(nics[1], ip: Self.externalAddress)
                network.addresses.append(Self.dotted(Self.externalAddress))
                let answered = os.ping(external, Outside.address, count: 3)
                os.log("pinged the outside 192.0.2.1 through the external switch: \(answered)/3")
                network.pings.append(.init(from: name, to: "192.0.2.1", sent: 3, answered: answered))
            } else if i == 1 {
                let answered = os.ping(privateStack, Self.privateAddresses[0], count: 3)
                os.log("pinged child0 (192.0.2.10) over the private switch: \(answered)/3")
                network.pings.append(.init(from: name, to: "192.0.2.10", sent: 3, answered: answered))
            }
            entry.network = network
        } catch {
            os.log("FAILED: \(error)")
            entry.error = "\(error)"
        }
        return entry
    }

    // MARK: Checks

    private func environment(boot: Kernel.BootReport, disks: [DemoReport.DiskEntry], network: Bool, serial: Bool, entropy: Bool) -> DemoReport.Environment {
        let drivers = boot.drivers.map { record -> DemoReport.DriverEntry in
            let verified: Bool
            switch record.deviceClass {
            case RegisteredDisk.classID:
                let served = disks.filter { $0.driver == record.name }
                verified = !served.isEmpty && served.allSatisfy(\.verified)
            case RegisteredNetdev.classID: verified = network && !record.devices.isEmpty
            case RegisteredSerialPort.classID: verified = serial && !record.devices.isEmpty
            case RegisteredRNG.classID: verified = entropy && !record.devices.isEmpty
            default: verified = false
            }
            return DemoReport.DriverEntry(name: record.name, path: record.mappedPath ?? record.path, sha256: record.sha256, devices: record.devices, verified: verified)
        }
        return DemoReport.Environment(drivers: drivers, disks: disks, problems: boot.problems.map(\.description))
    }

    /// The console carries the kernel's log out through the vendor UART
    /// driver; bytes typed at the far end come back in, in order.
    private func checkSerial(kernel: Kernel, testbed: Testbed, label: String) -> Bool {
        guard let tty = kernel.serial.console else { return false }
        let marker = "oyako \(label) console check \(UInt32.random(in: 0...UInt32.max))\r\n"
        let before = testbed.console.contents.count
        tty.write(marker)
        let out = testbed.console.waitFor(before + marker.utf8.count, timeout: 5)
        let sent = String(decoding: out.dropFirst(before), as: UTF8.self).contains(marker)
        let typed = Array("typed at the far end of the line\n".utf8)
        testbed.uart.send(typed)
        var got: [UInt8] = []
        let deadline = Date(timeIntervalSinceNow: 5)
        while got.count < typed.count && Date() < deadline { got += tty.read(typed.count - got.count, timeout: 0.5) }
        let ok = sent && got == typed && tty.lost == 0
        progress("[\(label)] \(tty.name) (uart16550 @ \(tty.line.baud) baud): console out \(sent ? "ok" : "FAILED"), \(got.count)/\(typed.count) bytes in, in order \(got == typed ? "yes" : "NO")")
        return ok
    }

    /// The OS's /dev/random, served by the template's driver: two reads
    /// that arrive, are not all zero, and differ.
    private func checkEntropy(kernel: Kernel, label: String) -> Bool {
        guard let source = kernel.entropy.sources.first else {
            progress("[\(label)] no entropy source registered")
            return false
        }
        do {
            let first = try kernel.entropy.read(32), second = try kernel.entropy.read(32)
            let ok = first != second && first.contains { $0 != 0 } && second.contains { $0 != 0 }
            let sample = first.prefix(8).map { String(format: "%02x", $0) }.joined()
            progress("[\(label)] \(source.name) via \(source.driverLabel): /dev/random gave 2 × 32 bytes, \(ok ? "fresh each time" : "NOT FRESH") (\(sample)…)")
            return ok
        } catch {
            progress("[\(label)] \(source.name): /dev/random FAILED: \(error)")
            return false
        }
    }

    /// Verified I/O and a throughput run on every disk of `kernel`.
    func exercise(kernel: Kernel, label: String, boot: Kernel.BootReport, region: Range<UInt64>, seed: UInt64) throws -> [DemoReport.DiskEntry] {
        for problem in boot.problems { progress("[\(label)] problem: \(problem)") }
        for device in boot.devices { progress("[\(label)] \(device.location) \(hex(device.vendorID)):\(hex(device.deviceID)) -> \(device.driver ?? "-") (\(device.outcome))") }
        for library in kernel.loadedDrivers.sorted(by: { $0.name < $1.name }) {
            progress("[\(label)] loaded \(library.name) \(library.metadata.version), ABI \(library.abiVersion), mapped file \(library.mappedPath)")
            progress("[\(label)]   sha256 \(library.sha256)")
        }
        for slot in kernel.platform.bus.enumerate() {
            guard let (file, pid) = kernel.hostedDriver(at: slot.address) else { continue }
            progress("[\(label)] \(slot.address): \(file.metadata.name) \(file.metadata.version) in driver host \(pid), file \(file.resolvedPath)")
            progress("[\(label)]   sha256 \(file.sha256)")
        }
        var entries: [DemoReport.DiskEntry] = []
        for disk in kernel.blockLayer.disks {
            let driver = disk.driver.driverName
            progress("[\(label)] \(disk.name): \(disk.geometry.capacity >> 20) MiB, \(disk.geometry.blockSize)-byte blocks, via \(disk.driverLabel)")
            var verified = true
            var moved = VerifiedIO.Result()
            do {
                moved = try VerifiedIO(seed: seed, regionStart: region.lowerBound, regionBlocks: UInt64(region.count)).run(on: disk)
                progress("[\(label)] \(disk.name): verified \(moved.transfers) transfers of 1 to 256 blocks at odd offsets, with flush")
            } catch {
                verified = false
                progress("[\(label)] \(disk.name): VERIFY FAILED: \(error)")
            }
            let room = Int((disk.geometry.blockCount - min(disk.geometry.blockCount, Self.throughputStart)) * UInt64(disk.geometry.blockSize))
            let rate = try Throughput.measure(disk: disk, startLBA: Self.throughputStart, bytes: min(throughputBytes, room), requestBytes: 128 << 10, depth: 16)
            verified = verified && rate.verified
            progress("[\(label)] \(disk.name): sequential 128 KiB at QD 16: write \(format(rate.writeMiBPerSecond)) MiB/s, read \(format(rate.readMiBPerSecond)) MiB/s, data \(rate.verified ? "verified" : "MISMATCH")")
            entries.append(DemoReport.DiskEntry(
                name: disk.name, driver: driver, capacityBytes: disk.geometry.capacity, verified: verified,
                bytesWritten: moved.bytesWritten + UInt64(rate.bytes), bytesRead: moved.bytesRead + UInt64(rate.bytes),
                writeMiBPerSecond: rate.writeMiBPerSecond, readMiBPerSecond: rate.readMiBPerSecond))
        }
        return entries
    }

    /// An IPv4 host on one of the OS's interfaces.
    static func hostStack(on interface: NetInterface, ip: [UInt8]) -> IPStack {
        let stack = IPStack(mac: interface.mac, ip: ip) { frame in _ = interface.send(frame) }
        interface.setUpperLayer { bytes in stack.received(Array(bytes)) }
        return stack
    }

    static func dotted(_ ip: [UInt8]) -> String { ip.map(String.init).joined(separator: ".") }
}
