import Devices
@_spi(Conformance) import DriverHost
import Foundation
import Kernel
import Synchronization

/// Checks of the block class, "oyako.block/1".
extension Catalogue {
    static let blockChecks: [CheckDefinition] = [
        CheckDefinition("io.block.patterns", "write/read/verify every size and alignment", requires: ["io.basic"], classes: block, timeout: 60, hostable: true) { c in
            try withDriver(c) { rig in
                guard let disk = rig.kernel.blockLayer.disks.first else { return .failed("no disk registered") }
                let g = disk.geometry
                var digest: UInt64 = 0
                // Around one, two and three 4 KiB pages too: where a driver
                // switches how it describes the pages (NVMe's PRP2 is a page
                // for exactly two, a list for more) off-by-ones hide.
                let page = max(1, 4096 / g.blockSize)
                let sizes = Array(Set([1, 2, 3, 7, 8, 9, page, 2 * page, 2 * page + 1, 3 * page, g.maxTransferBlocks / 2, g.maxTransferBlocks]
                    .filter { $0 >= 1 && $0 <= g.maxTransferBlocks })).sorted()
                for blocks in sizes {
                    for offset in [0, 8, 512, 4000] {
                        let length = blocks * g.blockSize
                        guard let out = disk.allocateBuffer(length: length, offset: offset), let back = disk.allocateBuffer(length: length, offset: offset) else {
                            return .failed("out of I/O memory")
                        }
                        let lba = UInt64(blocks * 13 + offset / 8) % (g.blockCount - UInt64(blocks))
                        for i in 0..<length { out.bytes[i] = UInt8(truncatingIfNeeded: i &* 7 &+ blocks &+ offset) }
                        do {
                            try disk.perform(.write, lba: lba, blocks: blocks, buffer: out)
                            try disk.perform(.read, lba: lba, blocks: blocks, buffer: back)
                        } catch {
                            return .failed("\(blocks) block(s) at buffer offset \(offset): \(error)")
                        }
                        guard out.bytes.elementsEqual(back.bytes) else { return .failed("\(blocks) block(s) at buffer offset \(offset): data read back differs") }
                        digest = digest &* 131 &+ UInt64(back.bytes.reduce(0) { $0 &+ UInt64($1) })
                    }
                }
                var observation = rig.deviceObservation()
                observation["io.digest"] = "\(digest)"
                return .passed("\(sizes.count) sizes × 4 alignments", observation: observation)
            }
        },
        CheckDefinition("lifecycle.restart", "restarted as the OS restarts a hung driver: detach bounded, attach anew, accepted writes re-issued and verified",
                        requires: ["io.basic"], classes: block, timeout: 25) { c in
            let rig = try Rig(c)
            defer { rig.shutdown() }
            _ = try rig.attach()
            return try Catalogue.restartHungDriver(rig)
        },
        CheckDefinition("io.block.geometry", "the disk is the device's whole namespace, each block where the device keeps it", requires: ["io.basic"], classes: block, hostable: true) { c in
            // Past 2 TiB: the last LBA needs more than 32 bits (CDW11 holds
            // the high half), which no smaller disk shows.
            try withDriver(c, disk: Rig.DiskShape(size: (1 << 41) + (1 << 20))) { rig in
                guard let disk = rig.kernel.blockLayer.disks.first, let device = rig.nvmes.first else { return .failed("no disk registered") }
                let g = disk.geometry
                guard g.blockSize == device.blockSize, g.blockCount == device.blockCount else {
                    return .failed("registered \(g.blockCount) blocks of \(g.blockSize) bytes; the device holds \(device.blockCount) of \(device.blockSize) "
                        + "(Identify Namespace: NSZE counts blocks, it is not the last LBA; the LBA format gives their size)")
                }
                // The first block, the last (no other check reaches the end)
                // and one between: each must land where the device keeps that
                // LBA, which reading back through the driver cannot tell.
                for lba in [0, g.blockCount / 2 + 3, g.blockCount - 1] {
                    let bytes = (0..<g.blockSize).map { UInt8(truncatingIfNeeded: $0 &* 5 &+ Int(lba % 251) &+ 1) }
                    do {
                        try disk.write(lba: lba, bytes: bytes)
                        guard try disk.read(lba: lba, count: bytes.count) == bytes else { return .failed("LBA \(lba) read back differs from what was written") }
                    } catch {
                        return .failed("LBA \(lba) of \(g.blockCount): \(error)")
                    }
                    var stored = [UInt8](repeating: 0, count: g.blockSize)
                    try stored.withUnsafeMutableBytes { try device.disk.read(into: [$0], at: lba * UInt64(g.blockSize)) }
                    guard stored == bytes else {
                        let wide = lba >> 32 != 0 ? ": this LBA needs more than 32 bits (NVMe: its high half in CDW11)" : " (the command's SLBA or the transfer's offset is off)"
                        return .failed("what was written to LBA \(lba) is not in the device's block \(lba)\(wide)")
                    }
                }
                return .passed("\(g.blockCount) blocks of \(g.blockSize) bytes, the first, the last and one between where the device keeps them",
                               observation: rig.deviceObservation())
            }
        },
        CheckDefinition("io.block.flush", "flush completes", requires: ["io.basic"], classes: block, hostable: true) { c in
            try withDriver(c) { rig in
                guard let disk = rig.kernel.blockLayer.disks.first else { return .failed("no disk registered") }
                guard disk.geometry.canFlush else { return .passed("the device has no volatile cache") }
                try disk.write(lba: 0, bytes: [UInt8](repeating: 5, count: disk.geometry.blockSize))
                do { try disk.flush() } catch { return .failed("flush: \(error)") }
                return .passed(observation: rig.deviceObservation())
            }
        },
        CheckDefinition("io.block.out-of-range", "out-of-range LBA and oversize requests refused with OY_E_RANGE by the driver (the device does not check)",
                        requires: ["io.basic"], classes: block, hostable: true) { c in
            try withDriver(c) { rig in
                guard let disk = rig.kernel.blockLayer.disks.first, let buffer = disk.allocateBuffer(length: 4 * disk.geometry.blockSize) else {
                    return .failed("no disk registered")
                }
                // The driver validates, not the device: this controller performs what it is given.
                for nvme in rig.nvmes { nvme.checksLBARange = false }
                defer { for nvme in rig.nvmes { nvme.checksLBARange = true } }
                var statuses: [OyStatus] = []
                for lba in [disk.geometry.blockCount, disk.geometry.blockCount - 1, UInt64.max] {
                    let status = submitDirect(disk, .read, lba: lba, blocks: 2, data: buffer.pointer)
                    let reachedDevice = rig.nvmes.reduce(0) { $0 + $1.statistics.uncheckedOutOfRange }
                    guard !status.isOK, reachedDevice == 0 else {
                        return .failed("a read of 2 blocks at LBA \(lba) of \(disk.geometry.blockCount) "
                            + (reachedDevice > 0 ? "reached the device, which (like some hardware) does not check and read other blocks" : "succeeded")
                            + "; check the range in the driver and answer OY_E_RANGE without touching the device")
                    }
                    guard status == .range else {
                        return .failed("a read of 2 blocks at LBA \(lba) of \(disk.geometry.blockCount) answered \(status); an LBA range past the end is OY_E_RANGE (SDK/CLASSES.md)")
                    }
                    statuses.append(status)
                }
                if let oversize = refusesOversize(disk, rig) { return .failed(oversize) }
                return .passed(observation: Observation(["statuses": Observation.statuses(statuses + [.range])]))
            }
        },
        CheckDefinition("io.block.accounting", "every accepted request completes: 2000 reads and writes in flight at the driver's depth, the first with the device stalled, none lost",
                        requires: ["io.basic"], classes: block, timeout: 60, hostable: true) { c in
            try withDriver(c) { rig in
                guard let disk = rig.kernel.blockLayer.disks.first else { return .failed("no disk registered") }
                // The device takes nothing until the driver's queue is full:
                // a driver that lets its submission queue overrun shows it.
                let nvme = rig.nvmes.first
                let overrunsBefore = nvme?.statistics.submissionOverruns ?? 0
                let accounting = accountRequests(disk, total: accountingRequests, deadline: 10) { nvme?.holdCommands($0) }
                let overruns = (nvme?.statistics.submissionOverruns ?? 0) - overrunsBefore
                let overran = overruns == 0 ? "" : "; the device saw the submission queue overrun \(overruns) time(s): a doorbell handed over slots "
                    + "whose commands it had not taken yet, or brought the tail round to the head, and those commands were lost. "
                    + "A queue of N entries holds at most N - 1 commands: keep fewer outstanding, or answer OY_E_BUSY (SDK/datasheets/nvmelite.md)"
                guard accounting.lost == 0 else {
                    return .failed("\(accounting.lost) of \(accountingRequests) requests never completed within 10 s of the last one's submission: "
                        + "the driver accepted \(accounting.heldByDriver) it never completed"
                        + (accounting.lost > accounting.heldByDriver ? ", and the rest waited behind them" : "") + "; "
                        + "every accepted request must be completed exactly once, with an error if the device failed it" + overran)
                }
                guard accounting.failed == 0 else { return .failed("\(accounting.failed) of \(accountingRequests) in-range requests completed with an error" + overran) }
                guard overruns == 0 else { return .failed("every request completed, but" + overran.dropFirst(1)) }
                return .passed("\(accountingRequests) requests, each completed once")
            }
        },
        CheckDefinition("io.block.busy", "a full queue answers OY_E_BUSY: queue_depth requests held in the controller are accepted, \(pastDepth) more are refused busy, the held ones complete when it goes on",
                        requires: ["io.basic"], classes: block, timeout: 30) { c in
            // In process only: a driver host keeps what its driver refused
            // busy and submits it again itself, so the OS never sees busy.
            try withDriver(c) { rig in
                guard let disk = rig.kernel.blockLayer.disks.first, let nvme = rig.nvmes.first else { return .failed("no disk registered") }
                if let problem = answersBusyWhenFull(disk, nvme) { return .failed(problem) }
                return .passed("\(disk.geometry.queueDepth) accepted while the controller held them, \(pastDepth) more answered OY_E_BUSY, all completed, and the next was taken")
            }
        },
        CheckDefinition("io.block.from-complete", "the OS submits waiting requests from inside complete(), as its queue does: every one completes and reads back",
                        requires: ["io.basic"], classes: block, timeout: 25) { c in
            try withDriver(c) { rig in
                guard let disk = rig.kernel.blockLayer.disks.first, let nvme = rig.nvmes.first else { return .failed("no disk registered") }
                switch submitsFromInsideComplete(disk, controller: nvme, deadlocked: { c.sawLockTakenTwice }) {
                case .failure(let problem): return c.decided(.failed(problem.text))
                case .success(let count): return .passed("\(count) writes and \(count) reads, \(count - max(1, disk.geometry.queueDepth)) of each waiting past the driver's depth: all completed, read back as written")
                }
            }
        },
        CheckDefinition("io.block.durability", "writes acknowledged before a completed flush survive a power cut", requires: ["io.block.flush"], classes: block, hostable: true) { c in
            try withDriver(c, disk: Rig.DiskShape(writeCache: true)) { rig in
                guard let disk = rig.kernel.blockLayer.disks.first, let nvme = rig.nvmes.first else { return .failed("no disk registered") }
                let g = disk.geometry
                guard g.canFlush else {
                    return .failed("the device has a volatile write cache, but the disk was registered without OY_BLOCK_CAN_FLUSH: its writes are lost at a power cut; register it flushable and send the device's FLUSH")
                }
                let blocks = min(64, g.maxTransferBlocks), length = blocks * g.blockSize
                let flushed = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
                let later = [UInt8](repeating: 0x5A, count: length)
                do {
                    try disk.write(lba: 0, bytes: flushed)
                    if let early = flushWaitsForDevice(disk, nvme) { return .failed(early) }
                    try disk.write(lba: UInt64(2 * blocks), bytes: later)
                } catch {
                    return .failed("\(error)")
                }
                // Power lost; the rebooted machine finds what is on the medium.
                let lost = nvme.powerCut()
                guard let medium = FileHandle(forReadingAtPath: rig.state + "/disk0.img")?.readData(ofLength: length) else { return .failed("cannot read the disk image") }
                guard [UInt8](medium) == flushed else {
                    let differ = zip([UInt8](medium), flushed).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? 0
                    return .failed("\(blocks) blocks written and then flushed (the flush completed OK) were not on the medium after a power cut "
                        + "(first difference at byte \(differ)): the driver acknowledged a flush the device never did; send FLUSH and complete on its completion")
                }
                return .passed("\(blocks) flushed blocks survived; \(lost) unflushed block\(lost == 1 ? "" : "s") lost, as a power cut loses them")
            }
        },
        CheckDefinition("io.block.zero-length", "zero-length request rejected", requires: ["io.basic"], classes: block, hostable: true) { c in
            try withDisk(c) { disk, buffer in
                let status = submitDirect(disk, .read, lba: 0, blocks: 0, data: buffer.pointer)
                return status == .invalid ? .passed(observation: Observation(["status": Observation.statuses([status])])) : .failed("a zero-block read returned \(status); answer OY_E_INVALID")
            }
        },
    ]

