// Rule counters: how many statements each rule put into its budget
// (rule_status.matched), shared by every backend through PostgreSQL shared
// memory.
//
// Layout (one contiguous block of RequiredBytes(capacity) bytes, formatted once
// by Initialize; plain structs, no pointers):
//   CounterHeader                      magic/version, capacity, slot count,
//                                      keys stored
//   CounterEntry entries[slot_count]   state, 128-bit key, counter
// The entries are an open-addressing hash table (power of two >= 2 x capacity
// slots, linear probing). Keys are never removed, so at most `capacity` of
// the slots are ever taken and a probe always reaches an empty slot; a slot
// number, once handed out, names the same key until the memory is formatted
// again (server restart), which is what lets a backend cache it per rule.
//
// A key is a 128-bit hash of (rule name, budget name). Names come from the
// configuration (superusers), not from clients, so nobody aims collisions at
// it; two different pairs share a counter only with probability ~ n^2 / 2^129.
// Keying on the budget too means a rule that now names another budget starts
// a fresh count.
//
// Concurrency rules (no lock at all):
// - An entry's `state` goes 0 (empty) -> 1 (being written) -> 2 (ready), once.
//   Only the backend whose compare-and-swap moved it from 0 to 1 writes the
//   key, then stores 2 with release order; readers load `state` with acquire
//   order and read the key only when it is 2. A reader that meets 1 waits
//   (spins, then yields) for the few stores in between: nothing in them can
//   fail or block, and a backend that dies there crashes the server anyway
//   (the postmaster's restart formats the memory anew).
// - `used` counts reserved keys: Resolve reserves one (atomic add) before
//   claiming a slot and gives it back if another backend added the same key
//   first or the table is full, so `used` never exceeds `capacity` for long
//   and there is always an empty slot to find.
// - Counters are only touched with atomic add, load and store (relaxed
//   order: they are statistics, nothing is ordered by them).
#include "traffic_control/rule_counters.hpp"

#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "traffic_control/shm_primitives.hpp"

