import Machine

/// A vhost-user socket a VMM connects to (QEMU's `-chardev socket,path=`):
/// each connection gets a back-end of its own from `makeBackend` and is
/// served on a thread of its own (one at a time, if `exclusive`); `ended`
/// hears why each one ended. A
/// connection that misbehaves ends alone; `stop` ends them all.
public final class VhostUserServer: Sendable {
    public typealias ListenError = UnixSocketServer.ListenError

    private let socket: UnixSocketServer
    public var path: String { socket.path }

    /// - Parameter exclusive: serve one VMM at a time (a disk: two VMs
    ///   would share its blocks); a VMM connecting while another is served
    ///   is refused, and `ended` hears `.busy`.
    /// - Parameter access: who may connect (by default only this user).
    public init(path: String, access: SocketAccess = .owner, exclusive: Bool = false, makeBackend: @escaping @Sendable () -> VhostUserBackend,
                ended: @escaping @Sendable (VhostUserConnection.End) -> Void = { _ in }) throws(ListenError)
    {
        let serving: UnixSocketServer.Serving = exclusive ? .exclusively(grace: Self.reconnectGrace, refused: { ended(.busy) }) : .concurrently
        socket = try UnixSocketServer(path: path, access: access, serving: serving) { connection in
            ended(VhostUserConnection.serve(socket: connection, backend: makeBackend()))
        }
    }

    /// How long a VMM connecting to an exclusive socket waits for the one
    /// before it to go: a VMM restarting or reconnecting finds its old
    /// connection still being torn down.
    public static let reconnectGrace: Duration = .seconds(2)

    /// Stops listening, ends every connection and waits for their threads;
    /// removes the socket file.
    public func stop() { socket.stop() }
}
