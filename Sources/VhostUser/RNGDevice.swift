import Foundation

/// virtio-rng (device ID 4) as a vhost-user back-end: one request queue
/// whose chains are writable buffers the device fills with entropy. No
/// device features and no config space. The entropy comes from `source`,
/// in the root the OS's entropy subsystem, so the guest's hw_random reads
/// what the vendor's rng driver produces.
public final class VhostUserRNG: VhostUserDevice, @unchecked Sendable {
    // @unchecked Sendable: start and stop come from the one connection
    // thread; `workers` is touched only there.
    /// Fills the buffer and returns how many bytes it produced (0 when the
    /// source failed; the guest driver asks again).
    public typealias Source = @Sendable (UnsafeMutableRawBufferPointer) -> Int
    /// Told when the guest corrupted the queue; the queue is then left alone.
    public typealias Failure = @Sendable (VirtqueueError) -> Void

    public let deviceFeatures: UInt64 = 0
    public let queueCount = 1
    private let source: Source
    private let failure: Failure
    private var worker: QueueWorker?

    public init(source: @escaping Source, failure: @escaping Failure = { _ in }) {
        self.source = source
        self.failure = failure
    }

    public func configSpace() -> [UInt8] { [] }

    public func start(queue index: Int, _ queue: SplitVirtqueue, kick: Int32, call: Int32) throws(VhostUserError) {
        let source = self.source
        do {
            worker = try QueueWorker(queue: queue, kick: kick, call: call, serve: { chain, done in done(written: Self.fill(chain, from: source)) }, failed: failure)
        } catch {
            throw .deviceStart(queue: index, errno: error.code)
        }
    }

    /// Fills a chain's writable buffers in order until the source runs
    /// short; a chain with no writable buffer gets nothing.
    private static func fill(_ chain: DescriptorChain, from source: Source) -> UInt32 {
        var written = 0
        for buffer in chain.writable {
            let produced = min(max(source(buffer), 0), buffer.count)
            written += produced
            if produced < buffer.count { break }
        }
        return UInt32(written)
    }

    public func stop(queue index: Int) {
        worker?.stop()
        worker = nil
    }

    deinit { worker?.stop() }
}
