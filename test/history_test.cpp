// The violation history on heap memory with a fake wall clock: minute
// rollover, ring wrap, counts per reason, a full budget table, concurrent
// writers, and what the admission decision records.
#include "traffic_control/history.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "test_doubles.hpp"
#include "traffic_control/admission.hpp"
#include "traffic_control/config.hpp"

namespace tc {
namespace {

constexpr std::int64_t kMinuteUs = 60'000'000;
// 2026-01-01T00:00:00Z, a minute boundary.
constexpr std::int64_t kStartUs = 1'767'225'600LL * 1'000'000;

// The wall clock the history is given: Unix epoch microseconds.
struct FakeWallClock {
  std::int64_t now_us = kStartUs;
  void Advance(std::int64_t us) { now_us += us; }
};

class HistoryTest : public ::testing::Test {
 protected:
  HistoryTest() : memory_(ViolationHistory::RequiredBytes() / 8 + 1, 0) {
    const MemorySpan span{memory_.data(), memory_.size() * 8};
    ViolationHistory::Initialize(span);
    history_ = std::make_unique<ViolationHistory>(span);
  }

  std::vector<std::uint64_t> memory_;
  std::unique_ptr<ViolationHistory> history_;
  FakeWallClock clock_;
};

TEST_F(HistoryTest, RejectsUnformattedOrSmallMemory) {
  std::vector<std::uint64_t> raw(ViolationHistory::RequiredBytes() / 8 + 1, 0);
  EXPECT_THROW(ViolationHistory(MemorySpan{raw.data(), raw.size() * 8}), std::invalid_argument);
  EXPECT_THROW(ViolationHistory::Initialize(MemorySpan{raw.data(), 64}), std::invalid_argument);
}

TEST_F(HistoryTest, CountsPerReasonInTheCurrentMinute) {
  const std::int32_t slot = history_->Resolve("critical");
  ASSERT_NE(slot, ViolationHistory::kNoSlot);
  EXPECT_EQ(history_->Resolve("critical"), slot);
  clock_.Advance(5'000'000);
  history_->Record(slot, ViolationHistory::kAdmitted, clock_.now_us);
  history_->Record(slot, ViolationHistory::kAdmitted, clock_.now_us);
  history_->Record(slot, ViolationHistory::kWarned, clock_.now_us);
  history_->Record(slot, ViolationHistory::kBlockedMaxConcurrent, clock_.now_us, 3);
  history_->Record(slot, ViolationHistory::kBlockedPerQueryLimit, clock_.now_us, 4);
  history_->Record(slot, ViolationHistory::kBlockedServerShare, clock_.now_us, 5);
  history_->Record(ViolationHistory::kNoSlot, ViolationHistory::kAdmitted, clock_.now_us);

  const std::vector<ViolationHistory::Row> rows = history_->Snapshot(clock_.now_us);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].budget, "critical");
  EXPECT_EQ(rows[0].minute_start_s, kStartUs / 1'000'000);
  EXPECT_EQ(rows[0].counts[ViolationHistory::kAdmitted], 2u);
  EXPECT_EQ(rows[0].counts[ViolationHistory::kWarned], 1u);
  EXPECT_EQ(rows[0].counts[ViolationHistory::kBlockedMaxConcurrent], 3u);
  EXPECT_EQ(rows[0].counts[ViolationHistory::kBlockedPerQueryLimit], 4u);
  EXPECT_EQ(rows[0].counts[ViolationHistory::kBlockedServerShare], 5u);
}

