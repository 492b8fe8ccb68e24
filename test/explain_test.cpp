// AdmissionController::Explain (explain()) and the per-rule `matched`
// counting of Admit, with the shared tables on heap memory.
#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_doubles.hpp"
#include "traffic_control/admission.hpp"
#include "traffic_control/config.hpp"
#include "traffic_control/rule_counters.hpp"

namespace tc {
namespace {

// The role and database OIDs of the fixture's statements.
constexpr std::uint32_t kUserId = 16384;
constexpr std::uint32_t kDatabaseId = 5;

class FakeClock final : public Clock {
 public:
  std::int64_t NowMicros() override { return now_us; }
  std::int64_t now_us = 1'000'000;
};

class ExplainTest : public ::testing::Test {
 protected:
  ExplainTest() {
    bucket_memory_.assign(BucketTable::RequiredBytes(64) / 8 + 1, 0);
    pattern_memory_.assign(PatternTable::RequiredBytes(64) / 8 + 1, 0);
    counter_memory_.assign(RuleCounterTable::RequiredBytes(64) / 8 + 1, 0);
    const MemorySpan buckets{bucket_memory_.data(), bucket_memory_.size() * 8};
    const MemorySpan patterns{pattern_memory_.data(), pattern_memory_.size() * 8};
    const MemorySpan counters{counter_memory_.data(), counter_memory_.size() * 8};
    BucketTable::Initialize(buckets, 64);
    PatternTable::Initialize(patterns, 64);
    RuleCounterTable::Initialize(counters, 64);
    table_ = std::make_unique<BucketTable>(buckets, bucket_lock_, clock_);
    patterns_ = std::make_unique<PatternTable>(patterns, pattern_lock_, clock_);
    counters_ = std::make_unique<RuleCounterTable>(counters);
  }

  void Configure(const std::string& budgets_json, const std::string& rules_json) {
    std::vector<Budget> budgets;
    std::vector<Rule> rules;
    std::string error;
    ASSERT_TRUE(ParseBudgets(budgets_json, &budgets, &error)) << error;
    ASSERT_TRUE(ParseRules(rules_json, &rules, &error)) << error;
    std::vector<RuleProblem> problems;
    RuleSet rule_set(std::move(budgets), std::move(rules), &problems);
    controller_.SetRuleSet(std::move(rule_set), problems);
    controller_.AttachTable(table_.get());
    controller_.AttachPatterns(patterns_.get());
    controller_.AttachRuleCounters(counters_.get());
  }

  StatementInfo Statement(std::string_view text) {
    StatementInfo statement;
    statement.text = text;
    statement.username = "app";
    statement.application_name = "web";
    statement.database = "shop";
    statement.command = "select";
    statement.query_id = 42;
    statement.user_id = kUserId;
    statement.database_id = kDatabaseId;
    statement.plan_cost = 100;
    statement.server_cores = 4;
    statement.message_prefix = "[PGINSIGHTS] Traffic Control:";
    return statement;
  }

  std::uint64_t Matched(const std::string& rule, const std::string& budget) {
    // Counts are added to the shared table in batches; a reader of
    // rule_status flushes its own backend's first, as here.
    controller_.FlushRuleCounts();
    const std::int32_t slot = counters_->Find(rule, budget);
    return slot == RuleCounterTable::kNoSlot ? 0 : counters_->Count(slot);
  }

  // Everything the table shows, to compare before and after.
  std::string TableState() {
    std::string text;
    for (const BucketSnapshot& s : table_->Snapshot()) {
      text += s.budget + "/" + s.instance + " " + std::to_string(s.active) + " " +
              std::to_string(s.admitted) + " " + std::to_string(s.warned) + " " +
              std::to_string(s.blocked_max_concurrent + s.blocked_per_query_limit +
                             s.blocked_server_share) +
              " " + std::to_string(s.queued) + " " + std::to_string(s.debt_seconds) + "\n";
    }
    return text;
  }

