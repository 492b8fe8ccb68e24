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

void Metadata::Append(std::string_view key, std::string_view value) {
  if (size_ == items_.size()) items_.emplace_back();
  Item& item = items_[size_++];
  // A backend's statements mostly repeat the last one's items: comparing
  // costs less than assigning.
  if (item.first != key) item.first.assign(key);
  if (item.second != value) item.second.assign(value);
}

void Metadata::SetBuiltin(std::string_view key, std::string_view value) {
  for (std::size_t i = 0; i < size_; ++i) {
    if (items_[i].first == key) {
      items_[i].second.assign(value);
      return;
    }
  }
  Append(key, value);
}

void Metadata::AddTags(const std::vector<Tag>& tags) {
  for (const Tag& tag : tags) {
    // Built-ins are checked by name, not by presence, so a tag cannot claim a built-in
    // even when the server has not set it (yet).
    if (IsBuiltinKey(tag.key) || Find(tag.key) != nullptr) continue;
    Append(tag.key, tag.value);
  }
}

const std::string* Metadata::Find(std::string_view key) const {
  for (const Item& item : *this) {
    if (item.first == key) return &item.second;
  }
  return nullptr;
}

void Metadata::AssignFrom(const Metadata& other) {
  if (this == &other) return;
  Clear();
  for (const Item& item : other) Append(item.first, item.second);
}

bool Metadata::operator==(const Metadata& other) const {
  if (size_ != other.size_) return false;
  for (std::size_t i = 0; i < size_; ++i) {
    if (items_[i] != other.items_[i]) return false;
  }
  return true;
}

}  // namespace tc
