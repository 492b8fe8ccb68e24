// Primitives shared by the core's shared-memory tables (bucket table, pattern
// table, rule counters): spinlocks on a plain uint32 word (an atomic exchange,
// as pg_stat_statements' per-entry mutex, since shared memory holds plain
// structs only), the backoff they wait with, and the random seed that keeps
// clients from aiming hash collisions at an index.
#pragma once
#include <sched.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "traffic_control/core_header_guard.hpp"

namespace tc {

// splitmix64's finalizer: spreads a hash's bits before it picks an index slot.
inline std::uint64_t SplitMix64Finalize(std::uint64_t h) {
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

inline std::uint64_t Rotl64(std::uint64_t x, int bits) { return (x << bits) | (x >> (64 - bits)); }

// A seeded hash of `bytes`, folded into `h` (finalize with SplitMix64Finalize).
// Word at a time, so a long value costs little; the length is mixed in so
// ("ab", "c") and ("a", "bc") differ. Two tables that need independent hashes
// of the same bytes pass different multipliers.
inline std::uint64_t HashBytes(std::uint64_t h, std::string_view bytes,
                               std::uint64_t mul1 = 0x87c37b91114253d5ULL,
                               std::uint64_t mul2 = 0x4cf5ad432745937fULL) {
  const char* data = bytes.data();
  std::size_t remaining = bytes.size();
  h ^= SplitMix64Finalize(remaining + 0x9e3779b97f4a7c15ULL);
  while (remaining > 0) {
    std::uint64_t word = 0;
    const std::size_t take = remaining < sizeof word ? remaining : sizeof word;
    std::memcpy(&word, data, take);
    data += take;
    remaining -= take;
    h ^= Rotl64(word * mul1, 31) * mul2;
    h = Rotl64(h, 27) * 5 + 0x52dce729;
  }
  return h;
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

// Spins a little, then yields: the process being waited for may have been
// descheduled, and spinning would only keep it off the CPU.
class SpinBackoff {
 public:
  void Pause() {
    if (++spins_ < kSpinsBeforeYield) {
      CpuRelax();
    } else {
      spins_ = 0;
      sched_yield();
    }
  }

 private:
  static constexpr int kSpinsBeforeYield = 100;
  int spins_ = 0;
};

inline void SpinLock(std::uint32_t* word) {
  SpinBackoff backoff;
  while (__atomic_exchange_n(word, 1u, __ATOMIC_ACQUIRE) != 0) {
    // Test before test-and-set: wait on a shared cache line, not by writing.
    while (__atomic_load_n(word, __ATOMIC_RELAXED) != 0) backoff.Pause();
  }
}

inline void SpinUnlock(std::uint32_t* word) { __atomic_store_n(word, 0u, __ATOMIC_RELEASE); }

// Holds a spinlock word for a scope. Nothing under it may throw or block.
class SpinWordGuard {
 public:
  explicit SpinWordGuard(std::uint32_t& word) : word_(&word) { SpinLock(word_); }
  ~SpinWordGuard() { SpinUnlock(word_); }
  SpinWordGuard(const SpinWordGuard&) = delete;
  SpinWordGuard& operator=(const SpinWordGuard&) = delete;

 private:
  std::uint32_t* word_;
};

// A random 64-bit seed; a fixed one when the system has no entropy source
// (the table still works, its hashing is only predictable).
std::uint64_t RandomSeed();

// Throws std::invalid_argument naming `table` when `memory` is missing, smaller
// than `required_bytes` or not aligned to `alignment`.
void CheckTableMemory(const void* memory, std::size_t size, std::size_t required_bytes,
                      std::size_t alignment, const char* table);

}  // namespace tc
