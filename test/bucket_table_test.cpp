#include "traffic_control/bucket_table.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>
#include <tuple>

namespace tc {

// Reaches the table's private consistency check.
class BucketTableTestPeer {
 public:
  static std::string ConsistencyProblem(BucketTable& table) { return table.ConsistencyProblem(); }
};

namespace {

using Action = BudgetVerdict::Action;

// Shared and exclusive both take the mutex: enough for correctness tests, and
// it records how the table locked.
class MutexLock final : public TableLock {
 public:
  void LockExclusive() override {
    mutex_.lock();
    ++exclusive_locks;
    last_was_shared = false;
  }
  void LockShared() override {
    mutex_.lock();
    ++shared_locks;
    last_was_shared = true;
  }
  void Unlock() override {
    ++unlocks;
    mutex_.unlock();
  }
  bool IsFree() {
    if (!mutex_.try_lock()) return false;
    mutex_.unlock();
    return true;
  }

  // Written under the mutex.
  int exclusive_locks = 0;
  int shared_locks = 0;
  int unlocks = 0;
  bool last_was_shared = false;

 private:
  std::mutex mutex_;
};

// Advances one microsecond per reading, so every use has a distinct time.
class FakeClock final : public Clock {
 public:
  std::int64_t NowMicros() override { return now_us.fetch_add(1); }
  std::atomic<std::int64_t> now_us{1000};
};

// Heap memory standing in for a shared-memory segment (8-byte aligned).
class SharedMemory {
 public:
  explicit SharedMemory(std::uint32_t capacity)
      : words_(BucketTable::RequiredBytes(capacity) / sizeof(std::uint64_t) + 1) {
    BucketTable::Initialize(span(), capacity);
  }
  MemorySpan span() { return MemorySpan{words_.data(), words_.size() * sizeof(std::uint64_t)}; }

 private:
  std::vector<std::uint64_t> words_;
};

class Harness {
 public:
  explicit Harness(std::uint32_t capacity = 64)
      : memory(capacity), table(memory.span(), lock, clock) {}

