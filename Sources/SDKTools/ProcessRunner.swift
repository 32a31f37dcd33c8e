import Foundation
import Glibc

/// Runs a tool and collects its output. Reads with an EINTR-safe loop (the
/// Foundation convenience traps on EINTR) and drains stdout and stderr on
/// separate threads so that neither pipe can fill and stall the child.
public enum ProcessRunner {
    public struct Result: Sendable {
        public let status: Int32
        public let stdout: String
        public let stderr: String
        /// The signal that ended the process, if one did.
        public var signal: Int32? = nil
        /// The process outlived its timeout and was killed.
        public var timedOut = false
        /// stdout followed by stderr.
        public var output: String { stdout + stderr }
    }

    /// Runs `tool` (looked up on PATH unless it contains a slash).
    public static func run(_ tool: String, _ arguments: [String], environment: [String: String]? = nil, timeout: Double? = nil,
                           currentDirectory: String? = nil) -> Result {
        let process = Process()
        if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
        if tool.contains("/") {
            process.executableURL = URL(fileURLWithPath: tool)
            process.arguments = arguments
        } else {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = [tool] + arguments
        }
        if let environment { process.environment = environment }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            return Result(status: 127, stdout: "", stderr: "cannot run \(tool): \(error.localizedDescription)")
        }
        // A watchdog kills the child when it outlives its timeout.
        let finished = DispatchSemaphore(value: 0)
        let killed = Killed()
        if let timeout {
            let pid = process.processIdentifier
            Thread.detachNewThread {
                if finished.wait(timeout: .now() + timeout) == .timedOut {
                    killed.set()
                    kill(pid, SIGKILL)
                }
            }
        }
        let errorText = Drain(err.fileHandleForReading.fileDescriptor)
        let outputText = readAll(out.fileHandleForReading.fileDescriptor)
        process.waitUntilExit()
        finished.signal()
        var result = Result(status: process.terminationStatus, stdout: outputText, stderr: errorText.wait())
        if process.terminationReason == .uncaughtSignal { result.signal = process.terminationStatus }
        result.timedOut = killed.value
        return result
    }

    static func readAll(_ fd: Int32) -> String {
        var data = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                data.append(contentsOf: chunk[0..<n])
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                break
            }
        }
        return String(decoding: data, as: UTF8.self)
    }

    private final class Killed: @unchecked Sendable {
        // @unchecked Sendable: guarded by `lock`.
        private let lock = NSLock()
        private var flag = false
        func set() { lock.withLock { flag = true } }
        var value: Bool { lock.withLock { flag } }
    }

    /// Reads a descriptor to its end on a thread of its own.
    private final class Drain: @unchecked Sendable {
        // @unchecked Sendable: `text` is written before `done` is signalled
        // and read only after waiting on it.
        private var text = ""
        private let done = DispatchSemaphore(value: 0)

        init(_ fd: Int32) {
            Thread.detachNewThread { [self] in
                text = ProcessRunner.readAll(fd)
                done.signal()
            }
        }

        func wait() -> String {
            done.wait()
            return text
        }
    }
}
