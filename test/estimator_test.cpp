#include "traffic_control/estimator.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "heap_segment.hpp"

namespace tc {

// Reaches the table's private test hooks.
class PatternTableTestPeer {
 public:
  static std::string ConsistencyProblem(PatternTable& table) { return table.ConsistencyProblem(); }
  static std::optional<double> FallbackK(PatternTable& table, std::uint32_t user_id,
                                         std::uint32_t database_id) {
    return table.FallbackK(user_id, database_id);
  }
  static std::uint32_t UsedCount(PatternTable& table) { return table.UsedCount(); }
  static void SetCalls(PatternTable& table, const PatternKey& key, std::uint64_t calls) {
    table.SetCallsForTest(key, calls);
  }
};

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
const double kNaN = std::nan("");
// A plan cost of a utility statement: it feeds no k, so no fallback entry.
constexpr double kNoCost = -1.0;

// The role and database most tests learn for.
constexpr std::uint32_t kUser = 16384;
constexpr std::uint32_t kDb = 5;
constexpr std::uint32_t kOtherUser = 16385;
constexpr std::uint32_t kOtherDb = 16400;

PatternKey P(std::uint64_t query_id, std::uint32_t user_id = kUser,
             std::uint32_t database_id = kDb) {
  return PatternKey{user_id, database_id, query_id};
}

std::optional<double> FallbackK(PatternTable& table, std::uint32_t user_id = kUser,
                                std::uint32_t database_id = kDb) {
  return PatternTableTestPeer::FallbackK(table, user_id, database_id);
}

// Counts how the table locked; shared and exclusive both take one mutex.
class CountingLock final : public TableLock {
 public:
  void LockExclusive() override {
    mutex_.lock();
    ++exclusive_locks;
  }
  void LockShared() override {
    mutex_.lock();
    ++shared_locks;
  }
  void Unlock() override {
    ++unlocks;
    mutex_.unlock();
  }
  int exclusive_locks = 0;
  int shared_locks = 0;
  int unlocks = 0;

 private:
  std::mutex mutex_;
};

// A real reader-writer lock, so that shared holders run concurrently.
class ReaderWriterLock final : public TableLock {
 public:
  void LockExclusive() override {
    mutex_.lock();
    exclusive_ = true;
  }
  void LockShared() override { mutex_.lock_shared(); }
  void Unlock() override {
    if (exclusive_) {
      exclusive_ = false;
      mutex_.unlock();
    } else {
      mutex_.unlock_shared();
    }
  }

