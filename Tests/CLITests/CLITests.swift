@testable import SystemAssembly
import DriverHost
import ExternalVMM
import Foundation
import SDKTools
import OyakoTestSupport
import Testing

/// Runs the built `oyako` binary, as a user would.
func oyako(_ arguments: [String]) -> (status: Int32, stdout: String, stderr: String, output: String) {
    let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("oyako").path
    let candidates = [binary, Fixtures.repositoryRoot + "/.build/debug/oyako"]
    guard let executable = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        return (-1, "", "oyako binary not found in \(candidates)", "")
    }
    let result = ProcessRunner.run(executable, arguments)
    return (result.status, result.stdout, result.stderr, result.output)
}

@Suite struct CLITests {
    @Test func inspectShowsMetadataWithoutRunningTheDriver() throws {
        let path = try Fixtures.referenceDriver()
        let result = oyako(["driver", "inspect", path])
        #expect(result.status == 0, "\(result.stderr)")
        for field in ["nvmelite", "1.0.0", "Oyako Reference Devices", "oyako.block/1", "0a7a:0001", "oy_driver_entry"] {
            #expect(result.stdout.contains(field), "inspect shows \(field)")
        }
        #expect(result.stdout.contains(sha256Hex(ofFile: path)!))
    }

    @Test func inspectJSON() throws {
        let result = oyako(["driver", "inspect", try Fixtures.referenceDriver(), "--json"])
        #expect(result.status == 0)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(json["name"] as? String == "nvmelite")
        #expect(json["exported_symbols"] as? [String] == ["oy_driver_entry"])
        #expect(json["needed_libraries"] as? [String] == ["libc.so.6"])
        #expect((json["abi"] as? [String: Int]) == ["min": 1, "max": 1])
    }

    @Test func inspectOfABadFileFailsWithAMessage() throws {
        let result = oyako(["driver", "inspect", "/nonexistent/driver.so"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("/nonexistent/driver.so"), "the error names the file: \(result.stderr)")
        #expect(result.stdout.isEmpty)
    }

    /// Said once, as a usage error, before a worker boots a machine to find
    /// out (the Kernel's log line said it a second time).
    @Test func callingAMethodOfAMissingFileIsAUsageError() throws {
        let missing = oyako(["driver", "call", "/nonexistent/driver.so", "random32"])
        #expect(missing.status == 64 && missing.stderr.components(separatedBy: "no such file").count == 2
                    && missing.stderr.contains("/nonexistent/driver.so: no such file; check the path to the driver's .so"), "\(missing.output)")
        let folder = oyako(["driver", "call", NSTemporaryDirectory()])
        #expect(folder.status == 64 && folder.stderr.contains(": a folder, not a driver file"), "\(folder.output)")
    }

    @Test(arguments: ["demo", "bench"])
    func aMissingSDKIsAnErrorThatNamesIt(command: String) {
        let result = oyako([command, "--sdk", "/nonexistent/oyako-sdk"])
        #expect(result.status == 1, "\(result.output)")
        #expect(result.stderr.hasPrefix("oyako: "), "\(result.stderr)")
        #expect(result.stderr.contains("/nonexistent/oyako-sdk"), "\(result.stderr)")
        #expect(result.stdout.isEmpty)
    }

    /// Foundation's error for a folder it cannot make is a dump of its
    /// userInfo; the user gets the folder and the reason instead.
    @Test(arguments: ["serve", "demo"])
    func aStateFolderThatCannotBeMadeSaysWhichAndWhy(command: String) throws {
        let blocker = Fixtures.temporaryDirectory("state") + "/a-file"
        try "not a folder".write(toFile: blocker, atomically: true, encoding: .utf8)
        let result = oyako([command, "--state", blocker + "/state"])
        #expect(result.status == 1, "\(result.output)")
        #expect(result.stderr.contains("cannot create the folder \(blocker): a file of that name is in the way"), "\(result.stderr)")
        #expect(!result.stderr.contains("NSCocoaErrorDomain"))
    }

