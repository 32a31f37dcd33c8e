import Foundation
import CSystemShims
import Glibc
import OyakoTestSupport
import Synchronization
@testable import SystemAssembly
import Testing

/// `oyako serve` keeps a root partition running; `oyako driver list|load|
/// unload|replace --control` change its drivers while a VM does I/O.
@Suite(.serialized) struct ServeTests {
    /// A running `oyako serve`, ended (SIGTERM, then SIGKILL) by `stop`.
    final class Server {
        let process = Process()
        let state = Fixtures.temporaryDirectory("serve")
        var control: String { state + "/control.sock" }
        private let output = Pipe()

        init(drivers: [String], options: [String] = []) throws {
            process.executableURL = URL(fileURLWithPath: Fixtures.oyakoBinary)
            process.arguments = ["serve", "--state", state, "--disk-mib", "32"] + drivers.flatMap { ["--driver", $0] } + options
            process.standardOutput = output
            process.standardError = output
            try process.run()
            let deadline = Date(timeIntervalSinceNow: 60)
            while !FileManager.default.fileExists(atPath: control) && process.isRunning && Date() < deadline { usleep(50_000) }
        }

        /// Everything it printed, once it has ended.
        func stop() -> String {
            if process.isRunning { process.terminate() }
            let deadline = Date(timeIntervalSinceNow: 20)
            while process.isRunning && Date() < deadline { usleep(50_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
            return String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        }
    }

    @Test func driversAreReplacedLoadedAndUnloadedWhileAVMDoesIO() throws {
        let nvme = try Fixtures.referenceDriver("nvmelite"), e1k = try Fixtures.referenceDriver("e1klite")
        let rebuilt = try Fixtures.mutatedReferenceDriver("nvmelite", [("#define NVMELITE_VERSION \"1.0.0\"", "#define NVMELITE_VERSION \"1.0.1\"")])
        let server = try Server(drivers: [nvme, e1k])
        var printed = ""
        defer { if server.process.isRunning { printed = server.stop() } }
        #expect(FileManager.default.fileExists(atPath: server.control), "the control socket appeared")

        // A VM's virtio-blk front-end writes and reads back patterns throughout.
        let vm = try VerifyingVM(socket: server.state + "/vda.sock")
        defer { _ = vm.stop() }
        #expect(vm.runs(5), "the VM's I/O runs before anything changes")

        // A second server on the same folder is refused before it touches
        // anything: the first keeps its disk image, sockets and VM.
        let intruder = oyako(["serve", "--state", server.state, "--disk-mib", "32", "--driver", nvme])
        #expect(intruder.status == 1 && intruder.stderr.contains("the state folder \(server.state) is in use by pid \(server.process.processIdentifier) (oyako serve)"),
                "\(intruder.output)")
        #expect(FileManager.default.fileExists(atPath: server.control) && FileManager.default.fileExists(atPath: server.state + "/vda.sock"))
        #expect(vm.runs(2), "the VM's I/O goes on after a second server was refused")

        for i in 0..<10 {
            let result = oyako(["driver", "replace", "nvmelite", i % 2 == 0 ? rebuilt : nvme, "--control", server.control])
            #expect(result.status == 0, "\(result.output)")
            #expect(result.stdout.contains("00:01.0: nvmelite \(i % 2 == 0 ? "1.0.0 -> nvmelite 1.0.1" : "1.0.1 -> nvmelite 1.0.0"), paused"), "\(result.stdout)")
            #expect(vm.runs(2), "the VM's I/O goes on after replacement \(i + 1)")
        }
        let listed = oyako(["driver", "list", "--control", server.control])
        #expect(listed.status == 0 && listed.stdout.contains("nvmelite 1.0.0") && !listed.stdout.contains("1.0.1"), "the old build was unloaded:\n\(listed.output)")
        #expect(listed.stdout.hasPrefix("2 driver(s) loaded"), "\(listed.stdout)")
        let second = oyako(["driver", "load", rebuilt, "--control", server.control])
        #expect(second.status == 1 && second.stderr.contains("runs already") && second.stderr.contains("driver replace nvmelite"), "\(second.output)")

        // A driver without a disk: unloaded and loaded again at runtime.
        let unloaded = oyako(["driver", "unload", "e1klite", "--control", server.control])
        #expect(unloaded.status == 0 && unloaded.stdout.contains("unloaded e1klite from 00:02.0"), "\(unloaded.output)")
        #expect(!oyako(["driver", "list", "--control", server.control]).stdout.contains("e1klite"))
        let loaded = oyako(["driver", "load", e1k, "--control", server.control])
        #expect(loaded.status == 0 && loaded.stdout.contains("attached to 00:02.0"), "\(loaded.output)")

        // What it refuses, with a reason.
        let unknown = oyako(["driver", "unload", "nope", "--control", server.control])
        #expect(unknown.status == 1 && unknown.stderr.contains("no driver named nope is loaded; loaded: e1klite, nvmelite"), "\(unknown.output)")
        // Driver hosts run per device: a driver for no free device starts nothing, and says so.
        let deviceless = oyako(["driver", "load", try Fixtures.mutatedTemplateDriver([("#define RNG_DEVICE 0x0004u", "#define RNG_DEVICE 0x0099u")]), "--control", server.control])
        #expect(deviceless.status == 1 && deviceless.stderr.contains("nothing was loaded"), "\(deviceless.output)")
        // A NIC's driver is replaced live too: the interface stays, frames wait.
        let nic = oyako(["driver", "replace", "e1klite", e1k, "--control", server.control])
        #expect(nic.status == 0 && nic.stdout.contains("00:02.0: e1klite 1.0.0 -> e1klite 1.0.0, paused"), "\(nic.output)")
        let wrongFile = oyako(["driver", "replace", "nvmelite", e1k, "--control", server.control])
        #expect(wrongFile.status == 1 && wrongFile.stderr.contains("is the driver e1klite, not nvmelite"), "\(wrongFile.output)")
        let noServer = oyako(["driver", "list", "--control", server.state + "/nothing.sock"])
        #expect(noServer.status == 1 && noServer.stderr.contains("is `oyako serve` running"), "\(noServer.output)")

        #expect(vm.runs(5), "the VM's I/O goes on after all of it")
        let failures = vm.stop()
        #expect(failures.isEmpty, "the VM's I/O verified throughout: \(failures)")
        #expect(vm.rounds > 25)
        printed = server.stop()
        #expect(server.process.terminationStatus == 0, "SIGTERM ends it cleanly:\n\(printed)")
        #expect(printed.contains("vhost-user-blk: \(server.state)/vda.sock") && printed.contains("stopped"), "\(printed)")
    }

