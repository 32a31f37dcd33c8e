import Foundation
import Hypervisor
import Testing
import VMBus
import CVMBusLayouts

/// Bytes as Hyper-V puts them on the wire (VMBUS.md; Linux hyperv.h).
@Suite struct WireFormatTests {
    /// GUIDs in Microsoft's mixed-endian order: the first three fields
    /// little-endian, the last eight bytes as written.
    @Test(arguments: [
        (StorageProtocol.interfaceType, [0xD9, 0x63, 0x61, 0xBA, 0xA1, 0x04, 0x29, 0x4D, 0xB6, 0x05, 0x72, 0xE2, 0xFF, 0xB1, 0xDC, 0x7F] as [UInt8]),
        (NetworkProtocol.interfaceType, [0x63, 0x51, 0x61, 0xF8, 0x3E, 0xDF, 0xC5, 0x46, 0x91, 0x3F, 0xF2, 0xD2, 0xF9, 0x65, 0xED, 0x0E] as [UInt8]),
    ])
    func interfaceGUIDsAreInMicrosoftsByteOrder(_ guid: UUID, _ wire: [UInt8]) throws {
        var w = ByteWriter()
        w.uuid(guid)
        #expect(w.bytes == wire)
        var r = ByteReader(wire)
        #expect(try r.uuid() == guid, "and read back")
    }

    @Test func anOfferCarriesTheGUIDsInWireOrder() throws {
        let instance = UUID(uuidString: "00112233-4455-6677-8899-AABBCCDDEEFF")!
        let message = ChannelMessage.offerChannel(interfaceType: StorageProtocol.interfaceType, instance: instance, relid: 7, connectionID: 0x2001)
        let bytes = message.encode()
        // struct vmbus_channel_offer_channel: 196 bytes; Linux ignores a shorter offer.
        #expect(bytes.count == 196)
        #expect(Array(bytes[0..<8]) == [1, 0, 0, 0, 0, 0, 0, 0], "message type OFFERCHANNEL, padding")
        #expect(Array(bytes[8..<12]) == [0xD9, 0x63, 0x61, 0xBA], "if_type at offset 8")
        #expect(Array(bytes[24..<40]) == [0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF], "if_instance at 24")
        #expect(bytes[40..<184].allSatisfy { $0 == 0 }, "reserved, flags, MMIO size, user data, sub-channel index")
        #expect(Array(bytes[184..<188]) == [7, 0, 0, 0], "child_relid at 184")
        #expect(bytes[188] == 0 && bytes[189] == 0, "monitor id, monitor_allocated = 0")
        #expect(Array(bytes[192..<196]) == [0x01, 0x20, 0, 0], "connection_id at 192")
        #expect(throws: ChannelMessage.DecodeError.self) { try ChannelMessage.decode(Array(bytes.prefix(48))) }
        guard case .offerChannel(let type, let decodedInstance, 7, 0x2001) = try ChannelMessage.decode(bytes) else {
            Issue.record("the offer did not round-trip")
            return
        }
        #expect(type == StorageProtocol.interfaceType && decodedInstance == instance)
    }

