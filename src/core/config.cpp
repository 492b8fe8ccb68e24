// Parsing and validation of the traffic_control.budgets and .rules GUCs.
//
// Everything here runs inside a GUC check hook, so it must never throw (other
// than std::bad_alloc) and must report the first problem in document order with
// a message that names the item and the field, JSON-path style:
//   budgets[2].server_share: must be a number between 0 and 100
#include "traffic_control/config.hpp"

#include <charconv>
#include <cmath>
#include <exception>
#include <initializer_list>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>

#include "traffic_control/ip_address.hpp"

namespace tc {
namespace {

using Json = nlohmann::json;

constexpr std::size_t kMaxMatchKeyBytes = 64;  // same limit as SQLCommenter tag keys
constexpr std::size_t kMaxEachKeyBytes = 64;
constexpr std::int64_t kMaxMaxConcurrent = 1000000;
constexpr std::int64_t kMaxQueueTimeoutMs = 3600000;  // one hour
// User text quoted in a message is cut to this many bytes so that a huge value
// cannot produce a huge log line.
constexpr std::size_t kMaxQuotedBytes = 64;
constexpr std::size_t kMaxJsonErrorBytes = 200;

constexpr double kInfinity = std::numeric_limits<double>::infinity();

struct NumberBounds {
  double min;
  bool min_exclusive;
  double max;  // inclusive
  const char* requirement;
};

constexpr NumberBounds kPercentBounds{0, false, 100, "must be a number between 0 and 100"};
constexpr NumberBounds kPositiveBounds{0, true, kInfinity, "must be a number greater than 0"};
constexpr NumberBounds kNonNegativeBounds{0, false, kInfinity,
                                          "must be a number greater than or equal to 0"};

struct IntegerBounds {
  std::int64_t min;
  std::int64_t max;
  const char* requirement;
};

constexpr IntegerBounds kMaxConcurrentBounds{0, kMaxMaxConcurrent,
                                             "must be an integer between 0 and 1000000"};
constexpr IntegerBounds kQueueTimeoutBounds{0, kMaxQueueTimeoutMs,
                                            "must be an integer between 0 and 3600000"};
constexpr IntegerBounds kMaxParallelWorkersBounds{0, 1024, "must be an integer between 0 and 1024"};
// PostgreSQL's timeouts take an int of milliseconds.
constexpr IntegerBounds kMaxDurationBounds{1, 2147483647,
                                           "must be an integer between 1 and 2147483647"};
constexpr IntegerBounds kCpuPriorityBounds{
    0, kCpuPriorityIdle - 1, "must be an integer between 0 and 19 (a nice value) or \"idle\""};

constexpr std::string_view kRemoteAddressKey = "remote_address";
constexpr std::string_view kMemberOfKey = "member_of";
constexpr std::size_t kMaxRoleNameBytes = 63;  // NAMEDATALEN - 1

constexpr const char* kMatchValueShapes =
    "must be a string, a non-empty array of strings, {\"not\": ...} or {\"prefix\": ...}";
constexpr const char* kStringsShape = "must be a string or a non-empty array of strings";

constexpr const char* kCommandValues[] = {"select", "insert", "update",
                                          "delete", "merge",  "utility"};

bool Fail(std::string* error, std::string message) {
  if (error != nullptr) *error = std::move(message);
  return false;
}

// Length of the well-formed UTF-8 sequence starting at text[pos], or 0 when the
// bytes there are not one (overlong forms, surrogates and > U+10FFFF included).
std::size_t Utf8SequenceLength(std::string_view text, std::size_t pos) {
  const unsigned char lead = static_cast<unsigned char>(text[pos]);
  if (lead < 0x80) return 1;
  std::size_t length = 0;
  unsigned char second_min = 0x80;
  unsigned char second_max = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead == 0xE0) {
    length = 3;
    second_min = 0xA0;
  } else if (lead == 0xED) {
    length = 3;
    second_max = 0x9F;
  } else if (lead >= 0xE1 && lead <= 0xEF) {
    length = 3;
  } else if (lead == 0xF0) {
    length = 4;
    second_min = 0x90;
  } else if (lead >= 0xF1 && lead <= 0xF3) {
    length = 4;
  } else if (lead == 0xF4) {
    length = 4;
    second_max = 0x8F;
  } else {
    return 0;
  }
  if (pos + length > text.size()) return 0;
  for (std::size_t i = 1; i < length; ++i) {
    const unsigned char byte = static_cast<unsigned char>(text[pos + i]);
    const unsigned char min = i == 1 ? second_min : 0x80;
    const unsigned char max = i == 1 ? second_max : 0xBF;
    if (byte < min || byte > max) return 0;
  }
  return length;
}

// nlohmann's messages quote the offending input, which may be invalid UTF-8;
// PostgreSQL messages must not be.
std::string ReplaceInvalidUtf8(std::string_view text) {
  std::string result;
  result.reserve(text.size());
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t length = Utf8SequenceLength(text, pos);
    if (length == 0) {
      result += '?';
      ++pos;
    } else {
      result.append(text.substr(pos, length));
      pos += length;
    }
  }
  return result;
}

