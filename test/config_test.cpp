#include "traffic_control/config.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace tc {
namespace {

// The error of a budgets document that must fail.
std::string BudgetsError(const std::string& json) {
  std::vector<Budget> budgets;
  std::string error;
  EXPECT_FALSE(ParseBudgets(json, &budgets, &error)) << json;
  return error;
}

// The error of a one-budget document; `fields` follow "name": "b".
std::string OneBudgetError(const std::string& fields) {
  return BudgetsError(R"([{"name": "b", )" + fields + "}]");
}

// A one-budget document that must parse; `fields` follow "name": "b".
Budget OneBudget(const std::string& fields) {
  const std::string json = R"([{"name": "b")" + (fields.empty() ? "" : ", " + fields) + "}]";
  std::vector<Budget> budgets;
  std::string error;
  EXPECT_TRUE(ParseBudgets(json, &budgets, &error)) << json << ": " << error;
  EXPECT_EQ(budgets.size(), 1u) << json;
  return budgets.empty() ? Budget{} : budgets[0];
}

std::string RulesError(const std::string& json) {
  std::vector<Rule> rules;
  std::string error;
  EXPECT_FALSE(ParseRules(json, &rules, &error)) << json;
  return error;
}

std::vector<Rule> Rules(const std::string& json) {
  std::vector<Rule> rules;
  std::string error;
  EXPECT_TRUE(ParseRules(json, &rules, &error)) << json << ": " << error;
  return rules;
}

// The error of a one-rule document whose match object is `match`.
std::string MatchError(const std::string& match) {
  return RulesError(R"([{"budget": "b", "match": )" + match + "}]");
}

// The conditions of a one-rule document whose match object is `match`.
std::vector<Condition> Match(const std::string& match) {
  const std::vector<Rule> rules = Rules(R"([{"budget": "b", "match": )" + match + "}]");
  return rules.empty() ? std::vector<Condition>{} : rules[0].match;
}

// The values of a single-condition match on `key`.
std::vector<std::string> MatchValues(const std::string& key, const std::string& values_json) {
  const std::vector<Condition> match = Match("{\"" + key + "\": " + values_json + "}");
  EXPECT_EQ(match.size(), 1u);
  return match.empty() ? std::vector<std::string>{} : match[0].values;
}

struct ErrorCase {
  std::string input;
  std::string expected_error;
};

// ---------------------------------------------------------------- budgets

TEST(ConfigModeName, NamesEveryMode) {
  EXPECT_EQ(ModeName(Mode::kEnforce), "enforce");
  EXPECT_EQ(ModeName(Mode::kWarn), "warn");
  EXPECT_EQ(ModeName(Mode::kOff), "off");
}

TEST(ConfigBudgets, ParsesTheDesignExample) {
  std::vector<Budget> budgets;
  std::string error;
  ASSERT_TRUE(ParseBudgets(R"([{"name": "best-effort", "mode": "enforce", "server_share": 20,
      "burst_limit": 5, "per_query_limit": 2, "max_concurrent": 2, "warning_threshold": 80,
      "queue_timeout_ms": 0}])",
                           &budgets, &error))
      << error;
  ASSERT_EQ(budgets.size(), 1u);
  const Budget& budget = budgets[0];
  EXPECT_EQ(budget.name, "best-effort");
  EXPECT_EQ(budget.mode, Mode::kEnforce);
  EXPECT_EQ(budget.server_share, 20.0);
  EXPECT_EQ(budget.burst_limit, 5.0);
  EXPECT_EQ(budget.per_query_limit, 2.0);
  EXPECT_EQ(budget.max_concurrent, 2);
  EXPECT_EQ(budget.warning_threshold, 80.0);
  EXPECT_EQ(budget.queue_timeout_ms, 0);
}

TEST(ConfigBudgets, AppliesDefaults) {
  const Budget budget = OneBudget("");
  EXPECT_EQ(budget.name, "b");
  EXPECT_EQ(budget.mode, Mode::kWarn);
  EXPECT_FALSE(budget.server_share.has_value());
  EXPECT_EQ(budget.burst_limit, 1.0);
  EXPECT_FALSE(budget.per_query_limit.has_value());
  EXPECT_FALSE(budget.max_concurrent.has_value());
  EXPECT_FALSE(budget.warning_threshold.has_value());
  EXPECT_EQ(budget.queue_timeout_ms, 0);
}

TEST(ConfigBudgets, TreatsNullAsAbsent) {
  const Budget budget = OneBudget(
      R"("mode": null, "server_share": null, "burst_limit": null, "per_query_limit": null,
         "max_concurrent": null, "warning_threshold": null, "queue_timeout_ms": null)");
  EXPECT_EQ(budget.mode, Mode::kWarn);
  EXPECT_FALSE(budget.server_share.has_value());
  EXPECT_EQ(budget.burst_limit, 1.0);
  EXPECT_FALSE(budget.per_query_limit.has_value());
  EXPECT_FALSE(budget.max_concurrent.has_value());
  EXPECT_FALSE(budget.warning_threshold.has_value());
  EXPECT_EQ(budget.queue_timeout_ms, 0);
  // A required field set to null is missing.
  EXPECT_EQ(BudgetsError(R"([{"name": null}])"), "budgets[0].name: is required");
}

TEST(ConfigBudgets, EmptyOrBlankTextMeansNoBudgets) {
  for (const std::string json : {"", " ", " \t\r\n ", "[]", " [ ] "}) {
    std::vector<Budget> budgets(2);  // replaced, not appended to
    std::string error;
    EXPECT_TRUE(ParseBudgets(json, &budgets, &error)) << "'" << json << "': " << error;
    EXPECT_TRUE(budgets.empty()) << "'" << json << "'";
  }
}