 private:
  std::shared_mutex mutex_;
  bool exclusive_ = false;
};

class FakeClock final : public Clock {
 public:
  std::int64_t NowMicros() override { return now_us.fetch_add(step.load()); }
  std::atomic<std::int64_t> now_us{1000};
  std::atomic<std::int64_t> step{1};
};

using SharedMemory = HeapSegment<PatternTable>;

class Harness {
 public:
  explicit Harness(std::uint32_t capacity = 64)
      : memory(capacity), table(memory.span(), lock, clock) {}
  SharedMemory memory;
  CountingLock lock;
  FakeClock clock;
  PatternTable table;
};

const PatternSnapshot* FindPattern(const std::vector<PatternSnapshot>& snapshots,
                                   std::uint64_t query_id, std::uint32_t user_id = kUser,
                                   std::uint32_t database_id = kDb) {
  for (const PatternSnapshot& snapshot : snapshots) {
    if (snapshot.query_id == query_id && snapshot.user_id == user_id &&
        snapshot.database_id == database_id) {
      return &snapshot;
    }
  }
  return nullptr;
}

void ExpectConsistent(PatternTable& table) {
  EXPECT_EQ(PatternTableTestPeer::ConsistencyProblem(table), "");
}

TEST(PatternTable, InitializeAndAttachValidateTheMemory) {
  EXPECT_THROW(PatternTable::RequiredBytes(PatternTable::kMaxCapacity + 1), std::invalid_argument);
  EXPECT_GT(PatternTable::RequiredBytes(100), PatternTable::RequiredBytes(10));
  // A header line, one 64-byte line per slot, an int32 index of the next
  // power of two >= 2 x capacity (docs/operations.md gives bytes per slot).
  static_assert(PatternTable::kEntryBytes == 64);
  EXPECT_EQ(PatternTable::RequiredBytes(1024), 64u + 1024u * 64u + 2048u * 4u);
  EXPECT_EQ(PatternTable::RequiredBytes(10000), 64u + 10000u * 64u + 32768u * 4u);
  std::vector<std::uint64_t> words(PatternTable::RequiredBytes(10) / 8 + 1, 0);
  CountingLock lock;
  FakeClock clock;
  MemorySpan span{words.data(), words.size() * 8};
  EXPECT_THROW(PatternTable(span, lock, clock), std::invalid_argument);  // not formatted
  EXPECT_THROW(PatternTable::Initialize(MemorySpan{words.data(), 64}, 10), std::invalid_argument);
  PatternTable::Initialize(span, 10);
  PatternTable table(span, lock, clock);
  EXPECT_EQ(table.capacity(), 10u);
  EXPECT_TRUE(table.Snapshot().empty());
  ExpectConsistent(table);
}

TEST(PatternTable, NothingKnownPredictsNothing) {
  Harness h;
  EXPECT_EQ(h.table.Predict(P(42), 100.0), std::nullopt);
  EXPECT_EQ(h.table.Predict(P(42), -1.0), std::nullopt);
  EXPECT_EQ(h.table.Predict(P(0), 100.0), std::nullopt);
  EXPECT_EQ(FallbackK(h.table), std::nullopt);
}

TEST(PatternTable, FirstSampleIsTakenAsIsThenMovingAverages) {
  Harness h;
  h.table.Record(P(7), 1000.0, 2.0);
  std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 1u);
  EXPECT_EQ(snapshots[0].query_id, 7u);
  EXPECT_EQ(snapshots[0].user_id, kUser);
  EXPECT_EQ(snapshots[0].database_id, kDb);
  EXPECT_EQ(snapshots[0].calls, 1u);
  EXPECT_DOUBLE_EQ(snapshots[0].mean_cpu_seconds, 2.0);
  EXPECT_DOUBLE_EQ(snapshots[0].mean_plan_cost, 1000.0);
  EXPECT_DOUBLE_EQ(snapshots[0].k, 0.002);
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(7), 500.0), 1.0);

  h.table.Record(P(7), 2000.0, 1.0);  // alpha 0.2
  snapshots = h.table.Snapshot();
  EXPECT_EQ(snapshots[0].calls, 2u);
  EXPECT_DOUBLE_EQ(snapshots[0].mean_cpu_seconds, 1.8);
  EXPECT_DOUBLE_EQ(snapshots[0].mean_plan_cost, 1200.0);
  EXPECT_DOUBLE_EQ(snapshots[0].k, 1.8 / 1200.0);
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(7), 1200.0), 1.8);
  ExpectConsistent(h.table);
}

TEST(PatternTable, KConvergesOnSyntheticData) {
  Harness h;
  std::mt19937 random(12345);
  std::uniform_real_distribution<double> cost(100.0, 10000.0);
  std::uniform_real_distribution<double> noise(-0.1, 0.1);
  for (int i = 0; i < 2000; ++i) {
    const double plan_cost = cost(random);
    h.table.Record(P(99), plan_cost, 0.001 * plan_cost * (1 + noise(random)));
  }
  const std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 1u);
  EXPECT_NEAR(snapshots[0].k, 0.001, 0.0001);
  EXPECT_EQ(snapshots[0].calls, 2000u);
  EXPECT_NEAR(*h.table.Predict(P(99), 5000.0), 5.0, 0.5);
  EXPECT_NEAR(*FallbackK(h.table), 0.001, 0.0001);

  // A pattern that changes (an index dropped: 10x the CPU) is followed within
  // a few dozen samples.
  for (int i = 0; i < 40; ++i) {
    const double plan_cost = cost(random);
    h.table.Record(P(99), plan_cost, 0.01 * plan_cost);
  }
  EXPECT_NEAR(h.table.Snapshot()[0].k, 0.01, 0.0005);
}

