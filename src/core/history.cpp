// Violation history: per-budget, per-minute counts of admitted, warned and
// refused statements for the last ViolationHistory::kMinutes minutes, shared
// by every backend through PostgreSQL shared memory.
//
// Layout (one contiguous block of RequiredBytes() bytes, formatted once by
// Initialize; plain structs, no pointers):
//   HistoryHeader                          magic/version, budgets recorded
//   BudgetEntry budgets[kMaxBudgets]       state, name hash, name
//   MinuteSlot  minutes[kMaxBudgets][kMinutes]
//                                          minute stamp, five counters
// Budgets are an open-addressing table (linear probing from the name's hash)
// whose entries are never removed: a full table records no new budget until
// the memory is formatted again (server start or crash restart). A budget's
// minute `m` (Unix epoch seconds / 60) lives in ring slot m % kMinutes.
//
// Concurrency rules (no lock at all):
// - A budget entry's `state` goes 0 (empty) -> 1 (being written) -> 2
//   (ready), once. Only the backend whose compare-and-swap moved it from 0 to
//   1 writes the hash and name, then stores 2 with release order; readers load
//   `state` with acquire order and read the name only when it is 2, waiting
//   (spin, then yield) while it is 1.
// - A minute slot's `stamp` is minute + 1 (0 = never used) or kResetting.
//   A writer whose minute is newer than the stamp moves the stamp to
//   kResetting with a compare-and-swap, zeroes the counters, then stores the
//   new stamp with release order; writers meeting kResetting wait for it.
//   Whoever loses the compare-and-swap reloads the stamp. A writer whose
//   minute is older than the stamp drops its count (the slot already holds a
//   newer minute); a writer whose minute equals it adds with one relaxed
//   atomic add.
// - Readers load the stamp (acquire), the counters (relaxed), then the stamp
//   again after an acquire fence and skip the slot when it changed (stamps
//   only grow, so there is no ABA) or is older than kMinutes minutes.
#include "traffic_control/history.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "traffic_control/shm_primitives.hpp"

