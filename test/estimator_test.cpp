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
#include <vector>

#include "heap_segment.hpp"

namespace tc {

// Reaches the table's private test hooks.
class PatternTableTestPeer {
 public:
  static std::string ConsistencyProblem(PatternTable& table) { return table.ConsistencyProblem(); }
  static std::optional<double> GlobalK(PatternTable& table) { return table.GlobalK(); }
  static void SetCounters(PatternTable& table, std::uint64_t query_id, std::uint64_t calls,
                          std::uint64_t cost_samples) {
    table.SetCountersForTest(query_id, calls, cost_samples);
  }
};

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
const double kNaN = std::nan("");

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
                                   std::uint64_t query_id) {
  for (const PatternSnapshot& snapshot : snapshots) {
    if (snapshot.query_id == query_id) return &snapshot;
  }
  return nullptr;
}

void ExpectConsistent(PatternTable& table) {
  EXPECT_EQ(PatternTableTestPeer::ConsistencyProblem(table), "");
}

TEST(PatternTable, InitializeAndAttachValidateTheMemory) {
  EXPECT_THROW(PatternTable::RequiredBytes(PatternTable::kMaxCapacity + 1), std::invalid_argument);
  EXPECT_GT(PatternTable::RequiredBytes(100), PatternTable::RequiredBytes(10));
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
  EXPECT_EQ(h.table.Predict(42, 100.0), std::nullopt);
  EXPECT_EQ(h.table.Predict(42, -1.0), std::nullopt);
  EXPECT_EQ(h.table.Predict(0, 100.0), std::nullopt);
  EXPECT_EQ(PatternTableTestPeer::GlobalK(h.table), std::nullopt);
}

TEST(PatternTable, FirstSampleIsTakenAsIsThenMovingAverages) {
  Harness h;
  h.table.Record(7, 1000.0, 2.0);
  std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 1u);
  EXPECT_EQ(snapshots[0].query_id, 7u);
  EXPECT_EQ(snapshots[0].calls, 1u);
  EXPECT_DOUBLE_EQ(snapshots[0].mean_cpu_seconds, 2.0);
  EXPECT_DOUBLE_EQ(snapshots[0].mean_plan_cost, 1000.0);
  EXPECT_DOUBLE_EQ(snapshots[0].k, 0.002);
  EXPECT_DOUBLE_EQ(*h.table.Predict(7, 500.0), 1.0);

  h.table.Record(7, 2000.0, 1.0);  // alpha 0.2
  snapshots = h.table.Snapshot();
  EXPECT_EQ(snapshots[0].calls, 2u);
  EXPECT_DOUBLE_EQ(snapshots[0].mean_cpu_seconds, 1.8);
  EXPECT_DOUBLE_EQ(snapshots[0].mean_plan_cost, 1200.0);
  EXPECT_DOUBLE_EQ(snapshots[0].k, 1.8 / 1200.0);
  EXPECT_DOUBLE_EQ(*h.table.Predict(7, 1200.0), 1.8);
  ExpectConsistent(h.table);
}

TEST(PatternTable, KConvergesOnSyntheticData) {
  Harness h;
  std::mt19937 random(12345);
  std::uniform_real_distribution<double> cost(100.0, 10000.0);
  std::uniform_real_distribution<double> noise(-0.1, 0.1);
  for (int i = 0; i < 2000; ++i) {
    const double plan_cost = cost(random);
    h.table.Record(99, plan_cost, 0.001 * plan_cost * (1 + noise(random)));
  }
  const std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 1u);
  EXPECT_NEAR(snapshots[0].k, 0.001, 0.0001);
  EXPECT_EQ(snapshots[0].calls, 2000u);
  EXPECT_NEAR(*h.table.Predict(99, 5000.0), 5.0, 0.5);
  EXPECT_NEAR(*PatternTableTestPeer::GlobalK(h.table), 0.001, 0.0001);

  // A pattern that changes (an index dropped: 10x the CPU) is followed within
  // a few dozen samples.
  for (int i = 0; i < 40; ++i) {
    const double plan_cost = cost(random);
    h.table.Record(99, plan_cost, 0.01 * plan_cost);
  }
  EXPECT_NEAR(h.table.Snapshot()[0].k, 0.01, 0.0005);
}

TEST(PatternTable, PatternsHaveTheirOwnK) {
  Harness h;
  for (int i = 0; i < 50; ++i) {
    h.table.Record(1, 100.0, 0.1);   // k 0.001
    h.table.Record(2, 100.0, 0.01);  // k 0.0001
  }
  EXPECT_DOUBLE_EQ(*h.table.Predict(1, 1000.0), 1.0);
  EXPECT_DOUBLE_EQ(*h.table.Predict(2, 1000.0), 0.1);
}