  SharedMemory memory;
  MutexLock lock;
  FakeClock clock;
  BucketTable table;
};

Budget MakeBudget(const std::string& name, Mode mode, std::optional<std::int64_t> max_concurrent) {
  Budget budget;
  budget.name = name;
  budget.mode = mode;
  budget.max_concurrent = max_concurrent;
  return budget;
}

AdmissionRequest Request(const Budget& budget, std::uint32_t weight = 1) {
  AdmissionRequest request;
  request.budget = &budget;
  request.weight = weight;
  return request;
}

AdmissionRequest Request(const Budget& budget, std::string_view instance,
                         std::uint32_t weight = 1) {
  AdmissionRequest request = Request(budget, weight);
  request.instance = instance;
  request.has_instance = true;
  return request;
}

AdmitResult AdmitOne(BucketTable& table, const AdmissionRequest& request,
                     AttemptKind kind = AttemptKind::kFinal, std::int64_t wall_now_us = 42) {
  return table.Admit({request}, kind, wall_now_us);
}

const BucketSnapshot* Find(const std::vector<BucketSnapshot>& snapshots, std::string_view budget,
                           std::string_view instance = "", bool has_instance = false) {
  for (const BucketSnapshot& snapshot : snapshots) {
    if (snapshot.budget == budget && snapshot.instance == instance &&
        snapshot.has_instance == has_instance) {
      return &snapshot;
    }
  }
  return nullptr;
}

// Active count of an instance; -1 when it has no entry.
std::int64_t ActiveOf(BucketTable& table, std::string_view budget, std::string_view instance = "",
                      bool has_instance = false) {
  const std::vector<BucketSnapshot> snapshots = table.Snapshot();
  const BucketSnapshot* snapshot = Find(snapshots, budget, instance, has_instance);
  return snapshot == nullptr ? -1 : snapshot->active;
}

void ExpectConsistent(BucketTable& table) {
  EXPECT_EQ(BucketTableTestPeer::ConsistencyProblem(table), "");
}

TEST(BucketTable, LimitNames) {
  EXPECT_EQ(LimitName(Limit::kNone), "");
  EXPECT_EQ(LimitName(Limit::kMaxConcurrent), "max_concurrent");
  EXPECT_EQ(LimitName(Limit::kPerQueryLimit), "per_query_limit");
  EXPECT_EQ(LimitName(Limit::kServerShare), "server_share");
}

TEST(BucketTable, InitializeAndAttachValidateTheMemory) {
  EXPECT_THROW(BucketTable::RequiredBytes(BucketTable::kMaxCapacity + 1), std::invalid_argument);
  EXPECT_GT(BucketTable::RequiredBytes(100), BucketTable::RequiredBytes(10));

  std::vector<std::uint64_t> words(BucketTable::RequiredBytes(10) / 8 + 1, 0);
  MutexLock lock;
  FakeClock clock;
  MemorySpan span{words.data(), words.size() * 8};
  EXPECT_THROW(BucketTable(span, lock, clock), std::invalid_argument);  // not formatted
  EXPECT_THROW(BucketTable::Initialize(MemorySpan{words.data(), 64}, 10), std::invalid_argument);
  BucketTable::Initialize(span, 10);
  BucketTable table(span, lock, clock);
  EXPECT_EQ(table.capacity(), 10u);
  EXPECT_TRUE(table.Snapshot().empty());
  ExpectConsistent(table);
}

TEST(BucketTable, AdmitsUnderTheLimit) {
  Harness h;
  const Budget budget = MakeBudget("reports", Mode::kEnforce, 2);
  const AdmitResult result = AdmitOne(h.table, Request(budget));
  ASSERT_TRUE(result.admitted);
  ASSERT_EQ(result.verdicts.size(), 1u);
  EXPECT_EQ(result.verdicts[0].action, Action::kPass);
  EXPECT_EQ(result.verdicts[0].limit, Limit::kNone);
  EXPECT_EQ(result.verdicts[0].level, 1);
  EXPECT_EQ(result.verdicts[0].limit_value, 2);
  EXPECT_EQ(result.verdicts[0].level_percent, 50);
  ASSERT_EQ(result.holdings.size(), 1u);
  EXPECT_NE(result.holdings[0].slot, Holding::kUntrackedSlot);
  EXPECT_EQ(result.holdings[0].weight, 1u);
  EXPECT_EQ(result.untracked, 0u);
  EXPECT_FALSE(result.may_wait);
  EXPECT_EQ(ActiveOf(h.table, "reports"), 1);
}

TEST(BucketTable, BudgetWithoutConcurrencyLimitIsCountedButNeverLimited) {
  Harness h;
  const Budget budget = MakeBudget("free", Mode::kEnforce, std::nullopt);
  for (int i = 0; i < 5; ++i) {
    const AdmitResult result = AdmitOne(h.table, Request(budget));
    ASSERT_TRUE(result.admitted);
    EXPECT_EQ(result.verdicts[0].action, Action::kPass);
    EXPECT_EQ(result.verdicts[0].limit_value, 0);
  }
  EXPECT_EQ(ActiveOf(h.table, "free"), 5);
}

TEST(BucketTable, RefusalAcquiresNothingForAnyRequest) {
  Harness h;
  const Budget narrow = MakeBudget("narrow", Mode::kEnforce, 1);
  const Budget wide = MakeBudget("wide", Mode::kEnforce, 10);
  ASSERT_TRUE(AdmitOne(h.table, Request(narrow)).admitted);

  const AdmitResult result =
      h.table.Admit({Request(wide), Request(narrow)}, AttemptKind::kFinal, 42);
  EXPECT_FALSE(result.admitted);
  EXPECT_TRUE(result.holdings.empty());
  ASSERT_EQ(result.verdicts.size(), 2u);
  EXPECT_EQ(result.verdicts[0].action, Action::kPass);
  EXPECT_EQ(result.verdicts[1].action, Action::kRefuse);
  EXPECT_EQ(result.verdicts[1].limit, Limit::kMaxConcurrent);
  EXPECT_EQ(result.verdicts[1].level, 2);
  EXPECT_EQ(result.verdicts[1].limit_value, 1);
  EXPECT_EQ(result.verdicts[1].level_percent, 200);
  EXPECT_FALSE(result.may_wait);
  EXPECT_EQ(result.queue_timeout_ms, 0);
  EXPECT_EQ(ActiveOf(h.table, "wide"), 0);
  EXPECT_EQ(ActiveOf(h.table, "narrow"), 1);
  ExpectConsistent(h.table);
}

TEST(BucketTable, WarnModeOverTheLimitAdmitsAndWarns) {
  Harness h;
  const Budget budget = MakeBudget("soft", Mode::kWarn, 1);
  ASSERT_EQ(AdmitOne(h.table, Request(budget)).verdicts[0].action, Action::kPass);
  const AdmitResult result = AdmitOne(h.table, Request(budget));
  ASSERT_TRUE(result.admitted);
  EXPECT_EQ(result.verdicts[0].action, Action::kWarn);
  EXPECT_EQ(result.verdicts[0].limit, Limit::kMaxConcurrent);
  EXPECT_EQ(result.verdicts[0].level, 2);
  ASSERT_EQ(result.holdings.size(), 1u);  // it runs, so it holds a slot
  EXPECT_EQ(ActiveOf(h.table, "soft"), 2);
}

TEST(BucketTable, WarningThresholdWarnsEnforceBudgetsOnly) {
  Harness h;
  Budget enforce = MakeBudget("enforce", Mode::kEnforce, 10);
  enforce.warning_threshold = 80;
  Budget warn = MakeBudget("warn", Mode::kWarn, 10);
  warn.warning_threshold = 10;

  for (int level = 1; level <= 10; ++level) {
    const AdmitResult result = AdmitOne(h.table, Request(enforce));
    ASSERT_TRUE(result.admitted) << level;
    EXPECT_EQ(result.verdicts[0].action, level >= 8 ? Action::kWarn : Action::kPass) << level;
    EXPECT_EQ(result.verdicts[0].level_percent, level * 10) << level;
  }
  EXPECT_EQ(AdmitOne(h.table, Request(enforce)).verdicts[0].action, Action::kRefuse);

  for (int level = 1; level <= 10; ++level) {
    EXPECT_EQ(AdmitOne(h.table, Request(warn)).verdicts[0].action, Action::kPass) << level;
  }
  EXPECT_EQ(AdmitOne(h.table, Request(warn)).verdicts[0].action, Action::kWarn);
}

TEST(BucketTable, ParallelWorkersCountAsWeight) {
  Harness h;
  const Budget budget = MakeBudget("parallel", Mode::kEnforce, 4);
  const AdmitResult three = AdmitOne(h.table, Request(budget, 3));
  ASSERT_TRUE(three.admitted);
  EXPECT_EQ(three.holdings[0].weight, 3u);
  EXPECT_EQ(ActiveOf(h.table, "parallel"), 3);

  const AdmitResult two = AdmitOne(h.table, Request(budget, 2));
  EXPECT_FALSE(two.admitted);
  EXPECT_EQ(two.verdicts[0].level, 5);
  ASSERT_TRUE(AdmitOne(h.table, Request(budget, 1)).admitted);
  EXPECT_EQ(ActiveOf(h.table, "parallel"), 4);
}

TEST(BucketTable, TheSameInstanceTwiceInOneCallCountsBoth) {
  Harness h;
  const Budget budget = MakeBudget("once", Mode::kEnforce, 1);
  const AdmitResult result =
      h.table.Admit({Request(budget), Request(budget)}, AttemptKind::kFinal, 42);
  EXPECT_FALSE(result.admitted);
  EXPECT_EQ(result.verdicts[0].action, Action::kPass);
  EXPECT_EQ(result.verdicts[1].action, Action::kRefuse);
  EXPECT_EQ(ActiveOf(h.table, "once"), 0);
}

TEST(BucketTable, ReleaseFreesExactlyTheWeight) {
  Harness h;
  const Budget budget = MakeBudget("weights", Mode::kEnforce, 10);
  const Holding heavy = AdmitOne(h.table, Request(budget, 3)).holdings.at(0);
  const Holding light = AdmitOne(h.table, Request(budget, 1)).holdings.at(0);
  EXPECT_EQ(ActiveOf(h.table, "weights"), 4);
  EXPECT_FALSE(h.table.Release(heavy));  // nobody waits
  EXPECT_EQ(ActiveOf(h.table, "weights"), 1);

  h.table.AddWaiter();
  EXPECT_TRUE(h.table.Release(light));
  EXPECT_EQ(ActiveOf(h.table, "weights"), 0);
  h.table.RemoveWaiter();
  h.table.RemoveWaiter();  // never below zero
  h.table.AddWaiter();
  const Holding again = AdmitOne(h.table, Request(budget)).holdings.at(0);
  EXPECT_TRUE(h.table.Release(again));
  h.table.RemoveWaiter();
  ExpectConsistent(h.table);
}

TEST(BucketTable, ExtraReleasesClampAtZero) {
  Harness h;
  const Budget budget = MakeBudget("clamp", Mode::kEnforce, 10);
  const Holding holding = AdmitOne(h.table, Request(budget, 2)).holdings.at(0);
  h.table.Release(holding);
  h.table.Release(holding);
  h.table.Release(holding);
  EXPECT_EQ(ActiveOf(h.table, "clamp"), 0);
  ExpectConsistent(h.table);
}

TEST(BucketTable, StaleReleaseAfterTheSlotWasReusedDoesNothing) {
  Harness h(1);
  const Budget first = MakeBudget("first", Mode::kEnforce, 5);
  const Budget second = MakeBudget("second", Mode::kEnforce, 5);
  const Holding stale = AdmitOne(h.table, Request(first)).holdings.at(0);
  h.table.Release(stale);
  const Holding current = AdmitOne(h.table, Request(second)).holdings.at(0);
  ASSERT_EQ(current.slot, stale.slot);  // "first" was evicted
  EXPECT_FALSE(h.table.Release(stale));
  EXPECT_EQ(ActiveOf(h.table, "second"), 1);
  EXPECT_EQ(ActiveOf(h.table, "first"), -1);
  EXPECT_FALSE(h.table.Release(Holding{7, current.key_hash, 1}));  // out of range
  EXPECT_EQ(ActiveOf(h.table, "second"), 1);
}

TEST(BucketTable, MaxConcurrentZeroShedsEverything) {
  Harness h;
  Budget enforce = MakeBudget("shed", Mode::kEnforce, 0);
  enforce.queue_timeout_ms = 500;  // waiting can never help a limit of 0
  const AdmitResult refused = AdmitOne(h.table, Request(enforce));
  EXPECT_FALSE(refused.admitted);
  EXPECT_EQ(refused.verdicts[0].limit, Limit::kMaxConcurrent);
  EXPECT_EQ(refused.verdicts[0].limit_value, 0);
  EXPECT_TRUE(std::isinf(refused.verdicts[0].level_percent));
  EXPECT_FALSE(refused.may_wait);
  EXPECT_EQ(refused.queue_timeout_ms, 0);

  const Budget warn = MakeBudget("shed-warn", Mode::kWarn, 0);
  const AdmitResult warned = AdmitOne(h.table, Request(warn));
  EXPECT_TRUE(warned.admitted);
  EXPECT_EQ(warned.verdicts[0].action, Action::kWarn);
}

TEST(BucketTable, MayWaitOnlyWhenEveryRefusalCanBeCuredByWaiting) {
  Harness h;
  Budget slow = MakeBudget("slow", Mode::kEnforce, 1);
  slow.queue_timeout_ms = 500;
  Budget quick = MakeBudget("quick", Mode::kEnforce, 1);
  quick.queue_timeout_ms = 200;
  const Budget no_queue = MakeBudget("no-queue", Mode::kEnforce, 1);
  const Budget soft = MakeBudget("soft", Mode::kWarn, 0);
  for (const Budget* budget : std::vector<const Budget*>{&slow, &quick, &no_queue}) {
    ASSERT_TRUE(AdmitOne(h.table, Request(*budget)).admitted);
  }

  AdmitResult result =
      h.table.Admit({Request(slow), Request(quick), Request(soft)}, AttemptKind::kFinal, 42);
  EXPECT_FALSE(result.admitted);
  EXPECT_EQ(result.verdicts[2].action, Action::kWarn);
  EXPECT_TRUE(result.may_wait);
  EXPECT_EQ(result.queue_timeout_ms, 200);

  result = h.table.Admit({Request(slow), Request(no_queue)}, AttemptKind::kFinal, 42);
  EXPECT_FALSE(result.may_wait);
  EXPECT_EQ(result.queue_timeout_ms, 0);

  // A statement heavier than the limit never fits, however long it waits.
  Budget pair = MakeBudget("pair", Mode::kEnforce, 2);
  pair.queue_timeout_ms = 100;
  result = AdmitOne(h.table, Request(pair, 3));
  EXPECT_FALSE(result.admitted);
  EXPECT_FALSE(result.may_wait);
}

TEST(BucketTable, InstancesOfOneBudgetAreCountedSeparately) {
  Harness h;
  const Budget tenant = MakeBudget("tenant", Mode::kEnforce, 1);
  EXPECT_TRUE(AdmitOne(h.table, Request(tenant, "acme")).admitted);
  EXPECT_TRUE(AdmitOne(h.table, Request(tenant, "globex")).admitted);
  EXPECT_FALSE(AdmitOne(h.table, Request(tenant, "acme")).admitted);
  // No instance, and an empty instance, are two more buckets.
  EXPECT_TRUE(AdmitOne(h.table, Request(tenant)).admitted);
  EXPECT_TRUE(AdmitOne(h.table, Request(tenant, "")).admitted);

  const std::vector<BucketSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 4u);
  // Sorted by budget, then instance (no instance first).
  EXPECT_FALSE(snapshots[0].has_instance);
  EXPECT_TRUE(snapshots[1].has_instance);
  EXPECT_EQ(snapshots[1].instance, "");
  EXPECT_EQ(snapshots[2].instance, "acme");
  EXPECT_EQ(snapshots[3].instance, "globex");
  EXPECT_EQ(snapshots[2].active, 1);
  EXPECT_EQ(snapshots[2].blocked_max_concurrent, 1u);
}

TEST(BucketTable, SnapshotIsSortedByBudgetThenInstance) {
  Harness h;
  const Budget b = MakeBudget("b", Mode::kWarn, std::nullopt);
  const Budget a = MakeBudget("a", Mode::kWarn, std::nullopt);
  AdmitOne(h.table, Request(b, "2"));
  AdmitOne(h.table, Request(a, "9"));
  AdmitOne(h.table, Request(b, "1"));
  const std::vector<BucketSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 3u);
  EXPECT_EQ(snapshots[0].budget + snapshots[0].instance, "a9");
  EXPECT_EQ(snapshots[1].budget + snapshots[1].instance, "b1");
  EXPECT_EQ(snapshots[2].budget + snapshots[2].instance, "b2");
  EXPECT_TRUE(h.lock.last_was_shared);
}

