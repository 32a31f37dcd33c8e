import Foundation
import Hypervisor
import Machine

/// Why a guest-side VMBus operation failed.
/// Why a guest's VMBus operation failed: one case per failure.
public enum VMBusError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The root closed or rescinded the channel.
    case channelClosed(relid: UInt32)
    /// The channel's ring could not be used.
    case ring(relid: UInt32, RingError)
    case ringFull(relid: UInt32, seconds: Double)
    /// The hypervisor refused to post a message.
    case cannotPost(String)
    case messageQueueFull
    /// No answer from the root (or a provider) in time.
    case noAnswer(String, seconds: Double)
    /// The two sides share no protocol version.
    case noCommonVersion(String)
    case offersIncomplete
    case gpadlRefused(id: UInt32, status: UInt32)
    case openRefused(relid: UInt32, status: UInt32)
    case ringOutsideMemory(GuestAddress, pages: Int)
    case ringTooSmall(pages: Int, split: Int)
    case outOfGuestMemory(String)
    /// A device provider refused a setup step.
    case refused(String)
    /// A provider's answer could not be decoded.
    case malformedAnswer(String)
    /// A frame larger than a send section.
    case frameTooLarge(Int)
    /// The root offered no device of the kind needed.
    case noDevice(String)

    public var description: String {
        switch self {
        case .channelClosed(let relid): "channel \(relid) is closed"
        case .ring(let relid, let error): "channel \(relid): \(error)"
        case .ringFull(let relid, let seconds): "channel \(relid): ring stayed full for \(seconds) s"
        case .cannotPost(let what): "cannot post \(what)"
        case .messageQueueFull: "the root's message queue stayed full"
        case .noAnswer(let what, let seconds): "no \(what) within \(seconds) s"
        case .noCommonVersion(let what): "no common version: \(what)"
        case .offersIncomplete: "offers were not all delivered"
        case .gpadlRefused(let id, let status): "the root refused GPADL \(id) (status 0x\(String(status, radix: 16)))"
        case .openRefused(let relid, let status): "the root refused to open relid \(relid) (status 0x\(String(status, radix: 16)))"
        case .ringOutsideMemory(let address, let pages): "ring at \(address) (\(pages) pages) is outside this partition's memory"
        case .ringTooSmall(let pages, let split): "ring of \(pages) pages split at \(split) is too small"
        case .outOfGuestMemory(let what): "out of guest memory for \(what)"
        case .refused(let what): "\(what) refused"
        case .malformedAnswer(let what): "malformed answer: \(what)"
        case .frameTooLarge(let bytes): "frame of \(bytes) bytes too large"
        case .noDevice(let what): "no \(what) offered"
        }
    }
}

/// A device the root offered.
public struct Offer: Sendable, Equatable {
    public let interfaceType: UUID
    public let instance: UUID
    public let relid: UInt32
    /// Where to signal the root for this channel (flag 0).
    public let connectionID: UInt32
}

/// The guest's end of a channel: writes the outbound ring, reads the
/// inbound one. Used only on the guest VP's thread.
public final class ClientChannel: @unchecked Sendable {
    // @unchecked Sendable: confined to the guest VP thread.
    public let relid: UInt32
    public let ringGPADL: UInt32
    /// The offer's connection id: the channel's signals to the root.
    public let connectionID: UInt32
    let outbound: Ring
    let inbound: Ring
    /// Weak: the client owns its channels. A channel kept past its client
    /// (a VSC outliving its guest OS) is closed, not a crash.
    private weak let client: VMBusClient?
    /// Called for each packet from the root, on the VP thread.
    public var onPacket: ((Packet) -> Void)?
    /// Called once when the root rescinds the channel.
    public var onRescind: (() -> Void)?
    public private(set) var isOpen = true
    private var spaceSignalled = false
    public private(set) var signalsSent = 0
    public private(set) var spuriousSignals = 0

    init(relid: UInt32, connectionID: UInt32, ringGPADL: UInt32, outbound: Ring, inbound: Ring, client: VMBusClient) {
        self.relid = relid
        self.connectionID = connectionID
        self.ringGPADL = ringGPADL
        self.outbound = outbound
        self.inbound = inbound
        self.client = client
    }

    public var outboundStatistics: Ring.Statistics { outbound.statistics }
    public var inboundStatistics: Ring.Statistics { inbound.statistics }

    /// Writes a packet, signalling the root only when the ring went from
    /// empty to non-empty with the root's interrupts unmasked. When the ring
    /// is full, halts until the root frees space (pending send size).
    public func send(_ packet: Packet, timeout: Double = 10) throws(VMBusError) {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while true {
            guard isOpen, let client else { throw .channelClosed(relid: relid) }
            let result: Ring.WriteResult
            do {
                result = try outbound.write(packet)
            } catch {
                throw .ring(relid: relid, error)
            }
            if case .written(let signal) = result {
                if signal { signalRoot() }
                return
            }
            spaceSignalled = false
            let remaining = deadline.timeIntervalSinceNow
            guard remaining > 0, client.vp.halt(until: { self.spaceSignalled || !self.isOpen }, timeout: remaining) else {
                throw .ringFull(relid: relid, seconds: timeout)
            }
        }
    }

