#include "traffic_control/bucket_table.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <stdexcept>
#include <thread>
#include <tuple>

#include "bucket_table_peer.hpp"
#include "heap_segment.hpp"

namespace tc {
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

// A real reader-writer lock, so that shared holders really run concurrently
// (the stress tests exercise the per-entry spinlocks with it).
class ReaderWriterLock final : public TableLock {
 public:
  void LockExclusive() override {
    mutex_.lock();
    exclusive_ = true;
  }
  void LockShared() override { mutex_.lock_shared(); }
  void Unlock() override {
    // Only the exclusive holder can see exclusive_ == true: shared holders
    // cannot run while it is set.
    if (exclusive_) {
      exclusive_ = false;
      mutex_.unlock();
    } else {
      mutex_.unlock_shared();
    }
  }

 private:
  std::shared_mutex mutex_;
  bool exclusive_ = false;  // written only while holding the mutex exclusively
};

// Advances `step` microseconds per reading (by default 1, so every use has a
// distinct time); the cost tests set step 0 and move time with Advance().
class FakeClock final : public Clock {
 public:
  std::int64_t NowMicros() override { return now_us.fetch_add(step.load()); }
  void AdvanceMs(std::int64_t ms) { now_us += ms * 1000; }
  void AdvanceSeconds(double seconds) { now_us += static_cast<std::int64_t>(seconds * 1e6); }
  std::atomic<std::int64_t> now_us{1000};
  std::atomic<std::int64_t> step{1};
};

using SharedMemory = HeapSegment<BucketTable>;

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
  EXPECT_EQ(LimitName(Limit::kShed), "shed");
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

// A parallel plan whose workers can be cut (min_weight 1).
AdmissionRequest Cuttable(const Budget& budget, std::uint32_t weight) {
  AdmissionRequest request = Request(budget, weight);
  request.min_weight = 1;
  return request;
}

TEST(BucketTable, AParallelPlanThatDoesNotFitRunsWithTheWorkersThatDo) {
  Harness h;
  const Budget budget = MakeBudget("cut", Mode::kEnforce, 2);
  const AdmitResult first = AdmitOne(h.table, Cuttable(budget, 3));
  ASSERT_TRUE(first.admitted);
  EXPECT_EQ(first.holdings[0].weight, 2u);  // the leader and one worker
  EXPECT_EQ(first.verdicts[0].action, Action::kPass);
  EXPECT_EQ(first.verdicts[0].level, 2);
  EXPECT_EQ(ActiveOf(h.table, "cut"), 2);

  // Not even the leader fits: refused, as a plan that cannot be cut.
  const AdmitResult second = AdmitOne(h.table, Cuttable(budget, 3));
  EXPECT_FALSE(second.admitted);
  EXPECT_EQ(second.verdicts[0].action, Action::kRefuse);
  EXPECT_EQ(second.verdicts[0].level, 3);  // 2 running + its leader

  EXPECT_TRUE(h.table.Release(first.holdings[0]));
  const AdmitResult whole = AdmitOne(h.table, Cuttable(budget, 2));
  ASSERT_TRUE(whole.admitted);
  EXPECT_EQ(whole.holdings[0].weight, 2u);  // fits whole: nothing cut
  const AdmitResult leader_only = AdmitOne(h.table, Cuttable(budget, 1));
  EXPECT_FALSE(leader_only.admitted);
  EXPECT_TRUE(h.table.Release(whole.holdings[0]));
  EXPECT_EQ(ActiveOf(h.table, "cut"), 0);
  ExpectConsistent(h.table);
}

TEST(BucketTable, OnlyEnforceBudgetsCutWorkersAndTheTightestCutHolds) {
  Harness h;
  const Budget warn = MakeBudget("warn", Mode::kWarn, 1);
  const Budget roomy = MakeBudget("roomy", Mode::kEnforce, 3);
  const Budget tight = MakeBudget("tight", Mode::kEnforce, 2);
  // A warn budget reports, and cuts nothing.
  const AdmitResult warned = AdmitOne(h.table, Cuttable(warn, 4));
  ASSERT_TRUE(warned.admitted);
  EXPECT_EQ(warned.holdings[0].weight, 4u);
  EXPECT_EQ(warned.verdicts[0].action, Action::kWarn);
  // Two enforce budgets: the one with less room sets the units for both.
  const AdmitResult both =
      h.table.Admit({Cuttable(roomy, 4), Cuttable(tight, 4)}, AttemptKind::kFinal, 42);
  ASSERT_TRUE(both.admitted);
  EXPECT_EQ(both.holdings[0].weight, 2u);
  EXPECT_EQ(both.holdings[1].weight, 2u);
  EXPECT_EQ(ActiveOf(h.table, "roomy"), 2);
  EXPECT_EQ(ActiveOf(h.table, "tight"), 2);
  // A plan whose workers cannot be cut is refused as before.
  EXPECT_FALSE(AdmitOne(h.table, Request(roomy, 2)).admitted);
  EXPECT_TRUE(AdmitOne(h.table, Cuttable(roomy, 2)).admitted);  // its leader fits
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
  EXPECT_TRUE(h.table.Release(heavy));
  EXPECT_EQ(ActiveOf(h.table, "weights"), 1);
  EXPECT_TRUE(h.table.Release(light));
  EXPECT_EQ(ActiveOf(h.table, "weights"), 0);
  EXPECT_TRUE(h.table.wakes().empty());  // nobody waits
  const Holding again = AdmitOne(h.table, Request(budget)).holdings.at(0);
  EXPECT_TRUE(h.table.Release(again));
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

// A release of a statement max_duration_ms canceled counts it; a normal
// release counts nothing; reset() zeroes the count. (The controller
// releases a holding once: AdmissionTest.)
TEST(BucketTable, ACanceledReleaseIsCountedOnce) {
  Harness h;
  const Budget budget = MakeBudget("runaway", Mode::kEnforce, 10);
  const Holding canceled = AdmitOne(h.table, Request(budget)).holdings.at(0);
  const Holding finished = AdmitOne(h.table, Request(budget)).holdings.at(0);
  EXPECT_TRUE(h.table.Release(canceled, std::nullopt, true));
  EXPECT_TRUE(h.table.Release(finished));
  ASSERT_EQ(h.table.Snapshot().size(), 1u);
  EXPECT_EQ(h.table.Snapshot()[0].canceled, 1u);
  EXPECT_EQ(h.table.Snapshot()[0].active, 0);
  h.table.ResetCounters();
  EXPECT_EQ(h.table.Snapshot()[0].canceled, 0u);
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
  EXPECT_FALSE(h.table.Release(Holding{7, 1}));  // out of range
  EXPECT_EQ(ActiveOf(h.table, "second"), 1);
}

// A request may name the entry its instance was held in last time (a
// Holding's slot and generation): the table goes straight there while the
// entry has not changed hands, and looks the instance up otherwise.
TEST(BucketTable, HintsNameAnEntryOnlyWhileItHasNotChangedHands) {
  Harness h(1);
  const Budget first = MakeBudget("first", Mode::kEnforce, 5);
  const Budget second = MakeBudget("second", Mode::kEnforce, 5);
  auto hinted = [](const Budget& budget, const Holding& from) {
    AdmissionRequest request = Request(budget);
    request.hint_slot = from.slot;
    request.hint_generation = from.generation;
    return request;
  };
  const Holding learned = AdmitOne(h.table, Request(first)).holdings.at(0);
  EXPECT_NE(learned.generation, 0u);
  h.table.Release(learned);
  const AdmitResult direct = AdmitOne(h.table, hinted(first, learned));
  ASSERT_TRUE(direct.admitted);
  EXPECT_EQ(direct.holdings.at(0).slot, learned.slot);
  EXPECT_EQ(direct.holdings.at(0).generation, learned.generation);
  EXPECT_EQ(ActiveOf(h.table, "first"), 1);
  h.table.Release(direct.holdings.at(0));

  // "second" evicts "first" and takes the same entry under a new generation.
  const Holding taken = AdmitOne(h.table, Request(second)).holdings.at(0);
  ASSERT_EQ(taken.slot, learned.slot);
  EXPECT_NE(taken.generation, learned.generation);
  h.table.Release(taken);
  const AdmitResult stale = AdmitOne(h.table, hinted(first, learned));
  ASSERT_TRUE(stale.admitted);
  EXPECT_EQ(ActiveOf(h.table, "first"), 1);
  EXPECT_EQ(ActiveOf(h.table, "second"), -1);  // evicted in turn, never counted
  h.table.Release(stale.holdings.at(0));
  ExpectConsistent(h.table);

  // A never-used entry has generation 0, which no hint may claim.
  Harness fresh(4);
  AdmissionRequest zero = Request(first);
  zero.hint_slot = 3;
  zero.hint_generation = 0;
  ASSERT_TRUE(AdmitOne(fresh.table, zero).admitted);
  EXPECT_EQ(ActiveOf(fresh.table, "first"), 1);
  ExpectConsistent(fresh.table);
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
  EXPECT_TRUE(second.Release(holding));  // released by another backend
  EXPECT_EQ(ActiveOf(first, "shared"), 0);
  EXPECT_TRUE(AdmitOne(first, Request(budget)).admitted);
}

// A new instance is looked up without a lock, then created under the
// exclusive one; see BucketTableCost.ExistingInstancesTakeNoTableLock.
TEST(BucketTable, LocksExclusivelyToCreateSharedToReadAndAlwaysUnlocks) {
  Harness h;
  const Budget budget = MakeBudget("locks", Mode::kEnforce, 1);
  AdmitOne(h.table, Request(budget));
  EXPECT_EQ(h.lock.exclusive_locks, 1);
  h.table.Snapshot();
  EXPECT_GE(h.lock.shared_locks, 1);
  EXPECT_EQ(h.lock.exclusive_locks, 1);
  h.table.ResetCounters();
  EXPECT_EQ(h.lock.exclusive_locks, 2);

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
        EXPECT_TRUE(h.table.Release(held[pick].second));
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

// The fast path (no table lock) racing evictions: two "backends" take and
// give back the single slot of a max_concurrent 1 instance, while a third
// fills a 4-entry table with new instances, evicting that instance whenever
// it is idle. Mutual exclusion must hold throughout (a fast-path Admit must
// never count on an entry being evicted or reused), and nothing may be left
// active.
TEST(BucketTable, FastPathRacingEvictionsKeepsMaxConcurrentExact) {
  SharedMemory memory(4);
  MutexLock lock;
  FakeClock clock;
  const Budget strict = MakeBudget("strict", Mode::kEnforce, 1);
  const Budget churn = MakeBudget("churn", Mode::kEnforce, 1000);
  std::atomic<int> inside{0};
  std::atomic<bool> overlap{false};
  std::atomic<int> admitted{0};
  std::atomic<bool> stop{false};

  // One contender sends the entry it was last admitted in as a hint (the
  // server's path), the other looks the instance up every time.
  auto contender = [&](bool hints) {
    BucketTable table(memory.span(), lock, clock);
    Holding last;
    last.slot = AdmissionRequest::kNoHint;
    for (int step = 0; step < 60000; ++step) {
      AdmissionRequest request = Request(strict);
      if (hints) {
        request.hint_slot = last.slot;
        request.hint_generation = last.generation;
      }
      const AdmitResult result = AdmitOne(table, request);
      if (!result.admitted) continue;
      last = result.holdings.at(0);
      if (result.untracked > 0) {  // the table was full of busy entries: not counted
        table.Release(result.holdings.at(0));
        continue;
      }
      if (inside.fetch_add(1) != 0) overlap = true;
      ++admitted;
      inside.fetch_sub(1);
      table.Release(result.holdings.at(0));
    }
  };
  auto evictor = [&] {
    BucketTable table(memory.span(), lock, clock);
    for (std::uint32_t n = 0; !stop; ++n) {
      const std::string instance = std::to_string(n % 64);
      const AdmitResult result = AdmitOne(table, Request(churn, instance));
      for (const Holding& holding : result.holdings) table.Release(holding);
    }
  };
  std::thread churner(evictor);
  std::thread first(contender, true);
  std::thread second(contender, false);
  first.join();
  second.join();
  stop = true;
  churner.join();

  EXPECT_FALSE(overlap);
  EXPECT_GT(admitted.load(), 1000);  // the race really ran
  BucketTable table(memory.span(), lock, clock);
  for (const BucketSnapshot& snapshot : table.Snapshot()) {
    EXPECT_EQ(snapshot.active, 0) << snapshot.budget << "/" << snapshot.instance;
  }
  ExpectConsistent(table);
}

// --- Cost limits: per_query_limit and the leaky bucket (server_share) -----------

// A harness whose clock only moves when told to.
class CostHarness : public Harness {
 public:
  explicit CostHarness(std::uint32_t capacity = 64) : Harness(capacity) { clock.step = 0; }
};

Budget CostBudget(const std::string& name, Mode mode, std::optional<double> server_share,
                  double burst_limit = 1, std::optional<double> per_query_limit = std::nullopt) {
  Budget budget = MakeBudget(name, mode, std::nullopt);
  budget.server_share = server_share;
  budget.burst_limit = burst_limit;
  budget.per_query_limit = per_query_limit;
  return budget;
}

AdmissionRequest CostRequest(const Budget& budget, std::optional<double> predicted,
                             double cores = 1) {
  AdmissionRequest request = Request(budget);
  request.predicted_seconds = predicted;
  request.server_cores = cores;
  return request;
}

AdmissionRequest CostRequest(const Budget& budget, std::string_view instance,
                             std::optional<double> predicted, double cores = 1) {
  AdmissionRequest request = CostRequest(budget, predicted, cores);
  request.instance = instance;
  request.has_instance = true;
  return request;
}

double DebtOf(BucketTable& table, std::string_view budget, std::string_view instance = "",
              bool has_instance = false) {
  const std::vector<BucketSnapshot> snapshots = table.Snapshot();
  const BucketSnapshot* snapshot = Find(snapshots, budget, instance, has_instance);
  return snapshot == nullptr ? -1 : snapshot->debt_seconds;
}

TEST(BucketTableCost, TheBucketDrainsOverTime) {
  CostHarness h;
  // 2 cores: capacity 2 x 2 = 4 CPU-seconds, drain 50% x 2 = 1 CPU-second/s.
  const Budget budget = CostBudget("share", Mode::kEnforce, 50, 2);
  const AdmitResult result = AdmitOne(h.table, CostRequest(budget, 3.0, 2));
  ASSERT_TRUE(result.admitted);
  EXPECT_EQ(result.verdicts[0].action, Action::kPass);
  EXPECT_EQ(result.holdings[0].charged_seconds, 3.0);
  h.table.Release(result.holdings[0]);  // no measurement: the charge stands
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "share"), 3.0);
  h.clock.AdvanceMs(500);
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "share"), 2.5);
  h.clock.AdvanceMs(1500);
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "share"), 1.0);
  h.clock.AdvanceSeconds(60);
  EXPECT_EQ(DebtOf(h.table, "share"), 0.0);  // never below zero
  // Reading drains nothing by itself: the same time gives the same debt.
  EXPECT_EQ(DebtOf(h.table, "share"), 0.0);
  ExpectConsistent(h.table);
}