    /// The VM's sockets live in the state folder: one too deep for a Unix
    /// socket's path is refused at the start, not after the bare and root runs.
    @Test func aDemoStateFolderTooDeepForItsSocketsIsRefusedAtOnce() throws {
        let deep = Fixtures.temporaryDirectory("state") + "/" + String(repeating: "d", count: 100)
        let result = oyako(["demo", "--state", deep])
        #expect(result.status == 1 && result.stderr.contains("is too deep for the VM's sockets"), "\(result.output)")
        #expect(!result.stdout.contains("building vendor drivers") && !FileManager.default.fileExists(atPath: deep), "\(result.stdout)")
    }

    @Test func createFolderMakesEveryMissingParent() throws {
        let base = Fixtures.temporaryDirectory("folders")
        try createFolder(base + "/one/two/three")
        try createFolder(base + "/one/two/three")  // again: already there is fine
        var isFolder: ObjCBool = false
        #expect(FileManager.default.fileExists(atPath: base + "/one/two/three", isDirectory: &isFolder) && isFolder.boolValue)
        let error = #expect(throws: FolderError.self) { try createFolder("/proc/oyako-cannot-be-here/x") }
        #expect(error?.path == "/proc/oyako-cannot-be-here" && error?.reason == "No such file or directory", "\(String(describing: error))")
    }

    @Test func unknownArgumentsAreAUsageError() {
        let result = oyako(["demo", "--no-such-flag"])
        #expect(result.status == 64)
        #expect(result.stderr.contains("no-such-flag"))
    }

    @Test func buildOfWhatIsNoFolderSaysSo() throws {
        let missing = oyako(["driver", "build", "/nonexistent/driver-src"])
        #expect(missing.status == 1 && missing.stderr.contains("/nonexistent/driver-src: no such folder"), "\(missing.stderr)")
        let file = Fixtures.temporaryDirectory("build") + "/driver.c"
        try "int x;".write(toFile: file, atomically: true, encoding: .utf8)
        let notFolder = oyako(["driver", "build", file])
        #expect(notFolder.status == 1 && notFolder.stderr.contains("not a folder"), "\(notFolder.stderr)")
    }

    @Test func buildReportsCompilerErrors() throws {
        let dir = Fixtures.temporaryDirectory("broken")
        try "this is not C".write(toFile: dir + "/broken.c", atomically: true, encoding: .utf8)
        let result = oyako(["driver", "build", dir])
        #expect(result.status == 1)
        #expect(result.stderr.contains("broken.c"), "the compiler's diagnostics for the file are shown: \(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/broken.so"))
    }

