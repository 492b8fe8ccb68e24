// Bucket table: one entry per budget instance (budget name + `each` value),
// shared by every backend through PostgreSQL shared memory. An entry holds the
// instance's concurrency count, its leaky bucket debt and its counters.
//
// Layout (one contiguous block of RequiredBytes(capacity, backends) bytes,
// formatted once by Initialize; plain structs, offsets and int32 slot numbers, no pointers, so
// any process may map it at any address):
//   TableHeader                        magic/version, capacity, backend
//                                      count, free list, eviction hand, hash
//                                      seed
//   BucketEntry entries[capacity]      spinlock, queued units, generation,
//                                      state (counts, debt, counters, queue
//                                      head and tail), key, display text; on
//                                      cache-line boundaries (see BucketEntry)
//   int32 index[index_size]            open addressing: power of two >=
//                                      2 x capacity, linear probing,
//                                      backward-shift deletion; kNoSlot = empty
//   BackendRecord backends[backends]   per backend (PGPROC number): where it
//                                      waits (a queue link) and what it
//                                      holds; on cache-line boundaries
// An entry is free (in_use == 0, on the free list) or in use (indexed). In use
// it is busy while active > 0 or its queue is not empty, and idle otherwise. A new key takes a free
// entry, else evicts an idle one (see Evict: a bounded clock-hand scan that
// prefers a bucket that has drained to 0, then the one that will be empty
// soonest, then the least recently used); busy entries are never evicted, so
// an outstanding Holding always refers to its own entry, and a waiter's
// entry stays its own. Evicting a bucket
// that still owes forgives its debt (the order above makes that the smallest,
// shortest-lived debt in the sample). A full table of busy entries never
// fails: the request is admitted untracked (judged as an empty instance).
//
// Leaky bucket: `debt` is CPU-seconds owed at `debt_updated_us`; it drains at
// `drain_per_second` and is brought up to date lazily by whoever reads it
// (DrainTo; no sweeper). The drain rate is stored in the entry (from the
// budget of the last Admit) so that Release, Snapshot and eviction, which do
// not see the budget, drain at the same rate. drain_per_second < 0 means the
// budget has no server_share: no debt is kept.
//
// Queues: an instance's waiters form a doubly linked FIFO list through their
// backends' WaiterRecords (the entry keeps head and tail; queued_units, in
// the spinlock's cache line, sums their units, so an admission sees at no
// extra cost whether anyone waits). A statement fits max_concurrent only
// behind the units queued ahead of it; whatever frees units wakes the head
// waiters that then fit (WakeFitting), each once (`woken`, cleared when it
// retries), by returning their backend numbers for the caller to wake.
//
// Locking rules:
// - The table lock (`lock_`, an LWLock in PostgreSQL) guards the index
//   structure, the free list and the header's used_count and clock_hand.
//   Exclusive: creating or evicting an entry (Admit of an instance not in the
//   table), ResetCounters, ConsistencyProblem. Shared: Snapshot and Evaluate
//   (which copy states, one spinlock at a time, and decide on the copies
//   after unlocking).
// - Each entry's `state` is guarded by the entry's own spinlock (`spin`, an
//   __atomic exchange on a plain uint32, as pg_stat_statements' per-entry
//   mutex). Every access to a state takes it, whatever table lock is held.
// - An entry's identity (in_use, key_hash, names) changes only under both the
//   exclusive table lock and the entry's spinlock, so either one suffices to
//   read it. Eviction checks that the entry is idle under that same spinlock.
//   Every identity change also advances the entry's `generation` (in the
//   spinlock's cache line), so a (slot, generation) pair seen once names the
//   same instance for as long as the generation reads the same: Release and
//   an Admit with hints check only that, never the identity's own line.
// - The fast path, which most statements take: Admit of instances that are
//   all in the table, and every Release, take no table lock. Admit goes to
//   the entries its requests' hints name, or else probes the index without a
//   lock (atomic loads of the slot numbers and of key_hash; a probe racing a
//   writer may miss or find a wrong slot), then takes the spinlocks of the
//   entries found and checks under them the generation (hinted) or the
//   identity (probed); any doubt (not found, changed) falls back to the
//   exclusive path. Release checks its holding's generation under the
//   entry's spinlock.
//   So backends running statements of the same budget share only that
//   entry's cache line, not the table lock's.
// - Admit takes the spinlocks of all the entries it decides on at once, in
//   ascending slot order (so two backends can never deadlock), which keeps a
//   multi-budget decision atomic. Release and Snapshot take one at a time.
// - A queue (the entry's queued_units, head and tail, and the next, prev,
//   woken, units and limit of the WaiterRecords in it) is guarded by its
//   entry's spinlock. A backend joins, keeps its place or leaves under that
//   spinlock in the same locked section that decides it (Admit), and every
//   change of the entry's units checks the queue under it: so either a
//   waiter sees the freed units or the one freeing them sees the waiter (and
//   wakes it). A WaiterRecord's slot and generation (which queue) are written
//   only by its own backend, under that spinlock, and read by it without.
// - A HeldRecord (what a backend holds) is written only by its own backend
//   and read by others' deadlock checks with no lock: a sequence counter,
//   odd while it is written, tells a reader to read again.
// - Under a spinlock: only loads, stores and arithmetic on that memory; no
//   calls that can block, allocate, throw or take another lock, except further
//   entry spinlocks in ascending order. Waiting spins with a CPU pause and
//   yields the CPU after a while.
// - Table locks always through ExclusiveGuard/SharedGuard and single
//   spinlocks through SpinGuard, so an exception cannot leave anything
//   locked; Admit's several spinlocks (DecideLocked) are taken and released
//   around code that cannot throw.
// - Nothing slow while locked: hashes, the clock and every allocation happen
//   before taking the lock (result vectors are sized or reserved up front);
//   the locked sections only walk the table and write into that memory.
// - The header's capacity, layout offsets and hash seed never change after
//   Initialize and are read without any lock (each BucketTable keeps a copy
//   of the layout from when it attached, so statements do not read them).
#include "traffic_control/bucket_table.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <type_traits>

#include "traffic_control/shm_primitives.hpp"