TEST(ConfigBudgets, AcceptsModes) {
  EXPECT_EQ(OneBudget(R"("mode": "enforce")").mode, Mode::kEnforce);
  EXPECT_EQ(OneBudget(R"("mode": "warn")").mode, Mode::kWarn);
  EXPECT_EQ(OneBudget(R"("mode": "off")").mode, Mode::kOff);
}

TEST(ConfigBudgets, AcceptsBoundsOfEveryNumericField) {
  EXPECT_EQ(OneBudget(R"("server_share": 0)").server_share, 0.0);
  EXPECT_EQ(OneBudget(R"("server_share": 100)").server_share, 100.0);
  EXPECT_EQ(OneBudget(R"("server_share": 12.5)").server_share, 12.5);
  EXPECT_EQ(OneBudget(R"("burst_limit": 0.001)").burst_limit, 0.001);
  EXPECT_EQ(OneBudget(R"("burst_limit": 1e9)").burst_limit, 1e9);
  EXPECT_EQ(OneBudget(R"("per_query_limit": 0)").per_query_limit, 0.0);
  EXPECT_EQ(OneBudget(R"("per_query_limit": 1e9)").per_query_limit, 1e9);
  EXPECT_EQ(OneBudget(R"("max_concurrent": 0)").max_concurrent, 0);
  EXPECT_EQ(OneBudget(R"("max_concurrent": 1000000)").max_concurrent, 1000000);
  EXPECT_EQ(OneBudget(R"("max_concurrent": 2.0)").max_concurrent, 2);
  EXPECT_EQ(OneBudget(R"("max_concurrent": 1e3)").max_concurrent, 1000);
  EXPECT_EQ(OneBudget(R"("max_concurrent": -0.0)").max_concurrent, 0);
  EXPECT_EQ(OneBudget(R"("warning_threshold": 0)").warning_threshold, 0.0);
  EXPECT_EQ(OneBudget(R"("warning_threshold": 100)").warning_threshold, 100.0);
  EXPECT_EQ(OneBudget(R"("queue_timeout_ms": 0)").queue_timeout_ms, 0);
  EXPECT_EQ(OneBudget(R"("queue_timeout_ms": 3600000)").queue_timeout_ms, 3600000);
  EXPECT_EQ(OneBudget(R"("queue_timeout_ms": 250.0)").queue_timeout_ms, 250);
}

TEST(ConfigBudgets, RejectsOutOfRangeAndMistypedFields) {
  const std::string share = "budgets[0].server_share: must be a number between 0 and 100";
  const std::string burst = "budgets[0].burst_limit: must be a number greater than 0";
  const std::string per_query =
      "budgets[0].per_query_limit: must be a number greater than or equal to 0";
  const std::string concurrent =
      "budgets[0].max_concurrent: must be an integer between 0 and 1000000";
  const std::string threshold = "budgets[0].warning_threshold: must be a number between 0 and 100";
  const std::string timeout =
      "budgets[0].queue_timeout_ms: must be an integer between 0 and 3600000";
  const std::string mode = R"(budgets[0].mode: must be "enforce", "warn" or "off")";
  const std::string priority =
      R"(budgets[0].cpu_priority: must be an integer between 0 and 19 (a nice value) or "idle")";
  const std::string workers =
      "budgets[0].max_parallel_workers: must be an integer between 0 and 1024";
  const std::string duration =
      "budgets[0].max_duration_ms: must be an integer between 1 and 2147483647";
  const std::string quarantine =
      "budgets[0].quarantine_s: must be a number greater than or equal to 0";
  const std::vector<ErrorCase> cases = {
      {R"("max_duration_ms": 0)", duration},
      {R"("max_duration_ms": -5)", duration},
      {R"("max_duration_ms": 2147483648)", duration},
      {R"("max_duration_ms": 1.5)", duration},
      {R"("max_duration_ms": "100")", duration},
      {R"("quarantine_s": -1)", quarantine},
      {R"("quarantine_s": "60")", quarantine},
      {R"("mode": "Enforce")", mode},
      {R"("mode": "")", mode},
      {R"("mode": 1)", mode},
      {R"("mode": ["warn"])", mode},
      {R"("server_share": -0.001)", share},
      {R"("server_share": 100.5)", share},
      {R"("server_share": "20")", share},
      {R"("server_share": true)", share},
      {R"("server_share": [20])", share},
      {R"("burst_limit": 0)", burst},
      {R"("burst_limit": -1)", burst},
      {R"("burst_limit": false)", burst},
      {R"("burst_limit": "5")", burst},
      {R"("per_query_limit": -0.5)", per_query},
      {R"("per_query_limit": {})", per_query},
      {R"("max_concurrent": -1)", concurrent},
      {R"("max_concurrent": 2.5)", concurrent},
      {R"("max_concurrent": 1000001)", concurrent},
      {R"("max_concurrent": 9223372036854775807)", concurrent},
      {R"("max_concurrent": 9223372036854775808)", concurrent},
      {R"("max_concurrent": 18446744073709551616)", concurrent},
      {R"("max_concurrent": 1e300)", concurrent},
      {R"("max_concurrent": true)", concurrent},
      {R"("max_concurrent": "2")", concurrent},
      {R"("warning_threshold": -1)", threshold},
      {R"("warning_threshold": 101)", threshold},
      {R"("queue_timeout_ms": -1)", timeout},
      {R"("queue_timeout_ms": 3600001)", timeout},
      {R"("queue_timeout_ms": 0.5)", timeout},
      {R"("queue_timeout_ms": "100")", timeout},
      {R"("cpu_priority": -1)", priority},
      {R"("cpu_priority": 20)", priority},
      {R"("cpu_priority": 5.5)", priority},
      {R"("cpu_priority": "10")", priority},
      {R"("cpu_priority": "IDLE")", priority},
      {R"("cpu_priority": "low")", priority},
      {R"("cpu_priority": true)", priority},
      {R"("cpu_priority": ["idle"])", priority},
      {R"("max_parallel_workers": -1)", workers},
      {R"("max_parallel_workers": 1025)", workers},
      {R"("max_parallel_workers": 1.5)", workers},
      {R"("max_parallel_workers": "2")", workers},
  };
  for (const ErrorCase& test_case : cases) {
    EXPECT_EQ(OneBudgetError(test_case.input), test_case.expected_error) << test_case.input;
  }
}

