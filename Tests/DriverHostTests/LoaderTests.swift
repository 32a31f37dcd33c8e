import DriverHost
import Foundation
import OyakoTestSupport
import Testing
import Workloads
import DriverFile

@Suite struct MetadataTests {
    @Test func referenceDriverDescribesItselfWithoutRunning() throws {
        let file = try DriverFile.inspect(path: try Fixtures.referenceDriver())
        #expect(file.metadata.name == "nvmelite")
        #expect(file.metadata.vendor == "Oyako Reference Devices")
        #expect(file.metadata.deviceClass == "oyako.block/1")
        #expect(file.metadata.abiMin == 1 && file.metadata.abiMax == 1)
        #expect(file.metadata.deviceIDs.map(\.description) == ["0a7a:0001"])
        #expect(file.metadata.matches(vendorID: 0x0A7A, deviceID: 1))
        #expect(!file.metadata.matches(vendorID: 0x0A7A, deviceID: 2))
        #expect(file.sha256.count == 64)
    }

    @Test func referenceDriverExportsOneSymbolAndNeedsOnlyLibc() throws {
        let image = try DriverFile.inspect(path: try Fixtures.referenceDriver()).image
        #expect(image.exportedSymbols.map(\.name) == ["oy_driver_entry"])
        #expect(image.neededLibraries == ["libc.so.6"])
        #expect(!image.hasTextRelocations)
        #expect(!image.hasExecutableStack)
    }

    @Test func anExtraExportIsVisibleInTheImage() throws {
        let image = try DriverFile.inspect(path: try Fixtures.carelessFixtureDriver(defines: ["MUTANT_EXTRA_EXPORT"])).image
        #expect(Set(image.exportedSymbols.map(\.name)) == ["oy_driver_entry", "mutant_helper"])
    }

    /// The SDK's flags and version script keep even an OY_EXPORT-marked
    /// helper private: the rule holds by construction.
    @Test func theSDKVersionScriptHidesAStrayExport() throws {
        let image = try DriverFile.inspect(path: try Fixtures.fixtureDriver(defines: ["MUTANT_EXTRA_EXPORT"])).image
        #expect(image.exportedSymbols.map(\.name) == ["oy_driver_entry"])
    }

    @Test func loadedDriverReportsTheSameMetadataAsItsFile() throws {
        let library = try DriverLibrary.load(path: try Fixtures.referenceDriver(), environment: RecordingEnvironment())
        defer { library.unload() }
        #expect(library.metadata.name == "nvmelite")
        #expect(library.abiVersion == 1)
        #expect(library.sha256 == sha256Hex(ofFile: library.mappedPath))
    }
}

@Suite struct NegotiationTests {
    @Test func picksTheHighestCommonVersion() throws {
        let path = try Fixtures.fixtureDriver(defines: ["MUTANT_ABI_MIN=1", "MUTANT_ABI_MAX=3"])
        // Host 1...5, driver 1...3: 3. Host 1...2: 2. Host 1...1: 1.
        for (host, expected) in [(1...5, UInt32(3)), (1...2, 2), (1...1, 1)] as [(ClosedRange<UInt32>, UInt32)] {
            let library = try DriverLibrary.load(path: path, environment: RecordingEnvironment(), hostABI: host)
            #expect(library.abiVersion == expected, "host \(host)")
            library.unload()
        }
    }

    @Test func driverNewerThanHostIsRefusedNamingBothRanges() throws {
        let path = try Fixtures.fixtureDriver(defines: ["MUTANT_ABI_MIN=2", "MUTANT_ABI_MAX=3"])
        let error = #expect(throws: DriverLoadError.self) { try DriverLibrary.load(path: path, environment: RecordingEnvironment()) }
        guard case .incompatible(_, let driver, let host) = error else {
            Issue.record("expected .incompatible, got \(String(describing: error))")
            return
        }
        #expect(driver == 2...3 && host == 1...1)
    }

    @Test func hostNewerThanDriverIsRefusedNamingBothRanges() throws {
        let path = try Fixtures.fixtureDriver()
        let error = #expect(throws: DriverLoadError.self) {
            try DriverLibrary.load(path: path, environment: RecordingEnvironment(), hostABI: 2...4)
        }
        guard case .incompatible(_, let driver, let host) = error else {
            Issue.record("expected .incompatible, got \(String(describing: error))")
            return
        }
        #expect(driver == 1...1 && host == 2...4)
    }
}

@Suite struct LoadErrorTests {
    @Test func missingFile() {
        let error = #expect(throws: DriverLoadError.self) { try DriverLibrary.load(path: "/nonexistent/x.so", environment: RecordingEnvironment()) }
        #expect(error == .fileNotFound(path: "/nonexistent/x.so"), "\(String(describing: error))")
    }

