// Pattern table: one entry per query pattern (query id), shared by every
// backend through PostgreSQL shared memory, plus the global averages behind
// the global k.
//
// Layout (one contiguous block of RequiredBytes(capacity) bytes, formatted once
// by Initialize; plain structs, offsets and int32 slot numbers, no pointers):
//   PatternHeader                      magic/version, capacity, free list,
//                                      eviction hand, hash seed, global
//                                      averages (with their own spinlock)
//   PatternEntry entries[capacity]     spinlock, query id, averages, last use
//   int32 index[index_size]            open addressing on the query id: power
//                                      of two >= 2 x capacity, linear probing,
//                                      backward-shift deletion
// An entry is free (query_id 0, on the free list) or in use (indexed). A new
// pattern takes a free entry, else evicts the least recently used of the next
// kEvictionSample entries after a clock hand (approximate LRU, O(1)).
//
// Model: per pattern, exponential moving averages (alpha kPatternAlpha, the
// first sample as is) of CPU-seconds over all samples (mean_cpu: predicts
// statements without a usable plan cost), and of plan cost and CPU-seconds
// over the samples with a positive finite plan cost (k = mean_cpu_costed /
// mean_cost, so k is a ratio of averages of the same samples). Globally the
// same two costed averages with kGlobalAlpha give the global k; they take
// every sample without a query id, and of each pattern its first
// kGlobalSampleEvery samples and every kGlobalSampleEvery-th after that (so
// the global spinlock is not a cache line every statement writes).
//
// Locking rules:
// - The table lock (`lock_`, its own LWLock in PostgreSQL) guards the index,
//   the free list, the eviction hand and every entry's identity (query_id).
//   Exclusive: adding or evicting a pattern (Record of an unseen pattern),
//   Reset, ConsistencyProblem. Shared: Predict, Record of a stored pattern,
//   Snapshot.
// - An entry's `state` is guarded by its spinlock (`spin`, __atomic exchange
//   on a plain uint32), taken while holding the table lock in either mode; at
//   most one entry spinlock at a time.
// - The global averages are guarded by the header's `global_spin` alone (no
//   table lock needed); Reset takes it too. Never taken while holding an
//   entry spinlock, and vice versa.
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
constexpr std::uint32_t kLayoutVersion = 1;
constexpr std::int32_t kNoSlot = -1;
constexpr int kEvictionSample = 16;

struct GlobalState {
  std::uint64_t samples;  // costed samples, saturating
  double mean_cost;
  double mean_cpu;
};

struct PatternHeader {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t capacity;
  std::uint32_t index_size;  // power of two
  std::uint32_t used_count;
  std::uint64_t hash_seed;  // random per Initialize
  std::uint64_t entries_offset;
  std::uint64_t index_offset;
  std::uint64_t total_bytes;
  std::int32_t free_head;    // singly linked through PatternEntry::next
  std::uint32_t clock_hand;  // where the next eviction scan starts
  std::uint32_t global_spin;
  std::uint32_t reserved;
  GlobalState global;
};

struct PatternState {
  std::uint64_t calls;         // samples, saturating
  std::uint64_t cost_samples;  // samples with a usable plan cost, saturating
  double mean_cpu;             // all samples
  double mean_cost;            // costed samples
  double mean_cpu_costed;      // costed samples
  std::int64_t last_used_us;   // monotonic clock; never moves backwards
};

struct PatternEntry {
  std::uint32_t spin;
  std::int32_t next;       // free list
  std::uint64_t query_id;  // 0 = free; written only under the exclusive lock
  PatternState state;
};

static_assert(std::is_trivially_copyable_v<PatternHeader> &&
              std::is_standard_layout_v<PatternHeader>);
static_assert(std::is_trivially_copyable_v<PatternEntry> &&
              std::is_standard_layout_v<PatternEntry>);

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
  layout.entries_offset = RoundUp(sizeof(PatternHeader), alignof(PatternEntry));
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

