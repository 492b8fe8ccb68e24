// The rows of the status views (traffic_control.budget_status, .rule_status):
// shared-memory state joined with this backend's configuration.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "traffic_control/bucket_table.hpp"
#include "traffic_control/core_header_guard.hpp"
#include "traffic_control/rule_counters.hpp"
#include "traffic_control/ruleset.hpp"

namespace tc {

struct BudgetStatusRow {
  // The budget's mode in the current configuration; nullopt for an instance
  // whose budget is no longer configured (it stays until evicted).
  std::optional<Mode> mode;
  // The configured budget (into the RuleSet given to BuildBudgetStatus);
  // null for an instance whose budget is no longer configured.
  const Budget* config = nullptr;
  // budget, instance and the counters; all zero for a configured budget that
  // has no instance in the table yet (instance absent).
  BucketSnapshot bucket;
};

// Every configured budget in configuration order, each with its instances
// from `buckets` (the one without an `each` value first, then by value) or,
// when it has none, one row of zeros without an instance; then the
// instances of budgets that are not configured (any more), by name and value.
std::vector<BudgetStatusRow> BuildBudgetStatus(const RuleSet& rules,
                                               std::vector<BucketSnapshot> buckets);

// How full the instance is, in percent of its fullest limit that fills over
// time: running units of max_concurrent, and the leaky bucket's debt of its
// capacity (burst_limit x cores) for server_share. A limit of 0 is full
// (100). nullopt when the budget has neither limit. per_query_limit bounds
// single statements, not a level, and does not count.
std::optional<double> UtilizationPercent(const Budget& budget, const BucketSnapshot& bucket,
                                         double server_cores);

struct RuleStatusRow {
  std::string rule;
  std::string budget;
  // Statements the rule put into its budget since the last reset; nullopt
  // when it could not be counted (the counter table is full).
  std::optional<std::uint64_t> matched;
  std::string problem;  // empty = none; several are joined with "; "
};

// One row per configured rule, in configuration order (skipped rules too).
// `counters` may be null (nothing counted yet: every rule matched 0).
std::vector<RuleStatusRow> BuildRuleStatus(const RuleSet& rules,
                                           const std::vector<RuleProblem>& problems,
                                           const RuleCounterTable* counters);

}  // namespace tc