    @Test func aFolderIsNotADriverFile() throws {
        let folder = Fixtures.temporaryDirectory()
        let error = #expect(throws: DriverLoadError.self) { try DriverLibrary.load(path: folder, environment: RecordingEnvironment()) }
        #expect(error == .folder(path: folder), "\(String(describing: error))")
        #expect(error?.description.contains("oyako driver build \(folder)") == true, "says what to do")
    }

    /// A FIFO, a device or a sparse giant is refused before a byte is read:
    /// reading them would hang (FIFO), never end (device) or take GiBs.
    @Test func onlyARegularFileOfADriversSizeIsRead() throws {
        let folder = Fixtures.temporaryDirectory()
        let fifo = folder + "/driver.so"
        #expect(mkfifo(fifo, 0o600) == 0)
        let giant = folder + "/giant.so"
        #expect(FileManager.default.createFile(atPath: giant, contents: nil) && truncate(giant, off_t(ELFImage.maxFileSize + 1)) == 0)
        for (path, reason) in [(fifo, "not a regular file"), ("/dev/zero", "not a regular file"), (giant, "more than any driver")] {
            let error = #expect(throws: DriverLoadError.self) { try DriverFile.inspect(path: path) }
            guard case .invalidFile(path, let text)? = error else { Issue.record("\(path): \(String(describing: error))"); continue }
            #expect(text.contains(reason), "\(text)")
        }
    }

    @Test func notAnELFFile() throws {
        let path = Fixtures.temporaryDirectory() + "/text.so"
        try "this is not a driver".write(toFile: path, atomically: true, encoding: .utf8)
        let error = #expect(throws: DriverLoadError.self) { try DriverLibrary.load(path: path, environment: RecordingEnvironment()) }
        guard case .invalidFile(let reported, _) = error else { Issue.record("expected .invalidFile, got \(String(describing: error))"); return }
        #expect(reported == path)
    }

    /// The magic is there but the header is not: a copy cut short says so.
    @Test func aDriverFileCutShortInItsHeaderIsCalledTruncated() throws {
        let whole = try Data(contentsOf: URL(fileURLWithPath: try Fixtures.referenceDriver()))
        let path = Fixtures.temporaryDirectory() + "/cut.so"
        try whole.prefix(40).write(to: URL(fileURLWithPath: path))
        let error = #expect(throws: DriverLoadError.self) { try DriverFile.inspect(path: path) }
        guard case .invalidFile(path, let reason)? = error else { Issue.record("expected .invalidFile, got \(String(describing: error))"); return }
        #expect(reason.contains("malformed ELF file: the ELF header is cut short (40 of its 64 bytes)"), "\(reason)")
    }

    @Test func wrongArchitecture() throws {
        // The real driver with e_machine patched to AArch64 (or x86_64 on an AArch64 host).
        var bytes = try Data(contentsOf: URL(fileURLWithPath: try Fixtures.referenceDriver()))
        let other: UInt16 = ELFImage.hostMachine == 62 ? 183 : 62
        bytes[18] = UInt8(other & 0xFF)
        bytes[19] = UInt8(other >> 8)
        let path = Fixtures.temporaryDirectory() + "/foreign.so"
        try bytes.write(to: URL(fileURLWithPath: path))
        let error = #expect(throws: DriverLoadError.self) { try DriverLibrary.load(path: path, environment: RecordingEnvironment()) }
        guard case .wrongArchitecture(_, let found, let expected) = error else { Issue.record("expected .wrongArchitecture, got \(String(describing: error))"); return }
        #expect(found == ELFImage.machineName(other) && expected == ELFImage.machineName(ELFImage.hostMachine))
    }

    @Test func missingEntrySymbol() throws {
        let path = try Fixtures.fixtureDriver(defines: ["MUTANT_NO_ENTRY"])
        let error = #expect(throws: DriverLoadError.self) { try DriverLibrary.load(path: path, environment: RecordingEnvironment()) }
        #expect(error == .missingEntry(path: path), "\(String(describing: error))")
    }

    @Test func nullMandatoryCallback() throws {
        let path = try Fixtures.fixtureDriver(defines: ["MUTANT_NULL_PROBE"])
        let error = #expect(throws: DriverLoadError.self) { try DriverLibrary.load(path: path, environment: RecordingEnvironment()) }
        #expect(error == .malformedDriverTable(path: path, problem: .nullCallbacks(["probe"])), "\(String(describing: error))")
    }

    @Test func missingMetadataSection() throws {
        let path = try Fixtures.fixtureDriver(defines: ["MUTANT_NO_META"])
        let error = #expect(throws: DriverLoadError.self) { try DriverLibrary.load(path: path, environment: RecordingEnvironment()) }
        guard case .badMetadata = error else { Issue.record("expected .badMetadata, got \(String(describing: error))"); return }
    }

