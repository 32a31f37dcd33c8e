import Foundation
import Machine

/// The far end of a serial line: a terminal, a log file, another program.
public protocol SerialBackend: AnyObject, Sendable {
    /// Bytes the UART put on the line, in order.
    func received(_ bytes: [UInt8])
}

/// A 16550A UART with port I/O registers, 16-byte FIFOs and interrupt
/// identification. The transmitter sends at the configured baud rate and
/// character format (10 bit times per byte with 8N1, and only the word
/// length's bits of each byte), on the device's own thread; bytes from the line
/// that find the receive FIFO full are lost and flagged as overrun, as on
/// the real part.
///
/// Ports: 0 RBR/THR (DLL when DLAB), 1 IER (DLM when DLAB), 2 IIR/FCR,
/// 3 LCR, 4 MCR, 5 LSR, 6 MSR, 7 SCR. MCR bit 5 enables auto flow control
/// (as on the 16750 and most 16550-compatible parts): with RTS set, the far
/// end is held off while the receive FIFO is nearly full.
public final class UART16550: BusDevice, @unchecked Sendable {
    // @unchecked Sendable: all state is guarded by `condition`.
    public static let vendorID: UInt16 = 0x0A7A
    public static let deviceID: UInt16 = 0x0003
    public static let clock = 1_843_200
    static let fifoSize = 16

    public let name = "uart16550"
    public let identity = DeviceIdentity(vendorID: UART16550.vendorID, deviceID: UART16550.deviceID, classCode: 0x07_00_02)
    public let bars: [BAR] = [.ports(count: 8)]
    public let interruptCount = 1

    public struct Statistics: Sendable {
        public var transmitted = 0, received = 0
        /// Bytes lost because the receive FIFO was full.
        public var overruns = 0
        /// LSR reads that reported OE to the driver (each clears it): the
        /// overrun indications a driver saw and must report.
        public var overrunIndications = 0
        /// Bytes written to THR while the transmit FIFO held 16: lost, as
        /// on the chip (a driver that does not wait for THRE, or fills the
        /// FIFO from two threads at once).
        public var transmitDropped = 0
    }

    private let engine = DeviceThread()
    private var condition: NSCondition { engine.condition }
    private var rxFIFO: [UInt8] = []
    private var txFIFO: [UInt8] = []
    private var ier: UInt8 = 0
    private var lcr: UInt8 = 0x03
    private var mcr: UInt8 = 0
    private var scr: UInt8 = 0
    private var divisor: UInt16 = 1
    private var overrun = false
    private var thrEmptyPending = false
    private var port: DevicePort?
    private var stats = Statistics()
    private weak var backend: (any SerialBackend)?
    private var lineBacklog: [UInt8] = []
    private var farEndIgnoresFlowControl = false

    /// A far end that keeps sending when RTS drops (to provoke overruns).
    public func ignoreFlowControl(_ on: Bool) { condition.withLock { farEndIgnoresFlowControl = on } }

    public init() {}

    /// Connects the far end of the line.
    public func connect(_ backend: any SerialBackend) {
        condition.withLock { self.backend = backend }
    }

    public var statistics: Statistics { condition.withLock { stats } }

    /// Baud rate from the divisor latch.
    public var baud: Int { condition.withLock { Self.clock / 16 / max(1, Int(divisor)) } }
    /// The divisor latch as DLL and DLM hold it.
    public var divisorLatch: UInt16 { condition.withLock { divisor } }

    /// The character format LCR sets: bits 0–1 word length − 5, bit 2 stop
    /// bits, bits 3–5 parity (enable, even, stick).
    public struct Framing: Sendable, Equatable, CustomStringConvertible {
        public enum Parity: Sendable, Equatable { case none, odd, even, mark, space }
        public let dataBits: Int
        public let parity: Parity
        /// 1 or 2, as LCR bit 2 says; with 5 data bits, 2 means one and a half.
        public let stopBits: Int

        public init(lcr: UInt8) {
            dataBits = Int(lcr & 0x03) + 5
            stopBits = lcr & 0x04 != 0 ? 2 : 1
            switch (lcr & 0x08 != 0, lcr & 0x10 != 0, lcr & 0x20 != 0) {
            case (false, _, _): parity = .none
            case (true, false, false): parity = .odd
            case (true, true, false): parity = .even
            case (true, false, true): parity = .mark
            case (true, true, true): parity = .space
            }
        }

