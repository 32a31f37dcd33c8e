import Foundation
import Glibc
import Synchronization
import SystemPackage

/// Who may connect to a socket a server listens on.
public enum SocketAccess: Sendable, Equatable {
    /// This user only (mode 0600).
    case owner
    /// This user and the members of a group (mode 0660, the socket file's
    /// group set to it): a VMM that runs as another user in that group.
    case group(gid_t)

    var mode: mode_t {
        switch self {
        case .owner: 0o600
        case .group: 0o660
        }
    }

    var group: gid_t? {
        switch self {
        case .owner: nil
        case .group(let gid): gid
        }
    }
}

/// A Unix-domain stream socket at `path` that hands each connection it
/// accepts to `serve`, and closes it when `serve` returns. The one listener
/// behind the control socket and the vhost-user sockets.
public final class UnixSocketServer: @unchecked Sendable {
    // @unchecked Sendable: `state` is guarded by its Mutex; the rest is fixed.

    /// How connections are served.
    public enum Serving: Sendable {
        /// On the accepting thread, one after another. `stop` lets the one
        /// being served finish (its answer still goes out).
        case oneAtATime
        /// Each on a thread of its own. `stop` shuts every open one down, so
        /// a peer that never hangs up cannot hold the server.
        case concurrently
        /// On a thread of its own, one peer at a time: a connection made
        /// while another is served waits up to `grace` for that one to end
        /// (a peer reconnecting as its old connection closes), and is then
        /// refused: `refused` hears of it, and it is closed. `stop` as `concurrently`.
        case exclusively(grace: Duration, refused: @Sendable () -> Void)

        /// Whether `stop` shuts down the connections being served.
        var endsConnectionsOnStop: Bool { if case .oneAtATime = self { false } else { true } }
    }

    public struct ListenError: Error, CustomStringConvertible, Sendable {
        public let path: String
        public let errno: Errno
        /// Who was to connect.
        public var access: SocketAccess = .owner
        public var description: String {
            switch errno {
            case .notPermitted where access.group != nil:
                "cannot give \(path) to group \(access.group!): this user may only give files to groups it belongs to; run as root, or name one of its groups"
            case .addressInUse: "cannot listen on \(path): another process is listening there; stop it, or choose another path"
            case .fileExists: "cannot listen on \(path): a file that is not a socket is in the way; move it, or choose another path"
            case .fileNameTooLong:
                "cannot listen on \(path): a Unix socket's path may be at most \(UnixSocketServer.maxPathBytes) bytes, and this one is \(path.utf8.count); choose a shorter one"
            default: "cannot listen on \(path): \(errno.description)"
            }
        }
    }

    /// The longest path a Unix socket may have (sun_path less its NUL).
    public static let maxPathBytes = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    public let path: String
    private let listener: Int32
    private let serving: Serving
    private let serve: @Sendable (Int32) -> Void
    private let state = Mutex<(listening: Bool, connections: [Int32])>((true, []))
    /// Entered by the accepting thread and by each connection's thread.
    private let stopped = DispatchGroup()

    /// Listens at `path` (a stale socket file there is replaced) and starts
    /// accepting on a thread of its own. By default only this user may
    /// connect (whoever connects drives a device or the system's drivers).
    public init(path: String, access: SocketAccess = .owner, serving: Serving, serve: @escaping @Sendable (_ connection: Int32) -> Void) throws(ListenError) {
        let fd: Int32
        do {
            fd = try System.listen(unixPath: path, access: access)
        } catch {
            throw ListenError(path: path, errno: error.errno, access: access)
        }
        self.path = path
        self.listener = fd
        self.serving = serving
        self.serve = serve
        stopped.enter()
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    private func acceptLoop() {
        defer { stopped.leave() }
        // nil once the listener is shut down.
        while let connection = System.accept(listener) {
            let admitted = state.withLock { s -> Bool in
                guard s.listening else { return false }
                s.connections.append(connection)
                return true
            }
            guard admitted else {
                System.close(connection)
                return
            }
            if case .exclusively(let grace, let refused) = serving, !isAlone(connection, waiting: grace) {
                // Refused, unless the server is stopping anyway (then it is only closed).
                if state.withLock({ $0.listening }) { refused() }
                state.withLock { s in
                    s.connections.removeAll { $0 == connection }
                    System.close(connection)
                }
                continue
            }
            switch serving {
            case .oneAtATime:
                finish(connection)
            case .concurrently, .exclusively:
                stopped.enter()
                Thread.detachNewThread { [self] in
                    finish(connection)
                    stopped.leave()
                }
            }
        }
    }

    /// Whether `connection` is, or within `grace` becomes, the only one open
    /// (false at once when the server stops meanwhile).
    private func isAlone(_ connection: Int32, waiting grace: Duration) -> Bool {
        let deadline = ContinuousClock.now + grace
        while true {
            let (listening, others) = state.withLock { ($0.listening, $0.connections.count - 1) }
            guard listening else { return false }
            if others == 0 { return true }
            guard ContinuousClock.now < deadline else { return false }
            usleep(5_000)
        }
    }

    private func finish(_ connection: Int32) {
        serve(connection)
        // Forgotten and closed under the lock `stop` shuts connections down
        // under: never a shutdown of a number already reused.
        state.withLock { s in
            s.connections.removeAll { $0 == connection }
            System.close(connection)
        }
    }

    /// Stops listening, ends open connections as `serving` says, waits for
    /// every thread and removes the socket file. Idempotent.
    public func stop() {
        let first = state.withLock { s -> Bool in
            guard s.listening else { return false }
            s.listening = false
            // Shut down, not close: whoever serves a connection closes it.
            if serving.endsConnectionsOnStop {
                for connection in s.connections { System.shutdown(connection) }
            }
            return true
        }
        guard first else { return }
        System.shutdown(listener)
        stopped.wait()
        System.close(listener)
        System.unlink(path)
    }

    deinit { stop() }
}
