import Foundation
import Kernel
import Synchronization

/// Writers of 4 KiB blocks that keep a disk busy while a benchmark does
/// something to its driver; each stays in its own 2 MiB.
final class BackgroundWriters: @unchecked Sendable {
    // @unchecked Sendable: the atomics are the shared state; `group` is waited on once.
    private let stop = Atomic<Bool>(false)
    private let failed = Atomic<Int>(0)
    private let group = DispatchGroup()

    init(_ count: Int, on disk: Disk) {
        for worker in 0..<count {
            DispatchQueue.global().async(group: group) { [self] in
                let block = [UInt8](repeating: UInt8(worker + 1), count: 4096)
                var lba = UInt64(worker) * 4096
                while !stop.load(ordering: .relaxed) {
                    do { try disk.write(lba: lba, bytes: block) } catch { failed.add(1, ordering: .relaxed) }
                    lba = UInt64(worker) * 4096 + (lba + 8) % 4096
                }
            }
        }
    }

    /// Stops them and waits; how many writes failed.
    @discardableResult
    func finish() -> Int {
        stop.store(true, ordering: .relaxed)
        group.wait()
        return failed.load(ordering: .relaxed)
    }
}
