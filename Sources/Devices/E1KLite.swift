import Foundation
import Logging
import Machine

/// The `e1klite` network controller: an e1000-shaped NIC.
///
/// Legacy 16-byte TX and RX descriptors in DMA memory, head/tail registers,
/// an interrupt cause register (ICR, cleared on read) behind one MSI vector,
/// a receive-address table for MAC filtering, and link state from the wire.
/// The controller thread transmits descriptors the driver queued and places
/// received frames in the buffers the driver posted; a frame that finds no
/// free descriptor waits in a small FIFO and is dropped when it overflows.
public final class E1KLite: BusDevice, WireEnd, @unchecked Sendable {
    // @unchecked Sendable: all state is guarded by `condition`.
    public static let vendorID: UInt16 = 0x0A7A
    public static let deviceID: UInt16 = 0x0002

    enum Register {
        static let ctrl: UInt64 = 0x0000
        static let status: UInt64 = 0x0008
        static let icr: UInt64 = 0x00C0
        static let ics: UInt64 = 0x00C8
        static let ims: UInt64 = 0x00D0
        static let imc: UInt64 = 0x00D8
        static let rctl: UInt64 = 0x0100
        static let tctl: UInt64 = 0x0400
        static let rdbal: UInt64 = 0x2800
        static let rdbah: UInt64 = 0x2804
        static let rdlen: UInt64 = 0x2808
        static let rdh: UInt64 = 0x2810
        static let rdt: UInt64 = 0x2818
        static let tdbal: UInt64 = 0x3800
        static let tdbah: UInt64 = 0x3804
        static let tdlen: UInt64 = 0x3808
        static let tdh: UInt64 = 0x3810
        static let tdt: UInt64 = 0x3818
        static let ral: UInt64 = 0x5400
        static let rah: UInt64 = 0x5404
    }

    /// Interrupt causes (ICR/IMS bits).
    enum Cause {
        static let txDescriptorWritten: UInt32 = 1 << 0
        static let linkStatusChange: UInt32 = 1 << 2
        static let receiveOverrun: UInt32 = 1 << 6
        static let receiveTimer: UInt32 = 1 << 7
    }

    public static let receiveAddressEntries = 16
    public static let maxFrame = 1514
    static let rxFIFOLimit = 256
    static let bufferSize = 2048

    public let name = "e1klite"
    public let identity = DeviceIdentity(vendorID: E1KLite.vendorID, deviceID: E1KLite.deviceID, classCode: 0x02_00_00)
    public let bars: [BAR] = [.mmio(size: 0x8000)]
    public let interruptCount = 1
    public let mac: [UInt8]

    public struct Statistics: Sendable {
        public var framesSent = 0, framesReceived = 0
        /// Received frames the address filter dropped, and those lost because
        /// the receive FIFO was full.
        public var receiveFiltered = 0, receiveMissed = 0
        /// Descriptors or buffers the device could not reach by DMA, and
        /// transmits longer than a frame or shorter than its header.
        public var dmaFaults = 0, oversizeTransmits = 0
        /// TDT writes that overran the transmit ring: they handed over a
        /// descriptor the transmitter had not taken yet, or brought the tail
        /// round to the head (a ring of N descriptors holds N - 1 frames'
        /// worth; with N it looks empty). Those descriptors are lost.
        public var transmitOverruns = 0
    }

    private let engine = DeviceThread()
    private var condition: NSCondition { engine.condition }
    private var regs: [UInt64: UInt32] = [:]
    private var icr: UInt32 = 0
    private var ims: UInt32 = 0
    private var link = false
    /// The link partner asked for a pause (802.3x): nothing is sent.
    private var paused = false
    private var rxFIFO: [[UInt8]] = []
    private var work = false
    /// The transmitter is walking the ring, with `condition` let go; a
    /// write that stops it (TCTL.EN cleared, a reset) waits until it is done.
    private var transmitting = false
    /// Transmit descriptors fetched when TDT moved past them, by index, as
    /// a fast controller fetches them: a driver that moves the tail before
    /// the descriptor is written has the device see its old contents.
    private var txFetched: [Int: [UInt8]] = [:]
    private var port: DevicePort?
    private var stats = Statistics()
    /// Where transmitted frames go.
    public var wire: (any Wire)? {
        get { condition.withLock { wire_ } }
        set { condition.withLock { wire_ = newValue } }
    }
    private var wire_: (any Wire)?
    private let logger = Logger(label: "oyako.device.e1klite")

