import CSystemShims
import Foundation
import Glibc
import Machine
import OyakoTestSupport
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

    @Test func aFileThatIsNoSocketIsLeftAndNamed() throws {
        let path = Fixtures.temporaryDirectory("sock") + "/notes.txt"
        #expect(FileManager.default.createFile(atPath: path, contents: Data("keep me".utf8)))
        let error = #expect(throws: UnixSocketServer.ListenError.self) { try Self.server(path) }
        #expect(error?.description.contains("a file that is not a socket is in the way") == true, "\(String(describing: error))")
        #expect(FileManager.default.contents(atPath: path) == Data("keep me".utf8), "the file is untouched")
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
        let stale = oy_shim_unix_listen(path, 0o600)
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