// At most `max_bytes` of valid UTF-8 `text`, never splitting a character.
std::string_view Utf8Prefix(std::string_view text, std::size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  std::size_t cut = max_bytes;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return text.substr(0, cut);
}

// `text` as a JSON string literal for a message, shortened when long.
std::string Quote(std::string_view text) {
  const std::string_view shown = Utf8Prefix(text, kMaxQuotedBytes);
  std::string quoted = Json(std::string(shown))
                           .dump(-1, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace);
  if (shown.size() < text.size()) quoted.insert(quoted.size() - 1, "...");
  return quoted;
}

std::string IndexPath(std::string_view parent, std::size_t index) {
  std::string path(parent);
  path += '[';
  path += std::to_string(index);
  path += ']';
  return path;
}

// parent.key for plain keys, parent["odd key"] for anything else, so the path
// stays unambiguous whatever the key contains.
std::string MemberPath(std::string_view parent, std::string_view key) {
  bool plain = !key.empty();
  for (const char c : key) {
    const bool word_char = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                           (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!word_char) plain = false;
  }
  std::string path(parent);
  if (plain) {
    path += '.';
    path += key;
  } else {
    path += '[';
    path += Quote(key);
    path += ']';
  }
  return path;
}

bool IsBlank(std::string_view text) {
  return text.find_first_not_of(" \t\n\r\f\v") == std::string_view::npos;
}

// The PostgreSQL side stores these strings in C strings and text values, which
// cannot hold a NUL byte (and inet_pton would stop at one).
bool ContainsNul(std::string_view text) { return text.find('\0') != std::string_view::npos; }