TEST(ConfigBudgets, MaxDurationIsPositiveMilliseconds) {
  EXPECT_FALSE(OneBudget("").max_duration_ms.has_value());
  EXPECT_EQ(OneBudget(R"("max_duration_ms": 1)").max_duration_ms, 1);
  EXPECT_EQ(OneBudget(R"("max_duration_ms": 2147483647)").max_duration_ms, 2147483647);
  EXPECT_EQ(OneBudget("").quarantine_s, 0);
  EXPECT_EQ(OneBudget(R"("quarantine_s": 0)").quarantine_s, 0);
  EXPECT_EQ(OneBudget(R"("quarantine_s": 2.5)").quarantine_s, 2.5);
}

TEST(ConfigBudgets, MaxParallelWorkersIsACount) {
  EXPECT_FALSE(OneBudget("").max_parallel_workers.has_value());
  EXPECT_EQ(OneBudget(R"("max_parallel_workers": 0)").max_parallel_workers, 0);
  EXPECT_EQ(OneBudget(R"("max_parallel_workers": 1024)").max_parallel_workers, 1024);
}

TEST(ConfigBudgets, CpuPriorityIsANiceValueOrIdle) {
  EXPECT_EQ(OneBudget("").cpu_priority, 0);
  EXPECT_EQ(OneBudget(R"("cpu_priority": null)").cpu_priority, 0);
  EXPECT_EQ(OneBudget(R"("cpu_priority": 0)").cpu_priority, 0);
  EXPECT_EQ(OneBudget(R"("cpu_priority": 19)").cpu_priority, 19);
  EXPECT_EQ(OneBudget(R"("cpu_priority": 10.0)").cpu_priority, 10);
  EXPECT_EQ(OneBudget(R"("cpu_priority": "idle")").cpu_priority, kCpuPriorityIdle);
}

TEST(ConfigBudgets, NamesTheItemByIndex) {
  EXPECT_EQ(BudgetsError(R"([{"name": "a"}, {"name": "b"},
                              {"name": "c", "server_share": 101}])"),
            "budgets[2].server_share: must be a number between 0 and 100");
}

TEST(ConfigBudgets, ValidatesNames) {
  EXPECT_EQ(OneBudget("").name, "b");
  const std::string longest(63, 'x');
  std::vector<Budget> budgets;
  std::string error;
  EXPECT_TRUE(
      ParseBudgets(R"([{"name": "Az09_.-"}, {"name": ")" + longest + R"("}])", &budgets, &error))
      << error;
  ASSERT_EQ(budgets.size(), 2u);
  EXPECT_EQ(budgets[1].name, longest);

  EXPECT_EQ(BudgetsError(R"([{"mode": "warn"}])"), "budgets[0].name: is required");
  EXPECT_EQ(BudgetsError(R"([{"name": 7}])"), "budgets[0].name: must be a string");
  EXPECT_EQ(BudgetsError(R"([{"name": ""}])"),
            R"(budgets[0].name: must be 1 to 63 characters of [A-Za-z0-9_.-], not "")");
  EXPECT_EQ(BudgetsError(R"([{"name": "best effort"}])"),
            R"(budgets[0].name: must be 1 to 63 characters of [A-Za-z0-9_.-], not "best effort")");
  EXPECT_EQ(BudgetsError(R"([{"name": "caf\u00e9"}])"),
            "budgets[0].name: must be 1 to 63 characters of [A-Za-z0-9_.-], not \"caf\u00e9\"");
  EXPECT_EQ(BudgetsError(R"([{"name": ")" + std::string(64, 'x') + R"("}])"),
            R"(budgets[0].name: must be 1 to 63 characters of [A-Za-z0-9_.-], not ")" +
                std::string(64, 'x') + "\"");
}

TEST(ConfigBudgets, RejectsDuplicateNames) {
  EXPECT_EQ(BudgetsError(R"([{"name": "x"}, {"name": "y"}, {"name": "z"}, {"name": "x"}])"),
            R"(budgets[3].name: duplicate budget name "x")");
  // Names are case-sensitive.
  std::vector<Budget> budgets;
  std::string error;
  EXPECT_TRUE(ParseBudgets(R"([{"name": "x"}, {"name": "X"}])", &budgets, &error)) << error;
}

TEST(ConfigBudgets, RejectsUnknownFields) {
  EXPECT_EQ(OneBudgetError(R"("max_concurent": 2)"), "budgets[0].max_concurent: unknown field");
  EXPECT_EQ(OneBudgetError(R"("each": "tenant")"), "budgets[0].each: unknown field");
  // Keys that would make the path ambiguous are quoted.
  EXPECT_EQ(OneBudgetError(R"("max concurrent": 2)"),
            R"(budgets[0]["max concurrent"]: unknown field)");
  EXPECT_EQ(OneBudgetError(R"("": 2)"), R"(budgets[0][""]: unknown field)");
  // Unknown fields are reported before other problems of the same item.
  EXPECT_EQ(OneBudgetError(R"("server_share": 500, "zzz": 1)"), "budgets[0].zzz: unknown field");
}

