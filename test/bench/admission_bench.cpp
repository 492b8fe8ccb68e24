// Micro-benchmarks of the admission decision (docs/benchmarks.md): the whole
// path a statement takes in the backend — metadata and SQLCommenter tags, the
// rule set with 1,000 rules, the estimator's prediction, the bucket table's
// decision — and its release (bucket correction, estimator sample).
//
// Build and run:
//   cmake -S . -B build/bench -DTC_BUILD_BENCHMARKS=ON -DCMAKE_BUILD_TYPE=Release
//   cmake --build build/bench -j2 --target tc_benchmarks
//   build/bench/tc_benchmarks
// Every benchmark runs 10 repetitions and reports their mean, median and
// standard deviation; the target (DESIGN.md) is a median under 1 us for
// BM_AdmitRelease_Match.
//
// Shared state lives in heap memory; the table lock is a no-op (one thread:
// the cost of an uncontended LWLock is a single atomic instruction, measured
// separately by the *_RwLock variants with a std::shared_mutex) and the clock
// is the real CLOCK_MONOTONIC one.
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "traffic_control/admission.hpp"
#include "traffic_control/bucket_table.hpp"
#include "traffic_control/estimator.hpp"
#include "traffic_control/rule_counters.hpp"
#include "traffic_control/ruleset.hpp"
#include "traffic_control/shared_state.hpp"

// Every heap allocation of the process is counted, so each benchmark can
// report its allocations per statement ("allocs" in the output): in the
// server a malloc and free per statement are not free either, and frees that
// overflow glibc's per-thread cache make PostgreSQL's next large allocation
// consolidate the heap.
std::atomic<std::uint64_t> heap_allocations{0};

void* CountedAllocation(std::size_t bytes) {
  heap_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* memory = std::malloc(bytes == 0 ? 1 : bytes)) return memory;
  throw std::bad_alloc();
}

void* operator new(std::size_t bytes) { return CountedAllocation(bytes); }
void* operator new[](std::size_t bytes) { return CountedAllocation(bytes); }
void operator delete(void* memory) noexcept { std::free(memory); }
void operator delete[](void* memory) noexcept { std::free(memory); }
void operator delete(void* memory, std::size_t) noexcept { std::free(memory); }
void operator delete[](void* memory, std::size_t) noexcept { std::free(memory); }

namespace {

// Reports the heap allocations per iteration of the benchmark loop.
class AllocationCounter {
 public:
  explicit AllocationCounter(benchmark::State& state)
      : state_(state), start_(heap_allocations.load()) {}
  ~AllocationCounter() {
    const double iterations = static_cast<double>(state_.iterations());
    if (iterations > 0) {
      state_.counters["allocs"] =
          static_cast<double>(heap_allocations.load() - start_) / iterations;
    }
  }

 private:
  benchmark::State& state_;
  std::uint64_t start_;
};

constexpr int kRules = 1000;
constexpr std::uint32_t kBuckets = 10000;
constexpr std::uint32_t kPatterns = 10000;
constexpr std::int64_t kQueryId = 4242424242;
constexpr double kPlanCost = 8.3;
constexpr std::uint32_t kUserId = 16384;      // the role "app"
constexpr std::uint32_t kDatabaseId = 16385;  // the database "bench"
constexpr tc::PatternKey kPattern{kUserId, kDatabaseId, kQueryId};

class NoLock final : public tc::TableLock {
 public:
  void LockExclusive() override {}
  void LockShared() override {}
  void Unlock() override {}
};

class RwLock final : public tc::TableLock {
 public:
  void LockExclusive() override {
    mutex_.lock();
    exclusive_ = true;
  }
  void LockShared() override { mutex_.lock_shared(); }
  void Unlock() override {
    if (exclusive_) {
      exclusive_ = false;
      mutex_.unlock();
    } else {
      mutex_.unlock_shared();
    }
  }

