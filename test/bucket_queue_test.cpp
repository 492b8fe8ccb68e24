// The bucket table's queues (queue_timeout_ms): FIFO per budget instance, no
// overtaking, a release wakes only the waiters that fit, every way out of a
// queue passes the turn on, a statement of several budgets waits in one
// queue at a time, and what the deadlock check reads.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bucket_table_peer.hpp"
#include "heap_segment.hpp"
#include "test_doubles.hpp"
#include "traffic_control/bucket_table.hpp"

namespace tc {
namespace {

using Action = BudgetVerdict::Action;

class QueueClock final : public Clock {
 public:
  std::int64_t NowMicros() override { return now_us.fetch_add(1); }
  std::atomic<std::int64_t> now_us{1'000'000};
};

// One table attachment per backend, numbered 0 .. backends - 1, as the shim
// attaches one per PostgreSQL backend (its PGPROC number).
class Backends {
 public:
  explicit Backends(std::uint32_t backends, std::uint32_t capacity = 16)
      : memory_(capacity, backends) {
    for (std::uint32_t b = 0; b < backends; ++b) {
      tables_.push_back(std::make_unique<BucketTable>(memory_.span(), lock_, clock_,
                                                      static_cast<std::int32_t>(b)));
    }
  }
  BucketTable& operator[](std::size_t backend) { return *tables_.at(backend); }
  std::size_t size() const { return tables_.size(); }

  // The backends a call of `backend` woke, taken from its list.
  std::vector<std::int32_t> Woken(std::size_t backend) {
    std::vector<std::int32_t> woken = tables_.at(backend)->wakes();
    tables_.at(backend)->ClearWakes();
    return woken;
  }
  std::string Problem() { return BucketTableTestPeer::ConsistencyProblem(*tables_.at(0)); }

