import Devices
@_spi(Conformance) import DriverHost
import Foundation
import Kernel
import Machine
import Synchronization

/// Every check, in the order they run. `requires` makes later checks skip
/// (with the reason) when a check they build on failed, so one defect is
/// reported once, at the check that targets it.
enum Catalogue {
    static let block: Set<String> = ["oyako.block/1"]
    static let net: Set<String> = ["oyako.net/1"]
    static let serial: Set<String> = ["oyako.serial/1"]
    static let rng: Set<String> = ["oyako.rng/1"]
    static let io: Set<String> = ["oyako.block/1", "oyako.net/1", "oyako.serial/1", "oyako.rng/1"]

    static let all: [CheckDefinition] = file + load + lifecycle + lifecycleAfterIO + contextAndConcurrency + faults + blockChecks + netChecks + serialChecks + ioChecks + rngChecks + [spurious] + hostChecks + sameResults + badInput + control

    // MARK: File and symbols (no driver code runs)

    static let file: [CheckDefinition] = [
        CheckDefinition("file.elf", "ELF shared object for this machine's architecture", scope: .file) { c in
            let image = try DriverFile.inspect(path: c.driverPath).image
            return .passed("\(ELFImage.machineName(image.machine)) shared object")
        },
        CheckDefinition("file.textrel", "no text relocations", scope: .file, requires: ["file.elf"]) { c in
            try image(c).hasTextRelocations ? .failed("the text segment needs relocations at load; build with -fPIC") : .passed()
        },
        CheckDefinition("file.execstack", "no executable stack", scope: .file, requires: ["file.elf"]) { c in
            try image(c).hasExecutableStack ? .failed("PT_GNU_STACK is missing or executable; link with -Wl,-z,noexecstack") : .passed()
        },
        CheckDefinition("file.exports", "exactly one exported symbol, oy_driver_entry", scope: .file, requires: ["file.elf"]) { c in
            let exported = try image(c).exportedSymbols.map(\.name).sorted()
            guard exported == ["oy_driver_entry"] else {
                return .failed("exports \(exported); build with -fvisibility=hidden and SDK/oyako-driver.map so only oy_driver_entry is visible")
            }
            return .passed()
        },
        CheckDefinition("file.imports", "imports only allowlisted pure functions", scope: .file, requires: ["file.elf"]) { c in
            let forbidden = try image(c).importedSymbols.map(\.name).filter { !ImportAllowlist.allows($0) }.sorted()
            guard forbidden.isEmpty else {
                return .failed("imports \(forbidden.joined(separator: ", ")): reach the environment only through the host table (time, memory, locks, work, logging)")
            }
            return .passed()
        },
        CheckDefinition("file.needed", "needs only libc and libm", scope: .file, requires: ["file.elf"]) { c in
            let extra = try image(c).neededLibraries.filter { !ImportAllowlist.libraries.contains($0) }
            return extra.isEmpty ? .passed() : .failed("needs \(extra.joined(separator: ", ")); link statically or drop the dependency (-Wl,-z,defs shows what pulls it in)")
        },
        CheckDefinition("file.metadata", "metadata readable without running code", scope: .file, requires: ["file.elf"]) { c in
            let m = try DriverFile.inspect(path: c.driverPath).metadata
            return .passed("\(m.name) \(m.version), ABI \(m.abiMin)–\(m.abiMax), binds \(m.deviceIDs.map(\.description).joined(separator: ", "))")
        },
    ]

    static func image(_ c: CheckContext) throws -> ELFImage { try DriverFile.inspect(path: c.driverPath).image }

    // MARK: Load and negotiation

