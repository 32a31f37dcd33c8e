import Hypervisor

/// Posting a SynIC message: the TLFS says a full queue answers
/// HV_STATUS_INSUFFICIENT_BUFFERS and the sender retries later. One policy
/// for both sides of VMBus: up to 40 tries, waiting 0.5 ms, doubling to at
/// most 50 ms (about 1.5 s in all).
enum PostWithBackoff {
    enum Failure: Error {
        /// Still full after every try.
        case queueFull
        /// The hypervisor refused for another reason.
        case refused(HvStatus)
    }

    /// Calls `post` until it succeeds, sleeping with `wait` (seconds) while
    /// the queue is full.
    static func run(_ post: () throws(HvStatus) -> Void, wait: (Double) -> Void) throws(Failure) {
        var delay = 0.0005
        for _ in 0..<40 {
            do {
                try post()
                return
            } catch .insufficientBuffers {
                wait(delay)
                delay = min(delay * 2, 0.05)
            } catch {
                throw .refused(error)
            }
        }
        throw .queueFull
    }
}