    static let accountingRequests = 2000

    static let pastDepth = 4

    /// Submits straight to the driver, past the OS's queue, while the
    /// controller holds its commands: queue_depth reads, which it must
    /// accept, then `pastDepth` more, which it must refuse with OY_E_BUSY
    /// (block.h); then the controller goes on, every accepted read must
    /// complete OK, and one more must be accepted (busy is for now, not for
    /// good). Nil when all that held, else what did not.
    static func answersBusyWhenFull(_ disk: Disk, _ nvme: NVMeLite) -> String? {
        let g = disk.geometry, depth = max(1, g.queueDepth), total = depth + pastDepth
        guard let buffer = disk.allocateBuffer(length: g.blockSize * (total + 1)) else { return "cannot allocate \(total + 1) blocks of I/O memory" }
        let completions = Mutex<[OyStatus]>([])
        let overrunsBefore = nvme.statistics.submissionOverruns
        var requests: [BlockRequest] = [], answers: [OyStatus] = []
        func submit(_ n: Int) -> OyStatus {
            let request = BlockRequest()
            request.prepare(.read, lba: UInt64(n) % g.blockCount, blockCount: 1, data: buffer.pointer + n * g.blockSize) { status in
                completions.withLock { $0.append(status) }
            }
            let status = disk.driver.submit(request)
            if status.isOK { requests.append(request) }  // the driver's until it completes
            return status
        }
        nvme.holdCommands(true)
        for n in 0..<total { answers.append(submit(n)) }
        nvme.holdCommands(false)
        let accepted = requests.count
        let deadline = Date(timeIntervalSinceNow: 10)
        while completions.withLock({ $0.count }) < accepted && Date() < deadline { usleep(1000) }
        let done = completions.withLock { $0 }
        let overruns = nvme.statistics.submissionOverruns - overrunsBefore
        let lost = (done.count < accepted ? "; \(accepted - done.count) of the \(accepted) accepted never completed" : "")
            + (overruns > 0 ? "; the device saw its submission queue overrun \(overruns) time(s), and those commands were lost" : "")
        if let n = answers.prefix(depth).firstIndex(where: { !$0.isOK }) {
            return "request \(n + 1) was answered \(answers[n]), with \(n) outstanding, fewer than the queue_depth of \(depth) the driver registered: "
                + "register as queue_depth the number of requests it takes at once (block.h)" + lost
        }
        if let k = answers.dropFirst(depth).firstIndex(where: { $0 != .busy }) {
            return "with queue_depth (\(depth)) requests outstanding, one more was " + (answers[k].isOK ? "accepted" : "answered \(answers[k])") + "; "
                + "answer OY_E_BUSY when queue_depth requests are outstanding (block.h); the OS submits it again when one completes" + lost
        }
        guard done.count >= accepted, overruns == 0 else { return "every request past the depth was refused busy, but" + lost.dropFirst(1) }
        if let failed = done.first(where: { !$0.isOK }) {
            return "a read held in the controller completed \(failed) when it went on: a full queue is no error"
        }
        let next = submitDirect(disk, .read, lba: 0, blocks: 1, data: buffer.pointer + total * g.blockSize)
        guard next.isOK else { return "all \(accepted) held reads completed, but the next was answered \(next): OY_E_BUSY is for while the queue is full" }
        return withExtendedLifetime(requests) { nil }
    }

