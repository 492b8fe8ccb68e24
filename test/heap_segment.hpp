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
  // `sizes`: the table's capacity, and whatever else its RequiredBytes and
  // Initialize take after it (the bucket table's backends).
  template <typename... Sizes>
  explicit HeapSegment(Sizes... sizes)
      : lines_(Table::RequiredBytes(sizes...) / sizeof(CacheLine) + 1) {
    Table::Initialize(span(), sizes...);
  }
  MemorySpan span() { return MemorySpan{lines_.data(), lines_.size() * sizeof(CacheLine)}; }

 private:
  struct alignas(64) CacheLine {
    unsigned char bytes[64];
  };
  std::vector<CacheLine> lines_;
};

}  // namespace tc
