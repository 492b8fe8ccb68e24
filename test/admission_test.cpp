// The whole decision in the core: statement -> metadata -> rules -> budgets ->
// verdicts -> messages, with the shared tables on heap memory.
#include "traffic_control/admission.hpp"

#include <gtest/gtest.h>

#include <mutex>
#include <string>
#include <vector>

#include "test_doubles.hpp"
#include "traffic_control/config.hpp"

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

class AdmissionTest : public ::testing::Test {
 protected:
  // `backend`: the number the controller's table is attached for (one of
  // kBackends), kNoBackend for none.
  void Configure(const std::string& budgets_json, const std::string& rules_json,
                 std::int32_t backend = BucketTable::kNoBackend) {
    std::vector<Budget> budgets;
    std::vector<Rule> rules;
    std::string error;
    ASSERT_TRUE(ParseBudgets(budgets_json, &budgets, &error)) << error;
    ASSERT_TRUE(ParseRules(rules_json, &rules, &error)) << error;
    std::vector<RuleProblem> problems;
    controller_.SetRuleSet(RuleSet(std::move(budgets), std::move(rules), &problems));
    ASSERT_TRUE(problems.empty());

    bucket_memory_.assign(BucketTable::RequiredBytes(64, kBackends) / 8 + 1, 0);
    pattern_memory_.assign(PatternTable::RequiredBytes(64) / 8 + 1, 0);
    const MemorySpan buckets = BucketSpan();
    const MemorySpan patterns{pattern_memory_.data(), pattern_memory_.size() * 8};
    BucketTable::Initialize(buckets, 64, kBackends);
    PatternTable::Initialize(patterns, 64);
    table_ = std::make_unique<BucketTable>(buckets, bucket_lock_, clock_, backend);
    patterns_ = std::make_unique<PatternTable>(patterns, pattern_lock_, clock_);
    controller_.AttachTable(table_.get());
    controller_.AttachPatterns(patterns_.get());
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

  MemorySpan BucketSpan() { return MemorySpan{bucket_memory_.data(), bucket_memory_.size() * 8}; }

  // The only instance's queued and blocked_max_concurrent counters.
  void ExpectQueuedAndBlocked(std::uint64_t queued, std::uint64_t blocked) {
    const std::vector<BucketSnapshot> buckets = table_->Snapshot();
    ASSERT_EQ(buckets.size(), 1u);
    EXPECT_EQ(buckets[0].queued, queued);
    EXPECT_EQ(buckets[0].blocked_max_concurrent, blocked);
  }

  static constexpr std::uint32_t kBackends = 4;
  MutexLock bucket_lock_, pattern_lock_;
  FakeClock clock_;
  std::vector<std::uint64_t> bucket_memory_, pattern_memory_;
  std::unique_ptr<BucketTable> table_;
  std::unique_ptr<PatternTable> patterns_;
  AdmissionController controller_;
};

TEST_F(AdmissionTest, EmptyRuleSetAdmitsWithoutHolding) {
  Configure("[]", "[]");
  EXPECT_TRUE(controller_.empty());
  const Decision decision = controller_.Admit(Statement("SELECT 1"), AttemptKind::kFinal);
  EXPECT_EQ(decision.outcome, Decision::Outcome::kAdmitted);
  EXPECT_EQ(decision.holding, 0);
}

TEST_F(AdmissionTest, UnmatchedStatementHoldsNothing) {
  Configure(R"([{"name":"b","mode":"enforce","max_concurrent":0}])",
            R"([{"budget":"b","match":{"route":"export"}}])");
  const Decision decision =
      controller_.Admit(Statement("SELECT 1 /*route='checkout'*/"), AttemptKind::kFinal);
  EXPECT_EQ(decision.outcome, Decision::Outcome::kAdmitted);
  EXPECT_EQ(decision.holding, 0);
  EXPECT_TRUE(table_->Snapshot().empty());
}

// The controller keeps the last statement's match while the metadata stay
// the same: every change of tags, built-ins or rules must still be seen.
TEST_F(AdmissionTest, EachStatementIsMatchedOnItsOwnMetadata) {
  Configure(R"([{"name":"a","mode":"enforce","max_concurrent":0},
                {"name":"b","mode":"enforce","max_concurrent":0},
                {"name":"batch","mode":"enforce","max_concurrent":0}])",
            R"([{"budget":"a","match":{"route":"a"}},
                {"budget":"b","match":{"route":"b"}},
                {"budget":"batch","match":{"application_name":"batch"}}])");
  auto refused_by = [&](const StatementInfo& statement) -> std::string {
    const Decision decision = controller_.Admit(statement, AttemptKind::kFinal);
    return decision.outcome == Decision::Outcome::kRefused ? decision.refusal.budget : "";
  };
  const StatementInfo route_a = Statement("SELECT 1 /*route='a'*/");
  const StatementInfo route_b = Statement("SELECT 1 /*route='b'*/");
  const StatementInfo untagged = Statement("SELECT 1");
  StatementInfo from_batch = Statement("SELECT 1");
  from_batch.application_name = "batch";
  EXPECT_EQ(refused_by(route_a), "a");
  EXPECT_EQ(refused_by(route_a), "a");
  EXPECT_EQ(refused_by(route_b), "b");
  EXPECT_EQ(refused_by(untagged), "");
  EXPECT_EQ(refused_by(from_batch), "batch");
  EXPECT_EQ(refused_by(untagged), "");
  EXPECT_EQ(refused_by(route_a), "a");

  // New rules: the same statement is matched again.
  // (The same keys as before, so the statements' metadata are the same.)
  Configure(R"([{"name":"other","mode":"enforce","max_concurrent":0},
                {"name":"a2","mode":"enforce","max_concurrent":0}])",
            R"([{"budget":"other","match":{"application_name":"other"}},
                {"budget":"a2","match":{"route":"a"}}])");
  EXPECT_EQ(refused_by(route_a), "a2");
  EXPECT_EQ(refused_by(route_b), "");
}

