import Devices
import DriverHost
import Foundation

/// Devices as another OS left them running: a crash kernel takes over from
/// the one that panicked, a boot loader hands a disk to the OS it loads, a
/// driver host dies without its detach. Each device is programmed through
/// its registers, as that OS did, with its queues and rings at device
/// addresses this machine's IOMMU does not map (that OS's memory is not
/// ours), and is left running. A driver's attach must reset the device
/// before it relies on any register's value (each datasheet's reset).
extension Rig {
    /// Where the former OS's queues and rings were, as the device sees it.
    static let formerOwnersMemory: UInt64 = 0x7F00_0000

    /// The serial line the former OS left: its divisor latch and LCR.
    static let formerDivisor: UInt16 = 384
    static let formerLineControl: UInt8 = 0x1B
    static var formerBaud: Int { 115_200 / Int(formerDivisor) }
    static var formerFraming: UART16550.Framing { UART16550.Framing(lcr: formerLineControl) }

    /// What `leaveDevicesRunning` left, by class, for the verdict.
    static let leftRunning: [String: String] = [
        RegisteredDisk.classID: "the controller enabled (CC.EN = 1, CSTS.RDY = 1) with its admin queues in the former OS's memory",
        RegisteredNetdev.classID: "receive and transmit enabled, their rings in the former OS's memory with heads and tails mid-ring, every interrupt cause unmasked",
        RegisteredSerialPort.classID: "the line at \(formerBaud) baud \(formerFraming), loopback on, every interrupt enabled",
        RegisteredRNG.classID: "the noise source enabled",
    ]

    /// Programs every device of the rig as a running OS would have, before
    /// the driver attaches. Nothing is DMA'd: an engine that needs memory
    /// is pointed at it but given nothing to do.
    func leaveDevicesRunning() {
        let former = Self.formerOwnersMemory
        for nvme in nvmes {
            nvme.mmioWrite(bar: 0, offset: 0x24, width: 4, value: 0x001F_001F)  // AQA: 32-entry admin queues
            nvme.mmioWrite(bar: 0, offset: 0x28, width: 8, value: former)  // ASQ
            nvme.mmioWrite(bar: 0, offset: 0x30, width: 8, value: former + 0x1000)  // ACQ
            nvme.mmioWrite(bar: 0, offset: 0x14, width: 4, value: 1)  // CC.EN
            let deadline = Date(timeIntervalSinceNow: 1)
            while nvme.mmioRead(bar: 0, offset: 0x1C, width: 4) & 1 == 0 && Date() < deadline { usleep(1000) }  // CSTS.RDY
        }
        for (nic, _) in nics {
            // Tails before the rings' lengths, so no descriptor is fetched.
            nic.mmioWrite(bar: 0, offset: 0x3818, width: 4, value: 9)  // TDT
            nic.mmioWrite(bar: 0, offset: 0x3810, width: 4, value: 9)  // TDH
            nic.mmioWrite(bar: 0, offset: 0x3800, width: 4, value: former + 0x3000)  // TDBAL
            nic.mmioWrite(bar: 0, offset: 0x3808, width: 4, value: 4096)  // TDLEN: 256 descriptors
            nic.mmioWrite(bar: 0, offset: 0x2818, width: 4, value: 2)  // RDT
            nic.mmioWrite(bar: 0, offset: 0x2810, width: 4, value: 3)  // RDH
            nic.mmioWrite(bar: 0, offset: 0x2800, width: 4, value: former + 0x2000)  // RDBAL
            nic.mmioWrite(bar: 0, offset: 0x2808, width: 4, value: 4096)  // RDLEN
            nic.mmioWrite(bar: 0, offset: 0x00D0, width: 4, value: 0xFFFF)  // IMS: every cause
            nic.mmioWrite(bar: 0, offset: 0x0100, width: 4, value: 1 << 1 | 1 << 15)  // RCTL: EN, BAM
            nic.mmioWrite(bar: 0, offset: 0x0400, width: 4, value: 1 << 1)  // TCTL: EN
        }
        for (uart, _) in uarts {
            uart.portWrite(bar: 0, port: 3, value: 0x80)  // LCR: DLAB
            uart.portWrite(bar: 0, port: 0, value: UInt8(truncatingIfNeeded: Self.formerDivisor))  // DLL
            uart.portWrite(bar: 0, port: 1, value: UInt8(Self.formerDivisor >> 8))  // DLM
            uart.portWrite(bar: 0, port: 3, value: Self.formerLineControl)  // LCR
            uart.portWrite(bar: 0, port: 4, value: 0x10)  // MCR: loopback
            uart.portWrite(bar: 0, port: 1, value: 0x0F)  // IER: every interrupt
        }
        for rng in rngs {
            rng.mmioWrite(bar: 0, offset: 0x08, width: 4, value: 1)  // CTRL: enable
        }
    }

    /// The registers of a serial port's device that still hold what the
    /// former OS left (DLL, DLM, LCR) where the line the driver registered
    /// needs other values: attach never wrote them. Said as a problem; nil
    /// when none did. (A line programmed, but wrong, is
    /// io.serial.roundtrip's and io.serial.set-line's to find.)
    func lineLeftAsFoundProblem() -> String? {
        guard let tty = kernel.serial.ports.first, let (uart, _) = uarts.first, tty.line.baud > 0 else { return nil }
        let line = tty.line, framing = uart.framing, latch = uart.divisorLatch
        let wanted = UInt16(clamping: 115_200 / line.baud), former = Self.formerDivisor, formerFraming = Self.formerFraming
        let parity: [Int: UART16550.Framing.Parity] = [0: .none, 1: .odd, 2: .even]
        let registersFormerFraming = line.dataBits == formerFraming.dataBits && parity[line.parity] == formerFraming.parity && line.stopBits == formerFraming.stopBits
        var stale: [String] = []
        if latch & 0xFF == former & 0xFF && wanted & 0xFF != former & 0xFF { stale.append(String(format: "DLL (0x%02X)", former & 0xFF)) }
        if latch >> 8 == former >> 8 && wanted >> 8 != former >> 8 { stale.append(String(format: "DLM (0x%02X)", former >> 8)) }
        if framing == formerFraming && !registersFormerFraming { stale.append("LCR (\(formerFraming))") }
        guard !stale.isEmpty else { return nil }
        return "the port was registered at \(line.baud) baud, but \(stale.joined(separator: ", ")) still held what the former OS left, so the device is at \(uart.baud) baud \(framing): "
            + "attach did not program all of the line it registered"
    }
}
