import ArgumentParser
import SystemAssembly
import DriverFile
import DriverHost
import Foundation

struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Build the vendor drivers; boot bare, then as the root partition; run child partitions; verify all I/O.",
        discussion: """
            Progress goes to standard output (standard error with --json). Exit status 1 if any I/O failed to verify, \
            or if the root partition needed a driver file the bare OS did not load. \
            A real VM (Debian's Linux kernel under QEMU) runs beside the child partitions; the first run installs \
            QEMU with apt when it is missing (as root) and builds the guest image from Debian's packages.
            """)

    @Option(help: "Keep disk images and built drivers in this folder (default: a temporary folder, removed afterwards).")
    var state: String?

    @Flag(help: "Print one JSON object on standard output at the end.")
    var json = false

    @Option(help: "SDK folder (default: found from the current folder, $OYAKO_SDK, or the source tree).")
    var sdk: String?

    @Option(name: .customLong("root-driver"),
            help: ArgumentHelp("Load this build in the root partition instead of the bare OS's build of the same driver (repeatable); the report counts it as hypervisor-specific.", valueName: "path.so"))
    var rootDrivers: [String] = []

    @Flag(name: .customLong("no-vm"), help: "Skip the real Linux VM (QEMU); it is then not part of the verdict.")
    var noVM = false

    @Flag(name: .customLong("no-install"), help: "Do not install a missing QEMU with apt; say why the VM cannot run instead.")
    var noInstall = false

    @Flag var placement: DriverPlacement = .driverHosts

    @Flag(help: "Run the root's disk driver in a driver host; while the children do I/O, replace it with a rebuilt copy and kill its host with SIGKILL for the Kernel to restart; their I/O must still verify.")
    var chaos = false

    @OptionGroup var global: GlobalOptions

    func validate() throws {
        for path in rootDrivers {
            // Read, not run: a file that is no driver is bad usage, found before anything boots.
            do {
                _ = try DriverFile.inspect(path: path)
            } catch {
                throw ValidationError("--root-driver \(error)")
            }
        }
    }

    func run() throws {
        global.bootstrapLogging()
        var runner = DemoRunner(sdk: try locateSDK(sdk), stateDirectory: state, progress: progressPrinter(toStderr: json))
        runner.rootDriverOverrides = rootDrivers
        runner.linuxVM = !noVM
        runner.installVMM = !noInstall
        runner.chaos = chaos
        runner.driverHost = placement == .driverHosts ? DriverPlacement.hostExecutable : nil
        let report = try runJob("demo") { try runner.run() }
        if json {
            try printJSON(report)
        } else {
            print(String(format: "done in %.1f s", report.durationSeconds))
        }
        if !report.allVerified || !report.reusedUnmodified { throw ExitCode.failure }
    }
}
