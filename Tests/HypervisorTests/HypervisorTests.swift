import Foundation
@testable import Hypervisor
import Machine
import Testing

func makeHypervisor(memory: Int = 64 << 20, root: Int = 16 << 20) throws -> Hypervisor {
    let machine = try Machine(configuration: .init(memorySize: memory))
    return try Hypervisor(machine: machine, rootMemory: root, foreignWindow: 4 << 20)
}

/// A child with `pages` pages of RAM at GPA 0 and one VP.
func makeChild(_ hv: Hypervisor, pages: Int = 16) throws -> PartitionID {
    let calls = hv.root.hypercalls!
    let id = try calls.createPartition(memorySize: pages * 4096)
    try calls.initializePartition(id)
    try calls.depositMemory(id, pages: pages)
    try calls.mapGpaPages(id, gpaPage: 0, count: pages)
    _ = try calls.createVp(id, index: 0)
    return id
}

@Suite struct HypercallLifetimeTests {
    /// A partition's hypercalls kept past the hypervisor's end answer with
    /// an error; they used to abort the process (an unowned reference).
    @Test func hypercallsAfterTheHypervisorIsGoneFailCleanly() throws {
        var hv: Hypervisor? = try makeHypervisor()
        let calls = try #require(hv?.root.hypercalls)
        _ = try calls.createPartition(memorySize: 4096)
        weak let gone = hv
        hv = nil
        try #require(gone == nil, "nothing else keeps the hypervisor")
        #expect(throws: HvStatus.invalidPartitionState) { _ = try calls.createPartition(memorySize: 4096) }
        #expect(throws: HvStatus.invalidPartitionState) { try calls.deletePort(in: calls.caller, portID: 1) }
    }
}

@Suite struct PrivilegeTests {
    @Test func childrenCannotMakeRootOnlyHypercalls() throws {
        let hv = try makeHypervisor()
        let child = try makeChild(hv)
        let calls = try #require(hv.partition(child)?.hypercalls)
        #expect(throws: HvStatus.accessDenied) { _ = try calls.createPartition(memorySize: 4096) }
        #expect(throws: HvStatus.accessDenied) { try calls.depositMemory(child, pages: 1) }
        #expect(throws: HvStatus.accessDenied) { try calls.mapGpaPages(child, gpaPage: 100, count: 1) }
        #expect(throws: HvStatus.accessDenied) { _ = try calls.mapForeignPages(from: child, gpaPages: [0], writable: false) }
        #expect(throws: HvStatus.accessDenied) { try calls.connectPort(from: child, connectionID: 9, to: 1, portID: 1) }
    }

    @Test func statesAreEnforced() throws {
        let hv = try makeHypervisor()
        let calls = hv.root.hypercalls!
        let id = try calls.createPartition(memorySize: 16 * 4096)
        #expect(throws: HvStatus.invalidPartitionState) { _ = try calls.createVp(id, index: 0) }
        try calls.initializePartition(id)
        #expect(throws: HvStatus.invalidPartitionState) { try calls.initializePartition(id) }
        #expect(throws: HvStatus.invalidPartitionState) { try calls.deletePartition(id) }
        try calls.finalizePartition(id)
        try calls.deletePartition(id)
        #expect(throws: HvStatus.invalidPartitionID) { try calls.finalizePartition(id) }
        #expect(throws: HvStatus.accessDenied) { try calls.deletePartition(hv.root.id) }
    }

    @Test func deletedPortsCanBeCreatedAgain() throws {
        let hv = try makeHypervisor()
        let child = try makeChild(hv)
        let calls = hv.root.hypercalls!
        try calls.createPort(in: hv.root.id, port: .message(id: 0x1001, sint: 2))
        try calls.connectPort(from: child, connectionID: 1, to: hv.root.id, portID: 0x1001)
        #expect(throws: HvStatus.invalidParameter) { try calls.createPort(in: hv.root.id, port: .message(id: 0x1001, sint: 2)) }
        try calls.deletePort(in: hv.root.id, portID: 0x1001)
        let childCalls = try #require(hv.partition(child)?.hypercalls)
        #expect(throws: HvStatus.invalidConnectionID) { try childCalls.postMessage(connectionID: 1, type: 1, payload: []) }
        try calls.createPort(in: hv.root.id, port: .message(id: 0x1001, sint: 2))
        #expect(throws: HvStatus.invalidPortID) { try calls.deletePort(in: hv.root.id, portID: 0x7777) }
    }

    @Test func hypercallsAreCountedByCode() throws {
        let hv = try makeHypervisor()
        _ = try makeChild(hv)
        let counts = hv.hypercallCounts
        #expect(counts[.createPartition] == 1 && counts[.depositMemory] == 1 && counts[.createVp] == 1)
    }
}

