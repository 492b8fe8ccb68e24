#include "traffic_control/status.hpp"

#include <algorithm>
#include <cmath>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"

namespace tc {

std::vector<BudgetStatusRow> BuildBudgetStatus(const RuleSet& rules,
                                               std::vector<BucketSnapshot> buckets) {
  const std::vector<Budget>& budgets = rules.budgets();
  absl::flat_hash_map<absl::string_view, std::size_t> budget_index;
  for (std::size_t i = 0; i < budgets.size(); ++i) {
    budget_index.emplace(absl::string_view(budgets[i].name.data(), budgets[i].name.size()), i);
  }
  // Instances by configured budget (kept in the snapshot's order: the one
  // without a value first, then by value); the rest are not configured.
  std::vector<std::vector<BucketSnapshot>> by_budget(budgets.size());
  std::vector<BucketSnapshot> unconfigured;
  for (BucketSnapshot& bucket : buckets) {
    const auto found =
        budget_index.find(absl::string_view(bucket.budget.data(), bucket.budget.size()));
    if (found == budget_index.end()) {
      unconfigured.push_back(std::move(bucket));
    } else {
      by_budget[found->second].push_back(std::move(bucket));
    }
  }
  const auto order = [](const BucketSnapshot& a, const BucketSnapshot& b) {
    if (a.budget != b.budget) return a.budget < b.budget;
    if (a.has_instance != b.has_instance) return !a.has_instance;
    return a.instance < b.instance;
  };

  std::vector<BudgetStatusRow> rows;
  rows.reserve(buckets.size() + budgets.size());
  for (std::size_t i = 0; i < budgets.size(); ++i) {
    std::vector<BucketSnapshot>& instances = by_budget[i];
    if (instances.empty()) {
      BudgetStatusRow& row = rows.emplace_back();
      row.mode = budgets[i].mode;
      row.config = &budgets[i];
      row.bucket.budget = budgets[i].name;
      continue;
    }
    std::sort(instances.begin(), instances.end(), order);
    for (BucketSnapshot& bucket : instances) {
      BudgetStatusRow& row = rows.emplace_back();
      row.mode = budgets[i].mode;
      row.config = &budgets[i];
      row.bucket = std::move(bucket);
    }
  }
  std::sort(unconfigured.begin(), unconfigured.end(), order);
  for (BucketSnapshot& bucket : unconfigured) {
    BudgetStatusRow& row = rows.emplace_back();
    row.bucket = std::move(bucket);
  }
  return rows;
}

std::optional<double> UtilizationPercent(const Budget& budget, const BucketSnapshot& bucket,
                                         double server_cores) {
  std::optional<double> fullest;
  const auto consider = [&fullest](double level, double limit) {
    const double percent = limit > 0 ? std::max(0.0, level) / limit * 100.0 : 100.0;
    if (!fullest || percent > *fullest) fullest = percent;
  };
  if (budget.max_concurrent) {
    consider(static_cast<double>(bucket.active), static_cast<double>(*budget.max_concurrent));
  }
  if (budget.server_share) {
    const double cores = std::isfinite(server_cores) && server_cores > 0 ? server_cores : 1.0;
    consider(bucket.debt_seconds, *budget.server_share > 0 ? budget.burst_limit * cores : 0.0);
  }
  return fullest;
}

std::vector<RuleStatusRow> BuildRuleStatus(const RuleSet& rules,
                                           const std::vector<RuleProblem>& problems,
                                           const RuleCounterTable* counters) {
  // Rules that can match now: their budget exists and is not "off".
  absl::flat_hash_map<absl::string_view, bool> budget_active;
  for (const Budget& budget : rules.budgets()) {
    budget_active.emplace(absl::string_view(budget.name.data(), budget.name.size()),
                          budget.mode != Mode::kOff);
  }
  std::vector<RuleStatusRow> rows;
  rows.reserve(rules.rules().size());
  for (const Rule& rule : rules.rules()) {
    RuleStatusRow& row = rows.emplace_back();
    row.rule = rule.name;
    row.budget = rule.budget;
    row.matched = 0;
    if (counters != nullptr) {
      const std::int32_t slot = counters->Find(rule.name, rule.budget);
      if (slot != RuleCounterTable::kNoSlot) {
        row.matched = counters->Count(slot);
      } else if (counters->full()) {
        // Not counted if it matched; a rule that cannot match has matched 0.
        const auto active =
            budget_active.find(absl::string_view(rule.budget.data(), rule.budget.size()));
        if (active != budget_active.end() && active->second) row.matched = std::nullopt;
      }
    }
    for (const RuleProblem& problem : problems) {
      if (problem.rule != rule.name) continue;
      if (!row.problem.empty()) row.problem += "; ";
      row.problem += problem.message;
    }
    if (!row.matched) {
      if (!row.problem.empty()) row.problem += "; ";
      row.problem +=
          "matched is not counted: the table of rule counters is full (traffic_control.max_buckets "
          "rule and budget pairs since the server started)";
    }
  }
  return rows;
}

}  // namespace tc
