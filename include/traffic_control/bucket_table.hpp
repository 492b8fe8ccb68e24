// The table of budget instances shared by all backends: one slot per
// (budget, `each` value) holding its concurrency count, its leaky bucket debt
// and its counters. Plain structs only; see bucket_table.cpp for the layout and
// locking rules.
#pragma once
#include <cstdint>
#include <optional>
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
  // CPU-seconds the statement is predicted to use; nullopt = unknown. NaN,
  // infinite and negative values are treated as unknown. An unknown
  // prediction passes per_query_limit, counts as 0 for server_share (so it is
  // refused only when the debt alone already exceeds the bucket, or when
  // server_share is 0), and is charged nothing at admission: Release with the
  // real CPU time charges it then.
  std::optional<double> predicted_seconds;
  // CPU-seconds per second that make "full server" (> 0; anything else is
  // taken as 1).
  double server_cores = 1;
  // What InstanceHash(this request) returned on this table, kept by a caller
  // that sends the same instance again; 0: the table computes it.
  std::uint64_t key_hash = 0;
  // Where the instance was held last time (a Holding's slot and generation),
  // kept by a caller that sends the same instance again: the table then goes
  // straight to that entry and only checks, under its spinlock, that the
  // entry has not changed hands since. kNoHint: looked up by key_hash.
  static constexpr std::uint32_t kNoHint = UINT32_MAX;
  std::uint32_t hint_slot = kNoHint;
  std::uint64_t hint_generation = 0;
};

// The limits are checked in the order max_concurrent, per_query_limit,
// server_share; the first that refuses is reported, else the first that warns.
// For kPass `limit` is kNone and the level fields describe the first limit the
// budget has that could be checked, in that order (useful for explain()).
// Units: statements for max_concurrent; CPU-seconds for per_query_limit
// (limit_value = per_query_limit x cores, level = the prediction) and
// server_share (limit_value = burst_limit x cores, the bucket's capacity, or 0
// when server_share is 0; level = debt drained to now + the prediction).
struct BudgetVerdict {
  enum class Action { kPass, kWarn, kRefuse };  // in this order: a stronger action compares greater
  Action action = Action::kPass;
  Limit limit = Limit::kNone;  // the limit that warned or refused
  double limit_value = 0;      // e.g. max_concurrent
  double level = 0;            // e.g. active statements including this one
  double level_percent = 0;    // level / limit_value * 100 (inf when the limit is 0)
  // For a server_share refusal: milliseconds until enough debt has drained for
  // this statement to fit. -1 = a retry cannot be predicted to succeed (other
  // limits, server_share 0, or a prediction larger than the whole bucket).
  std::int64_t retry_after_ms = -1;
};

// A concurrency slot (and the debt charged for it) held by a statement; give it
// back with Release() once. slot == kUntrackedSlot marks an admission the
// table could not count.
struct Holding {
  static constexpr std::uint32_t kUntrackedSlot = UINT32_MAX;

  std::uint32_t slot = 0;
  std::uint32_t weight = 0;
  double charged_seconds = 0;  // debt charged at admission (the prediction)
  // The entry's generation when admitted: it changes whenever the entry
  // changes hands, so a stale holding can never release someone else's slot.
  std::uint64_t generation = 0;
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
  double debt_seconds = 0;              // leaky bucket debt in CPU-seconds, drained to now
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

  // Decides all requests atomically: refused when any enforce budget refuses,
  // and then nothing is acquired or charged; otherwise every request takes
  // `weight` concurrency units, its bucket (when the budget has server_share)
  // is charged the prediction, and a Holding is returned for each.
  // `wall_now_us` stamps last_blocked_at. Instances already in the table are
  // decided under their entries' spinlocks alone (no table lock); only a new
  // instance takes the exclusive lock.
  AdmitResult Admit(const std::vector<AdmissionRequest>& requests, AttemptKind kind,
                    std::int64_t wall_now_us);
  // The same into `result` (every field overwritten), whose vectors keep
  // their capacity from call to call: the server's path allocates nothing.
  void Admit(const std::vector<AdmissionRequest>& requests, AttemptKind kind,
             std::int64_t wall_now_us, AdmitResult* result);

  // What Admit would decide for these requests now, without changing
  // anything: no slot is taken, no debt charged, no counter or use recorded
  // and no instance created (an instance not in the table is judged as the
  // empty one Admit would create). One verdict per request, same order; the
  // same verdict code as Admit. For explain(). The states of several
  // instances are read one after the other, not atomically together. (One
  // case differs: the same new instance twice in one call while the table is
  // full of busy instances, which Admit judges untracked, each on its own;
  // RuleSet::Match never asks for an instance twice.)
  std::vector<BudgetVerdict> Evaluate(const std::vector<AdmissionRequest>& requests);

  // Gives a holding back. With `actual_seconds` (the CPU-seconds the statement
  // really used) the bucket's debt is corrected by actual - charged (never
  // below 0); without it the charge stands. Returns true when a waiter might
  // now be admitted.
  bool Release(const Holding& holding, std::optional<double> actual_seconds = std::nullopt);

  // Number of backends currently waiting for a slot (the caller keeps it).
  void AddWaiter();
  void RemoveWaiter();

  std::vector<BucketSnapshot> Snapshot();
  void ResetCounters();
  std::uint32_t capacity() const;
  // The hash that identifies the request's instance (budget name and `each`
  // value) in this table, for AdmissionRequest::key_hash.
  std::uint64_t InstanceHash(const AdmissionRequest& request) const;

 private:
  friend class BucketTableTestPeer;
  // Walks the whole table under the lock; returns "" or the first broken
  // invariant. For tests only.
  std::string ConsistencyProblem();

  MemorySpan memory_;
  TableLock& lock_;
  Clock& clock_;
  // From the header, which never changes after Initialize: kept here so that
  // a statement reads no more of the shared table than the entries it needs.
  void* entries_ = nullptr;
  std::int32_t* index_ = nullptr;
  std::uint32_t index_mask_ = 0;
  std::uint32_t capacity_ = 0;
};

}  // namespace tc