    func signalRoot() {
        signalsSent += 1
        try? client?.partition.hypercalls.signalEvent(connectionID: connectionID, flag: 0)
    }

    /// The root signalled: new packets, or space it freed for us.
    func signalled() {
        spaceSignalled = true
        var signalWriter = false
        var received = 0
        do {
            repeat {
                inbound.maskInterrupts()
                while let packet = try inbound.read(signalWriter: &signalWriter) {
                    received += 1
                    onPacket?(packet)
                }
            } while inbound.unmaskInterrupts()
        } catch {
            // The root wrote something impossible; stop using the channel.
            isOpen = false
            return
        }
        if received == 0 && outbound.bytesAvailable == 0 { spuriousSignals += 1 }
        if signalWriter { signalRoot() }
    }

    func markRescinded() {
        guard isOpen else { return }
        isOpen = false
        onRescind?()
    }
}

/// The guest side of VMBus. All calls run on the guest VP's thread; waits
/// halt the VP so that interrupts (the root's answers) are taken meanwhile.
public final class VMBusClient: @unchecked Sendable {
    // @unchecked Sendable: confined to the guest VP thread.
    public let partition: Partition
    public let vp: VirtualProcessor
    public private(set) var version: UInt32?
    /// Where messages go: by version at contact, then what the root named.
    public private(set) var messageConnection = Topology.childMessageConnection
    public private(set) var offers: [Offer] = []
    private var allOffersDelivered = false
    private var responses: [ChannelMessage] = []
    private var channels: [UInt32: ClientChannel] = [:]
    private var nextGPADL: UInt32 = 0x100
    private var nextOpenID: UInt32 = 1
    public var timeout: Double = 10

    /// Versions the guest asks for, newest first.
    public static let guestVersions: [UInt32] = [0x0005_0003, 0x0005_0002, 0x0005_0001, 0x0005_0000, 0x0004_0000]

    public init(partition: Partition, vp: VirtualProcessor) {
        self.partition = partition
        self.vp = vp
    }

    /// The VP's SINT handler for VMBus: messages and channel events.
    public func handleSINT(_ sint: Int) {
        guard sint == Topology.messageSINT else { return }
        while let raw = vp.synic.readMessage(sint: sint) {
            vp.synic.completeMessage(sint: sint)
            guard raw.type == ChannelMessage.synicMessageType, let message = try? ChannelMessage.decode(raw.payload) else { continue }
            switch message {
            case .offerChannel(let type, let instance, let relid, let connection):
                offers.append(Offer(interfaceType: type, instance: instance, relid: relid, connectionID: connection))
            case .allOffersDelivered:
                allOffersDelivered = true
            case .rescindOffer(let relid):
                rescind(relid)
            default:
                responses.append(message)
            }
        }
        for flag in vp.synic.takeEventFlags(sint: Topology.childEventSINT) {
            channels[UInt32(flag)]?.signalled()
        }
    }

    private func post(_ message: ChannelMessage) throws(VMBusError) {
        do {
            // The guest waits by halting its VP, so it still takes interrupts.
            try PostWithBackoff.run({ () throws(HvStatus) in
                try partition.hypercalls.postMessage(connectionID: messageConnection, type: ChannelMessage.synicMessageType, payload: message.encode())
            }, wait: { _ = vp.halt(until: { false }, timeout: $0) })
        } catch {
            switch error {
            case .queueFull: throw .messageQueueFull
            case .refused(let status): throw .cannotPost("\(message): \(status)")
            }
        }
    }

    /// Waits for the first response `match` accepts, and removes it.
    private func waitFor<T>(_ what: String, _ match: @escaping (ChannelMessage) -> T?) throws(VMBusError) -> T {
        var found: T?
        let done = vp.halt(until: {
            if let i = self.responses.firstIndex(where: { match($0) != nil }) {
                found = match(self.responses.remove(at: i))
                return true
            }
            return false
        }, timeout: timeout)
        guard done, let found else { throw .noAnswer("\(what) from the root", seconds: timeout) }
        return found
    }

    /// Initiates contact (newest version first), asks for offers and waits
    /// until all are delivered. Returns the negotiated version.
    @discardableResult
    public func connect() throws(VMBusError) -> UInt32 {
        for candidate in Self.guestVersions {
            messageConnection = Topology.contactConnection(for: candidate)
            try post(.initiateContact(version: candidate, targetVP: 0, messageSINT: UInt8(Topology.messageSINT)))
            let answer = try waitFor("version response") { message -> (Bool, UInt32)? in
                if case .versionResponse(let supported, _, let connection) = message { return (supported, connection) }
                return nil
            }
            let accepted = answer.0
            if accepted && candidate >= 0x0005_0000 && answer.1 != 0 { messageConnection = answer.1 }
            if accepted {
                version = candidate
                break
            }
        }
        guard let version else { throw .noCommonVersion("the root speaks none of VMBus versions \(Self.guestVersions.map { String($0, radix: 16) })") }
        try post(.requestOffers)
        guard vp.halt(until: { self.allOffersDelivered }, timeout: timeout) else { throw .offersIncomplete }
        return version
    }