    @Test func demoJSONShowsTheMappedFileAndVerifiedIO() throws {
        let state = Fixtures.temporaryDirectory("demo")
        // The real VM runs where QEMU is (CI installs it); elsewhere it is left out, not installed by a test.
        let vm = (try? VMMInfo.detect()) != nil
        let result = oyako(["demo", "--json", "--state", state, "--no-install"] + (vm ? [] : ["--no-vm"]))
        #expect(result.status == 0, "\(result.stderr)")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        let bare = try #require((json["environments"] as? [String: Any])?["bare"] as? [String: Any])
        let drivers = try #require(bare["drivers"] as? [[String: Any]])
        let nvme = try #require(drivers.first { $0["name"] as? String == "nvmelite" })
        #expect(nvme["verified"] as? Bool == true)
        let path = try #require(nvme["path"] as? String)
        #expect(path == state + "/drivers/nvmelite.so")
        #expect(nvme["sha256"] as? String == sha256Hex(ofFile: path))
        #expect(nvme["devices"] as? [String] == ["00:01.0"])
        #expect(result.stderr.contains("[bare] disk0: verified"), "progress goes to stderr with --json")
        // The same file, byte for byte, in the root partition.
        let root = try #require((json["environments"] as? [String: Any])?["root"] as? [String: Any])
        let rootDriver = try #require((root["drivers"] as? [[String: Any]])?.first { $0["name"] as? String == "nvmelite" })
        #expect(rootDriver["sha256"] as? String == nvme["sha256"] as? String)
        #expect(rootDriver["verified"] as? Bool == true)
        let children = try #require(json["children"] as? [[String: Any]])
        #expect(children.count == (vm ? 3 : 2))
        #expect(children.filter { $0["kind"] as? String == "partition" }.count == 2)
        for child in children {
            #expect(child["verified"] as? Bool == true, "\(child)")
            #expect((child["bytes_written"] as? Int ?? 0) > 0)
            let network = try #require(child["network"] as? [String: Any])
            #expect(network["verified"] as? Bool == true, "\(network)")
        }
        // All three vendor drivers, the same files in both environments.
        let bareDrivers = try #require(bare["drivers"] as? [[String: Any]])
        let rootDrivers = try #require(root["drivers"] as? [[String: Any]])
        #expect(Set(bareDrivers.compactMap { $0["name"] as? String }) == ["nvmelite", "e1klite", "uart16550", "mydriver"])
        for driver in bareDrivers {
            let twin = rootDrivers.first { $0["name"] as? String == driver["name"] as? String }
            #expect(twin?["sha256"] as? String == driver["sha256"] as? String)
            #expect(driver["verified"] as? Bool == true && twin?["verified"] as? Bool == true, "\(driver)")
        }
        // The consoles are readable from the CLI.
        let console = oyako(["console", "--state", state, "root"])
        #expect(console.status == 0 && console.stdout.contains("[kernel]"), "\(console.stdout.prefix(300))")
        let child = oyako(["console", "--state", state, "child1"])
        #expect(child.stdout.contains("pinged child0"), "\(child.stdout)")
        #expect(oyako(["console", "--state", state, "nosuch"]).status == 1)
        if vm { try checkLinuxVM(children, state: state, nvmelite: nvme) }
        #expect(json["reused_unmodified"] as? Bool == true)
        #expect(json["hypervisor_specific_drivers"] as? Int == 0)
        #expect((json["hypervisor_specific_driver_files"] as? [Any])?.isEmpty == true)
        #expect(json["bare_data_survived_reboot"] as? Bool == true)
        #expect(json["verified"] as? Bool == true)
    }