TEST(PatternTable, PatternsHaveTheirOwnK) {
  Harness h;
  for (int i = 0; i < 50; ++i) {
    h.table.Record(P(1), 100.0, 0.1);   // k 0.001
    h.table.Record(P(2), 100.0, 0.01);  // k 0.0001
  }
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(1), 1000.0), 1.0);
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(2), 1000.0), 0.1);
}

TEST(PatternTable, UnseenPatternsUseTheirRolesFallbackK) {
  Harness h;
  h.table.Record(P(1), 100.0, 0.1);  // fallback k 0.001 from the first sample
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(555), 2000.0), 2.0);
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(0), 2000.0), 2.0);  // no query id
  // The fallback k moves more slowly than a pattern's (alpha 0.05).
  h.table.Record(P(2), 100.0, 0.3);
  EXPECT_DOUBLE_EQ(*FallbackK(h.table), (0.1 + 0.05 * 0.2) / 100.0);
  // query id 0 feeds the fallback k but is never a pattern.
  h.table.Record(P(0), 100.0, 0.1);
  EXPECT_EQ(h.table.Snapshot().size(), 2u);
  EXPECT_EQ(FindPattern(h.table.Snapshot(), 0), nullptr);
  // An unseen utility statement has no prediction: there is nothing to scale.
  EXPECT_EQ(h.table.Predict(P(555), -1.0), std::nullopt);
}

TEST(PatternTable, TheFallbackKSamplesEachPattern) {
  Harness h;
  static_assert(PatternTable::kFallbackSampleEvery == 8);
  for (int i = 0; i < 8; ++i) h.table.Record(P(1), 100.0, 0.1);  // all taken: k 0.001
  EXPECT_DOUBLE_EQ(*FallbackK(h.table), 0.001);
  for (int i = 9; i <= 15; ++i) h.table.Record(P(1), 100.0, 1.0);  // samples 9-15: skipped
  EXPECT_DOUBLE_EQ(*FallbackK(h.table), 0.001);
  h.table.Record(P(1), 100.0, 1.0);  // the 16th is taken
  EXPECT_DOUBLE_EQ(*FallbackK(h.table), (0.1 + 0.05 * 0.9) / 100.0);
  // Every first sample of another pattern is taken, and every sample without
  // a query id.
  h.table.Record(P(2), 100.0, 1.0);
  h.table.Record(P(0), 100.0, 1.0);
  EXPECT_GT(*FallbackK(h.table), (0.1 + 0.05 * 0.9) / 100.0 + 0.0001);
  // The pattern's own k saw every sample.
  EXPECT_GT(FindPattern(h.table.Snapshot(), 1)->k, 0.008);
}

TEST(PatternTable, UtilityStatementsArePredictedAsTheirPatternsMeanCpu) {
  Harness h;
  h.table.Record(P(5), -1.0, 3.0);  // a utility statement: no plan cost
  h.table.Record(P(5), -1.0, 2.0);
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(5), -1.0), 2.8);
  const std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  EXPECT_EQ(snapshots[0].calls, 2u);
  EXPECT_EQ(snapshots[0].mean_plan_cost, 0);
  EXPECT_TRUE(std::isnan(snapshots[0].k));
  // It feeds no k: a planned statement of an unseen pattern still knows nothing.
  EXPECT_EQ(h.table.Predict(P(6), 100.0), std::nullopt);
  EXPECT_EQ(FallbackK(h.table), std::nullopt);
  // With a plan cost but no k anywhere, the pattern's mean CPU is the best guess.
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(5), 100.0), 2.8);
}

TEST(PatternTable, BadSamplesAreIgnored) {
  Harness h;
  h.table.Record(P(1), 100.0, 1.0);
  for (double cpu : {kNaN, kInf, -kInf, -0.5}) h.table.Record(P(1), 100.0, cpu);
  for (double cpu : {kNaN, kInf, -1.0}) h.table.Record(P(2), 100.0, cpu);  // never stored
  std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 1u);
  EXPECT_EQ(snapshots[0].calls, 1u);
  EXPECT_DOUBLE_EQ(snapshots[0].k, 0.01);

  // Costs that are not positive numbers feed the mean CPU, not k.
  for (double cost : {kNaN, kInf, -kInf, 0.0}) h.table.Record(P(1), cost, 1.0);
  snapshots = h.table.Snapshot();
  EXPECT_EQ(snapshots[0].calls, 5u);
  EXPECT_DOUBLE_EQ(snapshots[0].mean_plan_cost, 100.0);
  EXPECT_DOUBLE_EQ(snapshots[0].k, 0.01);
  EXPECT_DOUBLE_EQ(*FallbackK(h.table), 0.01);

  // Zero CPU is a real measurement (a fast statement).
  h.table.Record(P(3), 100.0, 0.0);
  EXPECT_EQ(*h.table.Predict(P(3), 100.0), 0.0);
  ExpectConsistent(h.table);
}

