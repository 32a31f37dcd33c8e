import Devices
@_spi(Conformance) import DriverHost
import Foundation
import Kernel
import Machine
import OyakoTestSupport
import SystemAssembly
import Testing

/// A device registers at most one object of each class, in process and in
/// a driver host alike: a driver that works in one works in the other.
@Suite struct ClassRegistrationTests {
    /// The template driver, registering a second entropy source for its one
    /// device after the first, and logging the answer.
    static func twoSourcesDriver() throws -> String {
        try Fixtures.mutatedTemplateDriver([
            ("} my_dev;\n", "} my_dev;\nstatic oy_rng *second_source;\n"),
            ("    *out_instance = d;\n    return OY_OK;",
             """
                 rc = c->rng->register_rng(device, &my_rng_ops, d, &second_source);
                 c->host->log(c->host, device, OY_LOG_WARNING, rc == OY_E_NOT_SUPPORTED ? "second source: not supported"
                              : rc == OY_OK ? "second source: registered" : "second source: another answer");
                 if (rc != OY_OK) second_source = NULL;
                 *out_instance = d;
                 return OY_OK;
             """),
            ("    if (d->source != NULL) d->ctx->rng->unregister_rng(d->source);",
             "    if (second_source != NULL) { d->ctx->rng->unregister_rng(second_source); second_source = NULL; }\n"
                + "    if (d->source != NULL) d->ctx->rng->unregister_rng(d->source);"),
        ])
    }

    /// A bare machine that boots `driver`, in process or in a driver host;
    /// `body` runs before it shuts down.
    static func booting(_ driver: String, hosted: Bool, state: String, _ body: (Testbed, Kernel, Kernel.BootReport) throws -> Void) throws {
        let testbed = try Testbed.make(state: Fixtures.temporaryDirectory(state), diskSize: 8 << 20, memorySize: 64 << 20)
        let kernel = Kernel(platform: BarePlatform(machine: testbed.machine), driverPaths: [driver])
        if hosted { kernel.driverHostExecutable = Fixtures.oyakoBinary }
        defer {
            kernel.shutdown()
            testbed.machine.shutdown()
        }
        try body(testbed, kernel, kernel.boot())
    }

    @Test(arguments: [false, true]) func aSecondObjectOfAClassForOneDeviceIsRefusedWithAReason(hosted: Bool) throws {
        try Self.booting(try Self.twoSourcesDriver(), hosted: hosted, state: "one-per-class") { testbed, kernel, report throws in
            #expect(report.problems.isEmpty, "\(report.problems)")
            let messages = kernel.log.all.map(\.message)
            #expect(messages.contains("second source: not supported"), "\(messages)")
            #expect(messages.contains { $0.contains("a second oyako.rng/1 object for one device was refused (OY_E_NOT_SUPPORTED)") }, "\(messages)")
            #expect(kernel.entropy.sources.map(\.name) == ["hwrng0"])
            let address = try #require(testbed.machine.bus.enumerate().first { $0.device.identity.deviceID == RNGLite.deviceID }?.address)
            #expect((kernel.driverHostProcess(at: address) != nil) == hosted)
            #expect(try kernel.entropy.read(64).count == 64, "the first source serves")
        }
    }

    /// The template driver, first registering its source with an ops table
    /// whose struct_size is too small and with no out pointer, then as it
    /// should; it logs what the first two got.
    static func badRegistrationsDriver() throws -> String {
        try Fixtures.mutatedTemplateDriver([
            ("    c->host->reg_write32(d->regs, RNG_CTRL, 1); /* enable */",
             """
                 c->host->reg_write32(d->regs, RNG_CTRL, 1); /* enable */
                 if (c->rng != NULL) {
                     oy_rng_ops short_ops = my_rng_ops;
                     oy_rng *unused = NULL;
                     int32_t short_rc, no_out_rc;
                     short_ops.struct_size = 8;
                     short_rc = c->rng->register_rng(device, &short_ops, d, &unused);
                     no_out_rc = c->rng->register_rng(device, &my_rng_ops, d, NULL);
                     c->host->log(c->host, device, OY_LOG_WARNING, short_rc == OY_E_INVALID && no_out_rc == OY_E_INVALID && unused == NULL
                                  ? "bad registrations: both refused" : "bad registrations: not both refused");
                 }
             """),
        ])
    }

    /// What the header rules out is refused with OY_E_INVALID and recorded
    /// as an ABI violation that names it, in process and in a driver host
    /// alike; the driver's correct registration after them serves.
    @Test(arguments: [false, true]) func registrationArgumentsTheHeaderRulesOutAreRefusedAndNamed(hosted: Bool) throws {
        let mark = ViolationLog.mark
        try Self.booting(try Self.badRegistrationsDriver(), hosted: hosted, state: "bad-registrations") { _, kernel, _ throws in
            let messages = kernel.log.all.map(\.message)
            #expect(messages.contains("bad registrations: both refused"), "\(messages)")
            let recorded = ViolationLog.since(mark).filter { $0.driver == "mydriver" }.map(\.message)
            #expect(recorded.contains("register_rng with an oy_rng_ops whose struct_size 8 is smaller than its 16 bytes"), "\(recorded)")
            #expect(recorded.contains("register_rng with a NULL out pointer"), "\(recorded)")
            #expect(try kernel.entropy.read(64).count == 64, "the registration after them serves")
        }
    }
}