    static let load: [CheckDefinition] = [
        CheckDefinition("load.dlopen", "dlopen(RTLD_NOW|RTLD_LOCAL); the entry resolves from the driver itself", requires: ["file.elf", "file.metadata"]) { c in
            let mapped = try DriverLibrary.openEntry(path: c.driverPath)
            return .passed("entry in \(mapped)")
        },
        CheckDefinition("load.negotiate", "host range above, inside and below: highest common version or OY_E_INCOMPATIBLE", requires: ["load.dlopen"]) { c in
            let m = try DriverFile.inspect(path: c.driverPath).metadata
            let (low, high) = (m.abiMin, m.abiMax)
            var cases: [(ClosedRange<UInt32>, UInt32?)] = [
                (low...high, high), (low...(high + 2), high), ((high + 1)...(high + 3), nil),
            ]
            if low > 1 { cases.append((1...(low - 1), nil)) }
            cases.append((max(1, low) - (low > 1 ? 1 : 0)...low, low))
            for (host, expected) in cases {
                let n = try DriverLibrary.negotiate(path: c.driverPath, host: host)
                guard n.driverRange == low...high else {
                    return .failed("for host \(host) the entry reported driver range \(n.driverRange), but the metadata says \(low)–\(high); fill driver_abi_min/max, also when refusing")
                }
                if let expected {
                    guard n.status.isOK, n.version == expected else {
                        return .failed("host speaks \(host.lowerBound)–\(host.upperBound): expected ABI \(expected), got \(n.status.isOK ? "ABI \(n.version)" : n.status.description); pick the highest version both speak (oy_negotiate does)")
                    }
                } else if n.status != .incompatible {
                    return .failed("host speaks \(host.lowerBound)–\(host.upperBound), no overlap: expected OY_E_INCOMPATIBLE, got \(n.status.isOK ? "OY_OK with ABI \(n.version)" : n.status.description)")
                }
            }
            return .passed("\(cases.count) host ranges")
        },
        CheckDefinition("load.tables", "table sizes at least v1, mandatory callbacks set, metadata matches", requires: ["load.dlopen"]) { c in
            let rig = try Rig(c, load: false)
            defer { rig.shutdown() }
            do {
                let library = try rig.kernel.loadDriver(path: c.driverPath)
                return .passed("ABI \(library.abiVersion)")
            } catch let error as DriverLoadError {
                return .failed(error.description)
            }
        },
        CheckDefinition("load.cycles", "100 load/unload cycles leave nothing behind", requires: ["load.tables"], timeout: 60) { c in
            let environment = CountingEnvironment()
            func snapshot() -> (fds: Int, threads: Int, maps: Int) {
                let count = { (path: String) in (try? FileManager.default.contentsOfDirectory(atPath: path).count) ?? 0 }
                let maps = (try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8))?.split(separator: "\n").count ?? 0
                return (count("/proc/self/fd"), count("/proc/self/task"), maps)
            }
            // One warm-up cycle starts the host's worker threads.
            try DriverLibrary.load(path: c.driverPath, environment: environment).unload()
            let before = snapshot()
            var mapped: Set<String> = []
            for i in 0..<100 {
                let library = try DriverLibrary.load(path: c.driverPath, environment: environment)
                mapped.insert(library.mappedPath)
                let report = library.unload()
                guard report.leaked.isEmpty else { return .failed("cycle \(i + 1): deinit left \(report.leaked.joined(separator: ", "))") }
            }
            let maps = (try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8)) ?? ""
            if let kept = mapped.first(where: { maps.contains($0) }) { return .failed("\(kept) is still mapped after 100 cycles: unload did not unmap the driver") }
            // Sharing the process with other checks (--in-process), its
            // counts move with theirs: the mapping above and the host's
            // leak reports are what can be told of this driver.
            if c.sharedProcess { return .passed("100 cycles, each unloaded whole; process-wide counts are judged in a worker process") }
            // What other threads of this process open and close meanwhile
            // comes and goes; what the cycles left stays. Up to 1 s for it to go.
            var after = snapshot()
            let settled = Date(timeIntervalSinceNow: 1)
            while (after.fds > before.fds || after.threads > before.threads || after.maps > before.maps + 4) && Date() < settled {
                usleep(50_000)
                after = snapshot()
            }
            if after.fds > before.fds { return .failed("\(after.fds - before.fds) file descriptors more after 100 cycles") }
            if after.threads > before.threads { return .failed("\(after.threads - before.threads) threads more after 100 cycles") }
            if after.maps > before.maps + 4 { return .failed("\(after.maps - before.maps) mappings more after 100 cycles") }
            return .passed("fds \(before.fds)→\(after.fds), threads \(before.threads)→\(after.threads), mappings \(before.maps)→\(after.maps)")
        },
    ]

    // MARK: Lifecycle

    static let lifecycle: [CheckDefinition] = [
        CheckDefinition("lifecycle.attach", "probe and attach the device, then detach; it registers only the class it declares", requires: ["load.tables"]) { c in
            let rig = try Rig(c)
            defer { rig.shutdown() }
            let instance = try rig.attach()
            // Hosts place a driver, and the suite picks its checks, by the
            // class its metadata declares: one it registers without declaring
            // would be run where it does not belong and never be checked.
            let undeclared = rig.kernel.classesWithDevices.subtracting([rig.deviceClass]).sorted()
            let report = instance.detach()
            guard undeclared.isEmpty else {
                let declared = rig.deviceClass.isEmpty ? "no class" : rig.deviceClass
                return .failed("attach registered \(undeclared.joined(separator: ", ")), but the driver's metadata declares \(declared); "
                    + "put the class in OY_DRIVER_METADATA (one class per driver), so hosts and the suite treat the driver as what it is")
            }
            guard report.status.isOK else { return .failed("detach returned \(report.status)") }
            return .passed("\(rig.file.metadata.name) on \(instance.device.info.location)")
        },
        CheckDefinition("io.basic", "a verified burst of the class's I/O works", requires: ["lifecycle.attach"], hostable: true) { c in
            try withDriver(c) { rig in
                let observed = try rig.exerciseIO()
                guard observed != "none" else { return .passed("the driver provides no I/O class") }
                var observation = rig.deviceObservation()
                observation["io"] = observed
                return .passed(Rig.burstDescription[rig.deviceClass] ?? observed, observation: observation)
            }
        },
        CheckDefinition("load.time-budget", "load, init, attach, detach, deinit, unload within the time budget (1 s)", requires: ["lifecycle.attach"]) { c in
            guard let budget = c.timeBudget else { return .skipped("time budgets are off (--time-budget 0)") }
            let rig = try Rig(c, load: false)
            defer { rig.shutdown() }
            let start = Date()
            let library = try rig.kernel.loadDriver(path: c.driverPath)
            let instance = try rig.kernel.attach(library, to: rig.slots[0])
            instance.detach()
            _ = rig.kernel.unload(library)
            let seconds = Date().timeIntervalSince(start)
            return seconds > budget
                ? .warning(String(format: "took %.3f s, over the %.3f s budget; hosts expect well under a second (loaded machine? --time-budget 0 turns this off)", seconds, budget))
                : .passed(String(format: "%.1f ms", seconds * 1000))
        },
        CheckDefinition("lifecycle.wrong-state", "calls in the wrong state return an error, never crash", requires: ["lifecycle.attach"], tolerates: [Self.nullDevice]) { c in
            let rig = try Rig(c)
            defer { rig.shutdown() }
            let raw = rig.library.raw
            var problems: [String] = []
            let nullDetach = raw.detach(nil)
            if nullDetach.isOK || !nullDetach.isDefined { problems.append("detach(NULL) returned \(nullDetach)") }
            raw.remove(nil)
            let nullProbe = raw.probe(nil)
            if nullProbe.isOK { problems.append("probe(NULL info) returned OY_OK") }
            let noDevice = raw.attachWithoutDevice()
            if noDevice.isOK { problems.append("attach(NULL device) returned OY_OK") }
            _ = raw.getExtension(nil, Array("oyako.nosuch/1".utf8))
            let instance = try rig.attach()
            let pointer = instance.rawInstance
            instance.detach()
            let twice = raw.detach(pointer)
            if twice.isOK || !twice.isDefined { problems.append("detach of an already detached instance returned \(twice); keep a set of live instances (oyako/instances.h) and answer OY_E_STATE") }
            raw.remove(pointer)
            raw.deinitialize(nil)
            return problems.isEmpty ? .passed("detach(NULL) \(nullDetach.name ?? "?"), detach twice \(twice.name ?? "?")") : .failed(problems.joined(separator: "; "))
        },
        CheckDefinition("lifecycle.probe-foreign", "probe rejects devices outside its ID table", requires: ["lifecycle.attach"]) { c in
            let rig = try Rig(c)
            defer { rig.shutdown() }
            let m = rig.file.metadata
            let foreign: [(UInt16, UInt16)] = [(0x1234, 0x5678), (0x0A7A, 0x00EE), (0x8086, 0x100E)].filter { !m.matches(vendorID: $0.0, deviceID: $0.1) }
            for (vendor, device) in foreign {
                let info = HostDeviceInfo(vendorID: vendor, deviceID: device, classCode: 0, revision: 1, bars: [.mmio(size: 4096)], interruptCount: 1, location: "ff:1f.7")
                let status = rig.library.raw.probe(info)
                guard status == .notSupported else {
                    return .failed("probe of \(hex(vendor)):\(hex(device)), not in the ID table, returned \(status); answer OY_E_NOT_SUPPORTED")
                }
            }
            return .passed("\(foreign.count) foreign devices declined")
        },
    ]

    /// Lifecycle checks that build on working I/O.
    static let lifecycleAfterIO: [CheckDefinition] = [
        CheckDefinition("lifecycle.reattach", "attach, detach, attach again works", requires: ["io.basic"]) { c in
            let rig = try Rig(c)
            defer { rig.shutdown() }
            for round in 1...3 {
                let instance = try rig.attach()
                _ = try rig.exerciseIO(seed: UInt64(round))
                let status = instance.detach().status
                guard status.isOK else { return .failed("round \(round): detach returned \(status)") }
            }
            return .passed("3 rounds")
        },
        CheckDefinition("lifecycle.inherited-device", "attach takes over a device another OS left running (a crash kernel's, a boot loader's): it resets it, and a verified burst of I/O works",
                        requires: ["io.basic"], hostable: true) { c in
            var left = "the device left running"
            let hint = "; in attach, reset the device (or, where it has no reset, program every register the driver relies on) before trusting any value it finds: "
                + "an OS that takes over from another finds the device as that one left it (the datasheet's reset and bring-up)"
            do {
                return try withDriver(c, prepare: { rig in
                    rig.leaveDevicesRunning()
                    left = Rig.leftRunning[rig.deviceClass] ?? left
                }) { rig in
                    // The line first: a port at another rate than it says fails its I/O too.
                    if let problem = rig.lineLeftAsFoundProblem() { return .failed("with \(left): " + problem + hint) }
                    let observed = try rig.exerciseIO()
                    return .passed("attached over \(left); " + (Rig.burstDescription[rig.deviceClass] ?? observed))
                }
            } catch let failure as CheckFailure {
                return .failed("with \(left): \(failure)" + hint)
            }
        },
        CheckDefinition("lifecycle.detach-releases", "detach releases every window, DMA buffer, hook, timer and allocation", requires: ["io.basic"]) { c in
            let rig = try Rig(c)
            defer { rig.shutdown() }
            let instance = try rig.attach()
            _ = try rig.exerciseIO()
            let report = instance.detach()
            if !report.leaked.isEmpty { return .failed("detach left behind: \(report.leaked.joined(separator: ", ")); release them in detach") }
            if report.unfinishedRequests > 0 { return .failed("detach returned with \(report.unfinishedRequests) accepted request(s) not completed") }
            let mapped = rig.machine.iommu.mappedPages(domain: Bus.domain(of: rig.slots[0].address))
            if mapped > 0 { return .failed("\(mapped) page(s) still mapped for the device after detach") }
            return .passed()
        },
        // The OS gives the memory detach freed to others at once: a device
        // still receiving into it corrupts them (here the IOMMU refuses it);
        // a driver that unregisters before it stops its device hands the OS
        // input through a handle already gone.
        CheckDefinition("lifecycle.detach-quiets", "detached, the device makes no DMA and raises no interrupt while its world goes on",
                        requires: ["io.basic"], classes: io, timeout: 30, hostable: true) { c in
            if c.hosted {
                return try withHostedDriver(c) { rig, address, _ in
                    _ = try rig.exerciseIO()
                    return detachQuiets(rig) { _ = rig.kernel.detach(address) }
                }
            }
            let rig = try Rig(c)
            defer { rig.shutdown() }
            let instance = try rig.attach()
            _ = try rig.exerciseIO()
            return detachQuiets(rig) { _ = instance.detach() }
        },
        CheckDefinition("lifecycle.surprise-removal", "surprise removal during I/O: everything completes, no hang", requires: ["io.basic"], timeout: 30) { c in
            let rig = try Rig(c)
            defer { rig.shutdown() }
            let instance = try rig.attach()
            let pending = Pending()
            startBackgroundIO(rig, pending: pending)
            rig.machine.bus.surpriseRemove(rig.slots[0])
            guard pending.waitAll(timeout: 10) else { return .failed("\(pending.outstanding) request(s) never completed after the device was removed; complete them with OY_E_DEVICE_GONE in remove()") }
            guard instance.state == .detached else { return .failed("the instance was not detached after removal") }
            return .passed("\(pending.completed) request(s) completed")
        },
        // The OS calls remove, then detach; until detach unregisters the
        // class object, the OS may still call its operations (a write
        // already on its way, a read of /dev/random).
        CheckDefinition("lifecycle.after-removal", "between remove and detach every class operation answers OY_E_DEVICE_GONE; detach then releases everything",
                        requires: ["io.basic"], classes: io, timeout: 40) { c in
            let rig = try Rig(c)
            defer { rig.shutdown() }
            guard rig.library.raw.hasRemove else { return .skipped("the driver has no remove callback: the OS detaches it at once") }
            let instance = try rig.attach()
            let held = HeldAtRemoval(rig)
            rig.machine.bus.surpriseRemove(rig.slots[0], tellingObservers: false)
            let unnoticed = entropyBeforeRemove(rig)
            rig.library.raw.remove(instance.rawInstance)
            let unfinished = held.problem(within: 5)
            let answers = operationsAfterRemoval(rig)
            let report = instance.detach()
            if !report.leaked.isEmpty { return .failed("detach after remove left \(report.leaked.joined(separator: ", ")) behind") }
            if report.unfinishedRequests > 0 { return .failed("detach after remove returned with \(report.unfinishedRequests) accepted request(s) not completed") }
            if let problem = unnoticed ?? unfinished { return .failed(problem) }
            let wrong = answers.filter { $0.answer != nil }
            guard wrong.isEmpty else {
                return .failed(wrong.map { "\($0.call) after remove \($0.answer!)" }.joined(separator: "; ")
                    + "; after remove answer every operation with OY_E_DEVICE_GONE, and complete what was accepted with it (SDK/CLASSES.md)")
            }
            return .passed("\(answers.map(\.call).joined(separator: ", ")): OY_E_DEVICE_GONE")
        },
        CheckDefinition("lifecycle.two-instances", "two devices of one driver are independent", requires: ["io.basic"]) { c in
            let rig = try Rig(c, copies: 2)
            defer { rig.shutdown() }
            guard rig.slots.count >= 2 else { return .skipped("the suite has only one device this driver binds") }
            let first = try rig.attach(0)
            let second = try rig.attach(1)
            _ = try rig.exerciseIO(seed: 7)
            let status = rig.kernel.detach(rig.slots[1].address)?.status ?? .state
            guard status.isOK else { return .failed("detaching the second instance returned \(status)") }
            _ = second
            _ = try rig.exerciseIO(seed: 8)
            guard first.detach().status.isOK else { return .failed("the first instance did not detach cleanly after the second went away") }
            return .passed()
        },
    ]

    // MARK: Context and concurrency

    static let contextAndConcurrency: [CheckDefinition] = [
        CheckDefinition("context.interrupt-services", "host services only from the contexts the header allows", requires: ["lifecycle.attach"]) { c in
            let rig = try Rig(c)
            defer { rig.shutdown() }
            let instance = try rig.attach()
            for _ in 0..<3 {
                for vector in 0..<instance.device.info.interruptCount { rig.slots[0].raiseInterrupt(vector) }
            }
            _ = try? rig.exerciseIO()
            Thread.sleep(forTimeInterval: 0.1)
            instance.detach()
            let wrong = rig.library.violations.filter { $0.contains("context") }
            return wrong.isEmpty ? .passed() : .failed(wrong.prefix(3).joined(separator: "; "))
        },
        CheckDefinition("concurrency.io", "thread-safe class operations survive many threads, data verified", requires: ["io.basic"], classes: io, hostable: true) { c in
            try withDriver(c) { rig in
                let failures = Mutex<[String]>([])
                // Under ThreadSanitizer a race is seen only where two accesses
                // meet without the host's locks ordering them: more rounds,
                // closer together, give it the chance.
                let rounds = Verifier.underSanitizer ? 40 : 5
                let wireBefore = rig.nics.first?.1.wait(count: 0, timeout: 0).count ?? 0
                // A NIC's senders start each round together, so that their
                // transmits overlap even on a busy machine.
                let together = rig.nics.isEmpty ? nil : Meeting(of: Rig.concurrentThreads)
                onThreadsOfTheirOwn(Rig.concurrentThreads) { worker in
                    do {
                        for round in 0..<rounds {
                            // Otherwise randomized timing: the submitters meet at different points each round.
                            if let together { together.arrive(round) } else { usleep(UInt32.random(in: 0...(Verifier.underSanitizer ? 200 : 2000))) }
                            _ = try rig.exerciseIOConcurrently(worker: worker, round: round)
                        }
                    } catch {
                        failures.withLock { $0.append("\(error)") }
                    }
                }
                let found = failures.withLock { $0 }
                if found.isEmpty, let problem = concurrentFramesProblem(rig, wireBefore: wireBefore, rounds: rounds) { return .failed(problem) }
                return found.isEmpty ? .passed("\(Rig.concurrentThreads) threads × \(rounds) rounds") : .failed(found.prefix(2).joined(separator: "; "))
            }
        },
    ]

    // MARK: Fault injection

    static let faults: [CheckDefinition] = [
        CheckDefinition("fault.alloc-failure", "allocation N fails, for every N on the attach path: clean error, nothing leaked", requires: ["lifecycle.attach"], timeout: 60) { c in
            let rig = try Rig(c)
            defer { rig.shutdown() }
            rig.library.faults.failAllocation(number: nil)
            let clean = try rig.attach()
            let total = rig.library.faults.allocations
            clean.detach()
            for n in 1...max(total, 1) {
                rig.library.faults.failAllocation(number: n)
                do {
                    try rig.kernel.attach(rig.library, to: rig.slots[0]).detach()
                } catch let error as AttachError {
                    if !error.leaked.isEmpty { return .failed("with allocation \(n) of \(total) failing, attach leaked \(error.leaked.joined(separator: ", ")); release what was acquired before returning the error") }
                    if !error.status.isDefined { return .failed("with allocation \(n) failing, attach returned undefined code \(error.status.rawValue)") }
                }
            }
            rig.library.faults.failAllocation(number: nil)
            return .passed("\(total) allocation(s) on the attach path, each failed once")
        },
        CheckDefinition("fault.dma-alloc-failure", "DMA allocation fails: clean error, nothing leaked", requires: ["lifecycle.attach"]) { c in
            let rig = try Rig(c)
            defer { rig.shutdown() }
            rig.library.faults.failDMAAllocations(true)
            return try rig.attachMayFailCleanly(ifAttached: "attach needs no DMA memory", leakContext: "when DMA allocation failed")
        },
        CheckDefinition("fault.device-gone", "registers read all ones (device gone): no crash, no hang, no leak", requires: ["lifecycle.attach"], timeout: 30) { c in
            let rig = try Rig(c)
            defer { rig.shutdown() }
            rig.machine.bus.surpriseRemove(rig.slots[0])
            return try rig.attachMayFailCleanly(ifAttached: "attach tolerated a missing device", leakContext: "with the device removed")
        },
        CheckDefinition("fault.device-error", "the device reports an error status: the request fails, the next works", requires: ["io.basic"], classes: block) { c in
            try withAttached(c) { rig, instance in
                guard let disk = rig.kernel.blockLayer.disks.first, let nvme = rig.nvmes.first else { return .failed("no disk registered") }
                nvme.injectErrors(true)
                let failed = (try? disk.write(lba: 1, bytes: [UInt8](repeating: 1, count: disk.geometry.blockSize))) == nil
                nvme.injectErrors(false)
                guard failed else { return .failed("a write the device failed was reported as successful") }
                _ = try rig.exerciseIO()
                return .passed()
            }
        },
        CheckDefinition("fault.lost-interrupts", "interrupts never arrive: timeouts fire, no hang", requires: ["lifecycle.attach"], timeout: 30) { c in
            let rig = try Rig(c)
            defer { rig.shutdown() }
            rig.slots[0].loseInterrupts(true)
            let start = Date()
            do {
                let instance = try rig.kernel.attach(rig.library, to: rig.slots[0])
                startBackgroundIO(rig, pending: Pending(), count: 4)
                Thread.sleep(forTimeInterval: 0.2)
                instance.detach()
            } catch let error as AttachError {
                if !error.leaked.isEmpty { return .failed("attach without interrupts leaked \(error.leaked.joined(separator: ", "))") }
            }
            return .passed(String(format: "returned after %.1f s", Date().timeIntervalSince(start)))
        },
    ]

    // MARK: I/O correctness

    static let ioChecks: [CheckDefinition] = [
        CheckDefinition("io.dma-faults", "I/O makes no DMA access outside mapped memory", requires: ["lifecycle.attach"], classes: io) { c in
            try withAttached(c) { rig, instance in
                _ = try? rig.exerciseIO()
                let faults = rig.machine.iommu.recentFaults
                return faults.isEmpty ? .passed() : .failed("\(faults.count) DMA fault(s), first: \(faults[0]); \(advice(for: faults[0]))")
            }
        },
    ]

    /// The I/O checks `fault.spurious-interrupts` runs again: the ones that
    /// verify data, where an interrupt handler that takes a spurious
    /// interrupt for news shows (a byte that never came, a completion of a
    /// request still with the device).
    static let spuriousReruns: Set<String> = ["io.basic", "concurrency.io", "io.block.patterns", "io.block.accounting", "io.net.frames", "io.net.rings",
                                              "io.serial.roundtrip", "io.rng.bytes", "io.rng.from-device"]

    static let spurious = CheckDefinition("fault.spurious-interrupts", "with the device's interrupts also raised for nothing (after every register write, every 0.05 ms), its I/O checks pass again",
                                          requires: ["io.basic"], classes: io, timeout: 120) { c in
        var storm = c
        storm.spuriousInterrupts = true
        // Correctness only: the storm takes processor time from whatever
        // keeps a serial line busy (a polling driver's timer), so the line's
        // rate floor is judged without it, in io.serial.roundtrip.
        storm.timeBudget = nil
        return rerun(storm, where: { spuriousReruns.contains($0.id) }, label: "with spurious interrupts",
                     advice: "; an interrupt may come with nothing new (a spurious one, or one for what the last run of the handler already took): "
                         + "read the device's status and do only what it reports") { done in
            .passed("\(done.passed.joined(separator: ", ")) passed with spurious interrupts")
        }
    }

    /// What `rerun` came to when every check it ran again passed.
    struct Rerun {
        var passed: [String] = [], skipped: [String] = []
        /// Each passed check's facts, under its ID.
        var observation = Observation()
    }

    /// Runs the driver's class's checks `selected` picks again, under
    /// `context` (a driver host, spurious interrupts), each that passed
    /// before (one that did not has reported its defect already). The first
    /// that fails is the verdict: its message after "<check>, <label>: ",
    /// then `advice`. Otherwise `summary` of what passed and was skipped.
    static func rerun(_ context: CheckContext, where selected: (CheckDefinition) -> Bool, label: String, advice: String = "",
                      summary: (Rerun) -> CheckOutcome) -> CheckOutcome {
        guard let deviceClass = try? DriverFile.inspect(path: context.driverPath).metadata.deviceClass else { return .failed("the driver file cannot be read") }
        var done = Rerun()
        for check in Catalogue.all where selected(check) && (check.classes == nil || check.classes!.contains(deviceClass)) {
            guard !(context.failedBefore?.contains(check.id) ?? false) else {
                done.skipped.append(check.id + " (did not pass in process)")
                continue
            }
            let outcome: CheckOutcome
            do {
                outcome = try check.run(context)
            } catch {
                outcome = .failed("\(error)")
            }
            switch outcome.verdict {
            case .passed, .warning:
                done.passed.append(check.id)
                for (key, value) in Observation(encoded: outcome.observation ?? "").facts { done.observation["\(check.id).\(key)"] = value }
            case .skipped:
                done.skipped.append(check.id)
            default:
                var failed = CheckOutcome.failed("\(check.id), \(label): \(outcome.message)\(advice)")
                failed.verdict = outcome.verdict
                return failed
            }
        }
        return summary(done)
    }

    static let sameResults: [CheckDefinition] = [
        CheckDefinition("io.same-results", "the same observable results in both environments", scope: .crossEnvironment) { _ in .passed() },
    ]

    // MARK: Bad input

    /// What the host records when a driver hands a NULL device (the check's
    /// own bad input) on to a host service.
    static let nullDevice = "with a NULL oy_device handle"

    static let badInput: [CheckDefinition] = [
        CheckDefinition("badinput.null-args", "NULL and out-of-range arguments return the code SDK/CLASSES.md names (OY_E_INVALID, OY_E_RANGE)", requires: ["lifecycle.attach"], tolerates: [Self.nullDevice]) { c in
            let calls = try badInputStatuses(c)
            let wrong = calls.filter { !$0.expected.contains($0.status) }
            let observation = Observation(Dictionary(uniqueKeysWithValues: calls.map { ($0.call.replacingOccurrences(of: ";", with: ","), Observation.statuses([$0.status])) }))
            guard wrong.isEmpty else {
                return .failed(wrong.prefix(3).map { "\($0.call) returned \($0.status); SDK/CLASSES.md names \($0.expected.compactMap(\.name).sorted().joined(separator: " or "))" }.joined(separator: "; "))
            }
            return .passed("\(calls.count) calls, each answered with its documented code", observation: observation)
        },
        CheckDefinition("badinput.error-codes", "every returned error code is defined and has a string", requires: ["lifecycle.attach"], tolerates: [Self.nullDevice]) { c in
            let undefined = try badInputStatuses(c).filter { !$0.status.isDocumented }
            return undefined.isEmpty ? .passed() : .failed(undefined.prefix(3).map { "\($0.call) returned undefined code \($0.status.rawValue)" }.joined(separator: "; ") + "; use OY_E* codes or the vendor range")
        },
    ]

    // MARK: Control methods

    static let control: [CheckDefinition] = [
        CheckDefinition("control.signatures", "control-method signatures are well formed", requires: ["lifecycle.attach"]) { c in
            try withAttached(c) { rig, instance in
                let methods = try instance.controlMethods()
                if methods.isEmpty { return .passed("no control methods") }
                var names = Set<String>()
                for m in methods {
                    if let problem = m.signatureProblem { return .failed("\(m.name): \(problem)") }
                    guard !m.name.isEmpty, m.name.allSatisfy({ $0.isLowercase || $0.isNumber || $0 == "_" }) else { return .failed("method name \"\(m.name)\" is not [a-z0-9_]+") }
                    guard names.insert(m.name).inserted else { return .failed("method \(m.name) is declared twice") }
                }
                return .passed(methods.map { "\($0.name) \($0.signatureText)" }.joined(separator: ", "))
            }
        },
        CheckDefinition("control.boundary-calls", "boundary-value calls do not crash", requires: ["control.signatures"], timeout: 30) { c in
            try withAttached(c) { rig, instance in
                var calls = 0
                for method in try instance.controlMethods() {
                    guard let signature = method.signature else { continue }
                    let columns = signature.arguments.map(\.boundaryValues)
                    let rows = max(1, columns.map(\.count).max() ?? 1)
                    for row in 0..<rows {
                        let arguments = columns.map { $0[row % $0.count] }
                        _ = try instance.callControl(method.name, arguments: arguments)
                        calls += 1
                    }
                }
                return .passed("\(calls) call(s)")
            }
        },
    ]

    // MARK: Helpers

    static func hex(_ v: UInt16) -> String { String(format: "%04x", v) }

    /// A rig with the driver attached to its first device; detached and
    /// shut down afterwards, whatever the body returns or throws.
    static func withAttached(_ c: CheckContext, disk: Rig.DiskShape = Rig.DiskShape(), prepare: (Rig) -> Void = { _ in },
                             _ body: (Rig, DriverInstance) throws -> CheckOutcome) throws -> CheckOutcome {
        let rig = try Rig(c, disk: disk)
        defer { rig.shutdown() }
        prepare(rig)
        let instance = try rig.attach()
        defer { instance.detach() }
        return try body(rig, instance)
    }

    /// A rig with the driver attached to its first device, in the suite's
    /// process or, when the context says so, in a driver host (the body may
    /// use only what the Kernel's subsystems offer); detached and shut down
    /// afterwards.
    /// `prepare` runs on the rig before the driver attaches (the state of
    /// the devices it should find).
    static func withDriver(_ c: CheckContext, disk: Rig.DiskShape = Rig.DiskShape(), prepare: (Rig) -> Void = { _ in },
                           _ body: (Rig) throws -> CheckOutcome) throws -> CheckOutcome {
        if c.hosted { return try withHostedDriver(c, disk: disk, prepare: prepare) { rig, _, _ in try body(rig) } }
        return try withAttached(c, disk: disk, prepare: prepare) { rig, _ in try body(rig) }
    }

    static func withDisk(_ c: CheckContext, _ body: (Disk, IOBuffer) throws -> CheckOutcome) throws -> CheckOutcome {
        try withDriver(c) { rig in
            guard let disk = rig.kernel.blockLayer.disks.first, let buffer = disk.allocateBuffer(length: 4 * disk.geometry.blockSize) else {
                return .failed("no disk registered")
            }
            return try body(disk, buffer)
        }
    }

    /// Submits straight to the driver (no kernel checks); the status it
    /// returned or, if accepted, the status it completed with.
    static func submitDirect(_ disk: Disk, _ op: BlockRequest.Operation, lba: UInt64, blocks: Int, data: UnsafeMutableRawPointer) -> OyStatus {
        let request = BlockRequest()
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<OyStatus>(.timeout)
        request.prepare(op, lba: lba, blockCount: blocks, data: data) { status in
            result.withLock { $0 = status }
            done.signal()
        }
        let status = disk.driver.submit(request)
        guard status.isOK else { return status }
        _ = done.wait(timeout: .now() + 5)
        return result.withLock { $0 }
    }

    /// Bad calls into probe, attach and the class operations, what each
    /// returned, and what SDK/CLASSES.md says it must (probe may also say
    /// the device is not its own).
    static func badInputStatuses(_ c: CheckContext) throws -> [(call: String, status: OyStatus, expected: Set<OyStatus>)] {
        let rig = try Rig(c)
        defer { rig.shutdown() }
        let invalid: Set<OyStatus> = [.invalid], range: Set<OyStatus> = [.range], probe: Set<OyStatus> = [.invalid, .notSupported]
        var out: [(call: String, status: OyStatus, expected: Set<OyStatus>)] = [
            ("probe(NULL)", rig.library.raw.probe(nil), probe), ("attach(NULL device)", rig.library.raw.attachWithoutDevice(), invalid),
        ]
        let short = HostDeviceInfo(vendorID: 0x0A7A, deviceID: 1, classCode: 0, revision: 1, bars: [], interruptCount: 0, location: "x")
        out.append(("probe(info with struct_size 4)", rig.library.raw.probe(short, structSize: 4), probe))
        let instance = try rig.attach()
        defer { instance.detach() }
        if let disk = instance.disks.first {
            out.append(("block submit(NULL)", disk.submitUnchecked(request: false), invalid))
            out.append(("block submit(op 99)", disk.submitUnchecked { $0.op = 99; $0.block_count = 1 }, invalid))
            out.append(("block submit(read, data NULL)", disk.submitUnchecked { $0.op = 1; $0.block_count = 1; $0.data = nil }, invalid))
            out.append(("block submit(struct_size 8)", disk.submitUnchecked { $0.struct_size = 8; $0.op = 1 }, invalid))
        }
        if let netdev = instance.netdevs.first {
            out.append(("net transmit(NULL)", netdev.transmitUnchecked(frame: false), invalid))
            out.append(("net transmit(data NULL)", netdev.transmitUnchecked(frame: true), invalid))
            out.append(("net transmit(frame struct_size 8)", netdev.transmitUnchecked(structSize: 8), invalid))
            if let s = netdev.statsUnchecked() { out.append(("net get_stats(NULL)", s, invalid)) }
            if let s = netdev.statsUnchecked(structSize: 4) { out.append(("net get_stats(struct_size 4)", s.status, invalid)) }
            if let s = netdev.setFilterUnchecked(count: 3, nullAddresses: true) { out.append(("net set_filter(NULL, 3)", s, invalid)) }
            if let s = netdev.setFilterUnchecked(count: 4096, nullAddresses: false) { out.append(("net set_filter(4096 addresses)", s, range)) }
        }
        if let port = rig.kernel.serial.ports.first?.port as? RegisteredSerialPort {
            out.append(("serial write(NULL, 5)", port.writeUnchecked(nullData: true), invalid))
            out.append(("serial write(written NULL)", port.writeUnchecked(nullData: false), invalid))
            if let s = port.setLineUnchecked() { out.append(("serial set_line(NULL)", s, invalid)) }
            if let s = port.setLineUnchecked(structSize: 4) { out.append(("serial set_line(struct_size 4)", s, invalid)) }
            out.append(("serial set_line(0 baud)", port.setLine(SerialLine(baud: 0)), range))
        }
        return out
    }
}

