import Foundation
import Hypervisor
import Machine
import Logging

/// A device the root offers to a child over VMBus.
public struct DeviceOffer: Sendable {
    public let interfaceType: UUID
    public let instance: UUID
    public let name: String
    /// Makes the handler for a newly opened channel.
    public let open: @Sendable (ChannelContext) -> ChannelHandler

    public init(interfaceType: UUID, instance: UUID, name: String, open: @escaping @Sendable (ChannelContext) -> ChannelHandler) {
        self.interfaceType = interfaceType
        self.instance = instance
        self.name = name
        self.open = open
    }
}

/// What a VSP's handler may use: the child's granted memory, by GPADL.
public struct ChannelContext: Sendable {
    public let child: PartitionID
    public let relid: UInt32
    public let server: VMBusServer

    /// The GPADL `id` of this child, if it was created and accepted.
    public func gpadl(_ id: UInt32) -> GPADLMapping? { server.gpadl(child: child, id: id) }

    /// Maps the child pages a request names (its GPA_DIRECT ranges) into the
    /// root's view until `release()`; `writable` when the device writes them.
    public func mapRequest(_ ranges: [GPARange], writable: Bool) throws(RequestMapping.Refusal) -> RequestMapping {
        guard let cache = server.requestMappings(child: child) else { throw .notChildMemory(gpa: ranges.first?.gpa ?? 0, length: ranges.first?.length ?? 0) }
        return try cache.map(ranges, writable: writable)
    }
}

/// The root side of VMBus: one connection per child, offers, GPADLs,
/// channel open/close and rescind. Control messages arrive on the root VP's
/// SINT 2 and are handled on one serial queue; each open channel runs on its
/// own thread. Everything a child sends is validated; a malformed or
/// out-of-state message is logged and refused, never trusted.
public final class VMBusServer: @unchecked Sendable {
    // @unchecked Sendable: `children` and `log` are guarded by `lock`;
    // per-child state is touched only on `queue`.
    final class ChildConnection {
        enum State { case disconnected, connected(version: UInt32), offersSent }
        let id: PartitionID
        let slot: Int
        var state: State = .disconnected
        var offers: [UInt32: DeviceOffer] = [:]
        var rescinded: Set<UInt32> = []
        var pendingGPADL: [UInt32: (relid: UInt32, total: Int, pfns: [UInt64], nextBody: UInt32)] = [:]
        var gpadls: [UInt32: GPADLMapping] = [:]
        var channels: [UInt32: HostChannel] = [:]
        var nextRelid: UInt32 = 1
        /// Views of the child's pages that requests named (storage data, network page lists).
        let requestMappings: ForeignMappingCache

        init(id: PartitionID, slot: Int, requestMappings: ForeignMappingCache) {
            self.id = id
            self.slot = slot
            self.requestMappings = requestMappings
        }
    }

    public let hypercalls: Hypercalls
    let root: Partition
    private let lock = NSLock()
    private var children: [PartitionID: ChildConnection] = [:]
    private var slotsByPort: [UInt64: PartitionID] = [:]
    /// Open channels by event flag, so the root VP signals them directly.
    private var channelsByFlag: [Int: HostChannel] = [:]
    private var events: [String] = []
    private let queue = DispatchQueue(label: "oyako.vmbus.server")
    private let logger = Logger(label: "oyako.vmbus")

    public init(root: Partition) {
        self.root = root
        self.hypercalls = root.hypercalls
    }

    /// Lines the server logged about children: violations and lifecycle.
    public var eventLog: [String] { lock.withLock { events } }

    func note(_ line: String, warning: Bool = false) {
        lock.withLock {
            events.append(line)
            if events.count > 1024 { events.removeFirst(256) }
        }
        if warning { logger.warning("\(line)") } else { logger.info("\(line)") }
    }

    // MARK: Children