TEST(BucketTableCost, BurstCapacityThenRefusalWithRetryAfter) {
  CostHarness h;
  // 1 core: capacity 2 CPU-seconds, drain 0.25 CPU-seconds per second.
  const Budget budget = CostBudget("burst", Mode::kEnforce, 25, 2);
  for (int i = 0; i < 4; ++i) {
    const AdmitResult result = AdmitOne(h.table, CostRequest(budget, 0.5));
    ASSERT_TRUE(result.admitted) << i;
    EXPECT_EQ(result.verdicts[0].level, 0.5 * (i + 1));
    EXPECT_EQ(result.verdicts[0].limit_value, 2);
  }
  // The bucket is full: 2 + 0.5 > 2.
  AdmitResult refused = AdmitOne(h.table, CostRequest(budget, 0.5), AttemptKind::kFinal, 77);
  ASSERT_FALSE(refused.admitted);
  EXPECT_TRUE(refused.holdings.empty());
  const BudgetVerdict& verdict = refused.verdicts[0];
  EXPECT_EQ(verdict.action, Action::kRefuse);
  EXPECT_EQ(verdict.limit, Limit::kServerShare);
  EXPECT_EQ(verdict.limit_value, 2);
  EXPECT_EQ(verdict.level, 2.5);
  EXPECT_EQ(verdict.level_percent, 125);
  EXPECT_EQ(verdict.retry_after_ms, 2000);          // 0.5 CPU-s at 0.25 CPU-s/s
  EXPECT_FALSE(refused.may_wait);                   // waiting is for max_concurrent only
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "burst"), 2.0);  // a refusal charges nothing

  // One millisecond early is still too early; at the hint it fits.
  h.clock.AdvanceMs(1999);
  refused = AdmitOne(h.table, CostRequest(budget, 0.5));
  ASSERT_FALSE(refused.admitted);
  EXPECT_EQ(refused.verdicts[0].retry_after_ms, 1);
  h.clock.AdvanceMs(1);
  EXPECT_TRUE(AdmitOne(h.table, CostRequest(budget, 0.5)).admitted);

  const std::vector<BucketSnapshot> snapshots = h.table.Snapshot();
  EXPECT_EQ(Find(snapshots, "burst")->blocked_server_share, 2u);
  EXPECT_EQ(Find(snapshots, "burst")->admitted, 5u);
  EXPECT_EQ(Find(snapshots, "burst")->last_blocked_at_us, 42);
}

