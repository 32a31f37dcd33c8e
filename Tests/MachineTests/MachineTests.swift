import Devices
import Foundation
import Machine
import OyakoTestSupport
import Synchronization
import Testing

@Suite struct PageAllocatorTests {
    @Test func allocatesContiguousRunsAndReusesFreedPages() {
        let pages = PageAllocator(firstPage: 10, pageCount: 8)
        let a = pages.allocate(3)
        let b = pages.allocate(3)
        #expect(a == 10)
        #expect(b == 13)
        #expect(pages.allocate(3) == nil, "only 2 pages left")
        pages.free(10, count: 3)
        #expect(pages.freePages == 5)
        #expect(pages.allocate(3) == 10, "wraps around to the freed run")
        #expect(pages.allocate(0) == nil)
    }
}

@Suite struct PhysicalMemoryTests {
    @Test func boundsAreChecked() throws {
        let memory = try PhysicalMemory(size: 64 << 10)
        #expect(memory.size == 64 << 10)
        #expect(memory.pointer(0, length: 64 << 10) != nil)
        #expect(memory.pointer(1, length: 64 << 10) == nil)
        #expect(memory.pointer(UInt64.max, length: 2) == nil)
        let p = memory.pointer(4096)!
        #expect(memory.address(of: p) == 4096)
        #expect(memory.address(of: UnsafeRawPointer(bitPattern: 16)!) == nil)
    }
}

@Suite struct IOMMUTests {
    @Test func onlyMappedPagesAreReachableAndFaultsAreCounted() throws {
        let memory = try PhysicalMemory(size: 1 << 20)
        let iommu = IOMMU(memory: memory)
        // Device address 0x10000 -> machine 0x3000, two pages, not identity.
        iommu.map(domain: 1, deviceAddress: 0x10000, machineAddress: 0x3000, length: 8192)
        let pieces = try iommu.translate(domain: 1, deviceName: "t", deviceAddress: 0x10010, length: 100, write: true)
        #expect(pieces.count == 1)
        #expect(pieces[0].baseAddress == memory.base + 0x3010)
        // Crossing into an unmapped third page faults; so does another domain.
        #expect(throws: DMAFault.self) { try iommu.translate(domain: 1, deviceName: "t", deviceAddress: 0x11F00, length: 512, write: false) }
        #expect(throws: DMAFault.self) { try iommu.translate(domain: 2, deviceName: "t", deviceAddress: 0x10000, length: 8, write: false) }
        #expect(iommu.faultCount == 2)
        iommu.unmap(domain: 1, deviceAddress: 0x10000, length: 8192)
        #expect(iommu.mappedPages(domain: 1) == 0)
    }

    @Test func readOnlyMappingsRefuseDeviceWrites() throws {
        let memory = try PhysicalMemory(size: 1 << 20)
        let iommu = IOMMU(memory: memory)
        iommu.map(domain: 1, deviceAddress: 0x4000, machineAddress: 0x4000, length: 4096, writable: false)
        _ = try iommu.translate(domain: 1, deviceName: "t", deviceAddress: 0x4000, length: 16, write: false)
        #expect(throws: DMAFault.self) { try iommu.translate(domain: 1, deviceName: "t", deviceAddress: 0x4000, length: 16, write: true) }
    }

    @Test func sharedPagesStayMappedUntilTheLastUnmap() throws {
        let memory = try PhysicalMemory(size: 1 << 20)
        let iommu = IOMMU(memory: memory)
        iommu.map(domain: 1, deviceAddress: 0x4000, machineAddress: 0x4000, length: 512)
        iommu.map(domain: 1, deviceAddress: 0x4200, machineAddress: 0x4200, length: 512)
        iommu.unmap(domain: 1, deviceAddress: 0x4000, length: 512)
        _ = try iommu.translate(domain: 1, deviceName: "t", deviceAddress: 0x4200, length: 512, write: true)
        iommu.unmap(domain: 1, deviceAddress: 0x4200, length: 512)
        #expect(iommu.mappedPages(domain: 1) == 0)
    }
}

