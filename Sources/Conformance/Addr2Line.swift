import DriverHost
import Foundation
import SDKTools

/// Source lines for reported frames, from binutils' addr2line: where it is
/// installed and the object has debug information (what `oyako driver
/// build` gives), file:line; elsewhere nothing, and frames keep their
/// function names.
public enum Addr2Line {
    public static let sources: SourceLines = { object, offsets in
        let unique = Array(Set(offsets))
        // A return address points after the call: look up the call.
        let result = ProcessRunner.run("addr2line", ["-e", object] + unique.map { "0x" + String($0 &- ($0 > 0 ? 1 : 0), radix: 16) }, timeout: 10)
        guard result.status == 0 else { return [:] }
        let answers = result.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var out: [UInt64: String] = [:]
        for (offset, answer) in zip(unique, answers) where !answer.hasPrefix("??") && !answer.hasPrefix(":") && !answer.isEmpty {
            out[offset] = URL(fileURLWithPath: answer).lastPathComponent
        }
        return out
    }
}