namespace tc {
namespace {

constexpr std::uint64_t kMagic = 0x54434255434b4554ULL;  // "TCBUCKET"
constexpr std::uint32_t kLayoutVersion = 8;
constexpr std::int32_t kNoSlot = -1;
constexpr std::int32_t kNoWaiter = -1;  // no backend (end of a queue)
// Distinct instances a backend publishes as held (HeldRecord); more are not
// published, and a deadlock check may then miss them (and wait on).
constexpr std::size_t kHeldPerBackend = 15;
constexpr std::size_t kBudgetNameCapacity = kMaxBudgetNameBytes + 1;
// Idle entries an eviction looks at (a bounded scan keeps it O(1)).
constexpr int kEvictionSample = 32;
// Scans an eviction makes when its choice becomes busy before it can take it.
constexpr int kEvictionAttempts = 4;
// CPU-seconds of slack in the server_share comparison, so that rounding can
// never make a retry at retry_after_ms fail.
constexpr double kDebtSlackSeconds = 1e-9;
// Longest retry hint (about 31 years): a nearly-zero drain rate is "never".
constexpr double kMaxRetryAfterMs = 1e12;

struct TableHeader {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t capacity;
  std::uint32_t index_size;  // power of two
  std::uint32_t used_count;
  std::uint64_t hash_seed;  // random per Initialize: instance values come
                            // from clients, who must not be able to aim
                            // collisions at the index
  std::uint64_t entries_offset;
  std::uint64_t index_offset;
  std::uint64_t backends_offset;
  std::uint64_t total_bytes;
  std::uint32_t backend_count;
  std::int32_t free_head;    // singly linked through BucketEntry::next
  std::uint32_t clock_hand;  // where the next eviction scan starts
};

// What the entry's spinlock guards. The fields every admission and release
// write come first: with the spinlock they fill the entry's first cache line.
struct BucketState {
  std::int64_t active;           // concurrency units held (1 + workers per statement)
  double debt;                   // leaky bucket debt, CPU-seconds at debt_updated_us
  double drain_per_second;       // CPU-seconds per second; < 0: no bucket
  std::int64_t debt_updated_us;  // monotonic clock
  std::int64_t last_used_us;     // monotonic clock
  std::uint64_t admitted;
  // Written only by a warning, a refusal or a wait:
  std::int64_t last_blocked_at_us;  // wall clock, 0 = never
  std::uint64_t warned;
  std::uint64_t blocked_max_concurrent;
  std::uint64_t blocked_per_query_limit;
  std::uint64_t blocked_server_share;
  std::uint64_t blocked_shed;
  std::uint64_t queued;
  std::uint64_t canceled;  // statements canceled by max_duration_ms
  std::uint64_t blocked_quarantined;
  // Written by a release whose statement used (or was predicted) CPU; on the
  // second line, beside the other counters.
  double cpu_seconds;
  // Written only by a wait: the queue's first and last backend (kNoWaiter
  // when empty).
  std::int32_t queue_head;
  std::int32_t queue_tail;
};

constexpr std::size_t kCacheLineBytes = 64;

constexpr std::size_t RoundUp(std::size_t value, std::size_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

// Bytes of an entry before its identity, and of its identity (the fields
// from key_hash to instance, as declared below).
constexpr std::size_t kEntryHotBytes =
    2 * sizeof(std::uint32_t) + sizeof(std::uint64_t) + sizeof(BucketState);
constexpr std::size_t kEntryIdentityBytes = 2 * sizeof(std::uint64_t) + sizeof(std::int32_t) +
                                            sizeof(std::uint16_t) + 3 * sizeof(std::uint8_t) +
                                            kBudgetNameCapacity + kMaxInstanceDisplayBytes;

// Cache lines (the table and its entries start on line boundaries): the
// spinlock, the generation and the hot state share the first line, which
// backends running statements of the same budget pass between them, and which
// is all a statement whose entry is known (hinted) touches; the identity,
// which a lookup reads and only creation and eviction write, starts on a line
// of its own, so that reading it never has to fetch the line being written.
struct BucketEntry {
  std::uint32_t spin;  // 0 = free; only through SpinLock/SpinUnlock
  // Units of the statements waiting in this entry's queue; 0: no queue.
  std::uint32_t queued_units;
  // Advanced by every identity change (under the exclusive table lock and
  // `spin`; read under `spin`). Never 0 for an entry in use.
  std::uint64_t generation;
  BucketState state;
  unsigned char padding_before_identity[RoundUp(kEntryHotBytes, kCacheLineBytes) - kEntryHotBytes];
  // Identity: written only under the exclusive table lock and `spin`
  // (key_hash atomically: the fast path reads it under neither).
  std::uint64_t key_hash;
  std::uint64_t instance_full_bytes;  // identity: the value may be truncated
  std::int32_t next;                  // free list (under the exclusive table lock)
  std::uint16_t instance_bytes;       // stored (display) bytes
  std::uint8_t budget_bytes;
  std::uint8_t has_instance;
  std::uint8_t in_use;
  char budget[kBudgetNameCapacity];
  char instance[kMaxInstanceDisplayBytes];
  unsigned char
      padding_to_line[RoundUp(RoundUp(kEntryHotBytes, kCacheLineBytes) + kEntryIdentityBytes,
                              kCacheLineBytes) -
                      (RoundUp(kEntryHotBytes, kCacheLineBytes) + kEntryIdentityBytes)];
};

static_assert(offsetof(BucketEntry, state) + offsetof(BucketState, last_blocked_at_us) <=
                  kCacheLineBytes,
              "the spinlock and the hot state fit in the first cache line");
static_assert(offsetof(BucketEntry, key_hash) % kCacheLineBytes == 0);
static_assert(offsetof(BucketEntry, padding_to_line) ==
              offsetof(BucketEntry, key_hash) + kEntryIdentityBytes);
static_assert(sizeof(BucketEntry) % kCacheLineBytes == 0);
static_assert(std::is_trivially_copyable_v<TableHeader> && std::is_standard_layout_v<TableHeader>);
static_assert(std::is_trivially_copyable_v<BucketEntry> && std::is_standard_layout_v<BucketEntry>);
static_assert(kMaxInstanceDisplayBytes <= UINT16_MAX);

// Where a backend waits, guarded by the spinlock of the entry it waits in:
// next, prev and woken are changed by the backends queueing with it; units,
// limit, slot and generation are written only by the backend itself (which
// may read them without the spinlock).
struct WaiterRecord {
  std::int32_t next;    // the backend behind it; kNoWaiter at the tail
  std::int32_t prev;    // the backend ahead of it; kNoWaiter at the head
  std::uint32_t woken;  // woken because it fits; cleared when it retries
  std::uint32_t units;  // units it waits for
  std::int64_t limit;   // the max_concurrent it waits under
  std::int32_t slot;    // the entry it waits in; kNoSlot: none
  std::uint32_t unused;
  std::uint64_t generation;  // of that entry
};

// Units a backend holds of one instance.
struct HeldUnits {
  std::int32_t slot;
  std::uint32_t units;
  std::uint64_t generation;
};

// What a backend holds, for other backends' deadlock checks: written only by
// the backend itself, read by others without a lock (`sequence` is odd while
// it is written; every field is read and written atomically).
struct HeldRecord {
  std::uint32_t sequence;
  std::uint32_t count;
  std::uint64_t unused;
  HeldUnits held[kHeldPerBackend];
};

// One backend's records: the waiter's line (written by the backends it
// queues with) apart from what it holds (written by itself per statement).
struct BackendRecord {
  WaiterRecord waiter;
  unsigned char padding[kCacheLineBytes - sizeof(WaiterRecord)];
  HeldRecord held;
};

static_assert(sizeof(WaiterRecord) <= kCacheLineBytes);
static_assert(sizeof(BackendRecord) % kCacheLineBytes == 0);
static_assert(std::is_trivially_copyable_v<BackendRecord> &&
              std::is_standard_layout_v<BackendRecord>);
static_assert(kMaxBudgetNameBytes <= UINT8_MAX);

// key_hash is read by the fast path under no lock at all: always atomically.
std::uint64_t KeyHashOf(const BucketEntry& entry) {
  return __atomic_load_n(&entry.key_hash, __ATOMIC_RELAXED);
}

void SetKeyHash(BucketEntry& entry, std::uint64_t key_hash) {
  __atomic_store_n(&entry.key_hash, key_hash, __ATOMIC_RELAXED);
}

// --- Spinlocks: see shm_primitives.hpp ------------------------------------------

class SpinGuard {
 public:
  explicit SpinGuard(BucketEntry& entry) : word_(&entry.spin) { SpinLock(word_); }
  ~SpinGuard() { SpinUnlock(word_); }
  SpinGuard(const SpinGuard&) = delete;
  SpinGuard& operator=(const SpinGuard&) = delete;

 private:
  std::uint32_t* word_;
};

// A few elements on the stack, more on the heap: per-call scratch that
// usually needs no allocation (a statement rarely matches more than 4 budgets).
template <typename T, std::size_t N>
class SmallArray {
 public:
  SmallArray(std::size_t size, const T& value) {
    if (size > N) {
      heap_.assign(size, value);
      data_ = heap_.data();
    } else {
      std::fill(inline_, inline_ + size, value);
      data_ = inline_;
    }
  }
  SmallArray(const SmallArray&) = delete;
  SmallArray& operator=(const SmallArray&) = delete;
  T& operator[](std::size_t i) { return data_[i]; }
  T* data() { return data_; }

 private:
  T inline_[N];
  std::vector<T> heap_;
  T* data_;
};

std::uint32_t IndexSizeFor(std::uint32_t capacity) {
  std::uint32_t size = 2;
  while (size < 2ull * capacity) size *= 2;
  return size;
}

struct Layout {
  std::size_t entries_offset;
  std::size_t index_offset;
  std::size_t backends_offset;
  std::size_t total_bytes;
  std::uint32_t index_size;
};

Layout ComputeLayout(std::uint32_t capacity, std::uint32_t backends) {
  if (capacity > BucketTable::kMaxCapacity) {
    throw std::invalid_argument("bucket table capacity " + std::to_string(capacity) +
                                " exceeds the maximum of " +
                                std::to_string(BucketTable::kMaxCapacity));
  }
  if (backends > BucketTable::kMaxBackends) {
    throw std::invalid_argument("bucket table backends " + std::to_string(backends) +
                                " exceed the maximum of " +
                                std::to_string(BucketTable::kMaxBackends));
  }
  Layout layout;
  layout.index_size = IndexSizeFor(capacity);
  layout.entries_offset = RoundUp(sizeof(TableHeader), kCacheLineBytes);
  layout.index_offset =
      RoundUp(layout.entries_offset + sizeof(BucketEntry) * capacity, alignof(std::int32_t));
  layout.backends_offset =
      RoundUp(layout.index_offset + sizeof(std::int32_t) * layout.index_size, kCacheLineBytes);
  layout.total_bytes =
      RoundUp(layout.backends_offset + sizeof(BackendRecord) * backends, alignof(TableHeader));
  return layout;
}

// Typed access to the block; computed per call from the attached span.
struct TableView {
  TableHeader* header;
  BucketEntry* entries;
  std::int32_t* index;
  std::uint32_t mask;
  BackendRecord* backends;
};

TableView ViewOf(MemorySpan memory) {
  auto* base = static_cast<unsigned char*>(memory.data);
  auto* header = reinterpret_cast<TableHeader*>(base);
  return TableView{header, reinterpret_cast<BucketEntry*>(base + header->entries_offset),
                   reinterpret_cast<std::int32_t*>(base + header->index_offset),
                   header->index_size - 1,
                   reinterpret_cast<BackendRecord*>(base + header->backends_offset)};
}

// The same from the parts a BucketTable keeps (they never change after
// Initialize), without reading the shared header.
TableView CachedView(MemorySpan memory, void* entries, std::int32_t* index, std::uint32_t mask,
                     void* backends) {
  return TableView{static_cast<TableHeader*>(memory.data), static_cast<BucketEntry*>(entries),
                   index, mask, static_cast<BackendRecord*>(backends)};
}

// --- Key hashing --------------------------------------------------------------

std::uint64_t KeyHash(std::uint64_t seed, std::string_view budget, bool has_instance,
                      std::string_view instance) {
  std::uint64_t h = HashBytes(seed, budget);
  h = HashBytes(h ^ (has_instance ? 0x1234567ULL : 0x7654321ULL), has_instance ? instance : "");
  return SplitMix64Finalize(h);
}

// --- Entries and index (called under the table lock) ---------------------------

std::string_view StoredBudget(const BucketEntry& entry) {
  return std::string_view(entry.budget, entry.budget_bytes);
}

std::string_view StoredInstance(const BucketEntry& entry) {
  return std::string_view(entry.instance, entry.instance_bytes);
}

std::string_view Truncate(std::string_view text, std::size_t max_bytes) {
  return text.substr(0, std::min(text.size(), max_bytes));
}

bool SameKey(const BucketEntry& entry, std::uint64_t key_hash, const AdmissionRequest& request) {
  const std::string_view instance = request.has_instance ? request.instance : std::string_view();
  return entry.in_use && KeyHashOf(entry) == key_hash &&
         entry.has_instance == (request.has_instance ? 1 : 0) &&
         entry.instance_full_bytes == instance.size() &&
         StoredBudget(entry) == Truncate(request.budget->name, kMaxBudgetNameBytes) &&
         StoredInstance(entry) == Truncate(instance, kMaxInstanceDisplayBytes);
}

std::uint32_t HomeOf(const TableView& table, std::uint64_t key_hash) {
  return static_cast<std::uint32_t>(key_hash) & table.mask;
}

// The index is read by the fast path without any lock, while a writer holding
// the exclusive lock may change it: every access is atomic.
std::int32_t IndexAt(const TableView& table, std::uint32_t pos) {
  return __atomic_load_n(&table.index[pos], __ATOMIC_ACQUIRE);
}

void SetIndexAt(const TableView& table, std::uint32_t pos, std::int32_t slot) {
  __atomic_store_n(&table.index[pos], slot, __ATOMIC_RELEASE);
}

// Index position holding `slot`, indexed under `key_hash`.
std::uint32_t IndexPositionOf(const TableView& table, std::int32_t slot, std::uint64_t key_hash) {
  std::uint32_t pos = HomeOf(table, key_hash);
  while (IndexAt(table, pos) != slot) pos = (pos + 1) & table.mask;
  return pos;
}

void IndexInsert(const TableView& table, std::int32_t slot) {
  std::uint32_t pos = HomeOf(table, KeyHashOf(table.entries[slot]));
  // The index is at most half full, so an empty position is always found.
  while (IndexAt(table, pos) != kNoSlot) pos = (pos + 1) & table.mask;
  SetIndexAt(table, pos, slot);
}

// Backward-shift deletion: later members of the probe run move up so lookups
// never stop early at the hole (no tombstones to accumulate). A member is
// written at its new position before its old one is reused, so an unlocked
// probe can only miss a key for a moment (and then takes the locked path).
void IndexErase(const TableView& table, std::uint32_t hole) {
  std::uint32_t pos = hole;
  for (;;) {
    pos = (pos + 1) & table.mask;
    const std::int32_t slot = IndexAt(table, pos);
    if (slot == kNoSlot) break;
    const std::uint32_t home = HomeOf(table, KeyHashOf(table.entries[slot]));
    // The member at `pos` may fill the hole unless its home lies cyclically
    // in (hole, pos].
    if (((pos - home) & table.mask) >= ((pos - hole) & table.mask)) {
      SetIndexAt(table, hole, slot);
      hole = pos;
    }
  }
  SetIndexAt(table, hole, kNoSlot);
}

bool Contains(const std::int32_t* slots, std::size_t count, std::int32_t slot) {
  return std::find(slots, slots + count, slot) != slots + count;
}

// --- Leaky bucket arithmetic (on a state the caller has locked or copied) --------

// The debt as it stands at `now_us`, without changing the state.
double DrainedDebt(const BucketState& state, std::int64_t now_us) {
  if (state.debt <= 0 || state.drain_per_second <= 0 || now_us <= state.debt_updated_us) {
    return std::max(0.0, state.debt);
  }
  const double drained =
      state.drain_per_second * static_cast<double>(now_us - state.debt_updated_us) / 1e6;
  return drained >= state.debt ? 0.0 : state.debt - drained;
}

// Brings the debt up to `now_us`. A clock reading older than the last update
// (another backend read the clock earlier but locked later) drains nothing and
// keeps the later stamp, so the debt never drains twice for the same time.
void DrainTo(BucketState& state, std::int64_t now_us) {
  state.debt = DrainedDebt(state, now_us);
  state.debt_updated_us = std::max(state.debt_updated_us, now_us);
}

// Drain rate of a budget in CPU-seconds per second; -1 when it has no bucket.
double DrainRateOf(const Budget& budget, double cores) {
  if (!budget.server_share.has_value()) return -1;
  return std::max(0.0, *budget.server_share) / 100.0 * cores;
}

// Brings the bucket to now at the old rate, then adopts the budget's current
// rate (config reloads may change it); a budget without server_share keeps no
// debt.
void PrepareBucket(BucketState& state, double drain_per_second, std::int64_t now_us) {
  DrainTo(state, now_us);
  state.drain_per_second = drain_per_second;
  if (drain_per_second < 0) state.debt = 0;
}

// --- Slots for new keys (under the exclusive table lock) ---------------------------

// Eviction preference: lower is better.
struct EvictionRank {
  int drained_class;          // 0: debt has drained to 0; 1: still owes
  double seconds_to_empty;    // for class 1 (inf when it never drains)
  std::int64_t last_used_us;  // least recently used first
  bool operator<(const EvictionRank& other) const {
    if (drained_class != other.drained_class) return drained_class < other.drained_class;
    if (seconds_to_empty != other.seconds_to_empty) {
      return seconds_to_empty < other.seconds_to_empty;
    }
    return last_used_us < other.last_used_us;
  }
};

// Evicts an idle entry (no units held, no queue) not taken by this Admit call
// (`pinned`): a clock hand scans from where the last scan stopped, looks at up
// to kEvictionSample idle
// entries (skipping busy ones) and evicts the best of them by EvictionRank.
// Busy entries are bounded by the running statements, so the scan is short
// unless the table is tiny. kNoSlot when every entry is busy or pinned.
// Under the exclusive table lock; each state is read under its spinlock, and
// the chosen entry is checked idle again and its identity cleared under its
// spinlock (a fast-path Admit may have taken it since the scan looked).
std::int32_t Evict(const TableView& table, const std::int32_t* pinned, std::size_t pinned_count,
                   std::int64_t now_us) {
  TableHeader& header = *table.header;
  const std::uint32_t capacity = header.capacity;
  if (capacity == 0) return kNoSlot;
  for (int attempt = 0; attempt < kEvictionAttempts; ++attempt) {
    std::int32_t best = kNoSlot;
    EvictionRank best_rank{};
    int sampled = 0;
    std::uint32_t pos = header.clock_hand % capacity;
    for (std::uint32_t seen = 0; seen < capacity && sampled < kEvictionSample; ++seen) {
      const auto slot = static_cast<std::int32_t>(pos);
      pos = pos + 1 == capacity ? 0 : pos + 1;
      BucketEntry& entry = table.entries[slot];
      if (!entry.in_use || Contains(pinned, pinned_count, slot)) continue;
      BucketState state;
      std::uint32_t queued_units;
      {
        SpinGuard spin(entry);
        state = entry.state;
        queued_units = entry.queued_units;
      }
      if (state.active > 0 || queued_units > 0) continue;
      ++sampled;
      const double debt = DrainedDebt(state, now_us);
      EvictionRank rank{0, 0, state.last_used_us};
      if (debt > 0) {
        rank.drained_class = 1;
        rank.seconds_to_empty = state.drain_per_second > 0
                                    ? debt / state.drain_per_second
                                    : std::numeric_limits<double>::infinity();
      }
      if (best == kNoSlot || rank < best_rank) {
        best = slot;
        best_rank = rank;
      }
    }
    header.clock_hand = pos;
    if (best == kNoSlot) return kNoSlot;

    BucketEntry& entry = table.entries[best];
    const std::uint64_t old_hash = KeyHashOf(entry);
    {
      SpinGuard spin(entry);
      if (entry.state.active > 0 || entry.queued_units > 0) continue;  // taken meanwhile: again
      entry.in_use = 0;  // from here on no Admit or Release accepts this entry
      ++entry.generation;
      SetKeyHash(entry, 0);
    }
    IndexErase(table, IndexPositionOf(table, best, old_hash));  // its counters go too
    return best;
  }
  return kNoSlot;
}

// A slot for a new key: a free one, else an evicted idle one. kNoSlot when
// all are busy.
std::int32_t TakeSlot(const TableView& table, const std::int32_t* pinned, std::size_t pinned_count,
                      std::int64_t now_us) {
  TableHeader& header = *table.header;
  if (header.free_head != kNoSlot) {
    const std::int32_t slot = header.free_head;
    header.free_head = table.entries[slot].next;
    ++header.used_count;
    return slot;
  }
  return Evict(table, pinned, pinned_count, now_us);
}

// Under the table lock (either mode).
std::int32_t Find(const TableView& table, const AdmissionRequest& request, std::uint64_t key_hash) {
  for (std::uint32_t pos = HomeOf(table, key_hash); IndexAt(table, pos) != kNoSlot;
       pos = (pos + 1) & table.mask) {
    const std::int32_t slot = IndexAt(table, pos);
    if (SameKey(table.entries[slot], key_hash, request)) return slot;
  }
  return kNoSlot;
}

// Without any lock: the slot whose key_hash matches, to be confirmed under
// its spinlock (SameKey). A writer may be moving index members meanwhile, so
// the probe is bounded and may come back empty-handed.
std::int32_t FindUnlocked(const TableView& table, std::uint64_t key_hash) {
  std::uint32_t pos = HomeOf(table, key_hash);
  for (std::uint32_t step = 0; step <= table.mask; ++step, pos = (pos + 1) & table.mask) {
    const std::int32_t slot = IndexAt(table, pos);
    if (slot == kNoSlot) return kNoSlot;
    if (slot >= 0 && KeyHashOf(table.entries[slot]) == key_hash) return slot;
  }
  return kNoSlot;
}

// The state of an instance just added to the table.
BucketState NewState(std::int64_t now_us) {
  BucketState state{};
  state.drain_per_second = -1;
  state.debt_updated_us = now_us;
  state.last_used_us = now_us;
  state.queue_head = kNoWaiter;
  state.queue_tail = kNoWaiter;
  return state;
}

// Under the exclusive table lock.
std::int32_t FindOrCreate(const TableView& table, const AdmissionRequest& request,
                          std::uint64_t key_hash, std::int64_t now_us, const std::int32_t* pinned,
                          std::size_t pinned_count) {
  const std::int32_t found = Find(table, request, key_hash);
  if (found != kNoSlot) return found;
  const std::int32_t slot = TakeSlot(table, pinned, pinned_count, now_us);
  if (slot == kNoSlot) return kNoSlot;

  BucketEntry& entry = table.entries[slot];
  const std::string_view budget = Truncate(request.budget->name, kMaxBudgetNameBytes);
  const std::string_view instance = request.has_instance ? request.instance : std::string_view();
  const std::string_view display = Truncate(instance, kMaxInstanceDisplayBytes);
  {
    // A fast-path Admit that found this slot before it was evicted may be
    // holding the spinlock to check the identity it is about to lose.
    SpinGuard spin(entry);
    SetKeyHash(entry, key_hash);
    ++entry.generation;
    entry.in_use = 1;
    entry.has_instance = request.has_instance ? 1 : 0;
    entry.budget_bytes = static_cast<std::uint8_t>(budget.size());
    std::memset(entry.budget, 0, sizeof entry.budget);
    budget.copy(entry.budget, budget.size());  // copy(): memcpy may not take null
    entry.instance_full_bytes = instance.size();
    entry.instance_bytes = static_cast<std::uint16_t>(display.size());
    std::memset(entry.instance, 0, sizeof entry.instance);
    display.copy(entry.instance, display.size());
    entry.next = kNoSlot;
    entry.state = NewState(now_us);
  }
  IndexInsert(table, slot);  // published only once complete
  return slot;
}

// --- Decision -------------------------------------------------------------------

double Percent(double level, double limit) {
  if (limit > 0) return level / limit * 100.0;
  return level > 0 ? std::numeric_limits<double>::infinity() : 0.0;
}

// The request's prediction if it is usable: finite and >= 0.
std::optional<double> UsablePrediction(const std::optional<double>& predicted) {
  if (predicted.has_value() && std::isfinite(*predicted) && *predicted >= 0) return predicted;
  return std::nullopt;
}

double UsableCores(double cores) { return std::isfinite(cores) && cores > 0 ? cores : 1.0; }

bool ThresholdReached(const Budget& budget, double limit_value, double percent) {
  return budget.mode == Mode::kEnforce && budget.warning_threshold.has_value() && limit_value > 0 &&
         percent >= *budget.warning_threshold;
}

BudgetVerdict::Action OverLimitAction(const Budget& budget) {
  return budget.mode == Mode::kEnforce ? BudgetVerdict::Action::kRefuse
                                       : BudgetVerdict::Action::kWarn;
}

// What one instance holds, as seen by one request of an Admit call: the
// entry's state plus what earlier requests of the same call for the same
// instance would add, and the units queued ahead of it.
struct Standing {
  std::int64_t active = 0;
  std::int64_t queued_ahead = 0;
  double debt = 0;  // drained to now
};

BudgetVerdict CheckConcurrency(const Budget& budget, const Standing& standing,
                               std::uint32_t weight) {
  BudgetVerdict verdict;
  const std::int64_t limit = *budget.max_concurrent;
  const std::int64_t level =
      standing.active + standing.queued_ahead + static_cast<std::int64_t>(weight);
  verdict.limit_value = static_cast<double>(limit);
  verdict.level = static_cast<double>(level);
  verdict.queued_ahead = static_cast<double>(standing.queued_ahead);
  verdict.level_percent = Percent(verdict.level, verdict.limit_value);
  if (level > limit) {
    verdict.action = OverLimitAction(budget);
    verdict.limit = Limit::kMaxConcurrent;
  } else if (ThresholdReached(budget, verdict.limit_value, verdict.level_percent)) {
    verdict.action = BudgetVerdict::Action::kWarn;
    verdict.limit = Limit::kMaxConcurrent;
  }
  return verdict;
}

BudgetVerdict CheckPerQuery(const Budget& budget, double predicted, double cores) {
  BudgetVerdict verdict;
  verdict.limit_value = std::max(0.0, *budget.per_query_limit) * cores;
  verdict.level = predicted;
  verdict.level_percent = Percent(verdict.level, verdict.limit_value);
  if (predicted > verdict.limit_value) {
    verdict.action = OverLimitAction(budget);
    verdict.limit = Limit::kPerQueryLimit;
  } else if (ThresholdReached(budget, verdict.limit_value, verdict.level_percent)) {
    verdict.action = BudgetVerdict::Action::kWarn;
    verdict.limit = Limit::kPerQueryLimit;
  }
  return verdict;
}

// An unknown prediction counts as 0: it passes unless the debt alone already
// exceeds the bucket (under-predicted statements corrected at release).
BudgetVerdict CheckServerShare(const Budget& budget, double debt,
                               const std::optional<double>& predicted, double cores) {
  BudgetVerdict verdict;
  const double share = std::max(0.0, *budget.server_share);
  const double cost = predicted.value_or(0.0);
  verdict.level = debt + cost;
  if (share <= 0) {  // sheds everything, known prediction or not
    verdict.limit_value = 0;
    verdict.level_percent = Percent(verdict.level, 0);
    verdict.action = OverLimitAction(budget);
    verdict.limit = Limit::kServerShare;
    return verdict;
  }
  const double capacity = budget.burst_limit * cores;
  const double drain = share / 100.0 * cores;
  verdict.limit_value = capacity;
  verdict.level_percent = Percent(verdict.level, capacity);
  if (verdict.level > capacity + kDebtSlackSeconds) {
    verdict.action = OverLimitAction(budget);
    verdict.limit = Limit::kServerShare;
    if (verdict.action == BudgetVerdict::Action::kRefuse && cost <= capacity && drain > 0) {
      // Half the slack off, so that rounding cannot make the retry fall short.
      const double excess = verdict.level - capacity - kDebtSlackSeconds / 2;
      const double wait_ms = std::ceil(excess / drain * 1000.0);
      verdict.retry_after_ms = static_cast<std::int64_t>(std::min(wait_ms, kMaxRetryAfterMs));
    }
  } else if (ThresholdReached(budget, verdict.limit_value, verdict.level_percent)) {
    verdict.action = BudgetVerdict::Action::kWarn;
    verdict.limit = Limit::kServerShare;
  }
  return verdict;
}

// All the budget's limits in order: the first refusal wins, else the first
// warning, else a pass describing the first limit that could be checked.
BudgetVerdict Decide(const Budget& budget, const Standing& standing, std::uint32_t weight,
                     const std::optional<double>& predicted, double cores, std::int64_t shed_for_ms,
                     std::int64_t quarantined_for_ms, Limit quarantined_by) {
  BudgetVerdict chosen;
  if (budget.mode == Mode::kOff) return chosen;
  if (shed_for_ms >= 0) {  // the operator's lever refuses whatever the mode and limits
    chosen.action = BudgetVerdict::Action::kRefuse;
    chosen.limit = Limit::kShed;
    chosen.retry_after_ms = shed_for_ms;
    return chosen;
  }
  if (quarantined_for_ms >= 0) {  // the pattern's last run broke a limit: not again for now
    chosen.action = budget.mode == Mode::kEnforce ? BudgetVerdict::Action::kRefuse
                                                  : BudgetVerdict::Action::kWarn;
    chosen.limit = Limit::kQuarantined;
    chosen.retry_after_ms = quarantined_for_ms;
    chosen.quarantined_by = quarantined_by;
    return chosen;
  }
  // Action's order is pass < warn < refuse: a later limit replaces the one
  // chosen only with a stronger action.
  bool checked = false;
  auto consider = [&](const BudgetVerdict& verdict) {
    if (!checked || verdict.action > chosen.action) chosen = verdict;
    checked = true;
  };
  if (budget.max_concurrent.has_value()) {
    consider(CheckConcurrency(budget, standing, weight));
  }
  if (budget.per_query_limit.has_value() && predicted.has_value()) {
    consider(CheckPerQuery(budget, *predicted, cores));
  }
  if (budget.server_share.has_value()) {
    consider(CheckServerShare(budget, standing.debt, predicted, cores));
  }
  return chosen;
}

// Waiting helps only a concurrency refusal that a release can cure: the
// statement fits the limit once others finish.
bool CanWaitFor(const AdmissionRequest& request, std::uint32_t units,
                const BudgetVerdict& verdict) {
  const Budget& budget = *request.budget;
  return verdict.limit == Limit::kMaxConcurrent && budget.queue_timeout_ms > 0 &&
         budget.max_concurrent.has_value() && *budget.max_concurrent > 0 &&
         static_cast<std::int64_t>(units) <= *budget.max_concurrent;
}

// The units a request is judged with, and takes: its weight, or, when its
// workers can be cut (min_weight), no more than `cap` and no fewer than
// min_weight.
std::uint32_t UnitsOf(const AdmissionRequest& request, std::uint32_t cap) {
  if (request.min_weight == 0 || request.min_weight >= request.weight) return request.weight;
  return std::max(request.min_weight, std::min(request.weight, cap));
}

// The cap on a call's units: what every enforce budget with max_concurrent
// has free behind the units queued ahead, so that a parallel plan that does
// not fit runs with the workers that do, and is refused only when not even
// its leader fits. A warn budget cuts nothing (it only reports).
// UINT32_MAX: nothing is cut.
std::uint32_t FitCap(const std::vector<AdmissionRequest>& requests, BucketState* const* states,
                     const std::int64_t* ahead) {
  std::uint32_t cap = std::numeric_limits<std::uint32_t>::max();
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const AdmissionRequest& request = requests[i];
    const Budget& budget = *request.budget;
    if (UnitsOf(request, 0) == request.weight || budget.mode != Mode::kEnforce ||
        !budget.max_concurrent.has_value()) {
      continue;  // cannot be cut, or nothing to cut for
    }
    const std::int64_t used = (states[i] != nullptr ? states[i]->active : 0) + ahead[i];
    const std::int64_t free = std::max<std::int64_t>(0, *budget.max_concurrent - used);
    if (free < static_cast<std::int64_t>(cap)) cap = static_cast<std::uint32_t>(free);
  }
  return cap;
}

void CountBlocked(BucketState& state, Limit limit) {
  switch (limit) {
    case Limit::kMaxConcurrent:
      ++state.blocked_max_concurrent;
      break;
    case Limit::kPerQueryLimit:
      ++state.blocked_per_query_limit;
      break;
    case Limit::kServerShare:
      ++state.blocked_server_share;
      break;
    case Limit::kShed:
      ++state.blocked_shed;
      break;
    case Limit::kQuarantined:
      ++state.blocked_quarantined;
      break;
    case Limit::kNone:
      break;
  }
}

// Per-request inputs computed before locking.
struct Pending {
  std::uint64_t hash = 0;
  std::optional<double> predicted;
  double cores = 1;
  double drain_per_second = -1;  // DrainRateOf the request's budget
};

Pending PendingOf(const AdmissionRequest& request, std::uint64_t hash) {
  Pending pending;
  pending.hash = hash;
  pending.predicted = UsablePrediction(request.predicted_seconds);
  pending.cores = UsableCores(request.server_cores);
  pending.drain_per_second = DrainRateOf(*request.budget, pending.cores);
  // The decision reads the rest of the budget under the entry's spinlock:
  // fetched now, so that no cache miss lengthens the time it is held.
  __builtin_prefetch(request.budget);
  __builtin_prefetch(reinterpret_cast<const char*>(request.budget) + kCacheLineBytes);
  return pending;
}

// The verdict of every request (into `verdicts`); true when any is refused.
// states[i] is the state of request i's instance (the same pointer for
// requests of the same instance, which slots[] tells apart): the entry itself
// in Admit (spinlocked), a copy in Evaluate; nullptr for an untracked request.
// ahead[i]: the units queued ahead of request i in its instance's queue.
// Each state is first brought to now at its budget's current drain rate.
// Admit and Evaluate share this, so explain() shows the decision Admit makes.
bool JudgeRequests(const std::vector<AdmissionRequest>& requests, const Pending* pending,
                   const std::int32_t* slots, BucketState* const* states, const std::int64_t* ahead,
                   std::uint32_t cap, std::int64_t now_us, BudgetVerdict* verdicts) {
  bool refused = false;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const AdmissionRequest& request = requests[i];
    const Budget& budget = *request.budget;
    // Untracked requests (table full of busy instances) are judged as if the
    // instance held nothing: a limit the statement alone exceeds still holds.
    Standing standing;
    if (states[i] != nullptr) {
      BucketState& state = *states[i];
      PrepareBucket(state, pending[i].drain_per_second, now_us);
      state.last_used_us = std::max(state.last_used_us, now_us);  // a refusal is a use too
      standing.active = state.active;
      standing.queued_ahead = ahead[i];
      standing.debt = state.debt;
      for (std::size_t j = 0; j < i; ++j) {  // the same instance twice in one call
        if (slots[j] != slots[i]) continue;
        standing.active += UnitsOf(requests[j], cap);
        if (state.drain_per_second >= 0) standing.debt += pending[j].predicted.value_or(0.0);
      }
    }
    verdicts[i] =
        Decide(budget, standing, UnitsOf(request, cap), pending[i].predicted, pending[i].cores,
               request.shed_for_ms, request.quarantined_for_ms, request.quarantined_by);
    refused = refused || verdicts[i].action == BudgetVerdict::Action::kRefuse;
  }
  return refused;
}

// --- Queues (under the spinlock of the entry whose queue it is) ----------------

// The backend a table was attached for, whether it waits in a queue (kept by
// Enqueue and Dequeue, so that a statement that does not wait never reads
// its WaiterRecord), and where it collects the backends to wake.
struct QueueScope {
  std::int32_t self = kNoWaiter;
  bool* waiting = nullptr;
  std::vector<std::int32_t>* wakes = nullptr;
};

WaiterRecord& WaiterOf(const TableView& table, std::int32_t backend) {
  return table.backends[backend].waiter;
}

// The units queued ahead of `backend` in the entry's queue: all of them when
// it is not in that queue.
std::int64_t UnitsAhead(const TableView& table, const BucketEntry& entry, std::int32_t backend) {
  std::int64_t ahead = 0;
  for (std::int32_t b = entry.state.queue_head; b != kNoWaiter && b != backend;
       b = WaiterOf(table, b).next) {
    ahead += WaiterOf(table, b).units;
  }
  return ahead;
}

// Appends the scope's backend to the entry's queue.
void Enqueue(const TableView& table, const QueueScope& scope, std::int32_t slot,
             std::uint32_t units, std::int64_t limit) {
  BucketEntry& entry = table.entries[slot];
  WaiterRecord& me = WaiterOf(table, scope.self);
  me.next = kNoWaiter;
  me.prev = entry.state.queue_tail;
  me.woken = 0;
  me.units = units;
  me.limit = limit;
  me.slot = slot;
  me.generation = entry.generation;
  *scope.waiting = true;
  if (entry.state.queue_tail != kNoWaiter) {
    WaiterOf(table, entry.state.queue_tail).next = scope.self;
  } else {
    entry.state.queue_head = scope.self;
  }
  entry.state.queue_tail = scope.self;
  entry.queued_units += units;
}

// Takes the scope's backend out of the queue it is in (slot `slot`).
void Dequeue(const TableView& table, const QueueScope& scope, std::int32_t slot) {
  BucketEntry& entry = table.entries[slot];
  WaiterRecord& me = WaiterOf(table, scope.self);
  if (me.prev != kNoWaiter) {
    WaiterOf(table, me.prev).next = me.next;
  } else {
    entry.state.queue_head = me.next;
  }
  if (me.next != kNoWaiter) {
    WaiterOf(table, me.next).prev = me.prev;
  } else {
    entry.state.queue_tail = me.prev;
  }
  entry.queued_units -= std::min(entry.queued_units, me.units);
  me.next = me.prev = kNoWaiter;
  me.woken = 0;
  me.slot = kNoSlot;
  *scope.waiting = false;
}

// Wakes the waiters at the head of the entry's queue that fit now (each
// under the max_concurrent it waits under, behind the ones ahead of it),
// each once until it retries. Stops at the first that does not fit: FIFO.
// (If the scope's wake list were ever full, the waiters not woken are woken
// by the next change of this queue: those woken re-check it.)
void WakeFitting(const TableView& table, const QueueScope& scope, std::int32_t slot) {
  const BucketEntry& entry = table.entries[slot];
  std::int64_t used = entry.state.active;
  for (std::int32_t b = entry.state.queue_head; b != kNoWaiter;) {
    WaiterRecord& waiter = WaiterOf(table, b);
    used += waiter.units;
    if (used > waiter.limit) break;
    if (!waiter.woken && scope.wakes->size() < scope.wakes->capacity()) {
      waiter.woken = 1;
      scope.wakes->push_back(b);  // no allocation: capacity was reserved
    }
    b = waiter.next;
  }
}

// The units of `slot` (of that generation) a HeldRecord lists. Its owner
// reads it directly; others through ReadHeldUnits.
std::uint32_t HeldUnitsIn(const HeldRecord& record, std::int32_t slot, std::uint64_t generation) {
  const std::uint32_t count =
      std::min<std::uint32_t>(__atomic_load_n(&record.count, __ATOMIC_RELAXED), kHeldPerBackend);
  for (std::uint32_t i = 0; i < count; ++i) {
    const HeldUnits& held = record.held[i];
    if (__atomic_load_n(&held.slot, __ATOMIC_RELAXED) == slot &&
        __atomic_load_n(&held.generation, __ATOMIC_RELAXED) == generation) {
      return __atomic_load_n(&held.units, __ATOMIC_RELAXED);
    }
  }
  return 0;
}

// HeldUnitsIn for another backend's record, read consistently (retried
// while its owner writes it; 0 if it never settles).
std::uint32_t ReadHeldUnits(const HeldRecord& record, std::int32_t slot, std::uint64_t generation) {
  SpinBackoff backoff;
  for (int attempt = 0; attempt < 10000; ++attempt) {
    const std::uint32_t before = __atomic_load_n(&record.sequence, __ATOMIC_ACQUIRE);
    if ((before & 1) == 0) {
      const std::uint32_t units = HeldUnitsIn(record, slot, generation);
      __atomic_thread_fence(__ATOMIC_ACQUIRE);
      if (__atomic_load_n(&record.sequence, __ATOMIC_RELAXED) == before) return units;
    }
    backoff.Pause();
  }
  return 0;
}

// The units the requests of one call for instance `slot` need of it, under
// the call's cap.
std::uint32_t UnitsFor(const std::vector<AdmissionRequest>& requests, const std::int32_t* slots,
                       std::int32_t slot, std::uint32_t cap) {
  std::uint32_t units = 0;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    if (slots[i] == slot) units += UnitsOf(requests[i], cap);
  }
  return units;
}

