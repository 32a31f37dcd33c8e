import Glibc
import Synchronization

/// Copies every line a driver logs through `host->log` to a file descriptor
/// as it is logged, one `write(2)` per line, so that a process that dies
/// right after still leaves its driver's last words behind. The conformance
/// worker mirrors to its standard error, where the suite collects them.
///
/// Lines look like `\u{1}oylog LEVEL DRIVER[@DEVICE]: MESSAGE` (the message
/// with newlines folded to spaces).
public enum DriverLogMirror {
    /// The line prefix that marks a mirrored line.
    public static let prefix = "\u{1}oylog "
    private static let descriptor = Atomic<Int32>(-1)

    /// Starts mirroring to `fd` (nil: stop).
    public static func mirror(to fd: Int32?) { descriptor.store(fd ?? -1, ordering: .releasing) }

    static func record(level: LogLevel, driver: String, device: String?, message: String) {
        let fd = descriptor.load(ordering: .acquiring)
        guard fd >= 0 else { return }
        let text = message.map { $0.isNewline ? " " : $0 }
        var line = Array("\(prefix)\(level) \(driver)\(device.map { "@\($0)" } ?? ""): \(String(text))\n".utf8)
        line.withUnsafeMutableBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if n <= 0 { break }
                offset += n
            }
        }
    }

    /// The mirrored lines in `text`, without their prefix, in order.
    public static func lines(in text: String) -> [String] {
        text.split(separator: "\n").filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
    }
}
