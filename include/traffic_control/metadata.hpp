// Query metadata: built-in keys filled by the server plus SQLCommenter tags.
#pragma once
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "traffic_control/core_header_guard.hpp"
#include "traffic_control/sqlcommenter.hpp"

namespace tc {

// Built-in metadata keys. A tag can never set one of these.
inline constexpr std::string_view kBuiltinKeys[] = {
    "username", "application_name", "remote_address", "database", "query_id", "command",
};
bool IsBuiltinKey(std::string_view key);

// A small set of key -> value pairs with unique keys, in insertion order.
class Metadata {
 public:
  // Sets a built-in key (replaces a previous value).
  void SetBuiltin(std::string_view key, std::string_view value);
  // Adds tags: keys that are built-ins or already present are ignored.
  void AddTags(const std::vector<Tag>& tags);
  // nullptr when the key is absent.
  const std::string* Find(std::string_view key) const;
  const std::vector<std::pair<std::string, std::string>>& items() const { return items_; }
  void Clear() { items_.clear(); }

 private:
  std::vector<std::pair<std::string, std::string>> items_;
};

}  // namespace tc
