// The admission decision for one statement: metadata -> rules -> budgets ->
// verdicts -> what the client sees; and the backend's record of what it holds.
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "traffic_control/bucket_table.hpp"
#include "traffic_control/core_header_guard.hpp"
#include "traffic_control/estimator.hpp"
#include "traffic_control/messages.hpp"
#include "traffic_control/metadata.hpp"
#include "traffic_control/ruleset.hpp"

namespace tc {

struct StatementInfo {
  std::string_view text;  // the statement's own text
  std::optional<std::string_view> username, application_name, remote_address, database, command;
  std::optional<std::int64_t> query_id;
  int parallel_workers = 0;
  double plan_cost = -1;    // < 0: none
  double server_cores = 1;  // CPU-seconds per second of a full server
  std::int64_t wall_now_us = 0;
  std::string_view message_prefix;
};

struct Decision {
  enum class Outcome { kAdmitted, kRefused, kMustWait };
  Outcome outcome = Outcome::kAdmitted;
  std::int64_t queue_timeout_ms = 0;
  std::vector<Report> notices;
  Report refusal;
  std::int64_t holding = 0;  // 0 = nothing held
  // A budget with a cost limit applies: measure the statement's CPU time and
  // pass it to Release, so buckets are corrected and the estimator learns.
  bool measure_cpu = false;
  std::optional<double> predicted_seconds;
};

// Fills `metadata` from the statement: built-ins first, then its tags.
void BuildMetadata(const StatementInfo& statement, Metadata* metadata);

class AdmissionController {
 public:
  void SetRuleSet(RuleSet rules) { rules_ = std::move(rules); }
  const RuleSet& rule_set() const { return rules_; }
  bool empty() const { return rules_.empty(); }

  // The shared table; without one nothing is admitted by concurrency (the
  // shim always attaches one).
  void AttachTable(BucketTable* table) { table_ = table; }
  // The estimator's pattern table; without one predictions are unknown.
  void AttachPatterns(PatternTable* patterns) { patterns_ = patterns; }

  // With kWillWait or kRetry, a statement that could wait for a slot gets
  // kMustWait instead of being refused; kFinal never waits.
  Decision Admit(const StatementInfo& statement, AttemptKind attempt);

  // Releases a holding once; returns true when waiters should be woken.
  // `cpu_seconds`: what the statement really used (corrects the buckets'
  // debt); `completed`: it ran to its end, so the estimator learns from it
  // (an error or a cancel would teach it that a heavy pattern is cheap).
  bool Release(std::int64_t holding, std::optional<double> cpu_seconds = std::nullopt,
               bool completed = false);
  bool ReleaseAll();
  std::size_t held_count() const { return holdings_.size(); }

 private:
  RuleSet rules_;
  BucketTable* table_ = nullptr;
  PatternTable* patterns_ = nullptr;
  struct Held {
    std::vector<Holding> holdings;
    std::uint64_t query_id = 0;  // 0: none
    double plan_cost = -1;
    bool learn = false;  // record the CPU time in the estimator
  };
  absl::flat_hash_map<std::int64_t, Held> holdings_;
  std::int64_t next_holding_ = 1;
  // Per-statement scratch, reused to keep the hot path allocation-light.
  Metadata metadata_;
  std::vector<BudgetMatch> matches_;
  std::vector<AdmissionRequest> requests_;
};

}  // namespace tc