    @Test func openChannelHasTheTargetVPBeforeTheRingOffsetAndItsUserData() throws {
        let bytes = ChannelMessage.openChannel(relid: 3, openID: 9, ringGPADL: 0xE1E10, downstreamPageOffset: 17, targetVP: 1).encode()
        #expect(bytes.count == 148)
        #expect(Array(bytes[0..<4]) == [5, 0, 0, 0])
        #expect(Array(bytes[8..<28]) == [3, 0, 0, 0, 9, 0, 0, 0, 0x10, 0x1E, 0x0E, 0, 1, 0, 0, 0, 17, 0, 0, 0],
                "child_relid, openid, ringbuffer_gpadlhandle, target_vp, downstream_ringbuffer_pageoffset")
        #expect(bytes[28..<148].allSatisfy { $0 == 0 }, "userdata[120]")
        guard case .openChannel(3, 9, 0xE1E10, 17, 1) = try ChannelMessage.decode(bytes) else {
            Issue.record("did not round-trip")
            return
        }
    }

    @Test func aGPADLIsAHeaderWithOneGPARangeAndBodiesOfPFNs() throws {
        let pfns = (0..<30).map { UInt64(0x1000 + $0) }
        let header = ChannelMessage.gpadlHeader(relid: 2, gpadl: 0xE1E10, totalPages: 30, pfns: Array(pfns.prefix(26))).encode()
        #expect(header.count == 8 + 20 - 8 + 8 + 26 * 8, "header, relid, gpadl, range_buflen, rangecount, gpa_range, 26 PFNs: 236 bytes")
        #expect(Array(header[0..<4]) == [8, 0, 0, 0])
        #expect(Array(header[16..<20]) == [0xF8, 0, 1, 0], "range_buflen = 8 + 8 × 30 = 248, rangecount = 1")
        #expect(Array(header[20..<28]) == [0, 0xE0, 1, 0, 0, 0, 0, 0], "byte_count = 30 pages, byte_offset = 0")
        #expect(Array(header[28..<36]) == [0x00, 0x10, 0, 0, 0, 0, 0, 0], "pfn_array[0]")
        let body = ChannelMessage.gpadlBody(message: 1, gpadl: 0xE1E10, pfns: Array(pfns.suffix(4))).encode()
        #expect(body.count == 16 + 4 * 8 && Array(body[8..<16]) == [1, 0, 0, 0, 0x10, 0x1E, 0x0E, 0], "msgnumber, gpadl, then PFNs only")
        guard case .gpadlHeader(2, 0xE1E10, 30, let first) = try ChannelMessage.decode(header), case .gpadlBody(1, 0xE1E10, let rest) = try ChannelMessage.decode(body) else {
            Issue.record("did not round-trip")
            return
        }
        #expect(first + rest == pfns)
    }

    @Test func contactAndVersionResponseAreTheRealStructs() throws {
        let contact = ChannelMessage.initiateContact(version: 0x0005_0003, targetVP: 1, messageSINT: 2).encode()
        #expect(contact.count == 40, "vmbus_channel_initiate_contact")
        #expect(Array(contact[8..<20]) == [3, 0, 5, 0, 1, 0, 0, 0, 2, 0, 0, 0], "version, target_vcpu, msg_sint")
        #expect(contact[20..<40].allSatisfy { $0 == 0 }, "feature flags and monitor pages")
        let response = ChannelMessage.versionResponse(supported: true, connectionState: 0, messageConnectionID: 4).encode()
        #expect(response == [15, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0], "vmbus_channel_version_response")
        guard case .initiateContact(0x0005_0003, 1, 2) = try ChannelMessage.decode(contact),
            case .versionResponse(true, 0, 4) = try ChannelMessage.decode(response)
        else {
            Issue.record("did not round-trip")
            return
        }
        #expect(Topology.hostVersions == [0x0005_0003, 0x0005_0002, 0x0005_0001, 0x0005_0000, 0x0004_0000])
    }

    @Test func hypercallCallCodesAreTheTLFSs() {
        #expect(HypercallCode.deletePort.rawValue == 0x58)
        #expect(HypercallCode.createPort.rawValue == 0x95 && HypercallCode.connectPort.rawValue == 0x96)
        #expect(HypercallCode.postMessage.rawValue == 0x5C && HypercallCode.signalEvent.rawValue == 0x5D)
    }
}

/// GPA_DIRECT packets as Linux's vmbus_packet_mpb_array lays them out.
@Suite struct GPADirectWireTests {
    @Test func rangesAreByteCountOffsetAndPFNsAfterReservedAndRangeCount() throws {
        let pair = RingPair()
        let range = GPARange(gpa: 0x12_3200, length: 0x1000)  // two pages from offset 0x200
        #expect(try pair.writer.write(Packet(kind: .gpaDirect, transactionID: 5, ranges: [range], payload: [1, 2, 3, 4])) != .full)
        let data = pair.memory + Ring.controlSize
        func u16(_ o: Int) -> UInt16 { data.loadUnaligned(fromByteOffset: o, as: UInt16.self) }
        func u32(_ o: Int) -> UInt32 { data.loadUnaligned(fromByteOffset: o, as: UInt32.self) }
        func u64(_ o: Int) -> UInt64 { data.loadUnaligned(fromByteOffset: o, as: UInt64.self) }
        #expect(u16(0) == 9 && u16(2) == (16 + 8 + 8 + 16) / 8, "type GPA_DIRECT, offset8 past the range header")
        #expect(u32(16) == 0 && u32(20) == 1, "reserved, then range_cnt")
        #expect(u32(24) == 0x1000 && u32(28) == 0x200, "byte_count, byte_offset")
        #expect(u64(32) == 0x123 && u64(40) == 0x124, "pfn_array")
        #expect(try pair.read()?.ranges == [range], "and read back")
    }