    /// Flushes with the controller holding its commands, so that its FLUSH
    /// cannot have completed, for 0.3 s; then lets it go. A flush the driver
    /// completes OK meanwhile was acknowledged before the device made
    /// anything durable: a power cut in that window loses acknowledged
    /// writes. Nil when the flush waited for the device and then completed
    /// OK, else what went wrong.
    static func flushWaitsForDevice(_ disk: Disk, _ nvme: NVMeLite) -> String? {
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<DiskStatus?>(nil)
        nvme.holdCommands(true)
        let flushesBefore = nvme.statistics.flushes
        disk.submit(.flush, lba: 0, blocks: 0, buffer: nil) { status in
            result.withLock { $0 = status }
            done.signal()
        }
        let completedWhileHeld = done.wait(timeout: .now() + 0.3) == .success
        nvme.holdCommands(false)
        if completedWhileHeld, let status = result.withLock({ $0 }) {
            guard status.isOK else { return "a flush failed: \(status)" }
            return "a flush completed OK while the controller was holding its commands, before it could have executed a FLUSH: "
                + "the driver acknowledged durability the device had not given, and a power cut then loses acknowledged writes; "
                + "complete a flush only when the device's FLUSH completes (SDK/CLASSES.md)"
        }
        guard done.wait(timeout: .now() + 10) == .success, let status = result.withLock({ $0 }) else {
            return "a flush did not complete within 10 s of the controller taking it"
        }
        guard status.isOK else { return "a flush failed: \(status)" }
        guard nvme.statistics.flushes > flushesBefore else {
            return "a flush completed OK, but no FLUSH reached the device: send the device's FLUSH and complete on its completion"
        }
        return nil
    }

