import Devices
import DriverHost
import Foundation
import Glibc
import Kernel
import Machine
import OyakoTestSupport
import Synchronization
import SystemAssembly
import Testing
import Workloads

/// Disk drivers in driver-host processes: the same driver file, its device
/// reached over a line, its crash ending only its own process.
@Suite(.serialized) struct DriverHostProcessTests {
    static func isolatedSystem(driver: String, state: String = Fixtures.temporaryDirectory("isolated")) throws -> (Testbed, Kernel) {
        try isolatedSystem(drivers: [driver], state: state)
    }

    static func isolatedSystem(drivers: [String], state: String) throws -> (Testbed, Kernel) {
        let testbed = try Testbed.make(state: state, diskSize: 8 << 20, memorySize: 64 << 20)
        let kernel = Kernel(platform: BarePlatform(machine: testbed.machine), driverPaths: drivers)
        kernel.driverHostExecutable = Fixtures.oyakoBinary
        _ = kernel.boot()
        return (testbed, kernel)
    }

    @Test func aDiskDriverServesFromItsOwnProcess() throws {
        let (testbed, kernel) = try Self.isolatedSystem(driver: try Fixtures.referenceDriver())
        defer {
            kernel.shutdown()
            testbed.machine.shutdown()
        }
        let disk = try #require(kernel.blockLayer.disks.first)
        let pid = try #require(kernel.driverHostProcess(at: testbed.nvmeSlot.address))
        #expect(pid != getpid() && kill(pid, 0) == 0, "a process of its own")
        #expect(disk.driverLabel.contains("driver host \(pid)"))
        let result = try VerifiedIO(seed: 3, regionBlocks: 4096).run(on: disk)
        #expect(result.transfers > 0)
        try disk.flush()
    }