TEST(PatternTable, UnseenPatternsUseTheGlobalK) {
  Harness h;
  h.table.Record(1, 100.0, 0.1);  // global k 0.001 from the first sample
  EXPECT_DOUBLE_EQ(*h.table.Predict(555, 2000.0), 2.0);
  EXPECT_DOUBLE_EQ(*h.table.Predict(0, 2000.0), 2.0);  // no query id
  // The global k moves more slowly than a pattern's (alpha 0.05).
  h.table.Record(2, 100.0, 0.3);
  EXPECT_DOUBLE_EQ(*PatternTableTestPeer::GlobalK(h.table), (0.1 + 0.05 * 0.2) / 100.0);
  // query id 0 feeds the global k but is never stored.
  h.table.Record(0, 100.0, 0.1);
  EXPECT_EQ(h.table.Snapshot().size(), 2u);
  EXPECT_EQ(FindPattern(h.table.Snapshot(), 0), nullptr);
  // An unseen utility statement has no prediction: there is nothing to scale.
  EXPECT_EQ(h.table.Predict(555, -1.0), std::nullopt);
}

TEST(PatternTable, TheGlobalKSamplesEachPattern) {
  Harness h;
  static_assert(PatternTable::kGlobalSampleEvery == 8);
  for (int i = 0; i < 8; ++i) h.table.Record(1, 100.0, 0.1);  // all taken: k 0.001
  EXPECT_DOUBLE_EQ(*PatternTableTestPeer::GlobalK(h.table), 0.001);
  for (int i = 9; i <= 15; ++i) h.table.Record(1, 100.0, 1.0);  // samples 9-15: skipped
  EXPECT_DOUBLE_EQ(*PatternTableTestPeer::GlobalK(h.table), 0.001);
  h.table.Record(1, 100.0, 1.0);  // the 16th is taken
  EXPECT_DOUBLE_EQ(*PatternTableTestPeer::GlobalK(h.table), (0.1 + 0.05 * 0.9) / 100.0);
  // Every first sample of another pattern is taken, and every sample without
  // a query id.
  h.table.Record(2, 100.0, 1.0);
  h.table.Record(0, 100.0, 1.0);
  EXPECT_GT(*PatternTableTestPeer::GlobalK(h.table), (0.1 + 0.05 * 0.9) / 100.0 + 0.0001);
  // The pattern's own k saw every sample.
  EXPECT_GT(FindPattern(h.table.Snapshot(), 1)->k, 0.008);
}

TEST(PatternTable, UtilityStatementsArePredictedAsTheirPatternsMeanCpu) {
  Harness h;
  h.table.Record(5, -1.0, 3.0);  // a utility statement: no plan cost
  h.table.Record(5, -1.0, 2.0);
  EXPECT_DOUBLE_EQ(*h.table.Predict(5, -1.0), 2.8);
  const std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  EXPECT_EQ(snapshots[0].calls, 2u);
  EXPECT_EQ(snapshots[0].mean_plan_cost, 0);
  EXPECT_TRUE(std::isnan(snapshots[0].k));
  // It feeds no k: a planned statement of an unseen pattern still knows nothing.
  EXPECT_EQ(h.table.Predict(6, 100.0), std::nullopt);
  EXPECT_EQ(PatternTableTestPeer::GlobalK(h.table), std::nullopt);
  // With a plan cost but no k anywhere, the pattern's mean CPU is the best guess.
  EXPECT_DOUBLE_EQ(*h.table.Predict(5, 100.0), 2.8);
}

TEST(PatternTable, BadSamplesAreIgnored) {
  Harness h;
  h.table.Record(1, 100.0, 1.0);
  for (double cpu : {kNaN, kInf, -kInf, -0.5}) h.table.Record(1, 100.0, cpu);
  for (double cpu : {kNaN, kInf, -1.0}) h.table.Record(2, 100.0, cpu);  // never stored
  std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 1u);
  EXPECT_EQ(snapshots[0].calls, 1u);
  EXPECT_DOUBLE_EQ(snapshots[0].k, 0.01);

  // Costs that are not positive numbers feed the mean CPU, not k.
  for (double cost : {kNaN, kInf, -kInf, 0.0}) h.table.Record(1, cost, 1.0);
  snapshots = h.table.Snapshot();
  EXPECT_EQ(snapshots[0].calls, 5u);
  EXPECT_DOUBLE_EQ(snapshots[0].mean_plan_cost, 100.0);
  EXPECT_DOUBLE_EQ(snapshots[0].k, 0.01);
  EXPECT_DOUBLE_EQ(*PatternTableTestPeer::GlobalK(h.table), 0.01);

  // Zero CPU is a real measurement (a fast statement).
  h.table.Record(3, 100.0, 0.0);
  EXPECT_EQ(*h.table.Predict(3, 100.0), 0.0);
  ExpectConsistent(h.table);
}