  MutexLock bucket_lock_, pattern_lock_;
  FakeClock clock_;
  std::vector<std::uint64_t> bucket_memory_, pattern_memory_, counter_memory_;
  std::unique_ptr<BucketTable> table_;
  std::unique_ptr<PatternTable> patterns_;
  std::unique_ptr<RuleCounterTable> counters_;
  AdmissionController controller_;
};

TEST_F(ExplainTest, NoBudgetAppliesButTheMetadataIsShown) {
  Configure(R"([{"name":"b","mode":"enforce","max_concurrent":0}])",
            R"([{"budget":"b","match":{"route":"export"}}])");
  const Explanation explanation =
      controller_.Explain(Statement("SELECT 1 /*route='checkout',username='root'*/"));
  EXPECT_TRUE(explanation.budgets.empty());
  EXPECT_FALSE(explanation.predicted_seconds.has_value());
  ASSERT_NE(explanation.metadata.Find("route"), nullptr);
  EXPECT_EQ(*explanation.metadata.Find("route"), "checkout");
  EXPECT_EQ(*explanation.metadata.Find("username"), "app");  // a tag cannot set a built-in
  EXPECT_EQ(*explanation.metadata.Find("query_id"), "42");
  EXPECT_EQ(*explanation.metadata.Find("command"), "select");
  EXPECT_TRUE(table_->Snapshot().empty());
}

TEST_F(ExplainTest, ShowsTheRefusalAdmitWouldGiveAndChangesNothing) {
  Configure(R"([{"name":"shed","mode":"enforce","max_concurrent":0}])",
            R"([{"name":"export","budget":"shed","match":{"route":"export"}}])");
  const auto statement = Statement("SELECT 1 /*route='export'*/");
  for (int i = 0; i < 2; ++i) {
    const Explanation explanation = controller_.Explain(statement);
    ASSERT_EQ(explanation.budgets.size(), 1u);
    const BudgetExplanation& budget = explanation.budgets[0];
    EXPECT_EQ(budget.budget->name, "shed");
    EXPECT_EQ(budget.rule->name, "export");
    EXPECT_FALSE(budget.has_instance);
    EXPECT_EQ(budget.verdict.action, BudgetVerdict::Action::kRefuse);
    EXPECT_EQ(budget.verdict.limit, Limit::kMaxConcurrent);
  }
  // Nothing was created, taken or counted.
  EXPECT_TRUE(table_->Snapshot().empty());
  EXPECT_EQ(Matched("export", "shed"), 0u);
  EXPECT_EQ(controller_.held_count(), 0u);

  const Explanation explanation = controller_.Explain(statement);
  const Decision decision = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(decision.outcome, Decision::Outcome::kRefused);
  EXPECT_EQ(explanation.budgets[0].report.message, decision.refusal.message);
  EXPECT_EQ(explanation.budgets[0].report.detail, decision.refusal.detail);
  EXPECT_EQ(explanation.budgets[0].report.hint, decision.refusal.hint);
}

TEST_F(ExplainTest, ShowsWarningsAndPassesPerBudgetInAdmitOrder) {
  Configure(
      R"([{"name":"calm","mode":"enforce","max_concurrent":10},{"name":"noisy","mode":"warn","max_concurrent":0},{"name":"tenant","mode":"enforce","max_concurrent":1}])",
      R"([{"name":"n","budget":"noisy","match":{"app":"web"}},{"name":"t","budget":"tenant","match":{"app":"web"},"each":"tenant"},{"name":"c","budget":"calm","match":{"app":"web"}}])");
  const auto statement = Statement("SELECT 1 /*app='web',tenant='acme'*/");
  const Explanation explanation = controller_.Explain(statement);
  ASSERT_EQ(explanation.budgets.size(), 3u);
  EXPECT_EQ(explanation.budgets[0].budget->name, "calm");
  EXPECT_EQ(explanation.budgets[0].verdict.action, BudgetVerdict::Action::kPass);
  EXPECT_TRUE(explanation.budgets[0].report.detail.empty());
  EXPECT_EQ(explanation.budgets[1].budget->name, "noisy");
  EXPECT_EQ(explanation.budgets[1].verdict.action, BudgetVerdict::Action::kWarn);
  EXPECT_EQ(explanation.budgets[2].budget->name, "tenant");
  EXPECT_TRUE(explanation.budgets[2].has_instance);
  EXPECT_EQ(explanation.budgets[2].instance, "acme");
  EXPECT_EQ(explanation.budgets[2].rule->name, "t");
  EXPECT_EQ(explanation.budgets[2].verdict.action, BudgetVerdict::Action::kPass);

  const Decision decision = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(decision.outcome, Decision::Outcome::kAdmitted);
  ASSERT_EQ(decision.notices.size(), 1u);
  EXPECT_EQ(explanation.budgets[1].report.message, decision.notices[0].message);
  EXPECT_EQ(explanation.budgets[1].report.detail, decision.notices[0].detail);

  // The tenant's one slot is now held: explain sees it.
  const Explanation busy = controller_.Explain(statement);
  EXPECT_EQ(busy.budgets[2].verdict.action, BudgetVerdict::Action::kRefuse);
  EXPECT_NE(busy.budgets[2].report.detail.find("for tenant = \"acme\""), std::string::npos);
  controller_.ReleaseAll();
}

TEST_F(ExplainTest, PredictsOnlyWhereACostLimitApplies) {
  Configure(
      R"([{"name":"cheap","mode":"enforce","per_query_limit":0.001},{"name":"count","mode":"enforce","max_concurrent":5}])",
      R"([{"name":"cheap","budget":"cheap","match":{"route":"cost"}},{"name":"count","budget":"count","match":{"route":"count"}}])");
  patterns_->Record(PatternKey{kUserId, kDatabaseId, 42}, 100,
                    0.5);  // k = 0.005 CPU-s per unit of cost
  const Explanation cost = controller_.Explain(Statement("SELECT 1 /*route='cost'*/"));
  ASSERT_TRUE(cost.predicted_seconds.has_value());
  EXPECT_DOUBLE_EQ(*cost.predicted_seconds, 0.5);
  ASSERT_EQ(cost.budgets.size(), 1u);
  EXPECT_EQ(cost.budgets[0].verdict.action, BudgetVerdict::Action::kRefuse);
  EXPECT_EQ(cost.budgets[0].verdict.limit, Limit::kPerQueryLimit);
  EXPECT_NE(cost.budgets[0].report.detail.find("predicted cost 0.5 CPU-s"), std::string::npos);

  const Explanation count = controller_.Explain(Statement("SELECT 1 /*route='count'*/"));
  EXPECT_FALSE(count.predicted_seconds.has_value());  // as Admit: no cost limit, no prediction
}

TEST_F(ExplainTest, WithoutATableItThrows) {
  AdmissionController detached;
  EXPECT_THROW(detached.Explain(Statement("SELECT 1")), std::logic_error);
}

TEST_F(ExplainTest, EveryFinalDecisionCountsTheRuleOfEachBudget) {
  Configure(
      R"([{"name":"open","mode":"enforce","max_concurrent":10},{"name":"shed","mode":"enforce","max_concurrent":0}])",
      R"([{"name":"first","budget":"open","match":{"app":"web"}},{"name":"second","budget":"open","match":{"route":"x"}},{"name":"shedding","budget":"shed","match":{"route":"shed"}}])");
  // Both "first" and "second" match "open": the first in config order counts.
  EXPECT_EQ(
      controller_.Admit(Statement("SELECT 1 /*app='web',route='x'*/"), AttemptKind::kFinal).outcome,
      Decision::Outcome::kAdmitted);
  EXPECT_EQ(controller_.Admit(Statement("SELECT 1 /*route='x'*/"), AttemptKind::kFinal).outcome,
            Decision::Outcome::kAdmitted);
  // A refused statement matched too; so did the open budget it also matched.
  EXPECT_EQ(controller_.Admit(Statement("SELECT 1 /*app='web',route='shed'*/"), AttemptKind::kFinal)
                .outcome,
            Decision::Outcome::kRefused);
  EXPECT_EQ(Matched("first", "open"), 2u);
  EXPECT_EQ(Matched("second", "open"), 1u);
  EXPECT_EQ(Matched("shedding", "shed"), 1u);
  controller_.ReleaseAll();
}

TEST_F(ExplainTest, WaitingIsNotCountedUntilTheFinalDecision) {
  Configure(R"([{"name":"q","mode":"enforce","max_concurrent":1,"queue_timeout_ms":100}])",
            R"([{"name":"queue","budget":"q","match":{"route":"q"}}])");
  const auto statement = Statement("SELECT 1 /*route='q'*/");
  ASSERT_EQ(controller_.Admit(statement, AttemptKind::kFinal).outcome,
            Decision::Outcome::kAdmitted);
  EXPECT_EQ(controller_.Admit(statement, AttemptKind::kWillWait).outcome,
            Decision::Outcome::kMustWait);
  EXPECT_EQ(controller_.Admit(statement, AttemptKind::kRetry).outcome,
            Decision::Outcome::kMustWait);
  EXPECT_EQ(Matched("queue", "q"), 1u);
  EXPECT_EQ(controller_.Admit(statement, AttemptKind::kFinal).outcome, Decision::Outcome::kRefused);
  EXPECT_EQ(Matched("queue", "q"), 2u);
  controller_.ReleaseAll();
}

TEST_F(ExplainTest, ARuleThatNamesAnotherBudgetAfterAReloadCountsAfresh) {
  Configure(R"([{"name":"a","mode":"warn"},{"name":"b","mode":"warn"}])",
            R"([{"name":"r","budget":"a","match":{"route":"x"}}])");
  controller_.Admit(Statement("SELECT 1 /*route='x'*/"), AttemptKind::kFinal);
  Configure(R"([{"name":"a","mode":"warn"},{"name":"b","mode":"warn"}])",
            R"([{"name":"r","budget":"b","match":{"route":"x"}}])");
  controller_.Admit(Statement("SELECT 1 /*route='x'*/"), AttemptKind::kFinal);
  controller_.Admit(Statement("SELECT 1 /*route='x'*/"), AttemptKind::kFinal);
  EXPECT_EQ(Matched("r", "a"), 1u);
  EXPECT_EQ(Matched("r", "b"), 2u);
  controller_.ReleaseAll();
}

TEST_F(ExplainTest, TheProblemsOfTheRuleSetAreKept) {
  Configure(R"([{"name":"a"}])", R"([{"name":"r","budget":"missing"}])");
  ASSERT_EQ(controller_.problems().size(), 1u);
  EXPECT_EQ(controller_.problems()[0].rule, "r");
  EXPECT_EQ(controller_.problems()[0].message, "budget \"missing\" does not exist; rule skipped");
}

}  // namespace
}  // namespace tc

