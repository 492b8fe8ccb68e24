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

// kShed: the budget is shed by traffic_control.shed() (not a configured limit).
// kQuarantined: the statement's pattern is quarantined (quarantine_s).
enum class Limit { kNone, kMaxConcurrent, kPerQueryLimit, kServerShare, kShed, kQuarantined };
// "", "max_concurrent", "per_query_limit", "server_share", "shed", "quarantined"
std::string_view LimitName(Limit limit);

// One budget instance a statement must pass.
struct AdmissionRequest {
  const Budget* budget = nullptr;  // limits and mode; mode is never kOff here
  std::string_view instance;       // `each` value
  bool has_instance = false;
  std::uint32_t weight = 1;  // 1 + planned parallel workers
  // The fewest units the statement can run with: 1 for a parallel plan whose
  // workers can be cut (its leader alone), 0 (or >= weight) when it needs
  // exactly `weight`. Every request of one call carries the statement's
  // weight and min_weight.
  std::uint32_t min_weight = 0;
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
  // >= 0: the budget is shed (traffic_control.shed()) for this many more
  // milliseconds: the request is refused whatever the budget's mode and
  // limits, before any of them is checked. -1: not shed.
  std::int64_t shed_for_ms = -1;
  // >= 0: the statement's pattern is quarantined in this budget (quarantine_s)
  // for this many more milliseconds: refused (enforce) or warned (warn)
  // before any limit is checked; a shed comes first. -1: not quarantined.
  std::int64_t quarantined_for_ms = -1;
  Limit quarantined_by = Limit::kNone;  // the limit that quarantined it
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
  // max_concurrent: of `level`, the units of statements queued ahead of this
  // one (waiting for a slot of the instance; a newcomer queues behind them).
  double queued_ahead = 0;
  // max_concurrent: > 0 when the calling backend itself already holds this
  // many of the instance's units, so many that the statement could never
  // fit while it holds them (an open cursor, an outer statement): it is
  // refused at once instead of waiting.
  std::int64_t held_by_caller = 0;
  // For a server_share refusal: milliseconds until enough debt has drained for
  // this statement to fit (for a shed refusal: until the shed ends). -1 = a retry cannot be
  // predicted to succeed (other limits, server_share 0, or a prediction larger than the whole
  // bucket).
  std::int64_t retry_after_ms = -1;
  // kQuarantined: the limit the pattern broke (kPerQueryLimit, or kNone for
  // max_duration_ms, which is not an admission limit).
  Limit quarantined_by = Limit::kNone;
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
  // and try again. A table attached for a backend (see BucketTable) has then
  // put it in the queue of the first such instance: see BucketTable::Admit.
  bool may_wait = false;
  std::int64_t queue_timeout_ms = 0;
  // The request whose instance's queue the backend was in when the call
  // began; -1 when it was in none.
  std::int32_t waited_request = -1;
  // Requests that found no slot because the table was full of busy instances:
  // they were admitted without being counted (fail open; see docs).
  std::uint32_t untracked = 0;
  // The cap on the units of requests whose workers can be cut (min_weight):
  // what the enforce budgets' max_concurrent had free behind their queues.
  // Each request was judged with and, admitted, took min(weight, cap), no
  // fewer than min_weight (its Holding's weight). UINT32_MAX: no cap.
  std::uint32_t unit_cap = UINT32_MAX;
};

struct BucketSnapshot {
  std::string budget;
  std::string instance;  // truncated to kMaxInstanceDisplayBytes
  bool has_instance = false;
  std::int64_t active = 0;
  std::uint64_t admitted = 0, warned = 0, blocked_max_concurrent = 0, blocked_per_query_limit = 0,
                blocked_server_share = 0, blocked_shed = 0, queued = 0;
  std::uint64_t canceled = 0;             // statements canceled by max_duration_ms
  std::uint64_t blocked_quarantined = 0;  // refused because their pattern was quarantined
  // CPU-seconds its statements used (workers included): measured, or for an
  // unmeasured statement what it was charged at admission (its prediction).
  double cpu_seconds = 0;
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

// A backend holding units of the instance another one waits for.
struct QueueHolder {
  std::int32_t backend = 0;
  std::uint32_t units = 0;
};

class BucketTable {
 public:
  // Largest supported capacity (slot numbers are int32 in shared memory).
  static constexpr std::uint32_t kMaxCapacity = 1u << 24;
  // Largest number of backends (their numbers are int32 in shared memory).
  static constexpr std::uint32_t kMaxBackends = 1u << 18;
  // A table attached for no backend: it never queues.
  static constexpr std::int32_t kNoBackend = -1;

