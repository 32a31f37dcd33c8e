import Foundation
import Machine

/// A device model's own thread — hardware has its own engine, so every model
/// runs on one: started at power-on, told to stop and waited for at
/// power-off. It owns the device's condition, so the device's loop waits
/// for work and for the stop request under one lock.
final class DeviceThread: @unchecked Sendable {
    // @unchecked Sendable: `running_` and `stopped` are guarded by `condition`.
    let condition = NSCondition()
    private var running_ = false
    private var stopped = true

    /// True from `start` until `stop`; read it with `condition` held.
    var running: Bool { running_ }

    /// Runs `prepare` under the lock, then starts the thread. `body` is
    /// entered with `condition` held, must return with it held, and should
    /// loop while `running`, waiting on `condition` for work.
    func start(name: String, prepare: () -> Void = {}, body: @escaping @Sendable () -> Void) {
        condition.withLock {
            prepare()
            running_ = true
            stopped = false
        }
        startThread(named: name) { [self] in
            condition.lock()
            body()
            stopped = true
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Ends the loop and waits until the thread has left it: no DMA or
    /// interrupt from the device after this returns. Harmless when the
    /// thread was never started or has already stopped.
    func stop() {
        condition.withLock {
            running_ = false
            condition.broadcast()
            while !stopped { condition.wait() }
        }
    }
}