// Takes the spinlocks of the distinct entries among slots[0..count), in
// ascending slot order (so that two backends can never deadlock); `order`
// receives them. Returns how many were locked.
std::size_t LockEntries(const TableView& table, const std::int32_t* slots, std::size_t count,
                        std::int32_t* order) {
  if (count == 1 && slots[0] != kNoSlot) {  // most statements: one budget
    order[0] = slots[0];
    SpinLock(&table.entries[order[0]].spin);
    return 1;
  }
  std::size_t locked = 0;
  for (std::size_t i = 0; i < count; ++i) {
    if (slots[i] != kNoSlot && !Contains(order, locked, slots[i])) order[locked++] = slots[i];
  }
  std::sort(order, order + locked);
  for (std::size_t k = 0; k < locked; ++k) SpinLock(&table.entries[order[k]].spin);
  return locked;
}

void UnlockEntries(const TableView& table, const std::int32_t* order, std::size_t locked) {
  for (std::size_t k = locked; k > 0; --k) SpinUnlock(&table.entries[order[k - 1]].spin);
}

// Per-call arrays of an Admit, sized for its requests before anything is
// locked.
struct CallScratch {
  Pending* pending;
  std::int32_t* slots;  // the instance of each request (kNoSlot: untracked)
  std::int32_t* order;  // the distinct slots, in locking order
  BucketState** states;
  std::int64_t* ahead;  // units queued ahead of each request
};

