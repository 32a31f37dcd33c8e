import Logging
import Synchronization

/// A device's DMA access outside what the IOMMU maps for it. The access is
/// refused (nothing is read or written) and the fault is logged and counted.
public struct DMAFault: Error, CustomStringConvertible, Sendable {
    public let device: String
    public let address: UInt64
    public let length: Int
    public let write: Bool
    public let reason: String

    public var description: String {
        let kind = write ? "write" : "read"
        let hex = "0x" + String(address, radix: 16)
        return "DMA fault: \(device) \(kind) of \(length) bytes at device address \(hex): \(reason)"
    }
}

/// The I/O memory-management unit: per-device page tables from device
/// (I/O virtual) addresses to machine addresses.
///
/// Devices reach memory only through `translate`. Nothing is identity-mapped
/// by default: a page is reachable only after the OS mapped it for that
/// device, so a driver that hands its device a wrong address faults loudly.
/// Mappings are reference-counted per page because two buffers can share one.
public final class IOMMU: Sendable {
    public typealias DomainID = Int

    private struct Entry {
        var machinePage: UInt64
        var references: Int
        var writable: Bool
    }

    private struct State {
        var domains: [DomainID: [UInt64: Entry]] = [:]
        var faults = 0
        var recent: [DMAFault] = []
        /// Domains whose accesses are being recorded, and the record.
        var traced: Set<DomainID> = []
        var trace: [DMAAccess] = []
    }

    /// One device access that the IOMMU let through, in machine addresses
    /// (one entry per machine-contiguous run).
    public struct DMAAccess: Sendable, Equatable {
        public let domain: DomainID
        public let machineAddress: UInt64
        public let length: Int
        /// True when the device wrote memory.
        public let write: Bool
    }

    /// At most this many accesses are kept while tracing; later ones are dropped.
    public static let traceLimit = 1 << 16

    public let memory: PhysicalMemory
    private let state = Mutex(State())
    private let logger = Logger(label: "oyako.iommu")

    public init(memory: PhysicalMemory) {
        self.memory = memory
    }

    /// Maps the pages covering [`deviceAddress`, +`length`) to the pages
    /// covering [`machineAddress`, +`length`). Both must have the same offset
    /// within a page.
    public func map(domain: DomainID, deviceAddress: UInt64, machineAddress: PhysicalAddress, length: Int, writable: Bool = true) {
        precondition(deviceAddress % UInt64(PhysicalMemory.pageSize) == machineAddress % UInt64(PhysicalMemory.pageSize), "IOMMU maps whole pages")
        guard length > 0 else { return }
        let firstIOPage = deviceAddress / UInt64(PhysicalMemory.pageSize)
        let firstMachinePage = machineAddress / UInt64(PhysicalMemory.pageSize)
        let pages = (deviceAddress % UInt64(PhysicalMemory.pageSize) + UInt64(length) + UInt64(PhysicalMemory.pageSize) - 1) / UInt64(PhysicalMemory.pageSize)
        state.withLock { s in
            // Mutated in place through the dictionary's modify accessor: a
            // `var table = s.domains[domain]` copy would duplicate the whole
            // table on every map, which is every I/O request.
            Self.mapPages(&s.domains[domain, default: [:]], firstIOPage: firstIOPage, firstMachinePage: firstMachinePage,
                          pages: pages, writable: writable, domain: domain)
        }
    }

    private static func mapPages(_ table: inout [UInt64: Entry], firstIOPage: UInt64, firstMachinePage: UInt64,
                                 pages: UInt64, writable: Bool, domain: DomainID) {
        for i in 0..<pages {
            let io = firstIOPage + i
            if var entry = table[io] {
                precondition(entry.machinePage == firstMachinePage + i, "IOMMU page \(io) remapped from machine page \(entry.machinePage) to \(firstMachinePage + i) (domain \(domain), refs \(entry.references))")
                entry.references += 1
                entry.writable = entry.writable || writable
                table[io] = entry
            } else {
                table[io] = Entry(machinePage: firstMachinePage + i, references: 1, writable: writable)
            }
        }
    }

    /// Drops one reference to each page covering the range.
    public func unmap(domain: DomainID, deviceAddress: UInt64, length: Int) {
        guard length > 0 else { return }
        let firstIOPage = deviceAddress / UInt64(PhysicalMemory.pageSize)
        let pages = (deviceAddress % UInt64(PhysicalMemory.pageSize) + UInt64(length) + UInt64(PhysicalMemory.pageSize) - 1) / UInt64(PhysicalMemory.pageSize)
        state.withLock { s in
            guard s.domains[domain] != nil else { return }
            Self.unmapPages(&s.domains[domain]!, firstIOPage: firstIOPage, pages: pages)
        }
    }