bool IsValidName(std::string_view name) {
  if (name.empty() || name.size() > kMaxBudgetNameBytes) return false;
  for (const char c : name) {
    const bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                         (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
    if (!allowed) return false;
  }
  return true;
}

// The parser's own explanation of why `text` is not JSON. Only called once the
// non-throwing parse has failed, so the exception is expected here.
std::string DescribeInvalidJson(std::string_view text) {
  std::string message = "unknown error";
  try {
    const Json ignored = Json::parse(text.begin(), text.end());
    static_cast<void>(ignored);
  } catch (const Json::exception& e) {
    message = e.what();
  }
  // Drop nlohmann's "[json.exception.parse_error.101] " tag: noise for a DBA.
  if (!message.empty() && message[0] == '[') {
    const std::size_t tag_end = message.find("] ");
    if (tag_end != std::string::npos) message.erase(0, tag_end + 2);
  }
  message = ReplaceInvalidUtf8(message);
  if (message.size() > kMaxJsonErrorBytes) {
    message = std::string(Utf8Prefix(message, kMaxJsonErrorBytes)) + "...";
  }
  return message;
}

// Parses a whole GUC value into a JSON array. Blank text means "[]".
bool ParseDocument(std::string_view text, std::string_view document_name, Json* document,
                   std::string* error) {
  if (IsBlank(text)) {
    *document = Json::array();
    return true;
  }
  *document = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (document->is_discarded()) {
    return Fail(error, std::string(document_name) + ": invalid JSON: " + DescribeInvalidJson(text));
  }
  if (!document->is_array()) {
    return Fail(error, std::string(document_name) + ": must be a JSON array");
  }
  return true;
}

// Rejects fields outside the schema: they are usually typos of real fields.
bool CheckKnownFields(const Json& object, std::string_view path,
                      std::initializer_list<std::string_view> known_fields, std::string* error) {
  for (const auto& field : object.items()) {
    bool known = false;
    for (const std::string_view known_field : known_fields) {
      if (field.key() == known_field) known = true;
    }
    if (!known) return Fail(error, MemberPath(path, field.key()) + ": unknown field");
  }
  return true;
}

// The field's value, or nullptr when it is absent or JSON null (the same thing).
const Json* FindField(const Json& object, const char* field) {
  const auto it = object.find(field);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

// Booleans are not numbers (nlohmann agrees: is_number() is false for them).
std::optional<double> AsFiniteNumber(const Json& value) {
  if (!value.is_number()) return std::nullopt;
  const double number = value.get<double>();
  if (!std::isfinite(number)) return std::nullopt;
  return number;
}

// An integral JSON number that fits in int64; 2.0 counts, 2.5 does not.
std::optional<std::int64_t> AsInt64(const Json& value) {
  if (value.is_number_unsigned()) {
    const std::uint64_t number = value.get<std::uint64_t>();
    if (number > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      return std::nullopt;
    }
    return static_cast<std::int64_t>(number);
  }
  if (value.is_number_integer()) return value.get<std::int64_t>();
  if (value.is_number_float()) {
    const double number = value.get<double>();
    // -2^63 is exact as a double; 2^63 is the first value that does not fit.
    constexpr double kTwoPow63 = 9223372036854775808.0;
    if (!std::isfinite(number) || std::trunc(number) != number || number < -kTwoPow63 ||
        number >= kTwoPow63) {
      return std::nullopt;
    }
    return static_cast<std::int64_t>(number);
  }
  return std::nullopt;
}

bool ReadOptionalNumber(const Json& object, const char* field, std::string_view path,
                        const NumberBounds& bounds, std::optional<double>* out,
                        std::string* error) {
  const Json* value = FindField(object, field);
  if (value == nullptr) return true;
  const std::optional<double> number = AsFiniteNumber(*value);
  const bool in_range = number.has_value() &&
                        (bounds.min_exclusive ? *number > bounds.min : *number >= bounds.min) &&
                        *number <= bounds.max;
  if (!in_range) return Fail(error, MemberPath(path, field) + ": " + bounds.requirement);
  *out = *number;
  return true;
}

bool ReadOptionalInteger(const Json& object, const char* field, std::string_view path,
                         const IntegerBounds& bounds, std::optional<std::int64_t>* out,
                         std::string* error) {
  const Json* value = FindField(object, field);
  if (value == nullptr) return true;
  const std::optional<std::int64_t> number = AsInt64(*value);
  if (!number.has_value() || *number < bounds.min || *number > bounds.max) {
    return Fail(error, MemberPath(path, field) + ": " + bounds.requirement);
  }
  *out = *number;
  return true;
}

// Reads an optional `name` field shared by budgets and rules. Leaves `name`
// untouched when the field is absent.
bool ReadName(const Json& object, std::string_view path, std::string* name, std::string* error) {
  const Json* value = FindField(object, "name");
  if (value == nullptr) return true;
  const std::string field_path = MemberPath(path, "name");
  if (!value->is_string()) return Fail(error, field_path + ": must be a string");
  const std::string& text = value->get_ref<const std::string&>();
  if (!IsValidName(text)) {
    return Fail(error,
                field_path + ": must be 1 to 63 characters of [A-Za-z0-9_.-], not " + Quote(text));
  }
  *name = text;
  return true;
}

bool ParseMode(const Json& object, std::string_view path, Mode* mode, std::string* error) {
  const Json* value = FindField(object, "mode");
  if (value == nullptr) return true;
  if (value->is_string()) {
    const std::string& text = value->get_ref<const std::string&>();
    for (const Mode candidate : {Mode::kEnforce, Mode::kWarn, Mode::kOff}) {
      if (text == ModeName(candidate)) {
        *mode = candidate;
        return true;
      }
    }
  }
  return Fail(error, MemberPath(path, "mode") + ": must be \"enforce\", \"warn\" or \"off\"");
}

// cpu_priority: an integer nice value 0-19, or "idle".
bool ReadCpuPriority(const Json& item, std::string_view path, int* out, std::string* error) {
  const Json* value = FindField(item, "cpu_priority");
  if (value == nullptr) return true;
  if (value->is_string() && value->get_ref<const std::string&>() == "idle") {
    *out = kCpuPriorityIdle;
    return true;
  }
  std::optional<std::int64_t> nice;
  if (!value->is_string() &&
      ReadOptionalInteger(item, "cpu_priority", path, kCpuPriorityBounds, &nice, nullptr) &&
      nice.has_value()) {
    *out = static_cast<int>(*nice);
    return true;
  }
  return Fail(error, MemberPath(path, "cpu_priority") + ": " + kCpuPriorityBounds.requirement);
}

bool ParseBudget(const Json& item, std::string_view path,
                 std::unordered_set<std::string>* used_names, Budget* budget, std::string* error) {
  if (!item.is_object()) return Fail(error, std::string(path) + ": must be a JSON object");
  if (!CheckKnownFields(item, path,
                        {"name", "mode", "server_share", "burst_limit", "per_query_limit",
                         "max_concurrent", "warning_threshold", "queue_timeout_ms", "cpu_priority",
                         "max_parallel_workers", "max_duration_ms", "quarantine_s"},
                        error)) {
    return false;
  }
  if (FindField(item, "name") == nullptr) {
    return Fail(error, MemberPath(path, "name") + ": is required");
  }
  if (!ReadName(item, path, &budget->name, error)) return false;
  if (!used_names->insert(budget->name).second) {
    return Fail(error, MemberPath(path, "name") + ": duplicate budget name " + Quote(budget->name));
  }
  if (!ParseMode(item, path, &budget->mode, error)) return false;
  if (!ReadOptionalNumber(item, "server_share", path, kPercentBounds, &budget->server_share,
                          error)) {
    return false;
  }
  std::optional<double> burst_limit;
  if (!ReadOptionalNumber(item, "burst_limit", path, kPositiveBounds, &burst_limit, error)) {
    return false;
  }
  if (burst_limit.has_value()) budget->burst_limit = *burst_limit;
  if (!ReadOptionalNumber(item, "per_query_limit", path, kNonNegativeBounds,
                          &budget->per_query_limit, error)) {
    return false;
  }
  if (!ReadOptionalInteger(item, "max_concurrent", path, kMaxConcurrentBounds,
                           &budget->max_concurrent, error)) {
    return false;
  }
  if (!ReadOptionalNumber(item, "warning_threshold", path, kPercentBounds,
                          &budget->warning_threshold, error)) {
    return false;
  }
  std::optional<std::int64_t> queue_timeout_ms;
  if (!ReadOptionalInteger(item, "queue_timeout_ms", path, kQueueTimeoutBounds, &queue_timeout_ms,
                           error)) {
    return false;
  }
  if (queue_timeout_ms.has_value()) budget->queue_timeout_ms = *queue_timeout_ms;
  if (!ReadCpuPriority(item, path, &budget->cpu_priority, error)) return false;
  if (!ReadOptionalInteger(item, "max_parallel_workers", path, kMaxParallelWorkersBounds,
                           &budget->max_parallel_workers, error)) {
    return false;
  }
  if (!ReadOptionalInteger(item, "max_duration_ms", path, kMaxDurationBounds,
                           &budget->max_duration_ms, error)) {
    return false;
  }
  std::optional<double> quarantine_s;
  if (!ReadOptionalNumber(item, "quarantine_s", path, kNonNegativeBounds, &quarantine_s, error)) {
    return false;
  }
  if (quarantine_s.has_value()) budget->quarantine_s = *quarantine_s;
  return true;
}

// Checks one match value for a built-in key and puts it in the form the rule
// set compares against (query ids are canonical decimal).
bool NormalizeMatchValue(std::string_view key, std::string_view path, std::string* value,
                         std::string* error) {
  if (ContainsNul(*value)) {
    return Fail(error, std::string(path) + ": must not contain a NUL character");
  }
  if (key == kRemoteAddressKey) {
    IpPrefix prefix;
    if (!ParseIpPrefix(*value, &prefix)) {
      return Fail(
          error, std::string(path) + ": " + Quote(*value) + " is not an IP address or CIDR prefix");
    }
  } else if (key == "command") {
    bool known = false;
    for (const char* command : kCommandValues) {
      if (*value == command) known = true;
    }
    if (!known) {
      return Fail(error, std::string(path) + ": " + Quote(*value) +
                             " is not one of select, insert, update, delete, merge, utility");
    }
  } else if (key == kMemberOfKey) {
    // What get_role_oid() can look up: a name PostgreSQL can store.
    if (value->empty() || value->size() > kMaxRoleNameBytes) {
      return Fail(error,
                  std::string(path) + ": " + Quote(*value) + " is not a role name (1 to 63 bytes)");
    }
  } else if (key == "query_id") {
    // from_chars accepts exactly [-]digits (no '+', no spaces) and reports overflow.
    std::int64_t query_id = 0;
    const char* begin = value->data();
    const char* end = begin + value->size();
    const auto [stop, status] = std::from_chars(begin, end, query_id);
    if (value->empty() || status != std::errc() || stop != end) {
      return Fail(error,
                  std::string(path) + ": " + Quote(*value) + " is not a 64-bit decimal integer");
    }
    *value = std::to_string(query_id);
  }
  return true;
}

// One string or a non-empty array of strings at `path`, added to
// condition->values (equal values once). `normalize`: each is a value the key
// can have, checked as such; otherwise (prefixes) any text without NUL.
// `shape` is the message for a value of another JSON type.
bool ParseValues(const std::string& key, const Json& value, const std::string& path, bool normalize,
                 const char* shape, Condition* condition, std::string* error) {
  // Keeps the first of equal values so the rule set never indexes one twice.
  const auto add_value = [condition](std::string text) {
    for (const std::string& existing : condition->values) {
      if (existing == text) return;
    }
    condition->values.push_back(std::move(text));
  };
  const auto check = [&](std::string* text, const std::string& text_path) {
    if (normalize) return NormalizeMatchValue(key, text_path, text, error);
    if (ContainsNul(*text)) return Fail(error, text_path + ": must not contain a NUL character");
    return true;
  };
  if (value.is_string()) {
    std::string text = value.get<std::string>();
    if (!check(&text, path)) return false;
    add_value(std::move(text));
    return true;
  }
  if (!value.is_array() || value.empty()) return Fail(error, path + ": " + shape);
  for (std::size_t i = 0; i < value.size(); ++i) {
    const Json& element = value.at(i);
    const std::string element_path = IndexPath(path, i);
    if (!element.is_string()) return Fail(error, element_path + ": must be a string");
    std::string text = element.get<std::string>();
    if (!check(&text, element_path)) return false;
    add_value(std::move(text));
  }
  return true;
}

bool ParseCondition(const std::string& key, const Json& value, std::string_view match_path,
                    Condition* condition, std::string* error) {
  const std::string path = MemberPath(match_path, key);
  if (key.empty() || key.size() > kMaxMatchKeyBytes || ContainsNul(key)) {
    return Fail(error, std::string(match_path) + ": key " + Quote(key) +
                           " must be 1 to 64 bytes without NUL characters");
  }
  condition->key = key;
  if (!value.is_object()) {
    condition->kind = MatchKind::kAnyOf;
    return ParseValues(key, value, path, /*normalize=*/true, kMatchValueShapes, condition, error);
  }
  // {"not": ...} or {"prefix": ...}: one operator, so that what the rule
  // means never depends on how two of them would combine.
  if (value.size() != 1) {
    return Fail(error, path + ": must hold exactly one of \"not\" or \"prefix\"");
  }
  const auto operation = value.items().begin();
  const std::string operation_path = MemberPath(path, operation.key());
  if (operation.key() == "not") {
    condition->kind = MatchKind::kNoneOf;
    return ParseValues(key, operation.value(), operation_path, /*normalize=*/true, kStringsShape,
                       condition, error);
  }
  if (operation.key() == "prefix") {
    // An address's text form has no useful prefixes (10.1.0.0/16 covers
    // 10.1.x.y, "10.1" also 10.10.x.y); a role's membership is not a string.
    if (key == kRemoteAddressKey) {
      return Fail(error, operation_path +
                             ": is not supported for remote_address; match a CIDR prefix "
                             "such as \"10.1.0.0/16\" instead");
    }
    if (key == kMemberOfKey) {
      return Fail(error,
                  operation_path + ": is not supported for member_of; name the roles instead");
    }
    condition->kind = MatchKind::kPrefix;
    return ParseValues(key, operation.value(), operation_path, /*normalize=*/false, kStringsShape,
                       condition, error);
  }
  return Fail(error, operation_path + ": unknown operator (must be \"not\" or \"prefix\")");
}

bool ParseRule(const Json& item, std::size_t index, std::string_view path,
               std::unordered_set<std::string>* used_names, Rule* rule, std::string* error) {
  if (!item.is_object()) return Fail(error, std::string(path) + ": must be a JSON object");
  if (!CheckKnownFields(item, path, {"name", "budget", "match", "each", "default"}, error)) {
    return false;
  }

  const bool has_explicit_name = FindField(item, "name") != nullptr;
  rule->name = "rule" + std::to_string(index + 1);
  if (!ReadName(item, path, &rule->name, error)) return false;
  if (!used_names->insert(rule->name).second) {
    // Name the default explicitly: the user never wrote "rule2" for this rule.
    return Fail(error, MemberPath(path, "name") + ": duplicate rule name " + Quote(rule->name) +
                           (has_explicit_name ? "" : " (the default name of this unnamed rule)"));
  }

  // The budget may not exist: RuleSet reports that, it is not a config error.
  const Json* budget = FindField(item, "budget");
  const std::string budget_path = MemberPath(path, "budget");
  if (budget == nullptr) return Fail(error, budget_path + ": is required");
  if (!budget->is_string()) return Fail(error, budget_path + ": must be a string");
  rule->budget = budget->get<std::string>();
  if (ContainsNul(rule->budget)) {
    return Fail(error, budget_path + ": must not contain a NUL character");
  }

  if (const Json* match = FindField(item, "match"); match != nullptr) {
    const std::string match_path = MemberPath(path, "match");
    if (!match->is_object()) return Fail(error, match_path + ": must be a JSON object");
    // nlohmann::json keeps object members sorted by key (byte order), so the
    // conditions come out in that order whatever order the text used.
    for (const auto& member : match->items()) {
      Condition condition;
      if (!ParseCondition(member.key(), member.value(), match_path, &condition, error)) {
        return false;
      }
      rule->match.push_back(std::move(condition));
    }
  }

  if (const Json* each = FindField(item, "each"); each != nullptr) {
    const bool valid = each->is_string() && !each->get_ref<const std::string&>().empty() &&
                       each->get_ref<const std::string&>().size() <= kMaxEachKeyBytes &&
                       !ContainsNul(each->get_ref<const std::string&>());
    if (!valid) {
      return Fail(error, MemberPath(path, "each") +
                             ": must be a string of 1 to 64 bytes without NUL characters");
    }
    // A role is a member of several roles at once: no single value to count by.
    if (each->get_ref<const std::string&>() == kMemberOfKey) {
      return Fail(error, MemberPath(path, "each") +
                             ": \"member_of\" cannot be used with each (a role can be a member "
                             "of several roles)");
    }
    rule->each = each->get<std::string>();
  }

  if (const Json* is_default = FindField(item, "default"); is_default != nullptr) {
    if (!is_default->is_boolean()) {
      return Fail(error, MemberPath(path, "default") + ": must be true or false");
    }
    rule->is_default = is_default->get<bool>();
  }
  return true;
}

// Runs `parse` and turns any exception but std::bad_alloc into an error
// message: a GUC check hook must not unwind into PostgreSQL.
template <typename ParseFn>
bool GuardedParse(std::string_view document_name, std::string* error, ParseFn parse) {
  try {
    return parse();
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    return Fail(error,
                std::string(document_name) + ": internal error: " + ReplaceInvalidUtf8(e.what()));
  } catch (...) {
    return Fail(error, std::string(document_name) + ": internal error");
  }
}

}  // namespace

std::string_view ModeName(Mode mode) {
  switch (mode) {
    case Mode::kEnforce:
      return "enforce";
    case Mode::kWarn:
      return "warn";
    case Mode::kOff:
      return "off";
  }
  return "unknown";  // only for a value cast from outside the enum
}

bool ParseBudgets(std::string_view json, std::vector<Budget>* out, std::string* error) {
  return GuardedParse("budgets", error, [&] {
    Json document;
    if (!ParseDocument(json, "budgets", &document, error)) return false;
    // Parse into a temporary so that a failure leaves *out as it was.
    std::vector<Budget> budgets;
    budgets.reserve(document.size());
    std::unordered_set<std::string> used_names;
    for (std::size_t i = 0; i < document.size(); ++i) {
      Budget budget;
      if (!ParseBudget(document.at(i), IndexPath("budgets", i), &used_names, &budget, error)) {
        return false;
      }
      budgets.push_back(std::move(budget));
    }
    if (out != nullptr) *out = std::move(budgets);
    return true;
  });
}

bool ParseRules(std::string_view json, std::vector<Rule>* out, std::string* error) {
  return GuardedParse("rules", error, [&] {
    Json document;
    if (!ParseDocument(json, "rules", &document, error)) return false;
    std::vector<Rule> rules;
    rules.reserve(document.size());
    std::unordered_set<std::string> used_names;
    for (std::size_t i = 0; i < document.size(); ++i) {
      Rule rule;
      if (!ParseRule(document.at(i), i, IndexPath("rules", i), &used_names, &rule, error)) {
        return false;
      }
      rules.push_back(std::move(rule));
    }
    if (out != nullptr) *out = std::move(rules);
    return true;
  });
}

}  // namespace tc
