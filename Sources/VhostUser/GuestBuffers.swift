/// A chain's buffers of one direction seen as one stream of bytes (a
/// scatter-gather list): the request header, the data and the status byte
/// may share a descriptor or straddle several, as VIRTIO_F_ANY_LAYOUT allows.
public struct GuestBuffers: @unchecked Sendable {
    // @unchecked Sendable: views of guest memory, valid while the device holds the chain.
    public let segments: [UnsafeMutableRawBufferPointer]
    public let count: Int

    public init(_ segments: [UnsafeMutableRawBufferPointer]) {
        self.segments = segments.filter { $0.count > 0 }
        count = self.segments.reduce(0) { $0 + $1.count }
    }

    /// The stream without its first `n` bytes.
    public func dropFirst(_ n: Int) -> GuestBuffers { slice(from: n, length: max(0, count - n)) }

    /// The stream without its last `n` bytes.
    public func dropLast(_ n: Int) -> GuestBuffers { slice(from: 0, length: max(0, count - n)) }

    /// `length` bytes from `start` (clamped to the stream).
    public func slice(from start: Int, length: Int) -> GuestBuffers {
        var result: [UnsafeMutableRawBufferPointer] = []
        var skip = max(0, start), left = max(0, min(length, count - skip))
        for segment in segments where left > 0 {
            if skip >= segment.count {
                skip -= segment.count
                continue
            }
            let take = min(segment.count - skip, left)
            result.append(UnsafeMutableRawBufferPointer(rebasing: segment[skip..<(skip + take)]))
            left -= take
            skip = 0
        }
        return GuestBuffers(result)
    }

    /// Copies the stream's bytes from `offset` into `destination` (as many as fit in both).
    @discardableResult
    public func copy(from offset: Int, into destination: UnsafeMutableRawBufferPointer) -> Int {
        var done = 0
        for segment in slice(from: offset, length: destination.count).segments {
            UnsafeMutableRawBufferPointer(rebasing: destination[done...]).copyMemory(from: UnsafeRawBufferPointer(segment))
            done += segment.count
        }
        return done
    }

    /// Copies `source` into the stream from `offset` (as many bytes as fit).
    @discardableResult
    public func copy(_ source: UnsafeRawBufferPointer, to offset: Int) -> Int {
        var done = 0
        for segment in slice(from: offset, length: source.count).segments {
            segment.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[done..<(done + segment.count)]))
            done += segment.count
        }
        return done
    }

    /// The first `n` bytes (fewer if the stream is shorter).
    public func prefix(_ n: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: min(n, count))
        bytes.withUnsafeMutableBytes { _ = copy(from: 0, into: $0) }
        return bytes
    }
}
