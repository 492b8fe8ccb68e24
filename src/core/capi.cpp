// The C ABI of include/traffic_control/capi.h. Every entry point runs its body
// through Guarded(): no C++ exception ever crosses into PostgreSQL's C code,
// where an ERROR is a longjmp that would skip C++ destructors. The shim raises
// the PostgreSQL error itself, after this function has returned.
#include "traffic_control/capi.h"

#include <pthread.h>
#include <signal.h>

#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "traffic_control/admission.hpp"
#include "traffic_control/bucket_table.hpp"
#include "traffic_control/config.hpp"
#include "traffic_control/cpu_limit.hpp"
#include "traffic_control/estimator.hpp"
#include "traffic_control/history.hpp"
#include "traffic_control/rule_counters.hpp"
#include "traffic_control/ruleset.hpp"
#include "traffic_control/status.hpp"

namespace {

// One backend = one process = one thread: plain statics are backend-local.
std::string last_error;

template <typename Body>
bool Guarded(Body&& body) noexcept {
  // The message is copied into last_error inside the catch; the caller raises
  // the PostgreSQL error after this frame is gone.
  try {
    last_error.clear();
    return body();
  } catch (const std::bad_alloc&) {
    last_error = "traffic_control: out of memory";
  } catch (const std::exception& e) {
    try {
      last_error = std::string("traffic_control: internal error: ") + e.what();
    } catch (...) {
      last_error.clear();
    }
  } catch (...) {
    last_error = "traffic_control: internal error: unknown exception";
  }
  return false;
}

// Runs `build` on a short-lived thread, joined at once, with every signal
// blocked in it. Why: glibc serves a thread's allocations from an arena of
// its own, so the many short-lived allocations of a configuration load (the
// JSON documents, the index being built) leave no holes in the main heap.
// Left there, those holes are where PostgreSQL's per-statement memory blocks
// get carved from and merged back into, which made every statement's
// malloc and free about twice as expensive. The thread calls no PostgreSQL
// function. When no thread can be started, `build` runs here.
template <typename Build>
void BuildInOwnArena(Build&& build) {
  std::exception_ptr failure;
  sigset_t all_signals, previous;
  sigfillset(&all_signals);
  pthread_sigmask(SIG_SETMASK, &all_signals, &previous);  // inherited by the thread
  std::thread builder;
  try {
    builder = std::thread([&] {
      try {
        build();
      } catch (...) {
        failure = std::current_exception();
      }
    });
  } catch (const std::system_error&) {
    pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    build();
    return;
  }
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  builder.join();
  if (failure) std::rethrow_exception(failure);
}

class ShimLock final : public tc::TableLock {
 public:
  explicit ShimLock(const tc_lock_ops& ops) : ops_(ops) {}
  void LockExclusive() override { ops_.lock_exclusive(); }
  void LockShared() override { ops_.lock_shared(); }
  void Unlock() override { ops_.unlock(); }