@Suite struct MemoryTests {
    @Test func rootGuestPhysicalIsNotMachinePhysical() throws {
        let hv = try makeHypervisor()
        let spa = try #require(hv.machineAddress(partition: hv.root.id, gpa: 0x1000))
        #expect(spa != 0x1000)
        // The root's view and machine RAM are the same bytes.
        hv.root.memory.base.advanced(by: 0x1000).storeBytes(of: 0xC0FFEE as UInt32, as: UInt32.self)
        #expect(hv.machine.memory.pointer(spa)!.load(as: UInt32.self) == 0xC0FFEE)
    }

    @Test func partitionsAreIsolated() throws {
        let hv = try makeHypervisor()
        let a = try makeChild(hv), b = try makeChild(hv)
        let pa = try #require(hv.partition(a)), pb = try #require(hv.partition(b))
        pa.memory.base.storeBytes(of: 0xAAAA_AAAA as UInt32, as: UInt32.self)
        pb.memory.base.storeBytes(of: 0xBBBB_BBBB as UInt32, as: UInt32.self)
        #expect(pa.memory.base.load(as: UInt32.self) == 0xAAAA_AAAA)
        let spaA = try #require(hv.machineAddress(partition: a, gpa: 0)), spaB = try #require(hv.machineAddress(partition: b, gpa: 0))
        #expect(spaA != spaB)
        // Beyond its RAM a child has no mapping at all.
        #expect(hv.machineAddress(partition: a, gpa: 16 * 4096) == nil)
    }

    @Test func rootMaySeeOnlyPagesTheChildOwns() throws {
        let hv = try makeHypervisor()
        let child = try makeChild(hv, pages: 8)
        let calls = hv.root.hypercalls!
        let p = try #require(hv.partition(child))
        p.memory.base.advanced(by: 3 * 4096).storeBytes(of: 0x1234_5678 as UInt32, as: UInt32.self)
        let gpa = try calls.mapForeignPages(from: child, gpaPages: [3], writable: false)
        #expect(hv.foreignWindow.contains(gpa))
        #expect(hv.root.memory.base.advanced(by: Int(gpa)).load(as: UInt32.self) == 0x1234_5678)
        #expect(throws: HvStatus.accessDenied) { _ = try calls.mapForeignPages(from: child, gpaPages: [3, 8], writable: false) }
        try calls.unmapForeignPages(rootGPA: gpa, count: 1)
        #expect(throws: HvStatus.invalidParameter) { try calls.unmapForeignPages(rootGPA: gpa, count: 1) }
    }

    @Test func deletingAChildReturnsItsMemoryAndRevokesRootViews() throws {
        let hv = try makeHypervisor()
        let before = hv.machine.pages.freePages
        let child = try makeChild(hv, pages: 32)
        let calls = hv.root.hypercalls!
        let gpa = try calls.mapForeignPages(from: child, gpaPages: [0, 1], writable: true)
        try calls.finalizePartition(child)
        try calls.deletePartition(child)
        #expect(hv.machine.pages.freePages == before)
        #expect(hv.machineAddress(partition: hv.root.id, gpa: gpa) == nil)
    }

    @Test func depositBeyondMachineMemoryFails() throws {
        let hv = try makeHypervisor(memory: 24 << 20, root: 16 << 20)
        let calls = hv.root.hypercalls!
        let id = try calls.createPartition(memorySize: 64 << 20)
        try calls.initializePartition(id)
        #expect(throws: HvStatus.insufficientMemory) { try calls.depositMemory(id, pages: 16384) }
    }
}

@Suite struct SynICTests {
    /// Root port in the child (SINT 2) and a connection from the root.
    func messagePort(_ hv: Hypervisor, child: PartitionID) throws -> UInt32 {
        let calls = hv.root.hypercalls!
        try calls.createPort(in: child, port: .message(id: 7, sint: 2))
        try calls.connectPort(from: hv.root.id, connectionID: 100, to: child, portID: 7)
        return 100
    }

    @Test func slotHoldsOneMessagePendingFlagAndEOMDeliverTheNext() throws {
        let hv = try makeHypervisor()
        let child = try makeChild(hv)
        let connection = try messagePort(hv, child: child)
        let synic = try #require(hv.partition(child)?.virtualProcessors.first?.synic)
        let calls = hv.root.hypercalls!
        try calls.postMessage(connectionID: connection, type: 1, payload: [1])
        try calls.postMessage(connectionID: connection, type: 2, payload: [2, 2])
        #expect(synic.readMessage(sint: 2) == HvMessage(type: 1, origin: 7, payload: [1]))
        #expect(synic.slotPending(sint: 2), "a second message waits: pending set")
        #expect(synic.queuedCount(sint: 2) == 1)
        synic.completeMessage(sint: 2)
        #expect(synic.readMessage(sint: 2) == HvMessage(type: 2, origin: 7, payload: [2, 2]))
        #expect(!synic.slotPending(sint: 2))
        synic.completeMessage(sint: 2)
        #expect(synic.readMessage(sint: 2) == nil)
    }

