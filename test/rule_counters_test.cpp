// The shared per-rule `matched` counters (rule_status.matched).
#include "traffic_control/rule_counters.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace tc {
namespace {

class CounterMemory {
 public:
  explicit CounterMemory(std::uint32_t capacity)
      : words_(RuleCounterTable::RequiredBytes(capacity) / sizeof(std::uint64_t) + 1) {
    RuleCounterTable::Initialize(span(), capacity);
  }
  MemorySpan span() { return MemorySpan{words_.data(), words_.size() * sizeof(std::uint64_t)}; }

 private:
  std::vector<std::uint64_t> words_;
};

TEST(RuleCounterTable, InitializeAndAttachValidateTheMemory) {
  std::vector<std::uint64_t> words(RuleCounterTable::RequiredBytes(8) / 8 + 1, 0);
  EXPECT_THROW(RuleCounterTable(MemorySpan{words.data(), words.size() * 8}),
               std::invalid_argument);  // not formatted
  EXPECT_THROW(RuleCounterTable::Initialize(MemorySpan{words.data(), 16}, 8),
               std::invalid_argument);  // too small
  EXPECT_THROW(RuleCounterTable::RequiredBytes(RuleCounterTable::kMaxCapacity + 1),
               std::invalid_argument);
  RuleCounterTable::Initialize(MemorySpan{words.data(), words.size() * 8}, 8);
  const RuleCounterTable table(MemorySpan{words.data(), words.size() * 8});
  EXPECT_EQ(table.capacity(), 8u);
  EXPECT_EQ(table.size(), 0u);
}

TEST(RuleCounterTable, CountsPerRuleAndBudget) {
  CounterMemory memory(16);
  RuleCounterTable table(memory.span());
  EXPECT_EQ(table.Find("export", "best-effort"), RuleCounterTable::kNoSlot);
  EXPECT_EQ(table.Count(RuleCounterTable::kNoSlot), 0u);

  const std::int32_t export_slot = table.Resolve("export", "best-effort");
  ASSERT_NE(export_slot, RuleCounterTable::kNoSlot);
  EXPECT_EQ(table.Resolve("export", "best-effort"), export_slot);  // the same key, the same slot
  EXPECT_EQ(table.Find("export", "best-effort"), export_slot);
  // The budget is part of the key: a rule that names another budget starts
  // fresh; and the pair's parts do not run into each other.
  const std::int32_t moved = table.Resolve("export", "critical");
  const std::int32_t split = table.Resolve("exportbest", "-effort");
  EXPECT_NE(moved, export_slot);
  EXPECT_NE(split, export_slot);
  EXPECT_EQ(table.size(), 3u);

  table.Increment(export_slot);
  table.Increment(export_slot);
  table.Increment(moved);
  table.Increment(RuleCounterTable::kNoSlot);  // ignored
  EXPECT_EQ(table.Count(export_slot), 2u);
  EXPECT_EQ(table.Count(moved), 1u);
  EXPECT_EQ(table.Count(split), 0u);
}

TEST(RuleCounterTable, ResetZeroesCountsAndKeepsSlots) {
  CounterMemory memory(16);
  RuleCounterTable table(memory.span());
  const std::int32_t slot = table.Resolve("r", "b");
  table.Increment(slot);
  table.ResetCounts();
  EXPECT_EQ(table.Count(slot), 0u);
  EXPECT_EQ(table.Find("r", "b"), slot);  // a cached slot stays valid
  table.Increment(slot);
  EXPECT_EQ(table.Count(slot), 1u);
}

TEST(RuleCounterTable, AFullTableKeepsCountingItsKeysAndRefusesNewOnes) {
  CounterMemory memory(4);
  RuleCounterTable table(memory.span());
  std::vector<std::int32_t> slots;
  for (int i = 0; i < 4; ++i) {
    slots.push_back(table.Resolve("rule" + std::to_string(i), "b"));
    ASSERT_NE(slots.back(), RuleCounterTable::kNoSlot);
  }
  EXPECT_TRUE(table.full());
  EXPECT_EQ(table.Resolve("rule4", "b"), RuleCounterTable::kNoSlot);
  EXPECT_EQ(table.Find("rule4", "b"), RuleCounterTable::kNoSlot);
  EXPECT_EQ(table.Resolve("rule2", "b"), slots[2]);  // known keys still resolve
  EXPECT_EQ(table.size(), 4u);
}

TEST(RuleCounterTable, ZeroCapacityCountsNothing) {
  CounterMemory memory(0);
  RuleCounterTable table(memory.span());
  EXPECT_TRUE(table.full());
  EXPECT_EQ(table.Resolve("r", "b"), RuleCounterTable::kNoSlot);
}

TEST(RuleCounterTable, TwoAttachmentsShareTheCounters) {
  CounterMemory memory(16);
  RuleCounterTable first(memory.span());
  RuleCounterTable second(memory.span());
  const std::int32_t slot = first.Resolve("r", "b");
  EXPECT_EQ(second.Find("r", "b"), slot);
  second.Increment(slot);
  EXPECT_EQ(first.Count(slot), 1u);
}

// Many threads resolve the same and different keys at once and count: every
// key gets exactly one slot and no increment is lost.
TEST(RuleCounterTable, ConcurrentResolveAndIncrementLoseNothing) {
  constexpr int kThreads = 8;
  constexpr int kKeys = 40;
  constexpr int kRounds = 2000;
  CounterMemory memory(64);
  RuleCounterTable table(memory.span());
  std::vector<std::vector<std::int32_t>> seen(kThreads, std::vector<std::int32_t>(kKeys));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      RuleCounterTable mine(memory.span());
      for (int round = 0; round < kRounds; ++round) {
        const int key = (round * 7 + t) % kKeys;
        const std::int32_t slot = mine.Resolve("rule" + std::to_string(key), "budget");
        seen[t][key] = slot;
        mine.Increment(slot);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  std::set<std::int32_t> distinct;
  std::uint64_t total = 0;
  for (int key = 0; key < kKeys; ++key) {
    const std::int32_t slot = table.Find("rule" + std::to_string(key), "budget");
    ASSERT_NE(slot, RuleCounterTable::kNoSlot);
    for (int t = 0; t < kThreads; ++t) EXPECT_EQ(seen[t][key], slot);
    distinct.insert(slot);
    total += table.Count(slot);
  }
  EXPECT_EQ(distinct.size(), static_cast<std::size_t>(kKeys));
  EXPECT_EQ(table.size(), static_cast<std::uint32_t>(kKeys));
  EXPECT_EQ(total, static_cast<std::uint64_t>(kThreads) * kRounds);
}

// A table filled by racing threads never holds more than its capacity.
TEST(RuleCounterTable, ConcurrentFillStopsAtCapacity) {
  constexpr int kThreads = 8;
  CounterMemory memory(32);
  RuleCounterTable table(memory.span());
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      RuleCounterTable mine(memory.span());
      for (int i = 0; i < 100; ++i)
        mine.Resolve("t" + std::to_string(t) + "r" + std::to_string(i), "b");
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(table.size(), 32u);
  EXPECT_TRUE(table.full());
  int found = 0;
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < 100; ++i) {
      if (table.Find("t" + std::to_string(t) + "r" + std::to_string(i), "b") !=
          RuleCounterTable::kNoSlot) {
        ++found;
      }
    }
  }
  EXPECT_EQ(found, 32);
}

}  // namespace
}  // namespace tc