/// Requests started in the background, for removal and lost-interrupt checks.
final class Pending: @unchecked Sendable {
    private let condition = NSCondition()
    private(set) var started = 0
    private(set) var completed = 0

    var outstanding: Int { condition.withLock { started - completed } }

    func start() { condition.withLock { started += 1 } }

    func finish() {
        condition.withLock {
            completed += 1
            condition.broadcast()
        }
    }

    func waitAll(timeout: Double) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        return condition.withLock {
            while completed < started && condition.wait(until: deadline) {}
            return completed >= started
        }
    }
}

/// Threads that wait for each other before each round; one that does not
/// come (its round failed) holds the others up at most a second.
final class Meeting: @unchecked Sendable {
    // @unchecked Sendable: the counts are guarded by `condition`.
    private let condition = NSCondition()
    private let parties: Int
    private var arrived: [Int: Int] = [:]

    init(of parties: Int) { self.parties = parties }

    func arrive(_ round: Int) {
        let deadline = Date(timeIntervalSinceNow: 1)
        condition.withLock {
            arrived[round, default: 0] += 1
            condition.broadcast()
            while arrived[round, default: 0] < parties && condition.wait(until: deadline) {}
        }
    }
}

/// Starts `count` asynchronous operations of the driver's class.
func startBackgroundIO(_ rig: Rig, pending: Pending, count: Int = 64) {
    if let disk = rig.kernel.blockLayer.disks.first {
        for i in 0..<count {
            guard let buffer = disk.allocateBuffer(length: 64 * disk.geometry.blockSize) else { break }
            pending.start()
            disk.submit(.write, lba: UInt64(i * 64) % (disk.geometry.blockCount - 64), blocks: 64, buffer: buffer) { _ in pending.finish() }
        }
    } else if let interface = rig.kernel.network.interfaces.first {
        let frame = [UInt8](repeating: 0xFF, count: 6) + interface.mac + [0x88, 0xB5] + [UInt8](repeating: 1, count: 1000)
        for _ in 0..<count { _ = interface.send(frame) }
    } else if let tty = rig.kernel.serial.ports.first {
        tty.write([UInt8](repeating: 0x55, count: count * 16))
    } else if let source = rig.kernel.entropy.sources.first {
        for _ in 0..<4 {
            pending.start()
            Thread.detachNewThread {
                for _ in 0..<(count / 4) { if (try? source.read(256, timeout: 1)) == nil { break } }
                pending.finish()
            }
        }
    }
}