TEST(BucketTableCost, RetryAfterIsExactAndARetryThenSucceeds) {
  struct Case {
    double share, burst, cores, first, second;
    std::int64_t retry_ms;
  };
  // retry = ceil((debt + predicted - capacity) / drain * 1000)
  const Case cases[] = {
      {10, 1, 1, 1.0, 0.1, 1000},     // 0.1 / 0.1
      {10, 1, 4, 4.0, 1.0, 2500},     // capacity 4, drain 0.4: 1 / 0.4
      {50, 3, 2, 5.5, 1.0, 500},      // capacity 6, drain 1: 0.5 / 1
      {1, 1, 1, 1.0, 0.001, 100},     // drain 0.01: 0.001 / 0.01
      {30, 1, 1, 1.0, 0.0001, 1},     // 0.0001 / 0.3 = 0.33 ms -> 1
      {100, 0.5, 16, 8.0, 3.0, 188},  // capacity 8, drain 16: 3 / 16 = 187.5 ms -> 188
  };
  for (const Case& c : cases) {
    CostHarness h;
    const Budget budget = CostBudget("retry", Mode::kEnforce, c.share, c.burst);
    ASSERT_TRUE(AdmitOne(h.table, CostRequest(budget, c.first, c.cores)).admitted);
    const AdmitResult refused = AdmitOne(h.table, CostRequest(budget, c.second, c.cores));
    ASSERT_FALSE(refused.admitted) << c.share << "/" << c.cores;
    EXPECT_EQ(refused.verdicts[0].retry_after_ms, c.retry_ms) << c.share << "/" << c.cores;
    h.clock.AdvanceMs(refused.verdicts[0].retry_after_ms - 1);
    if (refused.verdicts[0].retry_after_ms > 1) {
      EXPECT_FALSE(AdmitOne(h.table, CostRequest(budget, c.second, c.cores)).admitted);
    }
    h.clock.AdvanceMs(1);
    EXPECT_TRUE(AdmitOne(h.table, CostRequest(budget, c.second, c.cores)).admitted)
        << c.share << "/" << c.cores;
  }
}

