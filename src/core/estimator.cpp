// Pattern table: one entry per query pattern — (role, database, query id) —
// shared by every backend through PostgreSQL shared memory, plus one
// fallback entry per (role, database) behind the k of that role's unseen
// patterns there.
//
// Layout (one contiguous block of RequiredBytes(capacity) bytes, formatted once
// by Initialize; plain structs, offsets and int32 slot numbers, no pointers):
//   PatternHeader                      magic/version, capacity, used count,
//                                      eviction hand, hash seed (64 bytes)
//   PatternEntry entries[capacity]     64 bytes each, from offset 64, so on a
//                                      64-byte aligned block (PostgreSQL's
//                                      shared memory is) each entry is one
//                                      cache line: spinlock, in-use marker,
//                                      key, averages, last use
//   int32 index[index_size]            open addressing on the key (role,
//                                      database, query id): power of two >=
//                                      2 x capacity, linear probing,
//                                      backward-shift deletion
// An entry is free (in_use 0) or in use (in_use 1, indexed). Entries are
// never freed one at a time (an eviction reuses the entry in place; only
// Reset frees, all at once), so the free entries are always the slots from
// used_count on: a new entry takes slot used_count while there is one, else
// evicts the least recently used of the next kEvictionSample entries after
// a clock hand (approximate LRU, O(1)). Fallback entries are evicted like
// patterns.
//
// Keys: a pattern is (user id, database id, query id != 0). Query id 0 is
// never a PostgreSQL query id (the jumble turns a 0 hash into 1); the key
// (user id, database id, 0) is the fallback entry of that role in that
// database. The in-use marker, not the key, tells free entries apart: any
// key, all zeros included, can be stored.
//
// Model: per pattern, exponential moving averages (alpha kPatternAlpha, the
// first sample as is) of CPU-seconds over all samples (mean_cpu: predicts
// statements without a usable plan cost), and of plan cost and CPU-seconds
// over the samples with a positive finite plan cost (k = mean_cpu_costed /
// mean_cost, so k is a ratio of averages of the same samples; `costed` says
// there was one). A fallback entry keeps the same two costed averages with
// kFallbackAlpha, which give the fallback k of its role and database; they
// take that role's samples without a query id, and of each of its patterns
// its first kFallbackSampleEvery samples and every kFallbackSampleEvery-th
// after that (so the fallback's spinlock is not a cache line every
// statement of the role writes). Nothing another role runs feeds them.
//
// Locking rules:
// - The table lock (`lock_`, its own LWLock in PostgreSQL) guards the index,
//   the used count, the eviction hand and every entry's identity (in_use and
//   the key). Exclusive: adding or evicting an entry (Record of an unseen
//   pattern or of a role without a fallback yet), Reset,
//   ConsistencyProblem. Shared: Predict, Record of a stored pattern,
//   Snapshot. An attachment's fallback hint is only read under the lock,
//   and trusted only when the entry's identity matches.
// - An entry's `state` and `costed` are guarded by its spinlock (`spin`,
//   __atomic exchange on a plain uint32), taken while holding the table lock
//   in either mode; at most one entry spinlock at a time (a pattern's and
//   its fallback's are taken one after the other, never together).
// - Under a spinlock: only loads, stores and arithmetic; no calls that can
//   block, allocate or throw. Waiting spins with a CPU pause, then yields.
// - Always through guards, so an exception cannot leave anything locked.
// - The clock is read and allocations are made before locking.
#include "traffic_control/estimator.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "traffic_control/shm_primitives.hpp"