    /// A range over pages that are not consecutive is read as its pieces, in order.
    @Test func scatteredPagesBecomePiecesInOrder() throws {
        var body = [UInt8](repeating: 0, count: 8 + 8 + 3 * 8)
        body.withUnsafeMutableBytes { p in
            p.storeBytes(of: UInt32(1), toByteOffset: 4, as: UInt32.self)
            p.storeBytes(of: UInt32(0x2000), toByteOffset: 8, as: UInt32.self)
            p.storeBytes(of: UInt32(0x800), toByteOffset: 12, as: UInt32.self)
            for (i, pfn) in [UInt64(0x50), 0x51, 0x90].enumerated() { p.storeBytes(of: pfn, toByteOffset: 16 + 8 * i, as: UInt64.self) }
        }
        let pair = RingPair()
        // Write the descriptor and this header by hand, as a guest would.
        var descriptor = (UInt16(9), UInt16((16 + body.count) / 8), UInt16((16 + body.count) / 8), UInt16(0), UInt64(1))
        let data = pair.memory + Ring.controlSize
        withUnsafeBytes(of: &descriptor) { data.copyMemory(from: $0.baseAddress!, byteCount: 16) }
        body.withUnsafeBytes { (data + 16).copyMemory(from: $0.baseAddress!, byteCount: body.count) }
        (data + 16 + body.count).storeBytes(of: UInt64(0), as: UInt64.self)
        pair.poke(0, UInt32(16 + body.count + 8))
        let read = try #require(try pair.read())
        #expect(read.ranges == [GPARange(gpa: 0x50800, length: 0x1800), GPARange(gpa: 0x90000, length: 0x800)])
    }
}

/// TRANSFER_PAGES packets as vmtransfer_page_packet_header lays them out.
@Suite struct TransferPagesWireTests {
    @Test func thePageSetAndRangesAreInTheHeaderAndThePayloadIsNVSP() throws {
        let pair = RingPair()
        let packet = NetworkProtocol.transferPacket([.init(offset: 4096, length: 60), .init(offset: 6144, length: 1514)], transactionID: 9)
        #expect(try pair.writer.write(packet) != .full)
        let data = pair.memory + Ring.controlSize
        func u16(_ o: Int) -> UInt16 { data.loadUnaligned(fromByteOffset: o, as: UInt16.self) }
        func u32(_ o: Int) -> UInt32 { data.loadUnaligned(fromByteOffset: o, as: UInt32.self) }
        #expect(u16(0) == 7 && u16(2) == (16 + 8 + 2 * 8) / 8, "type TRANSFER_PAGES, offset8 past the ranges")
        #expect(u16(16) == 0xCAFE && data.load(fromByteOffset: 18, as: UInt8.self) == 0 && u32(20) == 2, "xfer_pageset_id, sender_owns_set, range_cnt")
        #expect(u32(24) == 60 && u32(28) == 4096 && u32(32) == 1514 && u32(36) == 6144, "{byte_count, byte_offset}")
        #expect(u32(40) == 107 && u32(44) == 0 && u32(48) == 0xFFFF_FFFF && u32(52) == 0, "NVSP SEND_RNDIS_PKT: data channel, no section")
        let read = try #require(try pair.read())
        #expect(try NetworkProtocol.transferRanges(read) == [.init(offset: 4096, length: 60), .init(offset: 6144, length: 1514)])
    }

    @Test func aRangeCountBeyondTheHeaderIsRefused() throws {
        let pair = RingPair()
        #expect(try pair.writer.write(Packet(kind: .transferPages, transactionID: 1, transfer: .init(pageSetID: 0xCAFE, ranges: [.init(offset: 0, length: 1)]), payload: [])) != .full)
        (pair.memory + Ring.controlSize).storeBytes(of: UInt32(50), toByteOffset: 20, as: UInt32.self)
        #expect(throws: RingError.tooManyRanges(count: 50, headerBytes: 32)) { try pair.read() }
    }
}