        /// Bit times per character, in halves: start, data, parity, stop.
        var halfBitTimes: Int {
            let stop = stopBits == 1 ? 2 : (dataBits == 5 ? 3 : 4)
            return 2 * (1 + dataBits + (parity == .none ? 0 : 1)) + stop
        }

        /// The bits of a byte the line carries.
        var mask: UInt8 { UInt8(truncatingIfNeeded: (1 << dataBits) - 1) }

        public var description: String {
            let letter = [Parity.none: "N", .odd: "O", .even: "E", .mark: "M", .space: "S"][parity] ?? "?"
            return "\(dataBits)\(letter)\(dataBits == 5 && stopBits == 2 ? "1.5" : "\(stopBits)")"
        }
    }

    public var framing: Framing { condition.withLock { Framing(lcr: lcr) } }

    // MARK: The line (far end -> UART)

    /// Bytes arriving on the line. They enter the receive FIFO at the line
    /// rate; a byte that finds the FIFO full is lost (overrun).
    public func send(_ bytes: [UInt8]) {
        condition.withLock {
            lineBacklog += bytes
            condition.broadcast()
        }
    }

    // MARK: Power

    public func powerOn(_ port: DevicePort) {
        engine.start(name: "uart16550@\(port.address)", prepare: { self.port = port }) { [self] in lineLoop() }
    }

    public func powerOff() {
        engine.stop()
    }

    public func mmioRead(bar: Int, offset: UInt64, width: Int) -> UInt64 { UInt64.max }
    public func mmioWrite(bar: Int, offset: UInt64, width: Int, value: UInt64) {}

    // MARK: Registers

    public func portRead(bar: Int, port offset: UInt32) -> UInt8 {
        condition.withLock {
            let dlab = lcr & 0x80 != 0
            switch offset {
            case 0:
                if dlab { return UInt8(divisor & 0xFF) }
                guard !rxFIFO.isEmpty else { return 0 }
                let byte = rxFIFO.removeFirst()
                updateInterruptLocked()
                if rxFIFO.isEmpty { condition.broadcast() }  // for waitUntilReceiveFIFOEmpty
                return byte
            case 1: return dlab ? UInt8(divisor >> 8) : ier
            case 2:
                let iir = identificationLocked()
                // Reading IIR while it reports THR empty clears that source.
                if iir & 0x0F == 0x02 { thrEmptyPending = false }
                return iir | 0xC0  // FIFOs enabled
            case 3: return lcr
            case 4: return mcr
            case 5:
                var lsr: UInt8 = 0
                if !rxFIFO.isEmpty { lsr |= 0x01 }
                if overrun { lsr |= 0x02 }
                // With FIFOs on, THRE means the whole transmit FIFO is
                // empty: the driver may then write up to 16 bytes.
                if txFIFO.isEmpty { lsr |= 0x20 | 0x40 }
                if overrun { stats.overrunIndications += 1 }
                overrun = false  // cleared on read
                updateInterruptLocked()
                return lsr
            case 6: return 0xB0  // CTS, DSR, DCD
            case 7: return scr
            default: return 0xFF
            }
        }
    }

    public func portWrite(bar: Int, port offset: UInt32, value: UInt8) {
        condition.withLock {
            let dlab = lcr & 0x80 != 0
            switch offset {
            case 0:
                if dlab {
                    divisor = divisor & 0xFF00 | UInt16(value)
                } else if txFIFO.count < Self.fifoSize {
                    txFIFO.append(value)
                    thrEmptyPending = false
                    condition.broadcast()
                } else {
                    stats.transmitDropped += 1
                }
            case 1:
                if dlab {
                    divisor = divisor & 0x00FF | UInt16(value) << 8
                } else {
                    ier = value & 0x0F
                    if ier & 0x02 != 0 && txFIFO.isEmpty { thrEmptyPending = true }
                    updateInterruptLocked()
                }
            case 2:
                if value & 0x02 != 0 { rxFIFO.removeAll() }
                if value & 0x04 != 0 { txFIFO.removeAll() }
            case 3: lcr = value
            case 4: mcr = value
            case 7: scr = value
            default: break
            }
        }
    }