// --- Index (under the table lock) -------------------------------------------------

std::uint32_t HomeOf(const TableView& table, std::uint64_t query_id) {
  return static_cast<std::uint32_t>(Mix(query_id ^ table.header->hash_seed)) & table.mask;
}

std::int32_t Find(const TableView& table, std::uint64_t query_id) {
  for (std::uint32_t pos = HomeOf(table, query_id); table.index[pos] != kNoSlot;
       pos = (pos + 1) & table.mask) {
    const std::int32_t slot = table.index[pos];
    if (table.entries[slot].query_id == query_id) return slot;
  }
  return kNoSlot;
}

void IndexInsert(const TableView& table, std::int32_t slot) {
  std::uint32_t pos = HomeOf(table, table.entries[slot].query_id);
  while (table.index[pos] != kNoSlot) pos = (pos + 1) & table.mask;  // at most half full
  table.index[pos] = slot;
}

void IndexErase(const TableView& table, std::int32_t slot) {
  std::uint32_t hole = HomeOf(table, table.entries[slot].query_id);
  while (table.index[hole] != slot) hole = (hole + 1) & table.mask;
  std::uint32_t pos = hole;
  for (;;) {
    pos = (pos + 1) & table.mask;
    const std::int32_t other = table.index[pos];
    if (other == kNoSlot) break;
    const std::uint32_t home = HomeOf(table, table.entries[other].query_id);
    if (((pos - home) & table.mask) >= ((pos - hole) & table.mask)) {
      table.index[hole] = other;
      hole = pos;
    }
  }
  table.index[hole] = kNoSlot;
}