 private:
  std::shared_mutex mutex_;
  bool exclusive_ = false;
};

// Heap memory standing in for a shared-memory segment (aligned on a cache
// line, as PostgreSQL's shared memory allocations are).
struct Segment {
  struct alignas(64) CacheLine {
    unsigned char bytes[64];
  };
  explicit Segment(std::size_t bytes) : lines(bytes / sizeof(CacheLine) + 1) {}
  tc::MemorySpan span() { return tc::MemorySpan{lines.data(), lines.size() * sizeof(CacheLine)}; }
  std::vector<CacheLine> lines;
};

enum class Limits { kConcurrency, kCost };

// `count` rules, each with a budget of its own: enforce, with a
// max_concurrent this load never reaches; `shape(i, &budget, &rule)` adds
// the rest.
template <typename Shape>
tc::RuleSet OneBudgetPerRule(int count, Shape shape) {
  std::vector<tc::Budget> budgets;
  std::vector<tc::Rule> rules;
  for (int i = 0; i < count; ++i) {
    tc::Budget budget;
    budget.name = "b" + std::to_string(i);
    budget.mode = tc::Mode::kEnforce;
    budget.max_concurrent = 1000000;
    tc::Rule rule;
    rule.name = "rule" + std::to_string(i);
    rule.budget = budget.name;
    shape(i, &budget, &rule);
    budgets.push_back(std::move(budget));
    rules.push_back(std::move(rule));
  }
  std::vector<tc::RuleProblem> problems;
  return tc::RuleSet(std::move(budgets), std::move(rules), &problems);
}

// 1,000 rules, each {"route": "r<i>"} with its own budget whose limits never
// refuse this load: max_concurrent only, or also per_query_limit and
// server_share (then the estimator predicts, the bucket is charged and
// corrected, and the estimator learns from each release).
tc::RuleSet MakeRouteRules(Limits limits) {
  return OneBudgetPerRule(kRules, [limits](int i, tc::Budget* budget, tc::Rule* rule) {
    if (limits == Limits::kCost) {
      budget->per_query_limit = 100;
      budget->server_share = 100;
      budget->burst_limit = 1e9;
    }
    rule->match.push_back(tc::Condition{"route", {"r" + std::to_string(i)}});
  });
}

// 1,000 rules of every kind: tag values and lists, several keys per rule,
// built-ins, CIDRs of several prefix lengths, `each`. The statement matches
// exactly one budget (through rule "mixed-500").
tc::RuleSet MakeMixedRules() {
  return OneBudgetPerRule(kRules, [](int i, tc::Budget* budget, tc::Rule* rule) {
    budget->name = "m" + std::to_string(i);
    budget->mode = i % 3 == 0 ? tc::Mode::kWarn : tc::Mode::kEnforce;
    rule->name = "mixed-" + std::to_string(i);
    rule->budget = budget->name;
    const std::string n = std::to_string(i);
    switch (i % 5) {
      case 0:
        rule->match.push_back(tc::Condition{"route", {"r" + n}});
        break;
      case 1:
        rule->match.push_back(tc::Condition{"app", {"svc" + n}});
        rule->match.push_back(tc::Condition{"tier", {"free", "trial"}});
        break;
      case 2:
        rule->match.push_back(tc::Condition{"username", {"user" + n}});
        break;
      case 3:
        rule->match.push_back(
            tc::Condition{"remote_address", {"10." + std::to_string(i % 250) + ".0.0/16"}});
        rule->match.push_back(tc::Condition{"application_name", {"app" + n}});
        break;
      default:
        rule->match.push_back(tc::Condition{"route", {"r" + n}});
        rule->each = "tenant";
        break;
    }
  });
}

// 1,000 rules of the kinds contract 1.1 adds (route prefixes, a `not`,
// member_of, `each`), then a default rule (index kRules).
tc::RuleSet MakeRules11() {
  return OneBudgetPerRule(kRules + 1, [](int i, tc::Budget*, tc::Rule* rule) {
    const std::string n = std::to_string(i);
    if (i == kRules) {
      rule->is_default = true;
      return;
    }
    switch (i % 4) {
      case 0:
        rule->match.push_back(tc::Condition{"route", {"/r" + n + "/"}, tc::MatchKind::kPrefix});
        break;
      case 1:
        rule->match.push_back(tc::Condition{"route", {"r" + n}});
        rule->match.push_back(tc::Condition{"tier", {"free", "trial"}, tc::MatchKind::kNoneOf});
        break;
      case 2:
        rule->match.push_back(tc::Condition{"member_of", {"role" + n}});
        break;
      default:
        rule->match.push_back(tc::Condition{"route", {"r" + n}});
        rule->each = "tenant";
        break;
    }
  });
}

tc::StatementInfo Statement(std::string_view text) {
  tc::StatementInfo statement;
  statement.text = text;
  statement.username = "app";
  statement.application_name = "pgbench";
  statement.remote_address = "10.1.2.3";
  statement.database = "bench";
  statement.command = "select";
  statement.query_id = kQueryId;
  statement.user_id = kUserId;
  statement.database_id = kDatabaseId;
  statement.plan_cost = kPlanCost;
  statement.server_cores = 2;
  statement.wall_now_us = 1700000000000000;
  statement.message_prefix = "[PGINSIGHTS] Traffic Control:";
  return statement;
}

constexpr std::string_view kMatching =
    "SELECT * FROM accounts WHERE id = $1 /*route='r500',app='web'*/";
constexpr std::string_view kMatchingMixed =
    "SELECT * FROM accounts WHERE id = $1 /*route='r500',app='web',tenant='acme'*/";
constexpr std::string_view kNotMatching =
    "SELECT * FROM accounts WHERE id = $1 /*route='nowhere',app='web'*/";
constexpr std::string_view kNoComment = "SELECT * FROM accounts WHERE id = $1";

// One backend: the shared tables and the controller attached to them.
struct Backend {
  explicit Backend(tc::RuleSet rules, bool rw_lock = false)
      : buckets(tc::BucketTable::RequiredBytes(kBuckets)),
        patterns(tc::PatternTable::RequiredBytes(kPatterns)),
        counters(tc::RuleCounterTable::RequiredBytes(kBuckets)) {
    tc::BucketTable::Initialize(buckets.span(), kBuckets);
    tc::PatternTable::Initialize(patterns.span(), kPatterns);
    tc::RuleCounterTable::Initialize(counters.span(), kBuckets);
    rule_counters = std::make_unique<tc::RuleCounterTable>(counters.span());
    if (rw_lock) {
      bucket_lock = std::make_unique<RwLock>();
      pattern_lock = std::make_unique<RwLock>();
    } else {
      bucket_lock = std::make_unique<NoLock>();
      pattern_lock = std::make_unique<NoLock>();
    }
    bucket_table = std::make_unique<tc::BucketTable>(buckets.span(), *bucket_lock, clock);
    pattern_table = std::make_unique<tc::PatternTable>(patterns.span(), *pattern_lock, clock);
    // The pattern has a history, as it would after a few executions.
    for (int i = 0; i < 10; ++i) pattern_table->Record(kPattern, kPlanCost, 0.00002);
    controller.SetRuleSet(std::move(rules));
    controller.AttachTable(bucket_table.get());
    controller.AttachPatterns(pattern_table.get());
    controller.AttachRuleCounters(rule_counters.get());  // rule_status.matched, as in the server
  }