/// The Swift encoders against Linux's structs declared in C (with their
/// sizes and offsets asserted at compile time in Tests/CVMBusLayouts).
@Suite struct CLayoutTests {
    static func c(_ fill: (UnsafeMutablePointer<UInt8>) -> UInt32) -> [UInt8] {
        var out = [UInt8](repeating: 0xEE, count: 256)
        let n = out.withUnsafeMutableBufferPointer { fill($0.baseAddress!) }
        return Array(out.prefix(Int(n)))
    }

    static func wire(_ guid: UUID) -> [UInt8] {
        var w = ByteWriter()
        w.uuid(guid)
        return w.bytes
    }

    @Test func offer() {
        let instance = UUID(uuidString: "00112233-4455-6677-8899-AABBCCDDEEFF")!
        let type = Self.wire(StorageProtocol.interfaceType), inst = Self.wire(instance)
        let expected = Self.c { oy_layout_offer($0, type, inst, 7, 0x2001) }
        #expect(ChannelMessage.offerChannel(interfaceType: StorageProtocol.interfaceType, instance: instance, relid: 7, connectionID: 0x2001).encode() == expected)
    }

    @Test func openChannel() {
        let expected = Self.c { oy_layout_open_channel($0, 3, 9, 0xE1E10, 1, 17) }
        #expect(ChannelMessage.openChannel(relid: 3, openID: 9, ringGPADL: 0xE1E10, downstreamPageOffset: 17, targetVP: 1).encode() == expected)
    }

    @Test func gpadlHeader() {
        let pfns = (0..<26).map { UInt64(0x4000 + $0) }
        let expected = Self.c { out in pfns.withUnsafeBufferPointer { oy_layout_gpadl_header(out, 2, 0xE1E10, 40, $0.baseAddress, 26) } }
        #expect(ChannelMessage.gpadlHeader(relid: 2, gpadl: 0xE1E10, totalPages: 40, pfns: pfns).encode() == expected)
    }

    @Test func contactAndVersion() {
        #expect(ChannelMessage.initiateContact(version: 0x0005_0002, targetVP: 0, messageSINT: 2).encode() == Self.c { oy_layout_initiate_contact($0, 0x0005_0002, 0, 2) })
        #expect(ChannelMessage.versionResponse(supported: true, connectionState: 0, messageConnectionID: 4).encode() == Self.c { oy_layout_version_response($0, 1, 0, 4) })
    }
}

/// The storage packets against Linux's storvsc structs declared in C.
@Suite struct StorageLayoutTests {
    @Test func anSRBIsTheVstorPacketLinuxSends() throws {
        // READ(10) of 8 blocks at LBA 0x1234, as storvsc_queuecommand fills it.
        let cdb = SCSI.read10(lba: 0x1234, blocks: 8)
        let area = cdb + [UInt8](repeating: 0, count: 20 - cdb.count)
        let expected = CLayoutTests.c { out in
            area.withUnsafeBufferPointer { oy_layout_vstor_srb(out, 3, 1, 0, 0, 0, 0, 1, 4096, $0.baseAddress, 10, 20, 0x48, 60) }
        }
        let message = StorageProtocol.Message.srb(StorageProtocol.SCSIRequest(cdb: cdb, direction: .read, dataTransferLength: 4096))
        #expect(message.encoded == expected)
        #expect(expected.count == 64)
        #expect(try StorageProtocol.Message.decode(expected) == message, "and it decodes back")
    }

    @Test func aCheckConditionCompletionCarriesSenseInTheUnion() throws {
        let sense = SCSI.Sense.lbaOutOfRange.fixedFormat
        let area = sense + [0, 0]
        let expected = CLayoutTests.c { out in
            area.withUnsafeBufferPointer { oy_layout_vstor_srb(out, 1, 0, 0, 0x84, 0x02, 0, 1, 0, $0.baseAddress, 10, 18, 0x48, 60) }
        }
        var srb = StorageProtocol.SCSIRequest(cdb: SCSI.read10(lba: 9999, blocks: 1), direction: .read, dataTransferLength: 0)
        srb.srbStatus = 0x84
        srb.scsiStatus = 0x02
        srb.area = area
        srb.senseInfoLength = 18
        #expect(StorageProtocol.Message.srb(srb, operation: .completeIO, flags: 0).encoded == expected)
        #expect(try StorageProtocol.Message.decode(expected).srbRequest().sense == sense)
    }