TEST(BucketTable, FullTableEvictsTheLeastRecentlyUsedIdleEntry) {
  Harness h(3);
  const Budget tenant = MakeBudget("tenant", Mode::kEnforce, 5);
  for (const char* name : {"a", "b", "c"}) {
    h.table.Release(AdmitOne(h.table, Request(tenant, name)).holdings.at(0));
  }
  h.table.Release(AdmitOne(h.table, Request(tenant, "a")).holdings.at(0));  // a is fresh again

  const AdmitResult result = AdmitOne(h.table, Request(tenant, "d"));
  ASSERT_TRUE(result.admitted);
  EXPECT_EQ(result.untracked, 0u);
  const std::vector<BucketSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 3u);
  EXPECT_NE(Find(snapshots, "tenant", "a", true), nullptr);
  EXPECT_EQ(Find(snapshots, "tenant", "b", true), nullptr);
  EXPECT_NE(Find(snapshots, "tenant", "c", true), nullptr);
  EXPECT_EQ(Find(snapshots, "tenant", "d", true)->active, 1);
  EXPECT_EQ(Find(snapshots, "tenant", "a", true)->admitted, 2u);
  ExpectConsistent(h.table);

  // A refused lookup is a use too: it protects "c" from the next eviction.
  const Budget shed = MakeBudget("tenant", Mode::kEnforce, 0);
  EXPECT_FALSE(AdmitOne(h.table, Request(shed, "c")).admitted);
  ASSERT_TRUE(AdmitOne(h.table, Request(tenant, "e")).admitted);
  const std::vector<BucketSnapshot> after = h.table.Snapshot();
  EXPECT_EQ(Find(after, "tenant", "a", true), nullptr);
  EXPECT_NE(Find(after, "tenant", "c", true), nullptr);
  ExpectConsistent(h.table);
}

