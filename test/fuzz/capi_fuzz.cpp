// libFuzzer target: the configuration entry points of the C API
// (traffic_control/capi.h), as the shim's GUC check hooks and its reload call
// them, with the two settings from the input (each string ended by a
// backslash and one more byte, as FuzzedDataProvider reads them).
//
// Checks, besides ASan/UBSan (an exception escaping the C boundary would end
// the process: the functions are noexcept): each check hook agrees with the
// C++ parser and reports its very message; tc_load_config succeeds exactly
// when both hooks do, and then holds the rule set RuleSet builds (emptiness,
// the rule problems it reports, the weakest enforce cpu_priority); a failed
// load keeps the previous rule set; every message is valid UTF-8 and no
// "internal error".
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "fuzz_check.hpp"
#include "traffic_control/capi.h"
#include "traffic_control/config.hpp"
#include "traffic_control/ruleset.hpp"

namespace {

using tc_fuzz::Check;

constexpr std::size_t kMaxJsonBytes = 4096;

std::vector<std::pair<std::string, std::string>> reported;

void Collect(const char* rule, const char* message) { reported.emplace_back(rule, message); }

void CheckMessage(const std::string& message) {
  Check(!message.empty(), "a failure without a message");
  Check(!tc_fuzz::IsInternalError(message), "an exception inside the core", message);
  Check(tc_fuzz::IsValidUtf8(message), "a message that is not UTF-8", message);
}

// What the loaded rule set must look like: built the way tc_load_config does.
struct Expected {
  bool empty = true;
  int max_cpu_priority = 0;
  std::vector<std::pair<std::string, std::string>> problems;
};

Expected Build(const std::string& budgets_json, const std::string& rules_json) {
  std::vector<tc::Budget> budgets;
  std::vector<tc::Rule> rules;
  tc::ParseBudgets(budgets_json, &budgets, nullptr);
  tc::ParseRules(rules_json, &rules, nullptr);
  std::vector<tc::RuleProblem> problems;
  const tc::RuleSet rule_set(budgets, rules, &problems);
  Expected expected;
  expected.empty = rule_set.empty();
  for (const tc::Budget& budget : rule_set.budgets()) {
    if (budget.mode == tc::Mode::kEnforce) {
      expected.max_cpu_priority = std::max(expected.max_cpu_priority, budget.cpu_priority);
    }
  }
  for (const tc::RuleProblem& problem : problems) {
    expected.problems.emplace_back(problem.rule, problem.message);
  }
  return expected;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider provider(data, size);
  // GUC values are C strings: whatever follows a NUL is not part of them.
  const std::string budgets_json = provider.ConsumeRandomLengthString(kMaxJsonBytes).c_str();
  const std::string rules_json = provider.ConsumeRandomLengthString(kMaxJsonBytes).c_str();

  std::string cpp_error;
  const bool budgets_ok = tc::ParseBudgets(budgets_json, nullptr, &cpp_error);
  Check(tc_check_budgets(budgets_json.c_str()) == budgets_ok,
        "tc_check_budgets disagrees with ParseBudgets");
  if (!budgets_ok) {
    Check(tc_last_error() == cpp_error, "tc_check_budgets reports another message", cpp_error);
    CheckMessage(tc_last_error());
  }
  cpp_error.clear();
  const bool rules_ok = tc::ParseRules(rules_json, nullptr, &cpp_error);
  Check(tc_check_rules(rules_json.c_str()) == rules_ok, "tc_check_rules disagrees with ParseRules");
  if (!rules_ok) {
    Check(tc_last_error() == cpp_error, "tc_check_rules reports another message", cpp_error);
    CheckMessage(tc_last_error());
  }

  // A failed load must keep what was loaded before: load a known state first
  // (only then: each load starts a thread, the slowest part of this target).
  const bool should_load = budgets_ok && rules_ok;
  if (!should_load) {
    Check(tc_load_config(R"([{"name":"b","mode":"enforce","cpu_priority":7}])",
                         R"([{"budget":"b"}])", nullptr),
          "the baseline configuration does not load", tc_last_error());
  }
  reported.clear();
  const bool loaded = tc_load_config(budgets_json.c_str(), rules_json.c_str(), Collect);
  Check(loaded == should_load, "tc_load_config disagrees with the check hooks");
  if (!loaded) {
    CheckMessage(tc_last_error());
    Check(reported.empty(), "a failed load reported rule problems");
    Check(!tc_config_empty() && tc_config_max_cpu_priority() == 7,
          "a failed load replaced the rule set");
    return 0;
  }
  const Expected expected = Build(budgets_json, rules_json);
  Check(tc_config_empty() == expected.empty, "tc_config_empty disagrees with RuleSet::empty");
  Check(tc_config_max_cpu_priority() == expected.max_cpu_priority,
        "tc_config_max_cpu_priority is not the weakest enforce cpu_priority");
  Check(reported == expected.problems, "tc_load_config reported other rule problems");
  return 0;
}