    /// Creates the SynIC ports and connections VMBus needs for `child` (its
    /// VP 0 must exist). Returns when the child may initiate contact.
    public func attach(child: PartitionID) throws(HvStatus) {
        let slot = lock.withLock { () -> Int in
            let used = Set(children.values.map(\.slot))
            return (0..<Topology.maxChildren).first { !used.contains($0) } ?? -1
        }
        guard slot >= 0 else { throw .insufficientBuffers }
        try hypercalls.createPort(in: child, port: .message(id: Topology.childMessagePort, sint: Topology.messageSINT))
        try hypercalls.createPort(in: child, port: .event(id: Topology.childEventPort, flags: 0..<Topology.channelsPerChild, sint: Topology.childEventSINT))
        try hypercalls.createPort(in: root.id, port: .message(id: Topology.rootMessagePort(slot: slot), sint: Topology.messageSINT))
        try hypercalls.connectPort(from: child, connectionID: Topology.childMessageConnection, to: root.id, portID: Topology.rootMessagePort(slot: slot))
        try hypercalls.connectPort(from: child, connectionID: Topology.childMessageConnectionV5, to: root.id, portID: Topology.rootMessagePort(slot: slot))
        try hypercalls.connectPort(from: root.id, connectionID: Topology.rootMessageConnection(slot: slot), to: child, portID: Topology.childMessagePort)
        try hypercalls.connectPort(from: root.id, connectionID: Topology.rootEventConnection(slot: slot), to: child, portID: Topology.childEventPort)
        lock.withLock {
            children[child] = ChildConnection(id: child, slot: slot, requestMappings: ForeignMappingCache(child: child, hypercalls: hypercalls, view: root.memory.guestMemory))
            slotsByPort[UInt64(Topology.rootMessagePort(slot: slot))] = child
        }
    }

    /// Offers a device to a child; sent now if the child already asked for
    /// offers, otherwise when it does. Returns the channel's relid.
    @discardableResult
    public func offer(_ device: DeviceOffer, to child: PartitionID) -> UInt32? {
        let relid: UInt32? = queue.sync {
            guard let c = connection(child), c.nextRelid < UInt32(Topology.channelsPerChild) else { return nil }
            let relid = c.nextRelid
            // The channel's own event port in the root, reached by the
            // connection id the offer names.
            let port = Topology.rootChannelEventPort(slot: c.slot, relid: relid)
            do {
                let flag = c.slot * Topology.channelsPerChild + Int(relid)
                try hypercalls.createPort(in: root.id, port: .event(id: port, flags: flag..<(flag + 1), sint: Topology.rootEventSINT))
                try hypercalls.connectPort(from: child, connectionID: Topology.channelEventConnection(relid: relid), to: root.id, portID: port)
            } catch {
                try? hypercalls.deletePort(in: root.id, portID: port)
                note("child \(child): no event port for relid \(relid) (\(error)); not offered", warning: true)
                return nil
            }
            c.nextRelid += 1
            c.offers[relid] = device
            if case .offersSent = c.state { post(c, offerMessage(device, relid: relid)) }
            return relid
        }
        return relid
    }

    /// Withdraws a device: the channel closes now, whatever the child does;
    /// the child tears down and answers RELID_RELEASED. `reason` is logged.
    public func rescind(relid: UInt32, child: PartitionID, reason: String? = nil) {
        queue.sync {
            guard let c = connection(child), c.offers[relid] != nil else { return }
            // Noted first: whoever sees the channel close can find why.
            note("child \(child): rescinded relid \(relid)" + (reason.map { ": \($0)" } ?? ""))
            c.rescinded.insert(relid)
            if let channel = c.channels.removeValue(forKey: relid) {
                channel.close(.rescinded)
            }
            post(c, .rescindOffer(relid: relid))
        }
    }

    /// Forgets a child (after its partition was finalized): closes its
    /// channels and unmaps what it granted.
    public func detach(child: PartitionID) {
        let channels: [HostChannel] = queue.sync {
            guard let c = connection(child) else { return [] }
            let open = Array(c.channels.values)
            for channel in open { channel.close(nil) }
            c.channels.removeAll()
            return open
        }
        for channel in channels { channel.waitUntilFinished() }
        queue.sync {
            guard let c = connection(child) else { return }
            for mapping in c.gpadls.values { try? hypercalls.unmapForeignPages(rootGPA: mapping.rootGPA.raw, count: mapping.pfns.count) }
            c.gpadls.removeAll()
            c.requestMappings.removeAll()
            // The slot's ports in the root go too, so a later child can reuse it.
            try? hypercalls.deletePort(in: root.id, portID: Topology.rootMessagePort(slot: c.slot))
            for relid in c.offers.keys { try? hypercalls.deletePort(in: root.id, portID: Topology.rootChannelEventPort(slot: c.slot, relid: relid)) }
            let slot = c.slot
            lock.withLock {
                children[child] = nil
                slotsByPort = slotsByPort.filter { $0.value != child }
                channelsByFlag = channelsByFlag.filter { $0.key / Topology.channelsPerChild != slot }
            }
        }
    }

