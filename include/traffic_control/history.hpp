// Violation history (traffic_control.violation_history): per budget and per
// minute, how many statements were admitted, warned and refused by each limit,
// for the last kMinutes minutes. A fixed block of shared memory updated with
// no lock at all; see history.cpp for the layout and the concurrency rules.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "traffic_control/core_header_guard.hpp"
#include "traffic_control/shared_state.hpp"

namespace tc {

class ViolationHistory {
 public:
  // Minutes kept per budget (six hours) and budgets recorded. A budget first
  // seen when kMaxBudgets names are already recorded is not recorded at all
  // (names are never removed; the memory is formatted again at server start).
  static constexpr std::uint32_t kMinutes = 360;
  static constexpr std::uint32_t kMaxBudgets = 256;
  static constexpr std::size_t kMaxNameBytes = 63;
  static constexpr std::int32_t kNoSlot = -1;

  enum Counter : std::uint32_t {
    kAdmitted = 0,
    kWarned,
    kBlockedMaxConcurrent,
    kBlockedPerQueryLimit,
    kBlockedServerShare,
    kCounterCount
  };

  struct Row {
    std::string budget;
    std::int64_t minute_start_s = 0;  // Unix epoch seconds
    std::uint64_t counts[kCounterCount] = {};
  };

  static std::size_t RequiredBytes();
  // Formats `memory` (RequiredBytes(), 8-byte aligned) once, before any use.
  // Throws std::invalid_argument when the span is too small.
  static void Initialize(MemorySpan memory);
  // Attaches to formatted memory; throws std::invalid_argument when it was not
  // formatted by Initialize.
  explicit ViolationHistory(MemorySpan memory);

  // The budget's slot, added when new; kNoSlot when kMaxBudgets names are
  // already recorded or the name is longer than kMaxNameBytes. A slot stays
  // valid until the memory is formatted again, so backends may cache it.
  // Lock-free.
  std::int32_t Resolve(std::string_view budget);
  // Adds `count` to `counter` of `slot` in the minute of `wall_now_us` (Unix
  // epoch microseconds): one atomic add, plus a compare-and-swap and five
  // stores by the first writer of a new minute in a slot. kNoSlot is ignored,
  // and so is a time older than what the minute's ring slot already holds.
  void Record(std::int32_t slot, Counter counter, std::int64_t wall_now_us,
              std::uint64_t count = 1);

  // Every (budget, minute) with a count, for minutes in the kMinutes minutes
  // up to the minute of `wall_now_us`, ordered by budget slot and minute.
  std::vector<Row> Snapshot(std::int64_t wall_now_us) const;

  std::uint32_t size() const;  // budgets recorded

 private:
  MemorySpan memory_;
};

}  // namespace tc