TEST(PatternTable, CostsThatCannotBeScaledPredictTheMeanCpu) {
  Harness h;
  h.table.Record(P(1), 100.0, 1.0);
  h.table.Record(P(1), 300.0, 2.0);  // mean cpu 1.2
  for (double cost : {0.0, -1.0, kNaN, kInf, -kInf}) {
    ASSERT_TRUE(h.table.Predict(P(1), cost).has_value()) << cost;
    EXPECT_DOUBLE_EQ(*h.table.Predict(P(1), cost), 1.2) << cost;
  }
  // An unseen pattern with such a cost: nothing known.
  EXPECT_EQ(h.table.Predict(P(2), 0.0), std::nullopt);
  EXPECT_EQ(h.table.Predict(P(2), kNaN), std::nullopt);
}

TEST(PatternTable, KThatIsNotFiniteFallsBack) {
  Harness h;
  // A denormal cost makes k infinite, for the pattern and its fallback.
  h.table.Record(P(1), 1e-310, 1.0);
  EXPECT_TRUE(std::isnan(h.table.Snapshot()[0].k));
  EXPECT_EQ(FallbackK(h.table), std::nullopt);
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(1), 100.0), 1.0);  // its mean CPU
  EXPECT_EQ(h.table.Predict(P(2), 100.0), std::nullopt);

  // A finite k but an overflowing product: the fallback k, else the mean CPU.
  h.table.Record(P(3), 1.0, 10.0);  // k 10
  const std::optional<double> huge = h.table.Predict(P(3), 1e308);
  ASSERT_TRUE(huge.has_value());
  EXPECT_TRUE(std::isfinite(*huge));
  EXPECT_DOUBLE_EQ(*huge, 10.0);
}

TEST(PatternTable, CountersSaturate) {
  Harness h;
  h.table.Record(P(1), 100.0, 1.0);
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  PatternTableTestPeer::SetCalls(h.table, P(1), kMax - 1);
  h.table.Record(P(1), 100.0, 1.0);
  h.table.Record(P(1), 100.0, 1.0);
  h.table.Record(P(1), 100.0, 1.0);
  const std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  EXPECT_EQ(snapshots[0].calls, kMax);
  EXPECT_DOUBLE_EQ(snapshots[0].k, 0.01);  // still a moving average, not a "first sample"
  h.table.Record(P(1), 100.0, 2.0);
  EXPECT_DOUBLE_EQ(h.table.Snapshot()[0].mean_cpu_seconds, 1.2);
  ExpectConsistent(h.table);
}

TEST(PatternTable, FullTableEvictsTheLeastRecentlyUsedPattern) {
  // Samples without a plan cost: they feed no fallback, so the four slots
  // hold the four patterns.
  Harness h(4);
  for (std::uint64_t id = 1; id <= 4; ++id) h.table.Record(P(id), kNoCost, 1.0);
  EXPECT_EQ(PatternTableTestPeer::UsedCount(h.table), 4u);
  h.table.Predict(P(1), 100.0);        // a prediction is a use: 1 is fresh again
  h.table.Record(P(2), kNoCost, 1.0);  // so is a sample
  h.table.Record(P(5), kNoCost, 1.0);  // evicts 3
  std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 4u);
  EXPECT_EQ(FindPattern(snapshots, 3), nullptr);
  h.table.Record(P(6), kNoCost, 1.0);  // evicts 4
  snapshots = h.table.Snapshot();
  EXPECT_EQ(FindPattern(snapshots, 4), nullptr);
  EXPECT_NE(FindPattern(snapshots, 1), nullptr);
  EXPECT_NE(FindPattern(snapshots, 2), nullptr);
  // An evicted pattern starts over.
  h.table.Record(P(3), kNoCost, 5.0);
  EXPECT_EQ(FindPattern(h.table.Snapshot(), 3)->calls, 1u);
  ExpectConsistent(h.table);
}