  Segment buckets, patterns, counters;
  std::unique_ptr<tc::RuleCounterTable> rule_counters;
  std::unique_ptr<tc::TableLock> bucket_lock, pattern_lock;
  tc::SteadyClock clock;
  std::unique_ptr<tc::BucketTable> bucket_table;
  std::unique_ptr<tc::PatternTable> pattern_table;
  tc::AdmissionController controller;
};

void RunAdmitRelease(benchmark::State& state, Backend& backend, std::string_view text,
                     bool expect_holding) {
  const tc::StatementInfo statement = Statement(text);
  // Warm up: the instance exists, as it does after the first statement.
  {
    const tc::Decision decision = backend.controller.Admit(statement, tc::AttemptKind::kFinal);
    backend.controller.Release(decision.holding, 0.00002, true);
  }
  AllocationCounter allocations(state);
  for (auto _ : state) {
    tc::Decision decision = backend.controller.Admit(statement, tc::AttemptKind::kFinal);
    benchmark::DoNotOptimize(decision);
    if (decision.outcome != tc::Decision::Outcome::kAdmitted ||
        (decision.holding != 0) != expect_holding) {
      state.SkipWithError("unexpected decision");
      break;
    }
    backend.controller.Release(decision.holding, 0.00002, true);
  }
}

// The target: 1,000 rules, the statement matching exactly one budget
// (max_concurrent), Admit + Release.
void BM_AdmitRelease_Match(benchmark::State& state) {
  Backend backend(MakeRouteRules(Limits::kConcurrency));
  RunAdmitRelease(state, backend, kMatching, true);
}

// The same with per_query_limit and server_share: prediction, charge,
// correction and an estimator sample per statement.
void BM_AdmitRelease_MatchCostLimits(benchmark::State& state) {
  Backend backend(MakeRouteRules(Limits::kCost));
  RunAdmitRelease(state, backend, kMatching, true);
}

// Cost limits with a real reader-writer lock on both tables.
void BM_AdmitRelease_MatchCostLimits_RwLock(benchmark::State& state) {
  Backend backend(MakeRouteRules(Limits::kCost), true);
  RunAdmitRelease(state, backend, kMatching, true);
}

// 1,000 rules of mixed kinds (tags, lists, built-ins, CIDRs, `each`).
void BM_AdmitRelease_MatchMixedRules(benchmark::State& state) {
  Backend backend(MakeMixedRules());
  RunAdmitRelease(state, backend, kMatchingMixed, true);
}

// 1,000 rules, a tagged statement that matches none.
void BM_Admit_NoMatch(benchmark::State& state) {
  Backend backend(MakeRouteRules(Limits::kConcurrency));
  RunAdmitRelease(state, backend, kNotMatching, false);
}

// 1,000 rules, a statement without a tag comment.
void BM_Admit_NoMatchNoComment(benchmark::State& state) {
  Backend backend(MakeRouteRules(Limits::kConcurrency));
  RunAdmitRelease(state, backend, kNoComment, false);
}

// --- The parts, to see where the time goes ----------------------------------------

void BM_Part_BuildMetadata(benchmark::State& state) {
  const tc::StatementInfo statement = Statement(kMatching);
  tc::Metadata metadata;
  for (auto _ : state) {
    tc::BuildMetadata(statement, &metadata);
    benchmark::DoNotOptimize(metadata);
  }
}

void BM_Part_RuleSetMatch(benchmark::State& state) {
  const tc::RuleSet rules = MakeRouteRules(Limits::kConcurrency);
  tc::Metadata metadata;
  tc::BuildMetadata(Statement(kMatching), &metadata);
  std::vector<tc::BudgetMatch> matches;
  for (auto _ : state) {
    matches.clear();
    rules.Match(metadata, &matches);
    benchmark::DoNotOptimize(matches);
  }
}

// The rule lookup among MakeRules11's rules for `text` and a role that is a
// member of `member_of` (rules name role<i>); `expected`: the rules matched.
void RunRules11Match(benchmark::State& state, std::string_view text,
                     const std::vector<const char*>& member_of, std::size_t expected) {
  const tc::RuleSet rules = MakeRules11();
  tc::StatementInfo statement = Statement(text);
  statement.member_of = member_of.data();
  statement.member_of_count = member_of.size();
  tc::Metadata metadata;
  tc::BuildMetadata(statement, &metadata, &rules);
  std::vector<tc::BudgetMatch> matches;
  rules.Match(metadata, &matches);
  if (matches.size() != expected) state.SkipWithError("unexpected number of matches");
  for (auto _ : state) {
    matches.clear();
    rules.Match(metadata, &matches);
    benchmark::DoNotOptimize(matches);
  }
}

// Matches a prefix rule (rule500) and a member_of rule (rule502).
void BM_Part_RuleSetMatch_Rules11(benchmark::State& state) {
  RunRules11Match(state, "SELECT 1 /*route='%2Fr500%2Forders',app='web'*/", {"role502"}, 2);
}

// A route no rule names, and no member_of: only the default rule matches,
// after every candidate was checked.
void BM_Part_RuleSetMatch_Rules11Default(benchmark::State& state) {
  RunRules11Match(state, "SELECT 1 /*route='%2Fnone',app='web'*/", {}, 1);
}

void BM_Part_BucketTableAdmitRelease(benchmark::State& state) {
  Backend backend(MakeRouteRules(Limits::kCost));
  tc::Budget budget = backend.controller.rule_set().budgets()[500];
  tc::AdmissionRequest request;
  request.budget = &budget;
  request.predicted_seconds = 0.00002;
  request.server_cores = 2;
  const std::vector<tc::AdmissionRequest> requests{request};
  for (auto _ : state) {
    tc::AdmitResult result = backend.bucket_table->Admit(requests, tc::AttemptKind::kFinal, 0);
    benchmark::DoNotOptimize(result);
    backend.bucket_table->Release(result.holdings[0], 0.00002);
  }
}

void BM_Part_PatternPredictRecord(benchmark::State& state) {
  Backend backend(MakeRouteRules(Limits::kCost));
  for (auto _ : state) {
    std::optional<double> predicted = backend.pattern_table->Predict(kPattern, kPlanCost);
    benchmark::DoNotOptimize(predicted);
    backend.pattern_table->Record(kPattern, kPlanCost, 0.00002);
  }
}

#define TC_BENCH(name) BENCHMARK(name)->Repetitions(10)->ReportAggregatesOnly(true)
TC_BENCH(BM_AdmitRelease_Match);
TC_BENCH(BM_AdmitRelease_MatchCostLimits);
TC_BENCH(BM_AdmitRelease_MatchCostLimits_RwLock);
TC_BENCH(BM_AdmitRelease_MatchMixedRules);
TC_BENCH(BM_Admit_NoMatch);
TC_BENCH(BM_Admit_NoMatchNoComment);
TC_BENCH(BM_Part_BuildMetadata);
TC_BENCH(BM_Part_RuleSetMatch);
TC_BENCH(BM_Part_RuleSetMatch_Rules11);
TC_BENCH(BM_Part_RuleSetMatch_Rules11Default);
TC_BENCH(BM_Part_BucketTableAdmitRelease);
TC_BENCH(BM_Part_PatternPredictRecord);

}  // namespace
