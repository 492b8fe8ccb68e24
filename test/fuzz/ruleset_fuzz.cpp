// libFuzzer target: a tc::RuleSet built from fuzzer-provided budgets and rules
// JSON, matched against fuzzer-provided metadata: the built-ins the server
// sets (username, application_name, remote_address, database, query_id,
// command), the tags of a statement's text, and a few tags given directly.
//
// Input (FuzzedDataProvider): budgets JSON, rules JSON, then the metadata, each
// string ended by a backslash and one more byte ("\\" is a backslash; see
// test/fuzz/corpus/ruleset for examples). When the budgets do not parse, every
// budget the rules name is made up, so that invalid budgets still let the
// rules be matched.
//
// Checks, besides ASan/UBSan: nothing is thrown; Match() equals a plain
// reference matcher that tries every rule in order (no index, no anchors);
// RuleMatches() agrees with it rule by rule; metadata under keys for which
// UsesKey() is false changes no match; the UsesBuiltinKey / UsesTagKeys flags
// agree with UsesKey; a copy of the rule set matches the same; Match()
// appends after what its output vector already holds.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "fuzz_check.hpp"
#include "traffic_control/config.hpp"
#include "traffic_control/ip_address.hpp"
#include "traffic_control/metadata.hpp"
#include "traffic_control/ruleset.hpp"
#include "traffic_control/sqlcommenter.hpp"

namespace {

using tc_fuzz::Check;

constexpr std::size_t kMaxJsonBytes = 4096;
constexpr std::size_t kMaxValueBytes = 128;
constexpr int kMaxExtraTags = 4;

std::string Describe(const tc::RuleSet& rule_set, const std::vector<tc::BudgetMatch>& matches) {
  std::string text;
  for (const tc::BudgetMatch& m : matches) {
    text += rule_set.budgets().at(m.budget_index).name;
    if (m.has_instance) text += "[" + m.instance + "]";
    text += ":" + rule_set.rules().at(m.rule_index).name + " ";
  }
  return text;
}

bool SameMatches(const std::vector<tc::BudgetMatch>& a, const std::vector<tc::BudgetMatch>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].budget_index != b[i].budget_index || a[i].rule_index != b[i].rule_index ||
        a[i].has_instance != b[i].has_instance || a[i].instance != b[i].instance) {
      return false;
    }
  }
  return true;
}

// The reference: ruleset.hpp's contract, rule by rule, straight from the
// configuration.
class ReferenceMatcher {
 public:
  ReferenceMatcher(const std::vector<tc::Budget>& budgets, const std::vector<tc::Rule>& rules)
      : budgets_(budgets), rules_(rules) {}

  // The budget a rule puts statements into when it can match at all.
  bool BudgetOf(const tc::Rule& rule, std::uint32_t* index) const {
    for (std::size_t b = 0; b < budgets_.size(); ++b) {
      if (budgets_[b].name == rule.budget) {
        *index = static_cast<std::uint32_t>(b);
        return budgets_[b].mode != tc::Mode::kOff;
      }
    }
    return false;
  }

  // Its conditions and its `each` key hold, whatever its budget.
  bool ConditionsHold(std::size_t r, const tc::Metadata& metadata) const {
    const tc::Rule& rule = rules_[r];
    if (rule.each && metadata.Find(*rule.each) == nullptr) return false;
    for (const tc::Condition& condition : rule.match) {
      if (!ConditionHolds(condition, metadata)) return false;
    }
    return true;
  }

  // Some non-default rule holds (its budget may be off or unknown): default
  // rules then do not apply.
  bool OtherRuleHolds(const tc::Metadata& metadata) const {
    for (std::size_t r = 0; r < rules_.size(); ++r) {
      if (!rules_[r].is_default && ConditionsHold(r, metadata)) return true;
    }
    return false;
  }

  bool RuleHolds(std::size_t r, const tc::Metadata& metadata) const {
    const tc::Rule& rule = rules_[r];
    std::uint32_t budget = 0;
    if (!BudgetOf(rule, &budget)) return false;
    if (!ConditionsHold(r, metadata)) return false;
    return !rule.is_default || !OtherRuleHolds(metadata);
  }

