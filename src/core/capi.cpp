// The C ABI of include/traffic_control/capi.h. Every entry point runs its body
// through Guarded(): no C++ exception ever crosses into PostgreSQL's C code,
// where an ERROR is a longjmp that would skip C++ destructors. The shim raises
// the PostgreSQL error itself, after this function has returned.
#include "traffic_control/capi.h"

#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "traffic_control/admission.hpp"
#include "traffic_control/bucket_table.hpp"
#include "traffic_control/config.hpp"
#include "traffic_control/estimator.hpp"
#include "traffic_control/ruleset.hpp"

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
  // Storage behind the pointers handed out by tc_admit.
  tc::Decision decision;
  std::vector<tc_report> notices;
};

BackendState& State() {
  static BackendState* state = new BackendState();  // never destroyed: used until exit
  return *state;
}

tc_report ToC(const tc::Report& report) {
  return tc_report{report.message.c_str(), report.detail.c_str(),
                   report.hint.empty() ? nullptr : report.hint.c_str()};
}

std::optional<std::string_view> Optional(const char* text) {
  if (text == nullptr) return std::nullopt;
  return std::string_view(text);
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
    std::vector<tc::Budget> budgets;
    std::vector<tc::Rule> rules;
    if (!tc::ParseBudgets(budgets_json ? budgets_json : "", &budgets, &last_error)) return false;
    if (!tc::ParseRules(rules_json ? rules_json : "", &rules, &last_error)) return false;
    std::vector<tc::RuleProblem> problems;
    tc::RuleSet rule_set(std::move(budgets), std::move(rules), &problems);
    State().controller.SetRuleSet(std::move(rule_set));
    if (report != nullptr) {
      for (const tc::RuleProblem& problem : problems) {
        report(problem.rule.c_str(), problem.message.c_str());
      }
    }
    return true;
  });
}

bool tc_config_empty(void) { return State().controller.empty(); }

namespace {

std::size_t AlignUp(std::size_t size) { return (size + 63) & ~static_cast<std::size_t>(63); }

std::size_t BucketBytes(int max_buckets) {
  return AlignUp(tc::BucketTable::RequiredBytes(static_cast<std::uint32_t>(max_buckets)));
}

}  // namespace

size_t tc_shared_size(int max_buckets, int max_patterns) {
  size_t size = 0;
  const bool ok = Guarded([&] {
    if (max_buckets <= 0 || max_patterns <= 0) return false;
    size = BucketBytes(max_buckets) +
           tc::PatternTable::RequiredBytes(static_cast<std::uint32_t>(max_patterns));
    return true;
  });
  return ok ? size : 0;
}

bool tc_shared_format(void* memory, size_t size, int max_buckets, int max_patterns) {
  return Guarded([&] {
    if (size == 0 || size < tc_shared_size(max_buckets, max_patterns)) {
      last_error = "traffic_control: shared memory too small";
      return false;
    }
    const std::size_t bucket_bytes = BucketBytes(max_buckets);
    tc::BucketTable::Initialize(tc::MemorySpan{memory, bucket_bytes},
                                static_cast<std::uint32_t>(max_buckets));
    tc::PatternTable::Initialize(
        tc::MemorySpan{static_cast<char*>(memory) + bucket_bytes, size - bucket_bytes},
        static_cast<std::uint32_t>(max_patterns));
    return true;
  });
}

bool tc_attach(void* memory, size_t size, int max_buckets, int /*max_patterns*/,
               const tc_lock_ops* bucket_lock, const tc_lock_ops* pattern_lock) {
  return Guarded([&] {
    BackendState& state = State();
    const std::size_t bucket_bytes = BucketBytes(max_buckets);
    state.bucket_lock = std::make_unique<ShimLock>(*bucket_lock);
    state.pattern_lock = std::make_unique<ShimLock>(*pattern_lock);
    state.table = std::make_unique<tc::BucketTable>(tc::MemorySpan{memory, bucket_bytes},
                                                    *state.bucket_lock, state.clock);
    state.patterns = std::make_unique<tc::PatternTable>(
        tc::MemorySpan{static_cast<char*>(memory) + bucket_bytes, size - bucket_bytes},
        *state.pattern_lock, state.clock);
    state.controller.AttachTable(state.table.get());
    state.controller.AttachPatterns(state.patterns.get());
    return true;
  });
}

bool tc_admit(const tc_statement* statement, tc_attempt attempt, tc_admission* out) {
  return Guarded([&] {
    BackendState& state = State();
    tc::StatementInfo info;
    info.text = std::string_view(statement->text ? statement->text : "",
                                 statement->text ? statement->text_len : 0);
    info.username = Optional(statement->username);
    info.application_name = Optional(statement->application_name);
    info.remote_address = Optional(statement->remote_address);
    info.database = Optional(statement->database);
    info.command = Optional(statement->command);
    if (statement->has_query_id) info.query_id = statement->query_id;
    info.parallel_workers = statement->parallel_workers;
    info.plan_cost = statement->plan_cost;
    info.server_cores = statement->server_cores;
    info.wall_now_us = statement->wall_now_us;
    info.message_prefix = statement->message_prefix ? statement->message_prefix : "";

    const tc::AttemptKind kind = attempt == TC_ATTEMPT_FIRST   ? tc::AttemptKind::kWillWait
                                 : attempt == TC_ATTEMPT_RETRY ? tc::AttemptKind::kRetry
                                                               : tc::AttemptKind::kFinal;
    state.decision = state.controller.Admit(info, kind);
    const tc::Decision& decision = state.decision;
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
    out->predicted_seconds = decision.predicted_seconds ? *decision.predicted_seconds : -1;
    return true;
  });
}

bool tc_release(int64_t holding, double cpu_seconds, bool completed, bool* wake) {
  return Guarded([&] {
    std::optional<double> measured;
    if (cpu_seconds >= 0) measured = cpu_seconds;
    *wake = State().controller.Release(holding, measured, completed);
    return true;
  });
}

bool tc_release_all(bool* wake) {
  return Guarded([&] {
    *wake = State().controller.ReleaseAll();
    return true;
  });
}

bool tc_waiter_add(void) {
  return Guarded([&] {
    if (State().table) State().table->AddWaiter();
    return true;
  });
}

bool tc_waiter_remove(void) {
  return Guarded([&] {
    if (State().table) State().table->RemoveWaiter();
    return true;
  });
}

}  // extern "C"
