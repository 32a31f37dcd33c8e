import Foundation

/// Starts a thread running `body` under `name`, both where Foundation keeps
/// it and where the OS shows it (ps, perf, gdb): the first 15 bytes there.
public func startThread(named name: String, _ body: @escaping @Sendable () -> Void) {
    let thread = Thread {
        nameCurrentThread(name)
        body()
    }
    thread.name = name
    thread.start()
}