namespace tc {
namespace {

constexpr std::uint64_t kMagic = 0x5443504154544e53ULL;  // "TCPATTNS"
// 2: keyed by (user id, database id, query id), in-use marker, per-role
// fallback entries instead of global averages, 64-byte entries.
constexpr std::uint32_t kLayoutVersion = 2;
constexpr std::int32_t kNoSlot = -1;
constexpr int kEvictionSample = 16;
constexpr std::size_t kCacheLine = 64;

struct PatternHeader {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t capacity;
  std::uint32_t index_size;  // power of two
  std::uint32_t used_count;  // entries [0, used_count) are in use, the rest free
  std::uint64_t hash_seed;   // random per Initialize
  std::uint64_t entries_offset;
  std::uint64_t index_offset;
  std::uint64_t total_bytes;
  std::uint32_t clock_hand;  // where the next eviction scan starts
  std::uint32_t reserved;
};

struct PatternState {
  std::uint64_t calls;        // samples, saturating
  double mean_cpu;            // all samples
  double mean_cost;           // costed samples
  double mean_cpu_costed;     // costed samples
  std::int64_t last_used_us;  // monotonic clock; never moves backwards
};

struct PatternEntry {
  std::uint32_t spin;
  std::uint8_t in_use;  // identity: written only under the exclusive lock
  std::uint8_t costed;  // state (spinlock): a sample had a usable plan cost
  std::uint16_t reserved;
  // Identity (the key), written only under the exclusive lock; query_id 0:
  // the fallback entry of (user_id, database_id).
  std::uint32_t user_id;
  std::uint32_t database_id;
  std::uint64_t query_id;
  PatternState state;  // spinlock
};

static_assert(std::is_trivially_copyable_v<PatternHeader> &&
              std::is_standard_layout_v<PatternHeader>);
static_assert(std::is_trivially_copyable_v<PatternEntry> &&
              std::is_standard_layout_v<PatternEntry>);
// One cache line per entry: a statement's prediction and sample touch one
// line of the table (plus the index), as they did before the key held the
// role.
static_assert(sizeof(PatternEntry) == PatternTable::kEntryBytes &&
              PatternTable::kEntryBytes == kCacheLine);
static_assert(sizeof(PatternHeader) <= kCacheLine);

// Spinlocks: SpinWordGuard from shm_primitives.hpp.
using SpinGuard = SpinWordGuard;

// --- Layout ---------------------------------------------------------------------

constexpr std::size_t RoundUp(std::size_t value, std::size_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

struct Layout {
  std::size_t entries_offset;
  std::size_t index_offset;
  std::size_t total_bytes;
  std::uint32_t index_size;
};

Layout ComputeLayout(std::uint32_t capacity) {
  if (capacity > PatternTable::kMaxCapacity) {
    throw std::invalid_argument("pattern table capacity " + std::to_string(capacity) +
                                " exceeds the maximum of " +
                                std::to_string(PatternTable::kMaxCapacity));
  }
  Layout layout;
  layout.index_size = 2;
  while (layout.index_size < 2ull * capacity) layout.index_size *= 2;
  layout.entries_offset = RoundUp(sizeof(PatternHeader), kCacheLine);
  layout.index_offset =
      RoundUp(layout.entries_offset + sizeof(PatternEntry) * capacity, alignof(std::int32_t));
  layout.total_bytes = RoundUp(layout.index_offset + sizeof(std::int32_t) * layout.index_size,
                               alignof(PatternHeader));
  return layout;
}

struct TableView {
  PatternHeader* header;
  PatternEntry* entries;
  std::int32_t* index;
  std::uint32_t mask;
};

TableView ViewOf(MemorySpan memory) {
  auto* base = static_cast<unsigned char*>(memory.data);
  auto* header = reinterpret_cast<PatternHeader*>(base);
  return TableView{header, reinterpret_cast<PatternEntry*>(base + header->entries_offset),
                   reinterpret_cast<std::int32_t*>(base + header->index_offset),
                   header->index_size - 1};
}

std::uint64_t Mix(std::uint64_t h) { return SplitMix64Finalize(h); }

PatternKey KeyOf(const PatternEntry& entry) {
  return PatternKey{entry.user_id, entry.database_id, entry.query_id};
}

bool Holds(const PatternEntry& entry, const PatternKey& key) {
  return entry.query_id == key.query_id && entry.user_id == key.user_id &&
         entry.database_id == key.database_id && entry.in_use != 0;
}

PatternKey FallbackKey(std::uint32_t user_id, std::uint32_t database_id) {
  return PatternKey{user_id, database_id, 0};
}

// --- Index (under the table lock) -------------------------------------------------

// The query id is already a hash; the role and database are spread over the
// 64 bits by an odd multiplier (a bijection), so one finalizer does.
std::uint32_t HomeOf(const TableView& table, const PatternKey& key) {
  const std::uint64_t role = (static_cast<std::uint64_t>(key.user_id) << 32) | key.database_id;
  return static_cast<std::uint32_t>(
             Mix(key.query_id ^ table.header->hash_seed ^ (role * 0x9e3779b97f4a7c15ULL))) &
         table.mask;
}

// Inlined: it is most of a prediction's and a sample's work, and GCC does not
// inline it by itself once it has several callers.
[[gnu::always_inline]] inline std::int32_t Find(const TableView& table, const PatternKey& key) {
  for (std::uint32_t pos = HomeOf(table, key); table.index[pos] != kNoSlot;
       pos = (pos + 1) & table.mask) {
    const std::int32_t slot = table.index[pos];
    if (Holds(table.entries[slot], key)) return slot;
  }
  return kNoSlot;
}

void IndexInsert(const TableView& table, std::int32_t slot) {
  std::uint32_t pos = HomeOf(table, KeyOf(table.entries[slot]));
  while (table.index[pos] != kNoSlot) pos = (pos + 1) & table.mask;  // at most half full
  table.index[pos] = slot;
}

void IndexErase(const TableView& table, std::int32_t slot) {
  std::uint32_t hole = HomeOf(table, KeyOf(table.entries[slot]));
  while (table.index[hole] != slot) hole = (hole + 1) & table.mask;
  std::uint32_t pos = hole;
  for (;;) {
    pos = (pos + 1) & table.mask;
    const std::int32_t other = table.index[pos];
    if (other == kNoSlot) break;
    const std::uint32_t home = HomeOf(table, KeyOf(table.entries[other]));
    if (((pos - home) & table.mask) >= ((pos - hole) & table.mask)) {
      table.index[hole] = other;
      hole = pos;
    }
  }
  table.index[hole] = kNoSlot;
}

// Under the exclusive lock: a free entry (the first never used since the
// last Reset), else the least recently used of the next kEvictionSample
// entries after the clock hand, taken out of the index. kNoSlot only when
// the capacity is 0.
std::int32_t TakeSlot(const TableView& table) {
  PatternHeader& header = *table.header;
  const std::uint32_t capacity = header.capacity;
  if (header.used_count < capacity) return static_cast<std::int32_t>(header.used_count++);
  if (capacity == 0) return kNoSlot;
  std::int32_t best = kNoSlot;
  std::uint32_t pos = header.clock_hand % capacity;
  for (int seen = 0; seen < kEvictionSample && static_cast<std::uint32_t>(seen) < capacity;
       ++seen) {
    const auto slot = static_cast<std::int32_t>(pos);
    pos = pos + 1 == capacity ? 0 : pos + 1;
    // No free entries: every entry is in use.
    if (best == kNoSlot ||
        table.entries[slot].state.last_used_us < table.entries[best].state.last_used_us) {
      best = slot;
    }
  }
  header.clock_hand = pos;
  IndexErase(table, best);
  return best;
}

// --- Averages ---------------------------------------------------------------------

bool UsableCost(double plan_cost) { return std::isfinite(plan_cost) && plan_cost > 0; }

double Average(double mean, double sample, bool first, double alpha) {
  return first ? sample : mean + alpha * (sample - mean);
}

void Increment(std::uint64_t& counter) {
  if (counter != std::numeric_limits<std::uint64_t>::max()) ++counter;
}

// CPU-seconds per unit of cost, when both averages make one.
std::optional<double> Ratio(double cpu, double cost) {
  if (!(cost > 0)) return std::nullopt;
  const double k = cpu / cost;
  if (!std::isfinite(k) || k < 0) return std::nullopt;
  return k;
}

// Under the entry's spinlock. Returns the entry's sample count after this one.
std::uint64_t RecordIn(PatternEntry& entry, double plan_cost, double cpu_seconds, double alpha,
                       std::int64_t now_us) {
  PatternState& state = entry.state;
  state.mean_cpu = Average(state.mean_cpu, cpu_seconds, state.calls == 0, alpha);
  Increment(state.calls);
  if (UsableCost(plan_cost)) {
    const bool first = entry.costed == 0;
    state.mean_cost = Average(state.mean_cost, plan_cost, first, alpha);
    state.mean_cpu_costed = Average(state.mean_cpu_costed, cpu_seconds, first, alpha);
    entry.costed = 1;
  }
  state.last_used_us = std::max(state.last_used_us, now_us);
  return state.calls;
}

std::optional<double> Multiply(double plan_cost, std::optional<double> k) {
  if (!k) return std::nullopt;
  const double predicted = plan_cost * *k;
  if (!std::isfinite(predicted)) return std::nullopt;
  return predicted;
}

}  // namespace

std::size_t PatternTable::RequiredBytes(std::uint32_t capacity) {
  return ComputeLayout(capacity).total_bytes;
}

void PatternTable::Initialize(MemorySpan memory, std::uint32_t capacity) {
  const Layout layout = ComputeLayout(capacity);
  CheckTableMemory(memory.data, memory.size, layout.total_bytes, alignof(PatternHeader),
                   "pattern table");
  const std::uint64_t seed = RandomSeed();
  std::memset(memory.data, 0, layout.total_bytes);  // every entry free, unlocked
  auto* header = static_cast<PatternHeader*>(memory.data);
  header->magic = kMagic;
  header->version = kLayoutVersion;
  header->capacity = capacity;
  header->index_size = layout.index_size;
  header->hash_seed = seed;
  header->entries_offset = layout.entries_offset;
  header->index_offset = layout.index_offset;
  header->total_bytes = layout.total_bytes;
  const TableView table = ViewOf(memory);
  std::fill(table.index, table.index + layout.index_size, kNoSlot);
}

PatternTable::PatternTable(MemorySpan memory, TableLock& lock, Clock& clock)
    : memory_(memory), lock_(lock), clock_(clock) {
  const auto* header = static_cast<const PatternHeader*>(memory.data);
  if (memory.data == nullptr || memory.size < sizeof(PatternHeader) || header->magic != kMagic ||
      header->version != kLayoutVersion || header->capacity > kMaxCapacity ||
      header->total_bytes != ComputeLayout(header->capacity).total_bytes ||
      memory.size < header->total_bytes) {
    throw std::invalid_argument("pattern table memory is not formatted (call Initialize first)");
  }
}

std::uint32_t PatternTable::capacity() const {
  return static_cast<const PatternHeader*>(memory_.data)->capacity;
}

std::int32_t PatternTable::Lookup(const PatternKey& key) {
  const TableView table = ViewOf(memory_);
  if (key.query_id != 0) return Find(table, key);
  const std::int32_t hint = fallback_hint_;
  if (hint >= 0 && static_cast<std::uint32_t>(hint) < table.header->capacity &&
      Holds(table.entries[hint], key)) {
    return hint;
  }
  const std::int32_t slot = Find(table, key);
  if (slot != kNoSlot) fallback_hint_ = slot;
  return slot;
}

std::optional<double> PatternTable::FallbackK(std::uint32_t user_id, std::uint32_t database_id) {
  const TableView table = ViewOf(memory_);
  SharedGuard guard(lock_);
  const std::int32_t slot = Find(table, FallbackKey(user_id, database_id));
  if (slot == kNoSlot) return std::nullopt;
  PatternEntry& entry = table.entries[slot];
  SpinGuard spin(entry.spin);
  if (entry.costed == 0) return std::nullopt;
  return Ratio(entry.state.mean_cpu_costed, entry.state.mean_cost);
}

std::uint32_t PatternTable::UsedCount() {
  SharedGuard guard(lock_);
  return ViewOf(memory_).header->used_count;
}

void PatternTable::SetCallsForTest(const PatternKey& key, std::uint64_t calls) {
  const TableView table = ViewOf(memory_);
  ExclusiveGuard guard(lock_);
  const std::int32_t slot = Find(table, key);
  if (slot == kNoSlot) return;
  table.entries[slot].state.calls = calls;
}

std::optional<double> PatternTable::Predict(const PatternKey& key, double plan_cost) {
  const TableView table = ViewOf(memory_);
  const bool costed = UsableCost(plan_cost);
  const std::int64_t now_us = clock_.NowMicros();
  bool found = false;
  bool has_k = false;
  PatternState state{};
  if (key.query_id != 0) {
    SharedGuard guard(lock_);
    const std::int32_t slot = Find(table, key);
    if (slot != kNoSlot) {
      PatternEntry& entry = table.entries[slot];
      SpinGuard spin(entry.spin);
      entry.state.last_used_us = std::max(entry.state.last_used_us, now_us);
      state = entry.state;
      has_k = entry.costed != 0;
      found = true;
    }
  }
  if (costed) {
    if (has_k) {
      if (auto predicted = Multiply(plan_cost, Ratio(state.mean_cpu_costed, state.mean_cost))) {
        return predicted;
      }
    }
    // An unseen pattern (or one without a k): its role's fallback k.
    if (auto predicted = Multiply(plan_cost, UseFallbackK(key, now_us))) return predicted;
  }
  if (found && state.calls > 0 && std::isfinite(state.mean_cpu)) return state.mean_cpu;
  return std::nullopt;
}

std::optional<double> PatternTable::UseFallbackK(const PatternKey& key, std::int64_t now_us) {
  const TableView table = ViewOf(memory_);
  SharedGuard guard(lock_);
  const std::int32_t slot = Lookup(FallbackKey(key.user_id, key.database_id));
  if (slot == kNoSlot) return std::nullopt;
  PatternEntry& entry = table.entries[slot];
  SpinGuard spin(entry.spin);
  entry.state.last_used_us = std::max(entry.state.last_used_us, now_us);
  if (entry.costed == 0) return std::nullopt;
  return Ratio(entry.state.mean_cpu_costed, entry.state.mean_cost);
}

void PatternTable::Record(const PatternKey& key, double plan_cost, double cpu_seconds) {
  if (!std::isfinite(cpu_seconds) || cpu_seconds < 0) return;
  const std::int64_t now_us = clock_.NowMicros();
  const std::uint64_t calls =
      key.query_id != 0 ? RecordEntry(key, plan_cost, cpu_seconds, kPatternAlpha, now_us) : 0;
  // The role's fallback takes its samples without a pattern, and a pattern's
  // first kFallbackSampleEvery samples and every kFallbackSampleEvery-th
  // after: enough for unseen patterns, and the fallback's line stays cold.
  if (UsableCost(plan_cost) &&
      (calls == 0 || calls <= kFallbackSampleEvery || calls % kFallbackSampleEvery == 0)) {
    RecordEntry(FallbackKey(key.user_id, key.database_id), plan_cost, cpu_seconds, kFallbackAlpha,
                now_us);
  }
}

std::uint64_t PatternTable::RecordEntry(const PatternKey& key, double plan_cost, double cpu_seconds,
                                        double alpha, std::int64_t now_us) {
  const TableView table = ViewOf(memory_);
  {
    SharedGuard guard(lock_);
    const std::int32_t slot = key.query_id != 0 ? Find(table, key) : Lookup(key);
    if (slot != kNoSlot) {
      PatternEntry& entry = table.entries[slot];
      SpinGuard spin(entry.spin);
      return RecordIn(entry, plan_cost, cpu_seconds, alpha, now_us);
    }
  }

  ExclusiveGuard guard(lock_);
  std::int32_t slot = Lookup(key);  // another backend may have added it
  if (slot == kNoSlot) {
    slot = TakeSlot(table);
    if (slot == kNoSlot) return 0;  // capacity 0
    PatternEntry& entry = table.entries[slot];
    std::memset(&entry, 0, sizeof entry);  // spin = 0: nobody can hold it now
    entry.user_id = key.user_id;
    entry.database_id = key.database_id;
    entry.query_id = key.query_id;
    entry.in_use = 1;
    IndexInsert(table, slot);
    if (key.query_id == 0) fallback_hint_ = slot;
  }
  PatternEntry& entry = table.entries[slot];
  SpinGuard spin(entry.spin);
  return RecordIn(entry, plan_cost, cpu_seconds, alpha, now_us);
}

std::vector<PatternSnapshot> PatternTable::Snapshot() {
  const TableView table = ViewOf(memory_);
  const std::uint32_t slot_count = capacity();
  std::vector<PatternSnapshot> snapshots;
  std::size_t expected = 0;
  {
    SharedGuard guard(lock_);
    expected = table.header->used_count;
  }
  for (;;) {
    snapshots.clear();
    snapshots.reserve(std::min<std::size_t>(slot_count, expected + 16));
    SharedGuard guard(lock_);
    expected = table.header->used_count;
    if (expected > snapshots.capacity()) continue;  // grew meanwhile: allocate unlocked
    for (std::uint32_t slot = 0; slot < slot_count; ++slot) {
      PatternEntry& entry = table.entries[slot];
      if (entry.in_use == 0 || entry.query_id == 0) continue;  // free, or a fallback
      PatternState state;
      bool costed;
      {
        SpinGuard spin(entry.spin);
        state = entry.state;
        costed = entry.costed != 0;
      }
      PatternSnapshot snapshot;
      snapshot.query_id = entry.query_id;
      snapshot.user_id = entry.user_id;
      snapshot.database_id = entry.database_id;
      snapshot.calls = state.calls;
      snapshot.mean_cpu_seconds = state.mean_cpu;
      snapshot.mean_plan_cost = costed ? state.mean_cost : 0;
      snapshot.k = std::numeric_limits<double>::quiet_NaN();
      if (costed) {
        if (auto k = Ratio(state.mean_cpu_costed, state.mean_cost)) snapshot.k = *k;
      }
      snapshots.push_back(snapshot);
    }
    break;
  }
  std::sort(snapshots.begin(), snapshots.end(),
            [](const PatternSnapshot& a, const PatternSnapshot& b) {
              if (a.query_id != b.query_id) return a.query_id < b.query_id;
              if (a.user_id != b.user_id) return a.user_id < b.user_id;
              return a.database_id < b.database_id;
            });
  return snapshots;
}

void PatternTable::Reset() {
  const TableView table = ViewOf(memory_);
  const std::uint32_t slot_count = capacity();
  ExclusiveGuard guard(lock_);
  PatternHeader& header = *table.header;
  // No entry spinlock is held: they are taken only under the table lock.
  std::memset(static_cast<void*>(table.entries), 0, sizeof(PatternEntry) * slot_count);
  std::fill(table.index, table.index + header.index_size, kNoSlot);
  header.used_count = 0;
  header.clock_hand = 0;
}

std::string PatternTable::ConsistencyProblem() {
  const TableView table = ViewOf(memory_);
  const std::uint32_t slot_count = capacity();
  ExclusiveGuard guard(lock_);
  const PatternHeader& header = *table.header;
  if (header.used_count > slot_count) return "used_count above the capacity";
  std::uint32_t used = 0, indexed = 0;
  for (std::uint32_t slot = 0; slot < slot_count; ++slot) {
    const PatternEntry& entry = table.entries[slot];
    if (entry.spin != 0) return "spinlock held in slot " + std::to_string(slot);
    if (entry.in_use > 1) return "bad in-use marker in slot " + std::to_string(slot);
    if ((entry.in_use != 0) != (slot < header.used_count)) {
      return "in-use marker disagrees with used_count in slot " + std::to_string(slot);
    }
    if (entry.in_use == 0) continue;
    ++used;
    if (Find(table, KeyOf(entry)) != static_cast<std::int32_t>(slot)) {
      return "entry not found through the index in slot " + std::to_string(slot);
    }
    if (entry.state.calls == 0) return "stored entry without calls";
    if (!std::isfinite(entry.state.mean_cpu) || entry.state.mean_cpu < 0) return "bad mean cpu";
    if (entry.costed > 1) return "bad costed flag";
    if (entry.costed != 0 && !(entry.state.mean_cost > 0)) return "bad mean cost";
    if (entry.query_id == 0 && entry.costed == 0) return "fallback without a costed sample";
  }
  if (used != header.used_count) return "used_count mismatch";
  for (std::uint32_t pos = 0; pos < header.index_size; ++pos) {
    const std::int32_t slot = table.index[pos];
    if (slot == kNoSlot) continue;
    ++indexed;
    if (slot < 0 || static_cast<std::uint32_t>(slot) >= slot_count ||
        table.entries[slot].in_use == 0) {
      return "index points at a free entry";
    }
    for (std::uint32_t probe = HomeOf(table, KeyOf(table.entries[slot])); probe != pos;
         probe = (probe + 1) & table.mask) {
      if (table.index[probe] == kNoSlot) return "index probe run broken";
    }
  }
  if (indexed != used) return "index size mismatch";
  return "";
}

}  // namespace tc