// member_of arrives as the roles the server found the current role a member
// of; the backend's cached match must follow it from statement to statement.
TEST_F(AdmissionTest, MemberOfAndDefaultRuleFollowEachStatement) {
  Configure(R"([{"name":"analytics","mode":"enforce","max_concurrent":0},
                {"name":"critical","mode":"enforce"},
                {"name":"rest","mode":"enforce","max_concurrent":0}])",
            R"([{"budget":"analytics","match":{"member_of":"analysts"}},
                {"budget":"critical","match":{"route":"checkout"}},
                {"budget":"rest","default":true}])");
  auto refused_by = [&](const StatementInfo& statement) -> std::string {
    const Decision decision = controller_.Admit(statement, AttemptKind::kFinal);
    return decision.outcome == Decision::Outcome::kRefused ? decision.refusal.budget : "";
  };
  const std::vector<const char*> analysts = {"analysts"};
  StatementInfo member = Statement("SELECT 1 /*route='checkout'*/");
  member.member_of = analysts.data();
  member.member_of_count = analysts.size();
  const StatementInfo not_member = Statement("SELECT 1 /*route='checkout'*/");
  StatementInfo untagged_member = Statement("SELECT 1");
  untagged_member.member_of = analysts.data();
  untagged_member.member_of_count = analysts.size();
  // A tag claiming the membership changes nothing.
  const StatementInfo claims = Statement("SELECT 1 /*member_of='analysts'*/");
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(refused_by(member), "analytics");
    EXPECT_EQ(refused_by(not_member), "");
    EXPECT_EQ(refused_by(untagged_member), "analytics");
    EXPECT_EQ(refused_by(claims), "rest");
    EXPECT_EQ(refused_by(Statement("SELECT 1")), "rest");
  }
}

TEST_F(AdmissionTest, RefusesAtTheLimitAndAdmitsAfterRelease) {
  Configure(R"([{"name":"best-effort","mode":"enforce","max_concurrent":1}])",
            R"([{"name":"export","budget":"best-effort","match":{"route":"/api/export"}}])");
  const auto statement = Statement("SELECT 1 /*route='%2Fapi%2Fexport'*/;");
  const Decision first = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(first.outcome, Decision::Outcome::kAdmitted);
  ASSERT_NE(first.holding, 0);

  const Decision second = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(second.outcome, Decision::Outcome::kRefused);
  EXPECT_EQ(second.refusal.message,
            "[PGINSIGHTS] Traffic Control: query blocked by budget \"best-effort\": "
            "max_concurrent exceeded");
  EXPECT_NE(second.refusal.detail.find("Rule \"export\""), std::string::npos);
  EXPECT_NE(second.refusal.detail.find("limit max_concurrent = 1"), std::string::npos);
  EXPECT_EQ(second.holding, 0);

  controller_.Release(first.holding);
  // A second release of the same holding is ignored: exactly once.
  controller_.Release(first.holding);
  EXPECT_EQ(controller_.Admit(statement, AttemptKind::kFinal).outcome,
            Decision::Outcome::kAdmitted);
  controller_.ReleaseAll();
  for (const BucketSnapshot& bucket : table_->Snapshot()) EXPECT_EQ(bucket.active, 0);
}

// The controller keeps each match's instance hash, which belongs to the
// table it was computed for: after attaching another table, it must find the
// instance that another backend created there, not make a second one.
TEST_F(AdmissionTest, AnotherTableIsSharedWithItsOtherUsers) {
  Configure(R"([{"name":"one","mode":"enforce","max_concurrent":1}])",
            R"([{"budget":"one","match":{"route":"r"}}])");
  const auto statement = Statement("SELECT 1 /*route='r'*/");
  const Decision on_first_table = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(on_first_table.outcome, Decision::Outcome::kAdmitted);
  controller_.Release(on_first_table.holding);

  std::vector<std::uint64_t> memory(BucketTable::RequiredBytes(64) / 8 + 1, 0);
  const MemorySpan span{memory.data(), memory.size() * 8};
  BucketTable::Initialize(span, 64);  // a new random hash seed
  BucketTable other_table(span, bucket_lock_, clock_);
  AdmissionController other_backend;
  other_backend.SetRuleSet(controller_.rule_set());
  other_backend.AttachTable(&other_table);
  const Decision first = other_backend.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(first.outcome, Decision::Outcome::kAdmitted);

  controller_.AttachTable(&other_table);
  EXPECT_EQ(controller_.Admit(statement, AttemptKind::kFinal).outcome, Decision::Outcome::kRefused);
  EXPECT_EQ(other_table.Snapshot().size(), 1u);
  other_backend.ReleaseAll();
  controller_.ReleaseAll();
  controller_.AttachTable(table_.get());
}

// The controller sends where its match was held last time as a hint: when
// another backend has meanwhile evicted that instance and reused the entry
// for its own budget, the statement must still count in its own budget.
TEST_F(AdmissionTest, AHintToAReusedEntryCountsInTheRightBudget) {
  Configure(R"([{"name":"mine","mode":"enforce","max_concurrent":5},
                {"name":"theirs","mode":"enforce","max_concurrent":5}])",
            R"([{"budget":"mine","match":{"route":"mine"}},
                {"budget":"theirs","match":{"route":"theirs"}}])");
  std::vector<std::uint64_t> memory(BucketTable::RequiredBytes(1) / 8 + 1, 0);
  const MemorySpan span{memory.data(), memory.size() * 8};
  BucketTable::Initialize(span, 1);  // one entry: each budget evicts the other
  BucketTable tiny(span, bucket_lock_, clock_);
  AdmissionController other_backend;
  other_backend.SetRuleSet(controller_.rule_set());
  other_backend.AttachTable(&tiny);
  controller_.AttachTable(&tiny);
  const auto mine = Statement("SELECT 1 /*route='mine'*/");
  auto active = [&](std::string_view budget) -> std::int64_t {
    for (const BucketSnapshot& snapshot : tiny.Snapshot()) {
      if (snapshot.budget == budget) return snapshot.active;
    }
    return -1;
  };

  const Decision first = controller_.Admit(mine, AttemptKind::kFinal);  // learns the entry
  ASSERT_EQ(first.outcome, Decision::Outcome::kAdmitted);
  controller_.Release(first.holding);
  const Decision theirs =
      other_backend.Admit(Statement("SELECT 1 /*route='theirs'*/"), AttemptKind::kFinal);
  ASSERT_EQ(theirs.outcome, Decision::Outcome::kAdmitted);
  other_backend.Release(theirs.holding);
  ASSERT_EQ(active("mine"), -1);  // evicted: the entry is "theirs" now

  const Decision again = controller_.Admit(mine, AttemptKind::kFinal);
  ASSERT_EQ(again.outcome, Decision::Outcome::kAdmitted);
  EXPECT_EQ(active("mine"), 1);
  EXPECT_EQ(active("theirs"), -1);
  controller_.Release(again.holding);
  EXPECT_EQ(active("mine"), 0);
  controller_.AttachTable(table_.get());
}