    /// IIR: bit 0 clear when an interrupt is pending; highest priority first.
    private func identificationLocked() -> UInt8 {
        if ier & 0x04 != 0 && overrun { return 0x06 }
        if ier & 0x01 != 0 && !rxFIFO.isEmpty { return 0x04 }
        if ier & 0x02 != 0 && thrEmptyPending { return 0x02 }
        return 0x01
    }

    private func updateInterruptLocked() {
        if identificationLocked() & 1 == 0 { port?.raiseInterrupt(0) }
    }

    /// Waits until the driver has read everything in the receive FIFO;
    /// false on timeout.
    public func waitUntilReceiveFIFOEmpty(timeout: Double) -> Bool { waitUntil(timeout: timeout) { rxFIFO.isEmpty } }

    /// Waits until every byte sent from the far end has entered the receive
    /// FIFO or been lost to an overrun; false on timeout.
    public func waitUntilLineDrained(timeout: Double) -> Bool { waitUntil(timeout: timeout) { lineBacklog.isEmpty } }

    /// Waits on the device's condition until `done` holds (checked with it held).
    private func waitUntil(timeout: Double, _ done: () -> Bool) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        return condition.withLock {
            while !done() {
                if !condition.wait(until: deadline) { return done() }
            }
            return true
        }
    }

    /// Moves bytes at the line rate in both directions: one byte time per
    /// byte, kept against a running clock so that the rate holds over a
    /// transfer however long each sleep really takes (a late byte goes out
    /// at once; an idle line restarts the clock).
    /// Runs on the device's thread, entered and left with `condition` held.
    private func lineLoop() {
        var lineClock: UInt64?
        while engine.running {
            if txFIFO.isEmpty && lineBacklog.isEmpty {
                lineClock = nil
                condition.wait()
                continue
            }
            let framing = Framing(lcr: lcr)
            let byteNanoseconds = UInt64(framing.halfBitTimes) * 16 * UInt64(max(1, Int(divisor))) * 1_000_000_000 / (2 * UInt64(Self.clock))
            var out: [UInt8] = []
            // One character time per iteration, in each direction at once;
            // only the word length's low bits of a byte cross the line.
            if !txFIFO.isEmpty {
                out.append(txFIFO.removeFirst() & framing.mask)
                stats.transmitted += 1
                if txFIFO.isEmpty && ier & 0x02 != 0 { thrEmptyPending = true }
            }
            // Auto flow control (MCR bit 5 with RTS): the UART drops RTS when
            // its receive FIFO is nearly full and the far end waits.
            let rtsDropped = mcr & 0x22 == 0x22 && rxFIFO.count >= Self.fifoSize - 2 && !farEndIgnoresFlowControl
            if !lineBacklog.isEmpty && !rtsDropped {
                let byte = lineBacklog.removeFirst() & framing.mask
                if mcr & 0x10 == 0 {
                    if rxFIFO.count < Self.fifoSize {
                        rxFIFO.append(byte)
                        stats.received += 1
                    } else {
                        overrun = true
                        stats.overruns += 1
                    }
                }
            }
            // Loopback mode (MCR bit 4) feeds the transmitter to the receiver.
            if mcr & 0x10 != 0, let byte = out.first {
                if rxFIFO.count < Self.fifoSize { rxFIFO.append(byte) } else { overrun = true }
            }
            updateInterruptLocked()
            condition.broadcast()  // for waitUntilLineDrained
            let target = backend
            condition.unlock()
            if mcr & 0x10 == 0, !out.isEmpty { target?.received(out) }
            let now = DispatchTime.now().uptimeNanoseconds
            // A thread that woke late catches up, but by no more than a
            // FIFO's worth: the line never runs faster than that in a burst.
            let next = max((lineClock ?? now) + byteNanoseconds, now &- UInt64(Self.fifoSize) * byteNanoseconds)
            lineClock = next
            if next > now { Thread.sleep(forTimeInterval: Double(next - now) / 1e9) }
            condition.lock()
        }
    }
}
