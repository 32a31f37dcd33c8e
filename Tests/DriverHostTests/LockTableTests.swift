@testable import DriverHost
import Foundation
import Glibc
import OyakoTestSupport
import Synchronization
import Testing

private final class Marker: Sendable {}

/// The table behind `oy_host.lock_*`: handles, generations, reuse.
@Suite struct LockTableTests {
    let table = LockTable.shared

    @Test func aDestroyedLockIsRefusedAndItsSlotWaitsBeforeReuse() throws {
        let first = try #require(table.create())
        #expect(table.mutex(first) != nil)
        #expect(table.destroy(first) == .destroyed)
        #expect(table.mutex(first) == nil, "a destroyed lock's handle names nothing")
        #expect(table.destroy(first) == .invalid, "destroyed twice")
        // Until `quarantine` other slots are freed after it, no new lock gets its slot.
        var made: [OpaquePointer] = []
        defer { for handle in made { _ = table.destroy(handle) } }
        for _ in 0..<64 {
            let handle = try #require(table.create())
            made.append(handle)
            #expect(UInt(bitPattern: handle) & 0xFFFF_FFFF != UInt(bitPattern: first) & 0xFFFF_FFFF, "a slot reused at once")
        }
    }

    @Test func forgedAndForeignHandlesAreRefused() throws {
        let live = try #require(table.create())
        defer { _ = table.destroy(live) }
        let raw = UInt(bitPattern: live)
        for forged: UInt in [0, 1, raw & 0xFFFF_FFFF, raw ^ (2 << 32), raw + 1 << 32, raw & ~LockTable.tag, (1 << 32) | LockTable.tag | 0x7FFF_FFFF] {
            #expect(table.mutex(OpaquePointer(bitPattern: forged)) == nil, "0x\(String(forged, radix: 16))")
        }
        #expect(table.mutex(nil) == nil)
        // A handle from the other table (a device's, an event's) is not a lock.
        let other = HandleTable.shared.insert(Marker())
        defer { HandleTable.shared.remove(other, as: Marker.self) }
        #expect(table.mutex(other) == nil)
        #expect(HandleTable.shared.lookup(live, as: Marker.self) == nil, "and a lock is nothing in the other table")
    }

    @Test func aLockHeldWhenDestroyedIsRetired() throws {
        let handle = try #require(table.create())
        let mutex = try #require(table.mutex(handle))
        pthread_mutex_lock(mutex)
        #expect(table.destroy(handle) == .held)
        #expect(table.mutex(handle) == nil)
    }

    @Test func threadsExcludeEachOther() throws {
        let handle = try #require(table.create())
        defer { _ = table.destroy(handle) }
        // Guarded by the lock under test only.
        final class Counter: @unchecked Sendable { var value = 0 }
        let counter = Counter(), bits = UInt(bitPattern: handle), table = table
        let threads = 4, rounds = 20_000
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            for _ in 0..<rounds {
                guard let mutex = table.mutex(OpaquePointer(bitPattern: bits)) else { return }
                pthread_mutex_lock(mutex)
                counter.value += 1
                pthread_mutex_unlock(mutex)
            }
        }
        #expect(counter.value == threads * rounds)
    }
}

/// Handles live in tables shared by every driver in the process: one
/// driver's handle is refused when another driver passes it (a guess, or a
/// stale value a new resource reused), so no driver takes another's lock or
/// arms its timer.
@Suite struct ForeignHandleTests {
    @Test func aLockIsTakenOnlyByItsOwnDriver() throws {
        let table = LockTable.shared
        let handle = try #require(table.create(owner: 0xA000))
        defer { _ = table.destroy(handle) }
        #expect(table.mutex(handle, caller: 0xA000) != nil)
        #expect(table.mutex(handle, caller: 0xB000) == nil, "another driver's lock")
        #expect(table.mutex(handle) != nil, "the host itself, in no driver's callback")
    }

    @Test func aResourceIsTheCallingDriversOnly() throws {
        let mine = try DriverLibrary.load(path: try Fixtures.fixtureDriver(), environment: RecordingEnvironment())
        let theirs = try DriverLibrary.load(path: try Fixtures.fixtureDriver(defines: ["MUTANT_SERVICE_MISUSE"]), environment: RecordingEnvironment())
        defer {
            _ = mine.unload()
            _ = theirs.unload()
        }
        let owner = ResourceOwner(label: "a device of mine")
        owner.library = mine
        #expect(mine.callDriver("probe") { HostServices.isCallers(owner) })
        #expect(!theirs.callDriver("probe") { HostServices.isCallers(owner) }, "another driver's callback")
        #expect(HostServices.isCallers(owner), "the host, in no driver's callback")
    }
}