// Holdings are released in any order, each exactly once.
TEST_F(AdmissionTest, OpenStatementsAreReleasedInAnyOrder) {
  Configure(R"([{"name":"b","mode":"enforce","max_concurrent":3}])",
            R"([{"budget":"b","match":{"route":"r"}}])");
  const auto statement = Statement("SELECT 1 /*route='r'*/");
  std::vector<std::int64_t> holdings;
  for (int i = 0; i < 3; ++i) {
    const Decision decision = controller_.Admit(statement, AttemptKind::kFinal);
    ASSERT_EQ(decision.outcome, Decision::Outcome::kAdmitted);
    holdings.push_back(decision.holding);
  }
  EXPECT_EQ(controller_.Admit(statement, AttemptKind::kFinal).outcome, Decision::Outcome::kRefused);
  auto active = [&] { return table_->Snapshot().at(0).active; };
  controller_.Release(holdings[1]);
  EXPECT_EQ(active(), 2);
  EXPECT_EQ(controller_.held_count(), 2u);
  controller_.Release(holdings[1]);  // again: nothing
  EXPECT_EQ(active(), 2);
  controller_.Release(holdings[0]);
  EXPECT_EQ(active(), 1);
  const Decision again = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(again.outcome, Decision::Outcome::kAdmitted);
  EXPECT_EQ(active(), 2);
  controller_.Release(holdings[2]);
  controller_.Release(again.holding);
  EXPECT_EQ(active(), 0);
  EXPECT_EQ(controller_.held_count(), 0u);
}

TEST_F(AdmissionTest, WarnModeRunsWithANotice) {
  Configure(R"([{"name":"watch","mode":"warn","max_concurrent":0}])",
            R"([{"name":"reports","budget":"watch","match":{"route":"/reports"}}])");
  const Decision decision =
      controller_.Admit(Statement("SELECT 1 /*route='/reports'*/"), AttemptKind::kFinal);
  ASSERT_EQ(decision.outcome, Decision::Outcome::kAdmitted);
  ASSERT_EQ(decision.notices.size(), 1u);
  EXPECT_EQ(decision.notices[0].message,
            "[PGINSIGHTS] Traffic Control: query would be blocked by budget \"watch\": "
            "max_concurrent exceeded");
  controller_.ReleaseAll();
}

TEST_F(AdmissionTest, ATagCannotSetABuiltin) {
  Configure(R"([{"name":"b","mode":"enforce","max_concurrent":0}])",
            R"([{"budget":"b","match":{"username":"postgres"}}])");
  EXPECT_EQ(
      controller_.Admit(Statement("SELECT 1 /*username='postgres'*/"), AttemptKind::kFinal).outcome,
      Decision::Outcome::kAdmitted);
  auto as_postgres = Statement("SELECT 1");
  as_postgres.username = "postgres";
  EXPECT_EQ(controller_.Admit(as_postgres, AttemptKind::kFinal).outcome,
            Decision::Outcome::kRefused);
  controller_.ReleaseAll();
}

TEST_F(AdmissionTest, AllMatchingBudgetsMustPass) {
  Configure(R"([{"name":"loose","mode":"enforce","max_concurrent":10},
                {"name":"tight","mode":"enforce","max_concurrent":1}])",
            R"([{"budget":"loose","match":{"app":"web"}},
                {"budget":"tight","match":{"tier":"free"}}])");
  const auto statement = Statement("SELECT 1 /*app='web',tier='free'*/");
  const Decision first = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(first.outcome, Decision::Outcome::kAdmitted);
  const Decision second = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(second.outcome, Decision::Outcome::kRefused);
  EXPECT_NE(second.refusal.message.find("\"tight\""), std::string::npos);
  // The refused statement took nothing from "loose".
  for (const BucketSnapshot& bucket : table_->Snapshot()) {
    EXPECT_EQ(bucket.active, 1) << bucket.budget;
  }
  controller_.ReleaseAll();
}

TEST_F(AdmissionTest, QueueBudgetAsksToWaitThenRefusesOnTheFinalAttempt) {
  Configure(R"([{"name":"q","mode":"enforce","max_concurrent":1,"queue_timeout_ms":50}])",
            R"([{"budget":"q","match":{"route":"q"}}])");
  const auto statement = Statement("SELECT 1 /*route='q'*/");
  const Decision holder = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(holder.outcome, Decision::Outcome::kAdmitted);
  const Decision waiting = controller_.Admit(statement, AttemptKind::kWillWait);
  EXPECT_EQ(waiting.outcome, Decision::Outcome::kMustWait);
  EXPECT_EQ(waiting.queue_timeout_ms, 50);
  const Decision final_attempt = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(final_attempt.outcome, Decision::Outcome::kRefused);
  EXPECT_NE(final_attempt.refusal.hint.find("queue_timeout_ms = 50"), std::string::npos);
  ExpectQueuedAndBlocked(1, 1);
  controller_.ReleaseAll();
}

// A backend whose own open cursor holds the only slot: waiting could never
// admit its next statement of the budget, so it is refused at once.
TEST_F(AdmissionTest, AStatementWhoseSessionHoldsTheSlotItselfIsRefusedAtOnce) {
  Configure(R"([{"name":"q","mode":"enforce","max_concurrent":1,"queue_timeout_ms":5000}])",
            R"([{"budget":"q","match":{"route":"q"}}])", /*backend=*/0);
  const auto statement = Statement("SELECT 1 /*route='q'*/");
  ASSERT_EQ(controller_.Admit(statement, AttemptKind::kFinal).outcome,
            Decision::Outcome::kAdmitted);
  const Decision again = controller_.Admit(statement, AttemptKind::kWillWait);
  ASSERT_EQ(again.outcome, Decision::Outcome::kRefused);
  EXPECT_NE(again.refusal.detail.find("this session already holds 1 of these units"),
            std::string::npos);
  EXPECT_FALSE(table_->waiting());
  ExpectQueuedAndBlocked(0, 1);
  controller_.ReleaseAll();
}

