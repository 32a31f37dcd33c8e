import Foundation
import Kernel
import Logging
import Machine
import VhostUser

/// The root's vhost-user back-ends: the devices a real VM (QEMU with
/// `-chardev socket,path=… -device vhost-user-…`) gets, each served from
/// the root OS's own device class, so the vendor's driver file that runs
/// bare serves the guest too. What goes wrong with a VMM or a guest (a
/// refused message, a corrupted queue) is logged with the reason and, when
/// asked, passed to `events` too.
public enum VhostUserServices {
    /// Told each thing worth a log line about a VMM or its guest, in words.
    public typealias Events = @Sendable (String) -> Void

    /// Most entropy one request gets: Linux's virtio-rng posts buffers of
    /// a cache line or so; a guest asking for megabytes gets this much per
    /// chain and asks again, so it cannot tie up the source.
    public static let entropyPerChain = 4096

    /// A virtio-rng device whose bytes come from the root's entropy
    /// subsystem (its first hwrng, i.e. the vendor's rng driver).
    public static func rng(entropy: EntropySubsystem, events: Events? = nil) -> VhostUserRNG {
        let log = Log("rng", events)
        return VhostUserRNG(source: { buffer in
            let count = min(buffer.count, entropyPerChain)
            do {
                let bytes = try entropy.read(count, timeout: 1)
                buffer.copyBytes(from: bytes)
                return count
            } catch {
                // The guest's driver gets nothing for this request and asks again.
                log.warning("entropy for a guest: \(error)")
                return 0
            }
        }, failure: { error in log.error("a guest corrupted its rng queue; the queue is no longer served: \(error)") })
    }

    /// Serves virtio-rng on the Unix socket `path`, one device per
    /// connecting VMM. Stop the returned server to end every connection.
    public static func serveRNG(at path: String, entropy: EntropySubsystem, events: Events? = nil) throws(VhostUserServer.ListenError) -> VhostUserServer {
        try serve(Log("rng", events), at: path) { rng(entropy: entropy, events: events) }
    }

    /// A virtio-blk device on `region` (a region of a Kernel disk, so the
    /// vendor's block driver does its I/O).
    public static func block(region: DiskRegion, events: Events? = nil) -> VhostUserBlock {
        let log = Log("blk", events)
        return VhostUserBlock(target: region, failure: { error in
            log.error("a guest corrupted its queue on \(region.disk.name); the queue is no longer served: \(error)")
        })
    }

    /// Serves virtio-blk on `region` at the Unix socket `path`, to one VMM
    /// at a time: two would share its blocks, so a second VMM connecting
    /// while one is served is refused (and the refusal logged).
    public static func serveBlock(at path: String, access: SocketAccess = .owner, region: DiskRegion, events: Events? = nil) throws(VhostUserServer.ListenError)
        -> VhostUserServer
    {
        try serve(Log("blk", events), at: path, access: access, exclusive: true) { block(region: region, events: events) }
    }

    /// A virtio-net device on a new port of `vswitch` named `port`; the
    /// port goes when the device does (its VMM disconnected).
    public static func network(vswitch: VirtualSwitch, port name: String, mac: [UInt8], events: Events? = nil) throws(VirtualSwitch.PortRefused)
        -> VhostUserNet
    {
        let log = Log("net", events)
        let link = NICLink()
        let port = try vswitch.addPort(name: name, role: .child) { frame in link.device?.receive(frame) ?? false }
        let device = VhostUserNet(mac: mac, transmit: { frame, sent in port.input(frame, done: sent) }, failure: { error in
            log.error("\(name): a guest corrupted a queue of its NIC; the queue is no longer served: \(error)")
        }, closed: { vswitch.removePort(port) })
        link.device = device
        return device
    }

    /// Serves virtio-net at the Unix socket `path`: each VMM that connects
    /// gets a port on `vswitch` for as long as it stays connected.
    public static func serveNetwork(at path: String, vswitch: VirtualSwitch, port name: String, mac: [UInt8], events: Events? = nil)
        throws(VhostUserServer.ListenError) -> VhostUserServer
    {
        let log = Log("net", events)
        return try serve(log, at: path) {
            do {
                return try network(vswitch: vswitch, port: name, mac: mac, events: events)
            } catch {
                // The switch refused the port: the VMM gets a NIC whose frames go nowhere.
                log.error("\(name): \(error)")
                return VhostUserNet(mac: mac, transmit: { _ in })
            }
        }
    }

    private static func serve(_ log: Log, at path: String, access: SocketAccess = .owner, exclusive: Bool = false,
                              device: @escaping @Sendable () -> any VhostUserDevice) throws(VhostUserServer.ListenError) -> VhostUserServer
    {
        try VhostUserServer(path: path, access: access, exclusive: exclusive, makeBackend: { VhostUserBackend(device: device()) }, ended: { why in
            if case .frontEndClosed = why { log.info("a VMM's connection ended: \(why)") } else { log.error("a VMM's connection was ended: \(why)") }
        })
    }
}

/// One kind of back-end's log, mirrored to an observer.
private struct Log: Sendable {
    let logger: Logger
    let kind: String
    let events: VhostUserServices.Events?

    init(_ kind: String, _ events: VhostUserServices.Events?) {
        logger = Logger(label: "oyako.vhost-user.\(kind)")
        self.kind = kind
        self.events = events
    }

    func info(_ message: String) { logger.info("\(message)"); events?("\(kind): \(message)") }
    func warning(_ message: String) { logger.warning("\(message)"); events?("\(kind): \(message)") }
    func error(_ message: String) { logger.error("\(message)"); events?("\(kind): \(message)") }
}

/// The switch port's way to the device made after it (weak: the device
/// owns the port, not the other way round).
private final class NICLink: @unchecked Sendable {
    // @unchecked Sendable: set once, before the port can deliver a frame to it.
    weak var device: VhostUserNet?
}