TEST(BucketTable, FullTableOfBusyEntriesAdmitsUntracked) {
  Harness h(2);
  const Budget tenant = MakeBudget("tenant", Mode::kEnforce, 5);
  ASSERT_TRUE(AdmitOne(h.table, Request(tenant, "a")).admitted);
  ASSERT_TRUE(AdmitOne(h.table, Request(tenant, "b")).admitted);

  AdmitResult result;
  ASSERT_NO_THROW(result = h.table.Admit({Request(tenant, "c"), Request(tenant, "a")},
                                         AttemptKind::kFinal, 42));
  ASSERT_TRUE(result.admitted);
  EXPECT_EQ(result.untracked, 1u);
  ASSERT_EQ(result.holdings.size(), 2u);
  EXPECT_EQ(result.holdings[0].slot, Holding::kUntrackedSlot);
  EXPECT_NE(result.holdings[1].slot, Holding::kUntrackedSlot);
  EXPECT_FALSE(h.table.Release(result.holdings[0]));

  std::vector<BucketSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 2u);
  EXPECT_EQ(Find(snapshots, "tenant", "a", true)->active, 2);
  EXPECT_EQ(Find(snapshots, "tenant", "b", true)->active, 1);

  // Judged as if the instance held nothing: a limit it alone exceeds still refuses.
  const Budget shed = MakeBudget("shed", Mode::kEnforce, 0);
  EXPECT_FALSE(AdmitOne(h.table, Request(shed)).admitted);
  ExpectConsistent(h.table);
}

