@_spi(Conformance) import DriverHost
import Foundation
import Kernel
import Machine
import OyakoTestSupport
import Testing

/// A driver that leaks memory runs itself dry, not the OS: its mem_alloc
/// blocks and its device's DMA buffers each have a limit, past which it
/// gets NULL or OY_E_NOMEM, and the OS says so once.
@Suite struct DriverMemoryLimitTests {
    static let hoarder = Result { try Fixtures.fixtureDriver(defines: ["MUTANT_HOARDS_MEMORY"]) }

    @Test func aRefusalIsReportedOnceUntilTheDriverIsWellUnderItsLimitAgain() {
        let budget = MemoryBudget(limit: 100)
        #expect(budget.take(60) == .taken)
        #expect(budget.take(50) == .refused(held: 60, report: true))
        #expect(budget.take(50) == .refused(held: 60, report: false), "a driver retrying in a loop is not reported per try")
        budget.give(5)
        #expect(budget.take(50) == .refused(held: 55, report: false), "still over half its limit")
        budget.give(10)
        #expect(budget.take(40) == .taken)
        #expect(budget.take(40) == .refused(held: 85, report: true), "it came down to half and filled up again")
        #expect(budget.take(15) == .taken, "exactly the limit fits")
        #expect(MemoryBudget.describe(60 << 20 | 64) == "60 MiB" && MemoryBudget.describe(3 << 29) == "1.5 GiB" && MemoryBudget.describe(100) == "100 bytes")
    }

    @Test func memAllocBlocksPastTheDriversLimitAreRefusedAndGivenBackAtUnload() throws {
        let system = try Fixtures.bareSystem(drivers: [try Self.hoarder.get()])
        defer { system.shutdown() }
        let address = system.testbed.nvmeSlot.address
        let library = try #require(system.kernel.instance(at: address)).library
        library.memory.limit = 64 << 20
        let held = library.memory.held, mark = ViolationLog.mark
        #expect(held > 0, "its context and device state count too")

        // At most 32 blocks of 4 MiB, 128 MiB: NULL comes first.
        let blocks = try #require(Int(try system.kernel.controlAnswer(at: address, method: "hoard", arguments: ["4", "32"])))
        #expect(blocks == (64 << 20 - held) / (4 << 20), "blocks of 4 MiB up to the limit, then NULL")
        #expect(library.memory.held == held + blocks * (4 << 20))
        #expect(try system.kernel.controlAnswer(at: address, method: "hoard", arguments: ["4", "32"]) == "0", "still at its limit")
        let warnings = ViolationLog.since(mark).filter { $0.driver == library.name && $0.message.hasPrefix("mem_alloc of") }
        #expect(warnings.count == 1, "said once, not per refusal: \(warnings)")
        #expect(warnings.first?.severity == .warning)
        #expect(warnings.first?.message.contains("may hold 64 MiB") == true, "\(warnings)")

        #expect(system.kernel.unloadDriver(named: library.name) == [address.description])
        #expect(library.memory.held == 0, "the leaked blocks were reclaimed and counted back")
    }

    @Test(arguments: [false, true])
    func dmaBuffersPastHalfTheOSMemoryAreRefusedAndTheOSKeepsTheRest(hosted: Bool) throws {
        let system = try Fixtures.bareSystem(drivers: [try Self.hoarder.get()], hosted: hosted)
        defer { system.shutdown() }
        let address = system.testbed.nvmeSlot.address
        let pages = system.kernel.platform.memory.pages
        let half = pages.pageCount * PhysicalMemory.pageSize / 2
        let freeBefore = pages.freePages
        #expect(freeBefore * PhysicalMemory.pageSize > half, "the test needs more than half the OS's memory free")

        // At most 128 buffers of 1 MiB: twice the OS's memory.
        let blocks = try #require(Int(try system.kernel.controlAnswer(at: address, method: "hoard_dma", arguments: ["1024", "128"])))
        #expect(blocks > 0 && blocks * (1 << 20) <= half, "\(blocks) MiB of DMA buffers; the limit is \(half >> 20) MiB")
        #expect(freeBefore - pages.freePages <= half / PhysicalMemory.pageSize, "the OS kept the rest of its memory")
        let other = try #require(system.kernel.platform.memory.allocate(bytes: 8 << 20), "the OS can still allocate")
        system.kernel.platform.memory.free(physical: other.physical, pages: other.pages)
        #expect(try system.kernel.controlAnswer(at: address, method: "hoard_dma", arguments: ["1024", "128"]) == "0", "still at its limit")
        let warnings = system.kernel.log.all.filter { $0.level == .warning && $0.message.contains("dma_alloc of") }
        #expect(warnings.count == 1, "said once, naming the device: \(warnings.map(\.message))")
        #expect(warnings.first?.message.hasPrefix(address.description) == true)

        #expect(system.kernel.unloadDriver(named: "mutant") == [address.description])
        #expect(pages.freePages >= freeBefore, "every buffer came back when the driver went")
    }
}
