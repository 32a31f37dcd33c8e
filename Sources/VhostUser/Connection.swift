import CSystemShims
import Foundation
import Glibc

/// One front-end's connection to a back-end: messages (and the descriptors
/// that come with them) are read from the Unix socket, handed to the
/// back-end, and its replies written back. It ends at the front-end's end of
/// file or at the first message refused — with the reason, so the root can
/// log it; the root and other connections go on.
public enum VhostUserConnection {
    /// Why a connection ended.
    public enum End: Error, Equatable, CustomStringConvertible, Sendable {
        /// The front-end closed its end (a VM shut down or died).
        case frontEndClosed
        /// The front-end sent something refused.
        case refused(VhostUserError)
        /// The socket failed (errno).
        case socket(Int32)
        /// Another front-end is being served on this socket, and a device
        /// serves one VMM at a time: the connection was closed unserved.
        case busy

        public var description: String {
            switch self {
            case .frontEndClosed: "the front-end closed the connection"
            case .refused(let error): "refused: \(error)"
            case .socket(let e): "socket error: \(String(cString: strerror(e)))"
            case .busy: "refused unserved: another VMM is connected to this device, and one device serves one VMM at a time"
            }
        }
    }

    /// Most descriptors one message carries (a memory table of 8 regions).
    static let maxFDs = 8

    /// Serves `socket` until it ends. Blocking: run it on a thread of its
    /// own. The caller closes the socket afterwards.
    public static func serve(socket: Int32, backend: VhostUserBackend) -> End {
        while true {
            let message: VhostUserMessage, fds: [Int32]
            do {
                guard let received = try receive(socket) else { return .frontEndClosed }
                (message, fds) = received
            } catch {
                return error
            }
            let reply: VhostUserMessage?
            do {
                reply = try backend.handle(message, fds: fds)
            } catch {
                return .refused(error)
            }
            if let reply, !send(socket, reply) { return .socket(oy_shim_errno()) }
        }
    }

    /// One message and its descriptors; nil at a clean end of file.
    static func receive(_ socket: Int32) throws(End) -> (VhostUserMessage, [Int32])? {
        var header = [UInt8](repeating: 0, count: VhostUserMessage.headerSize)
        var fds = [Int32](repeating: -1, count: maxFDs)
        var count: Int32 = 0, truncated: Int32 = 0
        let n = header.withUnsafeMutableBytes { oy_shim_recv_fds(socket, $0.baseAddress, $0.count, &fds, Int32(maxFDs), &count, &truncated) }
        let received = Array(fds.prefix(Int(count)))
        func fail(_ end: End) -> End {
            for fd in received { _ = Glibc.close(fd) }
            return end
        }
        if n == 0 {
            _ = fail(.frontEndClosed)  // closes any descriptors
            return nil
        }
        guard n > 0 else { throw fail(.socket(oy_shim_errno())) }
        guard truncated == 0 else { throw fail(.refused(.fileDescriptors(request: "a message", expected: "at most \(maxFDs)", got: maxFDs + 1))) }
        do {
            if n < header.count { try readExactly(socket, into: &header, from: n) }
            let size = try VhostUserMessage.payloadSize(ofHeader: header)
            var payload = [UInt8](repeating: 0, count: size)
            if size > 0 { try readExactly(socket, into: &payload, from: 0) }
            return (try VhostUserMessage.decode(header: header, payload: payload), received)
        } catch let error as VhostUserError {
            throw fail(.refused(error))
        } catch let error as End {
            throw fail(error)
        } catch {
            throw fail(.socket(EIO))
        }
    }

    private static func readExactly(_ socket: Int32, into buffer: inout [UInt8], from start: Int) throws {
        var offset = start
        while offset < buffer.count {
            let n = buffer.withUnsafeMutableBytes { read(socket, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw n == 0 ? End.refused(.truncated(expected: buffer.count, got: offset)) : End.socket(errno) }
            offset += n
        }
    }

    /// Writes `message` (and, from a front-end, its descriptors).
    @discardableResult
    public static func send(_ socket: Int32, _ message: VhostUserMessage, fds: [Int32] = []) -> Bool {
        let bytes = message.encoded()
        var sent = bytes.withUnsafeBytes { oy_shim_send_fds(socket, $0.baseAddress, $0.count, fds, Int32(fds.count)) }
        guard sent > 0 else { return false }
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { write(socket, $0.baseAddress! + sent, $0.count - sent) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            sent += n
        }
        return true
    }
}
