#include "traffic_control/ruleset.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"

namespace tc {
namespace {

constexpr std::string_view kRemoteAddressKey = "remote_address";
constexpr std::string_view kMemberOfKey = "member_of";
constexpr std::size_t kNoAnchor = static_cast<std::size_t>(-1);

// A (key, value) pair as stored in the index and as looked up. Lookups use
// KeyValueView so that the per-statement path never builds strings.
struct KeyValue {
  std::string key;
  std::string value;
};

struct KeyValueView {
  std::string_view key;
  std::string_view value;

  template <typename H>
  friend H AbslHashValue(H state, const KeyValueView& pair) {
    // absl::string_view, not std::string_view: this abseil build has its own type.
    return H::combine(std::move(state), absl::string_view(pair.key.data(), pair.key.size()),
                      absl::string_view(pair.value.data(), pair.value.size()));
  }
};

KeyValueView View(const KeyValue& pair) { return {pair.key, pair.value}; }
KeyValueView View(const KeyValueView& pair) { return pair; }

// Transparent hash and equality: find() accepts a KeyValueView.
struct KeyValueHash {
  using is_transparent = void;
  template <typename T>
  std::size_t operator()(const T& pair) const {
    return absl::Hash<KeyValueView>{}(View(pair));
  }
};

struct KeyValueEq {
  using is_transparent = void;
  template <typename A, typename B>
  bool operator()(const A& a, const B& b) const {
    const KeyValueView left = View(a);
    const KeyValueView right = View(b);
    return left.key == right.key && left.value == right.value;
  }
};

using RuleIndexes = std::vector<std::uint32_t>;
using AddressBytes = std::array<std::uint8_t, 16>;

struct CompiledCondition {
  std::string key;
  MatchKind kind = MatchKind::kAnyOf;
  bool is_remote_address = false;
  bool is_member_of = false;        // the key may repeat in the metadata
  std::vector<std::string> values;  // when !is_remote_address (prefixes for kPrefix)
  std::vector<IpPrefix> networks;   // when is_remote_address: the values that parse
};

struct CompiledRule {
  // Puts statements in its budget: the budget exists and is not "off", and
  // every condition can hold.
  bool active = false;
  bool is_default = false;
  // A non-default rule whose conditions can all hold, whatever its budget:
  // while it holds, default rules do not apply.
  bool shields_defaults = false;
  // In the index: active, or shielding while some default rule is active.
  bool indexed = false;
  std::uint32_t budget_index = 0;
  std::vector<CompiledCondition> conditions;
  std::optional<std::string> each;
  // The condition the index already proved for a candidate found through it;
  // kNoAnchor for rules that are always candidates.
  std::size_t anchor = kNoAnchor;
};

// All networks of one family and one prefix length, by their masked bytes.
struct CidrTable {
  int prefix_len = 0;
  absl::flat_hash_map<AddressBytes, RuleIndexes> rules_by_network;
};

// The statement's remote_address, parsed at most once and only when needed.
class LazyRemoteAddress {
 public:
  explicit LazyRemoteAddress(const Metadata& metadata) : metadata_(metadata) {}

  // nullptr when the metadata has no remote_address or it does not parse.
  const IpPrefix* Get() {
    if (!parsed_) {
      parsed_ = true;
      const std::string* text = metadata_.Find(kRemoteAddressKey);
      valid_ = text != nullptr && ParseIpPrefix(*text, &address_);
    }
    return valid_ ? &address_ : nullptr;
  }

