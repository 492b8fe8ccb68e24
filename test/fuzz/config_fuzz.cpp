// libFuzzer target: tc::ParseBudgets and tc::ParseRules, each on the whole
// input (the seeds hold both kinds of document, and a document of one kind is
// a useful wrong input for the other).
//
// Checks, besides ASan/UBSan, per parser: nothing is thrown and no exception
// was turned into an "internal error" message; a failure leaves the output
// untouched and gives a bounded, valid UTF-8 message naming the document;
// validating only (null out / error) gives the same verdict; what parses is
// within the documented schema; and what parses, written back as JSON, parses
// again to the same values.
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "fuzz_check.hpp"
#include "traffic_control/config.hpp"
#include "traffic_control/ip_address.hpp"

namespace {

using Json = nlohmann::json;
using tc_fuzz::Check;
using tc_fuzz::Fail;

// Every message quotes user text cut to 64 bytes and nlohmann's message cut
// to 200, so none can approach this however large the input.
constexpr std::size_t kMaxErrorBytes = 1024;

bool IsValidName(std::string_view name) {
  if (name.empty() || name.size() > tc::kMaxBudgetNameBytes) return false;
  for (const char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '.' || c == '-')) {
      return false;
    }
  }
  return true;
}

bool HasNul(std::string_view text) { return text.find('\0') != std::string_view::npos; }

// A value an optional field may hold: absent is null.
template <typename T>
Json Optional(const std::optional<T>& value) {
  return value.has_value() ? Json(*value) : Json(nullptr);
}

// The checks and the serializer of one document kind.
struct BudgetsKind {
  using Item = tc::Budget;
  static constexpr const char* kName = "budgets";
  static bool Parse(std::string_view json, std::vector<Item>* out, std::string* error) {
    return tc::ParseBudgets(json, out, error);
  }

  static void CheckSchema(const std::vector<Item>& budgets) {
    std::unordered_set<std::string> names;
    for (const tc::Budget& b : budgets) {
      Check(IsValidName(b.name), "invalid budget name accepted", b.name);
      Check(names.insert(b.name).second, "duplicate budget name accepted", b.name);
      Check(b.mode == tc::Mode::kEnforce || b.mode == tc::Mode::kWarn || b.mode == tc::Mode::kOff,
            "mode out of the enum");
      const auto percent = [](const std::optional<double>& v) {
        return !v || (std::isfinite(*v) && *v >= 0 && *v <= 100);
      };
      Check(percent(b.server_share), "server_share out of 0..100", b.name);
      Check(percent(b.warning_threshold), "warning_threshold out of 0..100", b.name);
      Check(std::isfinite(b.burst_limit) && b.burst_limit > 0, "burst_limit not > 0", b.name);
      Check(!b.per_query_limit || (std::isfinite(*b.per_query_limit) && *b.per_query_limit >= 0),
            "per_query_limit not >= 0", b.name);
      Check(!b.max_concurrent || (*b.max_concurrent >= 0 && *b.max_concurrent <= 1000000),
            "max_concurrent out of range", b.name);
      Check(b.queue_timeout_ms >= 0 && b.queue_timeout_ms <= 3600000,
            "queue_timeout_ms out of range", b.name);
      Check(b.cpu_priority >= 0 && b.cpu_priority <= tc::kCpuPriorityIdle,
            "cpu_priority out of range", b.name);
      Check(!b.max_parallel_workers ||
                (*b.max_parallel_workers >= 0 && *b.max_parallel_workers <= 1024),
            "max_parallel_workers out of range", b.name);
    }
  }

  static Json Write(const std::vector<Item>& budgets) {
    Json document = Json::array();
    for (const tc::Budget& b : budgets) {
      document.push_back({
          {"name", b.name},
          {"mode", std::string(tc::ModeName(b.mode))},
          {"server_share", Optional(b.server_share)},
          {"burst_limit", b.burst_limit},
          {"per_query_limit", Optional(b.per_query_limit)},
          {"max_concurrent", Optional(b.max_concurrent)},
          {"warning_threshold", Optional(b.warning_threshold)},
          {"queue_timeout_ms", b.queue_timeout_ms},
          {"cpu_priority",
           b.cpu_priority == tc::kCpuPriorityIdle ? Json("idle") : Json(b.cpu_priority)},
          {"max_parallel_workers", Optional(b.max_parallel_workers)},
          {"max_duration_ms", Optional(b.max_duration_ms)},
          {"quarantine_s", b.quarantine_s},
      });
    }
    return document;
  }

  static bool Same(const Item& a, const Item& b) {
    return a.name == b.name && a.mode == b.mode && a.server_share == b.server_share &&
           a.burst_limit == b.burst_limit && a.per_query_limit == b.per_query_limit &&
           a.max_concurrent == b.max_concurrent && a.warning_threshold == b.warning_threshold &&
           a.queue_timeout_ms == b.queue_timeout_ms && a.cpu_priority == b.cpu_priority &&
           a.max_parallel_workers == b.max_parallel_workers &&
           a.max_duration_ms == b.max_duration_ms && a.quarantine_s == b.quarantine_s;
  }

  static Item Sentinel() {
    tc::Budget budget;
    budget.name = "sentinel";
    return budget;
  }
};

struct RulesKind {
  using Item = tc::Rule;
  static constexpr const char* kName = "rules";
  static bool Parse(std::string_view json, std::vector<Item>* out, std::string* error) {
    return tc::ParseRules(json, out, error);
  }