TEST_F(HistoryTest, MinuteRollover) {
  const std::int32_t slot = history_->Resolve("batch");
  history_->Record(slot, ViolationHistory::kWarned, clock_.now_us);
  clock_.Advance(kMinuteUs - 1);  // the last microsecond of the first minute
  history_->Record(slot, ViolationHistory::kWarned, clock_.now_us);
  clock_.Advance(1);  // the next minute
  history_->Record(slot, ViolationHistory::kWarned, clock_.now_us);
  clock_.Advance(2 * kMinuteUs);  // a minute without statements in between
  history_->Record(slot, ViolationHistory::kBlockedMaxConcurrent, clock_.now_us);

  const std::vector<ViolationHistory::Row> rows = history_->Snapshot(clock_.now_us);
  ASSERT_EQ(rows.size(), 3u);
  const std::int64_t start_s = kStartUs / 1'000'000;
  EXPECT_EQ(rows[0].minute_start_s, start_s);
  EXPECT_EQ(rows[0].counts[ViolationHistory::kWarned], 2u);
  EXPECT_EQ(rows[1].minute_start_s, start_s + 60);
  EXPECT_EQ(rows[1].counts[ViolationHistory::kWarned], 1u);
  EXPECT_EQ(rows[2].minute_start_s, start_s + 180);
  EXPECT_EQ(rows[2].counts[ViolationHistory::kWarned], 0u);
  EXPECT_EQ(rows[2].counts[ViolationHistory::kBlockedMaxConcurrent], 1u);

  // A late writer (its statement began in an earlier minute that the ring
  // still holds) is counted in its own minute.
  history_->Record(slot, ViolationHistory::kWarned, kStartUs);
  EXPECT_EQ(history_->Snapshot(clock_.now_us)[0].counts[ViolationHistory::kWarned], 3u);
}

TEST_F(HistoryTest, RingWrapsAndReadersSkipOldMinutes) {
  const std::int32_t slot = history_->Resolve("best-effort");
  const std::uint32_t total = ViolationHistory::kMinutes + 10;
  for (std::uint32_t minute = 0; minute < total; ++minute) {
    history_->Record(slot, ViolationHistory::kBlockedServerShare, clock_.now_us, minute + 1);
    if (minute + 1 < total) clock_.Advance(kMinuteUs);
  }
  std::vector<ViolationHistory::Row> rows = history_->Snapshot(clock_.now_us);
  ASSERT_EQ(rows.size(), ViolationHistory::kMinutes);
  // The first 10 minutes were overwritten by the last 10 (counts reset, not
  // added to), and rows come in time order although the ring wrapped.
  const std::int64_t now_minute_s = clock_.now_us / 1'000'000;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const std::uint64_t minute = 10 + i;
    EXPECT_EQ(rows[i].minute_start_s,
              now_minute_s - static_cast<std::int64_t>(ViolationHistory::kMinutes - 1 - i) * 60);
    EXPECT_EQ(rows[i].counts[ViolationHistory::kBlockedServerShare], minute + 1) << i;
  }
  // A writer from a minute the ring no longer holds counts nothing.
  history_->Record(slot, ViolationHistory::kAdmitted, kStartUs);
  rows = history_->Snapshot(clock_.now_us);
  for (const ViolationHistory::Row& row : rows) {
    EXPECT_EQ(row.counts[ViolationHistory::kAdmitted], 0u);
  }

  // Six hours later without statements, every minute has aged out.
  clock_.Advance(ViolationHistory::kMinutes * kMinuteUs);
  EXPECT_TRUE(history_->Snapshot(clock_.now_us).empty());
  // One minute less and only the newest minute is left.
  EXPECT_EQ(history_->Snapshot(clock_.now_us - kMinuteUs).size(), 1u);
}

TEST_F(HistoryTest, FullBudgetTableRecordsNoNewBudget) {
  std::vector<std::int32_t> slots;
  for (std::uint32_t i = 0; i < ViolationHistory::kMaxBudgets; ++i) {
    const std::int32_t slot = history_->Resolve("budget" + std::to_string(i));
    ASSERT_NE(slot, ViolationHistory::kNoSlot) << i;
    slots.push_back(slot);
  }
  EXPECT_EQ(history_->size(), ViolationHistory::kMaxBudgets);
  EXPECT_EQ(history_->Resolve("one too many"), ViolationHistory::kNoSlot);
  EXPECT_EQ(history_->Resolve(std::string(ViolationHistory::kMaxNameBytes + 1, 'x')),
            ViolationHistory::kNoSlot);
  // Known budgets still resolve to their slots, all distinct.
  for (std::uint32_t i = 0; i < ViolationHistory::kMaxBudgets; ++i) {
    EXPECT_EQ(history_->Resolve("budget" + std::to_string(i)), slots[i]);
  }
  std::sort(slots.begin(), slots.end());
  EXPECT_EQ(std::unique(slots.begin(), slots.end()), slots.end());
  history_->Record(slots[0], ViolationHistory::kAdmitted, clock_.now_us);
  EXPECT_EQ(history_->Snapshot(clock_.now_us).size(), 1u);
}