    @Test func propertiesAndVersionAreTheRealStructs() throws {
        let properties = StorageProtocol.ChannelProperties(maxChannelCount: 1, flags: 0, maxTransferBytes: 256 << 10)
        let expected = CLayoutTests.c { oy_layout_vstor_properties($0, 1, 0, 256 << 10) }
        #expect(StorageProtocol.Message.properties(properties).encoded == expected)
        #expect(try StorageProtocol.Message.decode(expected).channelProperties() == properties)
        #expect(StorageProtocol.Message.version(0x0602).encoded == CLayoutTests.c { oy_layout_vstor_version($0, 0x0602) })
    }

    @Test func aShortVstorPacketDoesNotDecode() {
        #expect(throws: ChannelMessage.DecodeError.self) { try StorageProtocol.Message.decode([UInt8](repeating: 0, count: 63)) }
    }
}

/// NVSP and RNDIS against the structs declared in C from hyperv_net.h.
@Suite struct NetworkLayoutTests {
    static func c(_ fill: (UnsafeMutablePointer<UInt8>) -> UInt32) -> [UInt8] {
        var out = [UInt8](repeating: 0xEE, count: 2048)
        let n = out.withUnsafeMutableBufferPointer { fill($0.baseAddress!) }
        return Array(out.prefix(Int(n)))
    }

