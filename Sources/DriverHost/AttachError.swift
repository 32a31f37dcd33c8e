/// Why attaching a driver to a device failed.
public struct AttachError: Error, CustomStringConvertible, Sendable {
    public let driver: String
    public let device: String
    public let status: OyStatus
    /// What the driver left behind on its failure path (reclaimed by the host).
    public let leaked: [String]

    public init(driver: String, device: String, status: OyStatus, leaked: [String]) {
        self.driver = driver
        self.device = device
        self.status = status
        self.leaked = leaked
    }

    public var description: String {
        var text = "\(driver): attach to \(device) failed with \(status)"
        if !leaked.isEmpty { text += "; the driver's failure path leaked: " + leaked.joined(separator: ", ") }
        return text
    }
}