  std::vector<tc::BudgetMatch> Match(const tc::Metadata& metadata) const {
    std::vector<tc::BudgetMatch> matches;
    for (std::size_t r = 0; r < rules_.size(); ++r) {
      if (!RuleHolds(r, metadata)) continue;
      tc::BudgetMatch match;
      BudgetOf(rules_[r], &match.budget_index);
      match.rule_index = static_cast<std::uint32_t>(r);
      if (rules_[r].each) {
        match.has_instance = true;
        match.instance = *metadata.Find(*rules_[r].each);
      }
      bool seen = false;  // the first rule (config order) of a (budget, instance) wins
      for (const tc::BudgetMatch& earlier : matches) {
        seen = seen || Key(earlier) == Key(match);
      }
      if (!seen) matches.push_back(match);
    }
    // Ordered by budget, then instance (no two share both).
    for (std::size_t i = 1; i < matches.size(); ++i) {
      for (std::size_t j = i; j > 0 && Key(matches[j]) < Key(matches[j - 1]); --j) {
        std::swap(matches[j], matches[j - 1]);
      }
    }
    return matches;
  }

 private:
  static std::tuple<std::uint32_t, bool, const std::string&> Key(const tc::BudgetMatch& m) {
    return {m.budget_index, m.has_instance, m.instance};
  }

  // ruleset.hpp / config.hpp: any of the values, none of them (an absent key
  // satisfies "not"), or starting with one; member_of may repeat in the
  // metadata; remote_address compares as an address.
  static bool ConditionHolds(const tc::Condition& condition, const tc::Metadata& metadata) {
    bool found = false;
    if (condition.key == "remote_address") {
      const std::string* value = metadata.Find(condition.key);
      tc::IpPrefix address;
      if (value != nullptr && tc::ParseIpPrefix(*value, &address)) {
        for (const std::string& wanted : condition.values) {
          tc::IpPrefix network;
          found = found ||
                  (tc::ParseIpPrefix(wanted, &network) && tc::PrefixContains(network, address));
        }
      }
    } else if (condition.key == "member_of") {
      for (const auto& item : metadata) {
        if (item.first == condition.key && ValueIn(condition, item.second)) found = true;
      }
    } else {
      const std::string* value = metadata.Find(condition.key);
      found = value != nullptr && ValueIn(condition, *value);
    }
    return condition.kind == tc::MatchKind::kNoneOf ? !found : found;
  }

  static bool ValueIn(const tc::Condition& condition, const std::string& value) {
    for (const std::string& wanted : condition.values) {
      if (condition.kind == tc::MatchKind::kPrefix ? value.compare(0, wanted.size(), wanted) == 0
                                                   : value == wanted) {
        return true;
      }
    }
    return false;
  }

  const std::vector<tc::Budget>& budgets_;
  const std::vector<tc::Rule>& rules_;
};

// Budgets for the rules' budget names, when the fuzzer's budgets are invalid.
std::vector<tc::Budget> MadeUpBudgets(const std::vector<tc::Rule>& rules,
                                      FuzzedDataProvider* provider) {
  std::vector<tc::Budget> budgets;
  for (const tc::Rule& rule : rules) {
    bool known = false;
    for (const tc::Budget& budget : budgets) known = known || budget.name == rule.budget;
    if (known) continue;
    tc::Budget budget;
    budget.name = rule.budget;
    budget.mode = provider->PickValueInArray({tc::Mode::kEnforce, tc::Mode::kWarn, tc::Mode::kOff});
    budgets.push_back(std::move(budget));
  }
  return budgets;
}