// The deadlock check: another backend holds the slot and (the shim found)
// waits for this backend's lock.
TEST_F(AdmissionTest, AWaitThatCanNeverEndIsRefusedNamingTheHolder) {
  Configure(R"([{"name":"q","mode":"enforce","max_concurrent":1,"queue_timeout_ms":5000}])",
            R"([{"budget":"q","match":{"route":"q"}}])", /*backend=*/0);
  BucketTable holder_table(BucketSpan(), bucket_lock_, clock_, /*backend=*/1);
  AdmissionController holder;
  holder.SetRuleSet(controller_.rule_set());
  holder.AttachTable(&holder_table);
  const auto statement = Statement("SELECT 1 /*route='q'*/");
  ASSERT_EQ(holder.Admit(statement, AttemptKind::kFinal).outcome, Decision::Outcome::kAdmitted);
  ASSERT_EQ(controller_.Admit(statement, AttemptKind::kWillWait).outcome,
            Decision::Outcome::kMustWait);
  Decision decision;
  EXPECT_FALSE(controller_.AdmitIfWaitNeverEnds(statement, nullptr, 0, 0, &decision));
  const std::int32_t stuck[] = {1};
  ASSERT_TRUE(controller_.AdmitIfWaitNeverEnds(statement, stuck, 1, 4242, &decision));
  ASSERT_EQ(decision.outcome, Decision::Outcome::kRefused);
  EXPECT_EQ(decision.refusal.budget, "q");
  EXPECT_NE(decision.refusal.detail.find("process 4242 holds units of this budget"),
            std::string::npos);
  EXPECT_FALSE(table_->waiting());
  ExpectQueuedAndBlocked(1, 1);

  // Once the holder is gone, the same check lets the wait go on (and the
  // next attempt admits).
  ASSERT_EQ(controller_.Admit(statement, AttemptKind::kWillWait).outcome,
            Decision::Outcome::kMustWait);
  holder.ReleaseAll();
  EXPECT_FALSE(controller_.AdmitIfWaitNeverEnds(statement, stuck, 1, 4242, &decision));
  EXPECT_EQ(controller_.Admit(statement, AttemptKind::kRetry).outcome,
            Decision::Outcome::kAdmitted);
  controller_.ReleaseAll();
}

TEST_F(AdmissionTest, LearnsThePatternThenRefusesAnExpensiveOneBeforeItRuns) {
  // per_query_limit 0.5 s of a 4-core server = 2 CPU-seconds.
  Configure(R"([{"name":"critical","mode":"enforce","per_query_limit":0.5}])",
            R"([{"budget":"critical","match":{"priority":"critical"}}])");
  auto statement = Statement("SELECT * FROM big /*priority='critical'*/");
  // Nothing known yet: the prediction is unknown and the statement runs.
  Decision first = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(first.outcome, Decision::Outcome::kAdmitted);
  EXPECT_TRUE(first.measure_cpu);
  EXPECT_FALSE(first.predicted_seconds.has_value());
  // It really used 3 CPU-seconds for a plan cost of 100: k = 0.03.
  controller_.Release(first.holding, 3.0, /*completed=*/true);

  const Decision second = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(second.outcome, Decision::Outcome::kRefused);
  ASSERT_TRUE(second.predicted_seconds.has_value());
  EXPECT_NEAR(*second.predicted_seconds, 3.0, 1e-9);
  EXPECT_EQ(second.refusal.message,
            "[PGINSIGHTS] Traffic Control: query blocked by budget \"critical\": "
            "per_query_limit exceeded");
  EXPECT_NE(second.refusal.detail.find("predicted cost 3 CPU-s"), std::string::npos);

  // The same pattern with a plan 10x cheaper is predicted at 0.3 s and runs.
  statement.plan_cost = 10;
  const Decision cheap = controller_.Admit(statement, AttemptKind::kFinal);
  EXPECT_EQ(cheap.outcome, Decision::Outcome::kAdmitted);
  controller_.ReleaseAll();
}

TEST_F(AdmissionTest, AnInterruptedStatementDoesNotTeachTheEstimator) {
  Configure(R"([{"name":"critical","mode":"enforce","per_query_limit":0.5}])",
            R"([{"budget":"critical","match":{"priority":"critical"}}])");
  const auto statement = Statement("SELECT * FROM big /*priority='critical'*/");
  const Decision first = controller_.Admit(statement, AttemptKind::kFinal);
  controller_.Release(first.holding, 0.001, /*completed=*/false);
  EXPECT_TRUE(patterns_->Snapshot().empty());
}

TEST_F(AdmissionTest, RunsAtTheWeakestCpuPriorityOfItsEnforceBudgets) {
  Configure(R"([{"name": "nice", "mode": "enforce", "cpu_priority": 10},
                {"name": "nicer", "mode": "enforce", "cpu_priority": 15},
                {"name": "watch", "mode": "warn", "cpu_priority": 19},
                {"name": "idle", "mode": "enforce", "cpu_priority": "idle"}])",
            R"([{"budget": "nice", "match": {"tier": ["a", "b"]}},
                {"budget": "nicer", "match": {"tier": "b"}},
                {"budget": "watch", "match": {"tier": ["a", "b", "w"]}},
                {"budget": "idle", "match": {"tier": "i"}}])");
  EXPECT_EQ(controller_.max_cpu_priority(), kCpuPriorityIdle);

  Decision decision = controller_.Admit(Statement("SELECT 1 /*tier='a'*/"), AttemptKind::kFinal);
  EXPECT_EQ(decision.outcome, Decision::Outcome::kAdmitted);
  EXPECT_EQ(decision.cpu_priority, 10);  // the warn budget's 19 only warns
  controller_.Release(decision.holding);

  decision = controller_.Admit(Statement("SELECT 1 /*tier='b'*/"), AttemptKind::kFinal);
  EXPECT_EQ(decision.cpu_priority, 15);
  controller_.Release(decision.holding);

  decision = controller_.Admit(Statement("SELECT 1 /*tier='w'*/"), AttemptKind::kFinal);
  EXPECT_EQ(decision.cpu_priority, 0);
  controller_.Release(decision.holding);

  decision = controller_.Admit(Statement("SELECT 1 /*tier='i'*/"), AttemptKind::kFinal);
  EXPECT_EQ(decision.cpu_priority, kCpuPriorityIdle);
  controller_.Release(decision.holding);

  decision = controller_.Admit(Statement("SELECT 1"), AttemptKind::kFinal);
  EXPECT_EQ(decision.cpu_priority, 0);
}