    @Test func nvspMessagesAreTheRealStructs() {
        #expect(NetworkProtocol.encode(.initialize) { $0.u32(0x6_0001); $0.u32(0x6_0001) } == Self.c { oy_layout_nvsp_init($0, 0x6_0001, 0x6_0001) })
        #expect(NetworkProtocol.encode(.initializeComplete) { $0.u32(0x6_0001); $0.u32(0); $0.u32(1) } == Self.c { oy_layout_nvsp_init_complete($0, 0x6_0001, 1) })
        #expect(NetworkProtocol.encode(.sendReceiveBuffer) { $0.u32(0xE1E10); $0.u16(0xCAFE) } == Self.c { oy_layout_nvsp_send_receive_buffer($0, 0xE1E10, 0xCAFE) })
        #expect(NetworkProtocol.encode(.sendReceiveBufferComplete) { w in
            w.u32(1); w.u32(1); w.u32(0); w.u32(2048); w.u32(128); w.u32(128 * 2048)
        } == Self.c { oy_layout_nvsp_receive_buffer_complete($0, 1, 2048, 128) })
        #expect(NetworkProtocol.encode(.sendSendBufferComplete) { $0.u32(1); $0.u32(6144) } == Self.c { oy_layout_nvsp_send_buffer_complete($0, 1, 6144) })
        #expect(NetworkProtocol.encode(.sendRNDISPacket) { $0.u32(1); $0.u32(NetworkProtocol.noSection); $0.u32(0) }
            == Self.c { oy_layout_nvsp_send_rndis_packet($0, 1, 0xFFFF_FFFF, 0) })
    }

    @Test func rndisMessagesAreTheRealStructs() {
        let frame = (0..<60).map { UInt8($0) }
        #expect(RNDIS.packet(frame) == Self.c { out in frame.withUnsafeBufferPointer { oy_layout_rndis_packet(out, $0.baseAddress, 60) } })
        #expect(RNDIS.initialize(requestID: 7) == Self.c { oy_layout_rndis_initialize($0, 7, 0x4000) })
        #expect(RNDIS.initializeComplete(requestID: 7, status: 0, maxPacketsPerMessage: 8, maxTransfer: 6144, alignmentShift: 3)
            == Self.c { oy_layout_rndis_initialize_complete($0, 7, 0, 8, 6144, 3) })
        #expect(RNDIS.request(RNDIS.MessageType.query, requestID: 9, oid: RNDIS.OID.permanentAddress) == Self.c { oy_layout_rndis_query($0, 9, 0x0101_0101) })
        let mac: [UInt8] = [0x00, 0x15, 0x5D, 1, 2, 3]
        #expect(RNDIS.queryComplete(requestID: 9, status: 0, information: mac)
            == Self.c { out in mac.withUnsafeBufferPointer { oy_layout_rndis_query_complete(out, 9, 0, $0.baseAddress, 6) } })
    }

    /// RNDIS INITIALIZE and its completion, byte for byte.
    @Test func rndisInitializeGoldenBytes() {
        #expect(RNDIS.initialize(requestID: 1) == GoldenBytes.hex("""
            02000000 18000000  01000000 01000000 00000000 00400000
            """))
        #expect(RNDIS.initializeComplete(requestID: 1, status: 0, maxPacketsPerMessage: 8, maxTransfer: 6144, alignmentShift: 3) == GoldenBytes.hex("""
            02000080 34000000  01000000 00000000 01000000 00000000 01000000 00000000
            08000000 00180000 03000000 00000000 00000000
            """))
    }

    @Test func rndisParsingRefusesLengthsAndOffsetsOutsideTheMessage() throws {
        var packet = RNDIS.packet([UInt8](repeating: 1, count: 60))
        #expect(try packet.withUnsafeBytes { try RNDIS.messages(in: $0) }.first?.frame() == [UInt8](repeating: 1, count: 60))
        packet.replaceSubrange(4..<8, with: [0xFF, 0, 0, 0])
        #expect(throws: RNDIS.ParseError.lengthBeyondBuffer(messageLength: 255, buffer: 104)) { try packet.withUnsafeBytes { try RNDIS.messages(in: $0) } }
        var offset = RNDIS.packet([1, 2, 3])
        offset.replaceSubrange(8..<12, with: [0xF0, 0xFF, 0xFF, 0xFF])
        let message = try offset.withUnsafeBytes { try RNDIS.messages(in: $0) }[0]
        #expect(throws: RNDIS.ParseError.self) { try message.frame() }
        #expect(throws: RNDIS.ParseError.truncated(have: 4)) { try [UInt8](repeating: 0, count: 4).withUnsafeBytes { try RNDIS.messages(in: $0) } }
    }
}

/// Hex literals for golden bytes.
enum GoldenBytes {
    static func hex(_ s: String) -> [UInt8] {
        let digits = Array(s.filter(\.isHexDigit))
        return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
    }
}

/// The remaining channel messages and the packet descriptor against their C structs.
@Suite struct SmallMessageLayoutTests {
    @Test(arguments: [
        (ChannelMessage.rescindOffer(relid: 7), 2 as UInt32, [7] as [UInt32]),
        (.closeChannel(relid: 7), 7, [7]),
        (.relidReleased(relid: 7), 13, [7]),
        (.openResult(relid: 7, openID: 3, status: 0xC000_0001), 6, [7, 3, 0xC000_0001]),
        (.gpadlCreated(relid: 7, gpadl: 0xE1E10, status: 0), 10, [7, 0xE1E10, 0]),
        (.gpadlTeardown(relid: 7, gpadl: 0xE1E10), 11, [7, 0xE1E10]),
        (.gpadlTorndown(gpadl: 0xE1E10), 12, [0xE1E10]),
        (.requestOffers, 3, []),
        (.allOffersDelivered, 4, []),
        (.unload, 16, []),
        (.unloadResponse, 17, []),
    ])
    func theyAreLinuxsStructs(_ message: ChannelMessage, _ type: UInt32, _ fields: [UInt32]) {
        let padded = fields + [0, 0, 0]
        #expect(message.encode() == CLayoutTests.c { out in padded.withUnsafeBufferPointer { oy_layout_small_message(out, type, $0.baseAddress) } })
    }

    @Test func aGPADLBodyIsItsNumberHandleAndPFNs() {
        let pfns = (0..<28).map { UInt64(0x9000 + $0) }
        let expected = NetworkLayoutTests.c { out in pfns.withUnsafeBufferPointer { oy_layout_gpadl_body(out, 1, 0xE1E10, $0.baseAddress, 28) } }
        #expect(ChannelMessage.gpadlBody(message: 1, gpadl: 0xE1E10, pfns: pfns).encode() == expected)
    }

    @Test func everyRingPacketStartsWithAVmpacketDescriptor() throws {
        let pair = RingPair()
        #expect(try pair.writer.write(Packet(kind: .inband, flags: Packet.completionRequested, transactionID: 0x1122_3344_5566_7788, payload: [UInt8](repeating: 9, count: 20))) != .full)
        let head = Array(UnsafeRawBufferPointer(start: pair.memory + Ring.controlSize, count: 16))
        // Inband (6), data 16 bytes in, 16 + 20 padded to 40 bytes = 5 quadwords, completion requested.
        #expect(head == CLayoutTests.c { oy_layout_packet_descriptor($0, 6, 2, 5, 1, 0x1122_3344_5566_7788) })
    }
}
