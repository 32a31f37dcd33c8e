import Foundation
import Hypervisor
import Machine
import VMBus

/// The child-partition OS: it owns only its guest-physical memory, its VP
/// and its hypercalls, and reaches devices through VMBus. It runs entirely on
/// its VP's thread; waiting means halting until an interrupt.
public final class GuestOS: @unchecked Sendable {
    // @unchecked Sendable: confined to the VP thread, except `console`,
    // which is guarded by its own lock.
    public let partition: Partition
    public let vp: VirtualProcessor
    public let vmbus: VMBusClient
    public let name: String
    private let pages: PageAllocator
    private let consoleLock = NSLock()
    private var consoleLines: [String] = []
    private let consoleSink: (@Sendable (String) -> Void)?

    /// - Parameter console: also receives every console line as it is written.
    public init(name: String, partition: Partition, vp: VirtualProcessor, console: (@Sendable (String) -> Void)? = nil) {
        self.name = name
        self.partition = partition
        self.vp = vp
        self.vmbus = VMBusClient(partition: partition, vp: vp)
        // Page 0 stays unused so a zero GPA is never valid.
        self.pages = PageAllocator(firstPage: 1, pageCount: partition.addressSpaceSize / PhysicalMemory.pageSize - 1)
        self.consoleSink = console
    }

    /// Installs the interrupt handlers and connects to VMBus.
    public func boot() throws(VMBusError) {
        let vmbus = self.vmbus
        // Weak: the VP would otherwise keep its client, and the client its
        // VP and partition, alive for good after the guest is gone.
        vp.setHandlers(sint: { [weak vmbus] sint in vmbus?.handleSINT(sint) })
        let version = try vmbus.connect()
        log("VMBus \(version >> 16).\(version & 0xFFFF), \(vmbus.offers.count) device(s) offered")
    }

    /// Contiguous guest-physical pages, zeroed: (GPA, CPU pointer).
    public func allocate(pages count: Int) -> (gpa: UInt64, pointer: UnsafeMutableRawPointer)? {
        guard let first = pages.allocate(count) else { return nil }
        let gpa = GuestAddress.page(first)
        guard let bytes = partition.memory.guestMemory.bytes(at: gpa, count: count * PhysicalMemory.pageSize) else {
            pages.free(first, count: count)
            return nil
        }
        bytes.initializeMemory(as: UInt8.self, repeating: 0)
        return (gpa.raw, bytes.baseAddress!)
    }

    public func free(gpa: UInt64, pages count: Int) {
        pages.free(GuestAddress(gpa).pageNumber, count: count)
    }

    /// Opens every storage device offered.
    public func openStorage() throws(VMBusError) -> [StorageVSC] {
        var disks: [StorageVSC] = []
        for offer in vmbus.offers where offer.interfaceType == StorageProtocol.interfaceType {
            disks.append(try StorageVSC(os: self, offer: offer))
        }
        return disks
    }

    /// Writes a line to the partition's console.
    public func log(_ line: String) {
        let text = "[\(name)] \(line)"
        consoleLock.withLock { consoleLines.append(text) }
        consoleSink?(text)
    }

    public var console: [String] { consoleLock.withLock { consoleLines } }
}
