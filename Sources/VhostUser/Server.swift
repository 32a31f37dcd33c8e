import CSystemShims
import Foundation
import Glibc
import Synchronization

/// A vhost-user socket a VMM connects to (QEMU's `-chardev socket,path=`):
/// each connection gets a back-end of its own from `makeBackend` and is
/// served on a thread of its own; `ended` hears why each one ended. A
/// connection that misbehaves ends alone; `stop` ends them all.
public final class VhostUserServer: @unchecked Sendable {
    // @unchecked Sendable: `connections` and `listening` are guarded by `state`.
    public let path: String
    private let listener: Int32
    private let state = Mutex<(listening: Bool, connections: [Int32])>((true, []))
    private let makeBackend: @Sendable () -> VhostUserBackend
    private let ended: @Sendable (VhostUserConnection.End) -> Void
    private let stopped = DispatchGroup()

    public struct ListenError: Error, CustomStringConvertible {
        public let path: String
        public let errno: Int32
        public var description: String { "cannot listen on \(path): \(String(cString: strerror(errno)))" }
    }

    public init(path: String, makeBackend: @escaping @Sendable () -> VhostUserBackend,
                ended: @escaping @Sendable (VhostUserConnection.End) -> Void = { _ in }) throws(ListenError)
    {
        let fd = oy_shim_unix_listen(path)
        guard fd >= 0 else { throw ListenError(path: path, errno: oy_shim_errno()) }
        self.path = path
        self.listener = fd
        self.makeBackend = makeBackend
        self.ended = ended
        stopped.enter()
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    private func acceptLoop() {
        defer { stopped.leave() }
        while true {
            let connection = accept(listener, nil, nil)
            if connection < 0 {
                if errno == EINTR { continue }
                return  // the listener was shut down
            }
            let admitted = state.withLock { s -> Bool in
                guard s.listening else { return false }
                s.connections.append(connection)
                return true
            }
            _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
            guard admitted else {
                _ = close(connection)
                return
            }
            stopped.enter()
            let backend = makeBackend()
            Thread.detachNewThread { [self] in
                let why = VhostUserConnection.serve(socket: connection, backend: backend)
                // Forget it before closing it, under the lock `stop` shuts
                // connections down under: never a shutdown of a reused number.
                state.withLock { s in
                    s.connections.removeAll { $0 == connection }
                    _ = close(connection)
                }
                ended(why)
                stopped.leave()
            }
        }
    }

    /// Stops listening, ends every connection and waits for their threads;
    /// removes the socket file.
    public func stop() {
        let first = state.withLock { s -> Bool in
            guard s.listening else { return false }
            s.listening = false
            // Shut down, not close: each serving thread closes its own.
            for connection in s.connections { _ = shutdown(connection, Int32(SHUT_RDWR)) }
            return true
        }
        guard first else { return }
        _ = shutdown(listener, Int32(SHUT_RDWR))
        stopped.wait()
        _ = close(listener)
        unlink(path)
    }

    deinit { stop() }
}