TEST(PatternTable, AClockGoingBackwardsDoesNotConfuseEviction) {
  Harness h(3);
  h.table.Record(P(1), kNoCost, 1.0);
  h.clock.now_us = 1'000'000;
  h.table.Record(P(2), kNoCost, 1.0);
  h.table.Record(P(3), kNoCost, 1.0);
  h.clock.now_us = 500;  // backwards: pattern 2's use does not move back in time
  h.table.Record(P(2), kNoCost, 1.0);
  h.table.Record(P(4), kNoCost, 1.0);  // 1 is the oldest
  const std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  EXPECT_EQ(FindPattern(snapshots, 1), nullptr);
  EXPECT_NE(FindPattern(snapshots, 2), nullptr);
  EXPECT_NE(FindPattern(snapshots, 3), nullptr);
}

// A fallback entry takes a slot like a pattern and is evicted like one; the
// role's unseen patterns are then unknown until it learns again. The
// attachment's hint still names the slot, now another pattern's: it must not
// be taken for the fallback.
TEST(PatternTable, FallbackEntriesAreEvictedLikePatternsAndRelearned) {
  Harness h(3);
  h.table.Record(P(1), 100.0, 1.0);  // pattern 1 in slot 0, the fallback in slot 1
  EXPECT_EQ(PatternTableTestPeer::UsedCount(h.table), 2u);
  EXPECT_EQ(h.table.Snapshot().size(), 1u);  // fallbacks are not listed
  EXPECT_DOUBLE_EQ(*FallbackK(h.table), 0.01);
  h.table.Record(P(2), kNoCost, 1.0);  // slot 2: the table is full
  h.table.Record(P(3), kNoCost, 1.0);  // evicts pattern 1 (the oldest)
  h.table.Record(P(4), kNoCost, 1.0);  // evicts the fallback (slot 1)
  EXPECT_EQ(FallbackK(h.table), std::nullopt);
  EXPECT_EQ(h.table.Predict(P(9), 100.0), std::nullopt);  // slot 1 now holds pattern 4
  EXPECT_EQ(h.table.Predict(P(0), 100.0), std::nullopt);
  ExpectConsistent(h.table);
  h.table.Record(P(0), 100.0, 2.0);  // a sample without a pattern: the fallback again
  EXPECT_DOUBLE_EQ(*FallbackK(h.table), 0.02);
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(9), 100.0), 2.0);
  EXPECT_EQ(PatternTableTestPeer::UsedCount(h.table), 3u);
  ExpectConsistent(h.table);
}

TEST(PatternTable, ManyMorePatternsThanSlotsNeverFail) {
  Harness h(64);
  std::mt19937 random(7);
  for (std::uint64_t i = 0; i < 5000; ++i) {
    const std::uint64_t id = 1 + random() % 1000;
    const std::uint32_t user = kUser + random() % 3;
    ASSERT_NO_THROW(h.table.Record(P(id, user), 100.0, 0.5));
    if (i % 7 == 0) h.table.Predict(P(1 + random() % 1000, user), 100.0);
  }
  EXPECT_EQ(PatternTableTestPeer::UsedCount(h.table), 64u);
  EXPECT_GE(h.table.Snapshot().size(), 61u);  // the rest: the roles' fallbacks
  ExpectConsistent(h.table);

  Harness none(0);  // capacity 0: nothing is ever known
  none.table.Record(P(1), 100.0, 0.5);
  EXPECT_TRUE(none.table.Snapshot().empty());
  EXPECT_EQ(none.table.Predict(P(1), 200.0), std::nullopt);
  EXPECT_EQ(FallbackK(none.table), std::nullopt);
  ExpectConsistent(none.table);
}