TEST(BucketTableCost, NoRetryHintWhenNoWaitCanHelp) {
  CostHarness h;
  // Larger than the whole bucket: never fits, however long it waits.
  const Budget small = CostBudget("small", Mode::kEnforce, 50, 1);
  const AdmitResult too_big = AdmitOne(h.table, CostRequest(small, 1.5));
  ASSERT_FALSE(too_big.admitted);
  EXPECT_EQ(too_big.verdicts[0].limit, Limit::kServerShare);
  EXPECT_EQ(too_big.verdicts[0].retry_after_ms, -1);
  // Exactly the whole bucket fits when empty.
  EXPECT_TRUE(AdmitOne(h.table, CostRequest(small, 1.0)).admitted);

  // Other limits never carry a hint.
  Budget narrow = CostBudget("narrow", Mode::kEnforce, std::nullopt, 1, 1);
  narrow.max_concurrent = 1;
  ASSERT_TRUE(AdmitOne(h.table, CostRequest(narrow, 0.5)).admitted);
  AdmitResult refused = AdmitOne(h.table, CostRequest(narrow, 0.5));
  EXPECT_EQ(refused.verdicts[0].limit, Limit::kMaxConcurrent);
  EXPECT_EQ(refused.verdicts[0].retry_after_ms, -1);
  const Budget per_query = CostBudget("per-query", Mode::kEnforce, std::nullopt, 1, 1);
  refused = AdmitOne(h.table, CostRequest(per_query, 5));
  EXPECT_EQ(refused.verdicts[0].limit, Limit::kPerQueryLimit);
  EXPECT_EQ(refused.verdicts[0].retry_after_ms, -1);
}

TEST(BucketTableCost, ChargeAtAdmissionIsCorrectedAtRelease) {
  CostHarness h;
  const Budget budget = CostBudget("reconcile", Mode::kEnforce, 10, 10);  // drain 0.1/s

  // Over-predicted: 4 charged, 1 used.
  AdmitResult result = AdmitOne(h.table, CostRequest(budget, 4.0));
  ASSERT_TRUE(result.admitted);
  EXPECT_EQ(result.holdings[0].charged_seconds, 4.0);
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "reconcile"), 4.0);
  h.table.Release(result.holdings[0], 1.0);
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "reconcile"), 1.0);

  // Under-predicted: 0.5 charged, 3 used.
  result = AdmitOne(h.table, CostRequest(budget, 0.5));
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "reconcile"), 1.5);
  h.table.Release(result.holdings[0], 3.0);
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "reconcile"), 4.0);

  // The correction applies to the drained debt, at release time.
  result = AdmitOne(h.table, CostRequest(budget, 2.0));  // debt 6
  h.clock.AdvanceSeconds(10);                            // drains 1: debt 5
  h.table.Release(result.holdings[0], 2.5);              // +0.5
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "reconcile"), 5.5);

  // Never below zero: the debt drained away while the statement ran.
  result = AdmitOne(h.table, CostRequest(budget, 3.0));  // debt 8.5
  h.clock.AdvanceSeconds(100);                           // drains everything
  h.table.Release(result.holdings[0], 0.0);              // -3
  EXPECT_EQ(DebtOf(h.table, "reconcile"), 0.0);

  // A measurement that is not a number corrects nothing; neither does none.
  for (double bad : {std::nan(""), -1.0, std::numeric_limits<double>::infinity()}) {
    result = AdmitOne(h.table, CostRequest(budget, 1.0));
    h.table.Release(result.holdings[0], bad);
  }
  result = AdmitOne(h.table, CostRequest(budget, 1.0));
  h.table.Release(result.holdings[0]);
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "reconcile"), 4.0);
  EXPECT_EQ(ActiveOf(h.table, "reconcile"), 0);
  ExpectConsistent(h.table);
}

TEST(BucketTableCost, ConcurrentArrivalsCannotAllSlipIn) {
  CostHarness h;
  const Budget budget = CostBudget("arrivals", Mode::kEnforce, 10, 1);  // capacity 1
  std::vector<Holding> running;
  for (int i = 0; i < 10; ++i) {
    const AdmitResult result = AdmitOne(h.table, CostRequest(budget, 0.3));
    if (result.admitted) running.push_back(result.holdings[0]);
  }
  EXPECT_EQ(running.size(), 3u);  // 0.9 charged before any of them finished
  EXPECT_EQ(ActiveOf(h.table, "arrivals"), 3);
}

TEST(BucketTableCost, ServerShareZeroShedsEverything) {
  CostHarness h;
  Budget shed = CostBudget("shed", Mode::kEnforce, 0, 5);
  shed.queue_timeout_ms = 1000;  // no use: this is not a concurrency refusal
  for (const std::optional<double>& predicted :
       {std::optional<double>(0.01), std::optional<double>(0.0), std::optional<double>()}) {
    const AdmitResult result = AdmitOne(h.table, CostRequest(shed, predicted));
    ASSERT_FALSE(result.admitted);
    EXPECT_EQ(result.verdicts[0].limit, Limit::kServerShare);
    EXPECT_EQ(result.verdicts[0].limit_value, 0);
    EXPECT_EQ(result.verdicts[0].retry_after_ms, -1);
    EXPECT_FALSE(result.may_wait);
  }
  EXPECT_TRUE(std::isinf(AdmitOne(h.table, CostRequest(shed, 1.0)).verdicts[0].level_percent));
  EXPECT_EQ(Find(h.table.Snapshot(), "shed")->blocked_server_share, 4u);

  // Warn mode runs it, warns and charges it; the bucket never drains.
  const Budget warn = CostBudget("shed-warn", Mode::kWarn, 0, 5);
  const AdmitResult warned = AdmitOne(h.table, CostRequest(warn, 0.5));
  ASSERT_TRUE(warned.admitted);
  EXPECT_EQ(warned.verdicts[0].action, Action::kWarn);
  EXPECT_EQ(warned.verdicts[0].limit, Limit::kServerShare);
  h.clock.AdvanceSeconds(100);
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "shed-warn"), 0.5);
}

TEST(BucketTableCost, UnknownPredictionPassesButItsRealCpuIsCharged) {
  CostHarness h;
  const Budget budget = CostBudget("unknown", Mode::kEnforce, 10, 1, 0.5);  // capacity 1
  AdmitResult result = AdmitOne(h.table, CostRequest(budget, std::nullopt));
  ASSERT_TRUE(result.admitted);
  EXPECT_EQ(result.verdicts[0].action, Action::kPass);
  EXPECT_EQ(result.holdings[0].charged_seconds, 0);
  h.table.Release(result.holdings[0], 0.75);  // more than per_query_limit: unknown beforehand
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "unknown"), 0.75);

  result = AdmitOne(h.table, CostRequest(budget, std::nullopt));
  ASSERT_TRUE(result.admitted);
  EXPECT_EQ(result.verdicts[0].level, 0.75);  // the debt, and nothing for the statement
  h.table.Release(result.holdings[0], 0.5);
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "unknown"), 1.25);

  // Once the debt alone exceeds the bucket, even an unknown statement is refused
  // (it can only add to it), with a retry hint for the excess.
  result = AdmitOne(h.table, CostRequest(budget, std::nullopt));
  ASSERT_FALSE(result.admitted);
  EXPECT_EQ(result.verdicts[0].limit, Limit::kServerShare);
  EXPECT_EQ(result.verdicts[0].retry_after_ms, 2500);  // 0.25 at 0.1/s
  h.clock.AdvanceMs(2500);
  EXPECT_TRUE(AdmitOne(h.table, CostRequest(budget, std::nullopt)).admitted);

  // Predictions that are not numbers count as unknown.
  for (double bad : {std::nan(""), -2.0, std::numeric_limits<double>::infinity()}) {
    result = AdmitOne(h.table, CostRequest(budget, bad));
    EXPECT_EQ(result.holdings.at(0).charged_seconds, 0) << bad;
  }
}