    /// Submits `total` reads and writes of 1 to 8 blocks with as many in
    /// flight as the driver takes at once, then waits up to `deadline`
    /// seconds for the last completions: what never came back is lost.
    /// A read one block longer than the driver's own max_transfer_blocks,
    /// in range: nil when it is refused with OY_E_RANGE before the device
    /// sees it, else what went wrong.
    static func refusesOversize(_ disk: Disk, _ rig: Rig) -> String? {
        let g = disk.geometry, over = g.maxTransferBlocks + 1
        guard UInt64(over) <= g.blockCount, let buffer = disk.allocateBuffer(length: over * g.blockSize) else { return nil }
        let commands = { rig.nvmes.reduce(0) { $0 + $1.statistics.commands } }
        let before = commands()
        let status = submitDirect(disk, .read, lba: 0, blocks: over, data: buffer.pointer)
        let sent = commands() - before
        guard status != .range || sent > 0 else { return nil }
        return "a read of \(over) blocks, one more than the max_transfer_blocks of \(g.maxTransferBlocks) the driver registered, "
            + (status.isOK ? "succeeded" : "answered \(status)") + (sent > 0 ? " after reaching the device" : "")
            + "; refuse it with OY_E_RANGE before the device sees it (SDK/CLASSES.md)"
    }

