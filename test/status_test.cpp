// The rows of budget_status and rule_status: shared state joined with this
// backend's configuration.
#include "traffic_control/status.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "traffic_control/config.hpp"

namespace tc {
namespace {

RuleSet MakeRuleSet(const std::string& budgets_json, const std::string& rules_json,
                    std::vector<RuleProblem>* problems = nullptr) {
  std::vector<Budget> budgets;
  std::vector<Rule> rules;
  std::string error;
  EXPECT_TRUE(ParseBudgets(budgets_json, &budgets, &error)) << error;
  EXPECT_TRUE(ParseRules(rules_json, &rules, &error)) << error;
  std::vector<RuleProblem> ignored;
  return RuleSet(std::move(budgets), std::move(rules), problems ? problems : &ignored);
}

BucketSnapshot Bucket(const std::string& budget, const std::string* instance = nullptr,
                      std::uint64_t admitted = 0) {
  BucketSnapshot bucket;
  bucket.budget = budget;
  if (instance != nullptr) {
    bucket.has_instance = true;
    bucket.instance = *instance;
  }
  bucket.admitted = admitted;
  return bucket;
}

std::string Describe(const std::vector<BudgetStatusRow>& rows) {
  std::string text;
  for (const BudgetStatusRow& row : rows) {
    text += row.bucket.budget + "/" + (row.bucket.has_instance ? row.bucket.instance : "-") + "/" +
            (row.mode ? std::string(ModeName(*row.mode)) : "null") + "/" +
            std::to_string(row.bucket.admitted) + " ";
  }
  return text;
}

TEST(BudgetStatus, EveryConfiguredBudgetInConfigOrderThenTheUnconfigured) {
  const RuleSet rules = MakeRuleSet(
      R"([{"name":"zeta","mode":"enforce"},{"name":"alpha","mode":"warn"},{"name":"tenant","mode":"enforce"},{"name":"idle","mode":"off"}])",
      "[]");
  const std::string acme = "acme", globex = "globex", old_value = "x";
  // As BucketTable::Snapshot returns them: sorted by budget, then instance.
  std::vector<BucketSnapshot> buckets = {
      Bucket("alpha", nullptr, 3),  Bucket("gone", &old_value, 4), Bucket("removed", nullptr, 5),
      Bucket("tenant", &globex, 2), Bucket("tenant", &acme, 1),    Bucket("zeta", nullptr, 6)};
  EXPECT_EQ(Describe(BuildBudgetStatus(rules, buckets)),
            "zeta/-/enforce/6 alpha/-/warn/3 tenant/acme/enforce/1 tenant/globex/enforce/2 "
            "idle/-/off/0 gone/x/null/4 removed/-/null/5 ");
}

TEST(BudgetStatus, ABudgetNeverMatchedIsOneRowOfZeros) {
  const RuleSet rules =
      MakeRuleSet(R"([{"name":"new","mode":"enforce","max_concurrent":2}])", "[]");
  const std::vector<BudgetStatusRow> rows = BuildBudgetStatus(rules, {});
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].bucket.budget, "new");
  EXPECT_FALSE(rows[0].bucket.has_instance);
  EXPECT_EQ(rows[0].mode, Mode::kEnforce);
  EXPECT_EQ(rows[0].bucket.active, 0);
  EXPECT_EQ(rows[0].bucket.admitted, 0u);
  EXPECT_EQ(rows[0].bucket.last_blocked_at_us, 0);
  EXPECT_EQ(rows[0].bucket.debt_seconds, 0);
}

TEST(BudgetStatus, NoConfigurationListsWhatTheTableHolds) {
  const std::vector<BudgetStatusRow> rows = BuildBudgetStatus(RuleSet(), {Bucket("b")});
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_FALSE(rows[0].mode.has_value());
}

class CounterMemory {
 public:
  explicit CounterMemory(std::uint32_t capacity)
      : words_(RuleCounterTable::RequiredBytes(capacity) / sizeof(std::uint64_t) + 1) {
    RuleCounterTable::Initialize(span(), capacity);
  }
  MemorySpan span() { return MemorySpan{words_.data(), words_.size() * sizeof(std::uint64_t)}; }

 private:
  std::vector<std::uint64_t> words_;
};

TEST(RuleStatus, EveryRuleInConfigOrderWithItsCountAndProblems) {
  std::vector<RuleProblem> problems;
  const RuleSet rules = MakeRuleSet(
      R"([{"name":"b1","mode":"enforce"},{"name":"b2","mode":"off"}])",
      R"([{"name":"second","budget":"b1","match":{"k":"v"}},{"budget":"missing"},{"name":"first","budget":"b2"}])",
      &problems);
  CounterMemory memory(8);
  RuleCounterTable counters(memory.span());
  const std::int32_t slot = counters.Resolve("second", "b1");
  counters.Increment(slot);
  counters.Increment(slot);
  counters.Increment(counters.Resolve("first", "elsewhere"));  // another budget: not this rule's

  const std::vector<RuleStatusRow> rows = BuildRuleStatus(rules, problems, &counters);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].rule, "second");
  EXPECT_EQ(rows[0].budget, "b1");
  EXPECT_EQ(rows[0].matched, 2u);
  EXPECT_EQ(rows[0].problem, "");
  EXPECT_EQ(rows[1].rule, "rule2");
  EXPECT_EQ(rows[1].budget, "missing");
  EXPECT_EQ(rows[1].matched, 0u);
  EXPECT_EQ(rows[1].problem, "budget \"missing\" does not exist; rule skipped");
  EXPECT_EQ(rows[2].rule, "first");
  EXPECT_EQ(rows[2].matched, 0u);
}

