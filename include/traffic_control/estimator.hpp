// The cost estimator: per query pattern — (role, database, query id), as
// pg_stat_statements keys its entries — exponential moving averages of the
// CPU time statements really used and of the planner's cost; k = mean CPU /
// mean cost turns a plan cost into predicted CPU-seconds. A pattern never
// seen uses its role's fallback k in that database (learned from that role's
// statements there only), so what one role runs never changes another role's
// predictions. Lives in shared memory as a fixed table of plain slots; see
// estimator.cpp for the layout and locking rules.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "traffic_control/core_header_guard.hpp"
#include "traffic_control/shared_state.hpp"

namespace tc {

// What a pattern is learned per: the role (the current user's OID when the
// statement was admitted), the database's OID and PostgreSQL's query id.
// Query id 0 (none: PostgreSQL never computes 0) names no pattern; in the
// table it is the reserved id of the role's fallback in that database.
struct PatternKey {
  std::uint32_t user_id = 0;
  std::uint32_t database_id = 0;
  std::uint64_t query_id = 0;
  bool operator==(const PatternKey& other) const {
    return user_id == other.user_id && database_id == other.database_id &&
           query_id == other.query_id;
  }
};

struct PatternSnapshot {
  std::uint64_t query_id = 0;
  std::uint32_t user_id = 0;
  std::uint32_t database_id = 0;
  std::uint64_t calls = 0;  // samples recorded (saturates at UINT64_MAX)
  double mean_cpu_seconds = 0;
  double mean_plan_cost = 0;  // 0 when no sample had a usable plan cost
  double k = 0;               // CPU-seconds per unit of plan cost; NaN when unknown
};

class PatternTable {
 public:
  // Largest supported capacity (slot numbers are int32 in shared memory).
  static constexpr std::uint32_t kMaxCapacity = 1u << 24;
  // Bytes of one slot (one cache line); RequiredBytes adds the header and an
  // index of two to four int32 per slot.
  static constexpr std::size_t kEntryBytes = 64;
  // Weight of a new sample in a pattern's moving averages (the first sample is
  // taken as is).
  static constexpr double kPatternAlpha = 0.2;
  // Weight of a new sample in a role's fallback averages behind its fallback
  // k (used only for its unseen patterns): slower, so one pattern cannot
  // swing it.
  static constexpr double kFallbackAlpha = 0.05;
  // The fallback averages take each of the role's patterns' first
  // kFallbackSampleEvery samples and every kFallbackSampleEvery-th after that
  // (and every sample without a query id).
  static constexpr std::uint64_t kFallbackSampleEvery = 8;

  // Throws std::invalid_argument when capacity > kMaxCapacity.
  static std::size_t RequiredBytes(std::uint32_t capacity);
  // Formats `memory` (RequiredBytes(capacity) bytes, 8-byte aligned; on a
  // 64-byte boundary each slot is one cache line); once, before any use.
  // Throws std::invalid_argument when the span is too small.
  static void Initialize(MemorySpan memory, std::uint32_t capacity);

  // Attaches to formatted memory. Cheap; one per backend (an attachment
  // keeps a hint of its own, so it is not shared between threads). Throws
  // std::invalid_argument when `memory` was not formatted by Initialize.
  PatternTable(MemorySpan memory, TableLock& lock, Clock& clock);

  // CPU-seconds predicted for a statement of this pattern with this plan cost:
  // plan_cost x the pattern's k, else x the fallback k of the key's role and
  // database. A plan cost that is not a positive finite number (< 0: a
  // utility statement; 0, NaN, inf) predicts the pattern's mean CPU. nullopt
  // when nothing is known (an unseen pattern of a role with no fallback k
  // there yet, or an unseen utility statement). query_id 0 (none) uses only
  // the fallback k. Counts as a use of the entries read for eviction. Takes
  // the shared lock and an entry's spinlock at a time.
  std::optional<double> Predict(const PatternKey& key, double plan_cost);

  // One finished statement. A cpu_seconds that is negative, NaN or infinite is
  // ignored. A positive finite plan_cost feeds the pattern's and (sampled, see
  // kFallbackSampleEvery) its role's fallback k; any other cost feeds only the
  // pattern's mean CPU. query_id 0 feeds only the fallback k. A new pattern
  // (or fallback) in a full table evicts an approximately least recently used
  // entry; never throws for a full table.
  void Record(const PatternKey& key, double plan_cost, double cpu_seconds);

  // Every stored pattern (not the fallbacks), sorted by query id, then role,
  // then database.
  std::vector<PatternSnapshot> Snapshot();
  // Forgets every pattern and every fallback k.
  void Reset();
  std::uint32_t capacity() const;

 private:
  friend class PatternTableTestPeer;
  // Walks the whole table under the exclusive lock; returns "" or the first
  // broken invariant. For tests only.
  std::string ConsistencyProblem();
  // The fallback k of a role in a database, or nullopt. For tests only.
  std::optional<double> FallbackK(std::uint32_t user_id, std::uint32_t database_id);
  // Stored entries, fallbacks included. For tests only.
  std::uint32_t UsedCount();
  // Sets a stored pattern's sample count (to test saturation). For tests only.
  void SetCallsForTest(const PatternKey& key, std::uint64_t calls);

  // Records the sample in the entry of `key` (adding it when new), with
  // weight `alpha`; returns its sample count, 0 when not stored.
  std::uint64_t RecordEntry(const PatternKey& key, double plan_cost, double cpu_seconds,
                            double alpha, std::int64_t now_us);
  // The fallback k of the key's role and database, or nullopt; counts as a
  // use of the fallback entry. Takes the shared lock.
  std::optional<double> UseFallbackK(const PatternKey& key, std::int64_t now_us);
  // Under the table lock (either mode): the slot of `key`, or -1. A fallback
  // key is first looked for where this attachment last found one.
  std::int32_t Lookup(const PatternKey& key);

  MemorySpan memory_;
  TableLock& lock_;
  Clock& clock_;
  // The slot where this attachment last found or added a fallback entry:
  // only a hint, checked against the entry's identity under the table lock
  // (its role's fallback is most of what a backend looks up), so the
  // sampled fallback update does not read the index.
  std::int32_t fallback_hint_ = -1;
};

}  // namespace tc
