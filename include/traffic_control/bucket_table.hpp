// The table of budget instances shared by all backends: one slot per
// (budget, `each` value) holding its concurrency count (and, later, its leaky
// bucket debt) and its counters. Plain structs only; see bucket_table.cpp for
// the layout and locking rules.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "traffic_control/config.hpp"
#include "traffic_control/core_header_guard.hpp"
#include "traffic_control/shared_state.hpp"

namespace tc {

// Longest `each` value kept for display; identity uses a hash of the full value.
constexpr std::size_t kMaxInstanceDisplayBytes = 255;

enum class Limit { kNone, kMaxConcurrent, kPerQueryLimit, kServerShare };
std::string_view LimitName(Limit limit);  // "", "max_concurrent", "per_query_limit", "server_share"

// One budget instance a statement must pass.
struct AdmissionRequest {
  const Budget* budget = nullptr;  // limits and mode; mode is never kOff here
  std::string_view instance;       // `each` value
  bool has_instance = false;
  std::uint32_t weight = 1;  // 1 + planned parallel workers
};

// For kPass `limit` is kNone; the level fields still describe the concurrency
// check when the budget has max_concurrent (useful for explain()).
struct BudgetVerdict {
  enum class Action { kPass, kWarn, kRefuse };
  Action action = Action::kPass;
  Limit limit = Limit::kNone;  // the limit that warned or refused
  double limit_value = 0;      // e.g. max_concurrent
  double level = 0;            // e.g. active statements including this one
  double level_percent = 0;    // level / limit_value * 100 (inf when the limit is 0)
};

// A concurrency slot held by a statement; give it back with Release() once.
// slot == kUntrackedSlot marks an admission the table could not count.
struct Holding {
  static constexpr std::uint32_t kUntrackedSlot = UINT32_MAX;

  std::uint32_t slot = 0;
  std::uint64_t key_hash = 0;
  std::uint32_t weight = 0;
};

struct AdmitResult {
  bool admitted = false;
  std::vector<BudgetVerdict> verdicts;  // one per request, same order
  std::vector<Holding> holdings;        // when admitted
  // When refused and every refusal is max_concurrent of a budget with
  // queue_timeout_ms > 0: the caller may wait (up to the smallest such timeout)
  // and try again.
  bool may_wait = false;
  std::int64_t queue_timeout_ms = 0;
  // Requests that found no slot because the table was full of busy instances:
  // they were admitted without being counted (fail open; see docs).
  std::uint32_t untracked = 0;
};

struct BucketSnapshot {
  std::string budget;
  std::string instance;  // truncated to kMaxInstanceDisplayBytes
  bool has_instance = false;
  std::int64_t active = 0;
  std::uint64_t admitted = 0, warned = 0, blocked_max_concurrent = 0, blocked_per_query_limit = 0,
                blocked_server_share = 0, queued = 0;
  std::int64_t last_blocked_at_us = 0;  // wall clock (Unix epoch microseconds), 0 = never
};

enum class AttemptKind {
  kFinal,     // count the outcome in the counters
  kWillWait,  // a refusal will be retried after waiting: count it as queued, not blocked
              // (only when the result says may_wait; otherwise it is final and blocked)
  kRetry      // a retry while waiting: already counted as queued, so a refusal that may
              // still wait counts nothing (one that cannot wait is blocked)
};

class BucketTable {
 public:
  // Largest supported capacity (slot numbers are int32 in shared memory).
  static constexpr std::uint32_t kMaxCapacity = 1u << 24;

  // Throws std::invalid_argument when capacity > kMaxCapacity.
  static std::size_t RequiredBytes(std::uint32_t capacity);
  // Formats `memory` (RequiredBytes(capacity) bytes, 8-byte aligned); once,
  // before any use. Throws std::invalid_argument when the span is too small.
  static void Initialize(MemorySpan memory, std::uint32_t capacity);

  // Attaches to formatted memory. Cheap; one per backend. Throws
  // std::invalid_argument when `memory` was not formatted by Initialize.
  BucketTable(MemorySpan memory, TableLock& lock, Clock& clock);

  // Decides all requests under one exclusive lock: refused when any enforce
  // budget refuses, and then nothing is acquired; otherwise every request takes
  // `weight` concurrency units and a Holding is returned for each.
  // `wall_now_us` stamps last_blocked_at.
  AdmitResult Admit(const std::vector<AdmissionRequest>& requests, AttemptKind kind,
                    std::int64_t wall_now_us);

  // Gives a holding back. Returns true when a waiter might now be admitted.
  bool Release(const Holding& holding);

  // Number of backends currently waiting for a slot (the caller keeps it).
  void AddWaiter();
  void RemoveWaiter();

  std::vector<BucketSnapshot> Snapshot();
  void ResetCounters();
  std::uint32_t capacity() const;

 private:
  friend class BucketTableTestPeer;
  // Walks the whole table under the lock; returns "" or the first broken
  // invariant. For tests only.
  std::string ConsistencyProblem();

  MemorySpan memory_;
  TableLock& lock_;
  Clock& clock_;
};

}  // namespace tc