    @Test func metadataThatDisagreesWithTheLoadedDriver() throws {
        let path = try Fixtures.fixtureDriver(defines: ["MUTANT_META_MISMATCH"])
        let error = #expect(throws: DriverLoadError.self) { try DriverLibrary.load(path: path, environment: RecordingEnvironment()) }
        #expect(error == .malformedDriverTable(path: path, problem: .metadataMismatch), "\(String(describing: error))")
    }

    @Test func entryThatFails() throws {
        let path = try Fixtures.fixtureDriver(defines: ["MUTANT_ENTRY_FAILS"])
        let error = #expect(throws: DriverLoadError.self) { try DriverLibrary.load(path: path, environment: RecordingEnvironment()) }
        #expect(error == .entryFailed(path: path, status: .invalid), "\(String(describing: error))")
    }

    @Test func initThatFailsNamesTheErrorText() throws {
        let path = try Fixtures.fixtureDriver(defines: ["MUTANT_INIT_FAILS"])
        let error = #expect(throws: DriverLoadError.self) { try DriverLibrary.load(path: path, environment: RecordingEnvironment()) }
        #expect(error == .initFailed(path: path, status: .notSupported), "\(String(describing: error))")
    }

    @Test func deinitLeakIsReportedAndReclaimed() throws {
        let library = try DriverLibrary.load(path: try Fixtures.fixtureDriver(defines: ["MUTANT_LEAK_ON_DEINIT"]), environment: RecordingEnvironment())
        let report = library.unload()
        #expect(report.leaked.count == 1 && report.leaked[0].hasPrefix("memory"), "\(report.leaked)")
    }
}

@Suite struct StatusTests {
    @Test func everyListedCodeHasANameAndText() {
        for raw in Int32(-14)...0 {
            let status = OyStatus(raw)
            #expect(status.isDefined)
            #expect(status.name != nil)
            #expect(status.message != "unknown error code")
        }
        #expect(!OyStatus(-15).isDefined)
        #expect(OyStatus(-65536).isDefined && OyStatus(-65536).message == "vendor-specific error")
        #expect(OyStatus(-99).message == "unknown error code")
    }
}

@Suite struct HexFormattingTests {
    @Test func fileDigestIsTheStandardLowercaseHexSHA256() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("oyako-sha-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data("abc".utf8).write(to: URL(fileURLWithPath: path))
        // FIPS 180-2 test vector for "abc".
        #expect(sha256Hex(ofFile: path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(sha256Hex(ofFile: path + ".missing") == nil)
    }

    @Test func macAddressesPrintWithColonsAndLeadingZeros() {
        #expect(RegisteredNetdev.format([0x02, 0x00, 0x5E, 0x0A, 0xFF, 0x01]) == "02:00:5e:0a:ff:01")
        #expect(lowercaseHex([]) == "")
    }
}

/// Driver files are untrusted input: the reader that `driver inspect`, the
/// `file.*` checks and every load go through must turn any file into a
/// description or an error, never a crash. Real drivers with random bytes
/// changed (in the ELF header, the section and program headers, the
/// dynamic and symbol tables, the metadata), cut short or grown.
@Suite struct RandomDriverFileTests {
    @Test func mutatedDriverFilesAreDescribedOrRefused() throws {
        let originals = try ["nvmelite", "e1klite", "uart16550"].map { try Data(contentsOf: URL(fileURLWithPath: try Fixtures.referenceDriver($0))) }
        let directory = Fixtures.temporaryDirectory("elf-mutants")
        var random = SeededGenerator(seed: 0xE1F)
        var described = 0, refused = 0
        for round in 0..<1500 {
            var bytes = [UInt8](originals[round % originals.count])
            switch Int.random(in: 0..<10, using: &random) {
            case 0: bytes = Array(bytes.prefix(Int.random(in: 0..<bytes.count, using: &random)))
            case 1: bytes += (0..<Int.random(in: 1...4096, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            default:
                // Mostly where the structure is: the first 4 KiB (headers,
                // dynamic and symbol tables) and the section headers at the end.
                for _ in 0..<Int.random(in: 1...8, using: &random) {
                    let at = Bool.random(using: &random) ? Int.random(in: 0..<min(4096, bytes.count), using: &random)
                                                       : Int.random(in: max(0, bytes.count - 2048)..<bytes.count, using: &random)
                    bytes[at] = Bool.random(using: &random) ? UInt8.random(in: 0...255, using: &random) : [0, 0xFF, 0x7F, 0x80].randomElement(using: &random)!
                }
            }
            let path = directory + "/mutant\(round % 8).so"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                let file = try DriverFile.inspect(path: path)
                _ = (file.metadata.name, file.image.exportedSymbols, file.image.importedSymbols)
                described += 1
            } catch {
                #expect(!"\(error)".isEmpty)
                refused += 1
            }
        }
        #expect(described > 100 && refused > 100, "both outcomes reached: \(described) described, \(refused) refused")
    }
}