/// What a DMA fault's address says about the driver's mistake.
func advice(for fault: DMAFault) -> String {
    if fault.address < 1 << 32 {
        return String(format: "0x%llx is below 4 GiB, and every device address here lies at or above 0x%llx (as an IOMMU hands them out on a large machine): ", fault.address, deviceAddressBase)
            + "the address lost its high half; keep device addresses in oy_dma_addr (64 bits) and program both halves of the device's address registers"
    }
    return "give the device addresses from dma_alloc/dma_map, never CPU pointers"
}

/// `body(round)` on a thread of its own until `stop`, every `interval`
/// microseconds (or so: the machine's timer decides): a device's world
/// going on (`Rig.worldGoesOn`), a storm of spurious interrupts.
final class Repeating: @unchecked Sendable {
    // @unchecked Sendable: the state is guarded by `lock`.
    private let lock = NSCondition()
    private var running = true
    private var finished = false
    private var count = 0
    private let every: UInt32

    init(named name: String, every interval: UInt32 = 1000, _ body: @escaping @Sendable (Int) -> Void) {
        every = interval
        startThread(named: name) { [self] in
            var round = 0
            while lock.withLock({ running }) {
                body(round)
                round += 1
                lock.withLock { count = round }
                usleep(every)
            }
            lock.withLock {
                finished = true
                lock.broadcast()
            }
        }
    }

