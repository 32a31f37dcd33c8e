import CSystemShims
import Foundation
import Glibc

/// A process the root started and answers for: tethered (the kernel kills
/// it if the root dies), reaped by a thread of its own, stopped with
/// SIGTERM then SIGKILL. For VMMs and for the helpers a check runs.
public final class SupervisedProcess: @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `lock`.
    public enum Exit: Sendable, Equatable, CustomStringConvertible {
        case exited(Int32)
        case signaled(Int32)

        public var description: String {
            switch self {
            case .exited(let code): "exited with status \(code)"
            case .signaled(let signal): "killed by signal \(signal)"
            }
        }
    }

    public struct SpawnError: Error, CustomStringConvertible, Sendable {
        public let path: String
        public let errno: Int32
        public var description: String { "cannot start \(path): \(String(cString: strerror(errno)))" }
    }

    public let pid: pid_t
    private let lock = NSCondition()
    private var status: Exit?
    private var exitHandlers: [@Sendable (Exit) -> Void] = []

    private init(pid: pid_t) {
        self.pid = pid
        Thread.detachNewThread { [self] in reap() }
    }

    /// Starts `path` with `arguments`; its stdout and stderr go to `output`
    /// (a descriptor; /dev/null when nil). The caller keeps its own `output`.
    public static func start(_ path: String, _ arguments: [String], output: Int32? = nil) -> Result<SupervisedProcess, SpawnError> {
        let sink = output ?? open("/dev/null", O_WRONLY | O_CLOEXEC)
        defer { if output == nil { close(sink) } }
        let pid = Tether.shared.spawn(path, [path] + arguments, output: sink)
        guard pid > 0 else { return .failure(SpawnError(path: path, errno: -pid)) }
        return .success(SupervisedProcess(pid: pid))
    }

    deinit { stop() }

    public var exit: Exit? { lock.withLock { status } }

    /// Runs `handler` once the process exited (at once if it has).
    public func onExit(_ handler: @escaping @Sendable (Exit) -> Void) {
        let done = lock.withLock { () -> Exit? in
            if status == nil { exitHandlers.append(handler) }
            return status
        }
        if let done { handler(done) }
    }

    /// Waits for the process to exit; nil when it outlived `timeout`.
    public func waitForExit(timeout: TimeInterval) -> Exit? {
        let deadline = Date(timeIntervalSinceNow: timeout)
        return lock.withLock {
            while status == nil { if !lock.wait(until: deadline) { break } }
            return status
        }
    }

    /// SIGTERM, then SIGKILL if it lingers; returns once it is gone.
    public func stop(grace: TimeInterval = 5) {
        guard exit == nil else { return }
        kill(pid, SIGTERM)
        if waitForExit(timeout: grace) == nil {
            kill(pid, SIGKILL)
            _ = waitForExit(timeout: 30)
        }
    }

    private func reap() {
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
        let exit: Exit = raw & 0x7F == 0 ? .exited((raw >> 8) & 0xFF) : .signaled(raw & 0x7F)
        let handlers = lock.withLock { () -> [@Sendable (Exit) -> Void] in
            status = exit
            lock.broadcast()
            defer { exitHandlers = [] }
            return exitHandlers
        }
        for handler in handlers { handler(exit) }
    }
}

/// The one long-lived thread that starts supervised processes: PR_SET_PDEATHSIG
/// fires when the *thread* that forked the child ends, so children are
/// forked from a thread that lives as long as the process.
final class Tether: @unchecked Sendable {
    // @unchecked Sendable: requests pass through `lock`.
    static let shared = Tether()

    private final class Request: @unchecked Sendable {
        // @unchecked Sendable: `pid` is written before `done` is signalled, read after.
        let path: String
        let arguments: [String]
        let output: Int32
        let done = DispatchSemaphore(value: 0)
        var pid: pid_t = 0

        init(path: String, arguments: [String], output: Int32) {
            self.path = path
            self.arguments = arguments
            self.output = output
        }
    }

    private let lock = NSCondition()
    private var requests: [Request] = []

    private init() {
        let thread = Thread { [self] in serve() }
        thread.name = "oyako-vmm-tether"
        thread.start()
    }

    /// The child's pid, or -errno.
    func spawn(_ path: String, _ arguments: [String], output: Int32) -> pid_t {
        let request = Request(path: path, arguments: arguments, output: output)
        lock.withLock {
            requests.append(request)
            lock.signal()
        }
        request.done.wait()
        return request.pid
    }

    private func serve() {
        while true {
            let request = lock.withLock { () -> Request in
                while requests.isEmpty { lock.wait() }
                return requests.removeFirst()
            }
            var cArguments = request.arguments.map { strdup($0) }
            cArguments.append(nil)
            let pid = oy_shim_spawn_tethered(request.path, cArguments, request.output)
            request.pid = pid > 0 ? pid : -oy_shim_errno()
            for pointer in cArguments { free(pointer) }
            request.done.signal()
        }
    }
}