 private:
  tc_lock_ops ops_;
};

struct BackendState {
  tc::AdmissionController controller;
  std::unique_ptr<ShimLock> bucket_lock;
  std::unique_ptr<ShimLock> pattern_lock;
  tc::SteadyClock clock;
  std::unique_ptr<tc::BucketTable> table;
  std::unique_ptr<tc::PatternTable> patterns;
  std::unique_ptr<tc::RuleCounterTable> rule_counters;
  std::unique_ptr<tc::ViolationHistory> history;
  // Storage behind the pointers handed out by tc_admit.
  tc::Decision decision;
  std::vector<tc_report> notices;
  std::vector<tc_quarantine_request> quarantine;
  std::vector<std::int32_t> queue_holders;  // tc_queue_holders
  // ... and by the SQL interface's functions (one each).
  std::vector<tc::BudgetStatusRow> budget_rows;
  std::vector<tc_budget_status_row> budget_rows_c;
  std::vector<tc::RuleStatusRow> rule_rows;
  std::vector<tc_rule_status_row> rule_rows_c;
  std::vector<tc_pattern_row> pattern_rows;
  std::vector<tc::ViolationHistory::Row> history_rows;
  std::vector<tc_violation_history_row> history_rows_c;
  struct ExplainStrings {
    std::string budget, instance, rule, mode, limit_name, detail;
    bool has_instance = false;
  };
  std::vector<ExplainStrings> explain_strings;
  std::vector<tc_explain_row> explain_rows;
  tc::Metadata explain_metadata;
  std::vector<tc_metadata_item> explain_metadata_c;
};

BackendState& State() {
  static BackendState* state = new BackendState();  // never destroyed: used until exit
  return *state;
}

tc_report ToC(const tc::Report& report) {
  return tc_report{report.message.c_str(),
                   report.detail.c_str(),
                   report.hint.empty() ? nullptr : report.hint.c_str(),
                   report.budget.c_str(),
                   report.rule.c_str(),
                   report.limit.c_str()};
}

std::optional<std::string_view> Optional(const char* text) {
  if (text == nullptr) return std::nullopt;
  return std::string_view(text);
}

// The statement as the core sees it; the pointers stay the caller's. With
// `only_keys_of`, the built-ins none of its rules use are left out: they
// cannot change a match, and each costs a strlen on every statement.
tc::StatementInfo ToInfo(const tc_statement& statement, const tc::RuleSet* only_keys_of = nullptr) {
  auto value = [only_keys_of](tc::BuiltinKey key,
                              const char* text) -> std::optional<std::string_view> {
    if (only_keys_of != nullptr && !only_keys_of->UsesBuiltinKey(key)) return std::nullopt;
    return Optional(text);
  };
  tc::StatementInfo info;
  info.text = std::string_view(statement.text ? statement.text : "",
                               statement.text ? statement.text_len : 0);
  info.username = value(tc::kUsername, statement.username);
  info.application_name = value(tc::kApplicationName, statement.application_name);
  info.remote_address = value(tc::kRemoteAddress, statement.remote_address);
  info.database = value(tc::kDatabase, statement.database);
  info.command = value(tc::kCommand, statement.command);
  if (statement.has_query_id) info.query_id = statement.query_id;
  if (only_keys_of == nullptr || only_keys_of->UsesBuiltinKey(tc::kMemberOf)) {
    info.member_of = statement.member_of;
    info.member_of_count = statement.member_of != nullptr ? statement.member_of_count : 0;
  }
  info.user_id = statement.user_id;
  info.database_id = statement.database_id;
  info.parallel_workers = statement.parallel_workers;
  info.workers_can_be_cut = statement.workers_can_be_cut;
  info.plan_cost = statement.plan_cost;
  info.server_cores = statement.server_cores;
  info.wall_now_us = statement.wall_now_us;
  info.message_prefix = statement.message_prefix ? statement.message_prefix : "";
  return info;
}

// The attached state; the status functions need the shared tables.
BackendState& AttachedState() {
  BackendState& state = State();
  if (!state.table || !state.patterns || !state.rule_counters || !state.history) {
    throw std::logic_error("the core is not attached to shared memory");
  }
  return state;
}

}  // namespace

extern "C" {

const char* tc_last_error(void) {
  return last_error.empty() ? "traffic_control: unknown error" : last_error.c_str();
}

bool tc_check_budgets(const char* json) {
  return Guarded([&] {
    std::vector<tc::Budget> budgets;
    return tc::ParseBudgets(json ? json : "", &budgets, &last_error);
  });
}

bool tc_check_rules(const char* json) {
  return Guarded([&] {
    std::vector<tc::Rule> rules;
    return tc::ParseRules(json ? json : "", &rules, &last_error);
  });
}

bool tc_load_config(const char* budgets_json, const char* rules_json, tc_report_fn report) {
  return Guarded([&] {
    bool parsed = false;
    tc::RuleSet rule_set;
    std::vector<tc::RuleProblem> problems;
    std::string error;
    BuildInOwnArena([&] {
      std::vector<tc::Budget> budgets;
      std::vector<tc::Rule> rules;
      if (!tc::ParseBudgets(budgets_json ? budgets_json : "", &budgets, &error)) return;
      if (!tc::ParseRules(rules_json ? rules_json : "", &rules, &error)) return;
      rule_set = tc::RuleSet(std::move(budgets), std::move(rules), &problems);
      parsed = true;
    });
    if (!parsed) {
      last_error = std::move(error);
      return false;
    }
    State().controller.SetRuleSet(std::move(rule_set), problems);
    if (report != nullptr) {
      for (const tc::RuleProblem& problem : problems) {
        report(problem.rule.c_str(), problem.message.c_str());
      }
    }
    return true;
  });
}

bool tc_config_empty(void) { return State().controller.empty(); }

int tc_config_max_cpu_priority(void) { return State().controller.max_cpu_priority(); }

size_t tc_config_member_of_role_count(void) {
  return State().controller.rule_set().member_of_roles().size();
}

const char* tc_config_member_of_role(size_t index) {
  const std::vector<std::string>& roles = State().controller.rule_set().member_of_roles();
  return index < roles.size() ? roles[index].c_str() : nullptr;
}

double tc_cgroup_cpu_quota(void) {
  double cores = 0;
  Guarded([&] {
    std::ifstream file("/proc/self/cgroup");
    std::ostringstream text;
    text << file.rdbuf();
    cores = tc::CgroupCpuQuota(text.str(), "/sys/fs/cgroup").value_or(0);
    return true;
  });
  return cores;
}

}  // extern "C"