    /// The demo's real VM: Debian's kernel as packaged, the VMM and its
    /// accelerator named, 64 MiB written and verified, its pings and TCP
    /// transfer verified, its disks served by the bare OS's nvmelite.so.
    private func checkLinuxVM(_ children: [[String: Any]], state: String, nvmelite: [String: Any]) throws {
        let vm = try #require(children.first { $0["kind"] as? String == "linux-vm" })
        #expect(vm["verified"] as? Bool == true, "\(vm)")
        let kernel = try #require(vm["kernel"] as? [String: Any])
        #expect((kernel["package"] as? String)?.hasPrefix("linux-image-") == true && (kernel["sha256"] as? String)?.count == 64)
        let vmm = try #require(vm["vmm"] as? [String: Any])
        #expect(vmm["name"] as? String == "qemu" && ["tcg", "kvm"].contains(vmm["accelerator"] as? String ?? ""))
        #expect((vm["bytes_written"] as? Int ?? 0) >= 64 << 20 && (vm["bytes_read"] as? Int ?? 0) >= 64 << 20)
        let served = try #require(vm["served_by"] as? [[String: Any]])
        #expect(served.first { $0["driver"] as? String == "nvmelite" }?["sha256"] as? String == nvmelite["sha256"] as? String)
        let network = try #require(vm["network"] as? [String: Any])
        #expect((network["pings"] as? [[String: Any]])?.count == 2)
        for transfer in network["transfers"] as? [[String: Any]] ?? [] { #expect(transfer["verified"] as? Bool == true, "\(transfer)") }
        let console = oyako(["console", "--state", state, "linux0"])
        #expect(console.stdout.contains("OYAKO boot"), "the guest's serial console is kept: \(console.stdout.prefix(300))")
    }

    /// The count of hypervisor-specific drivers is measured: a root that
    /// loads another build of one driver needs one, by name and file, and
    /// the claim fails.
    @Test func aRootOnlyDriverBuildIsCountedAsHypervisorSpecific() throws {
        let rebuilt = try Fixtures.referenceDriver("nvmelite", defines: ["NVMELITE_VERSION=\"1.0.1-root\""])
        let result = oyako(["demo", "--json", "--no-vm", "--root-driver", rebuilt])
        #expect(result.status == 1, "a driver the bare OS did not load breaks the claim: \(result.stderr.suffix(400))")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(json["hypervisor_specific_drivers"] as? Int == 1)
        let files = try #require(json["hypervisor_specific_driver_files"] as? [[String: Any]])
        #expect(files.map { $0["name"] as? String } == ["nvmelite"])
        #expect(files.first?["sha256"] as? String == sha256Hex(ofFile: rebuilt))
        #expect(json["driver_binaries_reused"] as? Int == 3)
        #expect(json["reused_unmodified"] as? Bool == false)
        #expect(json["verified"] as? Bool == true, "the other build still does verified I/O")
    }

    /// A JUnit report that cannot be written is known before the run, not
    /// as Foundation's error dump after it.
    @Test func aJUnitPathThatCannotBeWrittenIsAUsageError() throws {
        let driver = try Fixtures.referenceDriver("nvmelite")
        let folder = Fixtures.temporaryDirectory("junit")
        for (path, reason) in [(folder + "/missing/report.xml", "its folder \(folder)/missing does not exist"), (folder, "it is a folder")] {
            let result = oyako(["conformance", driver, "--filter", "file.elf", "--junit", path])
            #expect(result.status == 64 && result.stdout.isEmpty, "\(result.output)")
            #expect(result.stderr.contains("--junit \(path): \(reason)") && !result.stderr.contains("NSCocoaErrorDomain"), "\(result.stderr)")
        }
        let written = oyako(["conformance", driver, "--filter", "file.elf", "--junit", folder + "/report.xml"])
        #expect(written.status == 0, "\(written.output)")
        #expect(FileManager.default.contents(atPath: folder + "/report.xml").map { String(decoding: $0, as: UTF8.self).contains("<testsuites") } == true)
    }

    /// A negative number after an option is that option's bad value, and
    /// says what the option takes (not that its value is missing).
    @Test func aNegativeTimeIsRefusedForWhatItIs() throws {
        let driver = try Fixtures.referenceDriver()
        let budget = oyako(["conformance", driver, "--time-budget", "-1"])
        #expect(budget.status == 64 && budget.stderr.contains("--time-budget takes seconds, 0 or more"), "\(budget.output)")
        let timeout = oyako(["driver", "call", driver, "--timeout", "-3"])
        #expect(timeout.status == 64 && timeout.stderr.contains("--timeout takes a number of seconds, 0 or more"), "\(timeout.output)")
    }

    @Test func aRootDriverThatIsNoFileIsAUsageError() throws {
        let result = oyako(["demo", "--root-driver", "/nonexistent/nvmelite.so"])
        #expect(result.status == 64)
        #expect(result.stdout.isEmpty)
        // A file that is no driver: bad usage too, said before anything is built or booted.
        let text = Fixtures.temporaryDirectory("root-driver") + "/nvmelite.so"
        try "not a driver".write(toFile: text, atomically: true, encoding: .utf8)
        let notDriver = oyako(["demo", "--root-driver", text])
        #expect(notDriver.status == 64 && notDriver.stdout.isEmpty && notDriver.stderr.contains("not an ELF file"), "\(notDriver.output)")
    }

    /// A driver the demo does not load cannot stand in for one in the root:
    /// said after the build, before the bare OS boots.
    @Test func aRootDriverTheDemoDoesNotLoadFailsBeforeBooting() throws {
        let other = try Fixtures.fixtureDriver()
        let result = oyako(["demo", "--no-vm", "--in-process", "--root-driver", other])
        #expect(result.status == 1 && result.stderr.contains("is not one the demo loads"), "\(result.output)")
        #expect(!result.output.contains("[bare]"), "nothing booted first: \(result.stdout.suffix(300))")
    }

    @Test func theReportIsUnverifiedWhenTheBareDataDidNotSurviveTheReboot() {
        let driver = DemoReport.DriverEntry(name: "nvmelite", path: "/d/nvmelite.so", sha256: "ab", devices: ["00:01.0"], verified: true)
        let environment = DemoReport.Environment(drivers: [driver], disks: [], problems: [])
        var report = DemoReport(environments: ["bare": environment, "root": environment], children: [], driverBinariesReused: 1,
                                bareDataSurvivedReboot: true, stateDirectory: "", durationSeconds: 0)
        #expect(report.allVerified && report.reusedUnmodified && report.hypervisorSpecificDrivers.isEmpty)
        report.bareDataSurvivedReboot = false
        #expect(!report.allVerified && !report.reusedUnmodified)
    }

    @Test func aDriverWithoutControlMethodsIsSaidToHaveNone() throws {
        let plain = try Fixtures.mutatedTemplateDriver([("    my_init, my_deinit, my_probe, my_attach, my_detach, my_remove, my_get_extension,",
                                                         "    my_init, my_deinit, my_probe, my_attach, my_detach, my_remove, NULL,")])
        let list = oyako(["driver", "call", plain])
        #expect(list.status == 0 && list.stdout == "mydriver has no control methods\n", "\(list.output)")
    }

    @Test func controlMethodsAreCalledThroughLibffiWithCheckedArguments() throws {
        let uart = try Fixtures.referenceDriver("uart16550")
        let list = oyako(["driver", "call", uart])
        #expect(list.status == 0 && list.stdout.contains("set_baud i32(u32)"), "\(list.stdout)")
        let ok = oyako(["driver", "call", uart, "set_baud", "57600"])
        #expect(ok.status == 0 && ok.stdout == "0\n", "\(ok.output)")
        let range = oyako(["driver", "call", uart, "set_baud", "57601"])
        #expect(range.stdout.contains("-11 (OY_E_RANGE"), "\(range.stdout)")
        // Refused before the driver is called: the error names what is wrong.
        let count = oyako(["driver", "call", uart, "set_baud"])
        #expect(count.status == 1 && count.stdout.isEmpty && count.stderr.contains("set_baud"), "\(count.stderr)")
        let type = oyako(["driver", "call", uart, "set_baud", "-5"])
        #expect(type.status == 1 && type.stdout.isEmpty && type.stderr.contains("-5"), "\(type.stderr)")
        let unknown = oyako(["driver", "call", uart, "reboot"])
        #expect(unknown.status == 1 && unknown.stdout.isEmpty && unknown.stderr.contains("reboot"), "\(unknown.stderr)")
        // A number the type cannot hold is refused, not passed on as infinity.
        let scaled = try Fixtures.mutatedTemplateDriver([
            ("static const oy_control_method my_methods[] = {",
             "static double my_scale(void *instance, float x, double y) { (void)instance; return (double)x * y; }\nstatic const oy_control_method my_methods[] = {\n    {sizeof(oy_control_method), 0, \"scale\", \"f64(f32,f64)\", \"x times y\", (oy_control_fn)my_scale},"),
            ("static const oy_control_table my_control = {sizeof(oy_control_table), 1, my_methods};",
             "static const oy_control_table my_control = {sizeof(oy_control_table), 2, my_methods};"),
        ])
        #expect(oyako(["driver", "call", scaled, "scale", "1.5", "2.25"]).stdout == "3.375\n")
        #expect(oyako(["driver", "call", scaled, "scale", "-inf", "1"]).stdout == "-inf\n", "infinity written as such passes")
        let f32 = oyako(["driver", "call", scaled, "scale", "1e40", "1"])
        #expect(f32.status == 1 && f32.stderr.contains("argument 1 \"1e40\" is not a valid f32"), "\(f32.output)")
        let f64 = oyako(["driver", "call", scaled, "scale", "1", "1e400"])
        #expect(f64.status == 1 && f64.stderr.contains("argument 2 \"1e400\" is not a valid f64"), "\(f64.output)")
        let nvme = oyako(["driver", "call", try Fixtures.referenceDriver(), "block_count"])
        #expect(nvme.stdout == "32768\n", "\(nvme.output)")
    }

    /// A control method that crashes ends the call's own process, not
    /// `oyako`: the error says where (the method, the signal, the faulting
    /// address, the driver's function) and exits 1.
    @Test func aControlMethodThatCrashesIsReportedWithWhereItCrashed() throws {
        let crashing = try Fixtures.mutatedTemplateDriver([("    uint32_t tries;\n", "    uint32_t tries;\n    if (instance) *(volatile int *)16 = 1;\n")])
        let call = oyako(["driver", "call", crashing, "random32"])
        #expect(call.status == 1 && call.stdout.isEmpty, "\(call.output)")
        #expect(call.stderr.contains("crashed in its control method random32: its process died with SIGSEGV at address 0x10 in my_random32+"), "\(call.stderr)")
        #expect(call.stderr.contains("backtrace:\n  #0 my_random32+"), "\(call.stderr)")
        // Listing the methods runs none of them: it still works.
        let list = oyako(["driver", "call", crashing])
        #expect(list.status == 0 && list.stdout.contains("random32 u32()"), "\(list.output)")
    }

    @Test func aDriverThatCrashesInAttachIsReportedAsSuch() throws {
        let crashing = try Fixtures.mutatedTemplateDriver([("    my_dev *d;\n", "    my_dev *d;\n    *(volatile int *)24 = 1;\n")])
        let call = oyako(["driver", "call", crashing, "random32"])
        #expect(call.status == 1, "\(call.output)")
        #expect(call.stderr.contains("crashed while loading and attaching it: its process died with SIGSEGV at address 0x18 in my_attach+"), "\(call.stderr)")
    }

    /// A control method that never returns is stopped after --timeout, and
    /// the error says where its thread spins.
    @Test func aControlMethodThatNeverReturnsIsStoppedAndSaysWhereItSpins() throws {
        let spinning = try Fixtures.mutatedTemplateDriver([("    uint32_t tries;\n", "    uint32_t tries;\n    { volatile int forever = 1; while (forever) {} }\n")])
        let call = oyako(["driver", "call", spinning, "random32", "--timeout", "2"])
        #expect(call.status == 1 && call.stdout.isEmpty, "\(call.output)")
        #expect(call.stderr.contains("was still running after 2 s, in its control method random32, and was stopped: the driver's control method did not return (its thread is in my_random32+"),
                "\(call.stderr)")
        let bad = oyako(["driver", "call", spinning, "random32", "--timeout", "-1"])
        #expect(bad.status == 64 && bad.stderr.contains("--timeout"), "\(bad.output)")
    }

