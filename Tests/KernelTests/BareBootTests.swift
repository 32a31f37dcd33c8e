import SystemAssembly
import DriverHost
import Foundation
import Kernel
import Machine
import OyakoTestSupport
import Synchronization
import Testing
import Workloads

@Suite struct BareBootTests {
    @Test func bootBindsNvmeliteAndRegistersADisk() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        #expect(system.report.problems.isEmpty)
        #expect(system.report.devices.first { $0.deviceID == 1 }?.outcome == "attached")
        let disk = try #require(system.disk)
        #expect(disk.geometry.blockSize == 512)
        #expect(disk.geometry.blockCount == (16 << 20) / 512)
        #expect(disk.geometry.queueDepth == 32)
        #expect(disk.driverLabel == "nvmelite@00:01.0")
    }

    @Test(arguments: [(1, 0), (1, 3), (7, 0), (8, 512), (9, 100), (64, 4095), (256, 0), (255, 1)])
    func verifiedIOOfSizeAndBufferAlignment(blocks: Int, bufferOffset: Int) throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let disk = try #require(system.disk)
        let length = blocks * 512
        let lba = UInt64(blocks * 3 + 1)  // odd LBAs too
        let writeBuffer = try #require(disk.allocateBuffer(length: length + bufferOffset))
        let readBuffer = try #require(disk.allocateBuffer(length: length + bufferOffset))
        let data = Pattern.bytes(seed: UInt64(blocks), lba: lba, blockSize: 512, count: length)
        data.withUnsafeBytes { (writeBuffer.pointer + bufferOffset).copyMemory(from: $0.baseAddress!, byteCount: length) }
        try disk.perform(.write, lba: lba, blocks: blocks, buffer: writeBuffer, bufferOffset: bufferOffset)
        try disk.perform(.read, lba: lba, blocks: blocks, buffer: readBuffer, bufferOffset: bufferOffset)
        let back = [UInt8](UnsafeRawBufferPointer(start: readBuffer.pointer + bufferOffset, count: length))
        #expect(back == data)
        // And the bytes really are in the disk image file.
        let file = try FileHandle(forReadingFrom: URL(fileURLWithPath: system.state + "/" + Testbed.diskImageName))
        try file.seek(toOffset: lba * 512)
        #expect([UInt8](try file.read(upToCount: length) ?? Data()) == data)
    }

    @Test func largeTransfersAreSplitBySyncAPI() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let disk = try #require(system.disk)
        let data = Pattern.bytes(seed: 9, lba: 100, blockSize: 512, count: 1 << 20)
        try disk.write(lba: 100, bytes: data)
        #expect(try disk.read(lba: 100, count: 1 << 20) == data)
    }

    @Test func flushReachesTheDeviceAsFdatasync() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let disk = try #require(system.disk)
        let before = system.testbed.nvme.statistics.flushes
        try disk.flush()
        #expect(system.testbed.nvme.statistics.flushes == before + 1)
    }

    @Test func outOfRangeAndZeroLengthRequestsAreRejected() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let disk = try #require(system.disk)
        let buffer = try #require(disk.allocateBuffer(length: 4096))
        let end = disk.geometry.blockCount
        #expect(throws: BlockError.self) { try disk.perform(.read, lba: end, blocks: 1, buffer: buffer) }
        #expect(throws: BlockError.self) { try disk.perform(.read, lba: end - 1, blocks: 2, buffer: buffer) }
        #expect(throws: BlockError.self) { try disk.perform(.write, lba: 0, blocks: 0, buffer: buffer) }
        #expect(throws: BlockError.self) { try disk.perform(.write, lba: 0, blocks: 9, buffer: buffer) }  // buffer too short
        let error = #expect(throws: BlockError.self) { try disk.perform(.read, lba: UInt64.max, blocks: 1, buffer: buffer) }
        #expect(error?.status == .outOfRange)
    }

    /// Eight threads of their own, not tasks: blocking I/O in tasks would
    /// run two at a time on a two-core machine's cooperative pool (and hold
    /// up every other test there meanwhile).
    @Test func manyThreadsIssuingIOAtOnceAllVerify() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let disk = try #require(system.disk)
        let group = DispatchGroup()
        let errors = Mutex<[String]>([])
        for worker in 0..<8 {
            group.enter()
            startThread(named: "io-worker-\(worker)") {
                defer { group.leave() }
                do {
                    let io = VerifiedIO(seed: UInt64(worker), regionStart: UInt64(worker) * 2048, regionBlocks: 2048)
                    _ = try io.run(on: disk)
                } catch {
                    // What the layers saw, should a request ever be lost again.
                    let state = "disk \(disk.statistics), \(disk.heldRequests) held; device \(system.testbed.nvme.statistics)"
                    errors.withLock { $0.append("worker \(worker): \(error) (\(state))") }
                }
            }
        }
        #expect(group.wait(timeout: .now() + 120) == .success)
        #expect(errors.withLock { $0 } == [])
        let stats = disk.statistics
        #expect(stats.failed == 0)
        #expect(stats.completed == stats.submitted)
    }

    /// A driver may take fewer completions per interrupt than the CQ holds
    /// if it writes the head doorbell for what it took: the controller
    /// raises the vector again while completions remain (datasheet,
    /// *Interrupts*). A mutant that takes one per interrupt still sees
    /// every request of eight concurrent writers complete.
    @Test func aDriverTakingOneCompletionPerInterruptIsInterruptedAgain() throws {
        let onePerInterrupt = try Fixtures.mutatedReferenceDriver("nvmelite", [(
            "    while (n < NVL_QUEUE_DEPTH && nvl_cq_pop(&d->io, &cqe)) {",
            "    while (n < 1 && nvl_cq_pop(&d->io, &cqe)) { /* the variation: one per interrupt */"
        )])
        let system = try Fixtures.bareSystem(drivers: [onePerInterrupt])
        defer { system.shutdown() }
        let disk = try #require(system.disk)
        let group = DispatchGroup()
        let failures = Mutex<[String]>([])
        for worker in 0..<8 {
            group.enter()
            startThread(named: "writer-\(worker)") {
                defer { group.leave() }
                guard let buffer = disk.allocateBuffer(length: disk.geometry.blockSize) else {
                    failures.withLock { $0.append("writer \(worker): no buffer") }
                    return
                }
                for i in 0..<40 {
                    do {
                        try disk.perform(.write, lba: UInt64(worker * 64 + i), blocks: 1, buffer: buffer, timeout: .seconds(10))
                    } catch {
                        failures.withLock { $0.append("writer \(worker), write \(i): \(error)") }
                        return
                    }
                }
            }
        }
        #expect(group.wait(timeout: .now() + 60) == .success, "requests hung: \(disk.statistics), device \(system.testbed.nvme.statistics)")
        #expect(failures.withLock { $0 } == [])
        #expect(disk.statistics.completed == disk.statistics.submitted)
    }

    /// A driver that answers OY_E_BUSY with nothing outstanding (its
    /// device's own queue full for a moment): the OS tries again by itself,
    /// as CLASSES.md promises; no completion is coming to restart it. In a
    /// driver host, the host's own backlog does the same.
    @Test(arguments: [false, true]) func aBusyAnswerWithNothingOutstandingIsRetried(hosted: Bool) throws {
        let busyAtFirst = try Fixtures.mutatedReferenceDriver("nvmelite", [(
            "    if (d->draining || d->disk == NULL) {",
            "    { static int busy = 3; if (busy > 0) { busy--; d->host->lock_release(d->lock); return OY_E_BUSY; } }\n"
                + "    if (d->draining || d->disk == NULL) {"
        )])
        let system = try Fixtures.bareSystem(drivers: [busyAtFirst], hosted: hosted)
        defer { system.shutdown() }
        let disk = try #require(system.disk)
        let data = [UInt8](repeating: 0x5A, count: disk.geometry.blockSize)
        try disk.write(lba: 3, bytes: data)
        #expect(try disk.read(lba: 3, count: data.count) == data)
        #expect(disk.heldRequests == 0)
    }

    /// A submit may return after its request completed ("possibly before
    /// submit returns"): the OS that shuts down meanwhile keeps the driver's
    /// code mapped until that thread is out of it. It used to unload at
    /// once, and the thread returned into unmapped code (SIGSEGV).
    @Test func aSubmitStillReturningKeepsItsDriverMappedUntilItIsBack() throws {
        let slowToReturn = try Fixtures.mutatedReferenceDriver("nvmelite", [(
            "    nvl_sq_push(d, &d->io, &cmd);\n    d->host->lock_release(d->lock);\n    return OY_OK;",
            "    nvl_sq_push(d, &d->io, &cmd);\n    d->host->lock_release(d->lock);\n"
                + "    { volatile unsigned long spin; for (spin = 0; spin < 400000000ul; spin++) {} } /* long after the completion */\n    return OY_OK;"
        )])
        let system = try Fixtures.bareSystem(drivers: [slowToReturn])
        let disk = try #require(system.disk)
        let buffer = try #require(disk.allocateBuffer(length: disk.geometry.blockSize))
        let completed = DispatchSemaphore(value: 0), returned = DispatchSemaphore(value: 0)
        startThread(named: "slow-submitter") {
            disk.submit(.write, lba: 0, blocks: 1, buffer: buffer) { _ in completed.signal() }
            returned.signal()
        }
        #expect(completed.wait(timeout: .now() + 30) == .success)
        #expect(returned.wait(timeout: .now()) == .timedOut, "the submit is still on its way out of the driver")
        system.shutdown()
        #expect(returned.wait(timeout: .now() + 30) == .success, "and came back to mapped code")
    }

    /// A control call through an instance kept past its detach (an operator's
    /// `driver call` racing `driver unload`) is refused, not made into a
    /// freed instance of an unloaded driver.
    @Test func aControlCallOnADetachedInstanceIsRefused() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let instance = try #require(system.kernel.instance(at: system.testbed.nvmeSlot.address))
        #expect(try instance.callControl("block_size", arguments: []) == "512")
        #expect(system.kernel.unloadDriver(named: "nvmelite") == [system.testbed.nvmeSlot.address.description])
        let error = #expect(throws: ControlCallError.self) { try instance.callControl("block_size", arguments: []) }
        #expect(error?.message == "nvmelite is detached from 00:01.0; call the driver the device has now")
    }

    /// A control call under way when its driver is detached and unloaded:
    /// the detach waits for it to return, so it never runs in a freed
    /// instance (its answer is the block size, not garbage or a crash).
    @Test func aDetachWaitsForAControlCallUnderWay() throws {
        let slow = try Fixtures.mutatedReferenceDriver("nvmelite", [(
            "static const oy_control_method nvl_methods[] = {\n",
            """
            static uint32_t nvl_m_slow_block_size(void *instance) {
                nvl_dev *d = (nvl_dev *)instance;
                volatile unsigned long spin;
                nvl_log(d, OY_LOG_INFO, "slow call under way");
                for (spin = 0; spin < 300000000ul; spin++) {}
                return oy_instance_contains(&nvl_instances, d) ? d->block_size : 0;
            }
            static const oy_control_method nvl_methods[] = {
                {sizeof(oy_control_method), 0, "slow_block_size", "u32()", "The block size, slowly", (oy_control_fn)nvl_m_slow_block_size},

            """
        )])
        let system = try Fixtures.bareSystem(drivers: [slow])
        defer { system.shutdown() }
        let instance = try #require(system.kernel.instance(at: system.testbed.nvmeSlot.address))
        let answer = Mutex<String?>(nil)
        let returned = DispatchSemaphore(value: 0)
        startThread(named: "slow-control") {
            let result = try? instance.callControl("slow_block_size", arguments: [])
            answer.withLock { $0 = result }
            returned.signal()
        }
        let deadline = Date(timeIntervalSinceNow: 30)
        while !system.kernel.log.all.contains(where: { $0.message.contains("slow call under way") }) && Date() < deadline { usleep(1000) }
        #expect(system.kernel.unloadDriver(named: "nvmelite") == [system.testbed.nvmeSlot.address.description])
        #expect(returned.wait(timeout: .now()) == .success, "the call had returned before the detach went on")
        #expect(answer.withLock { $0 } == "512")
    }

    @Test func asyncSubmissionsBeyondTheQueueDepthAreQueuedInSoftware() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let disk = try #require(system.disk)
        let group = DispatchGroup()
        let failures = Atomic<Int>(0)
        let buffers = (0..<100).map { _ in disk.allocateBuffer(length: 4096)! }
        for (i, buffer) in buffers.enumerated() {
            group.enter()
            disk.submit(.write, lba: UInt64(i * 8), blocks: 8, buffer: buffer) { status in
                if !status.isOK { failures.add(1, ordering: .relaxed) }
                group.leave()
            }
        }
        #expect(group.wait(timeout: .now() + 30) == .success)
        #expect(failures.load(ordering: .relaxed) == 0)
        #expect(disk.statistics.completed == 100)
    }
}

