// BucketTable::Evaluate (explain()): the verdict Admit would give, and no
// change to the table at all.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "traffic_control/bucket_table.hpp"

namespace tc {
namespace {

using Action = BudgetVerdict::Action;

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
  void Unlock() override { mutex_.unlock(); }

  int exclusive_locks = 0;
  int shared_locks = 0;

 private:
  std::mutex mutex_;
};

// Time stands still unless a test moves it, so Evaluate and the Admit right
// after it see the same instant.
class StillClock final : public Clock {
 public:
  std::int64_t NowMicros() override { return now_us; }
  std::int64_t now_us = 1'000'000;
};

class EvaluateTest : public ::testing::Test {
 protected:
  EvaluateTest() : memory_(BucketTable::RequiredBytes(kCapacity) / 8 + 1, 0) {
    BucketTable::Initialize(Span(), kCapacity);
    table_ = std::make_unique<BucketTable>(Span(), lock_, clock_);
  }

  MemorySpan Span() { return MemorySpan{memory_.data(), memory_.size() * 8}; }

  static constexpr std::uint32_t kCapacity = 64;  // more than the random test's instances
  std::vector<std::uint64_t> memory_;
  CountingLock lock_;
  StillClock clock_;
  std::unique_ptr<BucketTable> table_;
};

Budget Concurrency(const std::string& name, Mode mode, std::int64_t max_concurrent) {
  Budget budget;
  budget.name = name;
  budget.mode = mode;
  budget.max_concurrent = max_concurrent;
  return budget;
}

AdmissionRequest Request(const Budget& budget, std::optional<double> predicted = std::nullopt,
                         std::uint32_t weight = 1) {
  AdmissionRequest request;
  request.budget = &budget;
  request.weight = weight;
  request.predicted_seconds = predicted;
  request.server_cores = 2;
  return request;
}

AdmissionRequest Instance(const Budget& budget, std::string_view instance) {
  AdmissionRequest request = Request(budget);
  request.has_instance = true;
  request.instance = instance;
  return request;
}

void ExpectSameVerdict(const BudgetVerdict& evaluated, const BudgetVerdict& admitted,
                       const std::string& where) {
  EXPECT_EQ(evaluated.action, admitted.action) << where;
  EXPECT_EQ(evaluated.limit, admitted.limit) << where;
  EXPECT_DOUBLE_EQ(evaluated.limit_value, admitted.limit_value) << where;
  EXPECT_DOUBLE_EQ(evaluated.level, admitted.level) << where;
  if (std::isfinite(admitted.level_percent)) {
    EXPECT_DOUBLE_EQ(evaluated.level_percent, admitted.level_percent) << where;
  } else {
    EXPECT_EQ(evaluated.level_percent, admitted.level_percent) << where;
  }
  EXPECT_EQ(evaluated.retry_after_ms, admitted.retry_after_ms) << where;
}

// Everything a snapshot shows, to compare before and after.
std::string Describe(const std::vector<BucketSnapshot>& snapshots) {
  std::string text;
  for (const BucketSnapshot& s : snapshots) {
    text += s.budget + "/" + (s.has_instance ? s.instance : "-") +
            " active=" + std::to_string(s.active) + " admitted=" + std::to_string(s.admitted) +
            " warned=" + std::to_string(s.warned) +
            " blocked=" + std::to_string(s.blocked_max_concurrent) + "," +
            std::to_string(s.blocked_per_query_limit) + "," +
            std::to_string(s.blocked_server_share) + " queued=" + std::to_string(s.queued) +
            " last_blocked=" + std::to_string(s.last_blocked_at_us) +
            " debt=" + std::to_string(s.debt_seconds) + "\n";
  }
  return text;
}

TEST_F(EvaluateTest, RefusesLikeAdmitWithoutTakingASlotOrCounting) {
  const Budget shed = Concurrency("shed", Mode::kEnforce, 0);
  AdmitResult admitted = table_->Admit({Request(shed)}, AttemptKind::kFinal, 7);
  ASSERT_FALSE(admitted.admitted);
  const std::string before = Describe(table_->Snapshot());

  for (int i = 0; i < 3; ++i) {
    const std::vector<BudgetVerdict> verdicts = table_->Evaluate({Request(shed)});
    ASSERT_EQ(verdicts.size(), 1u);
    ExpectSameVerdict(verdicts[0], admitted.verdicts[0], "shed");
    EXPECT_EQ(verdicts[0].action, Action::kRefuse);
    EXPECT_EQ(verdicts[0].limit, Limit::kMaxConcurrent);
  }
  EXPECT_EQ(Describe(table_->Snapshot()), before);
}

TEST_F(EvaluateTest, SeesTheRunningStatements) {
  const Budget one = Concurrency("one", Mode::kEnforce, 1);
  EXPECT_EQ(table_->Evaluate({Request(one)})[0].action, Action::kPass);
  const AdmitResult first = table_->Admit({Request(one)}, AttemptKind::kFinal, 7);
  ASSERT_TRUE(first.admitted);
  const std::vector<BudgetVerdict> busy = table_->Evaluate({Request(one)});
  EXPECT_EQ(busy[0].action, Action::kRefuse);
  EXPECT_DOUBLE_EQ(busy[0].level, 2);
  table_->Release(first.holdings[0]);
  EXPECT_EQ(table_->Evaluate({Request(one)})[0].action, Action::kPass);
}

TEST_F(EvaluateTest, CreatesNoInstanceAndTakesOnlyTheSharedLock) {
  const Budget tenant = Concurrency("tenant", Mode::kEnforce, 0);
  const int exclusive_before = lock_.exclusive_locks;
  const std::vector<BudgetVerdict> verdicts =
      table_->Evaluate({Instance(tenant, "acme"), Instance(tenant, "globex")});
  EXPECT_EQ(verdicts[0].action, Action::kRefuse);
  EXPECT_EQ(verdicts[1].action, Action::kRefuse);
  EXPECT_EQ(lock_.exclusive_locks, exclusive_before);
  EXPECT_TRUE(table_->Snapshot().empty());
}

TEST_F(EvaluateTest, TheSameNewInstanceTwiceCountsBothAsAdmitWould) {
  const Budget two = Concurrency("two", Mode::kEnforce, 1);
  const std::vector<AdmissionRequest> requests = {Instance(two, "a"), Instance(two, "a")};
  const std::vector<BudgetVerdict> evaluated = table_->Evaluate(requests);
  const AdmitResult admitted = table_->Admit(requests, AttemptKind::kFinal, 7);
  ASSERT_EQ(evaluated.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    ExpectSameVerdict(evaluated[i], admitted.verdicts[i], "request " + std::to_string(i));
  }
  EXPECT_EQ(evaluated[1].action, Action::kRefuse);
}

TEST_F(EvaluateTest, ServerShareDebtIsReadDrainedButNotWritten) {
  Budget share;
  share.name = "share";
  share.mode = Mode::kEnforce;
  share.server_share = 50;  // drains 1 CPU-s per second with 2 cores
  share.burst_limit = 1;    // a bucket of 2 CPU-s
  ASSERT_TRUE(table_->Admit({Request(share, 1.5)}, AttemptKind::kFinal, 7).admitted);
  const std::vector<BudgetVerdict> full = table_->Evaluate({Request(share, 1.0)});
  EXPECT_EQ(full[0].action, Action::kRefuse);
  EXPECT_EQ(full[0].limit, Limit::kServerShare);
  EXPECT_DOUBLE_EQ(full[0].level, 2.5);
  EXPECT_EQ(full[0].retry_after_ms, 500);
  clock_.now_us += 600'000;  // 0.6 CPU-s drained
  const std::vector<BudgetVerdict> later = table_->Evaluate({Request(share, 1.0)});
  EXPECT_EQ(later[0].action, Action::kPass);
  EXPECT_NEAR(later[0].level, 1.9, 1e-9);
  const std::vector<BucketSnapshot> snapshots = table_->Snapshot();
  ASSERT_EQ(snapshots.size(), 1u);
  EXPECT_NEAR(snapshots[0].debt_seconds, 0.9, 1e-9);
  EXPECT_EQ(snapshots[0].admitted, 1u);
}

// Random budgets, requests and releases: before every Admit, Evaluate of the
// same requests at the same instant gives the verdicts Admit then gives, and
// leaves every snapshot field as it was.
TEST_F(EvaluateTest, RandomSequencesEvaluateExactlyAsAdmitDecides) {
  std::vector<Budget> budgets;
  budgets.push_back(Concurrency("c2", Mode::kEnforce, 2));
  budgets.push_back(Concurrency("c1w", Mode::kWarn, 1));
  Budget threshold = Concurrency("c3t", Mode::kEnforce, 3);
  threshold.warning_threshold = 50;
  budgets.push_back(threshold);
  Budget per_query;
  per_query.name = "pq";
  per_query.mode = Mode::kEnforce;
  per_query.per_query_limit = 0.5;  // 1 CPU-s with 2 cores
  per_query.warning_threshold = 60;
  budgets.push_back(per_query);
  Budget share;
  share.name = "share";
  share.mode = Mode::kEnforce;
  share.server_share = 10;
  share.burst_limit = 2;
  share.max_concurrent = 4;
  share.queue_timeout_ms = 100;
  budgets.push_back(share);
  Budget share_warn = share;
  share_warn.name = "share_warn";
  share_warn.mode = Mode::kWarn;
  budgets.push_back(share_warn);

  std::mt19937 random(20240611);
  std::vector<Holding> held;
  const char* instances[] = {"a", "b", "c"};
  for (int step = 0; step < 3000; ++step) {
    const int action = static_cast<int>(random() % 10);
    if (action < 3 && !held.empty()) {
      const std::size_t index = random() % held.size();
      std::optional<double> actual;
      if (random() % 2 == 0) actual = static_cast<double>(random() % 100) / 50.0;
      table_->Release(held[index], actual);
      held.erase(held.begin() + static_cast<std::ptrdiff_t>(index));
      continue;
    }
    if (action == 3) {
      clock_.now_us += static_cast<std::int64_t>(random() % 2'000'000);
      continue;
    }
    std::vector<AdmissionRequest> requests;
    const std::size_t count = 1 + random() % 3;
    std::optional<double> predicted;
    if (random() % 4 != 0) predicted = static_cast<double>(random() % 200) / 100.0;
    const auto weight = static_cast<std::uint32_t>(1 + random() % 2);
    for (std::size_t i = 0; i < count; ++i) {
      AdmissionRequest request = Request(budgets[random() % budgets.size()], predicted, weight);
      if (random() % 3 == 0) {
        request.has_instance = true;
        request.instance = instances[random() % 3];
      }
      requests.push_back(request);
    }
    const AttemptKind kind = random() % 2 == 0 ? AttemptKind::kFinal : AttemptKind::kWillWait;

    const std::string before = Describe(table_->Snapshot());
    const std::vector<BudgetVerdict> evaluated = table_->Evaluate(requests);
    ASSERT_EQ(Describe(table_->Snapshot()), before) << "step " << step;
    const AdmitResult admitted = table_->Admit(requests, kind, 1000 + step);
    ASSERT_EQ(evaluated.size(), admitted.verdicts.size());
    for (std::size_t i = 0; i < evaluated.size(); ++i) {
      ExpectSameVerdict(evaluated[i], admitted.verdicts[i],
                        "step " + std::to_string(step) + " request " + std::to_string(i));
    }
    if (::testing::Test::HasFailure()) return;
    if (admitted.admitted)
      held.insert(held.end(), admitted.holdings.begin(), admitted.holdings.end());
  }
}

TEST_F(EvaluateTest, RejectsARequestWithoutBudget) {
  AdmissionRequest request;
  EXPECT_THROW(table_->Evaluate({request}), std::invalid_argument);
  EXPECT_TRUE(table_->Evaluate({}).empty());
}

}  // namespace
}  // namespace tc