@Suite struct InterruptControllerTests {
    @Test func maskedVectorsStayPendingUntilUnmasked() throws {
        let controller = InterruptController(name: "test-irq")
        defer { controller.shutdown() }
        let vector = controller.allocate(count: 1).lowerBound
        let delivered = Atomic<Int>(0)
        let semaphore = DispatchSemaphore(value: 0)
        controller.setHandler(vector) {
            delivered.add(1, ordering: .relaxed)
            semaphore.signal()
        }
        controller.mask(vector)
        controller.raise(vector)
        #expect(semaphore.wait(timeout: .now() + 0.2) == .timedOut, "masked: not delivered")
        controller.unmask(vector)
        #expect(semaphore.wait(timeout: .now() + 5) == .success, "delivered on unmask")
        #expect(delivered.load(ordering: .relaxed) == 1)
    }

    @Test func raisesWithoutHandlerAreCountedAsSpurious() {
        let controller = InterruptController(name: "test-irq")
        defer { controller.shutdown() }
        let vector = controller.allocate(count: 1).lowerBound
        controller.raise(vector)
        #expect(controller.statistics.spurious == 1)
    }

    @Test func removingAHandlerWaitsForItToFinish() {
        let controller = InterruptController(name: "test-irq")
        defer { controller.shutdown() }
        let vector = controller.allocate(count: 1).lowerBound
        let running = DispatchSemaphore(value: 0)
        let finished = Atomic<Bool>(false)
        controller.setHandler(vector) {
            running.signal()
            Thread.sleep(forTimeInterval: 0.2)
            finished.store(true, ordering: .releasing)
        }
        controller.raise(vector)
        running.wait()
        controller.setHandler(vector, nil)
        let done = finished.load(ordering: .acquiring)
        #expect(done, "setHandler(nil) returned while the handler ran")
    }
}

@Suite struct DiskImageTests {
    @Test func createsAMissingImageAtTheRequestedSizeForItsOwnerAlone() throws {
        let dir = Fixtures.temporaryDirectory()
        let image = try DiskImage(path: dir + "/d.img", size: 1 << 20)
        #expect(image.size == 1 << 20)
        let attributes = try FileManager.default.attributesOfItem(atPath: dir + "/d.img")
        #expect((attributes[.size] as? NSNumber)?.intValue == 1 << 20)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600, "a machine's disk is not for other users to read")
    }

    @Test func refusesAnImageThatIsTooSmall() throws {
        let dir = Fixtures.temporaryDirectory()
        #expect(FileManager.default.createFile(atPath: dir + "/small.img", contents: Data(count: 4096)))
        let error = #expect(throws: DiskImageError.self) { try DiskImage(path: dir + "/small.img", size: 1 << 20) }
        #expect(error == .tooSmall(path: dir + "/small.img", size: 4096, required: 1 << 20))
    }

    @Test func reportsAFolderThatDoesNotExist() throws {
        let error = #expect(throws: DiskImageError.self) { try DiskImage(path: "/nonexistent-oyako-dir/d.img", size: 4096) }
        #expect(error == .cannotOpen(path: "/nonexistent-oyako-dir/d.img", .noSuchFileOrDirectory))
    }

    @Test func anImageInUseIsRefusedUntilItsHolderCloses() throws {
        let dir = Fixtures.temporaryDirectory()
        var first: DiskImage? = try DiskImage(path: dir + "/d.img", size: 8192)
        let error = #expect(throws: DiskImageError.self) { try DiskImage(path: dir + "/d.img", size: 8192) }
        #expect(error == .inUse(path: dir + "/d.img"))
        #expect(error?.description.contains("two writers would corrupt it") == true)
        withExtendedLifetime(first) {}
        first = nil
        let second = try DiskImage(path: dir + "/d.img", size: 8192)
        #expect(second.size == 8192, "opened once the first holder closed it")
    }

    @Test func writesReachTheFileAndFlushSucceeds() throws {
        let dir = Fixtures.temporaryDirectory()
        let image = try DiskImage(path: dir + "/d.img", size: 8192)
        var bytes = [UInt8](repeating: 0xAB, count: 512)
        try bytes.withUnsafeMutableBytes { try image.write(from: [$0], at: 1024) }
        try image.flush()
        let onDisk = try Data(contentsOf: URL(fileURLWithPath: dir + "/d.img"))
        #expect(onDisk[1024] == 0xAB && onDisk[1535] == 0xAB && onDisk[1023] == 0 && onDisk[1536] == 0)
    }
}

