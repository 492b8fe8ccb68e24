// Bucket table: one entry per budget instance (budget name + `each` value),
// shared by every backend through PostgreSQL shared memory.
//
// Layout (one contiguous block of RequiredBytes(capacity) bytes, formatted once
// by Initialize; plain structs, offsets and int32 slot numbers, no pointers, so
// any process may map it at any address):
//   TableHeader                        magic/version, capacity, waiter count,
//                                      free list, idle LRU list, hash seed
//   BucketEntry entries[capacity]      counts, counters, key, display text
//   int32 index[index_size]            open addressing: power of two >=
//                                      2 x capacity, linear probing,
//                                      backward-shift deletion; kNoSlot = empty
// An entry is free (on the free list), idle (in use with active == 0, on the
// idle list ordered least recently used first) or busy (active > 0, on no
// list). A new key takes a free entry, else evicts the head of the idle list;
// busy entries are never evicted, so an outstanding Holding always refers to
// its own entry.
//
// Locking rules:
// - Every read or write of the block after Initialize happens under `lock_`:
//   exclusive for Admit, Release, ResetCounters, AddWaiter and RemoveWaiter;
//   shared for Snapshot. The only exception is the header's capacity and hash
//   seed, which never change after Initialize and are read without the lock.
// - Always through ExclusiveGuard/SharedGuard, so an exception cannot leave
//   the table locked.
// - Nothing slow while locked: hashes, the clock and every allocation happen
//   before taking the lock (result vectors are sized or reserved up front);
//   the locked sections only walk the table and write into that memory.
#include "traffic_control/bucket_table.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <type_traits>

