import DriverHost
import Foundation
import Machine
import Synchronization

// The class objects of drivers that run in driver hosts, as the Kernel's
// subsystems see them: each call is a message over the host's line, and
// what the driver reports arrives as messages the IsolatedDriver routes.
// (A disk's binding is the IsolatedDriver itself.)

/// An entropy source whose driver runs in a driver host: each read is a
/// call over the host's line, the bytes in the reply.
final class HostedEntropySource: EntropyDriverBinding, HostedBinding, Sendable {
    let origin: HostedOrigin
    private let line: HostLine

    init(_ origin: HostedOrigin, line: HostLine) {
        self.origin = origin
        self.line = line
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, OyStatus> {
        var body = WireWriter()
        body.u32(UInt32(clamping: buffer.count))
        do {
            var reply = try line.call(.rngRead, body).0
            let status = OyStatus(try reply.i32())
            guard status.isOK else { return .failure(status) }
            return .success(try reply.data(into: buffer))
        } catch is HostLine.Closed {
            return .failure(.deviceGone)
        } catch {
            // A reply that does not parse, or more bytes than asked.
            return .failure(.io)
        }
    }
}

/// A serial port whose driver runs in a driver host: output and line
/// settings are calls over the host's line; what the driver reports
/// (input, room, overruns) arrives as messages the IsolatedDriver routes to
/// the OS's port.
final class HostedSerialPort: SerialDriverBinding, HostedBinding, Sendable {
    let origin: HostedOrigin
    private let channel: HostLine
    private let settings: Mutex<SerialLine>

    init(_ origin: HostedOrigin, line: HostLine, settings: SerialLine) {
        self.origin = origin
        self.channel = line
        self.settings = Mutex(settings)
    }

    var line: SerialLine { settings.withLock { $0 } }

    func write(_ bytes: UnsafeRawBufferPointer) -> Result<Int, OyStatus> {
        var body = WireWriter()
        body.data(UnsafeRawBufferPointer(rebasing: bytes.prefix(HostMessage.maxSize - 64)))
        do {
            var reply = try channel.call(.serialWrite, body).0
            let status = OyStatus(try reply.i32())
            guard status.isOK else { return .failure(status) }
            let written = Int(try reply.u32())
            return written <= bytes.count ? .success(written) : .failure(.io)
        } catch is HostLine.Closed {
            return .failure(.deviceGone)
        } catch {
            return .failure(.io)
        }
    }

    func setLine(_ line: SerialLine) -> OyStatus {
        var body = WireWriter()
        body.serialLine(line)
        guard var reply = try? channel.call(.serialSetLine, body).0 else { return .deviceGone }
        let status = OyStatus((try? reply.i32()) ?? OyStatus.io.rawValue)
        if status.isOK { settings.withLock { $0 = line } }
        return status
    }
}

/// A network interface whose driver runs in a driver host. Frames to send
/// are copied into OS memory the host shares, one slot per frame the driver
/// may hold (its queue depth), mapped for the device once: the driver may
/// copy or dma_map them as in process. Completions, received frames and
/// link changes arrive as messages.
final class HostedNetdev: NetDriverBinding, HostedBinding, @unchecked Sendable {
    // @unchecked Sendable: `state` is guarded by its Mutex; the rest is fixed.
    let origin: HostedOrigin
    let mac: [UInt8]
    let maxFrame: Int
    let queueDepth: Int
    private let line: HostLine
    private let link: Atomic<Bool>
    private let platform: any Platform
    private let slot: BusSlot
    /// The frames' OS memory, `slotSize` bytes per frame, and where the device sees it.
    private let region: (physical: UInt64, pages: Int)
    private let deviceAddress: UInt64
    private let slotSize: Int

    private struct State {
        var free: [Int]
        var inFlight: [UInt64: (frame: NetFrame, slot: Int)] = [:]
        /// Apart from the disk's tags (the host keeps both in one table).
        var nextTag: UInt64 = 1 << 63
        /// Machine-memory runs of the region the host has not mapped yet (sent with the next frame).
        var unsharedRuns: [(offset: UInt64, length: Int)]
        var closed = false
    }
    private let state: Mutex<State>

