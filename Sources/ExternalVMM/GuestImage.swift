import Crypto
import Foundation
import Glibc

/// Why a guest image could not be made.
public enum GuestImageError: Error, CustomStringConvertible, Sendable, Equatable {
    case download(package: String, output: String)
    case unpack(deb: String, output: String)
    /// The kernel package does not say which image package it stands for.
    case kernelPackage(String)
    /// The kernel file differs from what its package says it holds.
    case kernelDigest(path: String, expected: String, found: String)
    case missingModule(String)
    case io(String)

    public var description: String {
        switch self {
        case .download(let package, let output):
            "cannot download Debian's \(package) with apt-get download (is this a Debian machine with its package lists? "
                + "`apt-get update` refreshes them): \(output)"
        case .unpack(let deb, let output): "cannot unpack \(deb) with dpkg: \(output)"
        case .kernelPackage(let depends): "linux-image-cloud-amd64 names no kernel image package (Depends: \(depends))"
        case .kernelDigest(let path, let expected, let found): "\(path) is not the file its package holds (MD5 \(found), package says \(expected))"
        case .missingModule(let name): "the kernel package has no module \(name)"
        case .io(let what): what
        }
    }
}

/// A Linux guest made from Debian's packages, unmodified: the kernel of
/// `linux-image-cloud-amd64` and an initramfs with `busybox-static`, the
/// virtio modules (loaded in dependency order) and an init script of ours
/// that runs the job the VMM hands in (QEMU's fw_cfg `opt/oyako/job`) and
/// reports over the serial console in lines `OYAKO key value`.
public struct GuestImage: Codable, Sendable, Equatable {
    public struct Kernel: Codable, Sendable, Equatable {
        public let package: String
        public let version: String
        /// What `uname -r` says.
        public let release: String
        /// SHA-256 of the vmlinuz, as it is in the package.
        public let sha256: String
    }

    public let kernel: Kernel
    public let busyboxVersion: String
    public let kernelPath: String
    public let initramfsPath: String
    /// The same busybox, for the host's end of a guest's checks (a TCP
    /// listener in a test's network namespace).
    public let busyboxPath: String
    /// Which init and module list built it: a change rebuilds the initramfs.
    let recipe: String

    public static let kernelMetaPackage = "linux-image-cloud-amd64"
    public static let busyboxPackage = "busybox-static"
    /// What the guest needs beyond the kernel's built-ins (ext4, the serial
    /// port): virtio over PCI, its block, net and rng drivers, and fw_cfg for the job.
    public static let modules = ["virtio_pci", "virtio_blk", "virtio_net", "virtio_rng", "qemu_fw_cfg"]
    /// Where the job the VMM hands in appears in the guest.
    public static let jobPath = "/sys/firmware/qemu_fw_cfg/by_name/opt/oyako/job/raw"

    /// `$OYAKO_GUEST_CACHE`, else `$XDG_CACHE_HOME/oyako/guest`, else `~/.cache/oyako/guest`.
    public static var defaultCache: String {
        let environment = ProcessInfo.processInfo.environment
        if let explicit = environment["OYAKO_GUEST_CACHE"], !explicit.isEmpty { return explicit }
        let base = environment["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory() + "/.cache"
        return base + "/oyako/guest"
    }

    /// The image in `cache`, made first if it is not there (downloads the
    /// two packages, about 27 MB, once). Several processes may ask at once:
    /// one builds, the others wait for it.
    public static func prepare(cache: String = defaultCache, progress: (String) -> Void = { _ in }) throws(GuestImageError) -> GuestImage {
        do {
            try FileManager.default.createDirectory(atPath: cache + "/debs", withIntermediateDirectories: true)
        } catch {
            throw .io("cannot create the guest cache \(cache): \(error.localizedDescription)")
        }
        let lock = open(cache + "/.lock", O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard lock >= 0 else { throw .io("cannot lock \(cache)/.lock: \(String(cString: strerror(errno)))") }
        defer { close(lock) }
        while flock(lock, LOCK_EX) != 0 && errno == EINTR {}
        if let cached = cached(in: cache) {
            return cached
        }
        return try build(in: cache, progress: progress)
    }

    /// The cached image, if it is complete, of this recipe, and its kernel
    /// still the package's file.
    static func cached(in cache: String) -> GuestImage? {
        guard let data = FileManager.default.contents(atPath: cache + "/image.json"),
            let image = try? JSONDecoder().decode(GuestImage.self, from: data), image.recipe == recipe,
            FileManager.default.fileExists(atPath: image.initramfsPath), FileManager.default.isExecutableFile(atPath: image.busyboxPath),
            let kernel = FileManager.default.contents(atPath: image.kernelPath), sha256(kernel) == image.kernel.sha256
        else { return nil }
        return image
    }

    private static func build(in cache: String, progress: (String) -> Void) throws(GuestImageError) -> GuestImage {
        let debs = cache + "/debs", scratch = cache + "/unpacked"
        let meta = try DebianPackages.download(kernelMetaPackage, into: debs, progress: progress)
        let depends = try DebianPackages.field("Depends", of: meta)
        guard let package = depends.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) })
            .compactMap({ $0.split(separator: " ").first.map(String.init) }).first(where: { $0.hasPrefix("linux-image-") })
        else { throw .kernelPackage(depends) }
        let kernelDeb = try DebianPackages.download(package, into: debs, progress: progress)
        let busyboxDeb = try DebianPackages.download(busyboxPackage, into: debs, progress: progress)

