// Heap memory standing in for a shared-memory segment (8-byte aligned),
// formatted for one of the core's shared tables, for the GoogleTest suites.
#pragma once
#include <cstdint>
#include <vector>

#include "traffic_control/shared_state.hpp"

namespace tc {

template <typename Table>
class HeapSegment {
 public:
  explicit HeapSegment(std::uint32_t capacity)
      : words_(Table::RequiredBytes(capacity) / sizeof(std::uint64_t) + 1) {
    Table::Initialize(span(), capacity);
  }
  MemorySpan span() { return MemorySpan{words_.data(), words_.size() * sizeof(std::uint64_t)}; }

 private:
  std::vector<std::uint64_t> words_;
};

}  // namespace tc