// Where the refusal of a statement that may wait lets it wait, and whether
// waiting can help at all. Sets result->may_wait, queue_timeout_ms and, for
// an instance the calling backend itself holds too much of to ever fit,
// the verdict's held_by_caller. Returns the request whose instance's queue
// a newcomer joins (the first that refuses by max_concurrent), or `count`.
std::size_t JudgeWaiting(const TableView& table, const QueueScope& scope,
                         const std::vector<AdmissionRequest>& requests, const CallScratch& call,
                         AdmitResult* result) {
  using Action = BudgetVerdict::Action;
  const std::size_t count = requests.size();
  std::size_t join = count;
  result->may_wait = true;
  result->queue_timeout_ms = std::numeric_limits<std::int64_t>::max();
  for (std::size_t i = 0; i < count; ++i) {
    BudgetVerdict& verdict = result->verdicts[i];
    if (verdict.action != Action::kRefuse) continue;
    if (!CanWaitFor(requests[i], UnitsOf(requests[i], result->unit_cap), verdict)) {
      result->may_wait = false;
      continue;
    }
    const std::int32_t slot = call.slots[i];
    if (slot != kNoSlot && scope.self != kNoWaiter) {
      // Units this backend holds itself never come free while it waits.
      const std::int64_t own =
          HeldUnitsIn(table.backends[scope.self].held, slot, table.entries[slot].generation);
      if (own > 0 && own + UnitsFor(requests, call.slots, slot, result->unit_cap) >
                         *requests[i].budget->max_concurrent) {
        verdict.held_by_caller = own;
        result->may_wait = false;
        continue;
      }
    }
    result->queue_timeout_ms =
        std::min(result->queue_timeout_ms, requests[i].budget->queue_timeout_ms);
    if (join == count && slot != kNoSlot) join = i;
  }
  if (!result->may_wait) result->queue_timeout_ms = 0;
  return join;
}