@Suite struct DMAIsolationTests {
    /// A driver that hands its device the CPU pointer instead of the device
    /// address: the IOMMU refuses, the request fails, nothing is written.
    @Test func buggyDriverGetsADMAFaultNotASilentWrite() throws {
        let path = try Fixtures.nvmeliteWithDMABug()
        let system = try Fixtures.bareSystem(drivers: [path])
        defer { system.shutdown() }
        let disk = try #require(system.disk)
        let buffer = try #require(disk.allocateBuffer(length: 4096))
        let faultsBefore = system.machine.iommu.faultCount
        let error = #expect(throws: BlockError.self) { try disk.perform(.read, lba: 0, blocks: 8, buffer: buffer) }
        #expect(error?.status == .dmaFault)
        #expect(system.machine.iommu.faultCount > faultsBefore)
        #expect(system.machine.iommu.recentFaults.last?.reason == "page not mapped for this device")
        #expect(system.testbed.nvme.statistics.dmaFaults > 0)
        // The same request through the correct driver works, on a new machine.
        let good = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver()])
        defer { good.shutdown() }
        let goodDisk = try #require(good.disk)
        let goodBuffer = try #require(goodDisk.allocateBuffer(length: 4096))
        try goodDisk.perform(.read, lba: 0, blocks: 8, buffer: goodBuffer)
    }
}