    var rounds: Int { lock.withLock { count } }

    /// Returns once the thread stopped.
    func stop() {
        lock.withLock {
            running = false
            while !finished { lock.wait() }
        }
    }
}

/// Calls each operation of the class object the driver registered once,
/// the way the OS would between remove and detach. `answer` is nil for
/// OY_E_DEVICE_GONE (refused, or accepted and completed with it), else what
/// the driver did instead.
func operationsAfterRemoval(_ rig: Rig, wait: Double = 5) -> [(call: String, answer: String?)] {
    func gone(_ status: OyStatus?) -> String? {
        guard let status else { return String(format: "was neither refused nor completed within %.0f s", wait) }
        return status == .deviceGone ? nil : "answered \(status.name ?? "code \(status.rawValue)")"
    }
    func gone(_ result: Result<Int, OyStatus>, _ verb: String) -> String? {
        switch result {
        case .success(let count): "answered OY_OK and \(verb) \(count) byte(s)"
        case .failure(let status): gone(status)
        }
    }
    var answers: [(call: String, answer: String?)] = []
    if let disk = rig.kernel.blockLayer.disks.first, let buffer = disk.allocateBuffer(length: disk.geometry.blockSize) {
        // Through the OS's disk, which passes a refusal on as the request's end.
        let status = firstAnswer(within: wait) { disk.submit(.write, lba: 1, blocks: 1, buffer: buffer, completion: $0) }
        answers.append(("a write", status.map { $0 == .deviceGone ? nil : "ended with \"\($0)\"" } ?? gone(nil)))
    }
    if let interface = rig.kernel.network.interfaces.first {
        let frame = NetFrame()
        let bytes = [UInt8](repeating: 0xFF, count: 6) + interface.mac + [0x88, 0xB5] + [UInt8](repeating: 7, count: 46)
        // A refused frame is never completed: its refusal is the answer.
        let status: OyStatus? = firstAnswer(within: wait) { answer in
            bytes.withUnsafeBytes { frame.prepare($0, completion: answer) }
            let refusal = interface.netdev.transmit(frame)
            if !refusal.isOK { answer(refusal) }
        }
        answers.append(("transmit", gone(status)))
        answers.append(("set_filter", gone(interface.netdev.setFilter([interface.mac]))))
    }
    if let tty = rig.kernel.serial.ports.first {
        let result = [UInt8](repeating: 0x41, count: 8).withUnsafeBytes { tty.port.write($0) }
        answers.append(("write", gone(result, "took")))
        answers.append(("set_line", gone(tty.port.setLine(SerialLine(baud: 9_600)))))
    }
    if let source = rig.kernel.entropy.sources.first {
        var buffer = [UInt8](repeating: 0, count: 16)
        let result = buffer.withUnsafeMutableBytes { source.registered.read(into: $0) }
        answers.append(("read", gone(result, "produced")))
    }
    return answers
}

