import Foundation
import Machine

/// `rnglite`, a hardware entropy source: a 64-word FIFO refilled by the
/// device's own thread while enabled. Registers (BAR 0): DATA 0x00 (read
/// pops a 32-bit word; 0 when empty), STATUS 0x04 (bit 0: data ready,
/// bits 16..23: words available), CTRL 0x08 (bit 0: enable). Vector 0 is
/// raised when the FIFO goes from empty to non-empty.
public final class RNGLite: BusDevice, @unchecked Sendable {
    // @unchecked Sendable: guarded by `condition`.
    public static let vendorID: UInt16 = 0x0A7A
    public static let deviceID: UInt16 = 0x0004

    public let name = "rnglite"
    public let identity = DeviceIdentity(vendorID: RNGLite.vendorID, deviceID: RNGLite.deviceID, classCode: 0x10_80_00)
    public let bars: [BAR] = [.mmio(size: 0x1000)]
    public let interruptCount = 1

    private let engine = DeviceThread()
    private var condition: NSCondition { engine.condition }
    private var fifo: [UInt32] = []
    private var enabled = false
    /// The noise source has nothing to give: the FIFO drains and stays empty.
    private var exhausted = false
    private var port: DevicePort?
    private var generator = SystemRandomNumberGenerator()
    /// The words read out of DATA, the latest of them (at least `logLimit`),
    /// and how many were read before the first one kept.
    private var deliveredLog: [UInt32] = []
    private var deliveredBase = 0
    static let logLimit = 16_384

    /// Words read out of DATA since power-on.
    public var wordsDelivered: Int { condition.withLock { deliveredBase + deliveredLog.count } }

    /// The words read out of DATA from the `index`th on (`wordsDelivered`
    /// taken earlier), or nil if the device no longer remembers them all.
    public func wordsDelivered(since index: Int) -> [UInt32]? {
        condition.withLock {
            guard index >= deliveredBase, index <= deliveredBase + deliveredLog.count else { return nil }
            return Array(deliveredLog[(index - deliveredBase)...])
        }
    }

    public init() {}

    public func powerOn(_ port: DevicePort) {
        engine.start(name: "rnglite@\(port.address)", prepare: { self.port = port }) { [self] in refillLoop() }
    }

    public func powerOff() {
        engine.stop()
    }

    public func mmioRead(bar: Int, offset: UInt64, width: Int) -> UInt64 {
        condition.withLock {
            switch offset {
            case 0x00:
                guard !fifo.isEmpty else { return 0 }
                let word = fifo.removeFirst()
                deliveredLog.append(word)
                if deliveredLog.count >= 2 * Self.logLimit {
                    deliveredLog.removeFirst(Self.logLimit)
                    deliveredBase += Self.logLimit
                }
                condition.signal()
                return UInt64(word)
            case 0x04: return UInt64((fifo.isEmpty ? 0 : 1) | UInt32(fifo.count) << 16)
            case 0x08: return enabled ? 1 : 0
            default: return 0
            }
        }
    }

    public func mmioWrite(bar: Int, offset: UInt64, width: Int, value: UInt64) {
        guard offset == 0x08 else { return }
        condition.withLock {
            enabled = value & 1 != 0
            if !enabled { fifo.removeAll() }
            condition.signal()
        }
    }

    /// The noise source runs dry (`true`): what the FIFO holds is gone, and
    /// it stays empty, DRDY clear and no interrupt, until the source gives
    /// again (`false`), as a real generator's may right after power-up.
    public func exhaust(_ dry: Bool) {
        condition.withLock {
            exhausted = dry
            if dry { fifo.removeAll() }
            condition.signal()
        }
    }

    /// Runs on the device's thread, entered and left with `condition` held.
    private func refillLoop() {
        while engine.running {
            while engine.running && (!enabled || exhausted || fifo.count >= 64) { condition.wait() }
            guard engine.running else { break }
            let wasEmpty = fifo.isEmpty
            while fifo.count < 64 { fifo.append(UInt32.random(in: 0...UInt32.max, using: &generator)) }
            if wasEmpty { port?.raiseInterrupt(0) }
        }
    }
}