TEST(ConfigBudgets, RejectsInvalidJson) {
  const std::string error = BudgetsError("[{\"name\": \"a\",}]");
  EXPECT_EQ(error.rfind("budgets: invalid JSON: parse error at line 1, column 15:", 0), 0u)
      << error;
  EXPECT_EQ(error.find("json.exception"), std::string::npos) << error;
  EXPECT_EQ(BudgetsError("[1e400]"), "budgets: invalid JSON: number overflow parsing '1e400'");
  // The parser quotes the bad input; the message must stay valid UTF-8.
  const std::string bad_utf8 = BudgetsError("[\"a\xff\"]");
  EXPECT_EQ(bad_utf8.find('\xff'), std::string::npos) << bad_utf8;
  // A huge bad token does not make a huge message.
  EXPECT_LT(BudgetsError("[\"" + std::string(100000, 'a')).size(), 300u);
}

TEST(ConfigBudgets, RejectsDocumentsThatAreNotArrays) {
  for (const std::string json : {"{}", "null", "3", "\"[]\"", "true", R"({"name": "a"})"}) {
    EXPECT_EQ(BudgetsError(json), "budgets: must be a JSON array") << json;
  }
}

TEST(ConfigBudgets, RejectsItemsThatAreNotObjects) {
  EXPECT_EQ(BudgetsError(R"([{"name": "a"}, 3])"), "budgets[1]: must be a JSON object");
  EXPECT_EQ(BudgetsError(R"([null])"), "budgets[0]: must be a JSON object");
  EXPECT_EQ(BudgetsError(R"([["name", "a"]])"), "budgets[0]: must be a JSON object");
}

TEST(ConfigBudgets, LeavesOutputUnchangedOnFailure) {
  std::vector<Budget> budgets(1);
  budgets[0].name = "kept";
  std::string error;
  EXPECT_FALSE(
      ParseBudgets(R"([{"name": "new"}, {"name": "bad", "mode": "x"}])", &budgets, &error));
  ASSERT_EQ(budgets.size(), 1u);
  EXPECT_EQ(budgets[0].name, "kept");
}

TEST(ConfigBudgets, AcceptsNullOutputAndErrorPointers) {
  std::string error;
  EXPECT_TRUE(ParseBudgets(R"([{"name": "a"}])", nullptr, &error));
  EXPECT_FALSE(ParseBudgets(R"([{"name": 1}])", nullptr, nullptr));
}

TEST(ConfigBudgets, SurvivesDeepNesting) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_EQ(OneBudgetError(R"("mode": )" + deep),
            R"(budgets[0].mode: must be "enforce", "warn" or "off")");
  EXPECT_EQ(BudgetsError(std::string(100000, '[')).rfind("budgets: invalid JSON: ", 0), 0u);
}

// ---------------------------------------------------------------- rules

TEST(ConfigRules, ParsesTheDesignExample) {
  const std::vector<Rule> rules = Rules(R"([
      {"name": "export-free", "budget": "best-effort",
       "match": {"route": "/api/export", "tier": ["free", "trial"]}},
      {"name": "per-tenant", "budget": "tenant-share", "match": {"app": "web"}, "each": "tenant"},
      {"budget": "office", "match": {"remote_address": "10.1.0.0/16"}}])");
  ASSERT_EQ(rules.size(), 3u);
  EXPECT_EQ(rules[0].name, "export-free");
  EXPECT_EQ(rules[0].budget, "best-effort");
  ASSERT_EQ(rules[0].match.size(), 2u);
  EXPECT_EQ(rules[0].match[0].key, "route");
  EXPECT_EQ(rules[0].match[0].values, std::vector<std::string>{"/api/export"});
  EXPECT_EQ(rules[0].match[1].key, "tier");
  EXPECT_EQ(rules[0].match[1].values, (std::vector<std::string>{"free", "trial"}));
  EXPECT_FALSE(rules[0].each.has_value());
  EXPECT_EQ(rules[1].each, "tenant");
  EXPECT_EQ(rules[2].name, "rule3");
  ASSERT_EQ(rules[2].match.size(), 1u);
  EXPECT_EQ(rules[2].match[0].key, "remote_address");
  EXPECT_EQ(rules[2].match[0].values, std::vector<std::string>{"10.1.0.0/16"});
}

TEST(ConfigRules, EmptyOrBlankTextMeansNoRules) {
  for (const std::string json : {"", "\n", "[]"}) {
    std::vector<Rule> rules(3);
    std::string error;
    EXPECT_TRUE(ParseRules(json, &rules, &error)) << error;
    EXPECT_TRUE(rules.empty());
  }
}

TEST(ConfigRules, RejectsBadDocuments) {
  EXPECT_EQ(RulesError("[").rfind("rules: invalid JSON: parse error at line 1, column 2:", 0), 0u);
  EXPECT_EQ(RulesError(R"({"budget": "b"})"), "rules: must be a JSON array");
  EXPECT_EQ(RulesError(R"([{"budget": "b"}, "b"])"), "rules[1]: must be a JSON object");
  EXPECT_EQ(RulesError(R"([{"budget": "b", "mach": {}}])"), "rules[0].mach: unknown field");
  EXPECT_EQ(RulesError(R"([{"budget": "b", "mode": "warn"}])"), "rules[0].mode: unknown field");
}