TEST(BucketTable, EntriesTakenEarlierInTheSameCallAreNotEvicted) {
  Harness h(1);
  const Budget first = MakeBudget("first", Mode::kEnforce, 5);
  const Budget second = MakeBudget("second", Mode::kEnforce, 5);
  const AdmitResult result =
      h.table.Admit({Request(first), Request(second)}, AttemptKind::kFinal, 42);
  ASSERT_TRUE(result.admitted);
  EXPECT_NE(result.holdings[0].slot, Holding::kUntrackedSlot);
  EXPECT_EQ(result.holdings[1].slot, Holding::kUntrackedSlot);
  EXPECT_EQ(ActiveOf(h.table, "first"), 1);
  ExpectConsistent(h.table);
}

TEST(BucketTable, ZeroCapacityAdmitsEverythingUntracked) {
  Harness h(0);
  const Budget budget = MakeBudget("any", Mode::kEnforce, 1);
  for (int i = 0; i < 3; ++i) {
    const AdmitResult result = AdmitOne(h.table, Request(budget));
    EXPECT_TRUE(result.admitted);
    EXPECT_EQ(result.untracked, 1u);
  }
  EXPECT_TRUE(h.table.Snapshot().empty());
}

TEST(BucketTable, CountsOutcomes) {
  Harness h;
  Budget budget = MakeBudget("counted", Mode::kEnforce, 2);
  budget.warning_threshold = 100;
  budget.queue_timeout_ms = 50;
  AdmitOne(h.table, Request(budget));                                    // admitted
  AdmitOne(h.table, Request(budget));                                    // admitted, warned
  AdmitOne(h.table, Request(budget), AttemptKind::kWillWait, 1'000);     // queued
  AdmitOne(h.table, Request(budget), AttemptKind::kFinal, 2'000);        // blocked
  AdmitOne(h.table, Request(budget, 3), AttemptKind::kWillWait, 3'000);  // can't wait: blocked
  const std::vector<BucketSnapshot> snapshots = h.table.Snapshot();
  const BucketSnapshot* counted = Find(snapshots, "counted");
  ASSERT_NE(counted, nullptr);
  EXPECT_EQ(counted->active, 2);
  EXPECT_EQ(counted->admitted, 2u);
  EXPECT_EQ(counted->warned, 1u);
  EXPECT_EQ(counted->queued, 1u);
  EXPECT_EQ(counted->blocked_max_concurrent, 2u);
  EXPECT_EQ(counted->blocked_per_query_limit, 0u);
  EXPECT_EQ(counted->blocked_server_share, 0u);
  EXPECT_EQ(counted->last_blocked_at_us, 3'000);

  // Only the refusing entry counts a refusal.
  const Budget other = MakeBudget("other", Mode::kEnforce, 5);
  h.table.Admit({Request(other), Request(budget)}, AttemptKind::kFinal, 4'000);
  const std::vector<BucketSnapshot> later = h.table.Snapshot();
  const BucketSnapshot* untouched = Find(later, "other");
  ASSERT_NE(untouched, nullptr);
  EXPECT_EQ(untouched->admitted, 0u);
  EXPECT_EQ(untouched->blocked_max_concurrent, 0u);
  EXPECT_EQ(untouched->last_blocked_at_us, 0);
}

TEST(BucketTable, ResetCountersKeepsActive) {
  Harness h;
  const Budget budget = MakeBudget("reset", Mode::kEnforce, 1);
  AdmitOne(h.table, Request(budget));
  AdmitOne(h.table, Request(budget));
  h.table.ResetCounters();
  const std::vector<BucketSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 1u);
  EXPECT_EQ(snapshots[0].active, 1);
  EXPECT_EQ(snapshots[0].admitted, 0u);
  EXPECT_EQ(snapshots[0].blocked_max_concurrent, 0u);
  EXPECT_EQ(snapshots[0].last_blocked_at_us, 0);
  EXPECT_FALSE(AdmitOne(h.table, Request(budget)).admitted);  // still full
}

TEST(BucketTable, LongInstancesAreIdentifiedInFullAndTruncatedForDisplay) {
  Harness h;
  const Budget tenant = MakeBudget("tenant", Mode::kEnforce, 1);
  const std::string long_a(2000, 'x');
  std::string long_b = long_a;
  long_b.back() = 'y';  // same first 1,999 bytes

  EXPECT_TRUE(AdmitOne(h.table, Request(tenant, long_a)).admitted);
  EXPECT_TRUE(AdmitOne(h.table, Request(tenant, long_b)).admitted);
  EXPECT_FALSE(AdmitOne(h.table, Request(tenant, long_a)).admitted);
  EXPECT_TRUE(
      AdmitOne(h.table, Request(tenant, long_a.substr(0, kMaxInstanceDisplayBytes))).admitted);

  const std::vector<BucketSnapshot> snapshots = h.table.Snapshot();
  ASSERT_EQ(snapshots.size(), 3u);
  for (const BucketSnapshot& snapshot : snapshots) {
    EXPECT_EQ(snapshot.instance, long_a.substr(0, kMaxInstanceDisplayBytes));
    EXPECT_EQ(snapshot.active, 1);
  }
  ExpectConsistent(h.table);
}

TEST(BucketTable, TwoAttachmentsShareTheState) {
  SharedMemory memory(16);
  MutexLock lock;
  FakeClock clock;
  BucketTable first(memory.span(), lock, clock);
  BucketTable second(memory.span(), lock, clock);
  const Budget budget = MakeBudget("shared", Mode::kEnforce, 1);

  const Holding holding = AdmitOne(first, Request(budget)).holdings.at(0);
  EXPECT_EQ(ActiveOf(second, "shared"), 1);
  EXPECT_FALSE(AdmitOne(second, Request(budget)).admitted);
  second.AddWaiter();
  EXPECT_TRUE(second.Release(holding));  // released by another backend
  EXPECT_EQ(ActiveOf(first, "shared"), 0);
  EXPECT_TRUE(AdmitOne(first, Request(budget)).admitted);
}

TEST(BucketTable, LocksExclusivelyToChangeSharedToReadAndAlwaysUnlocks) {
  Harness h;
  const Budget budget = MakeBudget("locks", Mode::kEnforce, 1);
  AdmitOne(h.table, Request(budget));
  EXPECT_EQ(h.lock.exclusive_locks, 1);
  h.table.Snapshot();
  EXPECT_GE(h.lock.shared_locks, 1);
  EXPECT_EQ(h.lock.exclusive_locks, 1);
  h.table.ResetCounters();
  h.table.AddWaiter();
  h.table.RemoveWaiter();
  EXPECT_EQ(h.lock.exclusive_locks, 4);

  AdmissionRequest broken;  // no budget: rejected before locking
  EXPECT_THROW(AdmitOne(h.table, broken), std::invalid_argument);
  EXPECT_EQ(h.lock.exclusive_locks + h.lock.shared_locks, h.lock.unlocks);
  EXPECT_TRUE(h.lock.IsFree());
}

// The verdict the contract asks for, written independently of the table.
Action ExpectedAction(const Budget& budget, std::int64_t active, std::uint32_t weight) {
  if (!budget.max_concurrent) return Action::kPass;
  const std::int64_t level = active + weight;
  if (level > *budget.max_concurrent) {
    return budget.mode == Mode::kEnforce ? Action::kRefuse : Action::kWarn;
  }
  if (budget.mode == Mode::kEnforce && budget.warning_threshold && *budget.max_concurrent > 0 &&
      100.0 * level / *budget.max_concurrent >= *budget.warning_threshold) {
    return Action::kWarn;
  }
  return Action::kPass;
}

using Key = std::tuple<std::string, bool, std::string>;

struct RandomWorkload {
  std::vector<Budget> budgets;
  std::vector<std::string> instances{"", "a", "b", "c"};

  RandomWorkload() {
    budgets.push_back(MakeBudget("enforce3", Mode::kEnforce, 3));
    budgets.push_back(MakeBudget("warn2", Mode::kWarn, 2));
    budgets.push_back(MakeBudget("threshold5", Mode::kEnforce, 5));
    budgets.back().warning_threshold = 60;
    budgets.back().queue_timeout_ms = 100;
    budgets.push_back(MakeBudget("unlimited", Mode::kEnforce, std::nullopt));
    budgets.push_back(MakeBudget("zero", Mode::kEnforce, 0));
  }

  std::vector<AdmissionRequest> Batch(std::mt19937& random) const {
    std::vector<AdmissionRequest> batch(1 + random() % 3);
    for (AdmissionRequest& request : batch) {
      request.budget = &budgets[random() % budgets.size()];
      const std::string& instance = instances[random() % instances.size()];
      request.has_instance = !instance.empty() || random() % 2 == 0;
      request.instance = instance;
      request.weight = 1 + random() % 3;
    }
    return batch;
  }
};

Key KeyOf(const AdmissionRequest& request) {
  return Key(request.budget->name, request.has_instance, std::string(request.instance));
}

TEST(BucketTable, RandomSequencesMatchAReferenceModel) {
  const RandomWorkload workload;
  for (std::uint32_t seed = 1; seed <= 20; ++seed) {
    Harness h(256);  // no evictions: the model can predict every verdict
    std::mt19937 random(seed);
    std::map<Key, std::int64_t> model;
    std::vector<std::pair<Key, Holding>> held;
    for (int step = 0; step < 400; ++step) {
      if (held.empty() || random() % 5 < 3) {
        const std::vector<AdmissionRequest> batch = workload.Batch(random);
        std::map<Key, std::int64_t> pending;
        bool expect_admitted = true;
        std::vector<Action> expected;
        for (const AdmissionRequest& request : batch) {
          const Key key = KeyOf(request);
          expected.push_back(
              ExpectedAction(*request.budget, model[key] + pending[key], request.weight));
          pending[key] += request.weight;
          expect_admitted = expect_admitted && expected.back() != Action::kRefuse;
        }
        const AttemptKind kind = random() % 2 ? AttemptKind::kFinal : AttemptKind::kWillWait;
        const AdmitResult result = h.table.Admit(batch, kind, step);
        ASSERT_EQ(result.admitted, expect_admitted) << "seed " << seed << " step " << step;
        for (std::size_t i = 0; i < batch.size(); ++i) {
          ASSERT_EQ(result.verdicts[i].action, expected[i]) << "seed " << seed << " step " << step;
        }
        if (result.admitted) {
          ASSERT_EQ(result.holdings.size(), batch.size());
          EXPECT_EQ(result.untracked, 0u);
          for (std::size_t i = 0; i < batch.size(); ++i) {
            model[KeyOf(batch[i])] += batch[i].weight;
            held.emplace_back(KeyOf(batch[i]), result.holdings[i]);
          }
        }
      } else {
        const std::size_t pick = random() % held.size();
        EXPECT_FALSE(h.table.Release(held[pick].second));
        model[held[pick].first] -= held[pick].second.weight;
        held.erase(held.begin() + static_cast<std::ptrdiff_t>(pick));
      }
      if (step % 20 == 0) ExpectConsistent(h.table);
      for (const BucketSnapshot& snapshot : h.table.Snapshot()) {
        const Key key(snapshot.budget, snapshot.has_instance, snapshot.instance);
        ASSERT_EQ(snapshot.active, model[key]) << "seed " << seed << " step " << step;
        ASSERT_GE(snapshot.active, 0);
      }
    }
    for (const auto& [key, holding] : held) h.table.Release(holding);
    for (const BucketSnapshot& snapshot : h.table.Snapshot()) EXPECT_EQ(snapshot.active, 0);
    ExpectConsistent(h.table);
  }
}

TEST(BucketTable, RandomSequencesOnATinyTableKeepCountsRight) {
  RandomWorkload workload;
  workload.instances = {"", "a", "b", "c", "d", "e", "f", "g"};
  for (std::uint32_t seed = 1; seed <= 20; ++seed) {
    Harness h(4);  // constant eviction and untracked admissions
    std::mt19937 random(seed);
    std::map<Key, std::int64_t> model;  // counts of tracked holdings
    std::vector<std::pair<Key, Holding>> held;
    std::uint32_t untracked = 0;
    for (int step = 0; step < 400; ++step) {
      if (held.empty() || random() % 2 == 0) {
        const std::vector<AdmissionRequest> batch = workload.Batch(random);
        const AdmitResult result = h.table.Admit(batch, AttemptKind::kFinal, step);
        if (!result.admitted) continue;
        untracked += result.untracked;
        for (std::size_t i = 0; i < batch.size(); ++i) {
          if (result.holdings[i].slot != Holding::kUntrackedSlot) {
            model[KeyOf(batch[i])] += batch[i].weight;
          }
          held.emplace_back(KeyOf(batch[i]), result.holdings[i]);
        }
      } else {
        const std::size_t pick = random() % held.size();
        h.table.Release(held[pick].second);
        if (held[pick].second.slot != Holding::kUntrackedSlot) {
          model[held[pick].first] -= held[pick].second.weight;
        }
        held.erase(held.begin() + static_cast<std::ptrdiff_t>(pick));
      }
      ASSERT_EQ(BucketTableTestPeer::ConsistencyProblem(h.table), "") << "step " << step;
      const std::vector<BucketSnapshot> snapshots = h.table.Snapshot();
      ASSERT_LE(snapshots.size(), 4u);
      for (const auto& [key, active] : model) {
        ASSERT_GE(active, 0);
        const BucketSnapshot* snapshot =
            Find(snapshots, std::get<0>(key), std::get<2>(key), std::get<1>(key));
        // Busy instances are never evicted; idle ones may be.
        if (active > 0) {
          ASSERT_NE(snapshot, nullptr) << "step " << step;
        }
        if (snapshot != nullptr) {
          ASSERT_EQ(snapshot->active, active) << "step " << step;
        }
      }
    }
    EXPECT_GT(untracked, 0u) << "seed " << seed;  // the scenario really was exercised
    for (const auto& [key, holding] : held) h.table.Release(holding);
    for (const BucketSnapshot& snapshot : h.table.Snapshot()) EXPECT_EQ(snapshot.active, 0);
  }
}

TEST(BucketTable, ConcurrentAdmitAndReleaseEndsWithNothingActive) {
  SharedMemory memory(16);
  MutexLock lock;
  FakeClock clock;
  const RandomWorkload workload;  // 5 budgets x 7 keys fits 16 slots only with eviction
  std::atomic<bool> over_limit{false};

  auto worker = [&](std::uint32_t seed) {
    BucketTable table(memory.span(), lock, clock);  // one attachment per "backend"
    std::mt19937 random(seed);
    std::vector<Holding> held;
    for (int step = 0; step < 3000; ++step) {
      if (held.size() < 4 && random() % 2 == 0) {
        const AdmitResult result = table.Admit(workload.Batch(random), AttemptKind::kFinal, step);
        if (result.admitted)
          held.insert(held.end(), result.holdings.begin(), result.holdings.end());
      } else if (!held.empty()) {
        table.Release(held.back());
        held.pop_back();
      }
      if (step % 100 == 0) {
        for (const BucketSnapshot& snapshot : table.Snapshot()) {
          if (snapshot.budget == "enforce3" && snapshot.active > 3) over_limit = true;
        }
      }
    }
    for (const Holding& holding : held) table.Release(holding);
  };
  std::vector<std::thread> threads;
  for (std::uint32_t seed = 1; seed <= 4; ++seed) threads.emplace_back(worker, seed);
  for (std::thread& thread : threads) thread.join();

  BucketTable table(memory.span(), lock, clock);
  EXPECT_FALSE(over_limit);
  EXPECT_FALSE(table.Snapshot().empty());
  for (const BucketSnapshot& snapshot : table.Snapshot()) {
    EXPECT_EQ(snapshot.active, 0) << snapshot.budget << "/" << snapshot.instance;
  }
  ExpectConsistent(table);
}

}  // namespace
}  // namespace tc