    @Test func anEntropyDriverServesFromItsOwnProcessAndIsRestartedAfterSIGKILL() throws {
        let (testbed, kernel) = try Self.isolatedSystem(drivers: [try Fixtures.templateDriver()], state: Fixtures.temporaryDirectory("isolated-rng"))
        defer {
            kernel.shutdown()
            testbed.machine.shutdown()
        }
        kernel.supervisor.policy = Self.quickPolicy()
        let address = try #require(testbed.machine.bus.enumerate().first { $0.device.identity.deviceID == RNGLite.deviceID }?.address)
        let first = try #require(kernel.driverHostProcess(at: address), "the entropy driver runs in a driver host")
        #expect(kernel.entropy.sources.first?.driverLabel.contains("driver host \(first)") == true)
        // More than one reply carries (each register read is a round trip:
        // slow, so with time to spare): the OS asks again for the rest.
        let big = try kernel.entropy.read(66_000, timeout: 120)
        #expect(big.count == 66_000 && Set(big).count > 200, "bytes from the device, not zeros")

        // A reader keeps reading across the restart: it waits, it does not fail.
        let stop = Atomic<Bool>(false), failures = Mutex<[String]>([]), reads = Atomic<Int>(0)
        let reader = DispatchGroup()
        reader.enter()
        Thread.detachNewThread {
            defer { reader.leave() }
            while !stop.load(ordering: .acquiring) {
                do {
                    _ = try kernel.entropy.read(32)
                    reads.add(1, ordering: .relaxed)
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
        }
        while reads.load(ordering: .relaxed) < 3 { usleep(1000) }
        kill(first, SIGKILL)
        let deadline = Date(timeIntervalSinceNow: 10)
        while kernel.supervisor.events.isEmpty && Date() < deadline { usleep(5000) }
        let before = reads.load(ordering: .relaxed)
        while reads.load(ordering: .relaxed) < before + 3 && Date() < deadline { usleep(1000) }
        stop.store(true, ordering: .releasing)
        reader.wait()
        guard case .restarted? = kernel.supervisor.events.first?.outcome else {
            Issue.record("expected a restart, got \(kernel.supervisor.events)")
            return
        }
        #expect(failures.withLock { $0 }.isEmpty, "readers saw latency, not errors: \(failures.withLock { $0 })")
        let second = try #require(kernel.driverHostProcess(at: address))
        #expect(second != first && kernel.entropy.sources.map(\.name) == ["hwrng0"], "the same source, served by the new host")
        let after = try kernel.entropy.read(64)
        #expect(after.count == 64 && Array(big.prefix(64)) != after)
    }

    /// Waits for the supervisor's first event and returns the new host's
    /// process, or nil when the driver was not restarted.
    static func awaitRestart(_ kernel: Kernel, at address: BusAddress, replacing first: pid_t) -> pid_t? {
        let deadline = Date(timeIntervalSinceNow: 10)
        while kernel.supervisor.events.isEmpty && Date() < deadline { usleep(5000) }
        guard case .restarted? = kernel.supervisor.events.first?.outcome, let second = kernel.driverHostProcess(at: address), second != first else { return nil }
        return second
    }

    @Test func aNICKeepsItsInterfaceWhenItsDriverHostIsKilled() throws {
        let s = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver("e1klite")], nics: 2, hosted: true) { testbed in
            let cable = Crossover(testbed.nics[0], testbed.nics[1])
            testbed.nics[0].wire = cable
            testbed.nics[1].wire = cable
            cable.setConnected(true)
        }
        defer { s.shutdown() }
        s.kernel.supervisor.policy = Self.quickPolicy()
        let net = s.kernel.network.interfaces
        let address = try #require(s.machine.bus.enumerate().first { $0.device === s.testbed.nics[0] }?.address)
        let first = try #require(s.kernel.driverHostProcess(at: address))
        let frames = (0..<4).map { NetChecks.frame(from: net[0].mac, to: net[1].mac, length: 600, seed: $0) }
        #expect(NetChecks.roundTrip(from: net[0], to: net[1], frames: frames) == frames)
        // A filter set through the interface (a switch port's) outlives the driver.
        let stranger: [UInt8] = [0x02, 0, 0, 0, 0, 0x99]
        #expect(net[0].setFilter([stranger]) == .ok)

        kill(first, SIGKILL)
        #expect(Self.awaitRestart(s.kernel, at: address, replacing: first) != nil, "\(s.kernel.supervisor.events)")
        #expect(s.kernel.network.interfaces.map(\.name) == ["eth0", "eth1"] && s.kernel.network.interfaces[0] === net[0],
                "the same interface, served by the new host")
        #expect(NetChecks.roundTrip(from: net[0], to: net[1], frames: frames) == frames, "frames flow again through the same interface")
        #expect(NetChecks.roundTrip(from: net[1], to: net[0], frames: frames.map { NetChecks.frame(from: net[1].mac, to: net[0].mac, length: $0.count, seed: 7) }).count == 4)
        let forStranger = NetChecks.frame(from: net[1].mac, to: stranger, length: 100, seed: 3)
        #expect(NetChecks.roundTrip(from: net[1], to: net[0], frames: [forStranger]) == [forStranger], "the new driver got the old one's filter")
    }

    @Test func aSerialPortKeepsItsOutputWhenItsDriverHostIsKilled() throws {
        let s = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver("uart16550")], hosted: true)
        defer { s.shutdown() }
        s.kernel.supervisor.policy = Self.quickPolicy()
        let tty = try #require(s.kernel.serial.console)
        let address = try #require(s.machine.bus.enumerate().first { $0.device === s.testbed.uart }?.address)
        let first = try #require(s.kernel.driverHostProcess(at: address))
        #expect(NetChecks.serialOut(tty, s.testbed.console, Array("before\n".utf8)))

        kill(first, SIGKILL)
        // Written while the driver is gone: it waits for the next one.
        tty.write(Array("while restarting\n".utf8))
        #expect(Self.awaitRestart(s.kernel, at: address, replacing: first) != nil, "\(s.kernel.supervisor.events)")
        #expect(s.kernel.serial.console === tty && s.kernel.serial.ports.count == 1, "the same port, still the console")
        #expect(NetChecks.serialOut(tty, s.testbed.console, Array("after\n".utf8)))
        #expect(String(decoding: s.testbed.console.contents, as: UTF8.self).contains("while restarting\n"), "nothing written meanwhile was lost")
        let back = (0..<200).map { UInt8(truncatingIfNeeded: $0 * 13 + 1) }
        #expect(NetChecks.serialIn(tty, s.testbed.uart, back) == back, "input arrives through the new host")
    }

    /// A driver stuck in a call (an entropy read that never returns) stops
    /// its host's heartbeat: the host is ended and another started, and the
    /// reader, blocked meanwhile, gets its bytes from the new one.
    @Test func aDriverHostStuckInACallIsRestartedByItsHeartbeat() throws {
        let stuck = try Fixtures.mutatedTemplateDriver([
            ("static int32_t my_read(", "static unsigned fixture_reads;\nstatic int32_t my_read("),
            ("    deadline = h->monotonic_ns(h) + 100000000ull;\n",
             "    deadline = h->monotonic_ns(h) + 100000000ull;\n    if (++fixture_reads == 20) for (;;) (void)h->monotonic_ns(h); /* the defect */\n"),
        ])
        let (testbed, kernel) = try Self.isolatedSystem(drivers: [stuck], state: Fixtures.temporaryDirectory("heartbeat"))
        defer {
            kernel.shutdown()
            testbed.machine.shutdown()
        }
        kernel.supervisor.policy = Self.quickPolicy(hangTimeout: .seconds(1))
        let address = try #require(testbed.machine.bus.enumerate().first { $0.device === testbed.rng }?.address)
        let first = try #require(kernel.driverHostProcess(at: address))
        for i in 0..<25 {
            let bytes = try kernel.entropy.read(16, timeout: 30)
            #expect(bytes.count == 16, "read \(i + 1)")
        }
        let events = kernel.supervisor.events
        #expect(events.first?.cause.contains("answered no heartbeat") == true && events.allSatisfy { !$0.outcome.gaveUp }, "\(events)")
        #expect(events.first?.cause.contains("the driver's rng read did not return (its thread is in my_read+0x") == true,
                "the restart says where the driver was stuck: \(events.first?.cause ?? "")")
        #expect(kernel.driverHostProcess(at: address) != first && kernel.entropy.sources.map(\.name) == ["hwrng0"])
    }

    /// A driver that leaks 4 MiB of mem_alloc per entropy read: past its
    /// host's data limit it gets NULL there (and, this one, goes on without);
    /// the host does not grow until the OOM killer picks a victim.
    @Test func aLeakingDriverIsBoundedToItsHostsMemory() throws {
        let leaking = try Fixtures.mutatedTemplateDriver([
            ("    h = d->ctx->host;\n    deadline = h->monotonic_ns(h) + 100000000ull;\n",
             "    h = d->ctx->host;\n    (void)h->mem_alloc(h, d->device, 4u << 20); /* the defect: never freed */\n    deadline = h->monotonic_ns(h) + 100000000ull;\n"),
        ])
        let (testbed, kernel) = try Self.isolatedSystem(drivers: [leaking], state: Fixtures.temporaryDirectory("leak"))
        defer {
            kernel.shutdown()
            testbed.machine.shutdown()
        }
        let address = try #require(testbed.machine.bus.enumerate().first { $0.device === testbed.rng }?.address)
        let host = try #require(kernel.driverHostProcess(at: address))
        // 320 reads leak 1.25 GiB: more than the limit.
        for i in 0..<320 {
            let bytes = try kernel.entropy.read(16, timeout: 30)
            #expect(bytes.count == 16, "read \(i + 1)")
        }
        #expect(kernel.driverHostProcess(at: address) == host, "the same host serves on")
        let status = try String(contentsOfFile: "/proc/\(host)/status", encoding: .utf8)
        let data = status.split(separator: "\n").first { $0.hasPrefix("VmData:") }.flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") }
        #expect(data.map { $0 * 1024 <= DriverHostProcess.dataLimit } == true, "the host holds \(data ?? -1) kB of private memory")
    }

    /// A driver host is not trusted: a driver in one can write anything to
    /// its line. Lengths past Int's range, an impossible disk, another
    /// device's interrupts, unknown kinds and random bodies are refused or
    /// touch only its own device; the Kernel does not fall over and the
    /// other devices go on.
    @Test func aHostileDriverHostsMessagesAreRefusedAndTheKernelGoesOn() throws {
        func kind(_ k: HostMessage) -> String { "\(k.rawValue)u" }
        // nvmelite's device sits first on the bus: other devices' vectors follow its own.
        let hostile = try Fixtures.mutatedReferenceDriver("nvmelite", [
            ("#include <string.h>\n", """
            #include <string.h>
            #include <sys/socket.h>
            /* The defect: writes its own messages to every SEQPACKET socket it finds (its driver host's line). */
            static void fixture_put(unsigned char *m, unsigned *n, const void *v, unsigned size) { memcpy(m + *n, v, size); *n += size; }
            static void fixture_attack(const oy_host *h) {
                unsigned char m[256];
                uint64_t huge = ~0ull, seed = 0x5EEDull;
                uint32_t kinds[5] = {\(kind(.dmaUnmap)), \(kind(.dmaAllocate)), \(kind(.dmaMap)), \(kind(.registerDisk)), 999u};
                for (int fd = 0; fd < 1024; fd++) {
                    int type = 0; socklen_t length = sizeof(type);
                    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) != 0 || type != SOCK_SEQPACKET) continue;
                    h->log(h, NULL, OY_LOG_WARNING, "fixture: attacking its line");
                    for (int k = 0; k < 5; k++) {
                        unsigned n = 0; uint32_t sequence = 0x7770u + (uint32_t)k, four = 4096u, one = 1u;
                        fixture_put(m, &n, &kinds[k], 4); fixture_put(m, &n, &sequence, 4);
                        if (k == 3) { fixture_put(m, &n, &four, 4); fixture_put(m, &n, &huge, 8); fixture_put(m, &n, &one, 4); fixture_put(m, &n, &one, 4); fixture_put(m, &n, &one, 4); }
                        else { fixture_put(m, &n, &huge, 8); fixture_put(m, &n, &huge, 8); fixture_put(m, &n, &one, 4); }
                        (void)send(fd, m, n, 0);
                    }
                    /* Other devices' interrupt vectors: its own is index 0 only. */
                    for (uint32_t index = 1; index <= 16; index++) {
                        uint32_t mask[3] = {\(kind(.maskInterrupt)), 0u, index}, unhook[3] = {\(kind(.unhookInterrupt)), 0x7700u + index, index};
                        (void)send(fd, mask, sizeof(mask), 0);
                        (void)send(fd, unhook, sizeof(unhook), 0);
                    }
                    /* The same as one batch of posted messages, each [kind][length][body]: a call among them has no sequence to answer. */
                    {
                        unsigned n = 0; uint32_t batch = \(kind(.batch)), zero = 0u;
                        fixture_put(m, &n, &batch, 4); fixture_put(m, &n, &zero, 4);
                        for (uint32_t index = 1; index <= 8; index++) {
                            uint32_t mask[3] = {\(kind(.maskInterrupt)), 4u, index}, unhook[3] = {\(kind(.unhookInterrupt)), 4u, index};
                            fixture_put(m, &n, mask, sizeof(mask)); fixture_put(m, &n, unhook, sizeof(unhook));
                        }
                        (void)send(fd, m, n, 0);
                    }
                    /* Log lines past the host's budget, straight onto the line. */
                    for (int r = 0; r < 3000; r++) {
                        unsigned n = 0; uint32_t log = \(kind(.log)), none = 0u, level = 2u, count = 23u;
                        fixture_put(m, &n, &log, 4); fixture_put(m, &n, &none, 4); fixture_put(m, &n, &level, 4);
                        fixture_put(m, &n, &count, 4); fixture_put(m, &n, "fixture: a raw log line", 23);
                        (void)send(fd, m, n, 0);
                    }
                    /* Random kinds and bodies: every message at least a header long. */
                    for (int r = 0; r < 300; r++) {
                        unsigned n = 8 + (unsigned)(seed % 120);
                        for (unsigned i = 0; i < n; i++) { seed = seed * 6364136223846793005ull + 1442695040888963407ull; m[i] = (unsigned char)(seed >> 56); }
                        m[0] = (unsigned char)(16 + (seed >> 40) % 40); m[1] = m[2] = m[3] = 0; /* kinds the Kernel serves, and some past them */
                        (void)send(fd, m, n, 0);
                    }
                }
            }

            """),
            ("    if (c == NULL || device == NULL || out_instance == NULL) return OY_E_INVALID;\n    h = c->host;\n",
             "    if (c == NULL || device == NULL || out_instance == NULL) return OY_E_INVALID;\n    h = c->host;\n    fixture_attack(h);\n"),
        ])
        let (testbed, kernel) = try Self.isolatedSystem(drivers: [hostile, try Fixtures.templateDriver()], state: Fixtures.temporaryDirectory("hostile-host"))
        defer {
            kernel.shutdown()
            testbed.machine.shutdown()
        }
        #expect(kernel.log.all.contains { $0.message == "fixture: attacking its line" }, "the attack ran")
        // Raw log lines past the budget: held to twice a driver's, and said.
        let raw = kernel.log.all.filter { $0.message == "fixture: a raw log line" }.count
        #expect(raw > 0 && raw <= 2 * LogBudget.burst, "\(raw) raw lines reached the log")
        #expect(kernel.log.all.contains { $0.message.hasPrefix("its driver host logs more than 200 lines in 5 s") })
        // What the hostile host did to its own device is its business; the
        // Kernel lives, refused the impossible disk, and the other device
        // (its interrupt neither masked nor unhooked) goes on in its host.
        #expect(!kernel.blockLayer.disks.contains { $0.geometry.blockCount == .max }, "no disk of an impossible geometry")
        let rng = try #require(testbed.machine.bus.enumerate().first { $0.device === testbed.rng }?.address)
        let host = try #require(kernel.driverHostProcess(at: rng))
        // The hostile host may register entropy sources of its own; the device's own is read.
        let source = try #require(kernel.entropy.sources.first { $0.registered.location == rng.description })
        for i in 0..<5 { #expect(try source.read(32, timeout: 10).count == 32, "read \(i + 1)") }
        #expect(kernel.driverHostProcess(at: rng) == host)
    }

    /// Restarts without the default backoff; `hangTimeout`: a hang is noticed that soon.
    static func quickPolicy(hangTimeout: Duration? = nil) -> RestartPolicy {
        var policy = RestartPolicy()
        policy.backoff = .milliseconds(10)
        if let hangTimeout { policy.hangTimeout = hangTimeout }
        return policy
    }

    /// A driver whose submit waits for its device by reading the clock (a
    /// bounded spin until the command completes, as polled-mode drivers do).
    /// The host holds a submit's posted register writes to send them
    /// together, so it must send them when the driver starts to wait, or
    /// the doorbell never reaches the device while the driver spins.
    @Test func aDriverThatWaitsInSubmitForItsDeviceIsNotHeldUpByTheLine() throws {
        let driver = try Fixtures.mutatedReferenceDriver("nvmelite", [
            ("    nvl_sq_push(d, &d->io, &cmd);\n    d->host->lock_release(d->lock);\n    return OY_OK;\n",
             """
                 nvl_sq_push(d, &d->io, &cmd);
                 d->host->lock_release(d->lock);
                 {   /* polled: waits up to 1 s for the command to complete (or any completion) */
                     uint64_t until = d->host->monotonic_ns(d->host) + 1000000000ull;
                     while (__atomic_load_n(&slot->request, __ATOMIC_ACQUIRE) == req
                            && (d->io.cq[d->io.cq_head].status & 1u) != d->io.phase) {
                         if (d->host->monotonic_ns(d->host) > until) {
                             nvl_log(d, OY_LOG_WARNING, "polled submit: the device did not answer in 1 s");
                             break;
                         }
                     }
                 }
                 return OY_OK;

             """),
        ])
        let (testbed, kernel) = try Self.isolatedSystem(driver: driver)
        defer {
            kernel.shutdown()
            testbed.machine.shutdown()
        }
        let disk = try #require(kernel.blockLayer.disks.first)
        #expect(kernel.driverHostProcess(at: testbed.nvmeSlot.address) != nil)
        let buffer = try #require(disk.allocateBuffer(length: disk.geometry.blockSize))
        for lba in 0..<4 as Range<UInt64> {
            buffer.pointer.initializeMemory(as: UInt8.self, repeating: UInt8(lba + 1), count: buffer.length)
            try disk.perform(.write, lba: lba, blocks: 1, buffer: buffer)
            try disk.perform(.read, lba: lba, blocks: 1, buffer: buffer)
            #expect(buffer.pointer.load(as: UInt8.self) == UInt8(lba + 1))
        }
        let waited = kernel.log.all.filter { $0.message.contains("the device did not answer") }
        #expect(waited.isEmpty, "the driver waited out its spin: its doorbell was held back (\(waited.count) times)")
    }

    @Test func aDriverThatCrashesIsRestartedAndNoAcknowledgedWriteIsLost() throws {
        let state = Fixtures.temporaryDirectory("crash")
        let driver = try Fixtures.nvmeliteCrashing(afterSubmits: 400, marker: state + "/crashed")
        let (testbed, kernel) = try Self.isolatedSystem(driver: driver, state: state)
        defer {
            kernel.shutdown()
            testbed.machine.shutdown()
        }
        kernel.supervisor.policy = Self.quickPolicy()
        let disk = try #require(kernel.blockLayer.disks.first)
        let first = try #require(kernel.driverHostProcess(at: testbed.nvmeSlot.address))
        let ledger = WriteLedger(blockSize: disk.geometry.blockSize)
        let result = ledger.run(workers: 3, on: disk, until: { !kernel.supervisor.events.isEmpty }, thenWrites: 100)

        #expect(result.errors.isEmpty, "callers saw latency, not errors: \(result.errors)")
        let events = kernel.supervisor.events
        #expect(events.count == 1 && events.first?.cause.contains("SIGSEGV") == true, "\(events)")
        guard case .restarted(let attempts, _)? = events.first?.outcome else {
            Issue.record("expected a restart, got \(events)")
            return
        }
        #expect(attempts == 1)
        let second = try #require(kernel.driverHostProcess(at: testbed.nvmeSlot.address))
        #expect(second != first, "a new driver host serves the disk")
        #expect(FileManager.default.fileExists(atPath: state + "/crashed"), "the driver did crash")
        #expect(kernel.blockLayer.disks.first === disk && disk.statistics.failed == 0)
        try disk.flush()
        #expect(try ledger.verify(image: state + "/" + Testbed.diskImageName) == [], "every acknowledged write is in the disk image")
    }

    @Test func aDriverThatCrashesOnEveryRestartFailsItsDeviceAndNothingElse() throws {
        let state = Fixtures.temporaryDirectory("crash-attach")
        let (testbed, kernel) = try Self.isolatedSystem(
            drivers: [try Fixtures.nvmeliteCrashing(afterSubmits: 200, marker: state + "/crashed", crashRestarts: true), try Fixtures.templateDriver()], state: state)
        defer {
            kernel.shutdown()
            testbed.machine.shutdown()
        }
        kernel.supervisor.policy = Self.quickPolicy()
        let disk = try #require(kernel.blockLayer.disks.first)
        let ledger = WriteLedger(blockSize: disk.geometry.blockSize)
        let result = ledger.run(workers: 2, on: disk, until: { kernel.blockLayer.disks.isEmpty }, thenWrites: 0)

        let events = kernel.supervisor.events
        #expect(events.count == 1 && events.first?.outcome == .gaveUp(attempts: 5), "five restarts crashed in attach, then the policy gave up: \(events)")
        #expect(kernel.blockLayer.disks.isEmpty && kernel.driverHostProcess(at: testbed.nvmeSlot.address) == nil)
        #expect(!result.errors.isEmpty && result.errors.allSatisfy { $0.status == .deviceGone }, "callers were told the device is gone: \(result.errors)")
        #expect(try kernel.entropy.read(64).count == 64, "the rest of the system runs on")
        #expect(try ledger.verify(image: state + "/" + Testbed.diskImageName) == [], "writes acknowledged before the crash are in the image")
    }

    @Test func aDriverHostIsReplacedLiveWithARebuiltDriver() throws {
        let state = Fixtures.temporaryDirectory("host-replace")
        let (testbed, kernel) = try Self.isolatedSystem(driver: try Fixtures.referenceDriver(), state: state)
        defer {
            kernel.shutdown()
            testbed.machine.shutdown()
        }
        let rebuilt = try Fixtures.mutatedReferenceDriver("nvmelite", [("#define NVMELITE_VERSION \"1.0.0\"", "#define NVMELITE_VERSION \"1.0.1\"")])
        let original = try Fixtures.referenceDriver()
        let disk = try #require(kernel.blockLayer.disks.first)
        let address = testbed.nvmeSlot.address
        let ledger = WriteLedger(blockSize: disk.geometry.blockSize)
        let swaps = Mutex(0), done = Atomic<Bool>(false)
        Thread.detachNewThread {
            for i in 0..<20 {
                if (try? kernel.replaceDriver(at: address, withFile: i % 2 == 0 ? rebuilt : original)) != nil { swaps.withLock { $0 += 1 } }
                usleep(5000)
            }
            done.store(true, ordering: .releasing)
        }
        let result = ledger.run(workers: 2, on: disk, until: { done.load(ordering: .acquiring) }, thenWrites: 20)
        #expect(result.errors.isEmpty, "\(result.errors)")
        #expect(swaps.withLock { $0 } == 20, "every replacement took")
        #expect(disk.driver.driverVersion == "1.0.0" && kernel.driverHostProcess(at: address) != nil)
        try disk.flush()
        #expect(try ledger.verify(image: state + "/" + Testbed.diskImageName) == [])
    }

    @Test func aHungDriverInADriverHostIsRestarted() throws {
        let state = Fixtures.temporaryDirectory("host-hang")
        let (testbed, kernel) = try Self.isolatedSystem(driver: try Fixtures.nvmeliteLosingCompletion(250), state: state)
        defer {
            kernel.shutdown()
            testbed.machine.shutdown()
        }
        kernel.supervisor.policy = Self.quickPolicy(hangTimeout: .seconds(1))
        let disk = try #require(kernel.blockLayer.disks.first)
        let first = try #require(kernel.driverHostProcess(at: testbed.nvmeSlot.address))
        let ledger = WriteLedger(blockSize: disk.geometry.blockSize)
        let result = ledger.run(workers: 2, on: disk, until: { !kernel.supervisor.events.isEmpty }, thenWrites: 50)
        #expect(result.errors.isEmpty, "\(result.errors)")
        let events = kernel.supervisor.events
        #expect(events.contains { $0.cause.contains("a request was with it") } && events.allSatisfy { !$0.outcome.gaveUp }, "\(events)")
        #expect(events.filter { $0.cause.hasPrefix("a request was with it") }.allSatisfy { $0.cause.contains("; no call into the driver is running") },
                "the host was asked, and no thread was inside the driver: a lost completion, as in process: \(events.map(\.cause))")
        #expect(kernel.driverHostProcess(at: testbed.nvmeSlot.address) != first, "the hung host was ended and another started")
        try disk.flush()
        #expect(try ledger.verify(image: state + "/" + Testbed.diskImageName) == [])
    }

    @Test func aDriverHostThatCannotStartIsAFailedAttachNotAHang() throws {
        let testbed = try Testbed.make(state: Fixtures.temporaryDirectory("no-host"), diskSize: 8 << 20, memorySize: 64 << 20)
        let kernel = Kernel(platform: BarePlatform(machine: testbed.machine), driverPaths: [try Fixtures.referenceDriver(), try Fixtures.templateDriver(), try Fixtures.referenceDriver("uart16550")])
        kernel.driverHostExecutable = "/nonexistent/oyako"
        let report = kernel.boot()
        defer {
            kernel.shutdown()
            testbed.machine.shutdown()
        }
        #expect(kernel.blockLayer.disks.isEmpty && kernel.driverHostProcess(at: testbed.nvmeSlot.address) == nil)
        #expect(report.devices.first { $0.location == testbed.nvmeSlot.address.description }?.outcome == "failed", "\(report.devices)")
        #expect(report.problems.contains { "\($0)".contains("nvmelite") }, "\(report.problems)")
        #expect(kernel.log.all.contains { $0.message.contains("could not be run as a driver host") }, "the log says why: \(kernel.log.all.map(\.message))")
        #expect(kernel.entropy.sources.isEmpty && kernel.serial.ports.isEmpty, "no driver's host could start")
        #expect(report.devices.filter { $0.outcome == "failed" }.count == 3, "each device failed to attach, none hung: \(report.devices)")
    }
}