namespace tc {
namespace {

constexpr std::uint64_t kMagic = 0x5443484953544f52ULL;  // "TCHISTOR"
constexpr std::uint32_t kLayoutVersion = 1;
constexpr std::uint32_t kEmpty = 0, kWriting = 1, kReady = 2;
constexpr std::int64_t kResetting = -1;
constexpr std::int64_t kMicrosPerMinute = 60'000'000;

struct HistoryHeader {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t used;  // budgets recorded; atomic
  std::uint64_t total_bytes;
};

struct BudgetEntry {
  std::uint32_t state;  // kEmpty, kWriting, kReady; atomic
  std::uint32_t name_len;
  std::uint64_t hash;
  char name[ViolationHistory::kMaxNameBytes + 1];
};

struct MinuteSlot {
  std::int64_t stamp;  // minute + 1; 0 = unused; kResetting; atomic
  std::uint64_t counts[ViolationHistory::kCounterCount];  // atomic
};

static_assert(std::is_trivially_copyable_v<HistoryHeader> &&
              std::is_standard_layout_v<HistoryHeader>);
static_assert(std::is_trivially_copyable_v<BudgetEntry> && std::is_standard_layout_v<BudgetEntry>);
static_assert(std::is_trivially_copyable_v<MinuteSlot> && std::is_standard_layout_v<MinuteSlot>);

constexpr std::size_t RoundUp(std::size_t value, std::size_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

constexpr std::size_t kBudgetsOffset = RoundUp(sizeof(HistoryHeader), 64);
constexpr std::size_t kMinutesOffset =
    RoundUp(kBudgetsOffset + sizeof(BudgetEntry) * ViolationHistory::kMaxBudgets, 64);
constexpr std::size_t kTotalBytes = kMinutesOffset + sizeof(MinuteSlot) *
                                                         ViolationHistory::kMaxBudgets *
                                                         ViolationHistory::kMinutes;

HistoryHeader* HeaderOf(MemorySpan memory) { return static_cast<HistoryHeader*>(memory.data); }

BudgetEntry* BudgetsOf(MemorySpan memory) {
  return reinterpret_cast<BudgetEntry*>(static_cast<unsigned char*>(memory.data) + kBudgetsOffset);
}

MinuteSlot* MinutesOf(MemorySpan memory, std::uint32_t budget) {
  return reinterpret_cast<MinuteSlot*>(static_cast<unsigned char*>(memory.data) + kMinutesOffset) +
         static_cast<std::size_t>(budget) * ViolationHistory::kMinutes;
}

std::uint64_t HashName(std::string_view name) {  // FNV-1a, then splitmix64's finalizer
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (const char c : name) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return SplitMix64Finalize(h);
}

std::uint32_t SettledState(const BudgetEntry& entry) {
  SpinBackoff backoff;
  for (;;) {
    const std::uint32_t state = __atomic_load_n(&entry.state, __ATOMIC_ACQUIRE);
    if (state != kWriting) return state;
    backoff.Pause();
  }
}

bool SameName(const BudgetEntry& entry, std::uint64_t hash, std::string_view name) {
  return entry.hash == hash && entry.name_len == name.size() &&
         std::memcmp(entry.name, name.data(), name.size()) == 0;
}

std::int64_t MinuteOf(std::int64_t wall_us) {
  std::int64_t minute = wall_us / kMicrosPerMinute;
  if (wall_us % kMicrosPerMinute < 0) --minute;  // floor before 1970
  return minute;
}

}  // namespace

std::size_t ViolationHistory::RequiredBytes() { return kTotalBytes; }

void ViolationHistory::Initialize(MemorySpan memory) {
  if (memory.data == nullptr || memory.size < kTotalBytes) {
    throw std::invalid_argument("violation history memory is smaller than RequiredBytes()");
  }
  if (reinterpret_cast<std::uintptr_t>(memory.data) % alignof(HistoryHeader) != 0) {
    throw std::invalid_argument("violation history memory is not 8-byte aligned");
  }
  std::memset(memory.data, 0, kTotalBytes);  // every budget empty, every minute unused
  HistoryHeader* header = HeaderOf(memory);
  header->magic = kMagic;
  header->version = kLayoutVersion;
  header->used = 0;
  header->total_bytes = kTotalBytes;
}

ViolationHistory::ViolationHistory(MemorySpan memory) : memory_(memory) {
  if (memory.data == nullptr || memory.size < kTotalBytes) {
    throw std::invalid_argument("violation history memory is smaller than RequiredBytes()");
  }
  const HistoryHeader* header = HeaderOf(memory);
  if (header->magic != kMagic || header->version != kLayoutVersion ||
      header->total_bytes != kTotalBytes) {
    throw std::invalid_argument("violation history memory is not formatted");
  }
}

std::int32_t ViolationHistory::Resolve(std::string_view budget) {
  if (budget.size() > kMaxNameBytes) return kNoSlot;
  const std::uint64_t hash = HashName(budget);
  BudgetEntry* budgets = BudgetsOf(memory_);
  for (std::uint32_t probe = 0; probe < kMaxBudgets; ++probe) {
    const std::uint32_t index = static_cast<std::uint32_t>((hash + probe) % kMaxBudgets);
    BudgetEntry& entry = budgets[index];
    std::uint32_t state = SettledState(entry);
    if (state == kEmpty) {
      std::uint32_t expected = kEmpty;
      if (__atomic_compare_exchange_n(&entry.state, &expected, kWriting, false, __ATOMIC_ACQ_REL,
                                      __ATOMIC_ACQUIRE)) {
        entry.hash = hash;
        entry.name_len = static_cast<std::uint32_t>(budget.size());
        std::memcpy(entry.name, budget.data(), budget.size());
        entry.name[budget.size()] = '\0';
        __atomic_store_n(&entry.state, kReady, __ATOMIC_RELEASE);
        __atomic_add_fetch(&HeaderOf(memory_)->used, 1, __ATOMIC_RELAXED);
        return static_cast<std::int32_t>(index);
      }
      state = SettledState(entry);  // another backend claimed it: maybe for this name
    }
    if (state == kReady && SameName(entry, hash, budget)) return static_cast<std::int32_t>(index);
  }
  return kNoSlot;
}

void ViolationHistory::Record(std::int32_t slot, Counter counter, std::int64_t wall_now_us,
                              std::uint64_t count) {
  if (slot < 0 || static_cast<std::uint32_t>(slot) >= kMaxBudgets || counter >= kCounterCount) {
    return;
  }
  const std::int64_t minute = MinuteOf(wall_now_us);
  const std::int64_t stamp = minute + 1;
  if (stamp <= 0) return;  // before 1970: never recorded
  MinuteSlot& target = MinutesOf(
      memory_, static_cast<std::uint32_t>(slot))[static_cast<std::uint64_t>(minute) % kMinutes];
  SpinBackoff backoff;
  for (;;) {
    std::int64_t current = __atomic_load_n(&target.stamp, __ATOMIC_ACQUIRE);
    if (current == stamp) {
      __atomic_add_fetch(&target.counts[counter], count, __ATOMIC_RELAXED);
      return;
    }
    if (current == kResetting) {
      backoff.Pause();
      continue;
    }
    if (current > stamp) return;  // the slot holds a newer minute already
    if (__atomic_compare_exchange_n(&target.stamp, &current, kResetting, false, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
      for (std::uint64_t& c : target.counts) __atomic_store_n(&c, 0, __ATOMIC_RELAXED);
      __atomic_store_n(&target.stamp, stamp, __ATOMIC_RELEASE);
    }
  }
}

std::vector<ViolationHistory::Row> ViolationHistory::Snapshot(std::int64_t wall_now_us) const {
  std::vector<Row> rows;
  const std::int64_t now_minute = MinuteOf(wall_now_us);
  const BudgetEntry* budgets = BudgetsOf(memory_);
  for (std::uint32_t b = 0; b < kMaxBudgets; ++b) {
    if (SettledState(budgets[b]) != kReady) continue;
    const MinuteSlot* slots = MinutesOf(memory_, b);
    const std::size_t first = rows.size();
    for (std::uint32_t i = 0; i < kMinutes; ++i) {
      const MinuteSlot& slot = slots[i];
      const std::int64_t stamp = __atomic_load_n(&slot.stamp, __ATOMIC_ACQUIRE);
      if (stamp <= 0) continue;
      const std::int64_t minute = stamp - 1;
      if (minute <= now_minute - static_cast<std::int64_t>(kMinutes)) continue;  // too old
      Row row;
      bool any = false;
      for (std::uint32_t c = 0; c < kCounterCount; ++c) {
        row.counts[c] = __atomic_load_n(&slot.counts[c], __ATOMIC_RELAXED);
        any |= row.counts[c] != 0;
      }
      __atomic_thread_fence(__ATOMIC_ACQUIRE);
      if (__atomic_load_n(&slot.stamp, __ATOMIC_RELAXED) != stamp || !any) continue;
      row.budget.assign(budgets[b].name, budgets[b].name_len);
      row.minute_start_s = minute * 60;
      rows.push_back(std::move(row));
    }
    // Ring order is not time order once the ring wrapped.
    std::sort(rows.begin() + static_cast<std::ptrdiff_t>(first), rows.end(),
              [](const Row& a, const Row& b) { return a.minute_start_s < b.minute_start_s; });
  }
  return rows;
}

std::uint32_t ViolationHistory::size() const {
  return __atomic_load_n(&HeaderOf(memory_)->used, __ATOMIC_RELAXED);
}

}  // namespace tc
