// The cost estimator: per query pattern (PostgreSQL's query id), exponential
// moving averages of the CPU time statements really used and of the planner's
// cost; k = mean CPU / mean cost turns a plan cost into predicted CPU-seconds.
// Patterns never seen use a global k. Lives in shared memory as a fixed table
// of plain slots; see estimator.cpp for the layout and locking rules.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "traffic_control/core_header_guard.hpp"
#include "traffic_control/shared_state.hpp"

namespace tc {

struct PatternSnapshot {
  std::uint64_t query_id = 0;
  std::uint64_t calls = 0;  // samples recorded (saturates at UINT64_MAX)
  double mean_cpu_seconds = 0;
  double mean_plan_cost = 0;  // 0 when no sample had a usable plan cost
  double k = 0;               // CPU-seconds per unit of plan cost; NaN when unknown
};

class PatternTable {
 public:
  // Largest supported capacity (slot numbers are int32 in shared memory).
  static constexpr std::uint32_t kMaxCapacity = 1u << 24;
  // Weight of a new sample in a pattern's moving averages (the first sample is
  // taken as is).
  static constexpr double kPatternAlpha = 0.2;
  // Weight of a new sample in the global averages behind the global k (used
  // only for unseen patterns): slower, so one pattern cannot swing it.
  static constexpr double kGlobalAlpha = 0.05;
  // The global averages take each pattern's first kGlobalSampleEvery samples
  // and every kGlobalSampleEvery-th after that (and every sample without a
  // query id).
  static constexpr std::uint64_t kGlobalSampleEvery = 8;

  // Throws std::invalid_argument when capacity > kMaxCapacity.
  static std::size_t RequiredBytes(std::uint32_t capacity);
  // Formats `memory` (RequiredBytes(capacity) bytes, 8-byte aligned); once,
  // before any use. Throws std::invalid_argument when the span is too small.
  static void Initialize(MemorySpan memory, std::uint32_t capacity);

  // Attaches to formatted memory. Cheap; one per backend. Throws
  // std::invalid_argument when `memory` was not formatted by Initialize.
  PatternTable(MemorySpan memory, TableLock& lock, Clock& clock);

  // CPU-seconds predicted for a statement of this pattern with this plan cost:
  // plan_cost x the pattern's k, else x the global k. A plan cost that is not
  // a positive finite number (< 0: a utility statement; 0, NaN, inf) predicts
  // the pattern's mean CPU. nullopt when nothing is known (unseen pattern and
  // no global k yet, or an unseen utility statement). query_id 0 (none) uses
  // only the global k. Counts as a use of the pattern for eviction. Takes the
  // shared lock and the entry's spinlock.
  std::optional<double> Predict(std::uint64_t query_id, double plan_cost);

  // One finished statement. A cpu_seconds that is negative, NaN or infinite is
  // ignored. A positive finite plan_cost feeds the pattern's and (sampled, see
  // kGlobalSampleEvery) the global k; any other cost feeds only the pattern's
  // mean CPU. query_id 0 feeds only the global k. A new pattern in a full table evicts an
  // approximately least recently used one; never throws for a full table.
  void Record(std::uint64_t query_id, double plan_cost, double cpu_seconds);

  // Every stored pattern, sorted by query id.
  std::vector<PatternSnapshot> Snapshot();
  // Forgets every pattern and the global k.
  void Reset();
  std::uint32_t capacity() const;

 private:
  friend class PatternTableTestPeer;
  // Walks the whole table under the exclusive lock; returns "" or the first
  // broken invariant. For tests only.
  std::string ConsistencyProblem();
  // The global k, or nullopt. For tests only.
  std::optional<double> GlobalK();
  // Sets a stored pattern's sample counters (to test saturation). For tests only.
  void SetCountersForTest(std::uint64_t query_id, std::uint64_t calls, std::uint64_t cost_samples);

  // Records the sample in the pattern's entry (adding it when new); returns
  // its sample count, 0 when not stored.
  std::uint64_t RecordPattern(std::uint64_t query_id, double plan_cost, double cpu_seconds,
                              std::int64_t now_us);

  MemorySpan memory_;
  TableLock& lock_;
  Clock& clock_;
};

}  // namespace tc