TEST(PatternTable, ResetForgetsEverything) {
  Harness h(9);
  for (std::uint64_t id = 1; id <= 20; ++id) h.table.Record(P(id, kUser + id % 2), 100.0, 1.0);
  h.table.Reset();
  EXPECT_TRUE(h.table.Snapshot().empty());
  EXPECT_EQ(PatternTableTestPeer::UsedCount(h.table), 0u);
  EXPECT_EQ(h.table.Predict(P(1), 100.0), std::nullopt);
  EXPECT_EQ(h.table.Predict(P(2, kUser + 1), 100.0), std::nullopt);
  EXPECT_EQ(FallbackK(h.table), std::nullopt);
  ExpectConsistent(h.table);
  // Eight patterns and their role's fallback fill the nine slots again.
  for (std::uint64_t id = 1; id <= 8; ++id) h.table.Record(P(id), 100.0, 2.0);
  EXPECT_EQ(h.table.Snapshot().size(), 8u);
  EXPECT_EQ(PatternTableTestPeer::UsedCount(h.table), 9u);
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(3), 100.0), 2.0);
  ExpectConsistent(h.table);
}

TEST(PatternTable, SnapshotIsSortedByQueryIdThenRoleThenDatabase) {
  Harness h;
  for (std::uint64_t id : {30u, 10u, 20u}) h.table.Record(P(id), 100.0, 1.0);
  h.table.Record(P(std::numeric_limits<std::uint64_t>::max()), 100.0, 1.0);
  h.table.Record(P(20, kUser, kOtherDb), 100.0, 1.0);
  h.table.Record(P(20, kUser - 1, kOtherDb), 100.0, 1.0);
  h.table.Record(P(20, kUser - 1, kDb), 100.0, 1.0);
  const std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 7u);
  EXPECT_EQ(snapshots[0].query_id, 10u);
  const std::vector<std::pair<std::uint32_t, std::uint32_t>> query_20 = {
      {kUser - 1, kDb}, {kUser - 1, kOtherDb}, {kUser, kDb}, {kUser, kOtherDb}};
  for (std::size_t i = 0; i < query_20.size(); ++i) {
    EXPECT_EQ(snapshots[1 + i].query_id, 20u) << i;
    EXPECT_EQ(snapshots[1 + i].user_id, query_20[i].first) << i;
    EXPECT_EQ(snapshots[1 + i].database_id, query_20[i].second) << i;
  }
  EXPECT_EQ(snapshots[5].query_id, 30u);
  EXPECT_EQ(snapshots[6].query_id, std::numeric_limits<std::uint64_t>::max());
}

TEST(PatternTable, KnownPatternsTakeOnlyTheSharedLock) {
  Harness h;
  h.table.Record(P(1), 100.0, 1.0);  // new: shared look-ups, then exclusive (pattern, fallback)
  EXPECT_EQ(h.lock.exclusive_locks, 2);
  for (int i = 0; i < 20; ++i) {
    h.table.Predict(P(1), 100.0);
    h.table.Record(P(1), 100.0, 1.0);  // the sampled ones feed the stored fallback
  }
  h.table.Predict(P(2), 100.0);  // unseen: look-ups only
  h.table.Record(P(0), 100.0, 1.0);
  h.table.Snapshot();
  EXPECT_EQ(h.lock.exclusive_locks, 2);
  EXPECT_EQ(h.lock.exclusive_locks + h.lock.shared_locks, h.lock.unlocks);
}

TEST(PatternTable, TwoAttachmentsShareTheState) {
  SharedMemory memory(16);
  CountingLock lock;
  FakeClock clock;
  PatternTable first(memory.span(), lock, clock);
  PatternTable second(memory.span(), lock, clock);
  first.Record(P(9), 100.0, 1.0);
  EXPECT_DOUBLE_EQ(*second.Predict(P(9), 300.0), 3.0);
  EXPECT_DOUBLE_EQ(*second.Predict(P(10), 300.0), 3.0);  // the role's fallback
  // A Reset through one attachment leaves the other's hint pointing at a
  // free slot: it is not trusted.
  first.Reset();
  EXPECT_EQ(second.Predict(P(10), 300.0), std::nullopt);
  first.Record(P(9, kOtherUser), 100.0, 5.0);  // slot 0 and 1 again, for another role
  EXPECT_EQ(second.Predict(P(10), 300.0), std::nullopt);
  EXPECT_DOUBLE_EQ(*second.Predict(P(10, kOtherUser), 300.0), 15.0);
}