TEST(BucketTableCost, PerQueryLimitIsInFullServerSeconds) {
  CostHarness h;
  // 2 seconds of a 4-core server: 8 CPU-seconds.
  const Budget budget = CostBudget("per-query", Mode::kEnforce, std::nullopt, 1, 2);
  AdmitResult result = AdmitOne(h.table, CostRequest(budget, 8.0, 4));
  ASSERT_TRUE(result.admitted);
  EXPECT_EQ(result.verdicts[0].action, Action::kPass);
  EXPECT_EQ(result.verdicts[0].limit_value, 8);
  EXPECT_EQ(result.verdicts[0].level_percent, 100);
  EXPECT_EQ(result.holdings[0].charged_seconds, 0);  // no server_share: no bucket

  result = AdmitOne(h.table, CostRequest(budget, 10.0, 4));
  ASSERT_FALSE(result.admitted);
  EXPECT_EQ(result.verdicts[0].limit, Limit::kPerQueryLimit);
  EXPECT_EQ(result.verdicts[0].level, 10);
  EXPECT_EQ(result.verdicts[0].limit_value, 8);
  EXPECT_EQ(result.verdicts[0].level_percent, 125);
  EXPECT_EQ(Find(h.table.Snapshot(), "per-query")->blocked_per_query_limit, 1u);

  // Warn mode: runs, warns.
  const Budget warn = CostBudget("per-query-warn", Mode::kWarn, std::nullopt, 1, 2);
  result = AdmitOne(h.table, CostRequest(warn, 10.0, 4));
  ASSERT_TRUE(result.admitted);
  EXPECT_EQ(result.verdicts[0].action, Action::kWarn);
  EXPECT_EQ(result.verdicts[0].limit, Limit::kPerQueryLimit);

  // per_query_limit 0 refuses any statement with a predicted cost above zero.
  const Budget zero = CostBudget("per-query-zero", Mode::kEnforce, std::nullopt, 1, 0);
  result = AdmitOne(h.table, CostRequest(zero, 0.001));
  EXPECT_FALSE(result.admitted);
  EXPECT_TRUE(std::isinf(result.verdicts[0].level_percent));
  EXPECT_TRUE(AdmitOne(h.table, CostRequest(zero, std::nullopt)).admitted);

  // A budget without server_share keeps no debt, whatever the statements used.
  h.table.Release(AdmitOne(h.table, CostRequest(budget, 1.0)).holdings.at(0), 5.0);
  EXPECT_EQ(DebtOf(h.table, "per-query"), 0);
}

TEST(BucketTableCost, LimitsAreCheckedInOrderAndTheFirstRefusalWins) {
  CostHarness h;
  // Every limit would refuse: max_concurrent is reported.
  Budget all = CostBudget("all", Mode::kEnforce, 10, 1, 0.5);
  all.max_concurrent = 0;
  AdmitResult result = AdmitOne(h.table, CostRequest(all, 2.0));
  EXPECT_EQ(result.verdicts[0].limit, Limit::kMaxConcurrent);
  EXPECT_EQ(Find(h.table.Snapshot(), "all")->blocked_max_concurrent, 1u);

  // per_query_limit before server_share.
  Budget cost = CostBudget("cost", Mode::kEnforce, 10, 1, 0.5);
  cost.max_concurrent = 5;
  result = AdmitOne(h.table, CostRequest(cost, 2.0));
  EXPECT_EQ(result.verdicts[0].limit, Limit::kPerQueryLimit);
  EXPECT_EQ(result.verdicts[0].retry_after_ms, -1);

  // A refusal beats an earlier warning.
  Budget warned_first = CostBudget("warned-first", Mode::kEnforce, 10, 1);
  warned_first.max_concurrent = 1;
  warned_first.warning_threshold = 50;  // max_concurrent is at 100%: a warning
  result = AdmitOne(h.table, CostRequest(warned_first, 1.5));
  EXPECT_EQ(result.verdicts[0].action, Action::kRefuse);
  EXPECT_EQ(result.verdicts[0].limit, Limit::kServerShare);

  // Nothing refuses: the first warning is reported.
  result = AdmitOne(h.table, CostRequest(warned_first, 0.75));
  EXPECT_EQ(result.verdicts[0].action, Action::kWarn);
  EXPECT_EQ(result.verdicts[0].limit, Limit::kMaxConcurrent);

  // A pass describes the first limit the budget has.
  const Budget share_only = CostBudget("share-only", Mode::kEnforce, 10, 4);
  result = AdmitOne(h.table, CostRequest(share_only, 1.0));
  EXPECT_EQ(result.verdicts[0].action, Action::kPass);
  EXPECT_EQ(result.verdicts[0].limit, Limit::kNone);
  EXPECT_EQ(result.verdicts[0].limit_value, 4);
  EXPECT_EQ(result.verdicts[0].level_percent, 25);
}

TEST(BucketTableCost, WarningThresholdForCostLimits) {
  CostHarness h;
  Budget budget = CostBudget("threshold", Mode::kEnforce, 10, 10, 2);  // capacity 10
  budget.warning_threshold = 80;
  // per_query_limit: 1.5 of 2 is 75%, 1.6 is 80%.
  EXPECT_EQ(AdmitOne(h.table, CostRequest(budget, 1.5)).verdicts[0].action, Action::kPass);
  AdmitResult result = AdmitOne(h.table, CostRequest(budget, 1.6));
  ASSERT_TRUE(result.admitted);
  EXPECT_EQ(result.verdicts[0].action, Action::kWarn);
  EXPECT_EQ(result.verdicts[0].limit, Limit::kPerQueryLimit);
  EXPECT_DOUBLE_EQ(result.verdicts[0].level_percent, 80);

  // server_share: debt 3.1 now; 3.1 + 4.8 = 7.9 < 8, then + 0.2 = 8.1 >= 8.
  result = AdmitOne(h.table, CostRequest(budget, 1.0));  // 4.1: 41%
  EXPECT_EQ(result.verdicts[0].action, Action::kPass);
  for (int i = 0; i < 3; ++i) AdmitOne(h.table, CostRequest(budget, 1.25));  // 7.85
  EXPECT_EQ(AdmitOne(h.table, CostRequest(budget, 0.1)).verdicts[0].action,
            Action::kPass);                              // 7.95
  result = AdmitOne(h.table, CostRequest(budget, 0.1));  // 8.05: 80.5%
  ASSERT_TRUE(result.admitted);
  EXPECT_EQ(result.verdicts[0].action, Action::kWarn);
  EXPECT_EQ(result.verdicts[0].limit, Limit::kServerShare);
  EXPECT_EQ(Find(h.table.Snapshot(), "threshold")->warned, 2u);

  // Warn-mode budgets ignore the threshold: they warn only over a limit.
  Budget warn = budget;
  warn.name = "threshold-warn";
  warn.mode = Mode::kWarn;
  EXPECT_EQ(AdmitOne(h.table, CostRequest(warn, 1.9)).verdicts[0].action, Action::kPass);
}

