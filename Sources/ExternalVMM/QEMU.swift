import CSystemShims
import Foundation
import Glibc
import SDKTools

/// Which QEMU runs the guests, and how it executes them.
public struct VMMInfo: Sendable, Equatable, Codable {
    public let name: String
    public let version: String
    public let path: String
    public let accelerator: Accelerator
    /// Why this accelerator, in words.
    public let acceleratorReason: String

    public enum Accelerator: String, Sendable, Codable { case kvm, tcg }

    public static let binary = "qemu-system-x86_64"

    public enum Problem: Error, CustomStringConvertible, Sendable, Equatable {
        case missing(searched: [String])
        case unusable(path: String, output: String)

        public var isMissing: Bool { if case .missing = self { true } else { false } }

        public var description: String {
            switch self {
            case .missing(let searched):
                "\(binary) is not installed (looked in \(searched.joined(separator: ", "))); Debian's qemu-system-x86 package has it: apt-get install qemu-system-x86"
            case .unusable(let path, let output): "\(path) --version failed: \(output)"
            }
        }
    }

    /// Finds QEMU on PATH and picks the accelerator: KVM where the host has
    /// hardware virtualization (kvm_intel or kvm_amd loaded and /dev/kvm
    /// usable), QEMU's own TCG otherwise.
    public static func detect() throws(Problem) -> VMMInfo {
        let directories = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").map(String.init)
        guard let path = directories.map({ $0 + "/" + binary }).first(where: { access($0, X_OK) == 0 }) else { throw .missing(searched: directories) }
        let result = ProcessRunner.run(path, ["--version"], timeout: 30)
        guard result.status == 0, let line = result.stdout.split(separator: "\n").first else { throw .unusable(path: path, output: result.output) }
        let version = line.replacingOccurrences(of: "QEMU emulator version ", with: "")
        let (accelerator, reason) = chooseAccelerator()
        return VMMInfo(name: "qemu", version: String(version), path: path, accelerator: accelerator, acceleratorReason: reason)
    }

    static func chooseAccelerator() -> (Accelerator, String) {
        let hardware = ["kvm_intel", "kvm_amd"].first { FileManager.default.fileExists(atPath: "/sys/module/\($0)") }
        guard let hardware else {
            let other = FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm") ? " (/dev/kvm here is kvm_pvm, a software KVM a stock kernel does not boot under)" : ""
            return (.tcg, "no hardware virtualization (neither kvm_intel nor kvm_amd is loaded)\(other): QEMU's TCG emulates the guest")
        }
        guard access("/dev/kvm", R_OK | W_OK) == 0 else { return (.tcg, "\(hardware) is loaded but /dev/kvm is not usable by this user: TCG") }
        return (.kvm, "\(hardware) is loaded: the guest runs on the processor (KVM)")
    }
}