 private:
  HeapSegment<BucketTable> memory_;
  MutexLock lock_;
  QueueClock clock_;
  std::vector<std::unique_ptr<BucketTable>> tables_;
};

Budget Queued(const std::string& name, std::int64_t max_concurrent) {
  Budget budget;
  budget.name = name;
  budget.mode = Mode::kEnforce;
  budget.max_concurrent = max_concurrent;
  budget.queue_timeout_ms = 1000;
  return budget;
}

std::vector<AdmissionRequest> Needs(const Budget& budget, std::uint32_t weight = 1) {
  AdmissionRequest request;
  request.budget = &budget;
  request.weight = weight;
  return {request};
}

std::vector<AdmissionRequest> NeedsBoth(const Budget& first, const Budget& second) {
  std::vector<AdmissionRequest> requests = Needs(first);
  requests.push_back(Needs(second).front());
  return requests;
}

// Admits `requests` for `backend` as a statement that may wait (kWillWait
// the first time, kRetry after).
AdmitResult Try(BucketTable& backend, const std::vector<AdmissionRequest>& requests) {
  return backend.Admit(requests, backend.waiting() ? AttemptKind::kRetry : AttemptKind::kWillWait,
                       42);
}

Holding AdmittedHolding(BucketTable& backend, const std::vector<AdmissionRequest>& requests) {
  const AdmitResult result = Try(backend, requests);
  EXPECT_TRUE(result.admitted);
  return result.holdings.empty() ? Holding{} : result.holdings.front();
}

BucketSnapshot SnapshotOf(BucketTable& table, const std::string& budget) {
  for (const BucketSnapshot& snapshot : table.Snapshot()) {
    if (snapshot.budget == budget) return snapshot;
  }
  ADD_FAILURE() << "no instance of " << budget;
  return BucketSnapshot{};
}

using Woken = std::vector<std::int32_t>;

TEST(BucketQueue, WaitersAreAdmittedInTheOrderTheyQueuedAndNobodyOvertakes) {
  Backends b(6);
  const Budget budget = Queued("fifo", 1);
  const Holding held = AdmittedHolding(b[0], Needs(budget));
  for (std::size_t w = 1; w <= 3; ++w) {
    const AdmitResult result = Try(b[w], Needs(budget));
    EXPECT_FALSE(result.admitted);
    EXPECT_TRUE(result.may_wait);
    EXPECT_TRUE(b[w].waiting());
  }
  EXPECT_EQ(b.Problem(), "");
  // A spurious retry at the back of the queue changes nothing.
  EXPECT_FALSE(Try(b[3], Needs(budget)).admitted);

  b[0].Release(held);
  EXPECT_EQ(b.Woken(0), Woken({1}));  // only the head: one unit came free
  // A newcomer arriving now finds the unit free but must not take it: it is
  // refused behind the three queued ahead of it.
  const AdmitResult newcomer = b[4].Admit(Needs(budget), AttemptKind::kFinal, 42);
  EXPECT_FALSE(newcomer.admitted);
  EXPECT_EQ(newcomer.verdicts[0].queued_ahead, 3);
  EXPECT_EQ(newcomer.verdicts[0].level, 4);
  EXPECT_FALSE(b[4].waiting());
  // Nor may the second waiter, woken or not.
  EXPECT_FALSE(Try(b[2], Needs(budget)).admitted);
  EXPECT_EQ(Try(b[2], Needs(budget)).verdicts[0].queued_ahead, 1);

  // A newcomer that may wait queues at the back.
  EXPECT_FALSE(Try(b[5], Needs(budget)).admitted);
  std::vector<std::int32_t> admitted;
  std::int32_t next = 1;
  for (int round = 0; round < 4; ++round) {
    const Holding holding = AdmittedHolding(b[next], Needs(budget));
    EXPECT_FALSE(b[next].waiting());
    EXPECT_TRUE(b.Woken(next).empty());  // no unit left for the next one
    admitted.push_back(next);
    b[next].Release(holding);
    const Woken woken = b.Woken(next);
    if (round < 3) {
      ASSERT_EQ(woken.size(), 1u);
      next = woken[0];
    } else {
      EXPECT_TRUE(woken.empty());
    }
  }
  EXPECT_EQ(admitted, Woken({1, 2, 3, 5}));
  const BucketSnapshot snapshot = SnapshotOf(b[0], "fifo");
  EXPECT_EQ(snapshot.queued, 4u);
  EXPECT_EQ(snapshot.admitted, 5u);
  EXPECT_EQ(snapshot.blocked_max_concurrent, 1u);  // the newcomer's final attempt
  EXPECT_EQ(snapshot.active, 0);
  EXPECT_EQ(b.Problem(), "");
}

TEST(BucketQueue, AReleaseWakesOnlyTheHeadWaitersThatFit) {
  Backends b(8);
  const Budget budget = Queued("fit", 3);
  const Holding all = AdmittedHolding(b[0], Needs(budget, 3));
  EXPECT_FALSE(Try(b[1], Needs(budget, 1)).admitted);
  EXPECT_FALSE(Try(b[2], Needs(budget, 2)).admitted);
  EXPECT_FALSE(Try(b[3], Needs(budget, 1)).admitted);
  b[0].Release(all);
  EXPECT_EQ(b.Woken(0), Woken({1, 2}));  // 1 + 2 units fit; the third would not
  AdmittedHolding(b[1], Needs(budget, 1));
  AdmittedHolding(b[2], Needs(budget, 2));
  EXPECT_FALSE(Try(b[3], Needs(budget, 1)).admitted);
  EXPECT_EQ(b.Problem(), "");

  // FIFO is strict: a head that needs more than is free holds back a waiter
  // behind it that would fit, and a newcomer too.
  Backends c(8);
  const Holding one = AdmittedHolding(c[0], Needs(budget, 1));
  const Holding two = AdmittedHolding(c[1], Needs(budget, 2));
  EXPECT_FALSE(Try(c[2], Needs(budget, 2)).admitted);
  EXPECT_FALSE(Try(c[3], Needs(budget, 1)).admitted);
  c[0].Release(one);
  EXPECT_TRUE(c.Woken(0).empty());
  EXPECT_FALSE(Try(c[3], Needs(budget, 1)).admitted);
  const AdmitResult newcomer = Try(c[4], Needs(budget, 1));
  EXPECT_FALSE(newcomer.admitted);
  EXPECT_EQ(newcomer.verdicts[0].queued_ahead, 3);
  c[1].Release(two);
  EXPECT_EQ(c.Woken(1), Woken({2, 3}));  // 2 + 1 fit; the newcomer behind them does not
  EXPECT_EQ(c.Problem(), "");
}

TEST(BucketQueue, EveryWayOutOfTheQueuePassesTheTurnOn) {
  Backends b(6);
  const Budget budget = Queued("leave", 1);
  Holding held = AdmittedHolding(b[0], Needs(budget));
  for (std::size_t w = 1; w <= 4; ++w) EXPECT_FALSE(Try(b[w], Needs(budget)).admitted);

  // One from the middle leaves (a cancel): nothing comes free.
  b[2].LeaveQueue();
  EXPECT_FALSE(b[2].waiting());
  EXPECT_TRUE(b.Woken(2).empty());
  EXPECT_EQ(b.Problem(), "");

  // The head is woken, then leaves instead of taking the unit (a timeout):
  // the turn goes to the next one.
  b[0].Release(held);
  EXPECT_EQ(b.Woken(0), Woken({1}));
  b[1].LeaveQueue();
  EXPECT_EQ(b.Woken(1), Woken({3}));
  b[1].LeaveQueue();  // again: nothing
  EXPECT_TRUE(b.Woken(1).empty());

  // The one woken instead is admitted, even on its final attempt.
  held = b[3].Admit(Needs(budget), AttemptKind::kFinal, 42).holdings.at(0);
  EXPECT_FALSE(b[3].waiting());
  // The last waiter's final attempt is refused and leaves the queue.
  const AdmitResult final_attempt = b[4].Admit(Needs(budget), AttemptKind::kFinal, 42);
  EXPECT_FALSE(final_attempt.admitted);
  EXPECT_FALSE(b[4].waiting());
  EXPECT_EQ(b.Problem(), "");
  b[3].Release(held);
  EXPECT_TRUE(b.Woken(3).empty());  // nobody left waiting
  EXPECT_TRUE(AdmittedHolding(b[5], Needs(budget)).weight == 1);
  EXPECT_EQ(b.Problem(), "");
}

TEST(BucketQueue, ADepartureLetsInTheWaitersItHeldBack) {
  Backends b(4);
  const Budget budget = Queued("heavy-head", 2);
  const Holding one = AdmittedHolding(b[0], Needs(budget, 1));
  EXPECT_FALSE(Try(b[1], Needs(budget, 2)).admitted);  // needs both units
  EXPECT_FALSE(Try(b[2], Needs(budget, 1)).admitted);  // would fit, but behind it
  const AdmitResult timed_out = b[1].Admit(Needs(budget, 2), AttemptKind::kFinal, 42);
  EXPECT_FALSE(timed_out.admitted);
  EXPECT_EQ(b.Woken(1), Woken({2}));
  AdmittedHolding(b[2], Needs(budget, 1));
  b[0].Release(one);
  EXPECT_EQ(b.Problem(), "");
}

TEST(BucketQueue, AStatementOfSeveralBudgetsWaitsInOneQueueAtATime) {
  Backends b(5);
  const Budget first = Queued("first", 1);
  const Budget second = Queued("second", 1);
  const Holding first_held = AdmittedHolding(b[0], Needs(first));
  const Holding second_held = AdmittedHolding(b[1], Needs(second));

  // Units queued ahead of a newcomer to each budget.
  auto ahead = [&](const Budget& budget) {
    return b[4].Evaluate(Needs(budget)).at(0).queued_ahead;
  };

  // Refused by both: it waits in the first one's queue only.
  const AdmitResult both = Try(b[2], NeedsBoth(first, second));
  EXPECT_FALSE(both.admitted);
  EXPECT_TRUE(both.may_wait);
  EXPECT_EQ(ahead(first), 1);
  EXPECT_EQ(ahead(second), 0);
  EXPECT_FALSE(Try(b[3], Needs(first)).admitted);  // queued behind it

  // "first" frees up: it is woken, fits there, but "second" still refuses:
  // it moves to the back of that queue, and its place in "first" goes to
  // the one behind it.
  b[0].Release(first_held);
  EXPECT_EQ(b.Woken(0), Woken({2}));
  // Its retry, and the request whose queue it was in.
  auto retry = [&](std::int32_t waited_in) {
    const AdmitResult result = Try(b[2], NeedsBoth(first, second));
    EXPECT_EQ(result.waited_request, waited_in);
    return result;
  };
  const AdmitResult moved = retry(0);
  EXPECT_FALSE(moved.admitted);
  EXPECT_EQ(moved.verdicts[0].action, Action::kPass);
  EXPECT_EQ(moved.verdicts[1].action, Action::kRefuse);
  EXPECT_EQ(b.Woken(2), Woken({3}));
  const Holding third_held = AdmittedHolding(b[3], Needs(first));
  EXPECT_EQ(ahead(first), 0);
  EXPECT_EQ(ahead(second), 1);

  // "second" frees up, but "first" is taken again: back to "first".
  b[1].Release(second_held);
  EXPECT_EQ(b.Woken(1), Woken({2}));
  EXPECT_FALSE(retry(1).admitted);
  EXPECT_EQ(ahead(first), 1);
  EXPECT_EQ(ahead(second), 0);
  b[3].Release(third_held);
  EXPECT_EQ(b.Woken(3), Woken({2}));
  EXPECT_TRUE(retry(0).admitted);
  EXPECT_FALSE(b[2].waiting());
  EXPECT_EQ(b.Problem(), "");
}

TEST(BucketQueue, ABackendHoldingWhatItWaitsForIsRefusedAtOnce) {
  Backends b(3);
  const Budget one = Queued("only-one", 1);
  AdmittedHolding(b[0], Needs(one));  // its open cursor
  const AdmitResult itself = Try(b[0], Needs(one));
  EXPECT_FALSE(itself.admitted);
  EXPECT_FALSE(itself.may_wait);
  EXPECT_EQ(itself.verdicts[0].held_by_caller, 1);
  EXPECT_FALSE(b[0].waiting());
  const BucketSnapshot snapshot = SnapshotOf(b[0], "only-one");
  EXPECT_EQ(snapshot.queued, 0u);
  EXPECT_EQ(snapshot.blocked_max_concurrent, 1u);
  // Another backend waits as usual.
  EXPECT_TRUE(Try(b[1], Needs(one)).may_wait);

  // With room for both, holding one unit itself does not stop it waiting.
  const Budget two = Queued("two", 2);
  AdmittedHolding(b[2], Needs(two));
  AdmittedHolding(b[0], Needs(two));
  const AdmitResult waits = Try(b[0], Needs(two));
  EXPECT_TRUE(waits.may_wait);
  EXPECT_EQ(waits.verdicts[0].held_by_caller, 0);
  EXPECT_TRUE(b[0].waiting());
  EXPECT_EQ(b.Problem(), "");
}

TEST(BucketQueue, TheDeadlockCheckSeesTheHoldersAndWhetherTheWaitCanEnd) {
  Backends b(4);
  const Budget budget = Queued("stuck", 2);
  EXPECT_TRUE(b[0].HoldersOfQueue().empty());  // not waiting
  EXPECT_FALSE(b[0].WaitCanNeverEnd(nullptr, 0));
  AdmittedHolding(b[1], Needs(budget));
  AdmittedHolding(b[2], Needs(budget));
  EXPECT_FALSE(Try(b[0], Needs(budget)).admitted);
  std::vector<std::int32_t> holders;
  for (const QueueHolder& holder : b[0].HoldersOfQueue()) {
    EXPECT_EQ(holder.units, 1u);
    holders.push_back(holder.backend);
  }
  EXPECT_EQ(holders, Woken({1, 2}));
  // One stuck holder: the other one's unit may still come free.
  const std::int32_t one[] = {1};
  EXPECT_FALSE(b[0].WaitCanNeverEnd(one, 1));
  const std::int32_t both[] = {1, 2};
  EXPECT_TRUE(b[0].WaitCanNeverEnd(both, 2));
  const std::int32_t nonsense[] = {-1, 0, 99};
  EXPECT_FALSE(b[0].WaitCanNeverEnd(nonsense, 3));

  // What it holds itself counts too: it holds one unit, a stuck holder the
  // other.
  Backends c(3);
  AdmittedHolding(c[0], Needs(budget));
  AdmittedHolding(c[1], Needs(budget));
  EXPECT_TRUE(Try(c[0], Needs(budget)).may_wait);
  EXPECT_EQ(c[0].HoldersOfQueue().size(), 1u);
  EXPECT_TRUE(c[0].WaitCanNeverEnd(one, 1));
}

TEST(BucketQueue, AnInstanceWithWaitersIsNeverEvicted) {
  Backends b(3, /*capacity=*/2);
  const Budget queued = Queued("queued", 1);
  const Holding held = AdmittedHolding(b[0], Needs(queued));
  EXPECT_FALSE(Try(b[1], Needs(queued)).admitted);
  b[0].Release(held);  // idle now, but its waiter has not come back yet
  EXPECT_EQ(b.Woken(0), Woken({1}));
  const Budget other = Queued("other", 5);
  const Budget third = Queued("third", 5);
  b[2].Release(AdmittedHolding(b[2], Needs(other)));
  b[2].Release(AdmittedHolding(b[2], Needs(third)));  // evicts "other", not "queued"
  EXPECT_EQ(SnapshotOf(b[0], "queued").queued, 1u);
  EXPECT_TRUE(Try(b[1], Needs(queued)).admitted);
  EXPECT_EQ(b.Problem(), "");
}

TEST(BucketQueue, ExplainJudgesANewcomerBehindTheQueue) {
  Backends b(3);
  const Budget budget = Queued("explained", 2);
  const Holding held = AdmittedHolding(b[0], Needs(budget));
  AdmittedHolding(b[1], Needs(budget));
  EXPECT_FALSE(Try(b[2], Needs(budget)).admitted);
  b[0].Release(held);  // a unit is free, the waiter not yet back
  const BudgetVerdict verdict = b[0].Evaluate(Needs(budget)).at(0);
  EXPECT_EQ(verdict.action, Action::kRefuse);
  EXPECT_EQ(verdict.queued_ahead, 1);
}

// A new backend number starts clean: a record its previous owner left
// (which cannot happen while owners leave their queues on exit) is taken
// out of its queue.
TEST(BucketQueue, AttachingClearsWhatAPreviousOwnerOfTheNumberLeft) {
  HeapSegment<BucketTable> memory(8, 2);
  MutexLock lock;
  QueueClock clock;
  const Budget budget = Queued("reused", 1);
  BucketTable holder(memory.span(), lock, clock, 0);
  AdmittedHolding(holder, Needs(budget));
  {
    BucketTable departed(memory.span(), lock, clock, 1);
    EXPECT_FALSE(Try(departed, Needs(budget)).admitted);
  }
  BucketTable successor(memory.span(), lock, clock, 1);
  EXPECT_FALSE(successor.waiting());
  EXPECT_EQ(BucketTableTestPeer::ConsistencyProblem(successor), "");
  EXPECT_THROW(BucketTable(memory.span(), lock, clock, 2), std::invalid_argument);
}

// Backends as threads, each with a latch the others set through the wake
// lists: every statement is admitted (no wakeup is lost, nobody is stuck
// behind a waiter that left), the limit always holds, and nothing is left
// queued or held.
class Latch {
 public:
  void Set() {
    std::lock_guard<std::mutex> guard(mutex_);
    set_ = true;
    cv_.notify_one();
  }
  // False when nobody set it within the time.
  bool WaitAndReset(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> guard(mutex_);
    const bool woken = cv_.wait_for(guard, timeout, [this] { return set_; });
    set_ = false;
    return woken;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool set_ = false;
};

TEST(BucketQueue, ThreadsQueueingTogetherAreAllAdmittedAndNothingLeaks) {
  constexpr std::uint32_t kThreads = 6;
  constexpr int kStatements = 300;
  Backends b(kThreads);
  const Budget budget = Queued("threads", 2);
  std::vector<Latch> latches(kThreads);
  std::atomic<int> running{0};
  std::atomic<bool> over_limit{false};
  std::atomic<int> lost_wakeups{0};

  auto wake = [&](BucketTable& table) {
    for (const std::int32_t woken : table.wakes()) latches.at(woken).Set();
    table.ClearWakes();
  };
  auto backend = [&](std::uint32_t number) {
    BucketTable& table = b[number];
    std::mt19937 random(number);
    for (int statement = 0; statement < kStatements; ++statement) {
      const std::uint32_t weight = 1 + random() % 2;
      AdmitResult result = table.Admit(Needs(budget, weight), AttemptKind::kWillWait, 42);
      wake(table);
      while (!result.admitted) {
        ASSERT_TRUE(result.may_wait);
        if (random() % 16 == 0) {  // a cancel: leave, and try again later
          table.LeaveQueue();
          wake(table);
        } else if (!latches[number].WaitAndReset(std::chrono::seconds(5))) {
          ++lost_wakeups;  // a release that should have woken it did not
          table.LeaveQueue();
          wake(table);
          return;
        }
        result = table.Admit(Needs(budget, weight),
                             table.waiting() ? AttemptKind::kRetry : AttemptKind::kWillWait, 42);
        wake(table);
      }
      if ((running += static_cast<int>(weight)) > 2) over_limit = true;
      std::this_thread::yield();
      running -= static_cast<int>(weight);
      table.Release(result.holdings.at(0));
      wake(table);
    }
  };
  std::vector<std::thread> threads;
  for (std::uint32_t number = 0; number < kThreads; ++number) threads.emplace_back(backend, number);
  for (std::thread& thread : threads) thread.join();

  EXPECT_FALSE(over_limit);
  EXPECT_EQ(lost_wakeups, 0);
  const BucketSnapshot snapshot = SnapshotOf(b[0], "threads");
  EXPECT_EQ(snapshot.active, 0);
  EXPECT_EQ(snapshot.admitted, kThreads * kStatements);
  for (std::uint32_t number = 0; number < kThreads; ++number) EXPECT_FALSE(b[number].waiting());
  EXPECT_EQ(b.Problem(), "");
}

TEST(BucketQueue, APlanWhoseWorkersCanBeCutDoesNotTakeUnitsQueuedFor) {
  Backends backends(3);
  const Budget budget = Queued("fifo", 3);
  const AdmitResult running = Try(backends[0], Needs(budget, 2));
  ASSERT_TRUE(running.admitted);
  // Backend 1 waits for the 2 units it needs; 1 is free.
  ASSERT_FALSE(Try(backends[1], Needs(budget, 2)).admitted);
  ASSERT_TRUE(backends[1].waiting());
  // A newcomer whose workers can be cut would fit with its leader alone, but
  // the free unit is queued for: it queues behind instead of overtaking.
  std::vector<AdmissionRequest> cuttable = Needs(budget, 3);
  cuttable[0].min_weight = 1;
  EXPECT_FALSE(Try(backends[2], cuttable).admitted);
  EXPECT_TRUE(backends[2].waiting());
  // The release lets backend 1 in whole; then backend 2 gets what is left.
  EXPECT_TRUE(backends[0].Release(running.holdings[0]));
  const AdmitResult first = Try(backends[1], Needs(budget, 2));
  ASSERT_TRUE(first.admitted);
  const AdmitResult second = Try(backends[2], cuttable);
  ASSERT_TRUE(second.admitted);
  EXPECT_EQ(second.holdings[0].weight, 1u);
  EXPECT_EQ(backends.Problem(), "");
}

}  // namespace
}  // namespace tc