TEST(BucketTableCost, EachInstanceHasItsOwnBucket) {
  CostHarness h;
  const Budget tenant = CostBudget("tenant", Mode::kEnforce, 10, 1);
  ASSERT_TRUE(AdmitOne(h.table, CostRequest(tenant, "acme", 1.0)).admitted);
  EXPECT_FALSE(AdmitOne(h.table, CostRequest(tenant, "acme", 0.5)).admitted);
  EXPECT_TRUE(AdmitOne(h.table, CostRequest(tenant, "globex", 0.5)).admitted);
  EXPECT_TRUE(AdmitOne(h.table, CostRequest(tenant, 0.5)).admitted);  // no instance
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "tenant", "acme", true), 1.0);
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "tenant", "globex", true), 0.5);
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "tenant"), 0.5);
}

TEST(BucketTableCost, OneCallIsAtomicAcrossBudgetsAndSeesItsOwnCharges) {
  CostHarness h;
  const Budget wide = CostBudget("wide", Mode::kEnforce, 10, 100);
  const Budget narrow = CostBudget("narrow", Mode::kEnforce, 10, 1);
  AdmitResult result =
      h.table.Admit({CostRequest(wide, 2.0), CostRequest(narrow, 2.0)}, AttemptKind::kFinal, 42);
  EXPECT_FALSE(result.admitted);
  EXPECT_EQ(result.verdicts[0].action, Action::kPass);
  EXPECT_EQ(result.verdicts[1].limit, Limit::kServerShare);
  EXPECT_EQ(DebtOf(h.table, "wide"), 0);  // refused as a whole: nothing charged

  // The same instance twice: the second sees the first's charge.
  result =
      h.table.Admit({CostRequest(narrow, 0.75), CostRequest(narrow, 0.5)}, AttemptKind::kFinal, 42);
  EXPECT_FALSE(result.admitted);
  EXPECT_EQ(result.verdicts[1].level, 1.25);
  result =
      h.table.Admit({CostRequest(narrow, 0.5), CostRequest(wide, 0.5)}, AttemptKind::kFinal, 42);
  ASSERT_TRUE(result.admitted);
  EXPECT_EQ(DebtOf(h.table, "narrow"), 0.5);
  EXPECT_EQ(DebtOf(h.table, "wide"), 0.5);
}

TEST(BucketTableCost, ADrainRateChangeAppliesFromThen) {
  CostHarness h;
  Budget budget = CostBudget("reload", Mode::kEnforce, 10, 10);  // drain 0.1/s
  AdmitOne(h.table, CostRequest(budget, 5.0));
  h.clock.AdvanceSeconds(10);  // drains 1 at the old rate
  budget.server_share = 50;    // a config reload: 0.5/s from now on
  AdmitOne(h.table, CostRequest(budget, 0.0));
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "reload"), 4.0);
  h.clock.AdvanceSeconds(2);
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "reload"), 3.0);
  // Dropping server_share drops the bucket.
  budget.server_share.reset();
  AdmitOne(h.table, CostRequest(budget, 1.0));
  EXPECT_EQ(DebtOf(h.table, "reload"), 0.0);
}

TEST(BucketTableCost, AClockReadingOlderThanTheLastUpdateDrainsNothing) {
  CostHarness h;
  const Budget budget = CostBudget("skew", Mode::kEnforce, 100, 10);  // drain 1/s
  AdmitOne(h.table, CostRequest(budget, 5.0));
  h.clock.AdvanceSeconds(-3);  // another backend's earlier reading
  AdmitOne(h.table, CostRequest(budget, 1.0));
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "skew"), 6.0);
  h.clock.AdvanceSeconds(4);  // 1 s after the first update
  EXPECT_DOUBLE_EQ(DebtOf(h.table, "skew"), 5.0);
}