TEST(PatternTable, CostsThatCannotBeScaledPredictTheMeanCpu) {
  Harness h;
  h.table.Record(1, 100.0, 1.0);
  h.table.Record(1, 300.0, 2.0);  // mean cpu 1.2
  for (double cost : {0.0, -1.0, kNaN, kInf, -kInf}) {
    ASSERT_TRUE(h.table.Predict(1, cost).has_value()) << cost;
    EXPECT_DOUBLE_EQ(*h.table.Predict(1, cost), 1.2) << cost;
  }
  // An unseen pattern with such a cost: nothing known.
  EXPECT_EQ(h.table.Predict(2, 0.0), std::nullopt);
  EXPECT_EQ(h.table.Predict(2, kNaN), std::nullopt);
}

TEST(PatternTable, KThatIsNotFiniteFallsBack) {
  Harness h;
  // A denormal cost makes k infinite, for the pattern and globally.
  h.table.Record(1, 1e-310, 1.0);
  EXPECT_TRUE(std::isnan(h.table.Snapshot()[0].k));
  EXPECT_EQ(PatternTableTestPeer::GlobalK(h.table), std::nullopt);
  EXPECT_DOUBLE_EQ(*h.table.Predict(1, 100.0), 1.0);  // its mean CPU
  EXPECT_EQ(h.table.Predict(2, 100.0), std::nullopt);

  // A finite k but an overflowing product: the global k, else the mean CPU.
  h.table.Record(3, 1.0, 10.0);  // k 10
  const std::optional<double> huge = h.table.Predict(3, 1e308);
  ASSERT_TRUE(huge.has_value());
  EXPECT_TRUE(std::isfinite(*huge));
  EXPECT_DOUBLE_EQ(*huge, 10.0);
}

TEST(PatternTable, CountersSaturate) {
  Harness h;
  h.table.Record(1, 100.0, 1.0);
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  PatternTableTestPeer::SetCounters(h.table, 1, kMax - 1, kMax - 1);
  h.table.Record(1, 100.0, 1.0);
  h.table.Record(1, 100.0, 1.0);
  h.table.Record(1, 100.0, 1.0);
  const std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  EXPECT_EQ(snapshots[0].calls, kMax);
  EXPECT_DOUBLE_EQ(snapshots[0].k, 0.01);  // still a moving average, not a "first sample"
  h.table.Record(1, 100.0, 2.0);
  EXPECT_DOUBLE_EQ(h.table.Snapshot()[0].mean_cpu_seconds, 1.2);
  ExpectConsistent(h.table);
}

TEST(PatternTable, FullTableEvictsTheLeastRecentlyUsedPattern) {
  Harness h(4);
  for (std::uint64_t id = 1; id <= 4; ++id) h.table.Record(id, 100.0, 1.0);
  h.table.Predict(1, 100.0);      // a prediction is a use: 1 is fresh again
  h.table.Record(2, 100.0, 1.0);  // so is a sample
  h.table.Record(5, 100.0, 1.0);  // evicts 3
  std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 4u);
  EXPECT_EQ(FindPattern(snapshots, 3), nullptr);
  h.table.Record(6, 100.0, 1.0);  // evicts 4
  snapshots = h.table.Snapshot();
  EXPECT_EQ(FindPattern(snapshots, 4), nullptr);
  EXPECT_NE(FindPattern(snapshots, 1), nullptr);
  EXPECT_NE(FindPattern(snapshots, 2), nullptr);
  // An evicted pattern starts over.
  h.table.Record(3, 100.0, 5.0);
  EXPECT_EQ(FindPattern(h.table.Snapshot(), 3)->calls, 1u);
  ExpectConsistent(h.table);
}

TEST(PatternTable, AClockGoingBackwardsDoesNotConfuseEviction) {
  Harness h(3);
  h.table.Record(1, 100.0, 1.0);
  h.clock.now_us = 1'000'000;
  h.table.Record(2, 100.0, 1.0);
  h.table.Record(3, 100.0, 1.0);
  h.clock.now_us = 500;  // backwards: pattern 2's use does not move back in time
  h.table.Record(2, 100.0, 1.0);
  h.table.Record(4, 100.0, 1.0);  // 1 is the oldest
  const std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  EXPECT_EQ(FindPattern(snapshots, 1), nullptr);
  EXPECT_NE(FindPattern(snapshots, 2), nullptr);
  EXPECT_NE(FindPattern(snapshots, 3), nullptr);
}

