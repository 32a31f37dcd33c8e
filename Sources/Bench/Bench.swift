import CBenchShims
import SystemAssembly
import Devices
@_spi(Conformance) import DriverHost
import Foundation
import SDKTools
import Guest
import Histogram
import Kernel
import Machine
import Synchronization
import VirtualizationStack
import VMBus

/// One measured figure, next to the baseline it is judged against.
/// Nanosecond latencies from 1 ns to 60 s at three significant digits. The
/// range is fixed up front: an auto-resizing histogram reallocates its counts
/// whenever a new maximum arrives, in the middle of the measured loop.
func latencyHistogram() -> Histogram<UInt64> {
    Histogram(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
}

public struct BenchFigure: Encodable, Sendable {
    public let name: String
    public let value: Double
    public let unit: String
    public var baseline: Double?
    public var ratio: Double?
    public var target: String?
    public var met: Bool?
    public var p50: Double?
    public var p99: Double?
    public var note: String?

    init(_ name: String, _ value: Double, _ unit: String, baseline: Double? = nil, target: String? = nil, met: Bool? = nil,
         p50: Double? = nil, p99: Double? = nil, note: String? = nil)
    {
        self.name = name
        self.value = value
        self.unit = unit
        self.baseline = baseline
        self.ratio = baseline.flatMap { $0 > 0 ? value / $0 : nil }
        self.target = target
        self.met = met
        self.p50 = p50
        self.p99 = p99
        self.note = note
    }
}

public struct BenchReport: Encodable, Sendable {
    public struct MachineInfo: Encodable, Sendable {
        public let cpuModel: String
        public let cores: Int
        public let buildConfiguration: String
        public let quick: Bool

        enum CodingKeys: String, CodingKey {
            case cpuModel = "cpu_model", cores, buildConfiguration = "build_configuration", quick
        }
    }

    public let machine: MachineInfo
    public var figures: [BenchFigure]
    public var durationSeconds: Double

    enum CodingKeys: String, CodingKey {
        case machine, figures, durationSeconds = "duration_seconds"
    }
}

/// Runs every benchmark; each figure's baseline is measured in the same run.
public struct BenchRunner {
    public var sdk: SDKLocation
    public var quick: Bool
    /// Parts to run (load, calls, ring, block, net, vm); empty: all.
    public var only: Set<String> = []
    public var progress: @Sendable (String) -> Void

    public static let parts = ["load", "calls", "ring", "block", "restart", "isolation", "net", "vm"]

    public init(sdk: SDKLocation, quick: Bool, progress: @escaping @Sendable (String) -> Void) {
        self.sdk = sdk
        self.quick = quick
        self.progress = progress
    }

    private func wants(_ part: String) -> Bool { only.isEmpty || only.contains(part) }

    public static var machineInfo: (String, Int) {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }?.split(separator: ":", maxSplits: 1).last
            .map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown"
        return (model, ProcessInfo.processInfo.activeProcessorCount)
    }

    public static var buildConfiguration: String {
        #if DEBUG
        return "debug"
        #else
        return "release"
        #endif
    }

    public func run() throws -> BenchReport {
        let started = Date()
        let (model, cores) = Self.machineInfo
        progress("machine: \(model), \(cores) cores, \(Self.buildConfiguration) build\(quick ? ", --quick" : "")")
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("oyako-bench-\(getpid())").path
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: state) }
        // Only the parts that load drivers need them built.
        let drivers = ["load", "calls", "block", "restart", "isolation", "net", "vm"].contains(where: wants) ? try ReferenceDrivers.build(sdk: sdk, into: state + "/drivers") : []

        var figures: [BenchFigure] = []
        if wants("load") { figures += try loadLatency(drivers: drivers, state: state) }
        if wants("calls") { figures += try hostCalls(drivers: drivers, state: state) }
        if wants("ring") { figures += RingBench(quick: quick, progress: progress).run() }
        if wants("block") { figures += try BlockBench(quick: quick, progress: progress).run(drivers: drivers, state: state) }
        if wants("restart") { figures += try RestartBench(quick: quick, progress: progress).run(drivers: drivers, state: state) }
        if wants("isolation") { figures += try IsolationBench(quick: quick, progress: progress).run(drivers: drivers, state: state) }
        if wants("net") { figures += try NetBench(quick: quick, progress: progress).run(drivers: drivers, state: state) }
        if wants("vm") { figures += try VMBench(quick: quick, progress: progress).run(drivers: drivers, state: state) }
        return BenchReport(machine: .init(cpuModel: model, cores: cores, buildConfiguration: Self.buildConfiguration, quick: quick),
                           figures: figures, durationSeconds: Date().timeIntervalSince(started))
    }

    // MARK: 1. Driver load to attached

    private func loadLatency(drivers: [String], state: String) throws -> [BenchFigure] {
        var figures: [BenchFigure] = []
        let iterations = quick ? 20 : 200
        for path in drivers {
            let name = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
            let system = try BootedSystem(.bareMetal, state: state + "/load-\(name)", diskSize: 8 << 20, memorySize: 64 << 20, nics: 1, drivers: [])
            defer { system.shutdown() }
            let testbed = system.testbed, kernel = system.kernel
            let file = try DriverFile.inspect(path: path)
            guard let slot = testbed.machine.bus.enumerate().first(where: { file.metadata.matches(vendorID: $0.device.identity.vendorID, deviceID: $0.device.identity.deviceID) }) else { continue }
            var histogram = latencyHistogram()
            for _ in 0..<iterations {
                let start = DispatchTime.now().uptimeNanoseconds
                let library = try kernel.loadDriver(path: path)
                let instance = try kernel.attach(library, to: slot)
                let elapsed = DispatchTime.now().uptimeNanoseconds - start
                _ = histogram.record(elapsed)
                instance.detach()
                _ = kernel.unload(library)
            }
            let p50 = Double(histogram.valueAtPercentile(50)) / 1e6, p99 = Double(histogram.valueAtPercentile(99)) / 1e6
            progress(String(format: "load+negotiate+probe+attach %@: median %.3f ms, p99 %.3f ms", name, p50, p99))
            figures.append(BenchFigure("driver.load_to_attached.\(name)", p50, "ms", target: "median < 1 ms", met: p50 < 1, p50: p50, p99: p99,
                                       note: "\(iterations) iterations, dlopen to attach returned"))
        }
        return figures
    }

    // MARK: 2. Host-service calls

    private func hostCalls(drivers: [String], state: String) throws -> [BenchFigure] {
        guard let nvme = drivers.first(where: { $0.hasSuffix("nvmelite.so") }) else { return [] }
        let system = try BootedSystem(.bareMetal, state: state + "/calls", diskSize: 8 << 20, memorySize: 64 << 20, drivers: [nvme])
        defer { system.shutdown() }
        guard let instance = system.kernel.instance(at: system.testbed.nvmeSlot.address) else { return [] }
        let n: UInt64 = quick ? 2_000_000 : 20_000_000
        let noop: @convention(c) (UnsafeMutableRawPointer?) -> Void = { _ in }
        // Best of three, to keep a scheduling hiccup out of a nanosecond figure.
        func best(_ calls: UInt64, _ body: () -> UInt64) -> Double { (0..<3).map { _ in Double(body()) / Double(calls) }.min()! }
        let m = n / 10
        let direct = best(n) { oy_bench_direct_calls(n) }
        let crossing = best(n) { oy_bench_pointer_calls(noop, nil, n) }
        let clock = best(m) { oy_bench_clock_calls(m) }
        let mutex = best(m) { oy_bench_mutex_pairs(m) }
        let (time, lock, register) = instance.withHostServices { host, device, regs -> (Double, Double, Double) in
            (best(m) { oy_bench_host_time_calls(host, m) },
             best(m) { oy_bench_host_lock_pairs(host, device, m) },
             best(m) { oy_bench_register_reads(host, regs, 0x08, m) })
        }
        progress(String(format: "monotonic_ns %.1f ns vs clock_gettime %.1f ns (%.2fx); lock pair %.1f ns vs pthread mutex %.1f ns (%.2fx); reg_read32 %.1f ns; C→Swift crossing %.2f ns vs direct call %.2f ns",
                        time, clock, time / clock, lock, mutex, lock / mutex, register, crossing, direct))
        return [
            BenchFigure("host_call.monotonic_ns", time, "ns/call", baseline: clock, target: "≤ 1.5× clock_gettime called directly", met: time <= clock * 1.5,
                        note: "host->monotonic_ns through the table the driver receives, vs the same clock_gettime(CLOCK_MONOTONIC) called from C"),
            BenchFigure("host_call.lock_pair", lock, "ns/pair", baseline: mutex, target: "≤ 3× a pthread mutex pair called directly", met: lock <= mutex * 3,
                        note: "host->lock_acquire + host->lock_release through the table (handle lookup each), vs pthread_mutex_lock + unlock from C"),
            BenchFigure("host_call.reg_read32", register, "ns/call", baseline: direct,
                        note: "host->reg_read32 through the table: handle check, window bounds, the device model's register read; baseline an empty direct C call"),
            BenchFigure("host_call.c_to_swift_crossing", crossing, "ns/call", baseline: direct,
                        note: "NOT a host-table entry: an empty Swift @convention(c) function called from C through a pointer, the floor under every service"),
        ]
    }
}