/// What the driver holds when its device goes: a disk's writes while the
/// controller holds its commands, a NIC's frames while the link partner
/// pauses the transmitter. `remove` completes each, with OY_E_DEVICE_GONE,
/// before detach is called (driver.h): the OS may be a while getting there.
final class HeldAtRemoval: Sendable {
    private let pending = Pending()
    private let what: String
    /// Kept until they complete: the driver holds them.
    private let frames: [NetFrame]

    init(_ rig: Rig) {
        var frames: [NetFrame] = []
        let pending = self.pending
        if let disk = rig.kernel.blockLayer.disks.first, let nvme = rig.nvmes.first, let buffer = disk.allocateBuffer(length: disk.geometry.blockSize) {
            nvme.holdCommands(true)
            for lba in 0..<4 {
                pending.start()
                disk.submit(.write, lba: UInt64(lba), blocks: 1, buffer: buffer) { _ in pending.finish() }
            }
            Thread.sleep(forTimeInterval: 0.05)  // with the driver, in the held controller
        }
        if let interface = rig.kernel.network.interfaces.first, let (nic, _) = rig.nics.first {
            nic.pauseTransmit(true)
            let bytes = RingTraffic.peer + interface.mac + [0x88, 0xB5] + [UInt8](repeating: 9, count: 46)
            for _ in 0..<4 {
                let frame = NetFrame()
                bytes.withUnsafeBytes { frame.prepare($0) { _ in pending.finish() } }
                pending.start()
                if interface.netdev.transmit(frame).isOK { frames.append(frame) } else { pending.finish() }
            }
        }
        self.frames = frames
        what = rig.kernel.blockLayer.disks.isEmpty ? "frame(s) to transmit" : "write(s)"
    }