TEST_F(HistoryTest, ConcurrentWritersAcrossMinuteRollovers) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 20000;
  constexpr int kMinutesSpanned = 4;
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      while (!go.load()) std::this_thread::yield();
      // Each thread resolves the shared names itself, as backends do.
      const std::int32_t shared = history_->Resolve("shared");
      const std::int32_t own = history_->Resolve("thread" + std::to_string(t));
      for (int i = 0; i < kPerThread; ++i) {
        // Every thread walks through the same minutes, so several threads
        // meet each minute's first write at about the same time.
        const std::int64_t now =
            kStartUs + (i * kMinutesSpanned / kPerThread) * kMinuteUs + (i % 1000) * 1000;
        history_->Record(shared, static_cast<ViolationHistory::Counter>(i % 5), now);
        history_->Record(own, ViolationHistory::kAdmitted, now);
      }
    });
  }
  go.store(true);
  for (std::thread& thread : threads) thread.join();

  const std::int64_t now = kStartUs + kMinutesSpanned * kMinuteUs;
  std::uint64_t shared_total = 0;
  std::uint64_t per_counter[ViolationHistory::kCounterCount] = {};
  std::uint64_t own_total = 0;
  int shared_rows = 0;
  for (const ViolationHistory::Row& row : history_->Snapshot(now)) {
    for (std::uint32_t c = 0; c < ViolationHistory::kCounterCount; ++c) {
      if (row.budget == "shared") {
        shared_total += row.counts[c];
        per_counter[c] += row.counts[c];
      } else {
        own_total += row.counts[c];
      }
    }
    if (row.budget == "shared") ++shared_rows;
  }
  EXPECT_EQ(shared_rows, kMinutesSpanned);
  EXPECT_EQ(shared_total, static_cast<std::uint64_t>(kThreads) * kPerThread);
  for (std::uint64_t count : per_counter) {
    EXPECT_EQ(count, static_cast<std::uint64_t>(kThreads) * kPerThread / 5);
  }
  EXPECT_EQ(own_total, static_cast<std::uint64_t>(kThreads) * kPerThread);
  EXPECT_EQ(history_->size(), static_cast<std::uint32_t>(kThreads) + 1);
}

// What the admission decision records: per budget, not per `each` instance.
class FixedClock final : public Clock {
 public:
  std::int64_t NowMicros() override { return 1'000'000; }
};

// A backend's admission decisions on a bucket table of its own, recording
// into the test's history; Run() admits a statement at `wall_now_us` and
// releases what it holds.
class AdmittingBackend {
 public:
  AdmittingBackend(const std::string& budgets_json, const std::string& rules_json,
                   ViolationHistory* history)
      : bucket_memory_(BucketTable::RequiredBytes(64) / 8 + 1, 0) {
    std::vector<Budget> budgets;
    std::vector<Rule> rules;
    std::string error;
    EXPECT_TRUE(ParseBudgets(budgets_json, &budgets, &error)) << error;
    EXPECT_TRUE(ParseRules(rules_json, &rules, &error)) << error;
    controller.SetRuleSet(RuleSet(std::move(budgets), std::move(rules), nullptr));
    const MemorySpan buckets{bucket_memory_.data(), bucket_memory_.size() * 8};
    BucketTable::Initialize(buckets, 64);
    table_ = std::make_unique<BucketTable>(buckets, lock_, clock_);
    controller.AttachTable(table_.get());
    controller.AttachHistory(history);
  }

  Decision::Outcome Run(std::string_view text, std::int64_t wall_now_us) {
    StatementInfo statement;
    statement.text = text;
    statement.wall_now_us = wall_now_us;
    const Decision decision = controller.Admit(statement, AttemptKind::kFinal);
    if (decision.holding != 0) controller.Release(decision.holding);
    return decision.outcome;
  }

  AdmissionController controller;