// Helpers of the entry points below, outside extern "C": a function declared
// inside it has C language linkage even in an anonymous namespace, and clang
// rejects one that returns a C++ type (-Wreturn-type-c-linkage).
namespace {

std::size_t AlignUp(std::size_t size) { return (size + 63) & ~static_cast<std::size_t>(63); }

std::size_t BucketBytes(int max_buckets, int max_backends) {
  return AlignUp(tc::BucketTable::RequiredBytes(static_cast<std::uint32_t>(max_buckets),
                                                static_cast<std::uint32_t>(max_backends)));
}

std::size_t PatternBytes(int max_patterns) {
  return AlignUp(tc::PatternTable::RequiredBytes(static_cast<std::uint32_t>(max_patterns)));
}

// One (rule, budget) counter per bucket slot: far more than any configuration
// has rules, and it grows with the installation's scale.
std::size_t RuleCounterBytes(int max_buckets) {
  return AlignUp(tc::RuleCounterTable::RequiredBytes(static_cast<std::uint32_t>(max_buckets)));
}

// A fixed size: ViolationHistory::kMaxBudgets budgets x kMinutes minutes.
std::size_t HistoryBytes() { return tc::ViolationHistory::RequiredBytes(); }

// The block: bucket table, pattern table, rule counters, violation history,
// each 64-byte aligned.
struct Spans {
  tc::MemorySpan buckets, patterns, rule_counters, history;
};

Spans SpansOf(void* memory, int max_buckets, int max_patterns, int max_backends) {
  auto* base = static_cast<char*>(memory);
  const std::size_t bucket_bytes = BucketBytes(max_buckets, max_backends);
  const std::size_t pattern_bytes = PatternBytes(max_patterns);
  const std::size_t counter_bytes = RuleCounterBytes(max_buckets);
  return Spans{tc::MemorySpan{base, bucket_bytes},
               tc::MemorySpan{base + bucket_bytes, pattern_bytes},
               tc::MemorySpan{base + bucket_bytes + pattern_bytes, counter_bytes},
               tc::MemorySpan{base + bucket_bytes + pattern_bytes + counter_bytes, HistoryBytes()}};
}

}  // namespace