TEST_F(AdmissionTest, ARefusedStatementAsksForNoCpuPriority) {
  Configure(R"([{"name": "shed", "mode": "enforce", "max_concurrent": 0, "cpu_priority": 19}])",
            R"([{"budget": "shed", "match": {}}])");
  const Decision decision = controller_.Admit(Statement("SELECT 1"), AttemptKind::kFinal);
  EXPECT_EQ(decision.outcome, Decision::Outcome::kRefused);
  EXPECT_EQ(decision.cpu_priority, 0);
}

// Predictions are per (role, database, query id), and so is the backend's
// cache of them: after a SET ROLE the same query id and plan cost do not
// reuse the other role's prediction.
TEST_F(AdmissionTest, ASetRoleDoesNotReuseTheOtherRolesPrediction) {
  Configure(R"([{"name":"critical","mode":"enforce","per_query_limit":0.5}])",
            R"([{"budget":"critical","match":{"priority":"critical"}}])");
  auto statement = Statement("SELECT * FROM big /*priority='critical'*/");
  // The role learns a cheap pattern (predicted under 0.5 ms: cached).
  const Decision learn = controller_.Admit(statement, AttemptKind::kFinal);
  controller_.Release(learn.holding, 0.0001, /*completed=*/true);
  const Decision cached = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_TRUE(cached.predicted_seconds.has_value());
  EXPECT_DOUBLE_EQ(*cached.predicted_seconds, 0.0001);
  controller_.Release(cached.holding);

  // SET ROLE: another role, the same query id and plan cost: it has no
  // history, so its prediction is unknown.
  statement.user_id = kUserId + 1;
  const Decision other = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(other.outcome, Decision::Outcome::kAdmitted);
  EXPECT_FALSE(other.predicted_seconds.has_value());
  controller_.Release(other.holding, 3.0, /*completed=*/true);  // k 0.03, its own
  const Decision other_again = controller_.Admit(statement, AttemptKind::kFinal);
  EXPECT_EQ(other_again.outcome, Decision::Outcome::kRefused);
  ASSERT_TRUE(other_again.predicted_seconds.has_value());
  EXPECT_NEAR(*other_again.predicted_seconds, 3.0, 1e-9);

  // RESET ROLE: the first role's prediction is what it was.
  statement.user_id = kUserId;
  const Decision back = controller_.Admit(statement, AttemptKind::kFinal);
  EXPECT_EQ(back.outcome, Decision::Outcome::kAdmitted);
  ASSERT_TRUE(back.predicted_seconds.has_value());
  EXPECT_DOUBLE_EQ(*back.predicted_seconds, 0.0001);
  controller_.Release(back.holding);
  // Another database, the same role: its own history (none).
  statement.database_id = kDatabaseId + 1;
  const Decision other_database = controller_.Admit(statement, AttemptKind::kFinal);
  EXPECT_FALSE(other_database.predicted_seconds.has_value());
  controller_.ReleaseAll();

  const std::vector<PatternSnapshot> patterns = patterns_->Snapshot();
  ASSERT_EQ(patterns.size(), 2u);  // query id 42 once per role
  EXPECT_EQ(patterns[0].query_id, 42u);
  EXPECT_EQ(patterns[0].user_id, kUserId);
  EXPECT_EQ(patterns[1].query_id, 42u);
  EXPECT_EQ(patterns[1].user_id, kUserId + 1);
}

// A statement teaches the estimator for the role it was admitted as, even
// when the role changed before it ended (SET ROLE inside a function, a
// cursor fetched later).
TEST_F(AdmissionTest, AStatementIsLearnedForTheRoleItWasAdmittedAs) {
  Configure(R"([{"name":"critical","mode":"warn","per_query_limit":0.5}])",
            R"([{"budget":"critical","match":{"priority":"critical"}}])");
  auto statement = Statement("SELECT * FROM big /*priority='critical'*/");
  const Decision first = controller_.Admit(statement, AttemptKind::kFinal);
  statement.user_id = kUserId + 7;
  const Decision second = controller_.Admit(statement, AttemptKind::kFinal);
  controller_.Release(first.holding, 1.0, /*completed=*/true);
  const std::vector<PatternSnapshot> patterns = patterns_->Snapshot();
  ASSERT_EQ(patterns.size(), 1u);
  EXPECT_EQ(patterns[0].user_id, kUserId);
  EXPECT_EQ(patterns[0].database_id, kDatabaseId);
  EXPECT_EQ(patterns[0].calls, 1u);
  controller_.Release(second.holding, 2.0, /*completed=*/true);
  EXPECT_EQ(patterns_->Snapshot().size(), 2u);
}

