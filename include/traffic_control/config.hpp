// Budgets and rules: the JSON schema of traffic_control.budgets / .rules.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "traffic_control/core_header_guard.hpp"

namespace tc {

enum class Mode { kEnforce, kWarn, kOff };
std::string_view ModeName(Mode mode);  // "enforce", "warn", "off"

constexpr std::size_t kMaxBudgetNameBytes = 63;

// Budget::cpu_priority: a nice value 0-19, or the SCHED_IDLE policy, which
// runs only when no other process wants the CPU (weaker than nice 19).
constexpr int kCpuPriorityIdle = 20;

struct Budget {
  std::string name;  // 1-63 of [A-Za-z0-9_.-], unique
  Mode mode = Mode::kWarn;
  std::optional<double> server_share;                // percent 0..100
  double burst_limit = 1.0;                          // seconds of full-server use, > 0
  std::optional<double> per_query_limit;             // seconds of full-server use, >= 0
  std::optional<std::int64_t> max_concurrent;        // >= 0
  std::optional<double> warning_threshold;           // percent 0..100
  std::int64_t queue_timeout_ms = 0;                 // >= 0
  int cpu_priority = 0;                              // nice 0..19, or kCpuPriorityIdle ("idle")
  std::optional<std::int64_t> max_parallel_workers;  // >= 0
  std::optional<std::int64_t> max_duration_ms;       // > 0: cancel (enforce) or warn after
  // >= 0: seconds a pattern stays refused after one of its statements was
  // canceled by max_duration_ms or refused by per_query_limit (0: never).
  double quarantine_s = 0;
};

// How a condition compares the statement's value of its key with `values`.
enum class MatchKind {
  kAnyOf,   // "x" or ["x", "y"]: the key is present and its value is one of them
  kNoneOf,  // {"not": ...}: the key is absent, or its value is none of them
  kPrefix,  // {"prefix": ...}: the key is present and its value starts with one of them
};

struct Condition {
  std::string key;
  std::vector<std::string> values;  // never empty
  MatchKind kind = MatchKind::kAnyOf;
};

struct Rule {
  std::string name;              // given, or "rule<N>" (1-based position)
  std::string budget;            // a budget's name (may be unknown: see RuleSet)
  std::vector<Condition> match;  // all must hold; empty = every statement
  std::optional<std::string> each;
  // "default": true: the rule matches only statements that no other
  // (non-default) rule matches; see RuleSet.
  bool is_default = false;
};

// Parse and validate traffic_control.budgets. On failure returns false and sets
// `error` to "budgets[<index>].<field>: <what is wrong>" (or "budgets: ..." for
// the document itself). Never throws (only std::bad_alloc).
// Empty or all-whitespace text means "[]". On success `*out` is replaced; on
// failure it is left unchanged. `out` and `error` may be null (validate only /
// no message). The first problem in document order is reported; within an item,
// unknown fields first, then the fields in schema order.
bool ParseBudgets(std::string_view json, std::vector<Budget>* out, std::string* error);

// Same for traffic_control.rules ("rules[<index>].<field>: ...", nested as
// "rules[0].match.tier[1]: ..."). Match conditions come out sorted by key
// (byte order, as nlohmann::json stores objects); repeated values within one
// condition are dropped; query_id values are stored in canonical decimal form.
bool ParseRules(std::string_view json, std::vector<Rule>* out, std::string* error);

}  // namespace tc