TEST(ConfigRules, GivesDefaultNamesByPosition) {
  const std::vector<Rule> rules =
      Rules(R"([{"budget": "a"}, {"name": "mine", "budget": "a"}, {"name": null, "budget": "a"}])");
  ASSERT_EQ(rules.size(), 3u);
  EXPECT_EQ(rules[0].name, "rule1");
  EXPECT_EQ(rules[1].name, "mine");
  EXPECT_EQ(rules[2].name, "rule3");
}

TEST(ConfigRules, RejectsDuplicateNamesIncludingDefaults) {
  // An explicit name that takes an earlier rule's default name.
  EXPECT_EQ(RulesError(R"([{"budget": "a"}, {"budget": "a"}, {"budget": "a"}, {"budget": "a"},
                           {"name": "rule2", "budget": "a"}])"),
            R"(rules[4].name: duplicate rule name "rule2")");
  // A default name that an earlier rule took explicitly.
  EXPECT_EQ(
      RulesError(R"([{"name": "rule2", "budget": "a"}, {"budget": "a"}])"),
      R"(rules[1].name: duplicate rule name "rule2" (the default name of this unnamed rule))");
  EXPECT_EQ(RulesError(R"([{"name": "x", "budget": "a"}, {"name": "x", "budget": "b"}])"),
            R"(rules[1].name: duplicate rule name "x")");
  // Rule and budget names live in separate namespaces; a rule may take its own default.
  Rules(R"([{"name": "a", "budget": "a"}, {"name": "rule2", "budget": "a"}])");
}

TEST(ConfigRules, ValidatesNames) {
  EXPECT_EQ(RulesError(R"([{"name": 1, "budget": "a"}])"), "rules[0].name: must be a string");
  EXPECT_EQ(RulesError(R"([{"name": "", "budget": "a"}])"),
            R"(rules[0].name: must be 1 to 63 characters of [A-Za-z0-9_.-], not "")");
  EXPECT_EQ(RulesError(R"([{"name": "a/b", "budget": "a"}])"),
            R"(rules[0].name: must be 1 to 63 characters of [A-Za-z0-9_.-], not "a/b")");
  Rules(R"([{"name": ")" + std::string(63, 'r') + R"(", "budget": "a"}])");
}

TEST(ConfigRules, RequiresABudgetButNotAKnownOne) {
  EXPECT_EQ(RulesError(R"([{"match": {}}])"), "rules[0].budget: is required");
  EXPECT_EQ(RulesError(R"([{"budget": null}])"), "rules[0].budget: is required");
  EXPECT_EQ(RulesError(R"([{"budget": ["a"]}])"), "rules[0].budget: must be a string");
  // Whether the budget exists is the rule set's business.
  EXPECT_EQ(Rules(R"([{"budget": "no such budget!"}])").at(0).budget, "no such budget!");
  EXPECT_EQ(RulesError(R"([{"budget": "a\u0000b"}])"),
            "rules[0].budget: must not contain a NUL character");
}

TEST(ConfigRules, AbsentNullOrEmptyMatchMatchesEverything) {
  const std::vector<Rule> rules =
      Rules(R"([{"budget": "a"}, {"budget": "a", "match": null}, {"budget": "a", "match": {}}])");
  ASSERT_EQ(rules.size(), 3u);
  for (const Rule& rule : rules) EXPECT_TRUE(rule.match.empty()) << rule.name;
}

TEST(ConfigRules, AcceptsStringOrArrayValuesSortedByKey) {
  const std::vector<Condition> match =
      Match(R"({"tier": ["free", "trial", "free"], "app": "web", "Zone": ["eu"]})");
  ASSERT_EQ(match.size(), 3u);
  // nlohmann::json orders object members by key, byte-wise.
  EXPECT_EQ(match[0].key, "Zone");
  EXPECT_EQ(match[0].values, std::vector<std::string>{"eu"});
  EXPECT_EQ(match[1].key, "app");
  EXPECT_EQ(match[1].values, std::vector<std::string>{"web"});
  EXPECT_EQ(match[2].key, "tier");
  // Repeated values are dropped, first occurrence kept.
  EXPECT_EQ(match[2].values, (std::vector<std::string>{"free", "trial"}));
  // Empty values are legitimate tag values.
  EXPECT_EQ(MatchValues("route", R"("")"), std::vector<std::string>{""});
}

TEST(ConfigRules, RejectsBadMatchValues) {
  const std::string shapes =
      R"(must be a string, a non-empty array of strings, {"not": ...} or {"prefix": ...})";
  const std::vector<ErrorCase> cases = {
      {R"(["tier"])", "rules[0].match: must be a JSON object"},
      {R"("tier")", "rules[0].match: must be a JSON object"},
      {R"({"tier": 1})", "rules[0].match.tier: " + shapes},
      {R"({"tier": []})", "rules[0].match.tier: " + shapes},
      {R"({"tier": null})", "rules[0].match.tier: " + shapes},
      {R"({"tier": ["free", 2]})", "rules[0].match.tier[1]: must be a string"},
      {R"({"tier": ["free", ["trial"]]})", "rules[0].match.tier[1]: must be a string"},
      {R"({"tier": "a\u0000"})", "rules[0].match.tier: must not contain a NUL character"},
      {R"({"": "x"})", R"(rules[0].match: key "" must be 1 to 64 bytes without NUL characters)"},
      {R"({"k\u0000": "x"})",
       R"(rules[0].match: key "k\u0000" must be 1 to 64 bytes without NUL characters)"},
      {R"({"my key": 1})", R"(rules[0].match["my key"]: )" + shapes},
  };
  for (const ErrorCase& test_case : cases) {
    EXPECT_EQ(MatchError(test_case.input), test_case.expected_error) << test_case.input;
  }
}