// Applies a refusal's queueing for the scope's backend: it keeps its place in
// the queue it waits in while that instance still refuses it by
// max_concurrent and it may wait, else leaves it (waking who then fits),
// and joins the queue of request `join` when it may wait and is in none.
void MoveInQueues(const TableView& table, const QueueScope& scope,
                  const std::vector<AdmissionRequest>& requests, const CallScratch& call,
                  std::int32_t waited_slot, bool waits, std::size_t join,
                  const AdmitResult& result) {
  const std::size_t count = requests.size();
  bool stays = false;
  for (std::size_t i = 0; i < count && waits && waited_slot != kNoSlot; ++i) {
    stays = stays || (call.slots[i] == waited_slot &&
                      result.verdicts[i].action == BudgetVerdict::Action::kRefuse &&
                      result.verdicts[i].limit == Limit::kMaxConcurrent);
  }
  if (stays) return;
  if (waited_slot != kNoSlot) {
    Dequeue(table, scope, waited_slot);
    WakeFitting(table, scope, waited_slot);
  }
  if (waits && join < count) {
    Enqueue(table, scope, call.slots[join],
            UnitsFor(requests, call.slots, call.slots[join], result.unit_cap),
            *requests[join].budget->max_concurrent);
  }
}

// Decides every request and applies the outcome, with the spinlocks of every
// entry in call.slots held (LockEntries), including the queues: see
// BucketTable::Admit. No allocation: result->verdicts is sized and
// result->holdings reserved by the caller, the scope's wakes reserved.
void DecideUnderSpinlocks(const TableView& table, const QueueScope& scope,
                          const std::vector<AdmissionRequest>& requests, const CallScratch& call,
                          AttemptKind kind, std::int64_t wall_now_us, std::int64_t now_us,
                          AdmitResult* result) {
  using Action = BudgetVerdict::Action;
  const std::size_t count = requests.size();
  // The queue this backend waits in is among these entries (the caller made
  // sure: LeaveQueueUnlessAmong).
  const std::int32_t waited_slot = *scope.waiting ? WaiterOf(table, scope.self).slot : kNoSlot;

  for (std::size_t i = 0; i < count; ++i) {
    const std::int32_t slot = call.slots[i];
    call.states[i] = slot != kNoSlot ? &table.entries[slot].state : nullptr;
    call.ahead[i] = 0;
    if (slot == kNoSlot) continue;
    if (slot == waited_slot && result->waited_request < 0) {
      result->waited_request = static_cast<std::int32_t>(i);
    }
    // Nearly always 0, read in the line the spinlock brought in: the queue
    // itself is walked only when there is one.
    if (table.entries[slot].queued_units != 0) {
      call.ahead[i] = slot == waited_slot ? UnitsAhead(table, table.entries[slot], scope.self)
                                          : table.entries[slot].queued_units;
    }
  }
  if (waited_slot != kNoSlot) WaiterOf(table, scope.self).woken = 0;  // it is retrying now
  const std::uint32_t cap = FitCap(requests, call.states, call.ahead);
  result->unit_cap = cap;
  const bool refused = JudgeRequests(requests, call.pending, call.slots, call.states, call.ahead,
                                     cap, now_us, result->verdicts.data());

  if (refused) {
    const std::size_t join = JudgeWaiting(table, scope, requests, call, result);
    // A refusal is only "queued" when the caller really will wait and retry.
    const bool queued = kind == AttemptKind::kWillWait && result->may_wait;
    const bool still_waiting = kind == AttemptKind::kRetry && result->may_wait;
    for (std::size_t i = 0; i < count && !still_waiting; ++i) {
      if (result->verdicts[i].action != Action::kRefuse || call.slots[i] == kNoSlot) continue;
      BucketState& state = table.entries[call.slots[i]].state;
      if (queued) {
        ++state.queued;
      } else {
        CountBlocked(state, result->verdicts[i].limit);
        state.last_blocked_at_us = wall_now_us;
      }
    }
    if (scope.self != kNoWaiter) {
      MoveInQueues(table, scope, requests, call, waited_slot,
                   result->may_wait && kind != AttemptKind::kFinal, join, *result);
    }
  } else {
    result->admitted = true;
    for (std::size_t i = 0; i < count; ++i) {
      const std::int32_t slot = call.slots[i];
      if (slot == kNoSlot) {
        ++result->untracked;
        result->holdings.push_back(Holding{Holding::kUntrackedSlot, UnitsOf(requests[i], cap), 0});
        continue;
      }
      BucketState& state = table.entries[slot].state;
      const std::uint32_t units = UnitsOf(requests[i], cap);
      state.active += units;
      ++state.admitted;
      if (result->verdicts[i].action == Action::kWarn) ++state.warned;
      // Charged at once, so concurrent arrivals see each other's cost.
      double charged = 0;
      if (state.drain_per_second >= 0) charged = call.pending[i].predicted.value_or(0.0);
      state.debt += charged;
      result->holdings.push_back(Holding{static_cast<std::uint32_t>(slot), units, charged,
                                         table.entries[slot].generation});
    }
    if (waited_slot != kNoSlot) {
      Dequeue(table, scope, waited_slot);
      WakeFitting(table, scope, waited_slot);  // those behind, if units are left
    }
  }
}

