/// The checks a guest runs, as shell scripts for busybox (the image's init
/// runs one per boot). Each reports in `OYAKO key value` lines.
public enum GuestJobs {
    /// Block sizes the pattern is written with, and how many MiB each writes.
    public static let writeSizes: [(blockSize: Int, mebibytes: Int)] = [(4096, 8), (65536, 24), (1 << 20, 32)]
    public static var patternMebibytes: Int { writeSizes.reduce(0) { $0 + $1.mebibytes } }

    /// Boot 1: writes `patternMebibytes` MiB of a pattern seeded with `seed`
    /// to `/dev/<pattern>` with O_DIRECT in several block sizes, reads it
    /// back and reports both SHA-256s (`pattern-written`, `pattern-read`);
    /// makes an ext2 file system on `/dev/<fs>` (busybox mke2fs, mounted by
    /// the kernel's ext4), writes a file, reports `fs-made <sha>` and asks
    /// for a reboot. Boot 2 finds the file system, reports `fs-verified <sha>`.
    /// `firstBoot` runs after the storage checks on boot 1 only.
    public static func storage(seed: UInt32, pattern: String = "vda", fs: String = "vdb", firstBoot: String = "") -> String {
        var writes = "", offset = 0
        for (size, mebibytes) in writeSizes {
            let blocks = mebibytes << 20 / size, skip = offset << 20 / size
            writes += "dd if=/tmp/pattern of=/dev/\(pattern) bs=\(size) skip=\(skip) seek=\(skip) count=\(blocks) oflag=direct conv=notrunc 2>/dev/null || fail write-\(size)\n"
            offset += mebibytes
        }
        return """
            fail() { echo "OYAKO error $1"; exit 1; }
            for d in \(pattern) \(fs); do
                i=0; while [ ! -b /dev/$d ]; do i=$((i+1)); [ $i -gt 200 ] && fail "no /dev/$d"; sleep 0.05; done
            done
            if mount -t ext4 /dev/\(fs) /mnt 2>/dev/null; then
                echo "OYAKO fs-verified $(sha256sum /mnt/payload | cut -d' ' -f1) $(cat /mnt/written-at-boot)"
                umount /mnt || fail umount
                exit 0
            fi
            # A 1 MiB block from the seed; each MiB of the pattern starts with its own number.
            awk -v seed=\(seed) 'BEGIN { srand(seed); for (i = 0; i < 65536; i++) printf "%08x%08x", int(rand() * 4294967295), i }' > /tmp/block
            i=0; while [ $i -lt \(patternMebibytes) ]; do printf '%016d' $i; tail -c +17 /tmp/block; i=$((i+1)); done > /tmp/pattern
            echo "OYAKO pattern-seed \(seed) $(cut -d' ' -f1 /proc/uptime)"
            start=$(cat /proc/uptime | cut -d' ' -f1)
            \(writes)sync
            echo "OYAKO pattern-written $(sha256sum /tmp/pattern | cut -d' ' -f1) $start $(cat /proc/uptime | cut -d' ' -f1)"
            rm /tmp/pattern
            start=$(cat /proc/uptime | cut -d' ' -f1)
            sum=$(dd if=/dev/\(pattern) bs=1048576 count=\(patternMebibytes) iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
            echo "OYAKO pattern-read $sum $start $(cat /proc/uptime | cut -d' ' -f1)"
            mke2fs -F /dev/\(fs) >/dev/null 2>&1 || fail mke2fs
            mount -t ext4 /dev/\(fs) /mnt || fail mount
            cp /tmp/block /mnt/payload && echo 1 > /mnt/written-at-boot || fail copy
            umount /mnt || fail umount
            echo "OYAKO fs-made $(sha256sum /tmp/block | cut -d' ' -f1)"
            \(firstBoot)
            touch /tmp/reboot

            """
    }

    /// MiB/s from a timed report `<sha256> <start> <end>` (guest uptimes), as
    /// the storage job prints `pattern-written` and `pattern-read`.
    public static func rate(_ report: String?, mebibytes: Int) -> Double? {
        guard let parts = report?.split(separator: " "), parts.count == 3, let start = Double(parts[1]), let end = Double(parts[2]), end > start else { return nil }
        return Double(mebibytes) / (end - start)
    }

    /// A guest NIC, found by its MAC, the address (CIDR) it gets, and
    /// host routes through it (two NICs on one subnet need them).
    public struct NIC: Sendable {
        public let mac: String
        public let address: String
        public let routes: [String]
        public init(mac: String, address: String, routes: [String] = []) {
            self.mac = mac
            self.address = address
            self.routes = routes
        }
    }

    /// Brings up `nics`, pings each of `pings` three times (reports
    /// `ping-<name> <received>`), and sends `transferMebibytes` MiB of random
    /// bytes over TCP to `transfer` (reports `tcp-sent <sha256> <start> <end>`).
    public static func network(nics: [NIC], pings: [(name: String, address: String)], transfer: (address: String, port: Int)?,
                               transferMebibytes: Int = 16) -> String {
        var script = """
            fail() { echo "OYAKO error $1"; exit 1; }
            nic() { for n in /sys/class/net/*; do [ "$(cat $n/address)" = "$1" ] && basename $n; done; }
            ip link set lo up

            """
        for nic in nics {
            script += """
                dev=$(nic \(nic.mac)); [ -n "$dev" ] || fail "no NIC \(nic.mac)"
                ip addr add \(nic.address) dev $dev && ip link set $dev up || fail "cannot configure $dev"
                \(nic.routes.map { "ip route add \($0) dev $dev || fail \"cannot route \($0)\"\n" }.joined())
                """
        }
        for ping in pings {
            script += """
                echo "OYAKO ping-\(ping.name) $(ping -c 3 -W 3 \(ping.address) | sed -n 's/.* \\([0-9]*\\) packets received.*/\\1/p')"

                """
        }
        if let transfer {
            script += """
                dd if=/dev/urandom of=/tmp/payload bs=1048576 count=\(transferMebibytes) 2>/dev/null || fail payload
                start=$(cut -d' ' -f1 /proc/uptime)
                nc \(transfer.address) \(transfer.port) < /tmp/payload || fail "tcp to \(transfer.address)"
                echo "OYAKO tcp-sent $(sha256sum /tmp/payload | cut -d' ' -f1) $start $(cut -d' ' -f1 /proc/uptime)"
                rm /tmp/payload

                """
        }
        return script
    }
}
