import COyakoSDK
import Foundation

/// An entropy source a driver registered with the OS (`register_rng`). The
/// OS reads through it; one read at a time reaches the driver.
public final class RegisteredRNG: ClassRegistration, @unchecked Sendable {
    // @unchecked Sendable: `unregistered` and `reading` are guarded by `lock`.
    /// The extension ID of this class.
    public static let classID: String = OY_RNG_EXTENSION
    let readFunction: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UInt32, UnsafeMutablePointer<UInt32>?) -> Int32
    let instance: UnsafeMutableRawPointer?
    private let lock = NSCondition()
    private var unregistered = false
    private var reading = false

    /// Largest read one call may ask for (OY_RNG_MAX_READ).
    public static let maxRead = Int(OY_RNG_MAX_READ)

    /// What `register_rng` registers; refused (and named) without a read callback.
    init(binding: DeviceBinding, ops: oy_rng_ops, instance: UnsafeMutableRawPointer?) throws(Refusal) {
        guard let read = ops.read else { throw .init("a NULL read callback") }
        self.readFunction = read
        self.instance = instance
        super.init(binding: binding, deviceClass: Self.classID, kind: "entropy source", detail: "")
    }

    /// Asks the driver for up to `buffer.count` bytes; returns how many it
    /// produced. Calls are serialised (the ABI promises one at a time).
    public func read(into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, OyStatus> {
        binding.library.counted { readCounted(into: buffer) }
    }

    private func readCounted(into buffer: UnsafeMutableRawBufferPointer) -> Result<Int, OyStatus> {
        let admitted = lock.withLock { () -> Bool in
            while reading && !unregistered { lock.wait() }
            guard !unregistered else { return false }
            reading = true
            return true
        }
        guard admitted else { return .failure(.deviceGone) }
        defer {
            lock.withLock {
                reading = false
                lock.broadcast()
            }
        }
        // The driver writes into the host's own buffer, with a guard band
        // after it, never straight into the caller's: a write past the end
        // (a last word copied whole) lands in the band, is reported, and
        // corrupts nothing of the OS's.
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: buffer.count + Self.guardBand, alignment: 16)
        defer { scratch.deallocate() }
        scratch.initializeMemory(as: UInt8.self, repeating: Self.guardByte)
        var produced: UInt32 = 0
        let status = binding.library.callDriver("rng read") {
            OyStatus(readFunction(instance, scratch.baseAddress, UInt32(clamping: buffer.count), &produced))
        }
        if let past = scratch[buffer.count...].firstIndex(where: { $0 != Self.guardByte }) {
            binding.library.recordViolation("rng read wrote past the end of its \(buffer.count)-byte buffer (byte \(past - buffer.count) after it)"
                + "; write at most `length` bytes, also for a tail shorter than the device's word")
        }
        guard status.isOK else {
            if !status.isDefined { binding.library.recordViolation("rng read returned undefined code \(status.rawValue)") }
            return .failure(status)
        }
        guard Int(produced) <= buffer.count else {
            binding.library.recordViolation("rng read reported \(produced) bytes produced into a \(buffer.count)-byte buffer")
            return .failure(.io)
        }
        if produced > 0 { buffer.baseAddress!.copyMemory(from: scratch.baseAddress!, byteCount: Int(produced)) }
        return .success(Int(produced))
    }

    /// Bytes after a read's buffer the host watches, and what fills them.
    static let guardBand = 64
    static let guardByte: UInt8 = 0xA7

    /// Raw reads for the conformance suite: NULL buffers and out-of-range
    /// lengths the OS itself never sends.
    @_spi(Conformance) public func readUnchecked(nullBuffer: Bool, length: UInt32, nullProduced: Bool = false) -> OyStatus {
        var scratch = [UInt8](repeating: 0, count: Int(min(length, 16)))
        var produced: UInt32 = 0
        return scratch.withUnsafeMutableBytes { bytes in
            withUnsafeMutablePointer(to: &produced) { out in
                binding.library.callDriver("rng read") {
                    OyStatus(readFunction(instance, nullBuffer ? nil : bytes.baseAddress, length, nullProduced ? nil : out))
                }
            }
        }
    }

    /// No more reads reach the driver; one in progress is waited for.
    override func willUnregister() {
        lock.withLock {
            unregistered = true
            while reading { lock.wait() }
            lock.broadcast()
        }
    }
}

/// The host's "oyako.rng/1" table.
enum HostRNG {
    static let deviceClass = DeviceClass(id: RegisteredRNG.classID, table: UnsafeRawPointer(table))

    /// Static for the life of the process; drivers hold a pointer to it.
    nonisolated(unsafe) static let table = oy_host_rng.hostTable { t in
        t.register_rng = { device, ops, instance, out in
            ClassRegistration.register(device, out: out, service: "register_rng") { binding throws(ClassRegistration.Refusal) in
                try RegisteredRNG(binding: binding, ops: .read(ops), instance: instance)
            }
        }
        t.unregister_rng = { handle in ClassRegistration.withdraw(handle, as: RegisteredRNG.self, service: "unregister_rng") }
    }
}