// DecideUnderSpinlocks with the spinlocks taken and released here; every slot
// resolved under the exclusive table lock.
void DecideLocked(const TableView& table, const QueueScope& scope,
                  const std::vector<AdmissionRequest>& requests, const CallScratch& call,
                  AttemptKind kind, std::int64_t wall_now_us, std::int64_t now_us,
                  AdmitResult* result) {
  const std::size_t locked = LockEntries(table, call.slots, requests.size(), call.order);
  DecideUnderSpinlocks(table, scope, requests, call, kind, wall_now_us, now_us, result);
  UnlockEntries(table, call.order, locked);
}

}  // namespace

std::string_view LimitName(Limit limit) {
  switch (limit) {
    case Limit::kMaxConcurrent:
      return "max_concurrent";
    case Limit::kPerQueryLimit:
      return "per_query_limit";
    case Limit::kServerShare:
      return "server_share";
    case Limit::kShed:
      return "shed";
    case Limit::kQuarantined:
      return "quarantined";
    case Limit::kNone:
      break;
  }
  return "";
}

std::size_t BucketTable::RequiredBytes(std::uint32_t capacity, std::uint32_t backends) {
  return ComputeLayout(capacity, backends).total_bytes;
}

void BucketTable::Initialize(MemorySpan memory, std::uint32_t capacity, std::uint32_t backends) {
  const Layout layout = ComputeLayout(capacity, backends);
  CheckTableMemory(memory.data, memory.size, layout.total_bytes, alignof(TableHeader),
                   "bucket table");
  const std::uint64_t seed = RandomSeed();

  std::memset(memory.data, 0, layout.total_bytes);
  auto* header = static_cast<TableHeader*>(memory.data);
  header->magic = kMagic;
  header->version = kLayoutVersion;
  header->capacity = capacity;
  header->index_size = layout.index_size;
  header->used_count = 0;
  header->hash_seed = seed;
  header->entries_offset = layout.entries_offset;
  header->index_offset = layout.index_offset;
  header->backends_offset = layout.backends_offset;
  header->total_bytes = layout.total_bytes;
  header->backend_count = backends;
  header->free_head = capacity > 0 ? 0 : kNoSlot;
  header->clock_hand = 0;

  const TableView table = ViewOf(memory);
  for (std::uint32_t slot = 0; slot < capacity; ++slot) {
    table.entries[slot].next = slot + 1 < capacity ? static_cast<std::int32_t>(slot + 1) : kNoSlot;
  }
  std::fill(table.index, table.index + layout.index_size, kNoSlot);
  for (std::uint32_t backend = 0; backend < backends; ++backend) {
    WaiterRecord& waiter = table.backends[backend].waiter;
    waiter.next = waiter.prev = kNoWaiter;
    waiter.slot = kNoSlot;
  }
}

BucketTable::BucketTable(MemorySpan memory, TableLock& lock, Clock& clock, std::int32_t backend)
    : memory_(memory), lock_(lock), clock_(clock) {
  const auto* header = static_cast<const TableHeader*>(memory.data);
  if (memory.data == nullptr || memory.size < sizeof(TableHeader) || header->magic != kMagic ||
      header->version != kLayoutVersion || header->capacity > kMaxCapacity ||
      header->backend_count > kMaxBackends ||
      header->total_bytes != ComputeLayout(header->capacity, header->backend_count).total_bytes ||
      memory.size < header->total_bytes) {
    throw std::invalid_argument("bucket table memory is not formatted (call Initialize first)");
  }
  if (backend != kNoBackend &&
      (backend < 0 || static_cast<std::uint32_t>(backend) >= header->backend_count)) {
    throw std::invalid_argument("bucket table backend " + std::to_string(backend) +
                                " out of range (" + std::to_string(header->backend_count) +
                                " backends)");
  }
  const TableView table = ViewOf(memory);
  entries_ = table.entries;
  index_ = table.index;
  index_mask_ = table.mask;
  capacity_ = header->capacity;
  backends_ = table.backends;
  backend_count_ = header->backend_count;
  backend_ = backend;
  // Every backend can be woken at most once per change of a queue it is in;
  // twice over, so that a wake list never has to grow under a spinlock.
  wakes_.reserve(2 * static_cast<std::size_t>(backend_count_) + 16);
  if (backend_ == kNoBackend) return;
  // A new backend holds nothing and waits for nothing: a record left by a
  // previous owner of this number (which always leaves its queue on exit)
  // is cleared.
  HeldRecord& held = table.backends[backend_].held;
  __atomic_store_n(&held.count, 0u, __ATOMIC_RELEASE);
  waiting_ = table.backends[backend_].waiter.slot != kNoSlot;
  LeaveQueue();
  ClearWakes();
}

std::uint64_t BucketTable::InstanceHash(const AdmissionRequest& request) const {
  const auto* header = static_cast<const TableHeader*>(memory_.data);
  return KeyHash(header->hash_seed, request.budget->name, request.has_instance, request.instance);
}

std::uint32_t BucketTable::capacity() const { return capacity_; }

AdmitResult BucketTable::Admit(const std::vector<AdmissionRequest>& requests, AttemptKind kind,
                               std::int64_t wall_now_us) {
  AdmitResult result;
  Admit(requests, kind, wall_now_us, &result);
  return result;
}

