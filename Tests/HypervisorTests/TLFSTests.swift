import Foundation
import Hypervisor
import Machine
import Testing

/// Hypercalls as the TLFS encodes them: control word, result word, rep
/// hypercalls that resume, and the partition privilege mask.
@Suite struct TLFSTests {
    @Test func theControlWordHasTheTLFSBitPositions() throws {
        let control = HypercallControl(code: 0x4B, fast: false, variableHeaderSize: 0, repCount: 600, repStartIndex: 256)
        #expect(control.rawValue == 0x0100_0258_0000_004B, "code 0-15, rep count 32-43, rep start 48-59")
        #expect(HypercallControl(code: 0x5D, fast: true).rawValue == 0x1_005D, "fast is bit 16")
        #expect(HypercallControl(code: 0x5C, variableHeaderSize: 3).rawValue == 0x5C | 3 << 17, "variable header size in bits 17-26")
        #expect(try HypercallControl(rawValue: control.rawValue) == control)
        for reserved in [27, 30, 44, 47, 60, 63] {
            #expect(throws: HvStatus.invalidHypercallInput) { try HypercallControl(rawValue: 0x5C | 1 << UInt64(reserved)) }
        }
    }

    @Test func theResultWordCarriesStatusAndRepsCompleted() {
        let result = HypercallResult(status: .insufficientMemory, repsCompleted: 300)
        #expect(result.rawValue == 0x0000_012C_0000_000B)
        #expect(HypercallResult(rawValue: result.rawValue) == result)
    }

    @Test func badControlWordsAreRefusedWithTheirStatus() throws {
        let hv = try makeHypervisor()
        let calls = hv.root.hypercalls!
        func status(_ control: HypercallControl, _ input: [UInt8] = []) -> HvStatus {
            HypercallResult(rawValue: calls.invoke(control.rawValue, input: input).result).status
        }
        #expect(HypercallResult(rawValue: calls.invoke(1 << 63, input: []).result).status == .invalidHypercallInput)
        #expect(status(HypercallControl(code: 0x7777)) == .invalidHypercallCode)
        // A simple hypercall with a rep count, a rep hypercall without one.
        #expect(status(HypercallControl(code: 0x5D, fast: true, repCount: 2), HypercallInput.signalEvent(connectionID: 1, flag: 0)) == .invalidHypercallInput)
        #expect(status(HypercallControl(code: 0x4C), [UInt8](repeating: 0, count: 24)) == .invalidHypercallInput)
        // Input too short; reserved input fields not zero.
        #expect(status(HypercallControl(code: 0x5D, fast: true), [1, 0]) == .invalidHypercallInput)
        #expect(status(HypercallControl(code: 0x5D, fast: true), [1, 0, 0, 0, 0, 0, 1, 0]) == .invalidHypercallInput)
        // A payload size beyond 240 bytes.
        var post = HypercallInput.postMessage(connectionID: 1, type: 1, payload: [])
        post.replaceSubrange(12..<16, with: [241, 0, 0, 0])
        #expect(status(HypercallControl(code: 0x5C), post) == .invalidParameter)
    }

    @Test func aRepHypercallStopsAfterItsSliceAndResumesFromRepsCompleted() throws {
        let hv = try makeHypervisor()
        let calls = hv.root.hypercalls!
        let id = try calls.createPartition(memorySize: 1024 * 4096)
        try calls.initializePartition(id)
        try calls.depositMemory(id, pages: 600)
        let header = HypercallInput.gpaPages(partition: id, gpaBase: 0, flags: 3)  // readable | writable
        #expect(header == [UInt8](withUnsafeBytes(of: id.littleEndian) { Array($0) }) + [UInt8](repeating: 0, count: 8) + [3, 0, 0, 0, 0, 0, 0, 0])
        var start: UInt16 = 0
        var results: [HypercallResult] = []
        while start < 600 {
            let result = HypercallResult(rawValue: calls.invoke(HypercallControl(code: 0x4B, repCount: 600, repStartIndex: start).rawValue, input: header).result)
            results.append(result)
            guard result.status == .success, result.repsCompleted > start else { break }
            start = result.repsCompleted
        }
        #expect(results.map(\.repsCompleted) == [256, 512, 600], "each call does one slice; the caller resumes")
        #expect(results.allSatisfy { $0.status == .success })
        #expect((0..<600).allSatisfy { hv.machineAddress(partition: id, gpa: UInt64($0) * 4096) != nil })
        #expect(hv.machineAddress(partition: id, gpa: 600 * 4096) == nil)
        // The Swift method resumes by itself: unmapping 600 pages takes three calls.
        let before = hv.hypercallCounts[.unmapGpaPages] ?? 0
        try calls.unmapGpaPages(id, gpaPage: 0, count: 600)
        #expect((hv.hypercallCounts[.unmapGpaPages] ?? 0) - before == 3)
        #expect(hv.machineAddress(partition: id, gpa: 0) == nil)
    }

    @Test func privilegesAreTheTLFSMask() throws {
        #expect(PartitionPrivileges.createPartitions.rawValue == 1 << 32 && PartitionPrivileges.postMessages.rawValue == 1 << 36)
        #expect(PartitionPrivileges.signalEvents.rawValue == 1 << 37 && PartitionPrivileges.connectPort.rawValue == 1 << 39)
        let hv = try makeHypervisor()
        let child = try makeChild(hv)
        let p = try #require(hv.partition(child))
        #expect(hv.root.isRoot && hv.root.privileges.contains(.root))
        #expect(!p.isRoot && p.privileges == .guest)
        #expect(p.privileges.contains([.postMessages, .signalEvents]) && !p.privileges.contains(.createPort))
        // Every root-only call is refused by the privilege it needs.
        for code in HypercallCode.allCases where !PartitionPrivileges.guest.contains(code.privilege) {
            #expect(PartitionPrivileges.root.contains(code.privilege), "\(code)")
        }
        #expect(throws: HvStatus.accessDenied) { try p.hypercalls.createPort(in: child, port: .message(id: 5, sint: 2)) }
    }
}