namespace tc {
namespace {

constexpr std::uint64_t kMagic = 0x54434255434b4554ULL;  // "TCBUCKET"
constexpr std::uint32_t kLayoutVersion = 1;
constexpr std::int32_t kNoSlot = -1;
constexpr std::size_t kBudgetNameCapacity = kMaxBudgetNameBytes + 1;

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
  std::uint64_t total_bytes;
  std::int64_t waiters;
  std::int32_t free_head;  // singly linked through BucketEntry::next
  std::int32_t idle_head;  // least recently used idle entry
  std::int32_t idle_tail;  // most recently used idle entry
  std::int32_t reserved;
};

struct BucketEntry {
  std::uint64_t key_hash;
  std::int64_t active;  // concurrency units held (1 + workers per statement)
  // Leaky bucket debt (server_share/burst_limit), not used yet: the next
  // dimension of the decision, drained lazily from debt_updated_us.
  double debt;
  std::int64_t debt_updated_us;
  std::int64_t last_used_us;        // monotonic clock
  std::int64_t last_blocked_at_us;  // wall clock, 0 = never
  std::uint64_t admitted;
  std::uint64_t warned;
  std::uint64_t blocked_max_concurrent;
  std::uint64_t blocked_per_query_limit;
  std::uint64_t blocked_server_share;
  std::uint64_t queued;
  std::uint64_t instance_full_bytes;  // identity: the value may be truncated
  std::int32_t prev;                  // idle list
  std::int32_t next;                  // idle list or free list
  std::uint16_t instance_bytes;       // stored (display) bytes
  std::uint8_t budget_bytes;
  std::uint8_t has_instance;
  std::uint8_t in_use;
  std::uint8_t on_idle_list;
  char budget[kBudgetNameCapacity];
  char instance[kMaxInstanceDisplayBytes];
};

static_assert(std::is_trivially_copyable_v<TableHeader> && std::is_standard_layout_v<TableHeader>);
static_assert(std::is_trivially_copyable_v<BucketEntry> && std::is_standard_layout_v<BucketEntry>);
static_assert(kMaxInstanceDisplayBytes <= UINT16_MAX);
static_assert(kMaxBudgetNameBytes <= UINT8_MAX);

constexpr std::size_t RoundUp(std::size_t value, std::size_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

std::uint32_t IndexSizeFor(std::uint32_t capacity) {
  std::uint32_t size = 2;
  while (size < 2ull * capacity) size *= 2;
  return size;
}

struct Layout {
  std::size_t entries_offset;
  std::size_t index_offset;
  std::size_t total_bytes;
  std::uint32_t index_size;
};

Layout ComputeLayout(std::uint32_t capacity) {
  if (capacity > BucketTable::kMaxCapacity) {
    throw std::invalid_argument("bucket table capacity " + std::to_string(capacity) +
                                " exceeds the maximum of " +
                                std::to_string(BucketTable::kMaxCapacity));
  }
  Layout layout;
  layout.index_size = IndexSizeFor(capacity);
  layout.entries_offset = RoundUp(sizeof(TableHeader), alignof(BucketEntry));
  layout.index_offset =
      RoundUp(layout.entries_offset + sizeof(BucketEntry) * capacity, alignof(std::int32_t));
  layout.total_bytes =
      RoundUp(layout.index_offset + sizeof(std::int32_t) * layout.index_size, alignof(TableHeader));
  return layout;
}

// Typed access to the block; computed per call from the attached span.
struct TableView {
  TableHeader* header;
  BucketEntry* entries;
  std::int32_t* index;
  std::uint32_t mask;
};

TableView ViewOf(MemorySpan memory) {
  auto* base = static_cast<unsigned char*>(memory.data);
  auto* header = reinterpret_cast<TableHeader*>(base);
  return TableView{header, reinterpret_cast<BucketEntry*>(base + header->entries_offset),
                   reinterpret_cast<std::int32_t*>(base + header->index_offset),
                   header->index_size - 1};
}

// --- Key hashing --------------------------------------------------------------

std::uint64_t Finalize(std::uint64_t h) {  // splitmix64 finalizer
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

std::uint64_t Rotl(std::uint64_t x, int bits) { return (x << bits) | (x >> (64 - bits)); }

// Word-at-a-time so a 2,000-byte `each` value costs little; the length is mixed
// in so ("ab", "c") and ("a", "bc") differ.
std::uint64_t HashBytes(std::uint64_t h, std::string_view bytes) {
  constexpr std::uint64_t kMul1 = 0x87c37b91114253d5ULL;
  constexpr std::uint64_t kMul2 = 0x4cf5ad432745937fULL;
  const char* data = bytes.data();
  std::size_t remaining = bytes.size();
  h ^= Finalize(remaining + 0x9e3779b97f4a7c15ULL);
  while (remaining > 0) {
    std::uint64_t word = 0;
    const std::size_t take = std::min<std::size_t>(remaining, sizeof word);
    std::memcpy(&word, data, take);
    data += take;
    remaining -= take;
    h ^= Rotl(word * kMul1, 31) * kMul2;
    h = Rotl(h, 27) * 5 + 0x52dce729;
  }
  return h;
}

std::uint64_t KeyHash(std::uint64_t seed, std::string_view budget, bool has_instance,
                      std::string_view instance) {
  std::uint64_t h = HashBytes(seed, budget);
  h = HashBytes(h ^ (has_instance ? 0x1234567ULL : 0x7654321ULL), has_instance ? instance : "");
  return Finalize(h);
}

// --- Entries, index and lists (all called under the lock) ---------------------

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
  return entry.key_hash == key_hash && entry.has_instance == (request.has_instance ? 1 : 0) &&
         entry.instance_full_bytes == instance.size() &&
         StoredBudget(entry) == Truncate(request.budget->name, kMaxBudgetNameBytes) &&
         StoredInstance(entry) == Truncate(instance, kMaxInstanceDisplayBytes);
}

std::uint32_t HomeOf(const TableView& table, std::uint64_t key_hash) {
  return static_cast<std::uint32_t>(key_hash) & table.mask;
}

// Index position holding `slot` (which must be indexed).
std::uint32_t IndexPositionOf(const TableView& table, std::int32_t slot) {
  std::uint32_t pos = HomeOf(table, table.entries[slot].key_hash);
  while (table.index[pos] != slot) pos = (pos + 1) & table.mask;
  return pos;
}

void IndexInsert(const TableView& table, std::int32_t slot) {
  std::uint32_t pos = HomeOf(table, table.entries[slot].key_hash);
  // The index is at most half full, so an empty position is always found.
  while (table.index[pos] != kNoSlot) pos = (pos + 1) & table.mask;
  table.index[pos] = slot;
}

// Backward-shift deletion: later members of the probe run move up so lookups
// never stop early at the hole (no tombstones to accumulate).
void IndexErase(const TableView& table, std::uint32_t hole) {
  std::uint32_t pos = hole;
  for (;;) {
    pos = (pos + 1) & table.mask;
    const std::int32_t slot = table.index[pos];
    if (slot == kNoSlot) break;
    const std::uint32_t home = HomeOf(table, table.entries[slot].key_hash);
    // The member at `pos` may fill the hole unless its home lies cyclically
    // in (hole, pos].
    if (((pos - home) & table.mask) >= ((pos - hole) & table.mask)) {
      table.index[hole] = slot;
      hole = pos;
    }
  }
  table.index[hole] = kNoSlot;
}

void IdleUnlink(const TableView& table, std::int32_t slot) {
  BucketEntry& entry = table.entries[slot];
  if (!entry.on_idle_list) return;
  if (entry.prev == kNoSlot) {
    table.header->idle_head = entry.next;
  } else {
    table.entries[entry.prev].next = entry.next;
  }
  if (entry.next == kNoSlot) {
    table.header->idle_tail = entry.prev;
  } else {
    table.entries[entry.next].prev = entry.prev;
  }
  entry.prev = entry.next = kNoSlot;
  entry.on_idle_list = 0;
}

void IdleAppend(const TableView& table, std::int32_t slot) {
  BucketEntry& entry = table.entries[slot];
  entry.prev = table.header->idle_tail;
  entry.next = kNoSlot;
  if (table.header->idle_tail == kNoSlot) {
    table.header->idle_head = slot;
  } else {
    table.entries[table.header->idle_tail].next = slot;
  }
  table.header->idle_tail = slot;
  entry.on_idle_list = 1;
}

// Records a use of an in-use entry: refreshes its LRU position and keeps it on
// the idle list exactly when it holds nothing.
void Touch(const TableView& table, std::int32_t slot, std::int64_t now_us) {
  BucketEntry& entry = table.entries[slot];
  entry.last_used_us = now_us;
  IdleUnlink(table, slot);
  if (entry.active == 0) IdleAppend(table, slot);
}

bool Contains(const std::int32_t* slots, std::size_t count, std::int32_t slot) {
  return std::find(slots, slots + count, slot) != slots + count;
}

// A slot for a new key: a free one, else the least recently used idle entry
// not already taken by this Admit call (`pinned`). kNoSlot when all are busy.
std::int32_t TakeSlot(const TableView& table, const std::int32_t* pinned,
                      std::size_t pinned_count) {
  TableHeader& header = *table.header;
  if (header.free_head != kNoSlot) {
    const std::int32_t slot = header.free_head;
    header.free_head = table.entries[slot].next;
    ++header.used_count;
    return slot;
  }
  for (std::int32_t slot = header.idle_head; slot != kNoSlot; slot = table.entries[slot].next) {
    if (Contains(pinned, pinned_count, slot)) continue;
    // Evict: the entry's counters go with it.
    IdleUnlink(table, slot);
    IndexErase(table, IndexPositionOf(table, slot));
    return slot;
  }
  return kNoSlot;
}

std::int32_t FindOrCreate(const TableView& table, const AdmissionRequest& request,
                          std::uint64_t key_hash, std::int64_t now_us, const std::int32_t* pinned,
                          std::size_t pinned_count) {
  for (std::uint32_t pos = HomeOf(table, key_hash); table.index[pos] != kNoSlot;
       pos = (pos + 1) & table.mask) {
    const std::int32_t slot = table.index[pos];
    if (SameKey(table.entries[slot], key_hash, request)) {
      Touch(table, slot, now_us);
      return slot;
    }
  }
  const std::int32_t slot = TakeSlot(table, pinned, pinned_count);
  if (slot == kNoSlot) return kNoSlot;

  BucketEntry& entry = table.entries[slot];
  std::memset(&entry, 0, sizeof entry);
  const std::string_view budget = Truncate(request.budget->name, kMaxBudgetNameBytes);
  const std::string_view instance = request.has_instance ? request.instance : std::string_view();
  const std::string_view display = Truncate(instance, kMaxInstanceDisplayBytes);
  entry.key_hash = key_hash;
  entry.in_use = 1;
  entry.has_instance = request.has_instance ? 1 : 0;
  entry.budget_bytes = static_cast<std::uint8_t>(budget.size());
  budget.copy(entry.budget, budget.size());  // copy(): memcpy may not take null
  entry.instance_full_bytes = instance.size();
  entry.instance_bytes = static_cast<std::uint16_t>(display.size());
  display.copy(entry.instance, display.size());
  entry.prev = entry.next = kNoSlot;
  IndexInsert(table, slot);
  Touch(table, slot, now_us);
  return slot;
}

// --- Decision -------------------------------------------------------------------

double Percent(double level, double limit) {
  if (limit > 0) return level / limit * 100.0;
  return level > 0 ? std::numeric_limits<double>::infinity() : 0.0;
}

// The concurrency dimension. `active` counts what the instance holds already
// (including earlier requests of this call for the same instance). The leaky
// bucket dimension will get its own function; Admit then keeps the worse
// verdict per request.
BudgetVerdict DecideConcurrency(const Budget& budget, std::int64_t active, std::uint32_t weight) {
  BudgetVerdict verdict;
  if (!budget.max_concurrent.has_value() || budget.mode == Mode::kOff) return verdict;
  const std::int64_t limit = *budget.max_concurrent;
  const std::int64_t level = active + static_cast<std::int64_t>(weight);
  verdict.limit_value = static_cast<double>(limit);
  verdict.level = static_cast<double>(level);
  verdict.level_percent = Percent(verdict.level, verdict.limit_value);
  if (level > limit) {
    verdict.action = budget.mode == Mode::kEnforce ? BudgetVerdict::Action::kRefuse
                                                   : BudgetVerdict::Action::kWarn;
    verdict.limit = Limit::kMaxConcurrent;
  } else if (budget.mode == Mode::kEnforce && budget.warning_threshold.has_value() && limit > 0 &&
             verdict.level_percent >= *budget.warning_threshold) {
    verdict.action = BudgetVerdict::Action::kWarn;
    verdict.limit = Limit::kMaxConcurrent;
  }
  return verdict;
}

// Waiting helps only a concurrency refusal that a release can cure: the
// statement fits the limit once others finish.
bool CanWaitFor(const AdmissionRequest& request, const BudgetVerdict& verdict) {
  const Budget& budget = *request.budget;
  return verdict.limit == Limit::kMaxConcurrent && budget.queue_timeout_ms > 0 &&
         budget.max_concurrent.has_value() && *budget.max_concurrent > 0 &&
         static_cast<std::int64_t>(request.weight) <= *budget.max_concurrent;
}

void CountBlocked(BucketEntry& entry, Limit limit) {
  switch (limit) {
    case Limit::kMaxConcurrent:
      ++entry.blocked_max_concurrent;
      break;
    case Limit::kPerQueryLimit:
      ++entry.blocked_per_query_limit;
      break;
    case Limit::kServerShare:
      ++entry.blocked_server_share;
      break;
    case Limit::kNone:
      break;
  }
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
    case Limit::kNone:
      break;
  }
  return "";
}

std::size_t BucketTable::RequiredBytes(std::uint32_t capacity) {
  return ComputeLayout(capacity).total_bytes;
}

void BucketTable::Initialize(MemorySpan memory, std::uint32_t capacity) {
  const Layout layout = ComputeLayout(capacity);
  if (memory.data == nullptr || memory.size < layout.total_bytes) {
    throw std::invalid_argument("bucket table memory is smaller than RequiredBytes(capacity)");
  }
  if (reinterpret_cast<std::uintptr_t>(memory.data) % alignof(TableHeader) != 0) {
    throw std::invalid_argument("bucket table memory is not 8-byte aligned");
  }
  std::uint64_t seed = 0;
  try {
    std::random_device random;
    seed = (static_cast<std::uint64_t>(random()) << 32) ^ random();
  } catch (const std::exception&) {
    // No entropy source: a fixed seed still works, it is only predictable.
  }

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
  header->total_bytes = layout.total_bytes;
  header->waiters = 0;
  header->idle_head = header->idle_tail = kNoSlot;
  header->free_head = capacity > 0 ? 0 : kNoSlot;

  const TableView table = ViewOf(memory);
  for (std::uint32_t slot = 0; slot < capacity; ++slot) {
    table.entries[slot].prev = kNoSlot;
    table.entries[slot].next = slot + 1 < capacity ? static_cast<std::int32_t>(slot + 1) : kNoSlot;
  }
  std::fill(table.index, table.index + layout.index_size, kNoSlot);
}

BucketTable::BucketTable(MemorySpan memory, TableLock& lock, Clock& clock)
    : memory_(memory), lock_(lock), clock_(clock) {
  const auto* header = static_cast<const TableHeader*>(memory.data);
  if (memory.data == nullptr || memory.size < sizeof(TableHeader) || header->magic != kMagic ||
      header->version != kLayoutVersion || header->capacity > kMaxCapacity ||
      header->total_bytes != ComputeLayout(header->capacity).total_bytes ||
      memory.size < header->total_bytes) {
    throw std::invalid_argument("bucket table memory is not formatted (call Initialize first)");
  }
}

std::uint32_t BucketTable::capacity() const {
  return static_cast<const TableHeader*>(memory_.data)->capacity;
}

AdmitResult BucketTable::Admit(const std::vector<AdmissionRequest>& requests, AttemptKind kind,
                               std::int64_t wall_now_us) {
  using Action = BudgetVerdict::Action;
  const std::size_t count = requests.size();
  AdmitResult result;
  if (count == 0) {
    result.admitted = true;
    return result;
  }
  for (const AdmissionRequest& request : requests) {
    if (request.budget == nullptr) throw std::invalid_argument("admission request without budget");
  }

  // Everything that allocates or takes time happens before locking.
  const TableView table = ViewOf(memory_);
  result.verdicts.resize(count);
  result.holdings.reserve(count);
  std::vector<std::uint64_t> hashes(count);
  std::vector<std::int32_t> slots(count, kNoSlot);
  for (std::size_t i = 0; i < count; ++i) {
    hashes[i] = KeyHash(table.header->hash_seed, requests[i].budget->name, requests[i].has_instance,
                        requests[i].instance);
  }
  const std::int64_t now_us = clock_.NowMicros();

  ExclusiveGuard guard(lock_);
  bool refused = false;
  for (std::size_t i = 0; i < count; ++i) {
    const AdmissionRequest& request = requests[i];
    slots[i] = FindOrCreate(table, request, hashes[i], now_us, slots.data(), i);
    // Untracked requests (table full of busy instances) are judged as if the
    // instance held nothing: a limit the statement alone exceeds still holds.
    std::int64_t active = 0;
    if (slots[i] != kNoSlot) {
      active = table.entries[slots[i]].active;
      for (std::size_t j = 0; j < i; ++j) {  // the same instance twice in one call
        if (slots[j] == slots[i]) active += requests[j].weight;
      }
    }
    result.verdicts[i] = DecideConcurrency(*request.budget, active, request.weight);
    refused = refused || result.verdicts[i].action == Action::kRefuse;
  }

  if (refused) {
    result.may_wait = true;
    result.queue_timeout_ms = std::numeric_limits<std::int64_t>::max();
    for (std::size_t i = 0; i < count; ++i) {
      if (result.verdicts[i].action != Action::kRefuse) continue;
      if (CanWaitFor(requests[i], result.verdicts[i])) {
        result.queue_timeout_ms =
            std::min(result.queue_timeout_ms, requests[i].budget->queue_timeout_ms);
      } else {
        result.may_wait = false;
      }
    }
    if (!result.may_wait) result.queue_timeout_ms = 0;
    // A refusal is only "queued" when the caller really will wait and retry.
    const bool queued = kind == AttemptKind::kWillWait && result.may_wait;
    const bool still_waiting = kind == AttemptKind::kRetry && result.may_wait;
    for (std::size_t i = 0; i < count; ++i) {
      if (result.verdicts[i].action != Action::kRefuse || slots[i] == kNoSlot) continue;
      BucketEntry& entry = table.entries[slots[i]];
      if (still_waiting) continue;
      if (queued) {
        ++entry.queued;
      } else {
        CountBlocked(entry, result.verdicts[i].limit);
        entry.last_blocked_at_us = wall_now_us;
      }
    }
    return result;
  }

  result.admitted = true;
  for (std::size_t i = 0; i < count; ++i) {
    if (slots[i] == kNoSlot) {
      ++result.untracked;
      result.holdings.push_back(Holding{Holding::kUntrackedSlot, hashes[i], requests[i].weight});
      continue;
    }
    BucketEntry& entry = table.entries[slots[i]];
    entry.active += requests[i].weight;
    ++entry.admitted;
    if (result.verdicts[i].action == Action::kWarn) ++entry.warned;
    Touch(table, slots[i], now_us);  // leaves the idle list once it holds something
    result.holdings.push_back(
        Holding{static_cast<std::uint32_t>(slots[i]), hashes[i], requests[i].weight});
  }
  return result;
}

bool BucketTable::Release(const Holding& holding) {
  if (holding.slot == Holding::kUntrackedSlot || holding.slot >= capacity()) return false;
  const TableView table = ViewOf(memory_);
  const std::int64_t now_us = clock_.NowMicros();
  const auto slot = static_cast<std::int32_t>(holding.slot);

  ExclusiveGuard guard(lock_);
  BucketEntry& entry = table.entries[slot];
  // A mismatch means the holding was released already and the entry reused.
  if (!entry.in_use || entry.key_hash != holding.key_hash) return false;
  entry.active -= std::min<std::int64_t>(entry.active, holding.weight);
  Touch(table, slot, now_us);
  return table.header->waiters > 0;
}

void BucketTable::AddWaiter() {
  const TableView table = ViewOf(memory_);
  ExclusiveGuard guard(lock_);
  ++table.header->waiters;
}

void BucketTable::RemoveWaiter() {
  const TableView table = ViewOf(memory_);
  ExclusiveGuard guard(lock_);
  if (table.header->waiters > 0) --table.header->waiters;
}

std::vector<BucketSnapshot> BucketTable::Snapshot() {
  const TableView table = ViewOf(memory_);
  const std::uint32_t slot_count = capacity();
  // Copy raw entries under the shared lock into a vector reserved beforehand
  // (sized from a first look at used_count; retried if the table grew), and
  // build strings only after unlocking.
  std::vector<BucketEntry> copies;
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
      if (table.entries[slot].in_use) copies.push_back(table.entries[slot]);
    }
    break;
  }

  std::vector<BucketSnapshot> snapshots;
  snapshots.reserve(copies.size());
  for (const BucketEntry& entry : copies) {
    BucketSnapshot snapshot;
    snapshot.budget = std::string(StoredBudget(entry));
    snapshot.instance = std::string(StoredInstance(entry));
    snapshot.has_instance = entry.has_instance != 0;
    snapshot.active = entry.active;
    snapshot.admitted = entry.admitted;
    snapshot.warned = entry.warned;
    snapshot.blocked_max_concurrent = entry.blocked_max_concurrent;
    snapshot.blocked_per_query_limit = entry.blocked_per_query_limit;
    snapshot.blocked_server_share = entry.blocked_server_share;
    snapshot.queued = entry.queued;
    snapshot.last_blocked_at_us = entry.last_blocked_at_us;
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
    BucketEntry& entry = table.entries[slot];
    // Counters only: active and debt are live state, not statistics.
    entry.admitted = entry.warned = entry.queued = 0;
    entry.blocked_max_concurrent = entry.blocked_per_query_limit = entry.blocked_server_share = 0;
    entry.last_blocked_at_us = 0;
  }
}