void BucketTable::Admit(const std::vector<AdmissionRequest>& requests, AttemptKind kind,
                        std::int64_t wall_now_us, AdmitResult* result_out) {
  const std::size_t count = requests.size();
  AdmitResult& result = *result_out;
  result.admitted = false;
  result.holdings.clear();
  result.may_wait = false;
  result.queue_timeout_ms = 0;
  result.waited_request = -1;
  result.untracked = 0;
  result.unit_cap = std::numeric_limits<std::uint32_t>::max();
  if (count == 0) {
    result.verdicts.clear();
    result.admitted = true;
    LeaveQueue();
    return;
  }
  for (const AdmissionRequest& request : requests) {
    if (request.budget == nullptr) throw std::invalid_argument("admission request without budget");
  }

  // Everything that allocates or takes time happens before locking.
  const TableView table = CachedView(memory_, entries_, index_, index_mask_, backends_);
  const QueueScope scope{backend_, &waiting_, &wakes_};
  result.verdicts.resize(count);  // every one is written by JudgeRequests
  result.holdings.reserve(count);
  // Written under the spinlocks: fetched for writing now (see PendingOf).
  __builtin_prefetch(result.verdicts.data(), 1);
  __builtin_prefetch(result.holdings.data(), 1);
  SmallArray<Pending, 4> pending(count, Pending{});
  SmallArray<std::int32_t, 4> slots(count, kNoSlot);
  SmallArray<std::int32_t, 4> order(count, kNoSlot);
  SmallArray<BucketState*, 4> states(count, nullptr);
  SmallArray<std::int64_t, 4> ahead(count, 0);
  const CallScratch call{pending.data(), slots.data(), order.data(), states.data(), ahead.data()};
  for (std::size_t i = 0; i < count; ++i) {
    const AdmissionRequest& request = requests[i];
    pending[i] =
        PendingOf(request, request.key_hash != 0 ? request.key_hash : InstanceHash(request));
  }
  const std::int64_t now_us = clock_.NowMicros();

  // The fast path: every instance exists. Found without the table lock (at
  // the hinted entries, or else by probing the index) and confirmed under the
  // entries' spinlocks, so backends only meet on the entries they share.
  // In use, a generation is never 0: a hint of 0 names nothing.
  bool hinted = true;
  for (std::size_t i = 0; i < count && hinted; ++i) {
    hinted = requests[i].hint_slot < capacity_ && requests[i].hint_generation != 0;
    slots[i] = hinted ? static_cast<std::int32_t>(requests[i].hint_slot) : kNoSlot;
  }
  bool all_found = true;
  for (std::size_t i = 0; i < count && all_found && !hinted; ++i) {
    slots[i] = FindUnlocked(table, pending[i].hash);
    all_found = slots[i] != kNoSlot;
  }
  bool decided = false;
  if (all_found) {
    LeaveQueueUnlessAmong(slots.data(), count);
    const std::size_t locked = LockEntries(table, slots.data(), count, order.data());
    bool confirmed = true;
    for (std::size_t i = 0; i < count && confirmed; ++i) {
      const BucketEntry& entry = table.entries[slots[i]];
      confirmed = hinted ? entry.generation == requests[i].hint_generation
                         : SameKey(entry, pending[i].hash, requests[i]);
    }
    if (confirmed) {
      DecideUnderSpinlocks(table, scope, requests, call, kind, wall_now_us, now_us, &result);
    }
    UnlockEntries(table, order.data(), locked);
    decided = confirmed;
    if (!confirmed) {
      std::fill(slots.data(), slots.data() + count, kNoSlot);
      std::fill(order.data(), order.data() + count, kNoSlot);
    }
  }
  if (!decided) {
    // A new instance: the exclusive lock to create it (looked up again, as
    // the table may have changed in between).
    ExclusiveGuard guard(lock_);
    for (std::size_t i = 0; i < count; ++i) {
      slots[i] = FindOrCreate(table, requests[i], pending[i].hash, now_us, slots.data(), i);
    }
    LeaveQueueUnlessAmong(slots.data(), count);
    DecideLocked(table, scope, requests, call, kind, wall_now_us, now_us, &result);
  }
  if (backend_ == kNoBackend) return;
  for (const Holding& holding : result.holdings) {
    if (holding.slot != Holding::kUntrackedSlot) {
      PublishHeld(holding.slot, holding.generation, holding.weight);
    }
  }
}

std::vector<BudgetVerdict> BucketTable::Evaluate(const std::vector<AdmissionRequest>& requests) {
  const std::size_t count = requests.size();
  for (const AdmissionRequest& request : requests) {
    if (request.budget == nullptr) throw std::invalid_argument("admission request without budget");
  }
  const TableView table = ViewOf(memory_);
  std::vector<BudgetVerdict> verdicts(count);
  std::vector<Pending> pending(count);
  std::vector<std::int32_t> slots(count, kNoSlot);
  std::vector<BucketState> copies(count);
  std::vector<BucketState*> states(count, nullptr);
  std::vector<std::int64_t> ahead(count, 0);  // a newcomer: behind every waiter
  for (std::size_t i = 0; i < count; ++i) {
    const AdmissionRequest& request = requests[i];
    pending[i] =
        PendingOf(request, request.key_hash != 0 ? request.key_hash : InstanceHash(request));
  }
  const std::int64_t now_us = clock_.NowMicros();

  // Copy the states under the shared lock, one spinlock at a time; nothing
  // in the table is written.
  {
    SharedGuard guard(lock_);
    for (std::size_t i = 0; i < count; ++i) {
      slots[i] = Find(table, requests[i], pending[i].hash);
      if (slots[i] == kNoSlot) continue;
      BucketEntry& entry = table.entries[slots[i]];
      SpinGuard spin(entry);
      copies[i] = entry.state;
      ahead[i] = entry.queued_units;
    }
  }

  // An instance not in the table is judged as Admit would create it. Requests
  // of the same instance share one copy (and one slot number: a made-up
  // negative one for a new instance), as they would share one entry.
  std::int32_t next_new_slot = kNoSlot - 1;
  for (std::size_t i = 0; i < count; ++i) {
    std::size_t first = i;
    for (std::size_t j = 0; j < i && first == i; ++j) {
      const bool same = slots[i] != kNoSlot
                            ? slots[j] == slots[i]
                            : slots[j] < kNoSlot && pending[j].hash == pending[i].hash &&
                                  requests[j].budget->name == requests[i].budget->name &&
                                  requests[j].has_instance == requests[i].has_instance &&
                                  requests[j].instance == requests[i].instance;
      if (same) first = j;
    }
    if (first != i) {
      slots[i] = slots[first];
      states[i] = states[first];
      continue;
    }
    if (slots[i] == kNoSlot) {
      slots[i] = next_new_slot--;
      copies[i] = NewState(now_us);
    }
    states[i] = &copies[i];
  }
  JudgeRequests(requests, pending.data(), slots.data(), states.data(), ahead.data(),
                FitCap(requests, states.data(), ahead.data()), now_us, verdicts.data());
  return verdicts;
}

bool BucketTable::Release(const Holding& holding, std::optional<double> actual_seconds,
                          bool canceled, double estimated_seconds) {
  if (holding.slot == Holding::kUntrackedSlot || holding.slot >= capacity_) return false;
  const TableView table = CachedView(memory_, entries_, index_, index_mask_, backends_);
  const auto slot = static_cast<std::int32_t>(holding.slot);
  // A measurement that is not a number of seconds corrects nothing.
  const bool correct = actual_seconds.has_value() && std::isfinite(*actual_seconds) &&
                       *actual_seconds >= 0 && std::isfinite(holding.charged_seconds);
  // The clock only when the debt is corrected: most cheap statements are not
  // measured (see docs/design.md), and their release then reads no clock.
  // (last_used_us was set at admission; a busy entry is never evicted.)
  const std::int64_t now_us = correct ? clock_.NowMicros() : 0;

  // No table lock: the identity is checked under the entry's spinlock.
  BucketEntry& entry = table.entries[slot];
  {
    SpinGuard spin(entry);
    // A mismatch means the holding was released already and the entry reused
    // (or evicted: in use, a generation is never 0).
    if (holding.generation == 0 || entry.generation != holding.generation) return false;
    BucketState& state = entry.state;
    state.active -= std::min<std::int64_t>(state.active, holding.weight);
    if (canceled) ++state.canceled;
    const double used = correct ? *actual_seconds : estimated_seconds;
    if (std::isfinite(used) && used > 0) state.cpu_seconds += used;
    if (correct && state.drain_per_second >= 0) {
      DrainTo(state, now_us);
      state.debt = std::max(0.0, state.debt + (*actual_seconds - holding.charged_seconds));
    }
    if (correct) state.last_used_us = std::max(state.last_used_us, now_us);
    // Checked under the spinlock: see the locking rules on queues.
    if (entry.queued_units != 0) WakeFitting(table, QueueScope{backend_, &waiting_, &wakes_}, slot);
  }
  if (backend_ != kNoBackend) {
    PublishHeld(holding.slot, holding.generation, -static_cast<std::int64_t>(holding.weight));
  }
  return true;
}

void BucketTable::LeaveQueue() {
  if (!waiting_) return;
  const TableView table = CachedView(memory_, entries_, index_, index_mask_, backends_);
  const std::int32_t slot = WaiterOf(table, backend_).slot;
  waiting_ = false;
  if (slot == kNoSlot) return;
  SpinGuard spin(table.entries[slot]);
  const QueueScope scope{backend_, &waiting_, &wakes_};
  Dequeue(table, scope, slot);
  WakeFitting(table, scope, slot);
}

void BucketTable::LeaveQueueUnlessAmong(const std::int32_t* slots, std::size_t count) {
  if (!waiting_) return;
  const std::int32_t slot =
      backends_ != nullptr ? static_cast<BackendRecord*>(backends_)[backend_].waiter.slot : kNoSlot;
  if (std::find(slots, slots + count, slot) == slots + count) LeaveQueue();
}

