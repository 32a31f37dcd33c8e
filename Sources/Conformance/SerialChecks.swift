import Devices
@_spi(Conformance) import DriverHost
import Foundation
import Kernel
import Synchronization

/// Checks of the serial class, "oyako.serial/1".
extension Catalogue {
    static let serialChecks: [CheckDefinition] = [serialRoundtrip, serialTxReady, serialSetLine, serialOverflow]

    static let serialRoundtrip = CheckDefinition("io.serial.roundtrip", "bytes round-trip in order at the configured rate", requires: ["io.basic"], classes: serial, hostable: true) { c in
        try withDriver(c) { rig in
            guard let tty = rig.kernel.serial.ports.first, let (uart, log) = rig.uarts.first else { return .failed("no port registered") }
            let baud = tty.line.baud
            let droppedBefore = uart.statistics.transmitDropped
            guard uart.baud == baud else {
                return .failed("the port says \(baud) baud but the device was programmed for \(uart.baud) (divisor latch); program DLL/DLM for 1843200 / 16 / baud (SDK/datasheets/uart16550.md)")
            }
            // About 100 ms of output at the configured rate.
            let out = (0..<max(64, baud / 100)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            let rate: Double
            switch Rig.lineRate(of: out, written: { tty.write(out) }, log: log, timeout: 10 + Double(out.count * 20) / Double(baud)) {
            case .none: return .failed("output did not reach the line intact and in order" + droppedOutput(uart, since: droppedBefore))
            case .some(let measured): rate = measured
            }
            let expected = Double(baud) / 10
            if rate > expected * 1.15 {
                return .failed(String(format: "%.0f bytes/s left on the line, faster than %d baud allows (%.0f bytes/s with 8N1)", rate, baud, expected))
            }
            // Too slow is a time budget (a loaded machine is slow too); too
            // fast cannot happen on a correctly programmed line.
            if c.timeBudget != nil, rate < expected * 0.6 {
                return .failed(String(format: "only %.0f bytes/s left on the line at %d baud (%.0f expected): keep the transmitter busy, refill the FIFO on THR-empty (a loaded machine? --time-budget 0 skips this bound)", rate, baud, expected))
            }
            let typed = (0..<300).map { UInt8(truncatingIfNeeded: $0 &* 3 &+ 1) }
            uart.send(typed)
            var back: [UInt8] = []
            let deadline = Date(timeIntervalSinceNow: 10)
            while back.count < typed.count && Date() < deadline { back += tty.read(typed.count - back.count, timeout: 0.5) }
            guard back == typed else { return .failed("input: \(back.count) of \(typed.count) bytes, or out of order") }
            return .passed(String(format: "%d baud, %d bytes out at %.0f bytes/s (%.0f%% of the line rate)", baud, out.count, rate, 100 * rate / expected),
                           observation: rig.deviceObservation())
        }
    }

    /// Output far larger than the roundtrip's: more than a driver's transmit
    /// buffer usually holds, so its `write` answers short and the OS waits
    /// for `tx_ready` before it writes again. A driver that never calls it
    /// stalls its port for good, and the roundtrip's 100 ms of output fits
    /// in the reference driver's buffer, so only this check sees it.
    static let serialTxReady = CheckDefinition("io.serial.tx-ready", "after a short write the driver calls tx_ready, and output larger than its buffer leaves whole and in order", requires: ["io.basic"], classes: serial, timeout: 40, hostable: true) { c in
        try withDriver(c) { rig in
            guard let tty = rig.kernel.serial.ports.first, let (uart, log) = rig.uarts.first else { return .failed("no port registered") }
            let original = tty.line
            let droppedBefore = uart.statistics.transmitDropped
            guard original.baud == 115_200 || tty.port.setLine(SerialLine(baud: 115_200)) == .ok else {
                return .failed("set_line to 115200 baud failed; this check needs the line's fastest rate")
            }
            defer { if tty.line.baud != original.baud { _ = tty.port.setLine(original) } }
            let out = (0..<serialTxReadyBytes).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ $0 >> 8) }
            let before = (short: tty.shortWrites, ready: tty.readyReports)
            // At 11520 bytes/s the line carries it in under a second.
            let arrived = Rig.lineRate(of: out, written: { tty.write(out) }, log: log, timeout: 15) != nil
            let short = tty.shortWrites - before.short, ready = tty.readyReports - before.ready
            guard arrived else {
                let unsent = tty.unsent
                if short > 0 && ready == 0 && unsent > 0 {
                    return .failed("the driver answered a short write and never called tx_ready: the OS writes again only after tx_ready, so the port stalled with \(unsent) bytes still waiting; call tx_ready once the transmit buffer has room again (SDK/CLASSES.md, Serial)")
                }
                return .failed("\(out.count) bytes of output did not reach the line whole and in order (\(unsent) still waiting in the OS, \(short) short write(s), \(ready) tx_ready call(s))"
                               + droppedOutput(uart, since: droppedBefore))
            }
            guard short > 0 else {
                return .passed("\(out.count) bytes left in order; the driver took them all without a short write, so tx_ready was not needed")
            }
            return .passed("\(out.count) bytes left in order across \(short) short write(s) and \(ready) tx_ready call(s)")
        }
    }

    /// What a failed output check adds when the device dropped bytes
    /// written to a full transmit FIFO: the likeliest cause, named.
    static func droppedOutput(_ uart: UART16550, since before: Int) -> String {
        let dropped = uart.statistics.transmitDropped - before
        guard dropped > 0 else { return "" }
        return "; the driver wrote \(dropped) byte(s) to THR while the transmit FIFO held 16, and the device dropped them: "
            + "write at most 16 bytes per THRE, from one thread at a time (SDK/datasheets/uart16550.md)"
    }

    /// Bytes `io.serial.tx-ready` writes at once: more than the 4 KiB
    /// transmit buffer of the reference driver and of most 16550 drivers
    /// (Linux's serial core buffers 4 KiB), under a second at 115200 baud.
    static let serialTxReadyBytes = 10 << 10

    /// Character formats set_line must apply (data bits, OY_PARITY_*, stop bits).
    static let rates = [57_600, 38_400, 19_200, 9_600, 300, 50, 115_200]
    static let framings = [(7, 2, 1), (8, 1, 2), (5, 0, 2), (6, 2, 2), (8, 0, 1)]

    /// What is wrong with how the driver applies character formats, or nil.
    static func framingProblem(_ port: any SerialDriverBinding, _ uart: UART16550) -> String? {
        for (dataBits, parity, stopBits) in framings {
            let name = "\(dataBits)\(["N", "O", "E"][parity])\(stopBits)"
            let status = port.setLine(SerialLine(baud: 115_200, dataBits: dataBits, parity: parity, stopBits: stopBits))
            guard status == .ok else { return "set_line to 115200 \(name) returned \(status); the device can frame characters so" }
            let framing = uart.framing
            let parityWanted: UART16550.Framing.Parity = [.none, .odd, .even][parity]
            guard framing.dataBits == dataBits, framing.parity == parityWanted, framing.stopBits == stopBits else {
                return "set_line to 115200 \(name) returned OY_OK but the device frames characters \(framing) (LCR bits 0–5: word length − 5, stop bits, parity enable, even, stick)"
            }
        }
        return nil
    }

    static let serialSetLine = CheckDefinition("io.serial.set-line", "set_line: rates the clock can make take effect; bad rates and framing are refused", requires: ["io.basic"], classes: serial, timeout: 30, hostable: true) { c in
        try withDriver(c) { rig in
            guard let tty = rig.kernel.serial.ports.first, let (uart, log) = rig.uarts.first else { return .failed("no port registered") }
            let original = tty.line
            var statuses: [OyStatus] = []
            // 300 and 50 baud take divisors over 255: DLM as well as DLL.
            for baud in Self.rates {
                let status = tty.port.setLine(SerialLine(baud: baud))
                guard status == .ok else { return .failed("set_line to \(baud) baud (115200 / \(115_200 / baud)) returned \(status); the device can make this rate") }
                guard uart.baud == baud else {
                    let divisor = 115_200 / baud
                    return .failed("set_line to \(baud) returned OY_OK but the device runs at \(uart.baud) baud"
                        + (divisor > 255 ? "; its divisor \(divisor) needs DLM (the high byte) as well as DLL" : ""))
                }
            }
            // The rate holds on the line at a slow rate too.
            guard tty.port.setLine(SerialLine(baud: 9_600)) == .ok else { return .failed("set_line to 9600 baud failed the second time") }
            let out = (0..<96).map { UInt8(truncatingIfNeeded: $0 &* 5 &+ 2) }
            guard let rate = Rig.lineRate(of: out, written: { tty.write(out) }, log: log, timeout: 10) else {
                return .failed("after set_line to 9600 baud, output did not reach the line intact and in order")
            }
            if rate > 960 * 1.15 || (c.timeBudget != nil && rate < 960 * 0.6) {
                return .failed(String(format: "at 9600 baud %.0f bytes/s left on the line; expected about 960", rate))
            }
            if let problem = framingProblem(tty.port, uart) { return .failed(problem) }
            guard tty.port.setLine(original) == .ok else { return .failed("set_line back to \(original.baud) baud failed") }
            let before = (tty.line, uart.baud)
            for (line, expected, what) in [
                (SerialLine(baud: 115_201), OyStatus.range, "115201 baud (no integer divisor)"),
                (SerialLine(baud: 0), .range, "0 baud"),
                (SerialLine(baud: 4_000_000), .range, "4000000 baud (above the clock)"),
                (SerialLine(baud: 9_600, dataBits: 4), .invalid, "4 data bits"),
                (SerialLine(baud: 9_600, dataBits: 9), .invalid, "9 data bits"),
                (SerialLine(baud: 9_600, parity: 3), .invalid, "parity 3"),
                (SerialLine(baud: 9_600, stopBits: 0), .invalid, "0 stop bits"),
                (SerialLine(baud: 9_600, stopBits: 3), .invalid, "3 stop bits"),
            ] {
                let status = tty.port.setLine(line)
                guard status == expected else {
                    return .failed("set_line with \(what) returned \(status); answer \(expected.name ?? "") (SDK/CLASSES.md, Serial)")
                }
                guard tty.line == before.0, uart.baud == before.1 else { return .failed("a refused set_line (\(what)) still changed the line") }
                statuses.append(status)
            }
            return .passed("\(Self.rates.count) rates and \(Self.framings.count) character formats applied, 9600 baud measured at \(Int(rate)) bytes/s, 8 bad settings refused",
                           observation: Observation(["statuses": Observation.statuses(statuses)]))
        }
    }

    static let serialOverflow = CheckDefinition("io.serial.overflow", "every receive overrun the device indicated is reported; the rest stays in order", requires: ["io.basic"], classes: serial, timeout: 30, hostable: true) { c in
        try withDriver(c) { rig in
            guard let tty = rig.kernel.serial.ports.first, let (uart, _) = rig.uarts.first else { return .failed("no port registered") }
            // With its interrupts lost the driver cannot drain the FIFO, and
            // this far end ignores flow control.
            uart.ignoreFlowControl(true)
            rig.slots[0].loseInterrupts(true)
            // Bytes below 0xA0, so that the markers sent after it (0xAA, 0xAB)
            // cannot be mistaken for burst bytes: a handler already running
            // when the interrupts went (one slow to finish, as in a driver
            // host) drains more of the burst than one FIFO.
            let burst = (0..<200).map { UInt8($0 % 0xA0) }
            uart.send(burst)
            // Meanwhile the OS writes a byte a millisecond: a driver that
            // reads LSR on its transmit path (for THRE) clears OE there too,
            // and owes a report for it from there (Linux's 8250 keeps
            // lsr_saved_flags for this).
            let output = Repeating(named: "output") { _ in _ = [UInt8(0x55)].withUnsafeBytes { tty.port.write($0) } }
            defer { output.stop() }
            guard uart.waitUntilLineDrained(timeout: 10) else { return .failed("the far end could not send its burst") }
            output.stop()
            rig.slots[0].loseInterrupts(false)
            // The next byte finds the FIFO still full: it is lost as well, but
            // its overrun interrupts the driver, which must drain the FIFO.
            // Once it has, a marker must arrive.
            uart.send([0xAA])
            guard uart.waitUntilReceiveFIFOEmpty(timeout: 5) else {
                return .failed("after an overrun interrupt the driver did not drain the receive FIFO; read RBR while LSR.DR is set")
            }
            var got: [UInt8] = []
            let deadline = Date(timeIntervalSinceNow: 5)
            uart.send([0xAB])
            while Date() < deadline, !got.contains(0xAB) { got += tty.read(256, timeout: 0.2) }
            guard got.last == 0xAB else {
                let d = uart.statistics
                return .failed("after the overrun, new input never arrived (\(got.count) bytes read; the device received \(d.received), lost \(d.overruns)); drain the receive FIFO on every received-data interrupt")
            }
            var it = (burst + [0xAA]).makeIterator()
            let inOrder = got.dropLast().allSatisfy { byte in
                while let next = it.next() { if next == byte { return true } }
                return false
            }
            guard inOrder else { return .failed("bytes after an overrun arrived out of order") }
            let device = uart.statistics
            guard device.overruns > 0 else { return .passed("no overrun happened (the FIFO kept up)") }
            let indicated = device.overrunIndications
            guard indicated > 0 else {
                return .failed("the device lost \(device.overruns) byte(s) but the driver never read LSR with OE set; check LSR on the line-status interrupt (IER bit 2)")
            }
            // A driver may report the loss after it hands on what arrived
            // (later in the same run, or from work it queued): a moment for it.
            let reportBy = Date(timeIntervalSinceNow: 1)
            while tty.reportedLost < indicated, Date() < reportBy { Thread.sleep(forTimeInterval: 0.01) }
            guard tty.reportedLost >= indicated else {
                return .failed("the device indicated \(indicated) overrun(s) (LSR reads with OE set) but the driver reported \(tty.reportedLost) lost byte(s) "
                    + "in \(tty.lossReports) error() call(s); reading LSR clears OE, so report at least 1 lost byte for every OE you read, wherever you read LSR")
            }
            return .passed("\(device.overruns) byte(s) lost in \(indicated) overrun indication(s), \(tty.lossReports) report(s), \(tty.reportedLost) byte(s) reported lost")
        }
    }
}
