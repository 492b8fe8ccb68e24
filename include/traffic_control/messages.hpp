// The text clients see: NOTICE and ERROR messages, DETAIL and HINT.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "traffic_control/bucket_table.hpp"
#include "traffic_control/config.hpp"
#include "traffic_control/core_header_guard.hpp"

namespace tc {

struct Report {
  std::string message;
  std::string detail;
  std::string hint;  // empty = no HINT
  // For the server log: the budget, the rule and the limit (LimitName) reported.
  std::string budget;
  std::string rule;
  std::string limit;
};

struct VerdictContext {
  std::string_view prefix;  // traffic_control.message_prefix
  const Budget* budget = nullptr;
  std::string_view rule;                    // name of the rule that put the statement in the budget
  std::string_view each_key;                // the rule's `each` key, empty when none
  std::string_view instance;                // the `each` value
  std::optional<double> predicted_seconds;  // CPU-seconds; none until the estimator knows
  // A max_concurrent refusal of a wait that could never end: the process id
  // of a holder of the budget's units that waits for a lock this
  // transaction holds (0: none).
  std::int64_t stuck_pid = 0;
};

// `<prefix> query blocked by budget "<b>": <limit> exceeded` (refused; a shed
// budget: `... "<b>": shed`, its DETAIL saying for how long) or
// `<prefix> query would be blocked by budget "<b>": <limit> exceeded` (warned),
// with DETAIL naming the rule, the predicted cost, the limit and the level.
// HINT: `retry after <N> ms` for a refusal whose verdict has retry_after_ms >= 0
// (server_share); for a max_concurrent refusal, when to retry; else none.
// A max_concurrent refusal whose wait could never end (the verdict's
// held_by_caller, the context's stuck_pid) says so in the DETAIL, and its
// HINT says what ends it.
Report FormatVerdict(const VerdictContext& context, const BudgetVerdict& verdict, bool refused);

// `<prefix> query canceled by budget "<b>": max_duration_ms exceeded` (cancel)
// or `<prefix> query would be canceled by budget "<b>": max_duration_ms
// exceeded` (warn), with DETAIL naming the rule, the limit and the mode.
Report FormatDurationExceeded(const VerdictContext& context, bool cancel);

// Shortest decimal form of a number for messages ("2", "0.25", "1e-06").
std::string FormatNumber(double value);

}  // namespace tc