@Suite struct GuestMemoryTests {
    @Test func accessesAreBoundsChecked() {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: 3 * PhysicalMemory.pageSize, alignment: 4096)
        defer { raw.deallocate() }
        let memory = GuestMemory(base: raw, size: 3 * PhysicalMemory.pageSize)
        #expect(memory.pointer(at: GuestAddress(0), count: 3 * 4096) == raw)
        #expect(memory.pointer(at: GuestAddress(4096), count: 8) == raw + 4096)
        #expect(memory.pointer(at: GuestAddress(3 * 4096 - 8), count: 9) == nil, "one byte past the end")
        #expect(memory.pointer(at: GuestAddress(3 * 4096), count: 1) == nil)
        #expect(memory.pointer(at: GuestAddress(UInt64.max - 2), count: 8) == nil, "wraps")
        #expect(memory.pointer(at: GuestAddress(0), count: 0) == nil)
        #expect(memory.write([1, 2, 3], at: GuestAddress(10)) && memory.read(at: GuestAddress(10), count: 3) == [1, 2, 3])
        #expect(!memory.write([1, 2], at: GuestAddress(3 * 4096 - 1)), "nothing written past the end")
        #expect(GuestAddress.page(2) == GuestAddress(8192) && GuestAddress(8195).pageNumber == 2 && GuestAddress(8195).pageOffset == 3)
        #expect(GuestAddress(UInt64.max).adding(1) == nil)
    }

    @Test func aWindowSeesOnlyItsPart() throws {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: 4 * 4096, alignment: 4096)
        defer { raw.deallocate() }
        let memory = GuestMemory(base: raw, size: 4 * 4096)
        let window = try #require(memory.window(at: GuestAddress(4096), count: 2 * 4096))
        #expect(window.pointer(at: GuestAddress(4096), count: 1) == raw + 4096)
        #expect(window.pointer(at: GuestAddress(0), count: 1) == nil, "below the window")
        #expect(window.pointer(at: GuestAddress(3 * 4096), count: 1) == nil, "above the window")
        #expect(memory.window(at: GuestAddress(3 * 4096), count: 2 * 4096) == nil)
    }
}

/// What a device does that goes nowhere is counted per device, and the
/// write-echo fault injection raises its vectors after each CPU write.
@Suite struct DeviceActivityTests {
    @Test func unhandledInterruptsAndRefusedDMAAreCountedPerDevice() throws {
        let machine = try Machine(configuration: .init(memorySize: 4 << 20))
        defer { machine.shutdown() }
        let nic = E1KLite(mac: [2, 0, 0, 0, 0, 1])
        let slot = machine.bus.plug(nic)
        let quiet = machine.bus.plug(E1KLite(mac: [2, 0, 0, 0, 0, 2]))
        slot.interruptAfterEveryWrite(true)
        slot.mmioWrite(bar: 0, offset: 0x00D8, width: 4, value: 0)  // IMC: no cause of its own
        #expect(slot.unhandledInterrupts == 1, "no handler hooked: the echoed interrupt went nowhere")

        let handled = DispatchSemaphore(value: 0)
        machine.interrupts.setHandler(slot.vectors.lowerBound) { handled.signal() }
        slot.mmioWrite(bar: 0, offset: 0x00D8, width: 4, value: 0)
        #expect(handled.wait(timeout: .now() + 5) == .success, "hooked: the echo reaches the handler")
        #expect(slot.unhandledInterrupts == 1)
        machine.interrupts.setHandler(slot.vectors.lowerBound, nil)

        // A transmit ring at a device address nothing mapped: the device
        // fetches its descriptor when TDT moves, and the IOMMU refuses.
        slot.interruptAfterEveryWrite(false)
        for (offset, value) in [(0x3800, 0x10000), (0x3804, 0), (0x3808, 8 * 16), (0x3810, 0), (0x0400, 2), (0x3818, 1)] {
            slot.mmioWrite(bar: 0, offset: UInt64(offset), width: 4, value: UInt64(value))
        }
        #expect(slot.dmaFaults >= 1, "the descriptor fetch at the TDT write faulted")
        #expect(quiet.dmaFaults == 0 && quiet.unhandledInterrupts == 0, "counted for the device that did it only")
    }
}
