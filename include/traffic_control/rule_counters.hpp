// Per-rule `matched` counters shared by every backend (rule_status.matched):
// a fixed table in shared memory, keyed by (rule name, budget name), updated
// with atomic increments and no lock at all. See rule_counters.cpp for the
// layout and the concurrency rules.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "traffic_control/core_header_guard.hpp"
#include "traffic_control/shared_state.hpp"

namespace tc {

class RuleCounterTable {
 public:
  // A slot number that names no counter: the key is absent (Find) or the
  // table is full (Resolve).
  static constexpr std::int32_t kNoSlot = -1;
  // Largest supported capacity (slot numbers are int32 in shared memory).
  static constexpr std::uint32_t kMaxCapacity = 1u << 24;

  // Throws std::invalid_argument when capacity > kMaxCapacity.
  static std::size_t RequiredBytes(std::uint32_t capacity);
  // Formats `memory` (RequiredBytes(capacity) bytes, 8-byte aligned); once,
  // before any use. Throws std::invalid_argument when the span is too small.
  static void Initialize(MemorySpan memory, std::uint32_t capacity);

  // Attaches to formatted memory. Cheap; one per backend. Throws
  // std::invalid_argument when `memory` was not formatted by Initialize.
  explicit RuleCounterTable(MemorySpan memory);

  // The counter of (rule, budget), added (at 0) when new. kNoSlot when the
  // table already holds `capacity` keys: keys are never removed (a slot
  // number stays valid for the life of the table, so backends may cache it),
  // so a full table stays full until the memory is formatted again (server
  // restart). Lock-free; safe against concurrent Resolve of the same key.
  std::int32_t Resolve(std::string_view rule, std::string_view budget);
  // The counter of (rule, budget), or kNoSlot when it was never resolved.
  std::int32_t Find(std::string_view rule, std::string_view budget) const;

  // One atomic add; `slot` from Resolve (kNoSlot is ignored).
  void Increment(std::int32_t slot) { Add(slot, 1); }
  void Add(std::int32_t slot, std::uint64_t count);
  // The counter's value; 0 for kNoSlot.
  std::uint64_t Count(std::int32_t slot) const;
  // Sets every counter to 0 (keys stay). Increments racing with it may or
  // may not survive.
  void ResetCounts();

  // Keys stored, and the most that can be.
  std::uint32_t size() const;
  std::uint32_t capacity() const;
  bool full() const { return size() >= capacity(); }

 private:
  MemorySpan memory_;
};

}  // namespace tc