    private static func unmapPages(_ table: inout [UInt64: Entry], firstIOPage: UInt64, pages: UInt64) {
        for i in 0..<pages {
            let io = firstIOPage + i
            guard var entry = table[io] else { continue }
            entry.references -= 1
            table[io] = entry.references > 0 ? entry : nil
        }
    }

    /// Removes every mapping of a domain (device reset or removal).
    public func resetDomain(_ domain: DomainID) {
        state.withLock { _ = $0.domains.removeValue(forKey: domain) }
    }

    /// Number of pages currently mapped for `domain`.
    public func mappedPages(domain: DomainID) -> Int {
        state.withLock { $0.domains[domain]?.count ?? 0 }
    }

    /// Translates a device access into CPU-addressable pieces of RAM, merging
    /// pieces that are contiguous in machine memory. Throws (and records) a
    /// DMA fault when any byte is unmapped or, for a write, read-only.
    public func translate(domain: DomainID, deviceName: String, deviceAddress: UInt64, length: Int, write: Bool)
        throws(DMAFault) -> [UnsafeMutableRawBufferPointer]
    {
        var pieces: [UnsafeMutableRawBufferPointer] = []
        let fault: DMAFault? = state.withLock { s -> DMAFault? in
            guard length > 0 else { return nil }
            guard UInt64.max - deviceAddress >= UInt64(length) else {
                return Self.record(&s, DMAFault(device: deviceName, address: deviceAddress, length: length, write: write, reason: "address range wraps"))
            }
            let table = s.domains[domain] ?? [:]
            var address = deviceAddress
            var remaining = length
            var runStart: UInt64 = 0
            var runLength = 0
            while remaining > 0 {
                let offset = address % UInt64(PhysicalMemory.pageSize)
                let chunk = min(remaining, Int(UInt64(PhysicalMemory.pageSize) - offset))
                guard let entry = table[address / UInt64(PhysicalMemory.pageSize)] else {
                    return Self.record(&s, DMAFault(device: deviceName, address: address, length: length, write: write, reason: "page not mapped for this device"))
                }
                if write && !entry.writable {
                    return Self.record(&s, DMAFault(device: deviceName, address: address, length: length, write: write, reason: "page mapped read-only"))
                }
                let machine = entry.machinePage * UInt64(PhysicalMemory.pageSize) + offset
                if runLength > 0 && runStart + UInt64(runLength) == machine {
                    runLength += chunk
                } else {
                    if runLength > 0 { pieces.append(UnsafeMutableRawBufferPointer(start: memory.base + Int(runStart), count: runLength)) }
                    runStart = machine
                    runLength = chunk
                }
                address += UInt64(chunk)
                remaining -= chunk
            }
            if runLength > 0 { pieces.append(UnsafeMutableRawBufferPointer(start: memory.base + Int(runStart), count: runLength)) }
            if s.traced.contains(domain) {
                for piece in pieces where s.trace.count < Self.traceLimit {
                    s.trace.append(DMAAccess(domain: domain, machineAddress: UInt64(piece.baseAddress! - memory.base), length: piece.count, write: write))
                }
            }
            return nil
        }
        if let fault {
            logger.warning("\(fault.description)")
            throw fault
        }
        return pieces
    }

    /// Starts recording every access devices in `domain` make (a debugging
    /// aid, as a bus analyser would be: where did the data really go?).
    public func startTracing(domain: DomainID) {
        _ = state.withLock { $0.traced.insert(domain) }
    }

    /// Stops recording `domain` and returns its accesses since it started.
    public func stopTracing(domain: DomainID) -> [DMAAccess] {
        state.withLock { s in
            s.traced.remove(domain)
            let mine = s.trace.filter { $0.domain == domain }
            s.trace.removeAll { $0.domain == domain }
            return mine
        }
    }

    /// Total DMA faults since the machine started.
    public var faultCount: Int { state.withLock { $0.faults } }

    /// The most recent faults, oldest first (at most 64 are kept).
    public var recentFaults: [DMAFault] { state.withLock { $0.recent } }

    private static func record(_ s: inout State, _ fault: DMAFault) -> DMAFault {
        s.faults += 1
        s.recent.append(fault)
        if s.recent.count > 64 { s.recent.removeFirst(s.recent.count - 64) }
        return fault
    }
}