  // Throws std::invalid_argument when capacity > kMaxCapacity or backends >
  // kMaxBackends.
  static std::size_t RequiredBytes(std::uint32_t capacity, std::uint32_t backends = 0);
  // Formats `memory` (RequiredBytes(capacity, backends) bytes, 8-byte
  // aligned); once, before any use. `backends`: how many backends can wait
  // in queues (numbered 0 .. backends - 1: PostgreSQL's PGPROC numbers).
  // Throws std::invalid_argument when the span is too small.
  static void Initialize(MemorySpan memory, std::uint32_t capacity, std::uint32_t backends = 0);

  // Attaches to formatted memory. Cheap; one per backend. `backend`: this
  // backend's number (< the `backends` formatted), which lets it wait in
  // queues and publishes what it holds; kNoBackend for none (it polls
  // instead of queueing). Throws std::invalid_argument when `memory` was not
  // formatted by Initialize or the backend number is out of range.
  BucketTable(MemorySpan memory, TableLock& lock, Clock& clock, std::int32_t backend = kNoBackend);

  // Decides all requests atomically: refused when any enforce budget refuses,
  // and then nothing is acquired or charged; otherwise every request takes
  // `weight` concurrency units, its bucket (when the budget has server_share)
  // is charged the prediction, and a Holding is returned for each.
  // `wall_now_us` stamps last_blocked_at. Instances already in the table are
  // decided under their entries' spinlocks alone (no table lock); only a new
  // instance takes the exclusive lock.
  //
  // Queues (with a backend): each instance keeps the backends waiting for
  // it in FIFO order. A statement fits max_concurrent only if it fits behind
  // the units queued ahead of it (all of them for a statement not in that
  // queue), so a newcomer never overtakes a waiter. A refusal that may wait
  // (kWillWait, kRetry) puts the backend at the tail of the first refusing
  // instance's queue, or keeps its place when it already waits in one that
  // refuses; a statement of several budgets waits in one queue at a time
  // and moves to another when that one lets it through but another refuses.
  // Any other outcome takes it out of its queue. Whatever frees units of an
  // instance (a release, a waiter leaving or admitted) wakes the waiters at
  // the head of its queue that now fit, each once: their backend numbers
  // are added to wakes().
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
  // below 0); without it the charge stands. Waiters that now fit are added
  // to wakes(). False when the holding was released already.
  // `canceled`: the statement was canceled by max_duration_ms (counted).
  // `estimated_seconds`: what an unmeasured statement is taken to have used
  // for cpu_seconds (its prediction; the debt keeps its charge).
  bool Release(const Holding& holding, std::optional<double> actual_seconds = std::nullopt,
               bool canceled = false, double estimated_seconds = 0);

  // Takes this backend out of the queue it waits in, if any (a wait that
  // ended without a final Admit: cancel, timeout, error, exit), waking the
  // waiters that then fit. Cheap when it waits in none.
  void LeaveQueue();
  // Is this backend in a queue?
  bool waiting() const { return waiting_; }

  // The backends (other than this one) holding units of the instance this
  // backend waits for; empty when it waits for none. Read without locks from
  // what each backend publishes: a holding may come or go meanwhile.
  std::vector<QueueHolder> HoldersOfQueue();
  // Would this backend's wait never end if the backends `stuck` (holders
  // that wait for this backend) kept their units: do the units of its
  // instance held by them and by this backend, plus the units it waits for,
  // exceed the max_concurrent it waits under?
  bool WaitCanNeverEnd(const std::int32_t* stuck, std::size_t count);

  // Backends to wake (set their latches), appended by Admit, Release and
  // LeaveQueue since the last ClearWakes; each woken once until it retries.
  const std::vector<std::int32_t>& wakes() const { return wakes_; }
  void ClearWakes() { wakes_.clear(); }

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

  // Takes this backend out of its queue unless it waits for one of
  // slots[0 .. count) (whose spinlocks the caller is about to take).
  void LeaveQueueUnlessAmong(const std::int32_t* slots, std::size_t count);
  // Publishes (for HoldersOfQueue) what this backend holds.
  void PublishHeld(std::uint32_t slot, std::uint64_t generation, std::int64_t units);

  MemorySpan memory_;
  TableLock& lock_;
  Clock& clock_;
  // From the header, which never changes after Initialize: kept here so that
  // a statement reads no more of the shared table than the entries it needs.
  void* entries_ = nullptr;
  std::int32_t* index_ = nullptr;
  std::uint32_t index_mask_ = 0;
  std::uint32_t capacity_ = 0;
  void* backends_ = nullptr;  // one record per backend
  std::uint32_t backend_count_ = 0;
  std::int32_t backend_ = kNoBackend;
  bool waiting_ = false;  // this backend is in a queue (its record says where)
  // Reserved at attach for every backend twice over, so that appending
  // under a spinlock never allocates.
  std::vector<std::int32_t> wakes_;
};

}  // namespace tc
