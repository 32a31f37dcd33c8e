import Foundation
import SDKTools

/// Debian's packages, fetched the way the issue of a guest image asks:
/// `apt-get download` (no install, no root needed when the package lists
/// are there) and `dpkg -x`; nothing else reaches the network.
enum DebianPackages {
    /// Downloads `package` into `directory` unless a .deb of it is there,
    /// and returns the .deb's path. Refreshes the package lists once (as
    /// root, unless `refresh` is false) when apt does not know the package.
    static func download(_ package: String, into directory: String, refresh: Bool = true, progress: (String) -> Void) throws(GuestImageError) -> String {
        if let cached = find(package, in: directory) { return cached }
        progress("downloading \(package) with apt-get")
        var result = ProcessRunner.run("apt-get", ["download", "-q", package], timeout: 600, currentDirectory: directory)
        if result.status != 0, refresh, getuid() == 0, result.output.contains("Unable to locate") || result.output.contains("has no installation candidate") {
            progress("apt does not know \(package): refreshing the package lists (apt-get update)")
            _ = ProcessRunner.run("apt-get", ["update", "-qq"], timeout: 600)
            result = ProcessRunner.run("apt-get", ["download", "-q", package], timeout: 600, currentDirectory: directory)
        }
        guard result.status == 0, let path = find(package, in: directory) else {
            throw .download(package: package, output: result.output.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        return path
    }

    /// A control field of a .deb ("Version", "Depends").
    static func field(_ name: String, of deb: String) throws(GuestImageError) -> String {
        let result = ProcessRunner.run("dpkg-deb", ["-f", deb, name], timeout: 60)
        guard result.status == 0 else { throw .unpack(deb: deb, output: result.output) }
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The package's md5sums control file: path (without leading /) to digest.
    static func md5sums(of deb: String, scratch: String) throws(GuestImageError) -> [String: String] {
        let control = scratch + "/control"
        try? FileManager.default.removeItem(atPath: control)
        let result = ProcessRunner.run("dpkg-deb", ["-e", deb, control], timeout: 60)
        guard result.status == 0, let text = try? String(contentsOfFile: control + "/md5sums", encoding: .utf8) else {
            throw .unpack(deb: deb, output: result.output)
        }
        try? FileManager.default.removeItem(atPath: control)
        var sums: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
            if parts.count == 2 { sums[parts[1].trimmingCharacters(in: .whitespaces)] = String(parts[0]) }
        }
        return sums
    }

    /// `dpkg -x`: the package's files under `directory`.
    static func extract(_ deb: String, to directory: String) throws(GuestImageError) {
        let result = ProcessRunner.run("dpkg", ["-x", deb, directory], timeout: 600)
        guard result.status == 0 else { throw .unpack(deb: deb, output: result.output) }
    }

    private static func find(_ package: String, in directory: String) -> String? {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasPrefix(package + "_") && $0.hasSuffix(".deb") }.sorted().last.map { directory + "/" + $0 }
    }
}
