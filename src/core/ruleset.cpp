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
  bool is_remote_address = false;
  std::vector<std::string> values;  // when !is_remote_address
  std::vector<IpPrefix> networks;   // when is_remote_address: the values that parse
};

struct CompiledRule {
  bool active = false;  // budget exists, is not "off", and every condition can hold
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

bool ConditionHolds(const CompiledCondition& condition, const Metadata& metadata,
                    LazyRemoteAddress* remote_address) {
  if (condition.is_remote_address) {
    const IpPrefix* address = remote_address->Get();
    if (address == nullptr) return false;
    return std::any_of(
        condition.networks.begin(), condition.networks.end(),
        [address](const IpPrefix& network) { return PrefixContains(network, *address); });
  }
  const std::string* value = metadata.Find(condition.key);
  if (value == nullptr) return false;
  return std::find(condition.values.begin(), condition.values.end(), *value) !=
         condition.values.end();
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
  bool is_remote_address = false;
  KeyValueView key_value;  // when !is_remote_address
  IpPrefix network;        // when is_remote_address
};

// The entries a condition contributes to the index, one per distinct value
// (remote_address values that do not parse contribute nothing).
std::vector<IndexEntry> EntriesOf(const CompiledCondition& condition) {
  std::vector<IndexEntry> entries;
  if (condition.is_remote_address) {
    for (const IpPrefix& network : condition.networks) {
      IndexEntry entry;
      entry.is_remote_address = true;
      entry.network = network;
      entries.push_back(entry);
    }
  } else {
    for (const std::string& value : condition.values) {
      IndexEntry entry;
      entry.key_value = {condition.key, value};
      entries.push_back(entry);
    }
  }
  return entries;
}

CompiledCondition Compile(const Condition& condition, const std::string& rule_name,
                          std::vector<RuleProblem>* problems) {
  CompiledCondition compiled;
  compiled.key = condition.key;
  compiled.is_remote_address = condition.key == kRemoteAddressKey;
  if (!compiled.is_remote_address) {
    compiled.values = condition.values;
    SortUnique(&compiled.values);
    return compiled;
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

struct RuleSet::Index {
  std::vector<CompiledRule> rules;  // parallel to RuleSet::rules_
  RuleIndexes always_candidates;    // active rules with an empty match
  absl::flat_hash_map<KeyValue, RuleIndexes, KeyValueHash, KeyValueEq> rules_by_key_value;
  std::vector<CidrTable> v4_tables;  // one per distinct prefix length
  std::vector<CidrTable> v6_tables;
};

RuleSet::RuleSet(std::vector<Budget> budgets, std::vector<Rule> rules,
                 std::vector<RuleProblem>* problems)
    : budgets_(std::move(budgets)), rules_(std::move(rules)) {
  auto index = std::make_shared<Index>();

  absl::flat_hash_map<std::string_view, std::uint32_t> budget_by_name;
  for (std::size_t i = 0; i < budgets_.size(); ++i) {
    budget_by_name.emplace(budgets_[i].name, static_cast<std::uint32_t>(i));
  }

  // Compile every rule; count how many active rules share each index entry.
  absl::flat_hash_map<KeyValue, std::size_t, KeyValueHash, KeyValueEq> rules_per_key_value;
  absl::flat_hash_map<std::tuple<bool, int, AddressBytes>, std::size_t> rules_per_network;
  index->rules.resize(rules_.size());
  for (std::size_t r = 0; r < rules_.size(); ++r) {
    const Rule& rule = rules_[r];
    CompiledRule& compiled = index->rules[r];
    const auto budget = budget_by_name.find(rule.budget);
    if (budget == budget_by_name.end()) {
      if (problems != nullptr) {
        problems->push_back(
            {rule.name, "budget \"" + rule.budget + "\" does not exist; rule skipped"});
      }
      continue;
    }
    compiled.budget_index = budget->second;
    compiled.each = rule.each;
    compiled.active = budgets_[budget->second].mode != Mode::kOff;
    for (const Condition& condition : rule.match) {
      compiled.conditions.push_back(Compile(condition, rule.name, problems));
      if (!CanHold(compiled.conditions.back())) compiled.active = false;
    }
    if (!compiled.active) continue;
    ++active_rule_count_;
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
    for (const Condition& condition : rule.match) note_key(condition.key);
    if (rule.each) note_key(*rule.each);
    for (const CompiledCondition& condition : compiled.conditions) {
      for (const IndexEntry& entry : EntriesOf(condition)) {
        if (entry.is_remote_address) {
          ++rules_per_network[{entry.network.is_v6, entry.network.prefix_len, entry.network.bytes}];
        } else {
          ++rules_per_key_value[KeyValue{std::string(entry.key_value.key),
                                         std::string(entry.key_value.value)}];
        }
      }
    }
  }

  // Anchor: the condition whose index entries are shared with the fewest other
  // rules (so a statement finds few candidates that then fail verification).
  // Ties go to a non-remote_address condition (no address parsing needed),
  // then to the earlier condition. Rules with an empty match are always
  // candidates.
  absl::flat_hash_map<int, CidrTable> v4_by_length;
  absl::flat_hash_map<int, CidrTable> v6_by_length;
  for (std::size_t r = 0; r < index->rules.size(); ++r) {
    CompiledRule& compiled = index->rules[r];
    if (!compiled.active) continue;
    const auto rule_index = static_cast<std::uint32_t>(r);
    if (compiled.conditions.empty()) {
      index->always_candidates.push_back(rule_index);
      continue;
    }
    std::tuple<std::size_t, bool, std::size_t> best_cost{};
    for (std::size_t c = 0; c < compiled.conditions.size(); ++c) {
      const CompiledCondition& condition = compiled.conditions[c];
      std::size_t shared = 0;
      for (const IndexEntry& entry : EntriesOf(condition)) {
        shared +=
            entry.is_remote_address
                ? rules_per_network
                      .find({entry.network.is_v6, entry.network.prefix_len, entry.network.bytes})
                      ->second
                : rules_per_key_value.find(entry.key_value)->second;
      }
      const std::tuple<std::size_t, bool, std::size_t> cost{shared, condition.is_remote_address, c};
      if (c == 0 || cost < best_cost) best_cost = cost;
    }
    compiled.anchor = std::get<2>(best_cost);
    for (const IndexEntry& entry : EntriesOf(compiled.conditions[compiled.anchor])) {
      if (entry.is_remote_address) {
        auto& tables = entry.network.is_v6 ? v6_by_length : v4_by_length;
        CidrTable& table = tables[entry.network.prefix_len];
        table.prefix_len = entry.network.prefix_len;
        table.rules_by_network[entry.network.bytes].push_back(rule_index);
      } else {
        index
            ->rules_by_key_value[KeyValue{std::string(entry.key_value.key),
                                          std::string(entry.key_value.value)}]
            .push_back(rule_index);
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
  for (const std::uint32_t rule_index : candidates) {
    const CompiledRule& rule = index.rules[rule_index];
    const std::string* instance = nullptr;
    if (!RuleHolds(rule, metadata, rule.anchor, &remote_address, &instance)) continue;
    BudgetMatch& match = out->emplace_back();
    match.budget_index = rule.budget_index;
    match.rule_index = rule_index;
    match.has_instance = instance != nullptr;
    if (instance != nullptr) match.instance = *instance;
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
  return RuleHolds(rule, metadata, kNoAnchor, &remote_address, &instance);
}

}  // namespace tc