        progress("unpacking \(package) and \(busyboxPackage) (dpkg -x)")
        try? FileManager.default.removeItem(atPath: scratch)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try DebianPackages.extract(kernelDeb, to: scratch)
        try DebianPackages.extract(busyboxDeb, to: scratch)
        let release = try kernelRelease(in: scratch)
        let vmlinuz = "boot/vmlinuz-\(release)"
        guard let kernelBytes = FileManager.default.contents(atPath: scratch + "/" + vmlinuz) else { throw .io("\(package) has no /\(vmlinuz)") }
        // The kernel is used as the package ships it: checked against the package's own digest.
        let sums = try DebianPackages.md5sums(of: kernelDeb, scratch: cache)
        let md5 = Insecure.MD5.hash(data: kernelBytes).map { String(format: "%02x", $0) }.joined()
        guard sums[vmlinuz] == md5 else { throw .kernelDigest(path: vmlinuz, expected: sums[vmlinuz] ?? "nothing", found: md5) }

        progress("making the initramfs (busybox, \(modules.joined(separator: ", ")))")
        let initramfs = try initramfs(root: scratch, release: release)
        let image = GuestImage(kernel: Kernel(package: package, version: try DebianPackages.field("Version", of: kernelDeb), release: release,
                                              sha256: sha256(kernelBytes)),
                               busyboxVersion: try DebianPackages.field("Version", of: busyboxDeb),
                               kernelPath: cache + "/vmlinuz-\(release)", initramfsPath: cache + "/initramfs-oyako.cpio",
                               busyboxPath: cache + "/busybox", recipe: recipe)
        do {
            try? FileManager.default.removeItem(atPath: image.busyboxPath)
            try FileManager.default.copyItem(atPath: scratch + "/bin/busybox", toPath: image.busyboxPath)
            try kernelBytes.write(to: URL(fileURLWithPath: image.kernelPath), options: .atomic)
            try initramfs.write(to: URL(fileURLWithPath: image.initramfsPath), options: .atomic)
            try JSONEncoder().encode(image).write(to: URL(fileURLWithPath: cache + "/image.json"), options: .atomic)
        } catch {
            throw .io("cannot write the guest image to \(cache): \(error.localizedDescription)")
        }
        progress("guest image ready: \(package) \(image.kernel.version), busybox \(image.busyboxVersion)")
        return image
    }

    private static func kernelRelease(in root: String) throws(GuestImageError) -> String {
        let releases = (try? FileManager.default.contentsOfDirectory(atPath: root + "/lib/modules")) ?? []
        guard releases.count == 1 else { throw .io("expected one kernel release under lib/modules, found \(releases)") }
        return releases[0]
    }

    /// The archive: busybox as /bin/sh, the modules in load order, /init.
    private static func initramfs(root: String, release: String) throws(GuestImageError) -> Data {
        let order = try KernelModules(root: root + "/lib/modules/" + release).loadOrder(for: modules)
        guard let busybox = FileManager.default.contents(atPath: root + "/bin/busybox") else { throw .io("busybox-static has no /bin/busybox") }
        var archive = CpioArchive()
        for directory in ["bin", "dev", "proc", "sys", "tmp", "mnt", "etc/oyako", "lib/modules"] { archive.addDirectories(directory) }
        archive.add("dev/console", .characterDevice(major: 5, minor: 1))
        archive.add("bin/busybox", .file(busybox, executable: true))
        archive.add("bin/sh", .symlink("busybox"))
        for module in order {
            archive.add("lib/modules/\(module.name).ko", .file(module.contents, executable: false))
        }
        archive.add("etc/oyako/modules", .file(Data((order.map(\.name).joined(separator: "\n") + "\n").utf8), executable: false))
        archive.add("init", .file(Data(initScript.utf8), executable: true))
        return archive.encoded()
    }

    static func sha256(_ data: Data) -> String { SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined() }

    static var recipe: String { sha256(Data((initScript + modules.joined(separator: ",")).utf8)) }

    /// PID 1 in the guest. Reports `OYAKO boot`, each module that failed,
    /// then runs the job and reports `OYAKO done <status>`; a job that
    /// touches /tmp/reboot has the guest reboot instead of powering off.
    static let initScript = """
        #!/bin/sh
        # Oyako's guest init: Debian's kernel and busybox, unmodified.
        export PATH=/bin
        /bin/busybox --install -s /bin
        mount -t proc proc /proc
        mount -t sysfs sysfs /sys
        mount -t devtmpfs devtmpfs /dev
        echo "OYAKO boot $(uname -r)"
        for module in $(cat /etc/oyako/modules); do
            insmod /lib/modules/$module.ko || echo "OYAKO module-failed $module"
        done
        if [ -r \(jobPath) ]; then
            cat \(jobPath) > /tmp/job.sh
            sh /tmp/job.sh
            status=$?
        else
            echo "OYAKO job none"
            status=0
        fi
        echo "OYAKO done $status"
        sync
        if [ -e /tmp/reboot ]; then reboot -f; fi
        poweroff -f

        """
}