TEST_F(AdmissionTest, AParallelPlanRunsWithTheWorkersItsBudgetsAllow) {
  Configure(R"([{"name": "pool", "mode": "enforce", "max_concurrent": 3},
                {"name": "few", "mode": "enforce", "max_parallel_workers": 1},
                {"name": "watch", "mode": "warn", "max_parallel_workers": 0}])",
            R"([{"budget": "pool", "match": {"tier": ["p", "f"]}},
                {"budget": "few", "match": {"tier": "f"}},
                {"budget": "watch", "match": {"tier": "w"}}])");
  StatementInfo parallel = Statement("SELECT 1 /*tier='p'*/");
  parallel.parallel_workers = 4;
  parallel.workers_can_be_cut = true;
  // max_concurrent 3: the leader and two workers.
  Decision decision = controller_.Admit(parallel, AttemptKind::kFinal);
  ASSERT_EQ(decision.outcome, Decision::Outcome::kAdmitted);
  EXPECT_EQ(decision.parallel_workers, 2);
  const std::int64_t three_units = decision.holding;
  // Nothing left: not even a leader fits.
  decision = controller_.Admit(parallel, AttemptKind::kFinal);
  EXPECT_EQ(decision.outcome, Decision::Outcome::kRefused);
  controller_.Release(three_units);

  // max_parallel_workers 1 caps the plan before max_concurrent is asked.
  StatementInfo few = parallel;
  few.text = "SELECT 1 /*tier='f'*/";
  decision = controller_.Admit(few, AttemptKind::kFinal);
  ASSERT_EQ(decision.outcome, Decision::Outcome::kAdmitted);
  EXPECT_EQ(decision.parallel_workers, 1);
  controller_.Release(decision.holding);

  // A warn budget cuts nothing.
  StatementInfo watched = parallel;
  watched.text = "SELECT 1 /*tier='w'*/";
  decision = controller_.Admit(watched, AttemptKind::kFinal);
  EXPECT_EQ(decision.parallel_workers, 4);
  controller_.Release(decision.holding);

  // Workers that can no longer be cut (a cursor already started): all or
  // nothing, as before.
  StatementInfo started = parallel;
  started.workers_can_be_cut = false;
  decision = controller_.Admit(started, AttemptKind::kFinal);
  EXPECT_EQ(decision.outcome, Decision::Outcome::kRefused);
}

// traffic_control.shed(): a shed budget refuses every statement until its
// deadline, whatever its mode and limits, with a retry hint for when the shed
// ends; other budgets and other budgets' statements are untouched.
TEST_F(AdmissionTest, AShedBudgetRefusesEverythingUntilTheShedEnds) {
  Configure(R"([{"name":"best-effort","mode":"warn","max_concurrent":100},
                {"name":"critical","mode":"enforce","max_concurrent":100}])",
            R"([{"name":"analytics","budget":"best-effort","match":{"priority":"bestEffort"}},
                {"name":"checkout","budget":"critical","match":{"priority":"critical"}}])");
  auto analytics = Statement("SELECT 1 /*priority='bestEffort'*/");
  auto checkout = Statement("SELECT 1 /*priority='critical'*/");
  analytics.wall_now_us = checkout.wall_now_us = 1'000'000'000;
  controller_.SetShed(
      {{"best-effort", 1'000'000'000 + 90'000'500}, {"no-such-budget", 2'000'000'000}});

  const Decision refused = controller_.Admit(analytics, AttemptKind::kFinal);
  ASSERT_EQ(refused.outcome, Decision::Outcome::kRefused);  // though the budget only warns
  EXPECT_EQ(refused.refusal.message,
            "[PGINSIGHTS] Traffic Control: query blocked by budget \"best-effort\": shed");
  EXPECT_NE(refused.refusal.detail.find("Rule \"analytics\""), std::string::npos);
  EXPECT_NE(refused.refusal.detail.find("shed by traffic_control.shed() for another 90.1 s"),
            std::string::npos)
      << refused.refusal.detail;
  EXPECT_EQ(refused.refusal.hint, "retry after 90001 ms");
  EXPECT_EQ(refused.holding, 0);

  const Decision admitted = controller_.Admit(checkout, AttemptKind::kFinal);
  EXPECT_EQ(admitted.outcome, Decision::Outcome::kAdmitted);
  EXPECT_TRUE(admitted.notices.empty());

  // Counted per instance as blocked by the shed, not by a limit.
  for (const BucketSnapshot& bucket : table_->Snapshot()) {
    if (bucket.budget != "best-effort") continue;
    EXPECT_EQ(bucket.blocked_shed, 1u);
    EXPECT_EQ(bucket.blocked_max_concurrent, 0u);
    EXPECT_EQ(bucket.active, 0);
  }
  EXPECT_EQ(controller_.ShedUntil("best-effort", analytics.wall_now_us), 1'090'000'500);
  EXPECT_EQ(controller_.ShedUntil("critical", analytics.wall_now_us), 0);

  // The shed ends at its deadline.
  analytics.wall_now_us = 1'090'000'500;
  EXPECT_EQ(controller_.Admit(analytics, AttemptKind::kFinal).outcome,
            Decision::Outcome::kAdmitted);
  EXPECT_EQ(controller_.ShedUntil("best-effort", analytics.wall_now_us), 0);
  controller_.ReleaseAll();
}

TEST_F(AdmissionTest, AShedOutlivesANewRuleSetAndEndsWithUnshed) {
  Configure(R"([{"name":"b","mode":"enforce","max_concurrent":10}])",
            R"([{"budget":"b","match":{"app":"web"}}])");
  auto statement = Statement("SELECT 1 /*app='web'*/");
  statement.wall_now_us = 5'000'000;
  controller_.SetShed({{"b", 60'000'000}});
  ASSERT_EQ(controller_.Admit(statement, AttemptKind::kFinal).outcome, Decision::Outcome::kRefused);

  // A reload builds a new rule set (here with the budget under other limits).
  std::vector<Budget> budgets;
  std::vector<Rule> rules;
  std::string error;
  ASSERT_TRUE(
      ParseBudgets(R"([{"name":"b","mode":"enforce","max_concurrent":20}])", &budgets, &error));
  ASSERT_TRUE(ParseRules(R"([{"budget":"b","match":{"app":"web"}}])", &rules, &error));
  std::vector<RuleProblem> problems;
  controller_.SetRuleSet(RuleSet(std::move(budgets), std::move(rules), &problems));
  EXPECT_EQ(controller_.Admit(statement, AttemptKind::kFinal).outcome, Decision::Outcome::kRefused);

  controller_.SetShed({});  // unshed
  EXPECT_EQ(controller_.Admit(statement, AttemptKind::kFinal).outcome,
            Decision::Outcome::kAdmitted);
  controller_.ReleaseAll();
}

