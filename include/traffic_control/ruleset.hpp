// The backend-local rule set: which budgets apply to a statement's metadata.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "traffic_control/config.hpp"
#include "traffic_control/core_header_guard.hpp"
#include "traffic_control/ip_address.hpp"
#include "traffic_control/metadata.hpp"

namespace tc {

struct RuleProblem {
  std::string rule;     // rule name
  std::string message;  // e.g. "budget \"x\" does not exist; rule skipped"
};

// One budget that applies to a statement.
struct BudgetMatch {
  std::uint32_t budget_index = 0;  // into RuleSet::budgets()
  std::uint32_t rule_index = 0;  // into RuleSet::rules(): the first matching rule, in config order
  bool has_instance = false;     // the rule has `each`
  std::string instance;          // the `each` value when has_instance
};

class RuleSet {
 public:
  RuleSet() = default;

  // Rules that name an unknown budget are skipped and reported in `problems`.
  // Rules of budgets in mode "off" are kept (for status) but never match.
  // rules() keeps every rule, skipped or not, in config order.
  RuleSet(std::vector<Budget> budgets, std::vector<Rule> rules, std::vector<RuleProblem>* problems);

  // Appends to `out` one entry per distinct (budget, instance) that applies,
  // ordered by budget index then instance. Work is proportional to the number of
  // metadata items, the number of distinct remote_address and `prefix` lengths
  // and the candidate rules found (rules whose conditions are all `not` are
  // candidates for every statement), not to the number of rules.
  //
  // A default rule (Rule::is_default) applies only when no non-default rule
  // holds: its conditions and its `each` key present, whatever its budget
  // (an "off" budget or one that does not exist still counts: turning a
  // budget off or misspelling it must not pour its traffic into the default
  // budget). Several default rules may apply together.
  void Match(const Metadata& metadata, std::vector<BudgetMatch>* out) const;

  // True when rule `rule_index` (into rules()) applies to `metadata`: the same
  // test Match() makes, so false for skipped rules, rules of "off" budgets,
  // default rules when another rule holds, and indexes out of range. For
  // explaining a decision; not for the hot path.
  bool RuleMatches(std::size_t rule_index, const Metadata& metadata) const;

  // The roles named under member_of by the rules that can take part in a
  // match, each once, in config order. The server tells the core which of
  // them the current role is a member of (StatementInfo::member_of); empty
  // when no rule tests member_of, so it asks the catalog nothing.
  const std::vector<std::string>& member_of_roles() const { return member_of_roles_; }

  const std::vector<Budget>& budgets() const { return budgets_; }
  const std::vector<Rule>& rules() const { return rules_; }
  // True when no rule can ever match (fast path: nothing to do per statement).
  bool empty() const { return active_rule_count_ == 0; }

  // True when some rule that can match names `key` in a condition or in
  // `each`. Metadata under other keys cannot change any match, so the server
  // does not build it (a handful of keys: a linear scan is fastest).
  bool UsesKey(std::string_view key) const {
    for (const std::string& used : used_keys_) {
      if (used == key) return true;
    }
    return false;
  }
  // UsesKey for kBuiltinKeys[builtin], and whether any key that is not a
  // built-in is used (only then are a statement's tags worth parsing): asked
  // per statement, so answered from flags set when the rules are compiled.
  bool UsesBuiltinKey(BuiltinKey builtin) const {
    return (used_builtin_keys_ >> builtin & 1u) != 0;
  }
  bool UsesTagKeys() const { return uses_tag_keys_; }

 private:
  // The compiled rules and lookup tables (abseil hash maps), defined in
  // ruleset.cpp so that users of this header do not compile abseil. Shared and
  // immutable, so copying a RuleSet is cheap.
  struct Index;

  std::vector<Budget> budgets_;
  std::vector<Rule> rules_;
  std::size_t active_rule_count_ = 0;
  std::vector<std::string> used_keys_;
  std::vector<std::string> member_of_roles_;
  std::uint32_t used_builtin_keys_ = 0;  // bit i: kBuiltinKeys[i]
  bool uses_tag_keys_ = false;
  std::shared_ptr<const Index> index_;
};

}  // namespace tc
