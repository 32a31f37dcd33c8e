@testable import DriverHost
import Foundation
import Glibc
import Testing

/// The host reads tables and strings a driver hands it without trusting
/// them: memory that is not mapped is an answer, never a SIGSEGV.
@Suite struct DriverMemoryTests {
    /// Two pages: the first readable, the second not mapped for reading.
    final class Pages {
        let base: UnsafeMutableRawPointer
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        init() throws {
            let p = mmap(nil, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            guard let p, p != MAP_FAILED else { throw POSIXError(.ENOMEM) }
            base = p
            #expect(mprotect(base + page, page, PROT_NONE) == 0)
        }
        deinit { munmap(base, 2 * page) }
        /// `text` written so that its last byte is the first page's last.
        func atEndOfFirstPage(_ text: [UInt8]) -> UnsafePointer<CChar> {
            let start = base + page - text.count
            start.copyMemory(from: text, byteCount: text.count)
            return UnsafePointer(start.assumingMemoryBound(to: CChar.self))
        }
    }

    @Test func aStringThatEndsBeforeAnUnreadablePageIsRead() throws {
        let pages = try Pages()
        #expect(DriverMemory.string(pages.atEndOfFirstPage(Array("random32".utf8) + [0])) == .string("random32"))
    }

    @Test func aStringThatRunsIntoAnUnreadablePageIsAnAnswer() throws {
        let pages = try Pages()
        #expect(DriverMemory.string(pages.atEndOfFirstPage(Array("no NUL".utf8))) == .unreadable)
        #expect(DriverMemory.string(UnsafePointer(bitPattern: 0x1)) == .unreadable)
        #expect(DriverMemory.string(nil) == .null)
    }

    @Test func aStringWithoutNULWithinTheLimitIsUnterminated() throws {
        let pages = try Pages()
        #expect(DriverMemory.string(pages.atEndOfFirstPage([UInt8](repeating: 0x41, count: 100) + [0]), limit: 10) == .unterminated(prefix: "AAAAAAAAAA"))
    }

    @Test func aStructOverAnUnreadablePageIsNotLoaded() throws {
        let pages = try Pages()
        pages.base.storeBytes(of: UInt64(0x1122_3344_5566_7788), toByteOffset: pages.page - 8, as: UInt64.self)
        #expect(DriverMemory.load(pages.base + pages.page - 8, as: UInt64.self) == 0x1122_3344_5566_7788)
        #expect(DriverMemory.load(pages.base + pages.page - 4, as: UInt64.self) == nil, "half of it is on the unreadable page")
        #expect(DriverMemory.load(UnsafeRawPointer(bitPattern: 0x10), as: UInt32.self) == nil)
    }
}