extern "C" {

size_t tc_shared_size(int max_buckets, int max_patterns, int max_backends) {
  size_t size = 0;
  const bool ok = Guarded([&] {
    if (max_buckets <= 0 || max_patterns <= 0 || max_backends < 0) return false;
    size = BucketBytes(max_buckets, max_backends) + PatternBytes(max_patterns) +
           RuleCounterBytes(max_buckets) + HistoryBytes();
    return true;
  });
  return ok ? size : 0;
}

bool tc_shared_format(void* memory, size_t size, int max_buckets, int max_patterns,
                      int max_backends) {
  return Guarded([&] {
    if (size == 0 || size < tc_shared_size(max_buckets, max_patterns, max_backends)) {
      last_error = "traffic_control: shared memory too small";
      return false;
    }
    const Spans spans = SpansOf(memory, max_buckets, max_patterns, max_backends);
    tc::BucketTable::Initialize(spans.buckets, static_cast<std::uint32_t>(max_buckets),
                                static_cast<std::uint32_t>(max_backends));
    tc::PatternTable::Initialize(spans.patterns, static_cast<std::uint32_t>(max_patterns));
    tc::RuleCounterTable::Initialize(spans.rule_counters, static_cast<std::uint32_t>(max_buckets));
    tc::ViolationHistory::Initialize(spans.history);
    return true;
  });
}

bool tc_attach(void* memory, size_t size, int max_buckets, int max_patterns, int max_backends,
               int backend, const tc_lock_ops* bucket_lock, const tc_lock_ops* pattern_lock) {
  return Guarded([&] {
    if (size < tc_shared_size(max_buckets, max_patterns, max_backends)) {
      last_error = "traffic_control: shared memory too small";
      return false;
    }
    BackendState& state = State();
    const Spans spans = SpansOf(memory, max_buckets, max_patterns, max_backends);
    state.bucket_lock = std::make_unique<ShimLock>(*bucket_lock);
    state.pattern_lock = std::make_unique<ShimLock>(*pattern_lock);
    state.table = std::make_unique<tc::BucketTable>(
        spans.buckets, *state.bucket_lock, state.clock,
        backend >= 0 && backend < max_backends ? backend : tc::BucketTable::kNoBackend);
    state.patterns =
        std::make_unique<tc::PatternTable>(spans.patterns, *state.pattern_lock, state.clock);
    state.rule_counters = std::make_unique<tc::RuleCounterTable>(spans.rule_counters);
    state.history = std::make_unique<tc::ViolationHistory>(spans.history);
    state.controller.AttachTable(state.table.get());
    state.controller.AttachPatterns(state.patterns.get());
    state.controller.AttachRuleCounters(state.rule_counters.get());
    state.controller.AttachHistory(state.history.get());
    return true;
  });
}

static_assert(TC_CPU_PRIORITY_IDLE == tc::kCpuPriorityIdle);

}  // extern "C"

namespace {

// The table's wake list since the last ClearWakes, for the shim.
tc_wakeups Wakeups() {
  const tc::BucketTable* table = State().table.get();
  if (table == nullptr || table->wakes().empty()) return tc_wakeups{0, nullptr};
  return tc_wakeups{static_cast<int>(table->wakes().size()), table->wakes().data()};
}

void ClearWakes() {
  if (State().table) State().table->ClearWakes();
}

// Fills *out from the controller's decision.
void ExportDecision(BackendState& state, tc_admission* out) {
  const tc::Decision& decision = state.decision;
  // A decision that is final leaves no queue behind, whatever path it took.
  if (decision.outcome != tc::Decision::Outcome::kMustWait && state.table) {
    state.table->LeaveQueue();
  }
  state.notices.clear();
  for (const tc::Report& notice : decision.notices) state.notices.push_back(ToC(notice));

  std::memset(out, 0, sizeof *out);
  switch (decision.outcome) {
    case tc::Decision::Outcome::kAdmitted:
      out->outcome = TC_ADMITTED;
      break;
    case tc::Decision::Outcome::kRefused:
      out->outcome = TC_REFUSED;
      out->refusal = ToC(decision.refusal);
      break;
    case tc::Decision::Outcome::kMustWait:
      out->outcome = TC_MUST_WAIT;
      break;
  }
  out->queue_timeout_ms = decision.queue_timeout_ms;
  out->notice_count = static_cast<int>(state.notices.size());
  out->notices = state.notices.empty() ? nullptr : state.notices.data();
  out->holding = decision.holding;
  out->measure_cpu = decision.measure_cpu;
  out->cpu_priority = decision.cpu_priority;
  out->parallel_workers = decision.parallel_workers;
  out->cancel_after_ms = decision.cancel_after_ms;
  if (decision.cancel_after_ms > 0) {
    out->duration_cancel = ToC(decision.duration_cancel);
    out->duration_cancel_version = decision.duration_cancel_version;
  }
  out->warn_after_ms = decision.warn_after_ms;
  if (decision.warn_after_ms > 0) out->duration_warning = ToC(decision.duration_warning);
  out->predicted_seconds = decision.predicted_seconds ? *decision.predicted_seconds : -1;
  out->cancel_quarantine_s = decision.cancel_after_ms > 0 ? decision.cancel_quarantine_s : 0;
  state.quarantine.clear();
  for (const tc::Decision::Quarantine& entry : decision.quarantine) {
    state.quarantine.push_back(tc_quarantine_request{entry.budget.c_str(), entry.seconds});
  }
  out->quarantine_count = static_cast<int>(state.quarantine.size());
  out->quarantine = state.quarantine.empty() ? nullptr : state.quarantine.data();
  out->wake = Wakeups();
}

}  // namespace

