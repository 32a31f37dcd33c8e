import CSystemShims
import Foundation
import Glibc
@testable import Machine
import OyakoTestSupport
import SDKTools
import Synchronization
import Testing

/// The listener behind the control and vhost-user sockets: what it may
/// replace at its path, and who may connect.
@Suite struct UnixSocketServerTests {
    static func server(_ path: String) throws(UnixSocketServer.ListenError) -> UnixSocketServer {
        try UnixSocketServer(path: path, serving: .concurrently) { _ in }
    }

    @Test func onlyItsOwnerMayConnect() throws {
        let path = Fixtures.temporaryDirectory("sock") + "/s.sock"
        let server = try Self.server(path)
        defer { server.stop() }
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & S_IFMT == S_IFSOCK && info.st_mode & 0o777 == 0o600, "mode \(String(info.st_mode & 0o777, radix: 8))")
    }

    /// A group may be let in (a VMM running as another user): the socket is
    /// that group's, mode 0660, and a member who is not its owner connects,
    /// where an owner-only socket refuses them.
    @Test func aGroupsMembersMayConnect() throws {
        let folder = Fixtures.temporaryDirectory("sock")
        let group = try #require(getgrnam("daemon") ?? getgrgid(getgid())).pointee.gr_gid
        let shared = try UnixSocketServer(path: folder + "/vm.sock", access: .group(group), serving: .concurrently) { _ in }
        defer { shared.stop() }
        let own = try Self.server(folder + "/own.sock")
        defer { own.stop() }
        var info = stat()
        #expect(stat(shared.path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o660 && info.st_gid == group, "mode \(String(info.st_mode & 0o777, radix: 8)), group \(info.st_gid)")

        // As nobody, in that group only: what a VMM run as another user meets.
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"), FileManager.default.isExecutableFile(atPath: "/usr/bin/perl") else {
            return  // connecting as another user needs root, setpriv and perl; the mode and group are checked above
        }
        _ = chmod(folder, 0o755)
        func connectAsAnotherUser(_ path: String) -> String {
            let script = "use IO::Socket::UNIX; print IO::Socket::UNIX->new(Peer => $ARGV[0]) ? \"connected\" : \"refused: $!\""
            return ProcessRunner.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=\(group)", "--clear-groups", "/usr/bin/perl", "-e", script, path]).stdout
        }
        #expect(connectAsAnotherUser(shared.path) == "connected")
        #expect(connectAsAnotherUser(own.path) == "refused: Permission denied")
    }

    @Test func anUnknownGroupForASocketIsNamedInTheError() {
        let error = UnixSocketServer.ListenError(path: "/s/vda.sock", errno: .notPermitted, access: .group(4242))
        #expect(error.description.contains("cannot give /s/vda.sock to group 4242"), "\(error)")
    }

    @Test func aFileThatIsNoSocketIsLeftAndNamed() throws {
        let path = Fixtures.temporaryDirectory("sock") + "/notes.txt"
        #expect(FileManager.default.createFile(atPath: path, contents: Data("keep me".utf8)))
        let error = #expect(throws: UnixSocketServer.ListenError.self) { try Self.server(path) }
        #expect(error?.description.contains("a file that is not a socket is in the way") == true, "\(String(describing: error))")
        #expect(FileManager.default.contents(atPath: path) == Data("keep me".utf8), "the file is untouched")
    }

    /// One peer at a time: the second waits out the grace, then is refused;
    /// stopping meanwhile ends the wait at once, and refuses no one.
    @Test func anExclusiveServerRefusesASecondPeerAndStopsWithoutWaitingTheGrace() throws {
        let path = Fixtures.temporaryDirectory("sock") + "/x.sock"
        let refusals = Mutex(0)
        let server = try UnixSocketServer(path: path, serving: .exclusively(grace: .seconds(3), refused: { refusals.withLock { $0 += 1 } })) { fd in
            var byte: UInt8 = 0
            _ = read(fd, &byte, 1)  // served until the peer hangs up or the server stops
        }
        let first = oy_shim_unix_connect(path), second = oy_shim_unix_connect(path)
        #expect(first >= 0 && second >= 0)
        var byte: UInt8 = 0
        #expect(read(second, &byte, 1) == 0, "the second peer is closed unserved")
        #expect(refusals.withLock { $0 } == 1)
        close(second)

        let third = oy_shim_unix_connect(path)
        usleep(50_000)  // the third now waits for the first to go
        let started = ContinuousClock.now
        server.stop()
        // Far from the 3 s grace either way, so a loaded machine does not decide it.
        #expect(ContinuousClock.now - started < .milliseconds(1500), "stop did not wait out the grace")
        #expect(refusals.withLock { $0 } == 1, "a peer closed by stop is not counted as refused")
        close(first)
        close(third)
    }

    @Test func aPathTooLongForASocketSaysTheLimit() throws {
        let path = Fixtures.temporaryDirectory("sock") + "/" + String(repeating: "s", count: 120) + ".sock"
        let error = #expect(throws: UnixSocketServer.ListenError.self) { try Self.server(path) }
        #expect(error?.description.contains("may be at most \(UnixSocketServer.maxPathBytes) bytes, and this one is \(path.utf8.count)") == true, "\(String(describing: error))")
        #expect(UnixSocketServer.maxPathBytes == 107)
    }

    @Test func aLiveSocketIsNotTakenOverButAStaleOneIsReplaced() throws {
        let path = Fixtures.temporaryDirectory("sock") + "/s.sock"
        let first = try Self.server(path)
        let error = #expect(throws: UnixSocketServer.ListenError.self) { try Self.server(path) }
        #expect(error?.description.contains("another process is listening there") == true, "\(String(describing: error))")
        let fd = oy_shim_unix_connect(path)
        #expect(fd >= 0, "the first server still has its socket")
        close(fd)
        first.stop()

        // A socket file whose listener died without removing it.
        let stale = oy_shim_unix_listen(path, 0o600, -1)
        #expect(stale >= 0)
        close(stale)
        #expect(FileManager.default.fileExists(atPath: path))
        let second = try Self.server(path)
        defer { second.stop() }
        let again = oy_shim_unix_connect(path)
        #expect(again >= 0, "the new server listens where the stale socket was")
        close(again)
    }
}
