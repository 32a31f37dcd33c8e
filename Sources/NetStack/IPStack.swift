import Foundation

/// A minimal IPv4 host: ARP (answers and resolves), ICMP echo (answers and
/// pings), and a UDP echo service on port 7. Enough for a partition to be
/// reachable by a real `ping` and to ping its neighbours. Every field read
/// from a frame is checked; anything malformed is counted and dropped.
public final class IPStack: @unchecked Sendable {
    // @unchecked Sendable: mutable state is guarded by `lock`.
    public let mac: [UInt8]
    public let ip: [UInt8]
    private let transmit: @Sendable ([UInt8]) -> Void
    private let lock = NSLock()
    private var arp: [[UInt8]: [UInt8]] = [:]
    private var waiting: [[UInt8]: [[UInt8]]] = [:]
    private var replies: Set<UInt32> = []
    private var udpEchoes: [[UInt8]] = []

    public struct Counters: Sendable, Equatable {
        /// ARP requests answered.
        public var arpAnswered = 0
        /// ICMP echo: requests answered, replies to our pings.
        public var echoAnswered = 0, echoRepliesReceived = 0
        /// UDP echo (port 7): datagrams echoed, replies to ours.
        public var udpEchoed = 0, udpRepliesReceived = 0
        /// Frames dropped: malformed, or for someone else.
        public var malformed = 0, ignored = 0
    }

    private var counters_ = Counters()
    public var counters: Counters { lock.withLock { counters_ } }

    public static let udpEchoPort: UInt16 = 7

    public init(mac: [UInt8], ip: [UInt8], transmit: @escaping @Sendable ([UInt8]) -> Void) {
        self.mac = mac
        self.ip = ip
        self.transmit = transmit
    }

    // MARK: Receive

    public func received(_ frame: [UInt8]) {
        guard frame.count >= 14 else { return count(\.malformed) }
        let destination = Array(frame[0..<6])
        guard destination == mac || destination == Self.broadcast else { return count(\.ignored) }
        switch UInt16(frame[12]) << 8 | UInt16(frame[13]) {
        case 0x0806: arpReceived(frame)
        case 0x0800: ipReceived(frame)
        default: count(\.ignored)
        }
    }

    private func count(_ field: WritableKeyPath<Counters, Int>) { lock.withLock { counters_[keyPath: field] += 1 } }

    private func arpReceived(_ f: [UInt8]) {
        guard f.count >= 42, f[14...21] == [0, 1, 8, 0, 6, 4, 0, 1][...] || f[14...21] == [0, 1, 8, 0, 6, 4, 0, 2][...] else {
            return count(\.malformed)
        }
        let senderMAC = Array(f[22..<28]), senderIP = Array(f[28..<32]), targetIP = Array(f[38..<42])
        let queued = lock.withLock { () -> [[UInt8]] in
            arp[senderIP] = senderMAC
            return waiting.removeValue(forKey: senderIP) ?? []
        }
        for packet in queued { transmit(senderMAC + mac + [0x08, 0x00] + packet) }
        if f[21] == 1 && targetIP == ip {
            count(\.arpAnswered)
            transmit(senderMAC + mac + [0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2] + mac + ip + senderMAC + senderIP)
        }
    }

    private func ipReceived(_ f: [UInt8]) {
        guard f.count >= 34, f[14] >> 4 == 4 else { return count(\.malformed) }
        let headerLength = Int(f[14] & 0xF) * 4
        let total = Int(f[16]) << 8 | Int(f[17])
        guard headerLength >= 20, total >= headerLength, 14 + total <= f.count, Self.checksum(f[14..<(14 + headerLength)]) == 0 else {
            return count(\.malformed)
        }
        let source = Array(f[26..<30]), destination = Array(f[30..<34])
        guard destination == ip else { return count(\.ignored) }
        let payload = Array(f[(14 + headerLength)..<(14 + total)])
        lock.withLock { arp[source] = Array(f[6..<12]) }
        switch f[23] {
        case 1: icmpReceived(payload, from: source)
        case 17: udpReceived(payload, from: source)
        default: count(\.ignored)
        }
    }

    private func icmpReceived(_ p: [UInt8], from source: [UInt8]) {
        guard p.count >= 8, Self.checksum(p[...]) == 0 else { return count(\.malformed) }
        switch p[0] {
        case 8:  // echo request: answer with the same id, sequence and data
            count(\.echoAnswered)
            var reply = p
            reply[0] = 0
            reply[2] = 0
            reply[3] = 0
            let sum = Self.checksum(reply[...])
            reply[2] = UInt8(sum >> 8)
            reply[3] = UInt8(sum & 0xFF)
            sendIP(reply, protocol: 1, to: source)
        case 0:
            let key = UInt32(p[4]) << 24 | UInt32(p[5]) << 16 | UInt32(p[6]) << 8 | UInt32(p[7])
            lock.withLock {
                counters_.echoRepliesReceived += 1
                replies.insert(key)
            }
        default:
            count(\.ignored)
        }
    }