    /// Open channels of a child, by relid.
    public func channels(of child: PartitionID) -> [UInt32: HostChannel] {
        queue.sync { connection(child)?.channels ?? [:] }
    }

    func requestMappings(child: PartitionID) -> ForeignMappingCache? { lock.withLock { children[child]?.requestMappings } }

    /// Pages of `child` the root keeps mapped for requests now.
    public func requestPagesMapped(child: PartitionID) -> Int { requestMappings(child: child)?.pagesMapped ?? 0 }

    func gpadl(child: PartitionID, id: UInt32) -> GPADLMapping? {
        lock.withLock { children[child] }.flatMap { c in queue.sync { c.gpadls[id] } }
    }

    private func connection(_ child: PartitionID) -> ChildConnection? { lock.withLock { children[child] } }

    // MARK: Interrupts (root VP thread)

    /// The root VP's SINT handler for VMBus: control messages on SINT 2,
    /// channel events on SINT 3.
    public func handleSINT(_ sint: Int, synic: SynIC) {
        if sint == Topology.messageSINT {
            while let message = synic.readMessage(sint: sint) {
                synic.completeMessage(sint: sint)
                guard let child = lock.withLock({ slotsByPort[message.origin] }) else { continue }
                queue.async { self.handleMessage(message, from: child) }
            }
        } else if sint == Topology.rootEventSINT {
            for flag in synic.takeEventFlags(sint: sint) {
                lock.withLock { channelsByFlag[flag] }?.signal()
            }
        }
    }

    // MARK: Control messages (server queue)

    private func handleMessage(_ raw: HvMessage, from child: PartitionID) {
        guard let c = connection(child) else { return }
        guard raw.type == ChannelMessage.synicMessageType else {
            note("child \(child): SynIC message type \(raw.type) is not VMBus; ignored", warning: true)
            return
        }
        let message: ChannelMessage
        do {
            message = try ChannelMessage.decode(raw.payload)
        } catch {
            note("child \(child): malformed channel message: \(error.reason); ignored", warning: true)
            return
        }
        switch (message, c.state) {
        case (.initiateContact(let version, _, _), _):
            if let supported = Topology.hostVersions.first(where: { $0 == version }) {
                c.state = .connected(version: supported)
                // From 5.0 the response names the connection to post messages to.
                post(c, .versionResponse(supported: true, messageConnectionID: supported >= 0x0005_0000 ? Topology.childMessageConnectionV5 : 0))
                note("child \(child): VMBus version \(version >> 16).\(version & 0xFFFF)")
            } else {
                post(c, .versionResponse(supported: false))
            }
        case (.requestOffers, .connected), (.requestOffers, .offersSent):
            c.state = .offersSent
            for (relid, device) in c.offers.sorted(by: { $0.key < $1.key }) where !c.rescinded.contains(relid) {
                post(c, offerMessage(device, relid: relid))
            }
            post(c, .allOffersDelivered)
        case (.gpadlHeader(let relid, let gpadl, let total, let pfns), .offersSent):
            beginGPADL(c, relid: relid, gpadl: gpadl, total: total, pfns: pfns)
        case (.gpadlBody(let number, let gpadl, let pfns), .offersSent):
            continueGPADL(c, number: number, gpadl: gpadl, pfns: pfns)
        case (.openChannel(let relid, let openID, let ringGPADL, let offset, _), .offersSent):
            openChannel(c, relid: relid, openID: openID, ringGPADL: ringGPADL, downstreamPages: Int(offset))
        case (.closeChannel(let relid), .offersSent):
            if let channel = c.channels.removeValue(forKey: relid) {
                channel.close(nil)
                note("child \(child): closed relid \(relid)")
            }
        case (.gpadlTeardown(_, let gpadl), .offersSent):
            tearDownGPADL(c, gpadl: gpadl)
        case (.relidReleased(let relid), _):
            c.rescinded.remove(relid)
            c.offers[relid] = nil
        case (.unload, _):
            for channel in c.channels.values { channel.close(nil) }
            c.channels.removeAll()
            c.state = .disconnected
            post(c, .unloadResponse)
        default:
            note("child \(child): \(message) not valid in state \(c.state); ignored", warning: true)
        }
    }