    /// - Parameter mac: the burned-in address (RAL0/RAH0 after reset).
    public init(mac: [UInt8]) {
        precondition(mac.count == 6)
        self.mac = mac
        resetLocked()
    }

    public var statistics: Statistics { condition.withLock { stats } }
    public var linkUp: Bool { condition.withLock { link } }

    private func resetLocked() {
        regs = [:]
        regs[Register.ral] = UInt32(mac[0]) | UInt32(mac[1]) << 8 | UInt32(mac[2]) << 16 | UInt32(mac[3]) << 24
        regs[Register.rah] = UInt32(mac[4]) | UInt32(mac[5]) << 8 | 1 << 31
        icr = 0
        ims = 0
        rxFIFO.removeAll()
        txFetched.removeAll()
    }

    // MARK: Power

    public func powerOn(_ port: DevicePort) {
        engine.start(name: "e1klite@\(port.address)", prepare: { self.port = port }) { [self] in controllerLoop() }
    }

    public func powerOff() {
        engine.stop()
    }

    // MARK: Wire side

    public func deliver(_ frame: [UInt8]) {
        condition.withLock {
            guard engine.running else { return }
            if rxFIFO.count >= Self.rxFIFOLimit {
                stats.receiveMissed += 1
                raiseLocked(Cause.receiveOverrun)
                return
            }
            rxFIFO.append(frame)
            work = true
            condition.signal()
        }
    }

    /// The link partner's flow control (802.3x PAUSE frames): while paused
    /// the transmitter sends nothing and frames wait in the ring; when the
    /// pause ends it sends them all.
    public func pauseTransmit(_ pause: Bool) {
        condition.withLock {
            paused = pause
            if !pause {
                work = true
                condition.signal()
            }
        }
    }

    public func setCarrier(_ up: Bool) {
        condition.withLock {
            guard link != up else { return }
            link = up
            raiseLocked(Cause.linkStatusChange)
        }
    }

    // MARK: Registers (CPU thread)

    public func mmioRead(bar: Int, offset: UInt64, width: Int) -> UInt64 {
        condition.withLock {
            switch offset {
            case Register.status: return UInt64(link ? 0x2 : 0)
            case Register.icr:
                // Read-to-clear, as on the real part.
                let value = icr
                icr = 0
                return UInt64(value)
            case Register.ims: return UInt64(ims)
            default: return UInt64(regs[offset] ?? 0)
            }
        }
    }

    public func mmioWrite(bar: Int, offset: UInt64, width: Int, value: UInt64) {
        let v = UInt32(truncatingIfNeeded: value)
        condition.withLock {
            // Stopping an engine is done when the write is: no DMA for it after.
            let stopsTransmit = (offset == Register.ctrl && v & (1 << 26) != 0) || (offset == Register.tctl && v & 2 == 0)
            while stopsTransmit && transmitting { condition.wait() }
            switch offset {
            case Register.ctrl:
                if v & (1 << 26) != 0 { resetLocked() } else { regs[offset] = v }
            case Register.ims:
                ims |= v
                if icr & ims != 0 { port?.raiseInterrupt(0) }
            case Register.imc:
                ims &= ~v
            case Register.icr:
                icr &= ~v
            case Register.ics:
                raiseLocked(v)
            case Register.tdt:
                fetchTransmitLocked(from: Int(regs[Register.tdt] ?? 0), to: Int(v))
                regs[offset] = v
                work = true
                condition.signal()
            case Register.tdbal, Register.tdbah, Register.tdlen:
                txFetched.removeAll()
                regs[offset] = v
            case Register.rdt, Register.rctl, Register.tctl:
                regs[offset] = v
                work = true
                condition.signal()
            default:
                regs[offset] = v
            }
        }
    }