TEST_F(AdmissionTest, ExplainShowsAShedBudget) {
  Configure(R"([{"name":"b","mode":"enforce","max_concurrent":10}])",
            R"([{"budget":"b","match":{"app":"web"}}])");
  auto statement = Statement("SELECT 1 /*app='web'*/");
  statement.wall_now_us = 5'000'000;
  controller_.SetShed({{"b", 6'000'000}});
  const Explanation explanation = controller_.Explain(statement);
  ASSERT_EQ(explanation.budgets.size(), 1u);
  EXPECT_EQ(explanation.budgets[0].verdict.limit, Limit::kShed);
  EXPECT_EQ(explanation.budgets[0].verdict.action, BudgetVerdict::Action::kRefuse);
}

// max_duration_ms: an admitted statement learns when it is to be canceled
// (the earliest of its enforce budgets) and when a warn budget would have
// canceled it, with the messages for both.
TEST_F(AdmissionTest, AdmittedStatementsCarryTheirMaxDuration) {
  Configure(R"([{"name":"slow","mode":"enforce","max_duration_ms":5000},
                {"name":"slower","mode":"enforce","max_duration_ms":9000},
                {"name":"watch","mode":"warn","max_duration_ms":300},
                {"name":"plain","mode":"enforce","max_concurrent":10}])",
            R"([{"name":"reports","budget":"slow","match":{"app":"reports"}},
                {"budget":"slower","match":{"app":"reports"}},
                {"name":"watched","budget":"watch","match":{"tenant":"t1"},"each":"tenant"},
                {"budget":"plain","match":{"app":"web"}}])");
  const Decision both =
      controller_.Admit(Statement("SELECT 1 /*app='reports',tenant='t1'*/"), AttemptKind::kFinal);
  ASSERT_EQ(both.outcome, Decision::Outcome::kAdmitted);
  EXPECT_EQ(both.cancel_after_ms, 5000);
  EXPECT_EQ(both.duration_cancel.message,
            "[PGINSIGHTS] Traffic Control: query canceled by budget \"slow\": "
            "max_duration_ms exceeded");
  EXPECT_EQ(both.duration_cancel.detail,
            "Rule \"reports\", limit max_duration_ms = 5000, mode enforce.");
  EXPECT_EQ(both.warn_after_ms, 300);
  EXPECT_EQ(both.duration_warning.message,
            "[PGINSIGHTS] Traffic Control: query would be canceled by budget \"watch\": "
            "max_duration_ms exceeded");
  EXPECT_EQ(both.duration_warning.detail,
            "Rule \"watched\" for tenant = \"t1\", limit max_duration_ms = 300, mode warn.");

  const Decision none = controller_.Admit(Statement("SELECT 1 /*app='web'*/"), AttemptKind::kFinal);
  EXPECT_EQ(none.cancel_after_ms, 0);
  EXPECT_EQ(none.warn_after_ms, 0);
  controller_.ReleaseAll();
}

// quarantine_s: a per_query_limit refusal asks the caller to quarantine the
// pattern in every enforce budget with quarantine_s that refused it; a warn
// budget's warning asks nothing.
TEST_F(AdmissionTest, APerQueryLimitRefusalAsksForAQuarantine) {
  Configure(R"([{"name":"q","mode":"enforce","per_query_limit":0.5,"quarantine_s":30},
                {"name":"plain","mode":"enforce","per_query_limit":0.5},
                {"name":"watch","mode":"warn","per_query_limit":0.5,"quarantine_s":30}])",
            R"([{"budget":"q","match":{"app":"reports"}},
                {"budget":"plain","match":{"app":"reports"}},
                {"budget":"watch","match":{"app":"watched"}}])");
  auto statement = Statement("SELECT * FROM big /*app='reports'*/");
  Decision first = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(first.outcome, Decision::Outcome::kAdmitted);
  EXPECT_TRUE(first.quarantine.empty());
  controller_.Release(first.holding, 3.0, /*completed=*/true);  // learned: 3 CPU-s

  const Decision refused = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(refused.outcome, Decision::Outcome::kRefused);
  ASSERT_EQ(refused.quarantine.size(), 1u);
  EXPECT_EQ(refused.quarantine[0].budget, "q");
  EXPECT_EQ(refused.quarantine[0].seconds, 30);

  const Decision warned =
      controller_.Admit(Statement("SELECT * FROM big /*app='watched'*/"), AttemptKind::kFinal);
  ASSERT_EQ(warned.outcome, Decision::Outcome::kAdmitted);
  EXPECT_EQ(warned.notices.size(), 1u);
  EXPECT_TRUE(warned.quarantine.empty());
  controller_.ReleaseAll();
}