 private:
  const Metadata& metadata_;
  bool parsed_ = false;
  bool valid_ = false;
  IpPrefix address_;
};

// `value` is one of the condition's values (kPrefix: starts with one).
bool ValueIn(const CompiledCondition& condition, std::string_view value) {
  if (condition.kind == MatchKind::kPrefix) {
    return std::any_of(
        condition.values.begin(), condition.values.end(),
        [value](const std::string& prefix) { return value.substr(0, prefix.size()) == prefix; });
  }
  return std::find(condition.values.begin(), condition.values.end(), value) !=
         condition.values.end();
}

bool ConditionHolds(const CompiledCondition& condition, const Metadata& metadata,
                    LazyRemoteAddress* remote_address) {
  // Whether the statement has the key with a value among the condition's;
  // `not` is its negation, so a statement without the key satisfies `not`.
  bool found = false;
  if (condition.is_remote_address) {
    const IpPrefix* address = remote_address->Get();
    found = address != nullptr && std::any_of(condition.networks.begin(), condition.networks.end(),
                                              [address](const IpPrefix& network) {
                                                return PrefixContains(network, *address);
                                              });
  } else if (condition.is_member_of) {
    found = std::any_of(metadata.begin(), metadata.end(), [&condition](const Metadata::Item& item) {
      return item.first == condition.key && ValueIn(condition, item.second);
    });
  } else {
    const std::string* value = metadata.Find(condition.key);
    found = value != nullptr && ValueIn(condition, *value);
  }
  return condition.kind == MatchKind::kNoneOf ? !found : found;
}

// Every condition except `skip` holds and the `each` key is present. Sets
// `*instance` to the `each` value (nullptr without `each`).
bool RuleHolds(const CompiledRule& rule, const Metadata& metadata, std::size_t skip,
               LazyRemoteAddress* remote_address, const std::string** instance) {
  *instance = nullptr;
  if (rule.each) {
    *instance = metadata.Find(*rule.each);
    if (*instance == nullptr) return false;
  }
  for (std::size_t i = 0; i < rule.conditions.size(); ++i) {
    if (i != skip && !ConditionHolds(rule.conditions[i], metadata, remote_address)) return false;
  }
  return true;
}

template <typename T>
void SortUnique(std::vector<T>* items) {
  std::sort(items->begin(), items->end());
  items->erase(std::unique(items->begin(), items->end()), items->end());
}

// Where a rule's anchor condition puts it in the index.
struct IndexEntry {
  enum class Kind { kValue, kPrefix, kNetwork };
  Kind kind = Kind::kValue;
  KeyValueView key_value;  // kValue and kPrefix
  IpPrefix network;        // kNetwork
};

// The entries a condition contributes to the index, one per distinct value
// (remote_address values that do not parse contribute nothing). A `not`
// condition has none: it holds for statements that have none of its values.
std::vector<IndexEntry> EntriesOf(const CompiledCondition& condition) {
  std::vector<IndexEntry> entries;
  if (condition.kind == MatchKind::kNoneOf) return entries;
  if (condition.is_remote_address) {
    if (condition.kind != MatchKind::kAnyOf) return entries;
    for (const IpPrefix& network : condition.networks) {
      IndexEntry entry;
      entry.kind = IndexEntry::Kind::kNetwork;
      entry.network = network;
      entries.push_back(entry);
    }
    return entries;
  }
  for (const std::string& value : condition.values) {
    IndexEntry entry;
    entry.kind =
        condition.kind == MatchKind::kPrefix ? IndexEntry::Kind::kPrefix : IndexEntry::Kind::kValue;
    entry.key_value = {condition.key, value};
    entries.push_back(entry);
  }
  return entries;
}

CompiledCondition Compile(const Condition& condition, const std::string& rule_name,
                          std::vector<RuleProblem>* problems) {
  CompiledCondition compiled;
  compiled.key = condition.key;
  compiled.kind = condition.kind;
  compiled.is_remote_address = condition.key == kRemoteAddressKey;
  compiled.is_member_of = condition.key == kMemberOfKey;
  if (!compiled.is_remote_address) {
    compiled.values = condition.values;
    SortUnique(&compiled.values);
    return compiled;
  }
  if (condition.kind == MatchKind::kPrefix) {
    // The config parser rejects these; kept as a safety net, never silently.
    if (problems != nullptr) {
      problems->push_back(
          {rule_name, "prefix is not supported for remote_address; rule never matches"});
    }
    return compiled;  // no networks: cannot hold
  }
  for (const std::string& value : condition.values) {
    IpPrefix network;
    if (ParseIpPrefix(value, &network)) {
      if (std::find(compiled.networks.begin(), compiled.networks.end(), network) ==
          compiled.networks.end()) {
        compiled.networks.push_back(network);
      }
    } else if (problems != nullptr) {
      // The config parser rejects these; kept as a safety net, never silently.
      problems->push_back(
          {rule_name, "remote_address \"" + value + "\" is not an address or CIDR; value ignored"});
    }
  }
  return compiled;
}

bool CanHold(const CompiledCondition& condition) {
  if (condition.kind == MatchKind::kNoneOf) return true;
  return condition.is_remote_address ? !condition.networks.empty() : !condition.values.empty();
}

// Shortest prefix first, so Match() can stop at the address's own length.
std::vector<CidrTable> SortedByLength(absl::flat_hash_map<int, CidrTable> tables_by_length) {
  std::vector<CidrTable> tables;
  for (auto& entry : tables_by_length) tables.push_back(std::move(entry.second));
  std::sort(tables.begin(), tables.end(),
            [](const CidrTable& a, const CidrTable& b) { return a.prefix_len < b.prefix_len; });
  return tables;
}

}  // namespace

using KeyValueMap = absl::flat_hash_map<KeyValue, RuleIndexes, KeyValueHash, KeyValueEq>;

struct RuleSet::Index {
  std::vector<CompiledRule> rules;  // parallel to RuleSet::rules_
  RuleIndexes always_candidates;    // indexed rules with no condition to anchor on
  KeyValueMap rules_by_key_value;
  // kPrefix anchors by (key, prefix), and the distinct prefix lengths of
  // each key (ascending): a value is looked up once per length.
  KeyValueMap rules_by_key_prefix;
  absl::flat_hash_map<std::string, std::vector<std::size_t>> prefix_lengths_by_key;
  std::vector<CidrTable> v4_tables;  // one per distinct prefix length
  std::vector<CidrTable> v6_tables;
};

namespace {

// Appends the match of rule `rule_index`, which holds (Match then drops a
// (budget, instance) that an earlier rule already put there).
void AddMatch(const CompiledRule& rule, std::uint32_t rule_index, const std::string* instance,
              std::vector<BudgetMatch>* out) {
  BudgetMatch& match = out->emplace_back();
  match.budget_index = rule.budget_index;
  match.rule_index = rule_index;
  match.has_instance = instance != nullptr;
  if (instance != nullptr) match.instance = *instance;
}

}  // namespace

RuleSet::RuleSet(std::vector<Budget> budgets, std::vector<Rule> rules,
                 std::vector<RuleProblem>* problems)
    : budgets_(std::move(budgets)), rules_(std::move(rules)) {
  auto index = std::make_shared<Index>();

  absl::flat_hash_map<std::string_view, std::uint32_t> budget_by_name;
  for (std::size_t i = 0; i < budgets_.size(); ++i) {
    budget_by_name.emplace(budgets_[i].name, static_cast<std::uint32_t>(i));
  }

  // Compile every rule, skipped ones too: a rule whose budget does not exist
  // still keeps default rules off the statements it holds for.
  bool has_active_default = false;
  index->rules.resize(rules_.size());
  for (std::size_t r = 0; r < rules_.size(); ++r) {
    const Rule& rule = rules_[r];
    CompiledRule& compiled = index->rules[r];
    const auto budget = budget_by_name.find(rule.budget);
    const bool budget_exists = budget != budget_by_name.end();
    if (!budget_exists && problems != nullptr) {
      problems->push_back(
          {rule.name, "budget \"" + rule.budget + "\" does not exist; rule skipped"});
    }
    compiled.is_default = rule.is_default;
    compiled.each = rule.each;
    bool can_hold = true;
    for (const Condition& condition : rule.match) {
      // A skipped rule's values are not reported: the rule is, already.
      compiled.conditions.push_back(
          Compile(condition, rule.name, budget_exists ? problems : nullptr));
      if (!CanHold(compiled.conditions.back())) can_hold = false;
    }
    compiled.shields_defaults = !rule.is_default && can_hold;
    if (!budget_exists) continue;
    compiled.budget_index = budget->second;
    compiled.active = can_hold && budgets_[budget->second].mode != Mode::kOff;
    if (compiled.active) {
      ++active_rule_count_;
      if (compiled.is_default) has_active_default = true;
    }
  }

  // Index the rules that can change a match; count how many share each index
  // entry. Only their keys are "used" (the server builds only those).
  absl::flat_hash_map<KeyValue, std::size_t, KeyValueHash, KeyValueEq> rules_per_key_value;
  absl::flat_hash_map<KeyValue, std::size_t, KeyValueHash, KeyValueEq> rules_per_key_prefix;
  absl::flat_hash_map<std::tuple<bool, int, AddressBytes>, std::size_t> rules_per_network;
  auto note_key = [this](const std::string& key) {
    if (UsesKey(key)) return;
    used_keys_.push_back(key);
    const auto* builtin = std::find(std::begin(kBuiltinKeys), std::end(kBuiltinKeys), key);
    if (builtin == std::end(kBuiltinKeys)) {
      uses_tag_keys_ = true;
    } else {
      used_builtin_keys_ |= 1u << (builtin - std::begin(kBuiltinKeys));
    }
  };
  for (std::size_t r = 0; r < rules_.size(); ++r) {
    CompiledRule& compiled = index->rules[r];
    compiled.indexed = compiled.active || (has_active_default && compiled.shields_defaults);
    if (!compiled.indexed) continue;
    for (const CompiledCondition& condition : compiled.conditions) {
      note_key(condition.key);
      if (condition.is_member_of) {
        for (const std::string& role : condition.values) {
          if (std::find(member_of_roles_.begin(), member_of_roles_.end(), role) ==
              member_of_roles_.end()) {
            member_of_roles_.push_back(role);
          }
        }
      }
      for (const IndexEntry& entry : EntriesOf(condition)) {
        switch (entry.kind) {
          case IndexEntry::Kind::kNetwork:
            ++rules_per_network[{entry.network.is_v6, entry.network.prefix_len,
                                 entry.network.bytes}];
            break;
          case IndexEntry::Kind::kValue:
            ++rules_per_key_value[KeyValue{std::string(entry.key_value.key),
                                           std::string(entry.key_value.value)}];
            break;
          case IndexEntry::Kind::kPrefix:
            ++rules_per_key_prefix[KeyValue{std::string(entry.key_value.key),
                                            std::string(entry.key_value.value)}];
            break;
        }
      }
    }
    if (compiled.each) note_key(*compiled.each);
  }

  // Anchor: the condition whose index entries are shared with the fewest other
  // rules (so a statement finds few candidates that then fail verification).
  // Ties go to an exact value (one lookup), then a prefix (one lookup per
  // length), then remote_address (the address must be parsed), then to the
  // earlier condition. Rules with no condition to anchor on (an empty match,
  // or only `not` conditions) are always candidates.
  absl::flat_hash_map<int, CidrTable> v4_by_length;
  absl::flat_hash_map<int, CidrTable> v6_by_length;
  for (std::size_t r = 0; r < index->rules.size(); ++r) {
    CompiledRule& compiled = index->rules[r];
    if (!compiled.indexed) continue;
    const auto rule_index = static_cast<std::uint32_t>(r);
    std::optional<std::tuple<std::size_t, IndexEntry::Kind, std::size_t>> best_cost;
    for (std::size_t c = 0; c < compiled.conditions.size(); ++c) {
      const std::vector<IndexEntry> entries = EntriesOf(compiled.conditions[c]);
      if (entries.empty()) continue;
      std::size_t shared = 0;
      for (const IndexEntry& entry : entries) {
        switch (entry.kind) {
          case IndexEntry::Kind::kNetwork:
            shared +=
                rules_per_network
                    .find({entry.network.is_v6, entry.network.prefix_len, entry.network.bytes})
                    ->second;
            break;
          case IndexEntry::Kind::kValue:
            shared += rules_per_key_value.find(entry.key_value)->second;
            break;
          case IndexEntry::Kind::kPrefix:
            shared += rules_per_key_prefix.find(entry.key_value)->second;
            break;
        }
      }
      const std::tuple<std::size_t, IndexEntry::Kind, std::size_t> cost{shared, entries[0].kind, c};
      if (!best_cost || cost < *best_cost) best_cost = cost;
    }
    if (!best_cost) {
      index->always_candidates.push_back(rule_index);
      continue;
    }
    compiled.anchor = std::get<2>(*best_cost);
    for (const IndexEntry& entry : EntriesOf(compiled.conditions[compiled.anchor])) {
      switch (entry.kind) {
        case IndexEntry::Kind::kNetwork: {
          auto& tables = entry.network.is_v6 ? v6_by_length : v4_by_length;
          CidrTable& table = tables[entry.network.prefix_len];
          table.prefix_len = entry.network.prefix_len;
          table.rules_by_network[entry.network.bytes].push_back(rule_index);
          break;
        }
        case IndexEntry::Kind::kValue:
          index
              ->rules_by_key_value[KeyValue{std::string(entry.key_value.key),
                                            std::string(entry.key_value.value)}]
              .push_back(rule_index);
          break;
        case IndexEntry::Kind::kPrefix: {
          index
              ->rules_by_key_prefix[KeyValue{std::string(entry.key_value.key),
                                             std::string(entry.key_value.value)}]
              .push_back(rule_index);
          std::vector<std::size_t>& lengths =
              index->prefix_lengths_by_key[std::string(entry.key_value.key)];
          lengths.push_back(entry.key_value.value.size());
          SortUnique(&lengths);
          break;
        }
      }
    }
  }
  index->v4_tables = SortedByLength(std::move(v4_by_length));
  index->v6_tables = SortedByLength(std::move(v6_by_length));
  index_ = std::move(index);
}

void RuleSet::Match(const Metadata& metadata, std::vector<BudgetMatch>* out) const {
  if (empty()) return;
  const Index& index = *index_;

  // Candidates: rule indexes, possibly repeated (a rule anchored on several
  // networks of different lengths). Inline storage avoids the heap for the
  // usual handful.
  absl::InlinedVector<std::uint32_t, 16> candidates(index.always_candidates.begin(),
                                                    index.always_candidates.end());
  if (!index.rules_by_key_value.empty()) {
    for (const auto& [key, value] : metadata) {
      const auto found = index.rules_by_key_value.find(KeyValueView{key, value});
      if (found != index.rules_by_key_value.end()) {
        candidates.insert(candidates.end(), found->second.begin(), found->second.end());
      }
    }
  }
  if (!index.rules_by_key_prefix.empty()) {
    for (const auto& [key, value] : metadata) {
      const auto lengths = index.prefix_lengths_by_key.find(key);
      if (lengths == index.prefix_lengths_by_key.end()) continue;
      for (const std::size_t length : lengths->second) {
        if (length > value.size()) break;
        const auto found = index.rules_by_key_prefix.find(
            KeyValueView{key, std::string_view(value).substr(0, length)});
        if (found != index.rules_by_key_prefix.end()) {
          candidates.insert(candidates.end(), found->second.begin(), found->second.end());
        }
      }
    }
  }
  LazyRemoteAddress remote_address(metadata);
  if (!index.v4_tables.empty() || !index.v6_tables.empty()) {
    if (const IpPrefix* address = remote_address.Get()) {
      for (const CidrTable& table : address->is_v6 ? index.v6_tables : index.v4_tables) {
        // A metadata value that is itself a network only lies inside shorter ones.
        if (table.prefix_len > address->prefix_len) break;
        const auto found =
            table.rules_by_network.find(MaskPrefix(*address, table.prefix_len).bytes);
        if (found != table.rules_by_network.end()) {
          candidates.insert(candidates.end(), found->second.begin(), found->second.end());
        }
      }
    }
  }
  if (candidates.empty()) return;
  // Config order, so the first rule found for a (budget, instance) is reported.
  std::sort(candidates.begin(), candidates.end());
  candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());