// Under the exclusive lock: a free entry, else the least recently used of the
// next kEvictionSample entries after the clock hand. kNoSlot only when the
// capacity is 0.
std::int32_t TakeSlot(const TableView& table) {
  PatternHeader& header = *table.header;
  if (header.free_head != kNoSlot) {
    const std::int32_t slot = header.free_head;
    header.free_head = table.entries[slot].next;
    ++header.used_count;
    return slot;
  }
  const std::uint32_t capacity = header.capacity;
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

// Returns the pattern's sample count after this one.
std::uint64_t RecordIn(PatternState& state, double plan_cost, double cpu_seconds,
                       std::int64_t now_us) {
  state.mean_cpu =
      Average(state.mean_cpu, cpu_seconds, state.calls == 0, PatternTable::kPatternAlpha);
  Increment(state.calls);
  if (UsableCost(plan_cost)) {
    const bool first = state.cost_samples == 0;
    state.mean_cost = Average(state.mean_cost, plan_cost, first, PatternTable::kPatternAlpha);
    state.mean_cpu_costed =
        Average(state.mean_cpu_costed, cpu_seconds, first, PatternTable::kPatternAlpha);
    Increment(state.cost_samples);
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
  std::memset(memory.data, 0, layout.total_bytes);
  auto* header = static_cast<PatternHeader*>(memory.data);
  header->magic = kMagic;
  header->version = kLayoutVersion;
  header->capacity = capacity;
  header->index_size = layout.index_size;
  header->hash_seed = seed;
  header->entries_offset = layout.entries_offset;
  header->index_offset = layout.index_offset;
  header->total_bytes = layout.total_bytes;
  header->free_head = capacity > 0 ? 0 : kNoSlot;
  const TableView table = ViewOf(memory);
  for (std::uint32_t slot = 0; slot < capacity; ++slot) {
    table.entries[slot].next = slot + 1 < capacity ? static_cast<std::int32_t>(slot + 1) : kNoSlot;
  }
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

std::optional<double> PatternTable::GlobalK() {
  PatternHeader& header = *ViewOf(memory_).header;
  SpinGuard spin(header.global_spin);
  if (header.global.samples == 0) return std::nullopt;
  return Ratio(header.global.mean_cpu, header.global.mean_cost);
}

void PatternTable::SetCountersForTest(std::uint64_t query_id, std::uint64_t calls,
                                      std::uint64_t cost_samples) {
  const TableView table = ViewOf(memory_);
  ExclusiveGuard guard(lock_);
  const std::int32_t slot = Find(table, query_id);
  if (slot == kNoSlot) return;
  table.entries[slot].state.calls = calls;
  table.entries[slot].state.cost_samples = cost_samples;
}

std::optional<double> PatternTable::Predict(std::uint64_t query_id, double plan_cost) {
  const TableView table = ViewOf(memory_);
  const bool costed = UsableCost(plan_cost);
  bool found = false;
  PatternState state{};
  if (query_id != 0) {
    const std::int64_t now_us = clock_.NowMicros();
    SharedGuard guard(lock_);
    const std::int32_t slot = Find(table, query_id);
    if (slot != kNoSlot) {
      PatternEntry& entry = table.entries[slot];
      SpinGuard spin(entry.spin);
      entry.state.last_used_us = std::max(entry.state.last_used_us, now_us);
      state = entry.state;
      found = true;
    }
  }
  if (costed) {
    if (found && state.cost_samples > 0) {
      if (auto predicted = Multiply(plan_cost, Ratio(state.mean_cpu_costed, state.mean_cost))) {
        return predicted;
      }
    }
    if (auto predicted = Multiply(plan_cost, GlobalK())) return predicted;
  }
  if (found && state.calls > 0 && std::isfinite(state.mean_cpu)) return state.mean_cpu;
  return std::nullopt;
}

void PatternTable::Record(std::uint64_t query_id, double plan_cost, double cpu_seconds) {
  if (!std::isfinite(cpu_seconds) || cpu_seconds < 0) return;
  const TableView table = ViewOf(memory_);
  const std::int64_t now_us = clock_.NowMicros();
  const std::uint64_t calls = RecordPattern(query_id, plan_cost, cpu_seconds, now_us);
  // The global averages take a sample without a pattern, and a pattern's
  // first kGlobalSampleEvery samples and every kGlobalSampleEvery-th after:
  // enough for unseen patterns, and the global spinlock stays cold.
  if (UsableCost(plan_cost) &&
      (calls == 0 || calls <= kGlobalSampleEvery || calls % kGlobalSampleEvery == 0)) {
    PatternHeader& header = *table.header;
    SpinGuard spin(header.global_spin);
    GlobalState& global = header.global;
    const bool first = global.samples == 0;
    global.mean_cost = Average(global.mean_cost, plan_cost, first, kGlobalAlpha);
    global.mean_cpu = Average(global.mean_cpu, cpu_seconds, first, kGlobalAlpha);
    Increment(global.samples);
  }
}

std::uint64_t PatternTable::RecordPattern(std::uint64_t query_id, double plan_cost,
                                          double cpu_seconds, std::int64_t now_us) {
  const TableView table = ViewOf(memory_);
  if (query_id == 0) return 0;
  {
    SharedGuard guard(lock_);
    const std::int32_t slot = Find(table, query_id);
    if (slot != kNoSlot) {
      PatternEntry& entry = table.entries[slot];
      SpinGuard spin(entry.spin);
      return RecordIn(entry.state, plan_cost, cpu_seconds, now_us);
    }
  }

  ExclusiveGuard guard(lock_);
  std::int32_t slot = Find(table, query_id);  // another backend may have added it
  if (slot == kNoSlot) {
    slot = TakeSlot(table);
    if (slot == kNoSlot) return 0;  // capacity 0
    PatternEntry& entry = table.entries[slot];
    std::memset(&entry, 0, sizeof entry);  // spin = 0: nobody can hold it now
    entry.query_id = query_id;
    entry.next = kNoSlot;
    IndexInsert(table, slot);
  }
  PatternEntry& entry = table.entries[slot];
  SpinGuard spin(entry.spin);
  return RecordIn(entry.state, plan_cost, cpu_seconds, now_us);
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
      if (entry.query_id == 0) continue;
      PatternState state;
      {
        SpinGuard spin(entry.spin);
        state = entry.state;
      }
      PatternSnapshot snapshot;
      snapshot.query_id = entry.query_id;
      snapshot.calls = state.calls;
      snapshot.mean_cpu_seconds = state.mean_cpu;
      snapshot.mean_plan_cost = state.cost_samples > 0 ? state.mean_cost : 0;
      snapshot.k = std::numeric_limits<double>::quiet_NaN();
      if (state.cost_samples > 0) {
        if (auto k = Ratio(state.mean_cpu_costed, state.mean_cost)) snapshot.k = *k;
      }
      snapshots.push_back(snapshot);
    }
    break;
  }
  std::sort(
      snapshots.begin(), snapshots.end(),
      [](const PatternSnapshot& a, const PatternSnapshot& b) { return a.query_id < b.query_id; });
  return snapshots;
}

void PatternTable::Reset() {
  const TableView table = ViewOf(memory_);
  const std::uint32_t slot_count = capacity();
  ExclusiveGuard guard(lock_);
  PatternHeader& header = *table.header;
  for (std::uint32_t slot = 0; slot < slot_count; ++slot) {
    PatternEntry& entry = table.entries[slot];
    entry.query_id = 0;
    entry.state = PatternState{};
    entry.next = slot + 1 < slot_count ? static_cast<std::int32_t>(slot + 1) : kNoSlot;
  }
  std::fill(table.index, table.index + header.index_size, kNoSlot);
  header.free_head = slot_count > 0 ? 0 : kNoSlot;
  header.used_count = 0;
  header.clock_hand = 0;
  SpinGuard spin(header.global_spin);
  header.global = GlobalState{};
}

std::string PatternTable::ConsistencyProblem() {
  const TableView table = ViewOf(memory_);
  const std::uint32_t slot_count = capacity();
  ExclusiveGuard guard(lock_);
  const PatternHeader& header = *table.header;
  std::uint32_t used = 0, free_entries = 0, indexed = 0;
  for (std::uint32_t slot = 0; slot < slot_count; ++slot) {
    const PatternEntry& entry = table.entries[slot];
    if (entry.spin != 0) return "spinlock held in slot " + std::to_string(slot);
    if (entry.query_id == 0) continue;
    ++used;
    if (Find(table, entry.query_id) != static_cast<std::int32_t>(slot)) {
      return "pattern not found through the index in slot " + std::to_string(slot);
    }
    if (entry.state.calls == 0) return "stored pattern without calls";
    if (!std::isfinite(entry.state.mean_cpu) || entry.state.mean_cpu < 0) return "bad mean cpu";
    if (entry.state.cost_samples > 0 && !(entry.state.mean_cost > 0)) return "bad mean cost";
  }
  if (used != header.used_count) return "used_count mismatch";
  for (std::int32_t slot = header.free_head; slot != kNoSlot; slot = table.entries[slot].next) {
    if (++free_entries > slot_count) return "free list loops";
    if (table.entries[slot].query_id != 0) return "used entry on free list";
  }
  if (used + free_entries != slot_count) return "entries lost from the free list";
  for (std::uint32_t pos = 0; pos < header.index_size; ++pos) {
    const std::int32_t slot = table.index[pos];
    if (slot == kNoSlot) continue;
    ++indexed;
    if (slot < 0 || static_cast<std::uint32_t>(slot) >= slot_count ||
        table.entries[slot].query_id == 0) {
      return "index points at a free entry";
    }
    for (std::uint32_t probe = HomeOf(table, table.entries[slot].query_id); probe != pos;
         probe = (probe + 1) & table.mask) {
      if (table.index[probe] == kNoSlot) return "index probe run broken";
    }
  }
  if (indexed != used) return "index size mismatch";
  return "";
}

}  // namespace tc
