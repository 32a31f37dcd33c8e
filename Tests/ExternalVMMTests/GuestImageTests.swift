import Foundation
import Testing
@testable import ExternalVMM

@Suite struct CpioTests {
    /// Reads a newc archive back: (name, mode, data) per entry, checking
    /// the magic and four-byte alignment as the kernel's unpacker does.
    static func entries(_ archive: Data) throws -> [(String, UInt32, Data, UInt32)] {
        var result: [(String, UInt32, Data, UInt32)] = []
        var offset = 0
        let bytes = [UInt8](archive)
        func field(_ i: Int) -> UInt32 { UInt32(String(decoding: bytes[(offset + 6 + 8 * i)..<(offset + 14 + 8 * i)], as: UTF8.self), radix: 16)! }
        while true {
            #expect(String(decoding: bytes[offset..<(offset + 6)], as: UTF8.self) == "070701")
            let mode = field(1), size = Int(field(6)), rdevMajor = field(9), nameSize = Int(field(11))
            let name = String(decoding: bytes[(offset + 110)..<(offset + 110 + nameSize - 1)], as: UTF8.self)
            var cursor = offset + 110 + nameSize
            cursor = (cursor + 3) & ~3
            let data = Data(bytes[cursor..<(cursor + size)])
            cursor = (cursor + size + 3) & ~3
            if name == "TRAILER!!!" { #expect(cursor == bytes.count); return result }
            result.append((name, mode, data, rdevMajor))
            offset = cursor
        }
    }

    @Test func entriesRoundTripInTheKernelsFormat() throws {
        var archive = CpioArchive()
        archive.addDirectories("lib/modules")
        archive.add("dev/console", .characterDevice(major: 5, minor: 1))
        archive.add("bin/busybox", .file(Data([1, 2, 3, 4, 5]), executable: true))
        archive.add("bin/sh", .symlink("busybox"))
        archive.add("init", .file(Data("#!/bin/sh\n".utf8), executable: true))
        let read = try Self.entries(archive.encoded())
        #expect(read.map(\.0) == ["lib", "lib/modules", "dev/console", "bin/busybox", "bin/sh", "init"])
        #expect(read[0].1 == 0o040755 && read[2].1 == 0o020600 && read[2].3 == 5)
        #expect(read[3].1 == 0o100755 && read[3].2 == Data([1, 2, 3, 4, 5]))
        #expect(read[4].1 == 0o120777 && read[4].2 == Data("busybox".utf8))
    }
}

@Suite struct KernelModulesTests {
    /// A fake module: .modinfo-like strings, as a .ko carries them.
    static func module(_ name: String, depends: [String], in root: String) throws {
        let text = "\0license=GPL\0depends=\(depends.joined(separator: ","))\0name=\(name)\0"
        try FileManager.default.createDirectory(atPath: root + "/kernel/drivers", withIntermediateDirectories: true)
        try Data(("ELF junk" + text).utf8).write(to: URL(fileURLWithPath: root + "/kernel/drivers/\(name).ko"))
    }

    @Test func modulesLoadAfterWhatTheyNeed() throws {
        let root = NSTemporaryDirectory() + "oyako-modules-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        try Self.module("virtio_ring", depends: [], in: root)
        try Self.module("virtio", depends: [], in: root)
        try Self.module("virtio_pci_modern_dev", depends: [], in: root)
        try Self.module("virtio_pci", depends: ["virtio_ring", "virtio", "virtio_pci_modern_dev"], in: root)
        try Self.module("virtio_blk", depends: ["virtio_ring", "virtio"], in: root)
        try Self.module("virtio-rng", depends: ["virtio_ring", "virtio"], in: root)
        let order = try KernelModules(root: root).loadOrder(for: ["virtio_pci", "virtio_blk", "virtio_rng"]).map(\.name)
        #expect(order == ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk", "virtio_rng"])
        #expect(throws: GuestImageError.missingModule("virtio_net")) { try KernelModules(root: root).loadOrder(for: ["virtio_net"]) }
    }

    @Test func aCircleIsAnErrorNotAHang() throws {
        let root = NSTemporaryDirectory() + "oyako-modules-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        try Self.module("a", depends: ["b"], in: root)
        try Self.module("b", depends: ["a"], in: root)
        #expect(throws: GuestImageError.self) { try KernelModules(root: root).loadOrder(for: ["a"]) }
    }
}

@Suite struct GuestImageTests {
    @Test func aPackageAptDoesNotHaveIsAnErrorThatSaysSo() throws {
        let directory = NSTemporaryDirectory() + "oyako-debs-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            _ = try DebianPackages.download("oyako-no-such-package", into: directory, refresh: false, progress: { _ in })
            Issue.record("a package that does not exist was downloaded")
        } catch {
            guard case .download(let package, _) = error else { Issue.record("\(error)"); return }
            #expect(package == "oyako-no-such-package")
            #expect("\(error)".contains("apt-get download"))
        }
    }

    /// A cached image whose kernel no longer matches what was recorded (a
    /// changed or damaged file) is not used.
    @Test func aChangedKernelIsNotUsedFromTheCache() throws {
        let cache = NSTemporaryDirectory() + "oyako-cache-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: cache) }
        let kernel = Data("a kernel".utf8)
        for (name, data) in [("vmlinuz-x", kernel), ("initramfs-oyako.cpio", Data()), ("busybox", Data())] {
            FileManager.default.createFile(atPath: cache + "/" + name, contents: data, attributes: [.posixPermissions: 0o755])
        }
        let image = GuestImage(kernel: .init(package: "linux-image-x", version: "1", release: "x", sha256: GuestImage.sha256(kernel)), busyboxVersion: "1",
                               kernelPath: cache + "/vmlinuz-x", initramfsPath: cache + "/initramfs-oyako.cpio", busyboxPath: cache + "/busybox",
                               recipe: GuestImage.recipe)
        try JSONEncoder().encode(image).write(to: URL(fileURLWithPath: cache + "/image.json"))
        #expect(GuestImage.cached(in: cache) == image)
        try Data("another kernel".utf8).write(to: URL(fileURLWithPath: cache + "/vmlinuz-x"))
        #expect(GuestImage.cached(in: cache) == nil)
    }
}
