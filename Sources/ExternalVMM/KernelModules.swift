import Foundation

/// The modules of a kernel package (`lib/modules/<release>`), enough to
/// load some of them without modprobe: each .ko's `depends=` from its
/// .modinfo strings, and an order in which every module follows what it
/// needs (virtio_ring before virtio, virtio before virtio_pci).
struct KernelModules {
    struct Module {
        let name: String
        let contents: Data
        let depends: [String]
    }

    /// Module name (dashes as underscores, as the kernel names them) to file.
    private let files: [String: String]

    init(root: String) throws(GuestImageError) {
        guard let walker = FileManager.default.enumerator(atPath: root) else { throw .io("cannot read the kernel's modules at \(root)") }
        var files: [String: String] = [:]
        while let path = walker.nextObject() as? String {
            guard path.hasSuffix(".ko") else { continue }
            files[Self.normalized(URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent)] = root + "/" + path
        }
        self.files = files
    }

    static func normalized(_ name: String) -> String { name.replacingOccurrences(of: "-", with: "_") }

    func module(_ name: String) throws(GuestImageError) -> Module {
        let name = Self.normalized(name)
        guard let path = files[name], let contents = FileManager.default.contents(atPath: path) else { throw .missingModule(name) }
        return Module(name: name, contents: contents, depends: Self.depends(in: contents))
    }

    /// `wanted` and everything they depend on, dependencies first.
    func loadOrder(for wanted: [String]) throws(GuestImageError) -> [Module] {
        var order: [Module] = [], placed: Set<String> = [], visiting: Set<String> = []
        func visit(_ name: String) throws(GuestImageError) {
            let name = Self.normalized(name)
            guard !placed.contains(name) else { return }
            guard visiting.insert(name).inserted else { throw .io("modules depend on each other in a circle at \(name)") }
            let module = try module(name)
            for dependency in module.depends { try visit(dependency) }
            order.append(module)
            placed.insert(name)
        }
        for name in wanted { try visit(name) }
        return order
    }

    /// The `depends=` string of a module's .modinfo section (NUL-separated
    /// `key=value` strings; a module needing nothing has `depends=` empty).
    static func depends(in contents: Data) -> [String] {
        let key = Array("\0depends=".utf8)
        guard let start = contents.firstRange(of: key)?.upperBound else { return [] }
        let end = contents[start...].firstIndex(of: 0) ?? contents.endIndex
        return String(decoding: contents[start..<end], as: UTF8.self).split(separator: ",").map { normalized(String($0)) }
    }
}