    /// - Parameter share: the region's machine-memory runs the host has not mapped yet.
    init?(_ origin: HostedOrigin, line: HostLine, platform: any Platform, slot: BusSlot, mac: [UInt8], maxFrame: Int, queueDepth: Int, linkUp: Bool,
          share: (_ physical: UInt64, _ length: Int) -> [(offset: UInt64, length: Int)]) {
        let slotSize = (maxFrame + 63) / 64 * 64
        guard let region = platform.memory.allocate(bytes: slotSize * queueDepth) else { return nil }
        self.origin = origin
        self.line = line
        self.mac = mac
        self.maxFrame = maxFrame
        self.queueDepth = queueDepth
        self.link = Atomic(linkUp)
        self.platform = platform
        self.slot = slot
        self.region = region
        self.slotSize = slotSize
        deviceAddress = platform.mapForDevice(slot, physical: region.physical, length: slotSize * queueDepth, writable: false)
        state = Mutex(State(free: Array((0..<queueDepth).reversed()), unsharedRuns: share(region.physical, slotSize * queueDepth)))
    }

    var linkUp: Bool { link.load(ordering: .acquiring) }
    func setLink(_ up: Bool) { link.store(up, ordering: .releasing) }

    /// Frames are claimed and posted one at a time: the first carries the
    /// region's runs, and a frame that overtook it would find its slot
    /// unmapped in the host and be lost.
    private let postOrder = Mutex(())

    func transmit(_ frame: NetFrame) -> OyStatus {
        let length = frame.length
        guard length >= 14, length <= maxFrame else { return .invalid }
        return postOrder.withLock { _ in post(frame, length: length) }
    }

    private func post(_ frame: NetFrame, length: Int) -> OyStatus {
        guard let claimed = state.withLock({ s -> (tag: UInt64, slot: Int, runs: [(offset: UInt64, length: Int)])? in
            guard !s.closed, let slot = s.free.popLast() else { return nil }
            defer {
                s.nextTag += 1
                s.unsharedRuns = []
            }
            s.inFlight[s.nextTag] = (frame, slot)
            return (s.nextTag, slot, s.unsharedRuns)
        }) else { return state.withLock { $0.closed } ? .deviceGone : .busy }
        let offset = UInt64(claimed.slot * slotSize)
        guard let target = platform.memory.pointer(region.physical + offset) else { return .noMemory }
        target.copyMemory(from: frame.storage, byteCount: length)
        var body = WireWriter()
        body.u64(claimed.tag); body.u64(region.physical + offset); body.u32(UInt32(length))
        body.u64(region.physical); body.runs(claimed.runs)
        body.u64(deviceAddress + offset)
        // Posted: the host reports a refusal as a completion.
        guard line.post(.netTransmit, body) else {
            _ = take(claimed.tag)
            return .deviceGone
        }
        return .ok
    }

    private func take(_ tag: UInt64) -> NetFrame? {
        state.withLock { s in
            guard let flight = s.inFlight.removeValue(forKey: tag) else { return nil }
            s.free.append(flight.slot)
            return flight.frame
        }
    }

    /// The host completed a frame.
    func completed(tag: UInt64, status: OyStatus) { take(tag)?.finishUnsubmitted(status) }

    func statistics() -> NetStatistics? {
        guard var reply = try? line.call(.netStatistics).0, (try? reply.i32()) == 0 else { return nil }
        var counters: [UInt64] = []
        for _ in NetStatistics.fields {
            guard let value = try? reply.u64() else { return nil }
            counters.append(value)
        }
        return NetStatistics(counters: counters)
    }

    func setFilter(_ macs: [[UInt8]], broadcast: Bool, promiscuous: Bool) -> OyStatus {
        var body = WireWriter()
        let flat = macs.flatMap { $0.prefix(6) }
        body.u32(UInt32(macs.count))
        flat.withUnsafeBytes { body.data($0) }
        body.u32((broadcast ? 1 : 0) | (promiscuous ? 2 : 0))
        guard var reply = try? line.call(.netSetFilter, body).0 else { return .deviceGone }
        return OyStatus((try? reply.i32()) ?? OyStatus.io.rawValue)
    }

    /// The host is gone or the driver unregistered: frames still out are
    /// canceled, and the frames' memory goes back to the OS.
    func close() {
        guard let frames = state.withLock({ s -> [NetFrame]? in
            guard !s.closed else { return nil }
            s.closed = true
            defer { s.inFlight.removeAll() }
            return s.inFlight.values.map(\.frame)
        }) else { return }
        for frame in frames { frame.finishUnsubmitted(.canceled) }
        platform.unmapForDevice(slot, deviceAddress: deviceAddress, length: slotSize * queueDepth)
        platform.memory.free(physical: region.physical, pages: region.pages)
    }
}
