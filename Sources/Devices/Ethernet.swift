import CSystemShims
import Foundation
import Glibc
import Machine
import SystemPackage

/// One end of an Ethernet link: a NIC model.
public protocol WireEnd: AnyObject, Sendable {
    /// A frame arrived from the other end.
    func deliver(_ frame: [UInt8])
    /// Carrier came or went.
    func setCarrier(_ up: Bool)
}

/// What a NIC transmits into.
public protocol Wire: AnyObject, Sendable {
    func send(_ frame: [UInt8], from end: any WireEnd)
}

/// Two NICs wired back to back.
public final class Crossover: Wire, @unchecked Sendable {
    // @unchecked Sendable: the ends are set once in init.
    private weak var a: (any WireEnd)?
    private weak var b: (any WireEnd)?

    public init(_ a: any WireEnd, _ b: any WireEnd) {
        self.a = a
        self.b = b
    }

    public func send(_ frame: [UInt8], from end: any WireEnd) {
        let other = end === a ? b : a
        other?.deliver(frame)
    }

    /// Plugs or pulls the cable: both ends see carrier change.
    public func setConnected(_ up: Bool) {
        a?.setCarrier(up)
        b?.setCarrier(up)
    }
}

/// Why a TAP interface could not be opened.
public struct TAPError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}

/// A Linux TAP interface as the far end of a NIC: frames the NIC sends come
/// out of the interface into the host's network stack (in whatever network
/// namespace the interface is moved to), and frames sent to the interface
/// arrive at the NIC. A reader thread waits on the descriptor.
public final class TAPWire: Wire, @unchecked Sendable {
    // @unchecked Sendable: `end` is set once; the descriptor is used by one
    // reader thread and serialised writes.
    public let name: String
    private let fd: Int32
    private let stopPipe: (read: Int32, write: Int32)
    private weak var end: (any WireEnd)?
    private let writeLock = NSLock()
    private let done = DispatchSemaphore(value: 0)

    /// Whether TAP interfaces can be made here (root, /dev/net/tun); nil, or
    /// the reason they cannot.
    public static var unavailableReason: String? {
        if geteuid() != 0 { return "not running as root (TAP needs CAP_NET_ADMIN)" }
        if access("/dev/net/tun", R_OK | W_OK) != 0 { return "/dev/net/tun is missing or not accessible" }
        return nil
    }

    /// Creates TAP interface `name` (down, in this process's namespace).
    public init(name: String) throws(TAPError) {
        let fd = oy_shim_tap_open(name)
        guard fd >= 0 else { throw TAPError(message: "cannot create TAP interface \(name): \(Errno(rawValue: errno))") }
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else {
            close(fd)
            throw TAPError(message: "pipe: \(Errno(rawValue: errno))")
        }
        self.name = name
        self.fd = fd
        self.stopPipe = (pipeFDs[0], pipeFDs[1])
    }

    deinit {
        close(fd)
        close(stopPipe.read)
        close(stopPipe.write)
    }

    /// Connects the NIC and starts delivering frames to it.
    public func connect(_ nic: any WireEnd) {
        end = nic
        nic.setCarrier(true)
        startThread(named: "tap-\(name)") { [self] in readLoop() }
    }

    /// Stops the reader thread; the interface disappears with the object.
    public func stop() {
        var byte: UInt8 = 1
        _ = write(stopPipe.write, &byte, 1)
        done.wait()
        end?.setCarrier(false)
    }

    public func send(_ frame: [UInt8], from end: any WireEnd) {
        writeLock.withLock {
            _ = frame.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        }
    }

    private func readLoop() {
        var buffer = [UInt8](repeating: 0, count: 65536)
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: stopPipe.read, events: Int16(POLLIN), revents: 0)]
        while true {
            let ready = poll(&fds, 2, -1)
            if ready < 0 && errno == EINTR { continue }
            if ready < 0 || fds[1].revents != 0 { break }
            if fds[0].revents & Int16(POLLIN) != 0 {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 { end?.deliver(Array(buffer[0..<n])) }
                if n < 0 && errno != EINTR && errno != EAGAIN { break }
            } else if fds[0].revents != 0 {
                break
            }
        }
        done.signal()
    }
}