    /// Fetches the transmit descriptors a tail write handed over,
    /// `from` up to `to`, at once (nothing for a tail or ring the
    /// transmitter would ignore).
    private func fetchTransmitLocked(from: Int, to: Int) {
        let base = UInt64(regs[Register.tdbal] ?? 0) | UInt64(regs[Register.tdbah] ?? 0) << 32
        let count = Int(regs[Register.tdlen] ?? 0) / 16
        guard let port, count >= 8, base % 16 == 0, from < count, to < count else { return }
        var index = from, retaken = 0
        while index != to {
            // Still holding a descriptor the transmitter has not taken: overrun.
            if txFetched[index] != nil { retaken += 1 }
            var descriptor = [UInt8](repeating: 0, count: 16)
            let read: Void? = try? descriptor.withUnsafeMutableBytes { try port.dmaRead(base + UInt64(index * 16), into: $0) }
            // Not reachable now: the transmitter tries again (and faults) when it gets there.
            txFetched[index] = read == nil ? nil : descriptor
            index = (index + 1) % count
        }
        if retaken > 0 || (from != to && txFetched.count >= count) {
            stats.transmitOverruns += 1
            logger.error("e1klite: TDT write to \(to) overran the transmit ring (\(count) descriptors, \(txFetched.count) not yet taken, \(retaken) handed over again); they are lost")
        }
    }

    private func raiseLocked(_ cause: UInt32) {
        icr |= cause
        if ims & cause != 0 { port?.raiseInterrupt(0) }
    }

    // MARK: Controller thread

    /// Runs on the device's thread, entered and left with `condition` held.
    private func controllerLoop() {
        while engine.running {
            while engine.running && !work { condition.wait() }
            guard engine.running, let port else { break }
            work = false
            let transmitEnabled = (regs[Register.tctl] ?? 0) & 2 != 0 && !paused
            let tx = Ring(base: UInt64(regs[Register.tdbal] ?? 0) | UInt64(regs[Register.tdbah] ?? 0) << 32,
                          count: Int(regs[Register.tdlen] ?? 0) / 16, head: Int(regs[Register.tdh] ?? 0), tail: Int(regs[Register.tdt] ?? 0))
            let wire = wire_
            if transmitEnabled, tx.valid {
                transmitting = true
                condition.unlock()
                transmit(tx, port: port, wire: wire)
                condition.lock()
                transmitting = false
                condition.broadcast()
            }
            // Read again: the receiver may have been stopped meanwhile.
            if (regs[Register.rctl] ?? 0) & 2 != 0 { receiveLocked(port: port) }
        }
    }

    private struct Ring {
        let base: UInt64
        let count: Int
        var head: Int
        let tail: Int
        var valid: Bool { count >= 8 && head < count && tail < count && base % 16 == 0 }
    }

    /// Sends descriptors head..tail; a frame is the buffers up to EOP.
    private func transmit(_ ring: Ring, port: DevicePort, wire: (any Wire)?) {
        var head = ring.head
        var frame: [UInt8] = []
        var wroteBack = false
        while head != ring.tail {
            let address = ring.base + UInt64(head * 16)
            var descriptor = [UInt8](repeating: 0, count: 16)
            do {
                if let early = condition.withLock({ txFetched.removeValue(forKey: head) }) {
                    descriptor = early
                } else {
                    try descriptor.withUnsafeMutableBytes { try port.dmaRead(address, into: $0) }
                }
                let (buffer, length, command) = descriptor.withUnsafeBytes {
                    ($0.load(as: UInt64.self), Int($0.load(fromByteOffset: 8, as: UInt16.self)), $0[11])
                }
                if length > 0 {
                    var chunk = [UInt8](repeating: 0, count: length)
                    try chunk.withUnsafeMutableBytes { try port.dmaRead(buffer, into: $0) }
                    frame += chunk
                }
                if command & 0x1 != 0 {  // EOP
                    if frame.count > Self.maxFrame || frame.count < 14 {
                        condition.withLock { stats.oversizeTransmits += 1 }
                    } else {
                        condition.withLock { stats.framesSent += 1 }
                        wire?.send(frame, from: self)
                    }
                    frame = []
                }
                if command & 0x8 != 0 {  // RS: report status
                    descriptor[12] |= 0x1  // DD
                    try descriptor.withUnsafeBytes { try port.dmaWrite(address + 12, from: UnsafeRawBufferPointer(rebasing: $0[12..<13])) }
                    wroteBack = true
                }
            } catch {
                condition.withLock { stats.dmaFaults += 1 }
                frame = []
            }
            head = (head + 1) % ring.count
        }
        condition.withLock {
            regs[Register.tdh] = UInt32(head)
            if wroteBack { raiseLocked(Cause.txDescriptorWritten) }
        }
    }