// A quarantined pattern is refused by its budget, and only its pattern (the
// same query id of the same role and database), until the quarantine ends,
// while the budget keeps quarantine_s; counted in blocked_quarantined.
TEST_F(AdmissionTest, AQuarantinedPatternIsRefusedUntilTheQuarantineEnds) {
  Configure(R"([{"name":"q","mode":"enforce","max_duration_ms":100,"quarantine_s":5}])",
            R"([{"budget":"q","match":{"app":"reports"}}])");
  StatementInfo statement = Statement("SELECT pg_sleep(10) /*app='reports'*/");
  statement.wall_now_us = 1'000'000'000;
  const Decision admitted = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(admitted.outcome, Decision::Outcome::kAdmitted);
  EXPECT_EQ(admitted.cancel_after_ms, 100);
  EXPECT_EQ(admitted.cancel_quarantine_s, 5);
  controller_.Release(admitted.holding, 0.1, /*completed=*/false, /*canceled=*/true);

  PatternKey pattern;
  pattern.query_id = 42;
  pattern.user_id = kUserId;
  pattern.database_id = kDatabaseId;
  controller_.SetQuarantine({{"q", pattern, 1'005'000'000, Limit::kNone}});

  statement.wall_now_us = 1'001'000'000;
  const Decision refused = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(refused.outcome, Decision::Outcome::kRefused);
  EXPECT_EQ(refused.refusal.message,
            "[PGINSIGHTS] Traffic Control: query blocked by budget \"q\": quarantined");
  EXPECT_EQ(refused.refusal.detail,
            "Rule \"rule1\", predicted cost unknown, pattern quarantined for another 4 s "
            "(quarantine_s = 5) after a statement of it was canceled by max_duration_ms, "
            "mode enforce.");
  EXPECT_EQ(refused.refusal.hint, "retry after 4000 ms");
  EXPECT_TRUE(refused.quarantine.empty());  // a quarantine refusal starts none

  StatementInfo other_query = statement;
  other_query.query_id = 43;
  StatementInfo other_role = statement;
  other_role.user_id = kUserId + 1;
  for (const StatementInfo& other : {other_query, other_role}) {
    const Decision decision = controller_.Admit(other, AttemptKind::kFinal);
    EXPECT_EQ(decision.outcome, Decision::Outcome::kAdmitted);
    controller_.Release(decision.holding);
  }

  statement.wall_now_us = 1'005'000'000;  // it has ended
  const Decision after = controller_.Admit(statement, AttemptKind::kFinal);
  EXPECT_EQ(after.outcome, Decision::Outcome::kAdmitted);
  controller_.ReleaseAll();

  const std::vector<BucketSnapshot> buckets = table_->Snapshot();
  ASSERT_EQ(buckets.size(), 1u);
  EXPECT_EQ(buckets[0].blocked_quarantined, 1u);
  EXPECT_EQ(buckets[0].canceled, 1u);
}

// A quarantine outlives a new rule set that keeps the budget's quarantine_s
// and stops applying when the budget no longer has one; a budget switched to
// warn warns instead of refusing.
TEST_F(AdmissionTest, AQuarantineFollowsTheBudgetsConfiguration) {
  PatternKey pattern;
  pattern.query_id = 42;
  pattern.user_id = kUserId;
  pattern.database_id = kDatabaseId;
  controller_.SetQuarantine({{"q", pattern, 60'000'000, Limit::kPerQueryLimit}});
  const std::string rules = R"([{"budget":"q","match":{"app":"reports"}}])";
  StatementInfo statement = Statement("SELECT 1 /*app='reports'*/");
  statement.wall_now_us = 1'000'000;

  Configure(R"([{"name":"q","mode":"enforce","quarantine_s":60}])", rules);
  const Decision refused = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(refused.outcome, Decision::Outcome::kRefused);
  EXPECT_NE(refused.refusal.detail.find("after a statement of it was refused by per_query_limit"),
            std::string::npos);

  Configure(R"([{"name":"q","mode":"warn","quarantine_s":60}])", rules);
  const Decision warned = controller_.Admit(statement, AttemptKind::kFinal);
  ASSERT_EQ(warned.outcome, Decision::Outcome::kAdmitted);
  ASSERT_EQ(warned.notices.size(), 1u);
  EXPECT_EQ(warned.notices[0].message,
            "[PGINSIGHTS] Traffic Control: query would be blocked by budget \"q\": quarantined");
  controller_.Release(warned.holding);

  Configure(R"([{"name":"q","mode":"enforce"}])", rules);
  const Decision admitted = controller_.Admit(statement, AttemptKind::kFinal);
  EXPECT_EQ(admitted.outcome, Decision::Outcome::kAdmitted);
  EXPECT_TRUE(admitted.notices.empty());
  controller_.ReleaseAll();
}

// budget_status.cpu_seconds: what the statements used when measured, what
// they were charged (their prediction) when not; a budget without a cost
// limit has its statements measured too.
TEST_F(AdmissionTest, EachBudgetAddsUpTheCpuItsStatementsUsed) {
  Configure(R"([{"name":"cost","mode":"enforce","per_query_limit":10},
                {"name":"plain","mode":"enforce","max_concurrent":5}])",
            R"([{"budget":"cost","match":{"app":"reports"}},
                {"budget":"plain","match":{"app":"web"}}])");
  const StatementInfo reports = Statement("SELECT 1 /*app='reports'*/");
  const Decision first = controller_.Admit(reports, AttemptKind::kFinal);
  EXPECT_TRUE(first.measure_cpu);
  controller_.Release(first.holding, 2.0, /*completed=*/true);  // k learned: 2 CPU-s
  const Decision second = controller_.Admit(reports, AttemptKind::kFinal);
  ASSERT_TRUE(second.predicted_seconds.has_value());
  controller_.Release(second.holding);  // not measured: charged its prediction, 2

  const Decision web = controller_.Admit(Statement("SELECT 1 /*app='web'*/"), AttemptKind::kFinal);
  EXPECT_TRUE(web.measure_cpu);
  controller_.Release(web.holding, 0.25, /*completed=*/true);

  double cost = -1, plain = -1;
  for (const BucketSnapshot& bucket : table_->Snapshot()) {
    if (bucket.budget == "cost") cost = bucket.cpu_seconds;
    if (bucket.budget == "plain") plain = bucket.cpu_seconds;
  }
  EXPECT_NEAR(cost, 4.0, 1e-9);
  EXPECT_NEAR(plain, 0.25, 1e-9);
  table_->ResetCounters();
  EXPECT_EQ(table_->Snapshot()[0].cpu_seconds, 0);
}

// The tags of a repeated statement text are parsed once and reused; a new
// rule set (which may use other tag keys) parses them again.
TEST_F(AdmissionTest, ARepeatedTextReusesItsTagsUntilTheRulesChange) {
  const std::string text = "SELECT 1 /*route='a',tier='x'*/";
  Configure(R"([{"name":"b","mode":"enforce","max_concurrent":0}])",
            R"([{"budget":"b","match":{"route":"b"}}])");
  for (int i = 0; i < 3; ++i) {  // parsed once, then reused: admitted each time
    const Decision decision = controller_.Admit(Statement(text), AttemptKind::kFinal);
    EXPECT_EQ(decision.outcome, Decision::Outcome::kAdmitted);
  }
  const Decision other =
      controller_.Admit(Statement("SELECT 1 /*route='b'*/"), AttemptKind::kFinal);
  EXPECT_EQ(other.outcome, Decision::Outcome::kRefused);  // another text: its own tags
  EXPECT_EQ(controller_.Admit(Statement(text), AttemptKind::kFinal).outcome,
            Decision::Outcome::kAdmitted);

  // Only `route` was kept for the first rules; these use `tier`.
  Configure(R"([{"name":"b","mode":"enforce","max_concurrent":0}])",
            R"([{"budget":"b","match":{"tier":"x"}}])");
  EXPECT_EQ(controller_.Admit(Statement(text), AttemptKind::kFinal).outcome,
            Decision::Outcome::kRefused);
  controller_.ReleaseAll();
}

}  // namespace
}  // namespace tc