  const std::size_t first_new = out->size();
  bool other_rule_held = false;  // a non-default rule holds, whatever its budget
  bool default_candidate = false;
  for (const std::uint32_t rule_index : candidates) {
    const CompiledRule& rule = index.rules[rule_index];
    if (rule.is_default) {
      default_candidate = true;
      continue;
    }
    // A rule indexed only to shield from default rules has nothing more to
    // tell once some rule held.
    if (!rule.active && other_rule_held) continue;
    const std::string* instance = nullptr;
    if (!RuleHolds(rule, metadata, rule.anchor, &remote_address, &instance)) continue;
    other_rule_held = true;
    if (rule.active) AddMatch(rule, rule_index, instance, out);
  }
  if (default_candidate && !other_rule_held) {
    for (const std::uint32_t rule_index : candidates) {
      const CompiledRule& rule = index.rules[rule_index];
      const std::string* instance = nullptr;
      if (rule.is_default && RuleHolds(rule, metadata, rule.anchor, &remote_address, &instance)) {
        AddMatch(rule, rule_index, instance, out);
      }
    }
  }
  if (out->size() - first_new < 2) return;

  // Same (budget, instance) from several rules counts once; every backend
  // acquires budgets in this order. Stable, so the earliest rule stays first.
  const auto key = [](const BudgetMatch& m) {
    return std::tie(m.budget_index, m.has_instance, m.instance);
  };
  const auto begin = out->begin() + static_cast<std::ptrdiff_t>(first_new);
  std::stable_sort(begin, out->end(),
                   [&key](const BudgetMatch& a, const BudgetMatch& b) { return key(a) < key(b); });
  out->erase(
      std::unique(begin, out->end(),
                  [&key](const BudgetMatch& a, const BudgetMatch& b) { return key(a) == key(b); }),
      out->end());
}

bool RuleSet::RuleMatches(std::size_t rule_index, const Metadata& metadata) const {
  if (index_ == nullptr || rule_index >= index_->rules.size()) return false;
  const CompiledRule& rule = index_->rules[rule_index];
  if (!rule.active) return false;
  LazyRemoteAddress remote_address(metadata);
  const std::string* instance = nullptr;
  if (!RuleHolds(rule, metadata, kNoAnchor, &remote_address, &instance)) return false;
  if (!rule.is_default) return true;
  // Every rule, not the index: this is for explaining, not the hot path.
  for (const CompiledRule& other : index_->rules) {
    if (other.shields_defaults &&
        RuleHolds(other, metadata, kNoAnchor, &remote_address, &instance)) {
      return false;
    }
  }
  return true;
}

}  // namespace tc