    @Test func fullQueueFailsWithInsufficientBuffers() throws {
        let hv = try makeHypervisor()
        let child = try makeChild(hv)
        let connection = try messagePort(hv, child: child)
        let calls = hv.root.hypercalls!
        // One in the slot plus the queue limit waiting.
        for i in 0...SynIC.queueLimit { try calls.postMessage(connectionID: connection, type: 1, payload: [UInt8(i)]) }
        #expect(throws: HvStatus.insufficientBuffers) { try calls.postMessage(connectionID: connection, type: 1, payload: []) }
        let synic = try #require(hv.partition(child)?.virtualProcessors.first?.synic)
        synic.completeMessage(sint: 2)
        try calls.postMessage(connectionID: connection, type: 1, payload: [])
    }

    @Test func malformedMessagesAndUnknownConnectionsAreRefused() throws {
        let hv = try makeHypervisor()
        let child = try makeChild(hv)
        let connection = try messagePort(hv, child: child)
        let calls = hv.root.hypercalls!
        #expect(throws: HvStatus.invalidParameter) { try calls.postMessage(connectionID: connection, type: 0, payload: []) }
        #expect(throws: HvStatus.invalidParameter) { try calls.postMessage(connectionID: connection, type: 0x8000_0001, payload: []) }
        #expect(throws: HvStatus.invalidParameter) { try calls.postMessage(connectionID: connection, type: 1, payload: [UInt8](repeating: 0, count: 241)) }
        #expect(throws: HvStatus.invalidConnectionID) { try calls.postMessage(connectionID: 999, type: 1, payload: []) }
        // The child has no connection of its own to that port.
        let childCalls = try #require(hv.partition(child)?.hypercalls)
        #expect(throws: HvStatus.invalidConnectionID) { try childCalls.postMessage(connectionID: connection, type: 1, payload: []) }
    }

    @Test func signalEventSetsTheFlagAndWakesAHaltedVP() throws {
        let hv = try makeHypervisor()
        let child = try makeChild(hv)
        let calls = hv.root.hypercalls!
        try calls.createPort(in: child, port: .event(id: 8, flags: 40..<44, sint: 2))
        try calls.connectPort(from: hv.root.id, connectionID: 200, to: child, portID: 8)
        #expect(throws: HvStatus.invalidParameter) { try calls.signalEvent(connectionID: 200, flag: 4) }
        let vp = try #require(hv.partition(child)?.virtualProcessors.first)
        let seen = Mutex2<[Int]>([])
        let done = DispatchSemaphore(value: 0)
        vp.setHandlers(sint: { sint in seen.mutate { $0 += vp.synic.takeEventFlags(sint: sint) } })
        vp.start(name: "test-vp") { vp in
            vp.halt(until: { seen.value.contains(42) }, timeout: 10)
            done.signal()
        }
        try calls.signalEvent(connectionID: 200, flag: 2)
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(seen.value == [42])
        vp.stop()
        #expect(vp.statistics.interrupts >= 1)
    }
}

/// A tiny lock-protected box for test callbacks.
final class Mutex2<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T
    init(_ value: T) { stored = value }
    var value: T { lock.withLock { stored } }
    func mutate(_ body: (inout T) -> Void) { lock.withLock { body(&stored) } }
}

@Suite struct LayeringTests {
    /// The microkernel imports only the platform below it: no device models,
    /// no Kernel, no driver host, no virtualization stack.
    @Test func hypervisorImportsOnlyTheMachineLayer() throws {
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Sources/Hypervisor").standardizedFileURL
        let files = try FileManager.default.contentsOfDirectory(atPath: sources.path).filter { $0.hasSuffix(".swift") }
        #expect(!files.isEmpty)
        let allowed: Set<String> = ["Foundation", "Logging", "Machine", "Synchronization"]
        for file in files {
            let text = try String(contentsOf: sources.appendingPathComponent(file), encoding: .utf8)
            let imports = text.split(separator: "\n").filter { $0.hasPrefix("import ") }.map { String($0.dropFirst(7)) }
            #expect(Set(imports).isSubset(of: allowed), "\(file) imports \(imports)")
        }
        // The manifest, with white space and comments set aside.
        let manifest = try String(contentsOf: sources.appendingPathComponent("../../Package.swift"), encoding: .utf8)
            .split(separator: "\n").map { $0.split(separator: "//", maxSplits: 1, omittingEmptySubsequences: false).first ?? "" }
            .joined().filter { !$0.isWhitespace }
        let start = try #require(manifest.range(of: "name:\"Hypervisor\","), "Package.swift declares the Hypervisor target")
        let declaration = manifest[start.upperBound...].prefix { $0 != ")" }
        #expect(declaration == "dependencies:[\"Machine\",.product(name:\"Logging\",package:\"swift-log\"",
                "Package.swift gives the Hypervisor target only Machine and swift-log: \(declaration)")
    }
}