// --- Per (role, database, query id) ------------------------------------------

TEST(PatternTable, TwoRolesWithTheSameQueryIdLearnIndependently) {
  Harness h;
  for (int i = 0; i < 20; ++i) h.table.Record(P(7, kUser), 100.0, 0.1);      // k 0.001
  for (int i = 0; i < 5; ++i) h.table.Record(P(7, kOtherUser), 100.0, 1.0);  // k 0.01
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(7, kUser), 1000.0), 1.0);
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(7, kOtherUser), 1000.0), 10.0);
  const std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 2u);  // one row per role: the query id repeats
  EXPECT_EQ(FindPattern(snapshots, 7, kUser)->calls, 20u);
  EXPECT_EQ(FindPattern(snapshots, 7, kOtherUser)->calls, 5u);
  EXPECT_DOUBLE_EQ(FindPattern(snapshots, 7, kOtherUser)->mean_cpu_seconds, 1.0);
  // A third role has learned nothing, whatever the others ran.
  EXPECT_EQ(h.table.Predict(P(7, kOtherUser + 1), 1000.0), std::nullopt);
  EXPECT_EQ(h.table.Predict(P(7, kOtherUser + 1), kNoCost), std::nullopt);
  // The same role in another database neither.
  EXPECT_EQ(h.table.Predict(P(7, kUser, kOtherDb), 1000.0), std::nullopt);
  h.table.Record(P(7, kUser, kOtherDb), 100.0, 0.5);
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(7, kUser, kOtherDb), 1000.0), 5.0);
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(7, kUser, kDb), 1000.0), 1.0);
  ExpectConsistent(h.table);
}

TEST(PatternTable, OneRolesSamplesDoNotMoveAnotherRolesFallbackK) {
  Harness h;
  h.table.Record(P(1, kOtherUser), 100.0, 0.3);  // the other role: fallback k 0.003
  const std::optional<double> before = FallbackK(h.table, kOtherUser);
  const std::optional<double> predicted_before = h.table.Predict(P(555, kOtherUser), 1000.0);
  ASSERT_TRUE(before.has_value());
  ASSERT_TRUE(predicted_before.has_value());
  EXPECT_DOUBLE_EQ(*predicted_before, 3.0);
  // Many samples of this role, new patterns and old, at a very different
  // cost; and samples without a query id.
  for (std::uint64_t i = 0; i < 200; ++i) {
    h.table.Record(P(1 + i % 20), 100.0, 10.0);
    h.table.Record(P(0), 50.0, 7.0);
  }
  EXPECT_NEAR(*FallbackK(h.table), 0.1, 0.05);
  EXPECT_EQ(FallbackK(h.table, kOtherUser), before);  // bit for bit
  EXPECT_EQ(h.table.Predict(P(555, kOtherUser), 1000.0), predicted_before);
  // Pattern 1 of the other role is its own too.
  EXPECT_DOUBLE_EQ(*h.table.Predict(P(1, kOtherUser), 1000.0), 3.0);
  // A role with no history: unknown, not this role's k.
  EXPECT_EQ(FallbackK(h.table, kOtherUser + 1), std::nullopt);
  EXPECT_EQ(h.table.Predict(P(555, kOtherUser + 1), 1000.0), std::nullopt);
  EXPECT_EQ(h.table.Predict(P(0, kOtherUser + 1), 1000.0), std::nullopt);
  // Nor is a fallback shared between the databases of one role.
  EXPECT_EQ(FallbackK(h.table, kUser, kOtherDb), std::nullopt);
  EXPECT_EQ(h.table.Predict(P(555, kUser, kOtherDb), 1000.0), std::nullopt);
  ExpectConsistent(h.table);
}

