#include "traffic_control/metadata.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace tc {

bool IsBuiltinKey(std::string_view key) {
  for (std::string_view builtin : kBuiltinKeys) {
    if (key == builtin) return true;
  }
  return false;
}

void Metadata::SetBuiltin(std::string_view key, std::string_view value) {
  for (auto& item : items_) {
    if (item.first == key) {
      item.second.assign(value);
      return;
    }
  }
  items_.emplace_back(std::string(key), std::string(value));
}

void Metadata::AddTags(const std::vector<Tag>& tags) {
  for (const Tag& tag : tags) {
    // Built-ins are checked by name, not by presence, so a tag cannot claim a built-in
    // even when the server has not set it (yet).
    if (IsBuiltinKey(tag.key) || Find(tag.key) != nullptr) continue;
    items_.emplace_back(tag.key, tag.value);
  }
}

const std::string* Metadata::Find(std::string_view key) const {
  for (const auto& item : items_) {
    if (item.first == key) return &item.second;
  }
  return nullptr;
}

}  // namespace tc