TEST(PatternTable, ManyMorePatternsThanSlotsNeverFail) {
  Harness h(64);
  std::mt19937 random(7);
  for (std::uint64_t i = 0; i < 5000; ++i) {
    const std::uint64_t id = 1 + random() % 1000;
    ASSERT_NO_THROW(h.table.Record(id, 100.0, 0.5));
    if (i % 7 == 0) h.table.Predict(1 + random() % 1000, 100.0);
  }
  EXPECT_EQ(h.table.Snapshot().size(), 64u);
  ExpectConsistent(h.table);

  Harness none(0);  // capacity 0: only the global k
  none.table.Record(1, 100.0, 0.5);
  EXPECT_TRUE(none.table.Snapshot().empty());
  EXPECT_DOUBLE_EQ(*none.table.Predict(1, 200.0), 1.0);
  ExpectConsistent(none.table);
}

TEST(PatternTable, ResetForgetsEverything) {
  Harness h(8);
  for (std::uint64_t id = 1; id <= 20; ++id) h.table.Record(id, 100.0, 1.0);
  h.table.Reset();
  EXPECT_TRUE(h.table.Snapshot().empty());
  EXPECT_EQ(h.table.Predict(1, 100.0), std::nullopt);
  EXPECT_EQ(PatternTableTestPeer::GlobalK(h.table), std::nullopt);
  ExpectConsistent(h.table);
  for (std::uint64_t id = 1; id <= 8; ++id) h.table.Record(id, 100.0, 2.0);
  EXPECT_EQ(h.table.Snapshot().size(), 8u);
  EXPECT_DOUBLE_EQ(*h.table.Predict(3, 100.0), 2.0);
  ExpectConsistent(h.table);
}

TEST(PatternTable, SnapshotIsSortedByQueryId) {
  Harness h;
  for (std::uint64_t id : {30u, 10u, 20u}) h.table.Record(id, 100.0, 1.0);
  h.table.Record(std::numeric_limits<std::uint64_t>::max(), 100.0, 1.0);
  const std::vector<PatternSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 4u);
  EXPECT_EQ(snapshots[0].query_id, 10u);
  EXPECT_EQ(snapshots[2].query_id, 30u);
  EXPECT_EQ(snapshots[3].query_id, std::numeric_limits<std::uint64_t>::max());
}

TEST(PatternTable, KnownPatternsTakeOnlyTheSharedLock) {
  Harness h;
  h.table.Record(1, 100.0, 1.0);  // new: shared look-up, then exclusive
  EXPECT_EQ(h.lock.exclusive_locks, 1);
  for (int i = 0; i < 5; ++i) {
    h.table.Predict(1, 100.0);
    h.table.Record(1, 100.0, 1.0);
  }
  h.table.Predict(2, 100.0);  // unseen: a look-up only
  h.table.Snapshot();
  EXPECT_EQ(h.lock.exclusive_locks, 1);
  EXPECT_EQ(h.lock.exclusive_locks + h.lock.shared_locks, h.lock.unlocks);
}

TEST(PatternTable, TwoAttachmentsShareTheState) {
  SharedMemory memory(16);
  CountingLock lock;
  FakeClock clock;
  PatternTable first(memory.span(), lock, clock);
  PatternTable second(memory.span(), lock, clock);
  first.Record(9, 100.0, 1.0);
  EXPECT_DOUBLE_EQ(*second.Predict(9, 300.0), 3.0);
}

// Threads record and predict overlapping patterns in a table too small for
// them, through a real reader-writer lock (shared paths race on spinlocks).
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
      const double cost = 10.0 + random() % 1000;
      if (random() % 3 == 0) {
        table.Record(id, random() % 10 == 0 ? -1.0 : cost, 0.001 * cost);
      } else {
        const std::optional<double> predicted = table.Predict(id, cost);
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
  const std::vector<PatternSnapshot> snapshots = table.Snapshot();
  EXPECT_EQ(snapshots.size(), 32u);
  for (const PatternSnapshot& snapshot : snapshots) {
    if (!std::isnan(snapshot.k)) {
      EXPECT_NEAR(snapshot.k, 0.001, 1e-12) << snapshot.query_id;
    }
  }
  EXPECT_NEAR(*PatternTableTestPeer::GlobalK(table), 0.001, 1e-12);
  ExpectConsistent(table);
}

}  // namespace
}  // namespace tc