std::vector<tc::BudgetMatch> MatchesOf(const tc::RuleSet& rule_set, const tc::Metadata& metadata) {
  std::vector<tc::BudgetMatch> matches;
  tc_fuzz::NoThrow("RuleSet::Match", [&] { rule_set.Match(metadata, &matches); });
  return matches;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider provider(data, size);
  const std::string budgets_json = provider.ConsumeRandomLengthString(kMaxJsonBytes);
  const std::string rules_json = provider.ConsumeRandomLengthString(kMaxJsonBytes);

  std::vector<tc::Budget> budgets;
  std::vector<tc::Rule> rules;
  bool budgets_ok = false;
  tc_fuzz::NoThrow("ParseBudgets",
                   [&] { budgets_ok = tc::ParseBudgets(budgets_json, &budgets, nullptr); });
  tc_fuzz::NoThrow("ParseRules", [&] { tc::ParseRules(rules_json, &rules, nullptr); });
  if (!budgets_ok) budgets = MadeUpBudgets(rules, &provider);

  std::vector<tc::RuleProblem> problems;
  tc::RuleSet rule_set;
  tc_fuzz::NoThrow("RuleSet(budgets, rules)",
                   [&] { rule_set = tc::RuleSet(budgets, rules, &problems); });
  Check(rule_set.rules().size() == rules.size(), "rules() lost rules");
  for (const tc::RuleProblem& problem : problems) {
    bool named = false;
    for (const tc::Rule& rule : rules) named = named || rule.name == problem.rule;
    Check(named, "a problem names no rule", problem.rule);
  }

  // Metadata as the server builds it: built-ins (remote_address and query_id
  // may be absent), then the statement's tags, then tags given directly.
  tc::Metadata metadata;
  for (std::size_t key = 0; key < std::size(tc::kBuiltinKeys); ++key) {
    if (!provider.ConsumeBool()) continue;
    metadata.SetBuiltin(tc::kBuiltinKeys[key], provider.ConsumeRandomLengthString(kMaxValueBytes));
  }
  const std::string statement = provider.ConsumeRandomLengthString(kMaxJsonBytes);
  metadata.AddTags(tc::ParseSqlCommenterTags(statement));
  std::vector<tc::Tag> extra;
  for (int i = 0; i < kMaxExtraTags && provider.remaining_bytes() > 0; ++i) {
    tc::Tag tag;
    tag.key = provider.ConsumeRandomLengthString(tc::kMaxTagKeyBytes);
    tag.value = provider.ConsumeRandomLengthString(kMaxValueBytes);
    extra.push_back(std::move(tag));
  }
  metadata.AddTags(extra);

  const ReferenceMatcher reference(budgets, rules);
  const std::vector<tc::BudgetMatch> matches = MatchesOf(rule_set, metadata);
  const std::vector<tc::BudgetMatch> expected = reference.Match(metadata);
  Check(SameMatches(matches, expected), "Match() differs from the reference",
        "got " + Describe(rule_set, matches) + "; want " + Describe(rule_set, expected));
  if (rule_set.empty()) Check(matches.empty(), "an empty rule set matched");
  // For writing seeds: TC_FUZZ_VERBOSE=1 ruleset_fuzz SEED shows what it matched.
  static const bool verbose = std::getenv("TC_FUZZ_VERBOSE") != nullptr;
  if (verbose) {
    std::fprintf(stderr, "%zu budgets, %zu rules, %zu metadata items, matches: %s\n",
                 budgets.size(), rules.size(), metadata.size(),
                 Describe(rule_set, matches).c_str());
  }

  bool any_rule_can_match = false;
  for (std::size_t r = 0; r <= rules.size(); ++r) {
    bool holds = false;
    tc_fuzz::NoThrow("RuleSet::RuleMatches", [&] { holds = rule_set.RuleMatches(r, metadata); });
    Check(holds == (r < rules.size() && reference.RuleHolds(r, metadata)),
          "RuleMatches() differs from the reference",
          r < rules.size() ? rules[r].name : "past end");
    std::uint32_t budget = 0;
    if (r < rules.size() && reference.BudgetOf(rules[r], &budget)) any_rule_can_match = true;
  }
  // A rule with an empty value list or only unparsable networks can never
  // match, so empty() may be true with such rules; never the other way round.
  if (!any_rule_can_match) Check(rule_set.empty(), "empty() false with no rule that can match");

  // The server builds only the metadata some rule uses: dropping the rest
  // must not change any decision.
  tc::Metadata used;
  bool uses_tag_keys = false;
  for (const auto& [key, value] : metadata) {
    if (rule_set.UsesKey(key)) {
      used.AppendNew(key, value);
      if (!tc::IsBuiltinKey(key)) uses_tag_keys = true;
    }
  }
  Check(SameMatches(MatchesOf(rule_set, used), matches), "metadata no rule uses changed a match");
  if (uses_tag_keys) Check(rule_set.UsesTagKeys(), "UsesTagKeys() false for a used tag key");
  for (std::size_t key = 0; key < std::size(tc::kBuiltinKeys); ++key) {
    Check(rule_set.UsesBuiltinKey(static_cast<tc::BuiltinKey>(key)) ==
              rule_set.UsesKey(tc::kBuiltinKeys[key]),
          "UsesBuiltinKey() and UsesKey() disagree", tc::kBuiltinKeys[key]);
  }

  // Copies share the compiled index; Match() appends.
  const tc::RuleSet copy = rule_set;
  std::vector<tc::BudgetMatch> appended(1);
  appended[0].instance = "already there";
  tc_fuzz::NoThrow("RuleSet::Match", [&] { copy.Match(metadata, &appended); });
  Check(appended[0].instance == "already there", "Match() overwrote its output vector");
  appended.erase(appended.begin());
  Check(SameMatches(appended, matches), "a copy of the rule set matched differently");
  return 0;
}