    /// The table names every figure in full (a name longer than a fixed
    /// column was cut, so two different figures printed the same name),
    /// and its columns line up.
    @Test func benchTableNamesEveryFigureInFullInAlignedColumns() throws {
        let result = oyako(["bench", "--quick", "--only", "isolation"])
        #expect(result.status == 0, "\(result.stderr.suffix(500))")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        let header = try #require(lines.first { $0.hasPrefix("figure ") }, "\(result.stdout)")
        let valueColumn = try #require(header.range(of: "value")).lowerBound.utf16Offset(in: header)
        let rows = lines.filter { $0.hasPrefix("block.") || $0.hasPrefix("driver_host.") }
        for name in ["block.4k_randread_qd1.driver_host_latency", "block.4k_randread_qd1.driver_host", "block.4k_randread_qd32.driver_host",
                     "driver_host.restart_after_kill.nvmelite"] {
            let row = try #require(rows.first { $0.split(separator: " ").first.map(String.init) == name }, "\(name) in full:\n\(result.stdout)")
            let value = row.dropFirst(valueColumn)
            #expect(row.prefix(valueColumn).trimmingCharacters(in: .whitespaces) == name && value.first?.isNumber == true, "aligned: \(row)")
        }
    }

    /// The benchmark's output contract (never its timings: those belong in
    /// `oyako bench`, not in tests).
    @Test func benchQuickJSONHasEveryFigureWithItsBaseline() throws {
        // The real VM's dd figures are there where QEMU is, under its accelerator's name.
        let vmm = try? VMMInfo.detect()
        let vm = vmm != nil, accelerator = vmm?.accelerator.rawValue ?? ""
        let result = oyako(["bench", "--quick", "--json"])
        #expect(result.status == 0, "\(result.stderr.suffix(500))")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        let machine = try #require(json["machine"] as? [String: Any])
        #expect((machine["cpu_model"] as? String)?.isEmpty == false)
        #expect((machine["cores"] as? Int ?? 0) >= 1)
        #expect(["debug", "release"].contains(machine["build_configuration"] as? String ?? ""))
        let figures = try #require(json["figures"] as? [[String: Any]])
        let names = Set(figures.compactMap { $0["name"] as? String })
        for expected in ["driver.load_to_attached.nvmelite", "driver.load_to_attached.e1klite", "driver.load_to_attached.uart16550",
                         "driver.load_to_attached.mydriver", "host_call.monotonic_ns", "host_call.lock_pair", "host_call.reg_read32", "host_call.c_to_swift_crossing", "ring.packets_64B", "ring.bytes_4KiB",
                         "block.4k_randread_qd1.bare", "block.4k_randread_qd32.child", "block.64k_seqwrite_qd8.root", "block.64k_seqread_qd8.child",
                         "block.64k_seqwrite_qd8.vhost_user", "block.4k_randread_qd32.vhost_user",
                         "driver.detach_attach.nvmelite", "driver.live_replace_pause.nvmelite", "driver.restart.nvmelite",
                         "block.4k_randread_qd1.driver_host", "block.4k_randread_qd1.driver_host_latency", "block.4k_randread_qd32.driver_host",
                         "driver_host.restart_after_kill.nvmelite",
                         "net.bare_nic", "net.child_to_child", "net.child_to_wire"] + (vm ? ["vm.\(accelerator).dd_write_direct", "vm.\(accelerator).dd_read_direct"] : []) {
            #expect(names.contains(expected), "missing \(expected)")
        }
        for figure in figures {
            #expect(figure["value"] is Double || figure["value"] is Int, "\(figure)")
            #expect(figure["unit"] is String)
            if figure["baseline"] != nil { #expect(figure["ratio"] != nil, "\(figure["name"] ?? "") has a baseline but no ratio") }
            if figure["target"] != nil { #expect(figure["met"] is Bool, "\(figure["name"] ?? "") has a target but no verdict") }
        }
    }
}

/// `oyako demo --chaos`: the root's disk driver, in a driver host, is
/// replaced live and its host killed with SIGKILL while the children do I/O;
/// their I/O still verifies.
@Suite struct DemoChaosTests {
    @Test func theChildrenVerifyThroughAReplacementAndARestart() throws {
        let result = oyako(["demo", "--json", "--no-vm", "--chaos"])
        #expect(result.status == 0, "\(result.stderr.suffix(2000))")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        let chaos = try #require(json["chaos"] as? [String: Any], "the report says what the chaos did")
        #expect(chaos["replacements"] as? Int == 2 && chaos["restarts"] as? Int == 1, "nvmelite and e1klite replaced, nvmelite's host killed: \(chaos)")
        #expect(chaos["reissued"] is Int, "\(chaos)")  // how many were in flight at the kill is chance
        #expect(chaos["verified"] as? Bool == true && json["verified"] as? Bool == true)
        let children = try #require(json["children"] as? [[String: Any]])
        #expect(children.count == 2 && children.allSatisfy { $0["storage_verified"] as? Bool == true }, "\(children)")
        #expect(result.stderr.contains("[chaos] 00:01.0: nvmelite restarted after its driver host ended (killed by signal 9 (SIGKILL))"), "\(result.stderr.suffix(2000))")
    }
}
