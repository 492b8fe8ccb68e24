// Query metadata: built-in keys filled by the server plus SQLCommenter tags.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "traffic_control/core_header_guard.hpp"
#include "traffic_control/sqlcommenter.hpp"

namespace tc {

// Built-in metadata keys. A tag can never set one of these.
// member_of is the one key that may appear several times in a Metadata: once
// for each role (named by some rule) the current role is a member of.
inline constexpr std::string_view kBuiltinKeys[] = {
    "username", "application_name", "remote_address", "database",
    "query_id", "command",          "member_of",
};
// Indexes into kBuiltinKeys.
enum BuiltinKey : std::size_t {
  kUsername,
  kApplicationName,
  kRemoteAddress,
  kDatabase,
  kQueryId,
  kCommand,
  kMemberOf,
};
bool IsBuiltinKey(std::string_view key);

// A small set of key -> value pairs, in insertion order. Keys are unique,
// except member_of (added with AppendNew, one item per role).
// Clear() keeps the strings' storage for the next statement, so refilling a
// Metadata with keys and values no longer than before allocates nothing.
class Metadata {
 public:
  using Item = std::pair<std::string, std::string>;

  // Sets a built-in key (replaces a previous value).
  void SetBuiltin(std::string_view key, std::string_view value);
  // Adds a key the caller knows is not present yet (no lookup).
  void AppendNew(std::string_view key, std::string_view value) { Append(key, value); }
  // Adds tags: keys that are built-ins or already present are ignored.
  void AddTags(const std::vector<Tag>& tags);
  // nullptr when the key is absent; the first value of a repeated key.
  const std::string* Find(std::string_view key) const;
  const Item* begin() const { return items_.data(); }
  const Item* end() const { return items_.data() + size_; }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  // A copy of the items, in insertion order (for display and tests).
  std::vector<Item> items() const { return std::vector<Item>(begin(), end()); }
  void Clear() { size_ = 0; }
  // Becomes a copy of `other`, reusing this one's storage.
  void AssignFrom(const Metadata& other);
  // The same items in the same order.
  bool operator==(const Metadata& other) const;

 private:
  void Append(std::string_view key, std::string_view value);

  std::vector<Item> items_;  // the first size_ are in use
  std::size_t size_ = 0;
};

}  // namespace tc
