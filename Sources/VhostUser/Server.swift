import Machine

/// A vhost-user socket a VMM connects to (QEMU's `-chardev socket,path=`):
/// each connection gets a back-end of its own from `makeBackend` and is
/// served on a thread of its own; `ended` hears why each one ended. A
/// connection that misbehaves ends alone; `stop` ends them all.
public final class VhostUserServer: Sendable {
    public typealias ListenError = UnixSocketServer.ListenError

    private let socket: UnixSocketServer
    public var path: String { socket.path }

    public init(path: String, makeBackend: @escaping @Sendable () -> VhostUserBackend,
                ended: @escaping @Sendable (VhostUserConnection.End) -> Void = { _ in }) throws(ListenError)
    {
        socket = try UnixSocketServer(path: path, serving: .concurrently) { connection in
            ended(VhostUserConnection.serve(socket: connection, backend: makeBackend()))
        }
    }

    /// Stops listening, ends every connection and waits for their threads;
    /// removes the socket file.
    public func stop() { socket.stop() }
}
