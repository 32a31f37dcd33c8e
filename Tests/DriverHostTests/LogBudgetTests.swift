@testable import DriverHost
import Testing

/// A driver's log lines: a burst in each interval; what is over is dropped,
/// the first drop replaced by a warning, and the next interval's first line
/// says how many went.
@Suite struct LogBudgetTests {
    @Test func aBurstPassesThenLinesAreDroppedAndCountedInTheNextInterval() {
        var budget = LogBudget()
        let start: UInt64 = 1_000
        #expect((0..<LogBudget.burst).allSatisfy { _ in budget.admit(at: start) == .log(notes: []) }, "the burst passes")
        guard case .replace(let warning) = budget.admit(at: start) else { Issue.record("the first line over the burst is replaced by a warning"); return }
        #expect(warning == "logs more than 100 lines in 5 s; its further lines are dropped until the next 5 s begin")
        #expect((0..<49).allSatisfy { _ in budget.admit(at: start + LogBudget.interval - 1) == .drop }, "then dropped, silently")
        #expect(budget.admit(at: start + LogBudget.interval) == .log(notes: ["50 log line(s) of this driver were dropped (over 100 in 5 s)"]))
        #expect(budget.admit(at: start + LogBudget.interval + 1) == .log(notes: []), "the count is said once")
    }
}
