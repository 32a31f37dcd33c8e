import ArgumentParser
import Foundation
import Glibc
import Machine
import SDKTools
import SystemAssembly

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Boot the root partition with the vendor drivers and keep serving: vhost-user-blk for real VMs, and a control socket.",
        discussion: """
            The first disk is served at STATE/vda.sock (point QEMU's vhost-user-blk-pci at it). Drivers are listed, \
            loaded, unloaded and replaced live through STATE/control.sock with `oyako driver list|load|unload|replace \
            --control STATE/control.sock`. Runs until SIGINT, SIGTERM, SIGHUP or a shutdown request.
            """)

    @Option(help: "Folder for the disk image, the built drivers and the sockets (created when missing).")
    var state: String

    @Option(name: .customLong("driver"), help: ArgumentHelp("Load this driver file (repeatable; default: build and load the reference drivers).", valueName: "path.so"))
    var drivers: [String] = []

    @Flag(help: "Boot the OS on bare metal instead of as the root partition.")
    var bare = false

    @Flag var placement: DriverPlacement = .driverHosts

    @Option(name: .customLong("disk-mib"), help: "Size of a new disk image, in MiB.")
    var diskMiB: UInt64 = 256

    @Option(help: "SDK folder (default: found from the current folder, $OYAKO_SDK, or the source tree).")
    var sdk: String?

    @Option(name: .customLong("vm-group"), help: ArgumentHelp(
        "Let this group's members connect to vda.sock too (mode 0660): for a VMM that runs as another user. The control socket stays this user's alone.",
        valueName: "group"))
    var vmGroup: String?

    @OptionGroup var global: GlobalOptions

    /// The group --vm-group names, by name or number.
    var vmAccess: SocketAccess {
        get throws {
            guard let vmGroup else { return .owner }
            if let entry = getgrnam(vmGroup) { return .group(entry.pointee.gr_gid) }
            if let gid = gid_t(vmGroup), getgrgid(gid) != nil { return .group(gid) }
            throw ValidationError("--vm-group \(vmGroup): no such group on this system (see /etc/group)")
        }
    }

    func validate() throws {
        for path in drivers {
            if let problem = missingDriverFile(path) { throw ValidationError("--driver \(problem)") }
        }
        guard (1...65536).contains(diskMiB) else { throw ValidationError("--disk-mib must be between 1 and 65536") }
        _ = try vmAccess
        // Known now, not after the boot: the sockets live in the folder.
        let longest = ServeSession.controlPath(state: URL(fileURLWithPath: state).standardizedFileURL.path)
        guard longest.utf8.count <= UnixSocketServer.maxPathBytes else {
            throw ValidationError("--state \(state): its sockets' paths (\(longest)) would be longer than the \(UnixSocketServer.maxPathBytes) bytes a Unix socket's path may have; choose a shorter folder")
        }
    }

    func run() throws {
        global.bootstrapLogging()
        let state = URL(fileURLWithPath: self.state).standardizedFileURL.path
        try createFolder(state)
        // Held until this process ends: before anything in the folder is touched.
        let lock = try runJob("serve") { try StateFolderLock(state, holder: "oyako serve") }
        defer { withExtendedLifetime(lock) {} }
        let files = try drivers.isEmpty ? runJob("building the reference drivers") {
            try ReferenceDrivers.build(sdk: try locateSDK(sdk), into: state + "/drivers")
        } : drivers
        var options = ServeSession.Options(state: state, drivers: files)
        options.diskSize = diskMiB << 20
        options.bareMetal = bare
        options.vmAccess = try vmAccess
        if placement == .driverHosts { options.driverHost = DriverPlacement.hostExecutable }
        let session = try runJob("serve") { try ServeSession(options) }
        // SIGINT, SIGTERM and SIGHUP (its terminal closed) end the session cleanly.
        let signals = [SIGINT, SIGTERM, SIGHUP].map { number -> DispatchSourceSignal in
            Glibc.signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number)
            source.setEventHandler { session.requestShutdown() }
            source.resume()
            return source
        }
        var banner = "serving on \(bare ? "bare metal" : "the root partition"):\n"
        for library in session.kernel.loadedDrivers.sorted(by: { $0.name < $1.name }) {
            banner += "  driver \(library.name) \(library.metadata.version) sha256 \(library.sha256.prefix(16))\n"
        }
        for slot in session.kernel.platform.bus.enumerate() {
            guard let (file, pid) = session.kernel.hostedDriver(at: slot.address) else { continue }
            banner += "  driver \(file.metadata.name) \(file.metadata.version) sha256 \(file.sha256.prefix(16)) on \(slot.address) in driver host \(pid)\n"
        }
        if let block = session.blockServer {
            banner += "  vhost-user-blk: \(block.path)\(vmGroup.map { " (group \($0) may connect)" } ?? "")\n"
        }
        banner += "  control: \(session.control.path) (oyako driver list|load|unload|replace --control \(session.control.path))\n"
        // Unbuffered: whoever started us waits for this line.
        FileHandle.standardOutput.write(Data(banner.utf8))
        session.wait()
        for source in signals { source.cancel() }
        session.shutdown()
        print("stopped")
    }
}

/// Where the drivers run: each in a driver-host process of its own (the
/// default), or in oyako's own process.
enum DriverPlacement: String, EnumerableFlag {
    case driverHosts, inProcess

    static func help(for value: DriverPlacement) -> ArgumentHelp? {
        switch value {
        case .driverHosts: "Run each driver in a driver-host process of its own (the default): a crash ends only that process, and the driver is restarted."
        case .inProcess: "Run the drivers in this process (to debug a driver; a crash ends everything)."
        }
    }

    /// This executable, which runs driver hosts (`oyako driver-host`).
    static var hostExecutable: String { URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path }
}