TEST(BucketTableCost, UnusableServerCoresCountAsOne) {
  CostHarness h;
  const Budget budget = CostBudget("cores", Mode::kEnforce, 10, 1, 1);
  for (double cores : {0.0, -4.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
    const AdmitResult result = AdmitOne(h.table, CostRequest(budget, 0.0, cores));
    EXPECT_EQ(result.verdicts[0].limit_value, 1) << cores;
  }
}

TEST(BucketTableCost, EvictionPrefersDrainedThenSoonestEmptyThenLeastRecentlyUsed) {
  CostHarness h(4);
  const Budget slow = CostBudget("tenant", Mode::kEnforce, 10, 100);  // drain 0.1/s
  const Budget none = CostBudget("tenant", Mode::kEnforce, std::nullopt);
  auto run = [&](const Budget& budget, const char* instance, std::optional<double> cost) {
    h.clock.AdvanceMs(1);
    const AdmitResult result = AdmitOne(h.table, CostRequest(budget, instance, cost));
    ASSERT_TRUE(result.admitted);
    EXPECT_EQ(result.untracked, 0u);
    h.table.Release(result.holdings.at(0));
  };
  auto present = [&](const char* instance) {
    return Find(h.table.Snapshot(), "tenant", instance, true) != nullptr;
  };
  run(slow, "a", 5.0);  // 50 s to empty
  run(slow, "b", 1.0);  // 10 s to empty
  run(slow, "c", 3.0);  // 30 s to empty
  run(none, "d", 1.0);  // no bucket: owes nothing, although used most recently
  run(slow, "e", 2.0);
  EXPECT_FALSE(present("d"));

  // Busy entries are never evicted, however soon they would be empty.
  h.clock.AdvanceMs(1);
  const AdmitResult busy = AdmitOne(h.table, CostRequest(slow, "b", 0.0));
  run(slow, "f", 2.0);
  EXPECT_FALSE(present("e"));  // 20 s, the soonest of the idle a, c, e
  EXPECT_TRUE(present("b"));
  h.table.Release(busy.holdings.at(0));

  // All owe something: the one that empties soonest goes, not the least
  // recently used (a).
  run(slow, "g", 4.0);
  EXPECT_FALSE(present("b"));
  EXPECT_TRUE(present("a"));

  // 35 s later c and f have drained, a owes 1.5 and g 0.5: the drained ones go
  // first, least recently used first.
  h.clock.AdvanceSeconds(35);
  run(slow, "h", 0.0);
  EXPECT_FALSE(present("c"));
  EXPECT_TRUE(present("f"));
  run(slow, "i", 0.0);
  EXPECT_FALSE(present("f"));
  run(slow, "j", 0.0);
  EXPECT_FALSE(present("h"));
  EXPECT_TRUE(present("a"));
  EXPECT_TRUE(present("g"));
  ExpectConsistent(h.table);
}

TEST(BucketTableCost, EvictionAmongBucketsThatNeverDrainIsLeastRecentlyUsed) {
  CostHarness h(3);
  // server_share 0 in warn mode: charged, never drained, never empty.
  const Budget budget = CostBudget("tenant", Mode::kWarn, 0, 100);
  for (const char* name : {"a", "b", "c"}) {
    h.clock.AdvanceMs(1);
    h.table.Release(AdmitOne(h.table, CostRequest(budget, name, 1.0)).holdings.at(0));
  }
  h.clock.AdvanceMs(1);
  h.table.Release(AdmitOne(h.table, CostRequest(budget, "a", 0.0)).holdings.at(0));
  h.clock.AdvanceMs(1);
  ASSERT_EQ(AdmitOne(h.table, CostRequest(budget, "d", 0.0)).untracked, 0u);
  const std::vector<BucketSnapshot> snapshots = h.table.Snapshot();
  EXPECT_NE(Find(snapshots, "tenant", "a", true), nullptr);
  EXPECT_EQ(Find(snapshots, "tenant", "b", true), nullptr);
  EXPECT_NE(Find(snapshots, "tenant", "c", true), nullptr);
}

TEST(BucketTableCost, ExistingInstancesTakeNoTableLock) {
  Harness h;
  const Budget budget = CostBudget("locks", Mode::kEnforce, 10, 10, 1);
  AdmitResult result = AdmitOne(h.table, CostRequest(budget, 0.1));  // creates the entry
  EXPECT_EQ(h.lock.exclusive_locks, 1);
  h.table.Release(result.holdings.at(0), 0.2);
  for (int i = 0; i < 5; ++i) {
    result = AdmitOne(h.table, CostRequest(budget, 0.1));
    h.table.Release(result.holdings.at(0), 0.1);
  }
  AdmitOne(h.table, CostRequest(budget, 5));  // refused
  EXPECT_EQ(h.lock.exclusive_locks, 1);
  // Admit of an existing instance and every Release take no table lock.
  EXPECT_EQ(h.lock.shared_locks, 0);
  EXPECT_EQ(h.lock.exclusive_locks + h.lock.shared_locks, h.lock.unlocks);
  ExpectConsistent(h.table);
}

// An independent model of the contract's bucket arithmetic, for exact
// comparison: every number is a multiple of 1/64 and every time step a
// multiple of 125 ms, so doubles hold them exactly.
struct ModelBucket {
  std::int64_t active = 0;
  double debt = 0;
  std::int64_t updated_us = 0;
};

TEST(BucketTableCost, RandomSequencesMatchAReferenceModel) {
  std::vector<Budget> budgets;
  budgets.push_back(CostBudget("share", Mode::kEnforce, 25, 2));
  budgets.push_back(CostBudget("share-pq", Mode::kEnforce, 50, 1, 0.5));
  budgets.back().max_concurrent = 3;
  budgets.push_back(CostBudget("warn", Mode::kWarn, 12.5, 1, 0.25));
  budgets.push_back(CostBudget("threshold", Mode::kEnforce, 100, 0.5));
  budgets.back().warning_threshold = 75;
  budgets.push_back(CostBudget("zero", Mode::kEnforce, 0, 1));
  const double cores = 2;

  for (std::uint32_t seed = 1; seed <= 20; ++seed) {
    CostHarness h(64);
    h.clock.now_us = 0;
    std::mt19937 random(seed);
    std::map<std::string, ModelBucket> model;
    std::vector<std::pair<std::string, Holding>> held;
    for (int step = 0; step < 500; ++step) {
      if (random() % 4 == 0) h.clock.now_us += 125'000 * static_cast<std::int64_t>(random() % 8);
      const std::int64_t now = h.clock.now_us;
      if (held.empty() || random() % 2 == 0) {
        const Budget& budget = budgets[random() % budgets.size()];
        std::optional<double> predicted;
        if (random() % 5 != 0) predicted = static_cast<double>(random() % 96) / 64;
        ModelBucket& bucket = model[budget.name];
        const double drain = *budget.server_share / 100 * cores;
        bucket.debt = std::max(0.0, bucket.debt - drain * (now - bucket.updated_us) / 1e6);
        bucket.updated_us = now;
        // The contract, limit by limit.
        Action expected = Action::kPass;
        Limit limit = Limit::kNone;
        std::int64_t retry = -1;
        auto over = [&](Limit which) {
          if (expected == Action::kRefuse) return;
          if (budget.mode == Mode::kEnforce) {
            expected = Action::kRefuse;
            limit = which;
          } else if (expected == Action::kPass) {
            expected = Action::kWarn;
            limit = which;
          }
        };
        auto near = [&](Limit which) {
          if (expected == Action::kPass) {
            expected = Action::kWarn;
            limit = which;
          }
        };
        if (budget.max_concurrent && bucket.active + 1 > *budget.max_concurrent) {
          over(Limit::kMaxConcurrent);
        }
        if (budget.per_query_limit && predicted && *predicted > *budget.per_query_limit * cores) {
          over(Limit::kPerQueryLimit);
        }
        const double capacity = budget.burst_limit * cores;
        const double level = bucket.debt + predicted.value_or(0);
        if (*budget.server_share == 0 || level > capacity) {
          const bool was_refused = expected == Action::kRefuse;
          over(Limit::kServerShare);
          if (!was_refused && expected == Action::kRefuse && *budget.server_share > 0 &&
              predicted.value_or(0) <= capacity) {
            retry = static_cast<std::int64_t>(std::ceil((level - capacity) / drain * 1000));
          }
        } else if (budget.warning_threshold &&
                   level / capacity * 100 >= *budget.warning_threshold) {
          near(Limit::kServerShare);
        }

        const AdmitResult result =
            AdmitOne(h.table, CostRequest(budget, predicted, cores), AttemptKind::kFinal, step);
        const std::string where = "seed " + std::to_string(seed) + " step " + std::to_string(step);
        ASSERT_EQ(result.verdicts[0].action, expected) << where;
        ASSERT_EQ(result.verdicts[0].limit, limit) << where;
        ASSERT_EQ(result.verdicts[0].retry_after_ms, retry) << where;
        if (result.admitted) {
          ++bucket.active;
          bucket.debt += predicted.value_or(0);
          held.emplace_back(budget.name, result.holdings[0]);
        }
      } else {
        const std::size_t pick = random() % held.size();
        ModelBucket& bucket = model[held[pick].first];
        const Budget* budget = nullptr;
        for (const Budget& b : budgets) {
          if (b.name == held[pick].first) budget = &b;
        }
        const double drain = *budget->server_share / 100 * cores;
        bucket.debt = std::max(0.0, bucket.debt - drain * (now - bucket.updated_us) / 1e6);
        bucket.updated_us = now;
        std::optional<double> actual;
        if (random() % 4 != 0) actual = static_cast<double>(random() % 128) / 64;
        --bucket.active;
        if (actual) {
          bucket.debt = std::max(0.0, bucket.debt + *actual - held[pick].second.charged_seconds);
        }
        h.table.Release(held[pick].second, actual);
        held.erase(held.begin() + static_cast<std::ptrdiff_t>(pick));
      }
      for (const BucketSnapshot& snapshot : h.table.Snapshot()) {
        ModelBucket& bucket = model[snapshot.budget];
        ASSERT_EQ(snapshot.active, bucket.active);
        const Budget* budget = nullptr;
        for (const Budget& b : budgets) {
          if (b.name == snapshot.budget) budget = &b;
        }
        const double drain = *budget->server_share / 100 * cores;
        const double debt = std::max(0.0, bucket.debt - drain * (now - bucket.updated_us) / 1e6);
        ASSERT_EQ(snapshot.debt_seconds, debt) << "seed " << seed << " step " << step;
      }
    }
    ExpectConsistent(h.table);
  }
}

// Many threads against shared tables through a real reader-writer lock, so
// that the shared-lock path and the entries' spinlocks really race, with
// evictions in a small table. The clock stands still (nothing drains), so the
// debt of a bucket that is never evicted must end exactly at what its admitted
// statements really used, and no bucket may ever hold more than its capacity
// while every statement uses what it was predicted to.
TEST(BucketTableCost, ConcurrentChargesAreNeitherLostNorOverAdmitted) {
  SharedMemory mixed_memory(8);  // 3 budgets x 5 keys: constant eviction
  SharedMemory exact_memory(4);  // one key, never evicted
  ReaderWriterLock mixed_lock, exact_lock;
  FakeClock clock;
  clock.step = 0;
  std::vector<Budget> budgets;
  for (int i = 0; i < 3; ++i) {
    budgets.push_back(CostBudget("b" + std::to_string(i), Mode::kEnforce, 10, 2));
    budgets.back().max_concurrent = 4;
  }
  const Budget exact = CostBudget("exact", Mode::kEnforce, 10, 8);  // capacity 8
  const std::vector<std::string> instances{"x", "y", "z", "w"};
  constexpr int kThreads = 4;
  constexpr int kSteps = 4000;
  std::atomic<bool> over_limit{false};
  std::vector<double> used(kThreads, 0.0);  // per thread: CPU its "exact" statements used

  auto worker = [&](int id) {
    BucketTable mixed(mixed_memory.span(), mixed_lock, clock);
    BucketTable table(exact_memory.span(), exact_lock, clock);
    std::mt19937 random(static_cast<std::uint32_t>(id + 1));
    std::vector<Holding> mixed_held;
    std::vector<Holding> exact_held;
    for (int step = 0; step < kSteps; ++step) {
      switch (random() % 4) {
        case 0:
          if (exact_held.size() < 3) {
            const AdmitResult result =
                table.Admit({CostRequest(exact, 1.0)}, AttemptKind::kFinal, 0);
            if (result.admitted) exact_held.push_back(result.holdings[0]);
          }
          break;
        case 1:
          if (!exact_held.empty()) {
            // Mostly nothing used (the charge comes back), sometimes half: the
            // bucket fills slowly, so both admissions and refusals are many.
            const double actual = random() % 16 == 0 ? 0.5 : 0.0;
            table.Release(exact_held.back(), actual);
            used[id] += actual;
            exact_held.pop_back();
          }
          break;
        case 2:
          if (mixed_held.size() < 4) {
            const Budget& budget = budgets[random() % budgets.size()];
            const AdmitResult result =
                mixed.Admit({CostRequest(budget, instances[random() % instances.size()], 0.25),
                             CostRequest(budgets[0], 0.25)},
                            AttemptKind::kFinal, 0);
            if (result.admitted) {
              mixed_held.insert(mixed_held.end(), result.holdings.begin(), result.holdings.end());
            }
          }
          break;
        default:
          if (!mixed_held.empty()) {
            mixed.Release(mixed_held.back(), 0.25);
            mixed_held.pop_back();
          }
          break;
      }
      if (step % 50 == 0) {
        for (const BucketSnapshot& snapshot : table.Snapshot()) {
          if (snapshot.debt_seconds > 8.0) over_limit = true;
        }
        for (const BucketSnapshot& snapshot : mixed.Snapshot()) {
          if (snapshot.active > 4 || snapshot.debt_seconds > 2.0) over_limit = true;
        }
      }
    }
    for (const Holding& holding : mixed_held) mixed.Release(holding, 0.25);
    for (const Holding& holding : exact_held) {
      table.Release(holding, 1.0);
      used[id] += 1.0;
    }
  };
  std::vector<std::thread> threads;
  for (int id = 0; id < kThreads; ++id) threads.emplace_back(worker, id);
  for (std::thread& thread : threads) thread.join();

  EXPECT_FALSE(over_limit);
  BucketTable mixed(mixed_memory.span(), mixed_lock, clock);
  BucketTable table(exact_memory.span(), exact_lock, clock);
  for (const BucketSnapshot& snapshot : mixed.Snapshot()) {
    EXPECT_EQ(snapshot.active, 0) << snapshot.budget << "/" << snapshot.instance;
  }
  double expected = 0;
  for (double u : used) expected += u;
  const std::vector<BucketSnapshot> snapshots = table.Snapshot();
  ASSERT_EQ(snapshots.size(), 1u);
  EXPECT_EQ(snapshots[0].active, 0);
  EXPECT_DOUBLE_EQ(snapshots[0].debt_seconds, expected);
  EXPECT_GT(snapshots[0].admitted, 100u);
  EXPECT_GT(snapshots[0].blocked_server_share, 100u);  // the limit really was reached
  ExpectConsistent(mixed);
  ExpectConsistent(table);
}

}  // namespace
}  // namespace tc