TEST(ConfigRules, ParsesNotAndPrefix) {
  const std::vector<Condition> match = Match(
      R"({"route": {"prefix": "/api/"}, "tier": {"not": ["free", "trial", "free"]},
          "zone": {"not": "eu"}, "app": {"prefix": ["web-", "cli-"]}, "plain": "x"})");
  ASSERT_EQ(match.size(), 5u);
  EXPECT_EQ(match[0].key, "app");
  EXPECT_EQ(match[0].kind, MatchKind::kPrefix);
  EXPECT_EQ(match[0].values, (std::vector<std::string>{"web-", "cli-"}));
  EXPECT_EQ(match[1].key, "plain");
  EXPECT_EQ(match[1].kind, MatchKind::kAnyOf);
  EXPECT_EQ(match[2].key, "route");
  EXPECT_EQ(match[2].kind, MatchKind::kPrefix);
  EXPECT_EQ(match[2].values, std::vector<std::string>{"/api/"});
  EXPECT_EQ(match[3].key, "tier");
  EXPECT_EQ(match[3].kind, MatchKind::kNoneOf);
  EXPECT_EQ(match[3].values, (std::vector<std::string>{"free", "trial"}));
  EXPECT_EQ(match[4].kind, MatchKind::kNoneOf);
  EXPECT_EQ(match[4].values, std::vector<std::string>{"eu"});
  // An empty prefix: the key is present, whatever its value.
  EXPECT_EQ(Match(R"({"tenant": {"prefix": ""}})").at(0).values, std::vector<std::string>{""});
  // Built-in values are checked inside `not` as everywhere else.
  EXPECT_EQ(Match(R"({"remote_address": {"not": ["10.0.0.0/8", "::1"]}})").at(0).kind,
            MatchKind::kNoneOf);
  EXPECT_EQ(Match(R"({"query_id": {"not": "007"}})").at(0).values, std::vector<std::string>{"7"});
}

TEST(ConfigRules, RejectsBadNotAndPrefix) {
  const std::string strings = "must be a string or a non-empty array of strings";
  const std::vector<ErrorCase> cases = {
      {R"({"tier": {}})", R"(rules[0].match.tier: must hold exactly one of "not" or "prefix")"},
      {R"({"tier": {"not": "a", "prefix": "b"}})",
       R"(rules[0].match.tier: must hold exactly one of "not" or "prefix")"},
      {R"({"tier": {"a": "b"}})",
       R"(rules[0].match.tier.a: unknown operator (must be "not" or "prefix"))"},
      {R"({"tier": {"NOT": "b"}})",
       R"(rules[0].match.tier.NOT: unknown operator (must be "not" or "prefix"))"},
      {R"({"tier": {"not": []}})", "rules[0].match.tier.not: " + strings},
      {R"({"tier": {"not": 1}})", "rules[0].match.tier.not: " + strings},
      {R"({"tier": {"not": {"prefix": "x"}}})", "rules[0].match.tier.not: " + strings},
      {R"({"tier": {"not": ["a", 2]}})", "rules[0].match.tier.not[1]: must be a string"},
      {R"({"tier": {"prefix": null}})", "rules[0].match.tier.prefix: " + strings},
      {R"({"tier": {"prefix": ["a", "b\u0000"]}})",
       "rules[0].match.tier.prefix[1]: must not contain a NUL character"},
      {R"({"remote_address": {"not": "office"}})",
       R"(rules[0].match.remote_address.not: "office" is not an IP address or CIDR prefix)"},
      {R"({"remote_address": {"prefix": "10.1."}})",
       "rules[0].match.remote_address.prefix: is not supported for remote_address; match a CIDR "
       R"(prefix such as "10.1.0.0/16" instead)"},
      {R"({"command": {"not": ["select", "copy"]}})",
       R"(rules[0].match.command.not[1]: "copy" is not one of select, insert, update, delete, merge, utility)"},
      {R"({"member_of": {"prefix": "app_"}})",
       "rules[0].match.member_of.prefix: is not supported for member_of; name the roles instead"},
  };
  for (const ErrorCase& test_case : cases) {
    EXPECT_EQ(MatchError(test_case.input), test_case.expected_error) << test_case.input;
  }
}

TEST(ConfigRules, ValidatesMemberOf) {
  const std::string longest(63, 'r');
  EXPECT_EQ(MatchValues("member_of", R"(["analysts", ")" + longest + R"("])"),
            (std::vector<std::string>{"analysts", longest}));
  EXPECT_EQ(Match(R"({"member_of": {"not": "admins"}})").at(0).kind, MatchKind::kNoneOf);
  EXPECT_EQ(MatchError(R"({"member_of": ""})"),
            R"(rules[0].match.member_of: "" is not a role name (1 to 63 bytes))");
  EXPECT_EQ(MatchError(R"({"member_of": ["a", ")" + std::string(64, 'r') + R"("]})"),
            R"(rules[0].match.member_of[1]: ")" + std::string(64, 'r') +
                R"(" is not a role name (1 to 63 bytes))");
  EXPECT_EQ(MatchError(R"({"member_of": {"not": [""]}})"),
            R"(rules[0].match.member_of.not[0]: "" is not a role name (1 to 63 bytes))");
  // One statement, several roles: no single value to count by.
  EXPECT_EQ(RulesError(R"([{"budget": "a", "each": "member_of"}])"),
            R"(rules[0].each: "member_of" cannot be used with each (a role can be a member of )"
            "several roles)");
}