    /// Writes, then reads back, more single blocks than the driver's queue
    /// depth, all submitted at once through the OS's queue while the
    /// controller holds its commands: the first `depth` reach the driver
    /// from the submitting thread, the rest wait in the queue, and once the
    /// controller goes on each completion hands the next to the driver from
    /// inside complete(), on the thread that completes. (Submitted while the
    /// controller completes, a thread still handing requests on would take
    /// those too, and the driver might never be called from complete().)
    /// Returns how many of each, or what went wrong.
    static func submitsFromInsideComplete(_ disk: Disk, controller: NVMeLite, deadlocked: () -> Bool) -> Result<Int, ReentryProblem> {
        let g = disk.geometry, depth = max(1, g.queueDepth)
        let count = Int(min(UInt64(max(5 * depth, 64)), 512, g.blockCount))
        guard let buffer = disk.allocateBuffer(length: count * g.blockSize) else { return .failure(ReentryProblem("cannot allocate \(count) blocks of I/O memory")) }
        let pattern = { (block: Int, byte: Int) in UInt8(truncatingIfNeeded: block &* 131 &+ byte &* 7 &+ 1) }
        for block in 0..<count {
            for byte in 0..<g.blockSize { buffer.pointer.storeBytes(of: pattern(block, byte), toByteOffset: block * g.blockSize + byte, as: UInt8.self) }
        }
        for operation in [DiskOperation.write, .read] {
            if operation == .read { buffer.pointer.initializeMemory(as: UInt8.self, repeating: 0, count: count * g.blockSize) }
            let tally = Tally()
            // All submitted before any completes: the ones past the depth
            // can only go on from inside complete(). On a thread of its
            // own: a submit into a driver deadlocked on itself never
            // returns, and this one waits with a bound.
            controller.holdCommands(true)
            let submitted = DispatchSemaphore(value: 0)
            Thread.detachNewThread {
                for block in 0..<count {
                    disk.submit(operation, lba: UInt64(block), blocks: 1, buffer: buffer, bufferOffset: block * g.blockSize) { status in
                        if tally.count(status) == count { tally.all.signal() }
                    }
                }
                submitted.signal()
            }
            // Bounded: a submit that waits for the controller must not hold it forever.
            _ = submitted.wait(timeout: .now() + 5)
            controller.holdCommands(false)
            _ = tally.all.wait(timeout: .now() + 10)
            let (completed, failed) = tally.counts.withLock { ($0.completed, $0.failed) }
            guard completed == count else {
                let missing = "\(count - completed) of \(count) \(operation)s never completed (\(count) submitted at once, the driver's depth is \(depth)). "
                guard deadlocked() else {
                    return .failure(ReentryProblem(missing + "The driver holds requests it never completes, and the ones waiting behind them go to it only "
                        + "as requests complete; complete every accepted request exactly once (SDK/CLASSES.md)"))
                }
                return .failure(ReentryProblem(missing + "The OS hands a waiting request to the driver from inside complete(), on the thread that completes: "
                    + "a driver that calls complete() holding a lock its submit takes deadlocks there. Release your locks before complete() (SDK/CLASSES.md)"))
            }
            guard failed == 0 else { return .failure(ReentryProblem("\(failed) of \(count) in-range \(operation)s completed with an error")) }
        }
        for block in 0..<count {
            for byte in 0..<g.blockSize where buffer.pointer.load(fromByteOffset: block * g.blockSize + byte, as: UInt8.self) != pattern(block, byte) {
                return .failure(ReentryProblem("block \(block) read back different from what was written (first at byte \(byte))"))
            }
        }
        return .success(count)
    }