    /// Places FIFO frames into posted receive buffers (RDH..RDT).
    private func receiveLocked(port: DevicePort) {
        let base = UInt64(regs[Register.rdbal] ?? 0) | UInt64(regs[Register.rdbah] ?? 0) << 32
        let count = Int(regs[Register.rdlen] ?? 0) / 16
        guard count >= 8, base % 16 == 0 else { return }
        var head = Int(regs[Register.rdh] ?? 0)
        let tail = Int(regs[Register.rdt] ?? 0)
        guard head < count, tail < count else { return }
        var delivered = false
        while !rxFIFO.isEmpty {
            let frame = rxFIFO.removeFirst()
            guard accepts(frame) else {
                stats.receiveFiltered += 1
                continue
            }
            // The ring is full when head reaches tail (tail is the first
            // descriptor the driver has not posted).
            guard head != tail else {
                rxFIFO.insert(frame, at: 0)
                break
            }
            let address = base + UInt64(head * 16)
            var descriptor = [UInt8](repeating: 0, count: 16)
            do {
                try descriptor.withUnsafeMutableBytes { try port.dmaRead(address, into: $0) }
                let buffer = descriptor.withUnsafeBytes { $0.load(as: UInt64.self) }
                let length = min(frame.count, Self.bufferSize)
                try frame.withUnsafeBytes { try port.dmaWrite(buffer, from: UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
                descriptor.withUnsafeMutableBytes {
                    $0.storeBytes(of: UInt16(length), toByteOffset: 8, as: UInt16.self)
                    $0[12] = 0x3  // DD | EOP
                    $0[13] = 0
                }
                try descriptor.withUnsafeBytes { try port.dmaWrite(address, from: $0) }
                stats.framesReceived += 1
            } catch {
                stats.dmaFaults += 1
            }
            delivered = true
            head = (head + 1) % count
        }
        regs[Register.rdh] = UInt32(head)
        if delivered { raiseLocked(Cause.receiveTimer) }
    }

    /// The receive filter: broadcast if BAM, any unicast if UPE, multicast
    /// if MPE, otherwise a valid receive-address entry must match.
    private func accepts(_ frame: [UInt8]) -> Bool {
        guard frame.count >= 14 else { return false }
        let rctl = regs[Register.rctl] ?? 0
        let destination = Array(frame[0..<6])
        if destination == [UInt8](repeating: 0xFF, count: 6) { return rctl & (1 << 15) != 0 }
        if destination[0] & 1 != 0 { return rctl & (1 << 4) != 0 }
        if rctl & (1 << 3) != 0 { return true }
        for entry in 0..<Self.receiveAddressEntries {
            let low = regs[Register.ral + UInt64(entry * 8)] ?? 0
            let high = regs[Register.rah + UInt64(entry * 8)] ?? 0
            guard high & (1 << 31) != 0 else { continue }
            let address = [UInt8(low & 0xFF), UInt8(low >> 8 & 0xFF), UInt8(low >> 16 & 0xFF), UInt8(low >> 24), UInt8(high & 0xFF), UInt8(high >> 8 & 0xFF)]
            if address == destination { return true }
        }
        return false
    }
}