extern "C" {

bool tc_admit(const tc_statement* statement, tc_attempt attempt, tc_admission* out) {
  return Guarded([&] {
    BackendState& state = State();
    ClearWakes();
    const tc::StatementInfo info = ToInfo(*statement, &state.controller.rule_set());
    const tc::AttemptKind kind = attempt == TC_ATTEMPT_FIRST   ? tc::AttemptKind::kWillWait
                                 : attempt == TC_ATTEMPT_RETRY ? tc::AttemptKind::kRetry
                                                               : tc::AttemptKind::kFinal;
    state.controller.Admit(info, kind, &state.decision);
    ExportDecision(state, out);
    return true;
  });
}

bool tc_queue_holders(const int32_t** backends, int* count) {
  return Guarded([&] {
    BackendState& state = State();
    state.queue_holders.clear();
    if (state.table) {
      for (const tc::QueueHolder& holder : state.table->HoldersOfQueue()) {
        state.queue_holders.push_back(holder.backend);
      }
    }
    *backends = state.queue_holders.empty() ? nullptr : state.queue_holders.data();
    *count = static_cast<int>(state.queue_holders.size());
    return true;
  });
}

bool tc_admit_if_wait_never_ends(const tc_statement* statement, const int32_t* stuck, int count,
                                 int stuck_pid, bool* decided, tc_admission* out) {
  return Guarded([&] {
    BackendState& state = State();
    ClearWakes();
    const tc::StatementInfo info = ToInfo(*statement, &state.controller.rule_set());
    *decided = state.controller.AdmitIfWaitNeverEnds(
        info, stuck, count > 0 ? static_cast<std::size_t>(count) : 0, stuck_pid, &state.decision);
    if (*decided) ExportDecision(state, out);
    return true;
  });
}

bool tc_release(int64_t holding, double cpu_seconds, bool completed, bool canceled,
                tc_wakeups* wake) {
  return Guarded([&] {
    ClearWakes();
    std::optional<double> measured;
    if (cpu_seconds >= 0) measured = cpu_seconds;
    State().controller.Release(holding, measured, completed, canceled);
    *wake = Wakeups();
    return true;
  });
}

bool tc_release_all(tc_wakeups* wake) {
  return Guarded([&] {
    ClearWakes();
    State().controller.FlushRuleCounts();
    State().controller.FlushHistory();
    State().controller.ReleaseAll();
    *wake = Wakeups();
    return true;
  });
}

bool tc_waiter_leave(tc_wakeups* wake) {
  return Guarded([&] {
    ClearWakes();
    if (State().table) State().table->LeaveQueue();
    *wake = Wakeups();
    return true;
  });
}

bool tc_config_has_budget(const char* name) {
  if (name == nullptr) return false;
  for (const tc::Budget& budget : State().controller.rule_set().budgets()) {
    if (budget.name == name) return true;
  }
  return false;
}

bool tc_set_shed(const tc_shed_budget* shed, size_t count) {
  return Guarded([&] {
    std::vector<tc::AdmissionController::ShedBudget> list;
    list.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      if (shed[i].budget == nullptr) continue;
      list.push_back({shed[i].budget, shed[i].until_us});
    }
    State().controller.SetShed(std::move(list));
    return true;
  });
}

bool tc_set_quarantine(const tc_quarantined_pattern* quarantine, size_t count) {
  return Guarded([&] {
    std::vector<tc::AdmissionController::QuarantinedPattern> list;
    list.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      const tc_quarantined_pattern& entry = quarantine[i];
      if (entry.budget == nullptr) continue;
      tc::PatternKey pattern;
      pattern.query_id = entry.query_id;
      pattern.user_id = entry.user_id;
      pattern.database_id = entry.database_id;
      list.push_back({entry.budget, pattern, entry.until_us,
                      entry.reason == TC_QUARANTINE_PER_QUERY_LIMIT ? tc::Limit::kPerQueryLimit
                                                                    : tc::Limit::kNone});
    }
    State().controller.SetQuarantine(std::move(list));
    return true;
  });
}