    /// Completions counted as they come, from any thread.
    final class Tally: Sendable {
        let counts = Mutex((completed: 0, failed: 0))
        let all = DispatchSemaphore(value: 0)
        /// Counts one; how many have completed.
        func count(_ status: DiskStatus) -> Int {
            counts.withLock { c -> Int in
                c.completed += 1
                if !status.isOK { c.failed += 1 }
                return c.completed
            }
        }
    }

    struct ReentryProblem: Error {
        let text: String
        init(_ text: String) { self.text = text }
    }

    /// `stall(true)` stops the device taking commands until the first
    /// `depth` requests are in (then `stall(false)`), so the driver's queue
    /// fills. Not for a driver that keeps one request at a time (no queue
    /// to overrun), nor for long: a driver whose first submit has not
    /// returned after 5 ms waits in it for its device (it polls), and the
    /// device runs again for it at once.
    static func accountRequests(_ disk: Disk, total: Int, deadline: Double,
                                stall: @escaping @Sendable (Bool) -> Void = { _ in }) -> (lost: Int, heldByDriver: Int, failed: Int) {
        let g = disk.geometry
        let depth = max(1, g.queueDepth)
        let stalled = Mutex(depth > 1)
        let release: @Sendable () -> Void = { if stalled.withLock({ s in defer { s = false }; return s }) { stall(false) } }
        let firstReturned = Atomic<Bool>(false)
        if depth > 1 {
            stall(true)
            DispatchQueue.global().asyncAfter(deadline: .now() + 0.005) { if !firstReturned.load(ordering: .acquiring) { release() } }
            DispatchQueue.global().asyncAfter(deadline: .now() + 0.5, execute: release)
        }
        defer { release() }
        let slots = DispatchSemaphore(value: depth)
        let counts = Mutex((completed: 0, failed: 0))
        let finished = DispatchSemaphore(value: 0)
        let buffers = (0..<depth).compactMap { _ in disk.allocateBuffer(length: min(8, g.maxTransferBlocks) * g.blockSize) }
        guard buffers.count == depth else { return (total, 0, 0) }
        let free = Mutex(Array(0..<depth))
        var submitted = 0
        var random = SystemRandomNumberGenerator()
        let endOfWaiting = { DispatchTime.now() + deadline }
        for i in 0..<total {
            // A slot frees when a completion arrives; one that never does is a lost request.
            guard slots.wait(timeout: endOfWaiting()) == .success else { break }
            let index = free.withLock { $0.removeLast() }
            let blocks = Int.random(in: 1...min(8, g.maxTransferBlocks), using: &random)
            let lba = UInt64.random(in: 0...(g.blockCount - UInt64(blocks)), using: &random)
            submitted += 1
            disk.submit(i % 3 == 0 ? .write : .read, lba: lba, blocks: blocks, buffer: buffers[index]) { status in
                let done = counts.withLock { c -> Int in
                    c.completed += 1
                    if !status.isOK { c.failed += 1 }
                    return c.completed
                }
                free.withLock { $0.append(index) }
                slots.signal()
                if done == total { finished.signal() }
            }
            firstReturned.store(true, ordering: .releasing)
            if submitted == depth, depth > 1 {
                // The driver (in a driver host, too) has rung for all of them.
                Thread.sleep(forTimeInterval: 0.02)
                release()
                // They complete as one burst before the steady load begins
                // (a burst under load would keep one handler run reaping).
                let waitUntil = Date(timeIntervalSinceNow: deadline)
                while counts.withLock({ $0.completed }) < depth && Date() < waitUntil { usleep(1000) }
            }
        }
        if submitted == total { _ = finished.wait(timeout: endOfWaiting()) }
        let (completed, failed) = counts.withLock { ($0.completed, $0.failed) }
        let lost = total - completed
        return (lost, min(lost, depth, submitted - completed), failed)
    }