// Free entries are told apart by the in-use marker, not by a key value: the
// all-zero key (role 0, database 0, no query id: a fallback) and any pattern
// of role 0 are stored and found like any other.
TEST(PatternTable, TheInUseMarkerNotTheKeyTellsFreeEntries) {
  Harness h(4);
  const PatternKey zero_role{0, 0, 5};
  h.table.Record(zero_role, 100.0, 1.0);
  EXPECT_EQ(PatternTableTestPeer::UsedCount(h.table), 2u);  // pattern and fallback {0, 0, 0}
  EXPECT_DOUBLE_EQ(*FallbackK(h.table, 0, 0), 0.01);
  EXPECT_DOUBLE_EQ(*h.table.Predict(PatternKey{0, 0, 9}, 100.0), 1.0);
  const std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 1u);
  EXPECT_NE(FindPattern(snapshots, 5, 0, 0), nullptr);
  ExpectConsistent(h.table);
  // Free slots hold zeros too, yet a role 0 that is not stored is unknown.
  EXPECT_EQ(h.table.Predict(PatternKey{0, 0, 9}, kNoCost), std::nullopt);
  EXPECT_EQ(h.table.Predict(PatternKey{0, 1, 5}, 100.0), std::nullopt);
  // Filling and resetting keeps marker and count in step.
  h.table.Record(PatternKey{0, 0, 6}, kNoCost, 1.0);
  h.table.Record(PatternKey{0, 0, 7}, kNoCost, 1.0);
  h.table.Record(PatternKey{0, 0, 8}, kNoCost, 1.0);  // full: evicts
  EXPECT_EQ(PatternTableTestPeer::UsedCount(h.table), 4u);
  ExpectConsistent(h.table);
  h.table.Reset();
  EXPECT_EQ(h.table.Predict(zero_role, 100.0), std::nullopt);
  EXPECT_EQ(FallbackK(h.table, 0, 0), std::nullopt);
  ExpectConsistent(h.table);
}

// Threads record and predict overlapping patterns of two roles in a table
// too small for them, through a real reader-writer lock (shared paths race
// on spinlocks).
TEST(PatternTable, ConcurrentRecordAndPredictStayConsistent) {
  SharedMemory memory(32);
  ReaderWriterLock lock;
  FakeClock clock;
  std::atomic<bool> bad_prediction{false};
  auto worker = [&](std::uint32_t seed) {
    PatternTable table(memory.span(), lock, clock);
    std::mt19937 random(seed);
    for (int step = 0; step < 20000; ++step) {
      const std::uint64_t id = 1 + random() % 64;
      const std::uint32_t user = random() % 2 == 0 ? kUser : kOtherUser;
      // The roles' k differ by 10x: a sample in the wrong entry shows.
      const double k = user == kUser ? 0.001 : 0.01;
      const double cost = 10.0 + random() % 1000;
      if (random() % 3 == 0) {
        table.Record(P(id, user), random() % 10 == 0 ? -1.0 : cost, k * cost);
      } else {
        const std::optional<double> predicted = table.Predict(P(id, user), cost);
        if (predicted && (!std::isfinite(*predicted) || *predicted < 0)) bad_prediction = true;
      }
      if (step % 2000 == 0) table.Snapshot();
    }
  };
  std::vector<std::thread> threads;
  for (std::uint32_t seed = 1; seed <= 4; ++seed) threads.emplace_back(worker, seed);
  for (std::thread& thread : threads) thread.join();

  PatternTable table(memory.span(), lock, clock);
  EXPECT_FALSE(bad_prediction);
  EXPECT_EQ(PatternTableTestPeer::UsedCount(table), 32u);
  const std::vector<PatternSnapshot> snapshots = table.Snapshot();
  EXPECT_GE(snapshots.size(), 30u);
  for (const PatternSnapshot& snapshot : snapshots) {
    if (!std::isnan(snapshot.k)) {
      EXPECT_NEAR(snapshot.k, snapshot.user_id == kUser ? 0.001 : 0.01, 1e-12) << snapshot.query_id;
    }
  }
  // A fallback may have been evicted last; one still stored holds its role's k.
  if (auto k = FallbackK(table, kUser)) {
    EXPECT_NEAR(*k, 0.001, 1e-12);
  }
  if (auto k = FallbackK(table, kOtherUser)) {
    EXPECT_NEAR(*k, 0.01, 1e-12);
  }
  ExpectConsistent(table);
}

}  // namespace
}  // namespace tc