bool tc_budget_status(double server_cores, const tc_budget_status_row** rows, size_t* count) {
  return Guarded([&] {
    BackendState& state = AttachedState();
    state.budget_rows_c.clear();
    state.budget_rows = tc::BuildBudgetStatus(state.controller.rule_set(), state.table->Snapshot());
    state.budget_rows_c.reserve(state.budget_rows.size());
    for (const tc::BudgetStatusRow& row : state.budget_rows) {
      const tc::BucketSnapshot& bucket = row.bucket;
      tc_budget_status_row& out = state.budget_rows_c.emplace_back();
      out.budget = bucket.budget.c_str();
      out.instance = bucket.has_instance ? bucket.instance.c_str() : nullptr;
      out.instance_len = bucket.has_instance ? bucket.instance.size() : 0;
      out.mode = row.mode ? tc::ModeName(*row.mode).data() : nullptr;  // static strings
      out.active = bucket.active;
      out.debt_seconds = bucket.debt_seconds;
      out.admitted = bucket.admitted;
      out.warned = bucket.warned;
      out.blocked_max_concurrent = bucket.blocked_max_concurrent;
      out.blocked_per_query_limit = bucket.blocked_per_query_limit;
      out.blocked_server_share = bucket.blocked_server_share;
      out.blocked_shed = bucket.blocked_shed;
      out.canceled = bucket.canceled;
      out.blocked_quarantined = bucket.blocked_quarantined;
      out.cpu_seconds = bucket.cpu_seconds;
      out.queued = bucket.queued;
      out.last_blocked_at_us = bucket.last_blocked_at_us;
      out.shed_until_us = state.controller.ShedUntil(bucket.budget, 0);
      if (row.config != nullptr) {
        const tc::Budget& budget = *row.config;
        out.has_max_concurrent = budget.max_concurrent.has_value();
        out.max_concurrent = budget.max_concurrent.value_or(0);
        out.has_per_query_limit = budget.per_query_limit.has_value();
        out.per_query_limit = budget.per_query_limit.value_or(0);
        out.has_server_share = budget.server_share.has_value();
        out.server_share = budget.server_share.value_or(0);
        out.burst_limit = budget.burst_limit;
        const std::optional<double> utilization =
            tc::UtilizationPercent(budget, bucket, server_cores);
        out.has_utilization = utilization.has_value();
        out.utilization_pct = utilization.value_or(0);
      }
    }
    *rows = state.budget_rows_c.empty() ? nullptr : state.budget_rows_c.data();
    *count = state.budget_rows_c.size();
    return true;
  });
}

bool tc_rule_status(const tc_rule_status_row** rows, size_t* count) {
  return Guarded([&] {
    BackendState& state = AttachedState();
    state.controller.FlushRuleCounts();
    state.rule_rows_c.clear();
    state.rule_rows = tc::BuildRuleStatus(state.controller.rule_set(), state.controller.problems(),
                                          state.rule_counters.get());
    state.rule_rows_c.reserve(state.rule_rows.size());
    for (const tc::RuleStatusRow& row : state.rule_rows) {
      tc_rule_status_row& out = state.rule_rows_c.emplace_back();
      out.rule = row.rule.c_str();
      out.budget = row.budget.c_str();
      out.has_matched = row.matched.has_value();
      out.matched = row.matched.value_or(0);
      out.problem = row.problem.empty() ? nullptr : row.problem.c_str();
    }
    *rows = state.rule_rows_c.empty() ? nullptr : state.rule_rows_c.data();
    *count = state.rule_rows_c.size();
    return true;
  });
}

bool tc_pattern_estimates(const tc_pattern_row** rows, size_t* count) {
  return Guarded([&] {
    BackendState& state = AttachedState();
    state.pattern_rows.clear();
    const std::vector<tc::PatternSnapshot> patterns = state.patterns->Snapshot();
    state.pattern_rows.reserve(patterns.size());
    for (const tc::PatternSnapshot& pattern : patterns) {
      tc_pattern_row& out = state.pattern_rows.emplace_back();
      // The query id's bits, as PostgreSQL shows it (a signed bigint).
      out.query_id = static_cast<std::int64_t>(pattern.query_id);
      out.user_id = pattern.user_id;
      out.database_id = pattern.database_id;
      out.calls = pattern.calls;
      out.mean_cpu_seconds = pattern.mean_cpu_seconds;
      out.mean_plan_cost = pattern.mean_plan_cost;
      out.k = pattern.k;
    }
    *rows = state.pattern_rows.empty() ? nullptr : state.pattern_rows.data();
    *count = state.pattern_rows.size();
    return true;
  });
}

