import Synchronization

/// Hands out runs of contiguous pages from a range of page numbers.
///
/// Used for the machine's free RAM and, under the hypervisor, for each
/// partition's guest-physical space. First fit over a bitmap: simple and
/// predictable, which matters more here than fragmentation behaviour.
public final class PageAllocator: Sendable {
    private struct State {
        var used: [Bool]
        var freeCount: Int
        var searchHint = 0
    }

    public let firstPage: UInt64
    public let pageCount: Int
    private let state: Mutex<State>

    public init(firstPage: UInt64, pageCount: Int) {
        self.firstPage = firstPage
        self.pageCount = pageCount
        state = Mutex(State(used: Array(repeating: false, count: pageCount), freeCount: pageCount))
    }

    public var freePages: Int { state.withLock { $0.freeCount } }

    /// Allocates `count` contiguous pages; returns the first page number, or
    /// nil when no run is long enough.
    public func allocate(_ count: Int) -> UInt64? {
        guard count > 0 else { return nil }
        return state.withLock { s -> UInt64? in
            guard s.freeCount >= count else { return nil }
            // Search from the hint first so that allocations walk the range
            // instead of piling up at its start; then wrap around once.
            guard let start = Self.findRun(count, in: s.used, from: s.searchHint)
                ?? Self.findRun(count, in: s.used, from: 0)
            else { return nil }
            for page in start..<(start + count) { s.used[page] = true }
            s.freeCount -= count
            s.searchHint = (start + count) % pageCount
            return firstPage + UInt64(start)
        }
    }

    private static func findRun(_ count: Int, in used: [Bool], from: Int) -> Int? {
        var start = from
        var index = from
        while index < used.count {
            if used[index] {
                start = index + 1
            } else if index - start + 1 == count {
                return start
            }
            index += 1
        }
        return nil
    }

    /// Returns pages to the pool. Freeing a page that is not allocated is a
    /// programmer error in the host, not driver input.
    public func free(_ first: UInt64, count: Int) {
        state.withLock { s in
            let start = Int(first - firstPage)
            precondition(start >= 0 && start + count <= pageCount, "free outside the allocator's range")
            for page in start..<(start + count) {
                precondition(s.used[page], "double free of page \(first + UInt64(page - start))")
                s.used[page] = false
            }
            s.freeCount += count
        }
    }
}