    /// What is wrong, or nil, once `seconds` have passed or all completed.
    func problem(within seconds: Double) -> String? {
        guard !pending.waitAll(timeout: seconds) else { return nil }
        return "\(pending.outstanding) of \(pending.started) \(what) accepted before the device went were not completed within \(Int(seconds)) s of remove: "
            + "remove completes everything outstanding with OY_E_DEVICE_GONE (driver.h); detach may come much later"
    }
}

/// An entropy read after the device vanished, before the OS has called
/// remove: the device reads all ones (rnglite's STATUS then says 255 words,
/// DATA gives 0xFFFFFFFF), and a driver that does not check passes ones off
/// as entropy. What it did wrong, or nil.
func entropyBeforeRemove(_ rig: Rig) -> String? {
    guard let source = rig.kernel.entropy.sources.first else { return nil }
    var buffer = [UInt8](repeating: 0, count: 16)
    let result = buffer.withUnsafeMutableBytes { source.registered.read(into: $0) }
    guard case .success(let count) = result, count > 0 else { return nil }
    let ones = buffer.prefix(count).allSatisfy { $0 == 0xFF }
    return "a read after the device was pulled, before remove was called, produced \(count) byte(s)\(ones ? " of all ones" : "") as entropy: "
        + "a removed device reads all ones; check STATUS for it and answer OY_E_DEVICE_GONE (the datasheet's Errors)"
}

/// Starts something that answers once through the closure it is given
/// (a completion, a thread's result); the answer, or nil when none came
/// within `seconds` (a late one is dropped).
func firstAnswer<T: Sendable>(within seconds: Double, _ start: (@escaping @Sendable (T) -> Void) -> Void) -> T? {
    let done = DispatchSemaphore(value: 0)
    let answer = Mutex<T?>(nil)
    start { value in
        answer.withLock { if $0 == nil { $0 = value } }
        done.signal()
    }
    return done.wait(timeout: .now() + seconds) == .success ? answer.withLock { $0 } : nil
}

/// Runs `body(0..<count)` on `count` threads of their own, released
/// together, and returns when all are done. Unlike
/// `DispatchQueue.concurrentPerform`, whose width is the CPU count (and a
/// single thread when the pool is busy, as under a loaded CI machine), every
/// caller here really runs at once, so submitters can meet in a driver.
func onThreadsOfTheirOwn(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let start = DispatchSemaphore(value: 0)
    let done = DispatchGroup()
    for index in 0..<count {
        done.enter()
        Thread.detachNewThread {
            start.wait()
            body(index)
            done.leave()
        }
    }
    for _ in 0..<count { start.signal() }
    done.wait()
}

extension Rig {
    /// One round of verified I/O for a concurrent worker, on its own region.
    func exerciseIOConcurrently(worker: Int, round: Int) throws -> String {
        switch deviceClass {
        case "oyako.block/1":
            guard let disk = kernel.blockLayer.disks.first else { throw CheckFailure("no disk registered") }
            // Each worker keeps to its own 2048 blocks, however many rounds it runs
            // (40 under a sanitizer: 40 × 64 would reach into the next worker's).
            let lba = UInt64(worker * 2048 + (round % 32) * 64)
            let data = (0..<(16 * disk.geometry.blockSize)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ worker &* 7 &+ round) }
            do {
                try disk.write(lba: lba, bytes: data)
                guard try disk.read(lba: lba, count: data.count) == data else { throw CheckFailure("worker \(worker): data read back differs") }
            } catch let error as BlockError {
                throw CheckFailure("worker \(worker): \(error)")
            }
            return "ok"
        case "oyako.net/1":
            guard let interface = kernel.network.interfaces.first else { throw CheckFailure("no interface") }
            for seq in 0..<Self.concurrentFrames {
                try Self.sendWaitingForRoom(interface, Self.concurrentFrame(worker: worker, round: round, seq: seq, from: interface.mac), worker: worker)
            }
            return "ok"
        case "oyako.serial/1":
            guard let tty = kernel.serial.ports.first else { throw CheckFailure("no port") }
            tty.write([UInt8](repeating: UInt8(0x30 + worker), count: 8))
            return "ok"
        case "oyako.rng/1":
            do {
                _ = try kernel.entropy.read(64)
            } catch {
                throw CheckFailure("worker \(worker): \(error)")
            }
            return "ok"
        default:
            return "none"
        }
    }
}

