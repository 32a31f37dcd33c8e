/// Another process's memory, mapped here from a file descriptor it passed
/// (a VM's RAM from its VMM, say): `length` bytes at `offset`, shared,
/// unmapped when this goes away. The descriptor is the caller's to close.
public final class SharedMapping: @unchecked Sendable {
    // @unchecked Sendable: a fixed mapping; users synchronise on the bytes.
    public let base: UnsafeMutableRawPointer
    public let length: Int

    public init(fileDescriptor: Int32, offset: Int, length: Int) throws(SystemCallError) {
        self.base = try System.mapShared(fd: fileDescriptor, offset: offset, length: length)
        self.length = length
    }

    deinit { System.unmap(base, length: length) }
}