TEST(ConfigRules, ParsesDefault) {
  const std::vector<Rule> rules = Rules(
      R"([{"budget": "a", "default": true}, {"budget": "a", "default": false},
          {"budget": "a", "default": null}, {"budget": "a", "match": {"x": "y"}, "default": true}])");
  ASSERT_EQ(rules.size(), 4u);
  EXPECT_TRUE(rules[0].is_default);
  EXPECT_FALSE(rules[1].is_default);
  EXPECT_FALSE(rules[2].is_default);
  EXPECT_TRUE(rules[3].is_default);
  EXPECT_EQ(rules[3].match.size(), 1u);
  for (const std::string bad : {R"("true")", "1", "[]"}) {
    EXPECT_EQ(RulesError(R"([{"budget": "a"}, {"budget": "a", "default": )" + bad + "}]"),
              "rules[1].default: must be true or false")
        << bad;
  }
  // A typo of the field is not silently a normal rule.
  EXPECT_EQ(RulesError(R"([{"budget": "a", "defualt": true}])"), "rules[0].defualt: unknown field");
}

TEST(ConfigRules, LimitsMatchKeysTo64Bytes) {
  const std::string longest(64, 'k');
  EXPECT_EQ(Match("{\"" + longest + "\": \"v\"}").at(0).key, longest);
  const std::string too_long(65, 'k');
  EXPECT_EQ(
      MatchError("{\"" + too_long + "\": \"v\"}"),
      "rules[0].match: key \"" + longest + "...\" must be 1 to 64 bytes without NUL characters");
}

TEST(ConfigRules, ValidatesRemoteAddresses) {
  EXPECT_EQ(MatchValues("remote_address", R"(["10.1.0.0/16", "192.168.1.7", "::1", "fe80::/10",
                                               "2001:db8::/32", "0.0.0.0/0"])"),
            (std::vector<std::string>{"10.1.0.0/16", "192.168.1.7", "::1", "fe80::/10",
                                      "2001:db8::/32", "0.0.0.0/0"}));
  EXPECT_EQ(MatchError(R"({"remote_address": "10.1.2.3/16"})"),
            R"(rules[0].match.remote_address: "10.1.2.3/16" is not an IP address or CIDR prefix)");
  EXPECT_EQ(MatchError(R"({"remote_address": "10.1.0.0/33"})"),
            R"(rules[0].match.remote_address: "10.1.0.0/33" is not an IP address or CIDR prefix)");
  EXPECT_EQ(
      MatchError(R"({"remote_address": ["10.0.0.0/8", "fe80::1/10"]})"),
      R"(rules[0].match.remote_address[1]: "fe80::1/10" is not an IP address or CIDR prefix)");
  EXPECT_EQ(MatchError(R"({"remote_address": ["::/129"]})"),
            R"(rules[0].match.remote_address[0]: "::/129" is not an IP address or CIDR prefix)");
  EXPECT_EQ(MatchError(R"({"remote_address": "office"})"),
            R"(rules[0].match.remote_address: "office" is not an IP address or CIDR prefix)");
  EXPECT_EQ(MatchError(R"({"remote_address": " 10.0.0.1"})"),
            R"(rules[0].match.remote_address: " 10.0.0.1" is not an IP address or CIDR prefix)");
  // A NUL would let inet_pton see only "10.0.0.1".
  EXPECT_EQ(MatchError(R"({"remote_address": "10.0.0.1\u0000junk"})"),
            "rules[0].match.remote_address: must not contain a NUL character");
  // Other keys take any string, even one that looks like a bad address.
  EXPECT_EQ(MatchValues("client", R"("10.1.2.3/16")"), std::vector<std::string>{"10.1.2.3/16"});
}

TEST(ConfigRules, ValidatesCommands) {
  EXPECT_EQ(
      MatchValues("command", R"(["select", "insert", "update", "delete", "merge", "utility"])"),
      (std::vector<std::string>{"select", "insert", "update", "delete", "merge", "utility"}));
  EXPECT_EQ(
      MatchError(R"({"command": "SELECT"})"),
      R"(rules[0].match.command: "SELECT" is not one of select, insert, update, delete, merge, utility)");
  EXPECT_EQ(
      MatchError(R"({"command": ["select", "copy"]})"),
      R"(rules[0].match.command[1]: "copy" is not one of select, insert, update, delete, merge, utility)");
}

TEST(ConfigRules, ValidatesAndCanonicalizesQueryIds) {
  EXPECT_EQ(MatchValues("query_id", R"(["123", "007", "-0", "-00042", "0", "000"])"),
            (std::vector<std::string>{"123", "7", "0", "-42"}));
  EXPECT_EQ(MatchValues("query_id", R"(["9223372036854775807", "-9223372036854775808"])"),
            (std::vector<std::string>{"9223372036854775807", "-9223372036854775808"}));
  for (const std::string bad : {"9223372036854775808", "-9223372036854775809", "+1", " 1", "1 ",
                                "1.0", "", "-", "0x10", "1e3", "abc"}) {
    EXPECT_EQ(MatchError(R"({"query_id": ")" + bad + R"("})"),
              "rules[0].match.query_id: \"" + bad + "\" is not a 64-bit decimal integer")
        << bad;
  }
  // A JSON number is not a string.
  EXPECT_EQ(MatchError(R"({"query_id": 123})"),
            "rules[0].match.query_id: must be a string, a non-empty array of strings, "
            R"({"not": ...} or {"prefix": ...})");
  EXPECT_EQ(MatchError(R"({"query_id": ["1", "x"]})"),
            R"(rules[0].match.query_id[1]: "x" is not a 64-bit decimal integer)");
}

