// Heap memory standing in for a shared-memory segment (aligned on a cache
// line, as PostgreSQL's shared memory allocations are), formatted for one of
// the core's shared tables, for the GoogleTest suites.
#pragma once
#include <cstdint>
#include <vector>

#include "traffic_control/shared_state.hpp"

namespace tc {

template <typename Table>
class HeapSegment {
 public:
  explicit HeapSegment(std::uint32_t capacity)
      : lines_(Table::RequiredBytes(capacity) / sizeof(CacheLine) + 1) {
    Table::Initialize(span(), capacity);
  }
  MemorySpan span() { return MemorySpan{lines_.data(), lines_.size() * sizeof(CacheLine)}; }

 private:
  struct alignas(64) CacheLine {
    unsigned char bytes[64];
  };
  std::vector<CacheLine> lines_;
};

}  // namespace tc