std::string BucketTable::ConsistencyProblem() {
  const TableView table = ViewOf(memory_);
  const std::uint32_t slot_count = capacity();
  SharedGuard guard(lock_);
  const TableHeader& header = *table.header;
  std::uint32_t used = 0, idle = 0, indexed = 0, free_entries = 0;
  for (std::uint32_t slot = 0; slot < slot_count; ++slot) {
    const BucketEntry& entry = table.entries[slot];
    if (!entry.in_use) continue;
    ++used;
    if (entry.active < 0) return "negative active in slot " + std::to_string(slot);
    if ((entry.active == 0) != (entry.on_idle_list != 0)) {
      return "idle list membership wrong for slot " + std::to_string(slot);
    }
  }
  if (used != header.used_count) return "used_count mismatch";
  for (std::int32_t slot = header.idle_head, prev = kNoSlot; slot != kNoSlot;
       prev = slot, slot = table.entries[slot].next) {
    const BucketEntry& entry = table.entries[slot];
    if (++idle > slot_count) return "idle list loops";
    if (!entry.in_use || !entry.on_idle_list || entry.prev != prev) return "idle list broken";
    if (entry.next == kNoSlot && header.idle_tail != slot) return "idle tail wrong";
  }
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
  return "";
}

}  // namespace tc