 private:
  std::vector<std::uint64_t> bucket_memory_;
  MutexLock lock_;
  FixedClock clock_;
  std::unique_ptr<BucketTable> table_;
};

TEST_F(HistoryTest, AdmissionRecordsOutcomePerBudget) {
  AdmittingBackend backend(
      R"([{"name":"shed","mode":"enforce","max_concurrent":0},
          {"name":"warn","mode":"warn","max_concurrent":0},
          {"name":"tenant","mode":"enforce","max_concurrent":5}])",
      R"([{"name":"shed","budget":"shed","match":{"route":"shed"}},
          {"name":"warn","budget":"warn","match":{"route":"warn"}},
          {"name":"tenant","budget":"tenant","match":{"route":"tenant"},"each":"tenant"},
          {"name":"both","budget":"tenant","match":{"route":"both"},"each":"tenant"},
          {"name":"both_shed","budget":"shed","match":{"route":"both"}}])",
      history_.get());
  auto run = [&](std::string_view text) { return backend.Run(text, clock_.now_us); };
  EXPECT_EQ(run("SELECT 1 /*route='shed'*/"), Decision::Outcome::kRefused);
  EXPECT_EQ(run("SELECT 1 /*route='warn'*/"), Decision::Outcome::kAdmitted);
  EXPECT_EQ(run("SELECT 1 /*route='tenant',tenant='a'*/"), Decision::Outcome::kAdmitted);
  EXPECT_EQ(run("SELECT 1 /*route='tenant',tenant='b'*/"), Decision::Outcome::kAdmitted);
  // Refused by shed; tenant passed it, but it did not run: nothing for tenant.
  EXPECT_EQ(run("SELECT 1 /*route='both',tenant='a'*/"), Decision::Outcome::kRefused);

  backend.controller.FlushHistory();  // a reader flushes its own backend's batched admissions first
  const std::vector<ViolationHistory::Row> rows = history_->Snapshot(clock_.now_us);
  ASSERT_EQ(rows.size(), 3u);
  for (const ViolationHistory::Row& row : rows) {
    const auto* c = row.counts;
    if (row.budget == "shed") {
      EXPECT_EQ(c[ViolationHistory::kBlockedMaxConcurrent], 2u);
      EXPECT_EQ(c[ViolationHistory::kAdmitted], 0u);
    } else if (row.budget == "warn") {
      EXPECT_EQ(c[ViolationHistory::kWarned], 1u);
      EXPECT_EQ(c[ViolationHistory::kAdmitted], 1u);
    } else {
      EXPECT_EQ(row.budget, "tenant");
      EXPECT_EQ(c[ViolationHistory::kAdmitted], 2u);
      EXPECT_EQ(c[ViolationHistory::kBlockedMaxConcurrent], 0u);
    }
  }
}

// A backend repeating one statement counts its admissions in batches: each
// still lands in the minute it ran, also when the minute changes mid-batch,
// and forgetting the pending rule counts (reset()) keeps them in the history.
TEST_F(HistoryTest, RepeatedAdmissionsLandInTheMinuteTheyRan) {
  AdmittingBackend backend(R"([{"name":"app","mode":"enforce","max_concurrent":5}])",
                           R"([{"budget":"app","match":{"route":"r"}}])", history_.get());
  auto run = [&](int statements) {
    for (int i = 0; i < statements; ++i) {
      ASSERT_EQ(backend.Run("SELECT 1 /*route='r'*/", clock_.now_us), Decision::Outcome::kAdmitted);
    }
  };
  run(5);  // fewer than a batch
  clock_.Advance(kMinuteUs);
  run(3);
  backend.controller.DropPendingRuleCounts();
  backend.controller.FlushHistory();
  const std::vector<ViolationHistory::Row> rows = history_->Snapshot(clock_.now_us);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].minute_start_s, kStartUs / 1'000'000);
  EXPECT_EQ(rows[0].counts[ViolationHistory::kAdmitted], 5u);
  EXPECT_EQ(rows[1].minute_start_s, kStartUs / 1'000'000 + 60);
  EXPECT_EQ(rows[1].counts[ViolationHistory::kAdmitted], 3u);
}

}  // namespace
}  // namespace tc