extension Rig {
    /// concurrency.io's threads, and the frames each sends a round.
    static let concurrentThreads = 4
    static let concurrentFrames = 64
    /// How long a sender waits for room in a full transmit queue: no frame
    /// completed in that time is a ring that stopped (five times as long
    /// under a sanitizer, as the suite's time limits are).
    static var transmitStall: Double { Verifier.underSanitizer ? 25 : 5 }

    /// Queues `frame`, waiting while the OS's transmit queue is full, as a
    /// sender with flow control does: the threads send faster than any
    /// device puts frames on the wire, so a full queue alone is no fault.
    /// One that stays full is.
    static func sendWaitingForRoom(_ interface: NetInterface, _ frame: [UInt8], worker: Int) throws {
        let deadline = Date().addingTimeInterval(transmitStall)
        while true {
            switch interface.offer(frame) {
            case .queued:
                return
            case .dropped:
                throw CheckFailure("worker \(worker): the OS dropped a \(frame.count)-byte frame the interface takes: its driver is gone")
            case .full:
                guard Date() < deadline else {
                    throw CheckFailure("worker \(worker): the OS's transmit queue stayed full (\(NetInterface.queueLimit) frames waiting) for \(Int(transmitStall)) s: "
                        + "the driver stopped completing the frames sent from threads at once; "
                        + "a ring mixed up by overlapping transmits stops completing them (transmit is [any-thread]: take your lock around the ring)")
                }
                usleep(1000)
            }
        }
    }

    /// Frame `seq` of a worker's round: tagged, 60 to 1054 bytes, its
    /// payload a function of the tag.
    static func concurrentFrame(worker: Int, round: Int, seq: Int, from mac: [UInt8]) -> [UInt8] {
        let tag = [0xC0, UInt8(worker), UInt8(round), UInt8(seq)]
        let length = 60 + ((worker * 131 + round * 17 + seq * 61) % 995)
        return RingTraffic.peer + mac + [0x88, 0xB5] + tag + (0..<(length - 18)).map { UInt8(truncatingIfNeeded: $0 &* 11 &+ worker &+ seq) }
    }
}

/// What concurrency.io's frames show on the wire, or nil: every worker's
/// every frame once, intact, and each worker's in the order it sent them
/// (one thread's transmits keep their order). Drivers whose transmit is
/// not thread-safe put two frames in one descriptor, or lose one.
func concurrentFramesProblem(_ rig: Rig, wireBefore: Int, rounds: Int) -> String? {
    guard let (_, recorder) = rig.nics.first, let mac = rig.kernel.network.interfaces.first?.mac else { return nil }
    let expected = Rig.concurrentThreads * rounds * Rig.concurrentFrames
    let wire = recorder.wait(count: wireBefore + expected, timeout: 10).dropFirst(wireBefore).filter { $0.count >= 18 && $0[14] == 0xC0 && Array($0[0..<6]) == RingTraffic.peer }
    var next = [Int](repeating: 0, count: Rig.concurrentThreads)
    for frame in wire {
        let worker = Int(frame[15]), round = Int(frame[16]), seq = Int(frame[17])
        guard worker < Rig.concurrentThreads else { return "a frame reached the wire with a tag no thread sent: frames were mixed up in the ring" }
        let want = (next[worker] / Rig.concurrentFrames, next[worker] % Rig.concurrentFrames)
        guard (round, seq) == want else {
            return "thread \(worker)'s frame \(round * Rig.concurrentFrames + seq) reached the wire where its frame \(next[worker]) belonged: "
                + "frames sent from threads at once were lost, repeated or reordered (transmit is [any-thread]: take your lock around the ring)"
        }
        guard RingTraffic.onTheWire(Rig.concurrentFrame(worker: worker, round: round, seq: seq, from: mac)) == frame else {
            return "thread \(worker)'s frame \(next[worker]) reached the wire altered: frames sent from threads at once overwrote each other (take your lock around the ring)"
        }
        next[worker] += 1
    }
    guard wire.count >= expected else {
        return "\(wire.count) of \(expected) frames sent from \(Rig.concurrentThreads) threads at once reached the wire within 10 s (transmit is [any-thread]: take your lock around the ring)"
    }
    return nil
}

/// A minimal environment for loading a driver with no devices (load.cycles).
final class CountingEnvironment: HostEnvironment {
    let name = "conformance"
    func log(level: LogLevel, driver: String, device: String?, message: String) {}
    func registered(_ registration: ClassRegistration, device: any HostDevice) throws(OyStatus) {}
    func unregistered(_ registration: ClassRegistration) {}
}

extension Catalogue {
    /// lifecycle.detach-quiets on an attached rig: the device's world goes on
    /// through `detach` and after it; no DMA and no interrupt may follow.
    static func detachQuiets(_ rig: Rig, detach: () -> Void) -> CheckOutcome {
        let slot = rig.slots[0]
        let world = Repeating(named: "world") { rig.worldGoesOn(round: $0) }
        defer { world.stop() }
        Thread.sleep(forTimeInterval: 0.05)
        let faultsBefore = slot.dmaFaults
        // A vector the driver hooked has a handler until detach unhooks it:
        // an interrupt on it with none, during detach or after, is the
        // device still enabled then. A vector it never hooked is one it
        // polls (nvmelite's admin queue may be): the device may raise it
        // while the driver works it, so it is judged after detach only.
        let hooked = slot.vectors.map { rig.machine.interrupts.isHooked($0) }
        let interruptsBefore = slot.unhandledInterruptsByVector
        // Input every 1 ms through detach, each release in it followed by
        // 5 ms in which a device not yet stopped shows it (in a driver host
        // too: its detach is told the pause). Not faster: a NIC whose ring
        // fills makes no DMA, and at 0.1 ms e1klite's 128 descriptors filled
        // before a loaded machine's hosted detach reached its first
        // dma_free, so a receiver left on over freed rings went unseen.
        Verifier.pauseAfterRelease(microseconds: 5000)
        detach()
        Verifier.pauseAfterRelease(microseconds: 0)
        Thread.sleep(forTimeInterval: 0.05)  // an interrupt on its way as detach returned
        let interruptsSettled = slot.unhandledInterruptsByVector
        Thread.sleep(forTimeInterval: 0.3)
        world.stop()
        let interruptsAfter = slot.unhandledInterruptsByVector
        let interrupts = interruptsAfter.indices.reduce(0) { sum, index in
            sum + interruptsAfter[index] - (hooked[index] ? interruptsBefore[index] : interruptsSettled[index])
        }
        let faults = slot.dmaFaults - faultsBefore
        let first = rig.machine.iommu.recentFaults.last.map { " (last: \($0))" } ?? ""
        if faults > 0 {
            return .failed("\(faults) DMA access(es) by the device during or after detach, into memory detach had freed\(first): "
                + "stop the device's DMA (its receiver, its queues) in detach before freeing the memory it uses")
        }
        if interrupts > 0 {
            return .failed("the device raised \(interrupts) interrupt(s) during or after detach with no handler hooked: in detach, mask the device's interrupts at the device "
                + "(and stop it) before irq_unhook")
        }
        return .passed("\(world.rounds) rounds of input during and after detach, no DMA and no interrupt")
    }
}