TEST(ConfigRules, ValidatesEach) {
  EXPECT_EQ(Rules(R"([{"budget": "a", "each": "tenant"}])").at(0).each, "tenant");
  EXPECT_FALSE(Rules(R"([{"budget": "a", "each": null}])").at(0).each.has_value());
  const std::string longest(64, 'e');
  EXPECT_EQ(Rules(R"([{"budget": "a", "each": ")" + longest + R"("}])").at(0).each, longest);
  const std::string message =
      "rules[0].each: must be a string of 1 to 64 bytes without NUL characters";
  for (const std::string& each : std::vector<std::string>{
           R"("")", "1", R"(["tenant"])", "\"" + std::string(65, 'e') + "\"", R"("a\u0000")"}) {
    EXPECT_EQ(RulesError(R"([{"budget": "a", "each": )" + each + "}]"), message) << each;
  }
}

TEST(ConfigRules, QuotesLongValuesShortened) {
  const std::string value(200, 'z');
  EXPECT_EQ(MatchError(R"({"command": ")" + value + R"("})"),
            "rules[0].match.command: \"" + std::string(64, 'z') +
                "...\" is not one of select, insert, update, delete, merge, utility");
  // Quotes and control characters are escaped, JSON style.
  EXPECT_EQ(
      MatchError(R"({"command": "a\"b\n"})"),
      R"(rules[0].match.command: "a\"b\n" is not one of select, insert, update, delete, merge, utility)");
}

TEST(ConfigRules, LeavesOutputUnchangedOnFailure) {
  std::vector<Rule> rules(1);
  rules[0].name = "kept";
  std::string error;
  EXPECT_FALSE(ParseRules(R"([{"budget": "a"}, {"budget": 1}])", &rules, &error));
  ASSERT_EQ(rules.size(), 1u);
  EXPECT_EQ(rules[0].name, "kept");
}

// ---------------------------------------------------------------- robustness

constexpr const char* kValidBudgets =
    R"([{"name": "best-effort", "mode": "enforce", "server_share": 20, "burst_limit": 5,
        "per_query_limit": 2, "max_concurrent": 2, "warning_threshold": 80,
        "queue_timeout_ms": 0}, {"name": "b2", "mode": "off"}])";
constexpr const char* kValidRules =
    R"([{"name": "export-free", "budget": "best-effort",
         "match": {"route": "/api/export", "tier": ["free", "trial"]}},
        {"name": "per-tenant", "budget": "tenant-share", "match": {"app": "web"}, "each": "tenant"},
        {"budget": "office", "match": {"remote_address": ["10.1.0.0/16", "::1"],
                                       "command": "select", "query_id": "-0042"}}])";

// Parses `text` both ways; neither may throw, and a failure must explain itself.
void ExpectGracefulParse(const std::string& text) {
  std::vector<Budget> budgets;
  std::vector<Rule> rules;
  std::string error;
  bool ok = false;
  EXPECT_NO_THROW(ok = ParseBudgets(text, &budgets, &error)) << text;
  if (!ok) {
    EXPECT_FALSE(error.empty()) << text;
  }
  error.clear();
  EXPECT_NO_THROW(ok = ParseRules(text, &rules, &error)) << text;
  if (!ok) {
    EXPECT_FALSE(error.empty()) << text;
  }
}

TEST(ConfigRobustness, ValidDocumentsParse) {
  std::vector<Budget> budgets;
  std::vector<Rule> rules;
  std::string error;
  EXPECT_TRUE(ParseBudgets(kValidBudgets, &budgets, &error)) << error;
  EXPECT_TRUE(ParseRules(kValidRules, &rules, &error)) << error;
  EXPECT_EQ(rules.at(2).match.at(1).values, std::vector<std::string>{"-42"});
}

TEST(ConfigRobustness, TruncatedDocumentsNeverThrow) {
  for (const std::string document : {kValidBudgets, kValidRules}) {
    for (std::size_t length = 0; length < document.size(); ++length) {
      ExpectGracefulParse(document.substr(0, length));
    }
  }
}

TEST(ConfigRobustness, MutatedDocumentsNeverThrow) {
  std::mt19937 random(12345);  // fixed seed: failures must reproduce
  std::uniform_int_distribution<int> byte(0, 255);
  for (const std::string document : {kValidBudgets, kValidRules}) {
    std::uniform_int_distribution<std::size_t> position(0, document.size() - 1);
    for (int round = 0; round < 2000; ++round) {
      std::string mutated = document;
      for (int flips = 0; flips < 3; ++flips) {
        mutated[position(random)] = static_cast<char>(byte(random));
      }
      ExpectGracefulParse(mutated);
    }
  }
}

TEST(ConfigRobustness, RandomBytesNeverThrow) {
  std::mt19937 random(67890);
  const std::string json_alphabet = "[]{}\":,0123456789.-+eE truefalsnul\\u\n\t";
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<std::size_t> length(0, 64);
  std::uniform_int_distribution<std::size_t> json_char(0, json_alphabet.size() - 1);
  for (int round = 0; round < 5000; ++round) {
    std::string text;
    const std::size_t size = length(random);
    const bool raw_bytes = round % 2 == 0;
    for (std::size_t i = 0; i < size; ++i) {
      text += raw_bytes ? static_cast<char>(byte(random)) : json_alphabet[json_char(random)];
    }
    ExpectGracefulParse(text);
  }
}

}  // namespace
}  // namespace tc
