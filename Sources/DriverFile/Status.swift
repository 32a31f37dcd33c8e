import COyakoSDK

/// An `OY_E*` code from the ABI's one error list, as a Swift error.
public struct OyStatus: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32

    public init(_ rawValue: Int32) { self.rawValue = rawValue }

    public static let ok = OyStatus(OY_OK.rawValue)
    public static let invalid = OyStatus(OY_E_INVALID.rawValue)
    public static let noMemory = OyStatus(OY_E_NOMEM.rawValue)
    public static let incompatible = OyStatus(OY_E_INCOMPATIBLE.rawValue)
    public static let notSupported = OyStatus(OY_E_NOT_SUPPORTED.rawValue)
    public static let busy = OyStatus(OY_E_BUSY.rawValue)
    public static let io = OyStatus(OY_E_IO.rawValue)
    public static let timeout = OyStatus(OY_E_TIMEOUT.rawValue)
    public static let deviceGone = OyStatus(OY_E_DEVICE_GONE.rawValue)
    public static let state = OyStatus(OY_E_STATE.rawValue)
    public static let wrongContext = OyStatus(OY_E_WRONG_CONTEXT.rawValue)
    public static let range = OyStatus(OY_E_RANGE.rawValue)
    public static let dmaFault = OyStatus(OY_E_DMA_FAULT.rawValue)
    public static let notFound = OyStatus(OY_E_NOT_FOUND.rawValue)
    public static let canceled = OyStatus(OY_E_CANCELED.rawValue)

    public var isOK: Bool { rawValue == 0 }
    /// A listed code, OY_OK, or one in the vendor range.
    public var isDefined: Bool { oy_is_defined_error(rawValue) != 0 }
    /// The symbolic name ("OY_E_IO"), or nil for vendor and unknown codes.
    public var name: String? { oy_error_name(rawValue).map { String(cString: $0) } }
    /// The text `oy_strerror` gives.
    public var message: String { String(cString: oy_strerror(rawValue)) }

    public var description: String { "\(name ?? "code \(rawValue)"): \(message)" }
}