    /// Grants the root access to `pages` pages at `gpa` (header, then body
    /// messages for what does not fit). Returns the GPADL id.
    public func createGPADL(relid: UInt32, gpa: UInt64, pages: Int) throws(VMBusError) -> UInt32 {
        try createGPADL(relid: relid, pfns: (0..<UInt64(pages)).map { GuestAddress(gpa).pageNumber + $0 })
    }

    /// Grants an explicit page list (tests use it to name foreign pages).
    public func createGPADL(relid: UInt32, pfns: [UInt64]) throws(VMBusError) -> UInt32 {
        let id = nextGPADL
        nextGPADL += 1
        let first = ChannelMessage.pfnsPerMessage, per = ChannelMessage.pfnsPerBody
        try post(.gpadlHeader(relid: relid, gpadl: id, totalPages: UInt32(pfns.count), pfns: Array(pfns.prefix(first))))
        var message: UInt32 = 1
        var offset = first
        while offset < pfns.count {
            try post(.gpadlBody(message: message, gpadl: id, pfns: Array(pfns[offset..<min(offset + per, pfns.count)])))
            message += 1
            offset += per
        }
        let status = try waitFor("GPADL_CREATED for \(id)") { m -> UInt32? in
            if case .gpadlCreated(_, id, let status) = m { return status }
            return nil
        }
        guard status == ChannelStatus.success else { throw .gpadlRefused(id: id, status: status) }
        return id
    }

    public func teardownGPADL(relid: UInt32, gpadl: UInt32) throws(VMBusError) {
        try post(.gpadlTeardown(relid: relid, gpadl: gpadl))
        _ = try waitFor("GPADL_TORNDOWN for \(gpadl)") { m -> Bool? in
            if case .gpadlTorndown(gpadl) = m { return true }
            return nil
        }
    }

    /// Opens a channel whose rings live in `ringPages` pages at `ringGPA`:
    /// the first `outboundPages` for guest->root, the rest root->guest.
    public func open(relid: UInt32, ringGPA: UInt64, ringPages: Int, outboundPages: Int) throws(VMBusError) -> ClientChannel {
        guard let base = partition.memory.guestMemory.pointer(at: GuestAddress(ringGPA), count: ringPages * PhysicalMemory.pageSize) else {
            throw .ringOutsideMemory(GuestAddress(ringGPA), pages: ringPages)
        }
        guard let outbound = Ring(base: base, size: outboundPages * PhysicalMemory.pageSize),
            let inbound = Ring(base: base + outboundPages * PhysicalMemory.pageSize, size: (ringPages - outboundPages) * PhysicalMemory.pageSize)
        else { throw .ringTooSmall(pages: ringPages, split: outboundPages) }
        outbound.reset()
        inbound.reset()
        let gpadl = try createGPADL(relid: relid, gpa: ringGPA, pages: ringPages)
        let openID = nextOpenID
        nextOpenID += 1
        try post(.openChannel(relid: relid, openID: openID, ringGPADL: gpadl, downstreamPageOffset: UInt32(outboundPages), targetVP: 0))
        let status = try waitFor("OPENCHANNEL_RESULT for \(relid)") { m -> UInt32? in
            if case .openResult(relid, openID, let status) = m { return status }
            return nil
        }
        guard status == ChannelStatus.success else { throw .openRefused(relid: relid, status: status) }
        let connection = offers.first { $0.relid == relid }?.connectionID ?? Topology.channelEventConnection(relid: relid)
        let channel = ClientChannel(relid: relid, connectionID: connection, ringGPADL: gpadl, outbound: outbound, inbound: inbound, client: self)
        channels[relid] = channel
        return channel
    }

    /// Closes a channel and tears down its ring GPADL.
    public func close(_ channel: ClientChannel) throws(VMBusError) {
        channels[channel.relid] = nil
        try post(.closeChannel(relid: channel.relid))
        try teardownGPADL(relid: channel.relid, gpadl: channel.ringGPADL)
    }

    /// The root withdrew the offer: stop using the channel, release it.
    private func rescind(_ relid: UInt32) {
        offers.removeAll { $0.relid == relid }
        if let channel = channels.removeValue(forKey: relid) {
            channel.markRescinded()
            try? post(.gpadlTeardown(relid: relid, gpadl: channel.ringGPADL))
        }
        try? post(.relidReleased(relid: relid))
    }

    /// Sends a raw control message (tests use it to play a hostile child).
    public func sendRaw(_ message: ChannelMessage) throws(VMBusError) { try post(message) }
}