TEST(RuleStatus, WithoutCountersEveryRuleHasMatchedNothing) {
  const RuleSet rules = MakeRuleSet(R"([{"name":"b"}])", R"([{"name":"r","budget":"b"}])");
  const std::vector<RuleStatusRow> rows = BuildRuleStatus(rules, {}, nullptr);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].matched, 0u);
}

TEST(RuleStatus, SeveralProblemsOfOneRuleAreJoined) {
  const RuleSet rules = MakeRuleSet(R"([{"name":"b"}])", R"([{"name":"r","budget":"b"}])");
  const std::vector<RuleProblem> problems = {{"r", "one"}, {"other", "not mine"}, {"r", "two"}};
  EXPECT_EQ(BuildRuleStatus(rules, problems, nullptr)[0].problem, "one; two");
}

TEST(RuleStatus, AFullCounterTableSaysWhatIsNotCounted) {
  const RuleSet rules = MakeRuleSet(
      R"([{"name":"b"},{"name":"quiet","mode":"off"}])",
      R"([{"name":"counted","budget":"b"},{"name":"late","budget":"b"},{"name":"never","budget":"quiet"},{"name":"skipped","budget":"missing"}])");
  CounterMemory memory(1);
  RuleCounterTable counters(memory.span());
  counters.Increment(counters.Resolve("counted", "b"));
  ASSERT_TRUE(counters.full());

  const std::vector<RuleStatusRow> rows = BuildRuleStatus(rules, {}, &counters);
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[0].matched, 1u);
  EXPECT_FALSE(rows[1].matched.has_value());  // could match, could not be counted
  EXPECT_NE(rows[1].problem.find("the table of rule counters is full"), std::string::npos);
  EXPECT_EQ(rows[2].matched, 0u);  // an "off" budget's rule never matches
  EXPECT_EQ(rows[2].problem, "");
  EXPECT_EQ(rows[3].matched, 0u);  // a skipped rule never matches
}

TEST(BudgetStatus, RowsOfConfiguredBudgetsPointAtTheirConfiguration) {
  const RuleSet rules = MakeRuleSet(R"([{"name":"a","mode":"enforce","max_concurrent":3}])", "[]");
  const std::vector<BudgetStatusRow> rows = BuildBudgetStatus(rules, {Bucket("a"), Bucket("gone")});
  ASSERT_EQ(rows.size(), 2u);
  ASSERT_NE(rows[0].config, nullptr);
  EXPECT_EQ(rows[0].config->max_concurrent, 3);
  EXPECT_EQ(rows[1].config, nullptr);
}

TEST(BudgetStatus, UtilizationIsTheFullestLimitThatFillsOverTime) {
  std::vector<Budget> budgets;
  std::string error;
  ASSERT_TRUE(ParseBudgets(
      R"([{"name":"c","max_concurrent":4},
          {"name":"s","server_share":50,"burst_limit":2},
          {"name":"both","max_concurrent":10,"server_share":10,"burst_limit":1},
          {"name":"zero","max_concurrent":0},
          {"name":"shed","server_share":0},
          {"name":"per_query_only","per_query_limit":1}])",
      &budgets, &error))
      << error;
  BucketSnapshot bucket = Bucket("x");
  bucket.active = 3;
  bucket.debt_seconds = 1.0;
  EXPECT_DOUBLE_EQ(*UtilizationPercent(budgets[0], bucket, 2), 75.0);   // 3 of 4 running
  EXPECT_DOUBLE_EQ(*UtilizationPercent(budgets[1], bucket, 2), 25.0);   // 1 of 2 s x 2 cores
  EXPECT_DOUBLE_EQ(*UtilizationPercent(budgets[2], bucket, 2), 50.0);   // the bucket: 1 of 2
  EXPECT_DOUBLE_EQ(*UtilizationPercent(budgets[3], bucket, 2), 100.0);  // a limit of 0 is full
  EXPECT_DOUBLE_EQ(*UtilizationPercent(budgets[4], bucket, 2), 100.0);
  EXPECT_FALSE(UtilizationPercent(budgets[5], bucket, 2).has_value());
  // Cores that make no sense count as 1, as in admission.
  EXPECT_DOUBLE_EQ(*UtilizationPercent(budgets[1], bucket, 0), 50.0);
}

}  // namespace
}  // namespace tc