  static void CheckValue(const std::string& key, const std::string& value) {
    Check(!HasNul(value), "NUL in a match value", key);
    if (key == "remote_address") {
      tc::IpPrefix prefix;
      Check(tc::ParseIpPrefix(value, &prefix), "remote_address value that does not parse", value);
    } else if (key == "command") {
      Check(value == "select" || value == "insert" || value == "update" || value == "delete" ||
                value == "merge" || value == "utility",
            "unknown command accepted", value);
    } else if (key == "query_id") {
      // Canonical decimal: what std::to_string gives back for the number.
      std::int64_t number = 0;
      const auto [end, status] = std::from_chars(value.data(), value.data() + value.size(), number);
      Check(status == std::errc() && end == value.data() + value.size() &&
                std::to_string(number) == value,
            "query_id not canonical", value);
    }
  }

  static void CheckSchema(const std::vector<Item>& rules) {
    std::unordered_set<std::string> names;
    for (const tc::Rule& r : rules) {
      Check(IsValidName(r.name), "invalid rule name accepted", r.name);
      Check(names.insert(r.name).second, "duplicate rule name accepted", r.name);
      Check(!HasNul(r.budget), "NUL in a rule's budget", r.name);
      for (std::size_t i = 0; i < r.match.size(); ++i) {
        const tc::Condition& c = r.match[i];
        Check(!c.key.empty() && c.key.size() <= 64 && !HasNul(c.key), "bad match key", c.key);
        Check(i == 0 || r.match[i - 1].key < c.key, "match keys not sorted and unique", c.key);
        Check(!c.values.empty(), "condition without values", c.key);
        for (std::size_t v = 0; v < c.values.size(); ++v) {
          CheckValue(c.key, c.values[v]);
          for (std::size_t w = 0; w < v; ++w) {
            Check(c.values[w] != c.values[v], "repeated value in a condition", c.key);
          }
        }
      }
      Check(!r.each || (!r.each->empty() && r.each->size() <= 64 && !HasNul(*r.each)),
            "bad each key", r.name);
    }
  }

  static Json Write(const std::vector<Item>& rules) {
    Json document = Json::array();
    for (const tc::Rule& r : rules) {
      Json match = Json::object();
      for (const tc::Condition& c : r.match) {
        switch (c.kind) {
          case tc::MatchKind::kAnyOf:
            match[c.key] = c.values;
            break;
          case tc::MatchKind::kNoneOf:
            match[c.key] = {{"not", c.values}};
            break;
          case tc::MatchKind::kPrefix:
            match[c.key] = {{"prefix", c.values}};
            break;
        }
      }
      Json item = {{"name", r.name}, {"budget", r.budget}, {"match", match}};
      if (r.each) item["each"] = *r.each;
      if (r.is_default) item["default"] = true;
      document.push_back(item);
    }
    return document;
  }

  static bool Same(const Item& a, const Item& b) {
    if (a.name != b.name || a.budget != b.budget || a.each != b.each ||
        a.is_default != b.is_default || a.match.size() != b.match.size()) {
      return false;
    }
    for (std::size_t i = 0; i < a.match.size(); ++i) {
      if (a.match[i].key != b.match[i].key || a.match[i].values != b.match[i].values ||
          a.match[i].kind != b.match[i].kind) {
        return false;
      }
    }
    return true;
  }

  static Item Sentinel() {
    tc::Rule rule;
    rule.name = "sentinel";
    return rule;
  }
};

template <typename Kind>
void CheckParser(std::string_view input) {
  const std::string call = std::string("Parse ") + Kind::kName;
  std::vector<typename Kind::Item> items = {Kind::Sentinel()};
  std::string error;
  bool ok = false;
  tc_fuzz::NoThrow(call, [&] { ok = Kind::Parse(input, &items, &error); });

  bool validated = false;
  tc_fuzz::NoThrow(call, [&] { validated = Kind::Parse(input, nullptr, nullptr); });
  Check(validated == ok, "validating alone gives another verdict", call);

  if (!ok) {
    Check(items.size() == 1 && Kind::Same(items[0], Kind::Sentinel()),
          "a failed parse changed its output", call);
    Check(!error.empty(), "a failure without a message", call);
    Check(error.rfind(Kind::kName, 0) == 0, "a message that does not name the document", error);
    // GuardedParse turns a stray exception into this: a bug it only hides.
    Check(!tc_fuzz::IsInternalError(error), "an exception inside the parser", error);
    Check(error.size() <= kMaxErrorBytes, "an unbounded error message", error.substr(0, 300));
    Check(tc_fuzz::IsValidUtf8(error), "an error message that is not UTF-8", error);
    return;
  }
  Kind::CheckSchema(items);

  // Round trip: the parsed values written back as a document (every field
  // explicit) are accepted and read back as the same values.
  std::string written;
  tc_fuzz::NoThrow("writing the parsed values as JSON",
                   [&] { written = Kind::Write(items).dump(); });
  std::vector<typename Kind::Item> again;
  std::string again_error;
  tc_fuzz::NoThrow(call, [&] { ok = Kind::Parse(written, &again, &again_error); });
  if (!ok) Fail("the parsed values written back do not parse", again_error + " in " + written);
  Check(again.size() == items.size(), "the round trip changed the number of items", written);
  for (std::size_t i = 0; i < items.size(); ++i) {
    Check(Kind::Same(items[i], again[i]), "the round trip changed an item", written);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  CheckParser<BudgetsKind>(input);
  CheckParser<RulesKind>(input);
  return 0;
}