    /// GPADL_HEADER: a GPADL begins; its body messages may follow.
    private func beginGPADL(_ c: ChildConnection, relid: UInt32, gpadl: UInt32, total: UInt32, pfns: [UInt64]) {
        guard c.offers[relid] != nil, c.gpadls[gpadl] == nil, c.pendingGPADL[gpadl] == nil, total > 0, total <= 65536 else {
            refuseGPADL(c, relid: relid, gpadl: gpadl, "GPADL header \(gpadl) for relid \(relid) is invalid, duplicate or too large (\(total) pages)")
            return
        }
        c.pendingGPADL[gpadl] = (relid, Int(total), pfns, 1)
        completeGPADLIfWhole(c, gpadl)
    }

    /// GPADL_BODY: more pages of a GPADL, in order.
    private func continueGPADL(_ c: ChildConnection, number: UInt32, gpadl: UInt32, pfns: [UInt64]) {
        guard var pending = c.pendingGPADL[gpadl] else {
            note("child \(c.id): GPADL body for unknown GPADL \(gpadl); ignored", warning: true)
            return
        }
        guard number == pending.nextBody, pending.pfns.count + pfns.count <= pending.total else {
            c.pendingGPADL[gpadl] = nil
            refuseGPADL(c, relid: pending.relid, gpadl: gpadl, "GPADL \(gpadl) body \(number) out of order or beyond \(pending.total) pages")
            return
        }
        pending.pfns += pfns
        pending.nextBody += 1
        c.pendingGPADL[gpadl] = pending
        completeGPADLIfWhole(c, gpadl)
    }

    /// GPADL_TEARDOWN: the child takes its pages back (closing a channel
    /// still using them first).
    private func tearDownGPADL(_ c: ChildConnection, gpadl: UInt32) {
        guard let mapping = c.gpadls[gpadl] else {
            note("child \(c.id): teardown of unknown GPADL \(gpadl); ignored", warning: true)
            return
        }
        if let channel = c.channels[mapping.relid], channel.isOpen {
            // Tearing down memory under an open channel: close it first.
            c.channels[mapping.relid] = nil
            channel.close(.gpadlTornDown(gpadl))
        }
        c.gpadls[gpadl] = nil
        unmapWhenIdle(mapping, child: c)
        post(c, .gpadlTorndown(gpadl: gpadl))
    }

    private func refuseGPADL(_ c: ChildConnection, relid: UInt32, gpadl: UInt32, _ reason: String) {
        note("child \(c.id): \(reason); refused", warning: true)
        post(c, .gpadlCreated(relid: relid, gpadl: gpadl, status: ChannelStatus.refused))
    }

    private func completeGPADLIfWhole(_ c: ChildConnection, _ gpadl: UInt32) {
        guard let pending = c.pendingGPADL[gpadl], pending.pfns.count == pending.total else { return }
        c.pendingGPADL[gpadl] = nil
        do {
            let rootGPA = try hypercalls.mapForeignPages(from: c.id, gpaPages: pending.pfns, writable: true)
            guard let window = root.memory.guestMemory.window(at: GuestAddress(rootGPA), count: pending.pfns.count * PhysicalMemory.pageSize) else {
                return refuseGPADL(c, relid: pending.relid, gpadl: gpadl, "GPADL \(gpadl) was mapped outside the root's view")
            }
            let mapping = GPADLMapping(id: gpadl, relid: pending.relid, pfns: pending.pfns, window: window)
            c.gpadls[gpadl] = mapping
            post(c, .gpadlCreated(relid: pending.relid, gpadl: gpadl, status: ChannelStatus.success))
        } catch {
            refuseGPADL(c, relid: pending.relid, gpadl: gpadl, "GPADL \(gpadl) names pages the child does not own (\(error))")
        }
    }