    @Test func malformedControlRequestsGetAReasonAndTheServerGoesOn() throws {
        let system = try BootedSystem(.bareMetal, state: Fixtures.temporaryDirectory("control"), drivers: [try Fixtures.referenceDriver("nvmelite")])
        defer { system.shutdown() }
        let path = Fixtures.temporaryDirectory("sock") + "/control.sock"
        let server = try ControlServer(path: path, kernel: system.kernel, clientTimeout: 1) {}
        defer { server.stop() }
        let cases: [(String, String)] = [
            ("not json", "not a control request"),
            (#"{"command":"reboot"}"#, "not a control request"),
            (#"{"command":"load"}"#, "load needs the driver file"),
            (#"{"command":"replace","driver":"nvmelite"}"#, "replace needs the driver's name and the new file"),
            (#"{"command":"unload"}"#, "unload needs the driver's name"),
            (#"{"command":"load","file":"/nonexistent.so"}"#, "/nonexistent.so"),
            (#"{"command":"replace","driver":"ghost","file":"/x.so"}"#, "no device is served by a driver named ghost"),
        ]
        for (line, reason) in cases {
            let response = server.handle(Array(line.utf8))
            #expect(!response.ok && response.message.contains(reason), "\(line): \(response.message)")
        }
        // A line past the limit, over the socket: refused, and the next request is served.
        let fd = oy_shim_unix_connect(path)
        #expect(fd >= 0)
        let huge = [UInt8](repeating: UInt8(ascii: "x"), count: ControlServer.maxRequest + 10) + [UInt8(ascii: "\n")]
        _ = huge.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        let answer = (try? ControlWire.readLine(fd, limit: 1 << 20).get()).map { String(decoding: $0, as: UTF8.self) } ?? ""
        _ = close(fd)
        #expect(answer.contains("no request line: one over \(ControlServer.maxRequest) bytes"), "\(answer)")
        // A client that connects and says nothing is answered when its time
        // is up, and the one waiting behind it is served.
        let silent = oy_shim_unix_connect(path)
        #expect(silent >= 0)
        let started = ContinuousClock.now
        let behind = try ControlClient.send(ControlRequest(.list), to: path)
        #expect(behind.ok && ContinuousClock.now - started < .seconds(8), "served after the silent client's second: \(behind.message)")
        let told = (try? ControlWire.readLine(silent, limit: 1 << 20).get()).map { String(decoding: $0, as: UTF8.self) } ?? ""
        _ = close(silent)
        #expect(told.contains("no request line within 1 s"), "\(told)")
        let listed = try ControlClient.send(ControlRequest(.list), to: path)
        #expect(listed.ok && listed.drivers?.map(\.name) == ["nvmelite"] && listed.message == "1 driver(s) loaded", "\(listed.message)")
        // Another build under a running driver's name is refused (unload and
        // replace go by name); the same build again only probes for devices.
        let rebuilt = try Fixtures.mutatedReferenceDriver("nvmelite", [("#define NVMELITE_VERSION \"1.0.0\"", "#define NVMELITE_VERSION \"1.0.9\"")])
        let conflict = try ControlClient.send(ControlRequest(.load, file: rebuilt), to: path)
        #expect(!conflict.ok && conflict.message.contains("nvmelite 1.0.0") && conflict.message.contains("oyako driver replace nvmelite"), "\(conflict.message)")
        let again = try ControlClient.send(ControlRequest(.load, file: try Fixtures.referenceDriver("nvmelite")), to: path)
        #expect(again.ok && again.message == "nvmelite runs already; it matches no other device without a driver", "\(again.message)")
        #expect(try ControlClient.send(ControlRequest(.list), to: path).drivers?.map(\.name) == ["nvmelite"])
        // And on the command line.
        let missing = oyako(["serve", "--state", Fixtures.temporaryDirectory("serve"), "--driver", "/nonexistent/nvmelite.so"])
        #expect(missing.status == 64 && missing.stderr.contains("--driver /nonexistent/nvmelite.so: no such file"), "\(missing.output)")
        // A state folder too deep for its sockets: said before anything boots.
        let deep = Fixtures.temporaryDirectory("serve") + "/" + String(repeating: "d", count: 100)
        let tooLong = oyako(["serve", "--state", deep])
        #expect(tooLong.status == 64 && tooLong.stderr.contains("bytes a Unix socket's path may have") && !FileManager.default.fileExists(atPath: deep), "\(tooLong.output)")
    }

    /// Unloading the disk's driver removes the disk; the VM's virtual disk
    /// fails requests (an error, not a hang) until a driver is loaded for
    /// the device again, and then serves from the new disk, on connections
    /// made before and after.
    @Test func aVMsDiskFollowsItsDeviceAcrossUnloadAndLoad() throws {
        let nvme = try Fixtures.referenceDriver("nvmelite")
        let group = try #require(getgrnam("daemon") ?? getgrgid(getgid())).pointee
        let server = try Server(drivers: [nvme], options: ["--vm-group", String(cString: group.gr_name)])
        defer { if server.process.isRunning { _ = server.stop() } }
        // --vm-group lets the group reach the disk's socket, not the control socket.
        var vda = stat(), control = stat()
        #expect(stat(server.state + "/vda.sock", &vda) == 0 && vda.st_mode & 0o777 == 0o660 && vda.st_gid == group.gr_gid)
        #expect(stat(server.control, &control) == 0 && control.st_mode & 0o777 == 0o600)
        var guest: VirtioFrontEnd? = try VirtioFrontEnd(path: server.state + "/vda.sock")
        let before = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        #expect(guest?.blockRequest(write: true, sector: 64, slot: 0, bytes: before) == true)

        let unloaded = oyako(["driver", "unload", "nvmelite", "--control", server.control])
        #expect(unloaded.status == 0 && unloaded.stdout.contains("unloaded nvmelite from 00:01.0"), "\(unloaded.output)")
        #expect(guest?.blockRequest(write: false, sector: 64, slot: 1) == false)
        #expect(guest?.read(VirtioFrontEnd.blockStatus, count: 1) == [1], "VIRTIO_BLK_S_IOERR while no driver serves the device")

        let loaded = oyako(["driver", "load", nvme, "--control", server.control])
        #expect(loaded.status == 0 && loaded.stdout.contains("attached to 00:01.0"), "\(loaded.output)")
        #expect(guest?.blockRequest(write: false, sector: 64, slot: 2) == true && guest?.read(VirtioFrontEnd.blockData, count: 4096) == before,
                "what was written before the unload reads back through the new disk")
        guest = nil  // one VMM at a time on a disk: the first goes, the next connects
        let after = try VerifyingVM(socket: server.state + "/vda.sock")
        defer { _ = after.stop() }
        #expect(after.runs(5), "a VM connecting after the load does verified I/O")
        #expect(after.stop().isEmpty)
        // Its terminal closed: a clean end too.
        kill(server.process.processIdentifier, SIGHUP)
        let end = Date(timeIntervalSinceNow: 20)
        while server.process.isRunning && Date() < end { usleep(50_000) }
        let printed = server.stop()
        #expect(server.process.terminationReason == .exit && server.process.terminationStatus == 0 && printed.contains("stopped"), "SIGHUP ends it cleanly:\n\(printed)")
    }

    /// Control methods are called on the live drivers of a running system,
    /// each in its driver host: a method that crashes its host or does not
    /// return is an error for that call, and the system goes on.
    @Test func controlMethodsAreCalledOnTheRunningDrivers() throws {
        let crashing = try Fixtures.mutatedTemplateDriver([("    uint32_t tries;\n", "    uint32_t tries;\n    if (instance) *(volatile int *)16 = 1;\n")])
        let spinning = try Fixtures.mutatedTemplateDriver([("    uint32_t tries;\n", "    uint32_t tries;\n    { volatile int forever = 1; while (forever) {} }\n")])
        let server = try Server(drivers: [try Fixtures.referenceDriver("uart16550"), try Fixtures.referenceDriver("nvmelite"), crashing])
        defer { if server.process.isRunning { _ = server.stop() } }
        func call(_ words: [String]) -> (status: Int32, stdout: String, stderr: String, output: String) {
            oyako(["driver", "call", "--control", server.control] + words)
        }
        #expect(call(["uart16550", "set_baud", "57600"]).stdout == "0\n")
        let json = try JSONDecoder().decode(ControlResponse.self, from: Data(call(["nvmelite", "block_size", "--json"]).stdout.utf8))
        #expect(json.ok && json.calls == [ControlResponse.Call(device: "00:01.0", ok: true, answer: "512")], "\(json)")
        #expect(call(["uart16550", "set_baud", "57601"]).stdout.contains("-11 (OY_E_RANGE"))
        #expect(call(["nvmelite@00:01.0", "block_count"]).stdout == "\(32 << 11)\n", "the live disk's size: 32 MiB of 512-byte blocks")
        let listed = call(["nvmelite"])
        #expect(listed.status == 0 && listed.stdout.contains("outstanding u32()"), "\(listed.output)")
        let unknown = call(["nosuch", "x"])
        #expect(unknown.status == 1 && unknown.stderr.contains("no device is served by a driver named nosuch"), "\(unknown.output)")
        let wrongDevice = call(["nvmelite@00:09.0", "block_count"])
        #expect(wrongDevice.status == 1 && wrongDevice.stderr.contains("nvmelite serves no device 00:09.0"), "\(wrongDevice.output)")

        // A crash ends the driver's host, which is restarted; the call says so.
        let crashed = call(["mydriver", "random32"])
        #expect(crashed.status == 1 && crashed.stderr.contains("the driver host ended during the call (killed by signal 11 (SIGSEGV))"), "\(crashed.output)")
        let deadline = Date(timeIntervalSinceNow: 20)
        var methods = call(["mydriver"])
        while methods.status != 0 && Date() < deadline {
            usleep(100_000)
            methods = call(["mydriver"])
        }
        #expect(methods.stdout == "random32 u32()  A random word from the device\n", "the restarted host answers: \(methods.output)")

        // A method that does not return is given up on after --timeout; the
        // control socket serves the next request at once.
        let replaced = oyako(["driver", "replace", "mydriver", spinning, "--control", server.control])
        #expect(replaced.status == 0, "\(replaced.output)")
        let hung = call(["mydriver", "random32", "--timeout", "1"])
        #expect(hung.status == 1 && hung.stderr.contains("its control method random32 did not return within 1 s; its thread is in my_random32+0x"),
                "where it spins, from the driver's symbols: \(hung.output)")
        #expect(call(["uart16550", "set_baud", "9600"]).stdout == "0\n", "other drivers answer meanwhile")
        #expect(server.process.isRunning)
    }

    /// With the drivers in serve's own process, the call goes to the
    /// instance there.
    @Test func controlMethodsOfInProcessDriversAreCalledToo() throws {
        let server = try Server(drivers: [try Fixtures.referenceDriver("uart16550")], options: ["--in-process"])
        defer { if server.process.isRunning { _ = server.stop() } }
        let set = oyako(["driver", "call", "--control", server.control, "uart16550@00:03.0", "set_baud", "57600"])
        #expect(set.status == 0 && set.stdout == "0\n", "\(set.output)")
        let refused = oyako(["driver", "call", "--control", server.control, "uart16550", "set_baud", "fast"])
        #expect(refused.status == 1 && refused.stderr.contains("argument 1 \"fast\" is not a valid u32"), "\(refused.output)")
    }

    @Test func aKilledDriverHostIsReplacedWhileAVMDoesIO() throws {
        let server = try Server(drivers: [try Fixtures.referenceDriver("nvmelite")], options: ["--driver-hosts"])
        var printed = ""
        defer { if server.process.isRunning { printed = server.stop() } }
        func hostProcess() -> Int32? {
            let listed = oyako(["driver", "list", "--control", server.control, "--json"])
            guard let json = try? JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [String: Any],
                let drivers = json["drivers"] as? [[String: Any]] else { return nil }
            return drivers.first { $0["name"] as? String == "nvmelite" }?["process"] as? Int32
        }
        let first = try #require(hostProcess(), "nvmelite runs in a driver host")
        let vm = try VerifyingVM(socket: server.state + "/vda.sock")
        defer { _ = vm.stop() }
        #expect(vm.runs(5))
        kill(first, SIGKILL)
        #expect(vm.runs(20), "the VM's I/O goes on after the host's death")
        // The operator sees the restart and its cause in the list.
        let history = oyako(["driver", "list", "--control", server.control])
        #expect(history.stdout.contains("restarts (1, oldest first):\n  00:01.0: nvmelite restarted after its driver host ended (killed by signal 9 (SIGKILL))"),
                "\(history.output)")
        let recoveries = try #require(try ControlClient.send(ControlRequest(.list), to: server.control).recoveries)
        #expect(recoveries.count == 1 && recoveries[0].device == "00:01.0" && recoveries[0].driver == "nvmelite" && !recoveries[0].gaveUp
                    && recoveries[0].attempts == 1 && recoveries[0].cause.contains("SIGKILL"), "\(recoveries)")
        // And a live replacement of the hosted driver by a rebuilt one.
        let rebuilt = try Fixtures.mutatedReferenceDriver("nvmelite", [("#define NVMELITE_VERSION \"1.0.0\"", "#define NVMELITE_VERSION \"1.0.1\"")])
        let replaced = oyako(["driver", "replace", "nvmelite", rebuilt, "--control", server.control])
        #expect(replaced.status == 0 && replaced.stdout.contains("nvmelite 1.0.0 -> nvmelite 1.0.1, paused"), "\(replaced.output)")
        #expect(vm.runs(20), "and after the replacement")
        let failures = vm.stop()
        #expect(failures.isEmpty, "the VM's I/O verified across the crash: \(failures)")
        let second = try #require(hostProcess())
        #expect(second != first, "a new driver host serves the disk")
        // Unloaded and loaded again at runtime: another host.
        let unloaded = oyako(["driver", "unload", "nvmelite", "--control", server.control])
        #expect(unloaded.status == 0 && unloaded.stdout.contains("unloaded nvmelite from 00:01.0") && hostProcess() == nil, "\(unloaded.output)")
        let loaded = oyako(["driver", "load", try Fixtures.referenceDriver("nvmelite"), "--control", server.control])
        #expect(loaded.status == 0 && loaded.stdout.contains("attached to 00:01.0"), "\(loaded.output)")
        #expect(hostProcess().map { $0 != second } == true, "in a driver host of its own")
        printed = server.stop()
        #expect(printed.contains("driver host \(first)) ended: killed by signal 9 (SIGKILL)"), "\(printed)")
    }
}

/// A VM's virtio-blk front-end on its own thread, writing a pattern block
/// and reading it back, round after round, until stopped or until a round
/// fails to verify.
final class VerifyingVM: @unchecked Sendable {
    // @unchecked Sendable: the front-end is used by the I/O thread alone; the counts are Mutexes.
    private let vm: VirtioFrontEnd
    private let stopping = Mutex(false), count = Mutex(0), failures = Mutex<[String]>([])
    private let finished = DispatchSemaphore(value: 0)

    init(socket: String) throws {
        vm = try VirtioFrontEnd(path: socket)
        Thread.detachNewThread { [self] in
            defer { finished.signal() }
            var round = 0
            while !stopping.withLock({ $0 }) {
                round += 1
                let pattern = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ round) }
                let sector = UInt64(round % 512) * 8
                guard vm.blockRequest(write: true, sector: sector, slot: 0, bytes: pattern, timeout: 30),
                      vm.blockRequest(write: false, sector: sector, slot: 3, timeout: 30), vm.read(VirtioFrontEnd.blockData, count: 4096) == pattern
                else {
                    failures.withLock { $0.append("round \(round) at sector \(sector)") }
                    return
                }
                count.withLock { $0 += 1 }
            }
        }
    }

    var rounds: Int { count.withLock { $0 } }

    /// Waits for `more` rounds to verify; false when one failed or they did not come in 30 s.
    func runs(_ more: Int) -> Bool {
        let target = rounds + more
        let deadline = Date(timeIntervalSinceNow: 30)
        while rounds < target && failures.withLock({ $0.isEmpty }) && Date() < deadline { usleep(2000) }
        return rounds >= target
    }

    /// Stops the rounds (idempotent); the failures seen.
    func stop() -> [String] {
        let first = stopping.withLock { was -> Bool in
            defer { was = true }
            return !was
        }
        if first { finished.wait() }
        return failures.withLock { $0 }
    }
}
