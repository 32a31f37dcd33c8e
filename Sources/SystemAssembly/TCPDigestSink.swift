import ExternalVMM
import Foundation

/// The outside's end of a guest's TCP transfer: busybox `nc` listening in a
/// network namespace, handing what arrives to `sha256sum`. The digest
/// appears in a file when the sender closes; nothing is kept but it.
public final class TCPDigestSink {
    public let port: Int
    private let process: SupervisedProcess
    private let digestFile: String

    /// Listens on `port` inside `namespace`, with `busybox` (the guest image's,
    /// so that the host needs no netcat of its own). `directory` holds the digest.
    public init(namespace: NetworkNamespace, port: Int, busybox: String, directory: String) throws {
        self.port = port
        digestFile = directory + "/received-\(port).sha256"
        let partial = digestFile + ".part"
        process = try SupervisedProcess.start("/usr/bin/env", [
            "ip", "netns", "exec", namespace.name, busybox, "nc", "-l", "-p", "\(port)",
            "-e", busybox, "sh", "-c", "'\(busybox)' sha256sum > '\(partial)' && mv '\(partial)' '\(digestFile)'",
        ]).get()
    }

    /// The SHA-256 of what arrived, once the sender closed (nil if nothing
    /// did within `timeout` seconds).
    public func digest(timeout: TimeInterval) -> String? {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while !FileManager.default.fileExists(atPath: digestFile) && Date() < deadline { usleep(10_000) }
        return (try? String(contentsOfFile: digestFile, encoding: .utf8))?.split(separator: " ").first.map(String.init)
    }

    public func stop() { process.stop() }

    deinit { stop() }
}