namespace tc {
namespace {

TEST(RuleCountBatching, CountsReachTheSharedTableInBatchesAndOnFlush) {
  std::vector<Budget> budgets(1);
  budgets[0].name = "b";
  budgets[0].mode = Mode::kWarn;
  std::vector<Rule> rules(1);
  rules[0].name = "r";
  rules[0].budget = "b";
  rules[0].match.push_back(Condition{"route", {"x"}});
  AdmissionController controller;
  controller.SetRuleSet(RuleSet(budgets, rules, nullptr), {});

  std::vector<std::uint64_t> memory(RuleCounterTable::RequiredBytes(16) / 8 + 1);
  const MemorySpan span{memory.data(), memory.size() * 8};
  RuleCounterTable::Initialize(span, 16);
  RuleCounterTable counters(span);
  std::vector<std::uint64_t> bucket_memory(BucketTable::RequiredBytes(16) / 8 + 1);
  const MemorySpan bucket_span{bucket_memory.data(), bucket_memory.size() * 8};
  BucketTable::Initialize(bucket_span, 16);
  struct NoLock final : TableLock {
    void LockExclusive() override {}
    void LockShared() override {}
    void Unlock() override {}
  } lock;
  SteadyClock clock;
  BucketTable table(bucket_span, lock, clock);
  controller.AttachTable(&table);
  controller.AttachRuleCounters(&counters);

  StatementInfo statement;
  statement.text = "SELECT 1 /*route='x'*/";
  auto shared_count = [&] {
    const std::int32_t slot = counters.Find("r", "b");
    return slot == RuleCounterTable::kNoSlot ? 0 : counters.Count(slot);
  };
  for (std::uint32_t i = 1; i < AdmissionController::kRuleCountBatch; ++i) {
    controller.ReleaseAll();
    controller.Admit(statement, AttemptKind::kFinal);
  }
  EXPECT_EQ(shared_count(), 0u);  // still pending in this backend
  controller.Admit(statement, AttemptKind::kFinal);
  EXPECT_EQ(shared_count(), AdmissionController::kRuleCountBatch);  // a full batch is added
  controller.Admit(statement, AttemptKind::kFinal);
  controller.FlushRuleCounts();
  EXPECT_EQ(shared_count(), AdmissionController::kRuleCountBatch + 1);
  controller.ReleaseAll();
}

}  // namespace
}  // namespace tc