bool tc_violation_history(int64_t wall_now_us, const tc_violation_history_row** rows,
                          size_t* count) {
  return Guarded([&] {
    BackendState& state = AttachedState();
    state.controller.FlushHistory();
    state.history_rows_c.clear();
    state.history_rows = state.history->Snapshot(wall_now_us);
    state.history_rows_c.reserve(state.history_rows.size());
    for (const tc::ViolationHistory::Row& row : state.history_rows) {
      tc_violation_history_row& out = state.history_rows_c.emplace_back();
      out.budget = row.budget.c_str();
      out.minute_start_s = row.minute_start_s;
      out.admitted = row.counts[tc::ViolationHistory::kAdmitted];
      out.warned = row.counts[tc::ViolationHistory::kWarned];
      out.blocked_max_concurrent = row.counts[tc::ViolationHistory::kBlockedMaxConcurrent];
      out.blocked_per_query_limit = row.counts[tc::ViolationHistory::kBlockedPerQueryLimit];
      out.blocked_server_share = row.counts[tc::ViolationHistory::kBlockedServerShare];
    }
    *rows = state.history_rows_c.empty() ? nullptr : state.history_rows_c.data();
    *count = state.history_rows_c.size();
    return true;
  });
}

bool tc_reset_counters(void) {
  return Guarded([&] {
    BackendState& state = AttachedState();
    state.table->ResetCounters();
    state.controller.DropPendingRuleCounts();
    state.rule_counters->ResetCounts();
    return true;
  });
}

bool tc_explain(const tc_statement* statement, tc_explanation* out) {
  return Guarded([&] {
    BackendState& state = AttachedState();
    tc::Explanation explanation = state.controller.Explain(ToInfo(*statement));

    // Copy everything (the rule set may be replaced before the caller reads),
    // then point into the copies once no vector grows any more.
    state.explain_rows.clear();
    state.explain_metadata_c.clear();
    state.explain_strings.clear();
    state.explain_strings.reserve(explanation.budgets.size());
    for (const tc::BudgetExplanation& budget : explanation.budgets) {
      BackendState::ExplainStrings& strings = state.explain_strings.emplace_back();
      strings.budget = budget.budget->name;
      strings.has_instance = budget.has_instance;
      strings.instance = budget.instance;
      strings.rule = budget.rule->name;
      strings.mode = std::string(tc::ModeName(budget.budget->mode));
      strings.limit_name = std::string(tc::LimitName(budget.verdict.limit));
      strings.detail = budget.report.detail;
    }
    state.explain_metadata = std::move(explanation.metadata);

    state.explain_rows.reserve(state.explain_strings.size());
    for (std::size_t i = 0; i < state.explain_strings.size(); ++i) {
      const BackendState::ExplainStrings& strings = state.explain_strings[i];
      const tc::BudgetVerdict::Action action = explanation.budgets[i].verdict.action;
      tc_explain_row& row = state.explain_rows.emplace_back();
      row.budget = strings.budget.c_str();
      row.instance = strings.has_instance ? strings.instance.c_str() : nullptr;
      row.instance_len = strings.has_instance ? strings.instance.size() : 0;
      row.rule = strings.rule.c_str();
      row.mode = strings.mode.c_str();
      row.decision = action == tc::BudgetVerdict::Action::kRefuse ? TC_DECISION_REFUSE
                     : action == tc::BudgetVerdict::Action::kWarn ? TC_DECISION_WARN
                                                                  : TC_DECISION_ADMIT;
      row.limit_name = strings.limit_name.empty() ? nullptr : strings.limit_name.c_str();
      row.detail = strings.detail.empty() ? nullptr : strings.detail.c_str();
    }
    state.explain_metadata_c.reserve(state.explain_metadata.size());
    for (const auto& [key, value] : state.explain_metadata) {
      state.explain_metadata_c.push_back(
          tc_metadata_item{key.c_str(), key.size(), value.c_str(), value.size()});
    }

    std::memset(out, 0, sizeof *out);
    out->row_count = state.explain_rows.size();
    out->rows = state.explain_rows.empty() ? nullptr : state.explain_rows.data();
    out->metadata_count = state.explain_metadata_c.size();
    out->metadata = state.explain_metadata_c.empty() ? nullptr : state.explain_metadata_c.data();
    out->has_prediction = explanation.predicted_seconds.has_value();
    out->predicted_seconds = explanation.predicted_seconds.value_or(0);
    return true;
  });
}

}  // extern "C"