void BucketTable::PublishHeld(std::uint32_t slot, std::uint64_t generation, std::int64_t units) {
  HeldRecord& record = static_cast<BackendRecord*>(backends_)[backend_].held;
  const std::uint32_t sequence = record.sequence;  // only this backend writes it
  __atomic_store_n(&record.sequence, sequence + 1, __ATOMIC_RELAXED);
  __atomic_thread_fence(__ATOMIC_RELEASE);
  const std::uint32_t count = record.count;
  std::uint32_t i = 0;
  while (i < count && !(record.held[i].slot == static_cast<std::int32_t>(slot) &&
                        record.held[i].generation == generation)) {
    ++i;
  }
  if (i < count) {
    const std::int64_t left = std::max<std::int64_t>(0, record.held[i].units + units);
    if (left > 0) {
      __atomic_store_n(&record.held[i].units, static_cast<std::uint32_t>(left), __ATOMIC_RELAXED);
    } else {  // the last one takes its place
      const HeldUnits last = record.held[count - 1];
      __atomic_store_n(&record.held[i].slot, last.slot, __ATOMIC_RELAXED);
      __atomic_store_n(&record.held[i].units, last.units, __ATOMIC_RELAXED);
      __atomic_store_n(&record.held[i].generation, last.generation, __ATOMIC_RELAXED);
      __atomic_store_n(&record.count, count - 1, __ATOMIC_RELAXED);
    }
  } else if (units > 0 && count < kHeldPerBackend) {  // else not published
    __atomic_store_n(&record.held[count].slot, static_cast<std::int32_t>(slot), __ATOMIC_RELAXED);
    __atomic_store_n(&record.held[count].units, static_cast<std::uint32_t>(units),
                     __ATOMIC_RELAXED);
    __atomic_store_n(&record.held[count].generation, generation, __ATOMIC_RELAXED);
    __atomic_store_n(&record.count, count + 1, __ATOMIC_RELAXED);
  }
  __atomic_store_n(&record.sequence, sequence + 2, __ATOMIC_RELEASE);
}

std::vector<QueueHolder> BucketTable::HoldersOfQueue() {
  std::vector<QueueHolder> holders;
  if (!waiting_) return holders;
  const TableView table = CachedView(memory_, entries_, index_, index_mask_, backends_);
  const WaiterRecord& me = WaiterOf(table, backend_);
  for (std::uint32_t b = 0; b < backend_count_; ++b) {
    if (static_cast<std::int32_t>(b) == backend_) continue;
    const std::uint32_t units = ReadHeldUnits(table.backends[b].held, me.slot, me.generation);
    if (units > 0) holders.push_back(QueueHolder{static_cast<std::int32_t>(b), units});
  }
  return holders;
}

bool BucketTable::WaitCanNeverEnd(const std::int32_t* stuck, std::size_t count) {
  if (!waiting_) return false;
  const TableView table = CachedView(memory_, entries_, index_, index_mask_, backends_);
  const WaiterRecord& me = WaiterOf(table, backend_);
  std::int64_t kept = HeldUnitsIn(table.backends[backend_].held, me.slot, me.generation);
  for (std::size_t i = 0; i < count; ++i) {
    if (stuck[i] < 0 || static_cast<std::uint32_t>(stuck[i]) >= backend_count_ ||
        stuck[i] == backend_) {
      continue;
    }
    kept += ReadHeldUnits(table.backends[stuck[i]].held, me.slot, me.generation);
  }
  // me.units and me.limit are this backend's own (written by it).
  return kept + me.units > me.limit;
}

namespace {

// What Snapshot copies out of an entry.
struct EntryCopy {
  BucketState state;
  std::uint16_t instance_bytes;
  std::uint8_t budget_bytes;
  std::uint8_t has_instance;
  char budget[kBudgetNameCapacity];
  char instance[kMaxInstanceDisplayBytes];
};

}  // namespace

std::vector<BucketSnapshot> BucketTable::Snapshot() {
  const TableView table = ViewOf(memory_);
  const std::uint32_t slot_count = capacity();
  const std::int64_t now_us = clock_.NowMicros();
  // Copy raw entries under the shared lock (each one's state under its
  // spinlock) into a vector reserved beforehand (sized from a first look at
  // used_count; retried if the table grew), and build strings only after
  // unlocking.
  std::vector<EntryCopy> copies;
  std::size_t expected = 0;
  {
    SharedGuard guard(lock_);
    expected = table.header->used_count;
  }
  for (;;) {
    copies.clear();
    copies.reserve(std::min<std::size_t>(slot_count, expected + 16));
    SharedGuard guard(lock_);
    expected = table.header->used_count;
    if (expected > copies.capacity()) continue;
    for (std::uint32_t slot = 0; slot < slot_count; ++slot) {
      BucketEntry& entry = table.entries[slot];
      if (!entry.in_use) continue;
      copies.emplace_back();
      EntryCopy& copy = copies.back();
      {
        SpinGuard spin(entry);
        copy.state = entry.state;
      }
      copy.instance_bytes = entry.instance_bytes;
      copy.budget_bytes = entry.budget_bytes;
      copy.has_instance = entry.has_instance;
      std::memcpy(copy.budget, entry.budget, sizeof copy.budget);
      std::memcpy(copy.instance, entry.instance, sizeof copy.instance);
    }
    break;
  }

  std::vector<BucketSnapshot> snapshots;
  snapshots.reserve(copies.size());
  for (const EntryCopy& copy : copies) {
    const BucketState& state = copy.state;
    BucketSnapshot snapshot;
    snapshot.budget = std::string(copy.budget, copy.budget_bytes);
    snapshot.instance = std::string(copy.instance, copy.instance_bytes);
    snapshot.has_instance = copy.has_instance != 0;
    snapshot.active = state.active;
    snapshot.admitted = state.admitted;
    snapshot.warned = state.warned;
    snapshot.blocked_max_concurrent = state.blocked_max_concurrent;
    snapshot.blocked_per_query_limit = state.blocked_per_query_limit;
    snapshot.blocked_server_share = state.blocked_server_share;
    snapshot.blocked_shed = state.blocked_shed;
    snapshot.canceled = state.canceled;
    snapshot.blocked_quarantined = state.blocked_quarantined;
    snapshot.cpu_seconds = state.cpu_seconds;
    snapshot.queued = state.queued;
    snapshot.last_blocked_at_us = state.last_blocked_at_us;
    snapshot.debt_seconds = DrainedDebt(state, now_us);
    snapshots.push_back(std::move(snapshot));
  }
  std::sort(snapshots.begin(), snapshots.end(),
            [](const BucketSnapshot& a, const BucketSnapshot& b) {
              if (a.budget != b.budget) return a.budget < b.budget;
              if (a.has_instance != b.has_instance) return !a.has_instance;
              return a.instance < b.instance;
            });
  return snapshots;
}

void BucketTable::ResetCounters() {
  const TableView table = ViewOf(memory_);
  const std::uint32_t slot_count = capacity();
  ExclusiveGuard guard(lock_);
  for (std::uint32_t slot = 0; slot < slot_count; ++slot) {
    SpinGuard spin(table.entries[slot]);
    BucketState& state = table.entries[slot].state;
    // Counters only: active and debt are live state, not statistics.
    state.admitted = state.warned = state.queued = 0;
    state.blocked_max_concurrent = state.blocked_per_query_limit = state.blocked_server_share = 0;
    state.blocked_shed = state.blocked_quarantined = 0;
    state.canceled = 0;
    state.cpu_seconds = 0;
    state.last_blocked_at_us = 0;
  }
}

namespace {

// The queues' invariants (for ConsistencyProblem, with nothing running).
std::string QueueProblem(const TableView& table) {
  const TableHeader& header = *table.header;
  std::uint32_t queued_backends = 0;
  for (std::uint32_t slot = 0; slot < header.capacity; ++slot) {
    const BucketEntry& entry = table.entries[slot];
    const std::string where = " in slot " + std::to_string(slot);
    if (!entry.in_use) {
      if (entry.queued_units != 0) return "queue on a free entry" + where;
      continue;
    }
    std::int64_t units = 0;
    std::int32_t prev = kNoWaiter;
    for (std::int32_t b = entry.state.queue_head; b != kNoWaiter; b = WaiterOf(table, b).next) {
      if (b < 0 || static_cast<std::uint32_t>(b) >= header.backend_count ||
          ++queued_backends > header.backend_count) {
        return "queue link out of range or looping" + where;
      }
      const WaiterRecord& waiter = WaiterOf(table, b);
      if (waiter.slot != static_cast<std::int32_t>(slot) || waiter.prev != prev ||
          waiter.generation != entry.generation) {
        return "queue links broken" + where;
      }
      units += waiter.units;
      prev = b;
    }
    if (prev != entry.state.queue_tail) return "queue tail wrong" + where;
    if (units != entry.queued_units) return "queued units do not add up" + where;
  }
  std::uint32_t waiting = 0;
  for (std::uint32_t b = 0; b < header.backend_count; ++b) {
    if (table.backends[b].waiter.slot != kNoSlot) ++waiting;
  }
  if (waiting != queued_backends) return "a waiting backend is in no queue";
  return "";
}

}  // namespace

std::string BucketTable::ConsistencyProblem() {
  const TableView table = ViewOf(memory_);
  const std::uint32_t slot_count = capacity();
  // Reads entries' state without their spinlocks: only while no other thread
  // uses the table (the fast path takes no table lock).
  ExclusiveGuard guard(lock_);
  const TableHeader& header = *table.header;
  std::uint32_t used = 0, indexed = 0, free_entries = 0;
  for (std::uint32_t slot = 0; slot < slot_count; ++slot) {
    const BucketEntry& entry = table.entries[slot];
    if (entry.spin != 0) return "spinlock held in slot " + std::to_string(slot);
    if (!entry.in_use) continue;
    ++used;
    if (entry.state.active < 0) return "negative active in slot " + std::to_string(slot);
    if (!(entry.state.debt >= 0) || !std::isfinite(entry.state.debt)) {
      return "bad debt in slot " + std::to_string(slot);
    }
  }
  if (used != header.used_count) return "used_count mismatch";
  if (slot_count > 0 && header.clock_hand >= slot_count) return "clock hand out of range";
  for (std::int32_t slot = header.free_head; slot != kNoSlot; slot = table.entries[slot].next) {
    if (++free_entries > slot_count) return "free list loops";
    if (table.entries[slot].in_use) return "used entry on free list";
  }
  if (used + free_entries != slot_count) return "entries lost from the free list";
  for (std::uint32_t pos = 0; pos < header.index_size; ++pos) {
    const std::int32_t slot = table.index[pos];
    if (slot == kNoSlot) continue;
    ++indexed;
    if (slot < 0 || static_cast<std::uint32_t>(slot) >= slot_count || !table.entries[slot].in_use) {
      return "index points at a free entry";
    }
    // Every position between home and here must be occupied (else lookups miss).
    for (std::uint32_t probe = HomeOf(table, table.entries[slot].key_hash); probe != pos;
         probe = (probe + 1) & table.mask) {
      if (table.index[probe] == kNoSlot) return "index probe run broken";
    }
  }
  if (indexed != used) return "index size mismatch";
  return QueueProblem(table);
}

}  // namespace tc