    private func udpReceived(_ p: [UInt8], from source: [UInt8]) {
        guard p.count >= 8 else { return count(\.malformed) }
        let sourcePort = UInt16(p[0]) << 8 | UInt16(p[1]), destinationPort = UInt16(p[2]) << 8 | UInt16(p[3])
        let length = Int(p[4]) << 8 | Int(p[5])
        guard length >= 8, length <= p.count else { return count(\.malformed) }
        let data = Array(p[8..<length])
        if destinationPort == Self.udpEchoPort {
            count(\.udpEchoed)
            sendUDP(to: source, from: Self.udpEchoPort, port: sourcePort, data)
        } else if sourcePort == Self.udpEchoPort {
            lock.withLock {
                counters_.udpRepliesReceived += 1
                udpEchoes.append(data)
            }
        } else {
            count(\.ignored)
        }
    }

    // MARK: Send

    /// Sends an ICMP echo request; `hasReply(id:sequence:)` tells when it was answered.
    public func ping(_ target: [UInt8], id: UInt16, sequence: UInt16, data: [UInt8] = Array("oyako".utf8)) {
        var icmp: [UInt8] = [8, 0, 0, 0, UInt8(id >> 8), UInt8(id & 0xFF), UInt8(sequence >> 8), UInt8(sequence & 0xFF)] + data
        let sum = Self.checksum(icmp[...])
        icmp[2] = UInt8(sum >> 8)
        icmp[3] = UInt8(sum & 0xFF)
        sendIP(icmp, protocol: 1, to: target)
    }

    public func hasReply(id: UInt16, sequence: UInt16) -> Bool {
        lock.withLock { replies.contains(UInt32(id) << 16 | UInt32(sequence)) }
    }

    /// Pings `target` `count` times from an ordinary thread (not a VP,
    /// which halts instead), waiting up to `timeout` seconds for each
    /// reply; returns how many were answered.
    public func pingAndWait(_ target: [UInt8], id: UInt16, count: Int, timeout: Double = 2) -> Int {
        var answered = 0
        for sequence in 1...UInt16(count) {
            ping(target, id: id, sequence: sequence)
            let deadline = Date(timeIntervalSinceNow: timeout)
            while !hasReply(id: id, sequence: sequence) && Date() < deadline { Thread.sleep(forTimeInterval: 0.002) }
            if hasReply(id: id, sequence: sequence) { answered += 1 }
        }
        return answered
    }

    public func sendUDP(to target: [UInt8], from sourcePort: UInt16, port: UInt16, _ data: [UInt8]) {
        let length = 8 + data.count
        let udp: [UInt8] = [UInt8(sourcePort >> 8), UInt8(sourcePort & 0xFF), UInt8(port >> 8), UInt8(port & 0xFF),
                            UInt8(length >> 8), UInt8(length & 0xFF), 0, 0] + data  // checksum 0: none (IPv4)
        sendIP(udp, protocol: 17, to: target)
    }

    /// UDP echo replies received so far.
    public var udpReplies: [[UInt8]] { lock.withLock { udpEchoes } }

    private func sendIP(_ payload: [UInt8], protocol number: UInt8, to target: [UInt8]) {
        let total = 20 + payload.count
        var header: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xFF), 0, 0, 0x40, 0, 64, number, 0, 0] + ip + target
        let sum = Self.checksum(header[...])
        header[10] = UInt8(sum >> 8)
        header[11] = UInt8(sum & 0xFF)
        let packet = header + payload
        let known: [UInt8]? = lock.withLock {
            if let mac = arp[target] { return mac }
            waiting[target, default: []].append(packet)
            return nil
        }
        if let destination = known {
            transmit(destination + mac + [0x08, 0x00] + packet)
        } else {
            transmit(Self.broadcast + mac + [0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1] + mac + ip + [0, 0, 0, 0, 0, 0] + target)
        }
    }

    static let broadcast = [UInt8](repeating: 0xFF, count: 6)

    /// The Internet checksum (RFC 1071); 0 over data that includes a valid one.
    static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt16 {
        var sum: UInt32 = 0
        var i = bytes.startIndex
        while i + 1 < bytes.endIndex {
            sum += UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1])
            i += 2
        }
        if i < bytes.endIndex { sum += UInt32(bytes[i]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        return ~UInt16(sum)
    }
}