@Suite struct LifecycleTests {
    @Test func detachReleasesEveryTrackedResource() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let slot = system.testbed.nvmeSlot
        let instance = try #require(system.kernel.instance(at: slot.address))
        let held = instance.heldResources
        for kind in ["register window", "DMA buffer", "interrupt hook", "lock", "event", "disk", "memory"] {
            #expect(held.contains { $0.hasPrefix(kind) }, "attach should hold a \(kind): \(held)")
        }
        try system.disk!.write(lba: 0, bytes: [UInt8](repeating: 1, count: 512))
        let report = try #require(system.kernel.detach(slot.address))
        #expect(report.isClean, "\(report)")
        #expect(instance.heldResources.isEmpty)
        #expect(system.machine.iommu.mappedPages(domain: Bus.domain(of: slot.address)) == 0)
        #expect(system.kernel.blockLayer.disks.isEmpty)
        #expect(instance.library.violations.isEmpty, "\(instance.library.violations)")
    }

    /// What a driver registered can outlive its unload: a VM's disk region,
    /// a log line or an error still names the disk's driver. That read the
    /// library through an unowned reference and ended the whole OS.
    @Test func aDiskKeptPastItsDriversUnloadStillNamesItsDriver() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver("nvmelite")])
        defer { system.shutdown() }
        let disk = try #require(system.kernel.blockLayer.disks.first)
        #expect(system.kernel.unloadDriver(named: "nvmelite") == [system.testbed.nvmeSlot.address.description])
        #expect(system.kernel.blockLayer.disks.isEmpty)
        #expect(disk.driver.label == "nvmelite@\(system.testbed.nvmeSlot.address)" && disk.driver.driverName == "nvmelite", "\(disk.driver.label)")
        #expect(throws: BlockError.self, "I/O on it fails; it does not reach the unloaded code") { try disk.read(lba: 0, count: 512) }
    }

    @Test func attachDetachAttachAgainWorks() throws {
        let path = try Fixtures.referenceDriver()
        let system = try Fixtures.bareSystem(drivers: [path])
        defer { system.shutdown() }
        let slot = system.testbed.nvmeSlot
        let freePages = system.machine.pages.freePages
        for round in 0..<3 {
            let data = [UInt8](repeating: UInt8(round + 1), count: 1024)
            try system.kernel.blockLayer.disks.first!.write(lba: 4, bytes: data)
            #expect(system.kernel.detach(slot.address)?.isClean == true)
            #expect(system.machine.pages.freePages > freePages, "DMA pages returned")
            try system.kernel.attach(file: try DriverFile.inspect(path: path), to: slot)
            #expect(try system.kernel.blockLayer.disks.first!.read(lba: 4, count: 1024) == data, "data survives re-attach")
        }
    }

    @Test func leakOnDetachIsReportedAndReclaimed() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.fixtureDriver(defines: ["MUTANT_LEAK_ON_DETACH"])])
        defer { system.shutdown() }
        let slot = system.testbed.nvmeSlot
        let instance = try #require(system.kernel.instance(at: slot.address))
        let report = try #require(system.kernel.detach(slot.address))
        #expect(report.leaked.count == 1 && report.leaked[0].hasPrefix("DMA buffer"), "\(report.leaked)")
        #expect(system.machine.iommu.mappedPages(domain: Bus.domain(of: slot.address)) == 0, "the host reclaimed the mapping")
        #expect(instance.library.violations.contains { $0.contains("left DMA buffer") })
    }

    @Test func failingAttachIsReportedWithErrorTextAndItsLeaksReclaimed() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.fixtureDriver(defines: ["MUTANT_ATTACH_FAILS"])])
        defer { system.shutdown() }
        #expect(system.report.devices.first { $0.deviceID == 1 }?.outcome == "failed")
        let problem = try #require(system.report.problems.first)
        guard case .attachFailed(let device, let error) = problem else { Issue.record("expected .attachFailed, got \(problem)"); return }
        #expect(device == "00:01.0" && error.status == .io, "\(problem)")
        #expect(!error.leaked.isEmpty, "the failure path's leaks are reported: \(problem)")
        #expect(system.machine.iommu.mappedPages(domain: Bus.domain(of: system.testbed.nvmeSlot.address)) == 0)
    }

    @Test func probeThatDeclinesLeavesTheDeviceUnbound() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.fixtureDriver(defines: ["MUTANT_PROBE_FAILS"])])
        defer { system.shutdown() }
        #expect(system.report.devices.first { $0.deviceID == 1 }?.outcome == "probe declined by mutant")
        #expect(system.disk == nil)
    }

    @Test func unloadableDriverFileIsAProblemNotACrash() throws {
        let system = try Fixtures.bareSystem(drivers: ["/nonexistent/driver.so", try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        #expect(system.report.problems.count == 1)
        guard case .unloadable(.fileNotFound(path: "/nonexistent/driver.so"))? = system.report.problems.first else {
            Issue.record("expected the missing file as .unloadable, got \(system.report.problems)")
            return
        }
        #expect(system.report.devices.first { $0.deviceID == 1 }?.outcome == "attached")
    }

    /// Pull the device while I/O is in flight: every request completes (some
    /// with OY_E_DEVICE_GONE), nothing hangs, the host reclaims everything.
    @Test func surpriseRemovalDuringIO() throws {
        let system = try Fixtures.bareSystem(drivers: [try Fixtures.referenceDriver()])
        defer { system.shutdown() }
        let disk = try #require(system.disk)
        let slot = system.testbed.nvmeSlot
        let instance = try #require(system.kernel.instance(at: slot.address))
        let group = DispatchGroup()
        let outcomes = Mutex<[DiskStatus]>([])
        let buffers = (0..<200).map { _ in disk.allocateBuffer(length: 64 << 10)! }
        for (i, buffer) in buffers.enumerated() {
            group.enter()
            disk.submit(.write, lba: UInt64(i * 128), blocks: 128, buffer: buffer) { status in
                outcomes.withLock { $0.append(status) }
                group.leave()
            }
            if i == 20 { system.machine.bus.surpriseRemove(slot) }
        }
        #expect(group.wait(timeout: .now() + 30) == .success, "every request completes after removal")
        let results = outcomes.withLock { $0 }
        #expect(results.count == 200)
        #expect(results.allSatisfy { $0 == .ok || $0 == .deviceGone }, "\(Set(results.map(\.description)))")
        #expect(results.contains(.deviceGone))
        #expect(instance.state == .detached)
        #expect(instance.heldResources.isEmpty)
        #expect(system.kernel.blockLayer.disks.isEmpty)
        // New I/O on the removed disk fails at once.
        #expect(throws: BlockError.self) { try disk.perform(.read, lba: 0, blocks: 1, buffer: buffers[0]) }
    }
}