    /// The device's interrupts vanish under four writes (the driver hears of
    /// none of their completions), then the OS restarts the driver as its
    /// supervisor does a hung one: detach, device restarted, attach, the
    /// writes re-issued. They must all complete and read back.
    static func restartHungDriver(_ rig: Rig) throws -> CheckOutcome {
        guard let disk = rig.kernel.blockLayer.disks.first else { return .failed("no disk registered") }
        let slot = rig.slots[0], g = disk.geometry
        let blocks = min(8, g.maxTransferBlocks), pending = Pending(), failures = Mutex<[String]>([])
        var written: [(lba: UInt64, buffer: IOBuffer)] = []
        slot.loseInterrupts(true)
        for i in 0..<4 {
            guard let buffer = disk.allocateBuffer(length: blocks * g.blockSize) else { break }
            for j in 0..<buffer.length { buffer.bytes[j] = UInt8(truncatingIfNeeded: j &* 5 &+ i &* 31 &+ 1) }
            let lba = UInt64(i * blocks * 2) % (g.blockCount - UInt64(blocks))
            written.append((lba, buffer))
            pending.start()
            disk.submit(.write, lba: lba, blocks: blocks, buffer: buffer) { status in
                if !status.isOK { failures.withLock { $0.append("the write at LBA \(lba) failed: \(status)") } }
                pending.finish()
            }
        }
        usleep(200_000)  // the device has done them; the driver has not heard
        slot.loseInterrupts(false)
        guard let event = rig.kernel.supervisor.recover(slot.address, cause: "the conformance suite made its interrupts vanish") else {
            return .failed("there was nothing to restart: no driver bound, or no disk")
        }
        guard case .restarted(_, let reissued) = event.outcome else {
            return .failed("the driver could not be attached again after its detach (\(event)); reset the controller in attach and keep no state in globals")
        }
        guard pending.waitAll(timeout: 10) else {
            return .failed("\(pending.outstanding) write(s) never completed after the restart")
        }
        if let first = failures.withLock({ $0.first }) { return .failed(first + "; callers must see the restart as latency, not errors") }
        for (lba, buffer) in written {
            guard let back = disk.allocateBuffer(length: buffer.length) else { return .failed("out of I/O memory") }
            do {
                try disk.perform(.read, lba: lba, blocks: blocks, buffer: back)
            } catch {
                return .failed("reading back after the restart: \(error)")
            }
            guard back.bytes.elementsEqual(buffer.bytes) else { return .failed("LBA \(lba) reads back other data after the restart") }
        }
        return .passed(String(format: "restarted %.1f s after the decision, %d request(s) re-issued, all read back", event.duration.seconds, reissued))
    }
}