    private func openChannel(_ c: ChildConnection, relid: UInt32, openID: UInt32, ringGPADL: UInt32, downstreamPages: Int) {
        func refuse(_ reason: String) {
            note("child \(c.id): open of relid \(relid) refused: \(reason)", warning: true)
            post(c, .openResult(relid: relid, openID: openID, status: ChannelStatus.refused))
        }
        guard let device = c.offers[relid], !c.rescinded.contains(relid) else { return refuse("no such offer") }
        guard c.channels[relid] == nil else { return refuse("already open") }
        guard let ring = c.gpadls[ringGPADL], ring.relid == relid else { return refuse("ring GPADL \(ringGPADL) unknown or for another channel") }
        let pages = ring.pfns.count
        guard downstreamPages >= 2, pages - downstreamPages >= 2 else {
            return refuse("ring split at page \(downstreamPages) of \(pages) leaves a ring without data pages")
        }
        let page = PhysicalMemory.pageSize
        guard ring.pointer(gpa: GuestAddress.page(ring.pfns[0]), length: ring.length) != nil,
            let outboundBase = ring.pointer(offset: 0, length: downstreamPages * page),
            let inboundBase = ring.pointer(offset: downstreamPages * page, length: (pages - downstreamPages) * page)
        else {
            return refuse("ring GPADL pages are not consecutive")
        }
        guard let outbound = Ring(base: outboundBase, size: downstreamPages * page),
            let inbound = Ring(base: inboundBase, size: (pages - downstreamPages) * page)
        else { return refuse("ring control pages hold invalid indices") }
        let context = ChannelContext(child: c.id, relid: relid, server: self)
        let handler = device.open(context)
        let connectionID = Topology.rootEventConnection(slot: c.slot)
        let hypercalls = self.hypercalls
        let childID = c.id
        let flag = c.slot * Topology.channelsPerChild + Int(relid)
        let channel = HostChannel(
            relid: relid, child: c.id, name: "\(device.name)-p\(c.id)", outbound: outbound, inbound: inbound, handler: handler,
            logger: logger, signalChild: { try? hypercalls.signalEvent(connectionID: connectionID, flag: Int(relid)) },
            closed: { [weak self] reason in
                guard let self else { return }
                // A newer channel on the same relid is open: leave it mapped.
                lock.withLock { if let mapped = channelsByFlag[flag], !mapped.isOpen { channelsByFlag[flag] = nil } }
                guard let reason else { return }
                queue.async { self.closedOnViolation(child: childID, relid: relid, reason: reason) }
            })
        c.channels[relid] = channel
        lock.withLock { channelsByFlag[flag] = channel }
        channel.start()
        post(c, .openResult(relid: relid, openID: openID, status: ChannelStatus.success))
        note("child \(c.id): opened \(device.name) on relid \(relid)")
    }

    /// The root closed a channel because of what the child sent: tell the
    /// child by rescinding the offer (as Hyper-V does); it tears down.
    private func closedOnViolation(child: PartitionID, relid: UInt32, reason: String) {
        note("child \(child): channel relid \(relid) closed: \(reason)", warning: true)
        guard let c = connection(child), c.offers[relid] != nil, !c.rescinded.contains(relid) else { return }
        c.rescinded.insert(relid)
        post(c, .rescindOffer(relid: relid))
    }

    /// Unmaps a GPADL once nothing can still be using it.
    private func unmapWhenIdle(_ mapping: GPADLMapping, child c: ChildConnection) {
        let channel = c.channels[mapping.relid]
        let hypercalls = self.hypercalls
        DispatchQueue.global().async {
            channel?.waitUntilFinished()
            try? hypercalls.unmapForeignPages(rootGPA: mapping.rootGPA.raw, count: mapping.pfns.count)
        }
    }

    private func offerMessage(_ device: DeviceOffer, relid: UInt32) -> ChannelMessage {
        .offerChannel(interfaceType: device.interfaceType, instance: device.instance, relid: relid, connectionID: Topology.channelEventConnection(relid: relid))
    }

    /// Posts to the child, backing off while its message queue is full.
    private func post(_ c: ChildConnection, _ message: ChannelMessage) {
        let connection = Topology.rootMessageConnection(slot: c.slot)
        do {
            try PostWithBackoff.run({ () throws(HvStatus) in
                try hypercalls.postMessage(connectionID: connection, type: ChannelMessage.synicMessageType, payload: message.encode())
            }, wait: { Thread.sleep(forTimeInterval: $0) })
        } catch {
            switch error {
            case .queueFull: note("child \(c.id): message queue stayed full; dropped \(message)", warning: true)
            case .refused(let status): note("child \(c.id): cannot post \(message): \(status)", warning: true)
            }
        }
    }
}