namespace tc {
namespace {

constexpr std::uint64_t kMagic = 0x5443525546434e54ULL;  // "TCRUFCNT"
constexpr std::uint32_t kLayoutVersion = 1;
constexpr std::uint32_t kEmpty = 0, kWriting = 1, kReady = 2;

struct CounterHeader {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t capacity;
  std::uint32_t slot_count;  // power of two >= 2 x capacity
  std::uint32_t used;        // keys reserved; atomic
  std::uint64_t total_bytes;
};

struct CounterEntry {
  std::uint32_t state;  // kEmpty, kWriting, kReady; atomic
  std::uint32_t padding;
  std::uint64_t key_low;
  std::uint64_t key_high;
  std::uint64_t matched;  // atomic
};

static_assert(std::is_trivially_copyable_v<CounterHeader> &&
              std::is_standard_layout_v<CounterHeader>);
static_assert(std::is_trivially_copyable_v<CounterEntry> &&
              std::is_standard_layout_v<CounterEntry>);

struct Key {
  std::uint64_t low;
  std::uint64_t high;
};

// Two independently seeded and multiplied 64-bit hashes of the pair.
Key KeyOf(std::string_view rule, std::string_view budget) {
  constexpr std::uint64_t kMulB1 = 0xc2b2ae3d27d4eb4fULL, kMulB2 = 0x165667b19e3779f9ULL;
  const std::uint64_t low = HashBytes(HashBytes(0x243f6a8885a308d3ULL, rule), budget);
  std::uint64_t high = HashBytes(0x13198a2e03707344ULL, rule, kMulB1, kMulB2);
  high = HashBytes(high, budget, kMulB1, kMulB2);
  return Key{SplitMix64Finalize(low), SplitMix64Finalize(high)};
}

constexpr std::size_t RoundUp(std::size_t value, std::size_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

struct Layout {
  std::uint32_t slot_count;
  std::size_t entries_offset;
  std::size_t total_bytes;
};

Layout ComputeLayout(std::uint32_t capacity) {
  if (capacity > RuleCounterTable::kMaxCapacity) {
    throw std::invalid_argument("rule counter table capacity " + std::to_string(capacity) +
                                " exceeds the maximum of " +
                                std::to_string(RuleCounterTable::kMaxCapacity));
  }
  Layout layout;
  layout.slot_count = 2;
  while (layout.slot_count < 2ull * capacity) layout.slot_count *= 2;
  layout.entries_offset = RoundUp(sizeof(CounterHeader), alignof(CounterEntry));
  layout.total_bytes = layout.entries_offset + sizeof(CounterEntry) * layout.slot_count;
  return layout;
}

constexpr std::size_t kEntriesOffset = RoundUp(sizeof(CounterHeader), alignof(CounterEntry));

CounterHeader* HeaderOf(MemorySpan memory) { return static_cast<CounterHeader*>(memory.data); }

CounterEntry* EntriesOf(MemorySpan memory) {
  return reinterpret_cast<CounterEntry*>(static_cast<unsigned char*>(memory.data) + kEntriesOffset);
}

// The entry's state once it is no longer being written (kEmpty or kReady).
std::uint32_t SettledState(const CounterEntry& entry) {
  SpinBackoff backoff;
  for (;;) {
    const std::uint32_t state = __atomic_load_n(&entry.state, __ATOMIC_ACQUIRE);
    if (state != kWriting) return state;
    backoff.Pause();  // the writer may have been descheduled
  }
}

bool SameKey(const CounterEntry& entry, const Key& key) {
  return entry.key_low == key.low && entry.key_high == key.high;
}

}  // namespace

std::size_t RuleCounterTable::RequiredBytes(std::uint32_t capacity) {
  return ComputeLayout(capacity).total_bytes;
}

void RuleCounterTable::Initialize(MemorySpan memory, std::uint32_t capacity) {
  const Layout layout = ComputeLayout(capacity);
  if (memory.data == nullptr || memory.size < layout.total_bytes) {
    throw std::invalid_argument("rule counter memory is smaller than RequiredBytes(capacity)");
  }
  if (reinterpret_cast<std::uintptr_t>(memory.data) % alignof(CounterHeader) != 0) {
    throw std::invalid_argument("rule counter memory is not 8-byte aligned");
  }
  std::memset(memory.data, 0, layout.total_bytes);  // every entry kEmpty, counters 0
  CounterHeader* header = HeaderOf(memory);
  header->magic = kMagic;
  header->version = kLayoutVersion;
  header->capacity = capacity;
  header->slot_count = layout.slot_count;
  header->used = 0;
  header->total_bytes = layout.total_bytes;
}

RuleCounterTable::RuleCounterTable(MemorySpan memory) : memory_(memory) {
  const auto* header = static_cast<const CounterHeader*>(memory.data);
  if (memory.data == nullptr || memory.size < sizeof(CounterHeader) || header->magic != kMagic ||
      header->version != kLayoutVersion || header->capacity > kMaxCapacity ||
      header->total_bytes != ComputeLayout(header->capacity).total_bytes ||
      header->slot_count != ComputeLayout(header->capacity).slot_count ||
      memory.size < header->total_bytes) {
    throw std::invalid_argument("rule counter memory is not formatted (call Initialize first)");
  }
}

std::uint32_t RuleCounterTable::capacity() const { return HeaderOf(memory_)->capacity; }

std::uint32_t RuleCounterTable::size() const {
  const std::uint32_t used = __atomic_load_n(&HeaderOf(memory_)->used, __ATOMIC_RELAXED);
  return used < capacity() ? used : capacity();
}

std::int32_t RuleCounterTable::Find(std::string_view rule, std::string_view budget) const {
  const Key key = KeyOf(rule, budget);
  const CounterHeader& header = *HeaderOf(memory_);
  const CounterEntry* entries = EntriesOf(memory_);
  const std::uint32_t mask = header.slot_count - 1;
  for (std::uint32_t pos = static_cast<std::uint32_t>(key.low) & mask, probes = 0;
       probes < header.slot_count; pos = (pos + 1) & mask, ++probes) {
    const std::uint32_t state = SettledState(entries[pos]);
    if (state == kEmpty) return kNoSlot;
    if (SameKey(entries[pos], key)) return static_cast<std::int32_t>(pos);
  }
  return kNoSlot;
}

std::int32_t RuleCounterTable::Resolve(std::string_view rule, std::string_view budget) {
  const std::int32_t found = Find(rule, budget);
  if (found != kNoSlot) return found;

  const Key key = KeyOf(rule, budget);
  CounterHeader& header = *HeaderOf(memory_);
  CounterEntry* entries = EntriesOf(memory_);
  const std::uint32_t mask = header.slot_count - 1;
  // Reserve room for one more key first, so the slots taken never exceed
  // capacity (at most half of them) and the probe below always ends.
  if (__atomic_fetch_add(&header.used, 1u, __ATOMIC_RELAXED) >= header.capacity) {
    __atomic_fetch_sub(&header.used, 1u, __ATOMIC_RELAXED);
    return Find(rule, budget);  // another backend may have added it meanwhile
  }
  std::uint32_t pos = static_cast<std::uint32_t>(key.low) & mask;
  for (;;) {
    CounterEntry& entry = entries[pos];
    std::uint32_t state = SettledState(entry);
    if (state == kEmpty) {
      std::uint32_t expected = kEmpty;
      if (__atomic_compare_exchange_n(&entry.state, &expected, kWriting, false, __ATOMIC_ACQUIRE,
                                      __ATOMIC_RELAXED)) {
        entry.key_low = key.low;
        entry.key_high = key.high;
        __atomic_store_n(&entry.matched, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&entry.state, kReady, __ATOMIC_RELEASE);
        return static_cast<std::int32_t>(pos);
      }
      state = SettledState(entry);  // lost the race: look at what was written
    }
    if (SameKey(entry, key)) {
      // Added by another backend since our Find: give the reservation back.
      __atomic_fetch_sub(&header.used, 1u, __ATOMIC_RELAXED);
      return static_cast<std::int32_t>(pos);
    }
    pos = (pos + 1) & mask;
  }
}

void RuleCounterTable::Add(std::int32_t slot, std::uint64_t count) {
  if (slot < 0 || static_cast<std::uint32_t>(slot) >= HeaderOf(memory_)->slot_count) return;
  __atomic_fetch_add(&EntriesOf(memory_)[slot].matched, count, __ATOMIC_RELAXED);
}

std::uint64_t RuleCounterTable::Count(std::int32_t slot) const {
  if (slot < 0 || static_cast<std::uint32_t>(slot) >= HeaderOf(memory_)->slot_count) return 0;
  return __atomic_load_n(&EntriesOf(memory_)[slot].matched, __ATOMIC_RELAXED);
}

void RuleCounterTable::ResetCounts() {
  const std::uint32_t slot_count = HeaderOf(memory_)->slot_count;
  CounterEntry* entries = EntriesOf(memory_);
  for (std::uint32_t slot = 0; slot < slot_count; ++slot) {
    __atomic_store_n(&entries[slot].matched, 0, __ATOMIC_RELAXED);
  }
}

}  // namespace tc