/// A Linux guest in a QEMU process that Oyako started and supervises: its
/// memory a shared memfd (so vhost-user back-ends can map it), its disks
/// and NICs vhost-user devices on the root's sockets, its serial console
/// captured to a file and parsed for the guest's `OYAKO key value` reports.
/// QEMU dying ends this VM only; QEMU never outlives the process that
/// started it (tethered with PR_SET_PDEATHSIG), and `stop` ends it.
public final class QEMUMachine: @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `lock`.
    public struct NetDevice: Sendable {
        public let socket: String
        public let mac: String
        public init(socket: String, mac: String) { self.socket = socket; self.mac = mac }
    }

    public struct Configuration: Sendable {
        public var name: String
        public var image: GuestImage
        public var vmm: VMMInfo
        public var memoryMiB = 256
        public var cpus = 1
        /// vhost-user-blk sockets, in the order the guest sees vda, vdb, …
        public var disks: [String] = []
        public var nics: [NetDevice] = []
        /// A vhost-user-rng socket, if the guest gets one.
        public var rng: String?
        /// The shell script the guest's init runs.
        public var job: String
        /// Whether a guest reboot restarts it (else QEMU exits).
        public var allowReboot = false
        /// Where the job script is written, and the console unless `consoleLog` says otherwise.
        public var directory: String
        public var consoleLog: String?

        public init(name: String, image: GuestImage, vmm: VMMInfo, job: String, directory: String) {
            self.name = name
            self.image = image
            self.vmm = vmm
            self.job = job
            self.directory = directory
        }
    }

    public typealias Exit = SupervisedProcess.Exit

    public enum StartError: Error, CustomStringConvertible, Sendable {
        case io(String)
        case spawn(errno: Int32)

        public var description: String {
            switch self {
            case .io(let what): what
            case .spawn(let code): "cannot start \(VMMInfo.binary): \(String(cString: strerror(code)))"
            }
        }
    }

    public let configuration: Configuration
    /// The QEMU process.
    public let process: SupervisedProcess
    public var pid: pid_t { process.pid }
    public var consolePath: String { configuration.consoleLog ?? configuration.directory + "/console.log" }
    public let startedAt = Date()

    private let lock = NSCondition()
    private var reports: [(key: String, value: String)] = []

    public init(_ configuration: Configuration) throws(StartError) {
        self.configuration = configuration
        let jobPath = configuration.directory + "/job.sh"
        let console = configuration.consoleLog ?? configuration.directory + "/console.log"
        do {
            try FileManager.default.createDirectory(atPath: configuration.directory, withIntermediateDirectories: true)
            try Data(configuration.job.utf8).write(to: URL(fileURLWithPath: jobPath))
        } catch {
            throw .io("cannot prepare \(configuration.directory): \(error.localizedDescription)")
        }
        guard let log = FileHandle(forWritingAtPath: console) ?? {
            _ = FileManager.default.createFile(atPath: console, contents: nil)  // a failure shows as no handle
            return FileHandle(forWritingAtPath: console)
        }() else { throw .io("cannot write \(console)") }
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { throw .spawn(errno: errno) }
        // Neither end may leak into other children (the VMM gets its end as stdout).
        for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let arguments = Self.arguments(configuration, job: jobPath)
        let started = SupervisedProcess.start(configuration.vmm.path, arguments, output: pipeFDs[1])
        close(pipeFDs[1])
        switch started {
        case .success(let process): self.process = process
        case .failure(let error):
            close(pipeFDs[0])
            throw .spawn(errno: error.errno)
        }
        let readEnd = pipeFDs[0]
        Thread.detachNewThread { [self] in readConsole(readEnd, into: log) }
        process.onExit { [weak self] _ in self?.lock.withLock { self?.lock.broadcast() } }
    }

    deinit { stop() }

    /// The QEMU command line (also what a person would type to reproduce it).
    static func arguments(_ c: Configuration, job: String) -> [String] {
        var a = ["-name", c.name, "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-monitor", "none",
                 "-accel", c.vmm.accelerator.rawValue, "-smp", "\(c.cpus)", "-m", "\(c.memoryMiB)M",
                 // vhost-user back-ends map the guest's RAM: it must be a shared, file-backed object.
                 "-object", "memory-backend-memfd,id=ram,size=\(c.memoryMiB)M,share=on", "-numa", "node,memdev=ram",
                 "-kernel", c.image.kernelPath, "-initrd", c.image.initramfsPath,
                 "-append", "console=ttyS0 quiet panic=-1",
                 "-fw_cfg", "name=opt/oyako/job,file=\(job)"]
        if c.vmm.accelerator == .kvm { a += ["-cpu", "host"] }
        if !c.allowReboot { a.append("-no-reboot") }
        for (i, disk) in c.disks.enumerated() {
            a += ["-chardev", "socket,id=disk\(i),path=\(disk)", "-device", "vhost-user-blk-pci,chardev=disk\(i),num-queues=1"]
        }
        // QEMU 7.2 (Debian 12) crashes in msix_set_vector_notifiers when a
        // vhost-user NIC starts under TCG (no irqfd): such NICs use INTx.
        let vectors = c.vmm.accelerator == .tcg ? ",vectors=0" : ""
        for (i, nic) in c.nics.enumerated() {
            a += ["-chardev", "socket,id=nic\(i),path=\(nic.socket)", "-netdev", "vhost-user,id=net\(i),chardev=nic\(i)",
                  "-device", "virtio-net-pci,netdev=net\(i),mac=\(nic.mac)\(vectors)"]
        }
        if let rng = c.rng { a += ["-chardev", "socket,id=rng0,path=\(rng)", "-device", "vhost-user-rng-pci,chardev=rng0"] }
        return a
    }

    /// Every `OYAKO key value` line the guest printed, in order.
    public var allReports: [(key: String, value: String)] { lock.withLock { reports } }

    /// The last value reported for `key`.
    public func report(_ key: String) -> String? { lock.withLock { reports.last { $0.key == key }?.value } }

    public var exit: Exit? { process.exit }

    /// Waits until the guest reports `key` (true) or QEMU exits or `timeout` passes (false).
    public func waitForReport(_ key: String, count: Int = 1, timeout: TimeInterval) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        return lock.withLock {
            while reports.filter({ $0.key == key }).count < count {
                if process.exit != nil || !lock.wait(until: deadline) { return reports.filter { $0.key == key }.count >= count }
            }
            return true
        }
    }

    /// Waits for QEMU to exit; nil when it outlived `timeout`.
    public func waitForExit(timeout: TimeInterval) -> Exit? { process.waitForExit(timeout: timeout) }

    /// Ends the VM: SIGTERM (QEMU shuts down), then SIGKILL if it lingers.
    public func stop() { process.stop() }

    /// The console: copied to the log file line by line, `OYAKO` lines parsed.
    private func readConsole(_ fd: Int32, into log: FileHandle) {
        defer { close(fd); try? log.close() }
        var pending = Data()
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            let bytes = Data(chunk[0..<n])
            log.write(bytes)
            pending.append(bytes)
            while let newline = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                pending.removeSubrange(pending.startIndex...newline)
                parse(line)
            }
        }
    }

    private func parse(_ line: String) {
        guard line.hasPrefix("OYAKO ") else { return }
        let parts = line.dropFirst(6).split(separator: " ", maxSplits: 1)
        guard let key = parts.first else { return }
        lock.withLock {
            reports.append((String(key), parts.count > 1 ? String(parts[1]) : ""))
            lock.broadcast()
        }
    }

}
