import CSystemShims
import Foundation
import Glibc

/// How long a callback that runs where the OS cannot wait may take (timed
/// with `Verifier` on: two CPU-clock reads per call are not free), as
/// Driver Verifier and the HLK time ISRs and DPCs. Measured in the calling
/// thread's CPU time, so that a loaded machine preempting the thread does not
/// count against the driver; wall time is reported beside it.
struct CallbackBudget: Sendable {
    /// Beyond this: a warning with the measured time.
    let soft: Double
    /// Beyond this: an ABI violation (the check fails).
    let hard: Double

    /// Interrupt handlers: 2 ms of CPU is slow, 20 ms is a handler doing work
    /// that belongs in a work item. (The reference drivers' handlers, host
    /// services included, take under 0.5 ms in a debug build; the limits are
    /// loose because the host's own services run in the same measurement.)
    static let interrupt = CallbackBudget(soft: 0.002, hard: 0.020)

    /// [any-thread] class operations the OS calls on its I/O path (a block
    /// request's submit, a frame's transmit): the same limits, since the OS
    /// may call them from its interrupt thread.
    static let anyThread = CallbackBudget(soft: 0.002, hard: 0.020)

    struct Spent { let cpu: Double; let wall: Double }

    /// The callback's own CPU time: what the OS spent inside it on the
    /// driver's behalf (completions it reported, frames it received, and
    /// whatever the OS submitted from there) is the OS's, not the driver's.
    static func measure(_ body: () -> Void) -> Spent {
        guard Verifier.timesCallbacks, !Verifier.underSanitizer else {
            body()
            return Spent(cpu: 0, wall: 0)
        }
        let outer = oy_shim_os_time_take()
        let cpu0 = clock(CLOCK_THREAD_CPUTIME_ID), wall0 = clock(CLOCK_MONOTONIC)
        body()
        let os = Double(oy_shim_os_time_take()) / 1e9
        oy_shim_os_time_add(outer)
        return Spent(cpu: max(0, clock(CLOCK_THREAD_CPUTIME_ID) - cpu0 - os), wall: clock(CLOCK_MONOTONIC) - wall0)
    }

    /// Runs an upcall into the OS and books its CPU time as the OS's.
    static func inOS<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        guard Verifier.timesCallbacks else { return try body() }
        let cpu0 = clock(CLOCK_THREAD_CPUTIME_ID)
        defer { oy_shim_os_time_add(UInt64(max(0, clock(CLOCK_THREAD_CPUTIME_ID) - cpu0) * 1e9)) }
        return try body()
    }

    func judge(_ spent: Spent, what: String, library: DriverLibrary) {
        guard spent.cpu > soft else { return }
        let text = String(format: "%@ ran %.2f ms of CPU (%.2f ms wall)", what, spent.cpu * 1000, spent.wall * 1000)
        if spent.cpu > hard {
            library.recordViolation(text + String(format: "; the limit is %.0f ms: do the work in a work item, not in the callback", hard * 1000))
        } else {
            library.recordWarning(text + String(format: "; more than %.0f ms slows every device sharing the interrupt thread", soft * 1000),
                                  severity: .slowCallback)
        }
    }

    private static func clock(_ id: clockid_t) -> Double {
        var t = timespec()
        clock_gettime(id, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }
}
