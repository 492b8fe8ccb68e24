#include "traffic_control/messages.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "traffic_control/bucket_table.hpp"

namespace tc {
namespace {

using Action = BudgetVerdict::Action;

constexpr std::string_view kPrefix = "[PGINSIGHTS] Traffic Control:";

Budget MakeBudget(const std::string& name, Mode mode) {
  Budget budget;
  budget.name = name;
  budget.mode = mode;
  return budget;
}

VerdictContext Context(const Budget& budget, std::string_view rule,
                       std::optional<double> predicted = std::nullopt) {
  VerdictContext context;
  context.prefix = kPrefix;
  context.budget = &budget;
  context.rule = rule;
  context.predicted_seconds = predicted;
  return context;
}

BudgetVerdict Verdict(Action action, Limit limit, double limit_value, double level,
                      double level_percent, std::int64_t retry_after_ms = -1) {
  BudgetVerdict verdict;
  verdict.action = action;
  verdict.limit = limit;
  verdict.limit_value = limit_value;
  verdict.level = level;
  verdict.level_percent = level_percent;
  verdict.retry_after_ms = retry_after_ms;
  return verdict;
}

TEST(Messages, FormatNumber) {
  EXPECT_EQ(FormatNumber(2), "2");
  EXPECT_EQ(FormatNumber(0.25), "0.25");
  EXPECT_EQ(FormatNumber(1e-6), "1e-06");
  EXPECT_EQ(FormatNumber(12.5), "12.5");
  EXPECT_EQ(FormatNumber(std::numeric_limits<double>::infinity()), "infinity");
  EXPECT_EQ(FormatNumber(std::nan("")), "NaN");
}

TEST(Messages, MaxConcurrentRefused) {
  Budget budget = MakeBudget("reports", Mode::kEnforce);
  budget.max_concurrent = 2;
  const Report report =
      FormatVerdict(Context(budget, "reports-rule"),
                    Verdict(Action::kRefuse, Limit::kMaxConcurrent, 2, 3, 150), true);
  EXPECT_EQ(report.message,
            "[PGINSIGHTS] Traffic Control: query blocked by budget \"reports\": max_concurrent "
            "exceeded");
  EXPECT_EQ(report.detail,
            "Rule \"reports-rule\", predicted cost unknown, limit max_concurrent = 2, level 3 "
            "running with this statement (150% of the limit), mode enforce.");
  EXPECT_EQ(report.hint, "Retry when fewer statements of this budget are running.");
}

TEST(Messages, MaxConcurrentRefusedAfterQueueing) {
  Budget budget = MakeBudget("reports", Mode::kEnforce);
  budget.max_concurrent = 2;
  budget.queue_timeout_ms = 250;
  const Report report =
      FormatVerdict(Context(budget, "reports-rule", 0.25),
                    Verdict(Action::kRefuse, Limit::kMaxConcurrent, 2, 3, 150), true);
  EXPECT_EQ(report.detail,
            "Rule \"reports-rule\", predicted cost 0.25 CPU-s, limit max_concurrent = 2, level 3 "
            "running with this statement (150% of the limit), mode enforce.");
  EXPECT_EQ(report.hint,
            "No slot became free within queue_timeout_ms = 250; retry when fewer statements of "
            "this budget are running.");
}

// An enforce budget "reports" with a queue.
Budget QueueBudget(std::int64_t max_concurrent) {
  Budget budget = MakeBudget("reports", Mode::kEnforce);
  budget.max_concurrent = max_concurrent;
  budget.queue_timeout_ms = 10000;
  return budget;
}

TEST(Messages, MaxConcurrentWithAQueueAhead) {
  const Budget budget = QueueBudget(2);
  BudgetVerdict verdict = Verdict(Action::kRefuse, Limit::kMaxConcurrent, 2, 4, 200);
  verdict.queued_ahead = 2;
  const Report report = FormatVerdict(Context(budget, "reports-rule"), verdict, true);
  EXPECT_EQ(report.detail,
            "Rule \"reports-rule\", predicted cost unknown, limit max_concurrent = 2, level 4 "
            "with this statement, 2 of them queued ahead of it (200% of the limit), mode "
            "enforce.");
}

// A wait that could never end says why, and what ends it.
TEST(Messages, MaxConcurrentWaitsThatCouldNeverEnd) {
  const Budget budget = QueueBudget(1);
  BudgetVerdict verdict = Verdict(Action::kRefuse, Limit::kMaxConcurrent, 1, 2, 200);
  verdict.held_by_caller = 1;
  const Report itself = FormatVerdict(Context(budget, "reports-rule"), verdict, true);
  EXPECT_EQ(itself.detail,
            "Rule \"reports-rule\", predicted cost unknown, limit max_concurrent = 1, level 2 "
            "running with this statement (200% of the limit), mode enforce. The wait could never "
            "end: this session already holds 1 of these units (an open cursor, or an outer "
            "statement of this budget).");
  EXPECT_EQ(itself.hint,
            "Close this session's cursors of this budget, or raise max_concurrent, and retry.");

  VerdictContext context = Context(budget, "reports-rule");
  context.stuck_pid = 4242;
  const Report stuck =
      FormatVerdict(context, Verdict(Action::kRefuse, Limit::kMaxConcurrent, 1, 2, 200), true);
  EXPECT_EQ(stuck.message,
            "[PGINSIGHTS] Traffic Control: query blocked by budget \"reports\": max_concurrent "
            "exceeded");
  EXPECT_EQ(stuck.detail,
            "Rule \"reports-rule\", predicted cost unknown, limit max_concurrent = 1, level 2 "
            "running with this statement (200% of the limit), mode enforce. The wait could never "
            "end: process 4242 holds units of this budget and waits for a lock this transaction "
            "holds.");
  EXPECT_EQ(stuck.hint,
            "Retry the transaction: the holder can finish once this transaction's locks are "
            "released.");
  // Only a refusal by max_concurrent is about waiting.
  const Report warned =
      FormatVerdict(context, Verdict(Action::kWarn, Limit::kMaxConcurrent, 1, 2, 200), false);
  EXPECT_EQ(warned.detail.find("could never end"), std::string::npos);
}

TEST(Messages, MaxConcurrentZero) {
  Budget budget = MakeBudget("shed", Mode::kEnforce);
  budget.max_concurrent = 0;
  const Report report = FormatVerdict(Context(budget, "shed-all"),
                                      Verdict(Action::kRefuse, Limit::kMaxConcurrent, 0, 1,
                                              std::numeric_limits<double>::infinity()),
                                      true);
  EXPECT_EQ(report.message,
            "[PGINSIGHTS] Traffic Control: query blocked by budget \"shed\": max_concurrent "
            "exceeded");
  EXPECT_EQ(report.detail,
            "Rule \"shed-all\", predicted cost unknown, limit max_concurrent = 0, level 1 running "
            "with this statement (a limit of 0 sheds all of this budget's traffic), mode "
            "enforce.");
  EXPECT_EQ(report.hint, "");  // retrying cannot help
}

TEST(Messages, MaxConcurrentWarned) {
  Budget budget = MakeBudget("soft", Mode::kWarn);
  budget.max_concurrent = 4;
  const Report report = FormatVerdict(
      Context(budget, "rule1"), Verdict(Action::kWarn, Limit::kMaxConcurrent, 4, 5, 125), false);
  EXPECT_EQ(report.message,
            "[PGINSIGHTS] Traffic Control: query would be blocked by budget \"soft\": "
            "max_concurrent exceeded");
  EXPECT_EQ(report.detail,
            "Rule \"rule1\", predicted cost unknown, limit max_concurrent = 4, level 5 running "
            "with this statement (125% of the limit), mode warn.");
  EXPECT_EQ(report.hint, "");
}

TEST(Messages, PerQueryLimitRefusedForAnEachInstance) {
  Budget budget = MakeBudget("tenant-share", Mode::kEnforce);
  budget.per_query_limit = 2;
  VerdictContext context = Context(budget, "per-tenant", 12.5);
  context.each_key = "tenant";
  context.instance = "acme";
  const Report report = FormatVerdict(
      context, Verdict(Action::kRefuse, Limit::kPerQueryLimit, 8, 12.5, 156.25), true);
  EXPECT_EQ(report.message,
            "[PGINSIGHTS] Traffic Control: query blocked by budget \"tenant-share\": "
            "per_query_limit exceeded");
  EXPECT_EQ(
      report.detail,
      "Rule \"per-tenant\" for tenant = \"acme\", predicted cost 12.5 CPU-s, limit per_query_limit "
      "= 2 s of full-server use (8 CPU-s), level 12.5 CPU-s (156% of the limit), mode enforce.");
  EXPECT_EQ(report.hint, "");  // the same statement will be refused again
}

TEST(Messages, PerQueryLimitWarned) {
  Budget budget = MakeBudget("heavy", Mode::kWarn);
  budget.per_query_limit = 1;
  const Report report =
      FormatVerdict(Context(budget, "exports", 3),
                    Verdict(Action::kWarn, Limit::kPerQueryLimit, 2, 3, 150), false);
  EXPECT_EQ(report.message,
            "[PGINSIGHTS] Traffic Control: query would be blocked by budget \"heavy\": "
            "per_query_limit exceeded");
  EXPECT_EQ(report.detail,
            "Rule \"exports\", predicted cost 3 CPU-s, limit per_query_limit = 1 s of full-server "
            "use (2 CPU-s), level 3 CPU-s (150% of the limit), mode warn.");
  EXPECT_EQ(report.hint, "");
}

TEST(Messages, PerQueryLimitWarningThreshold) {
  Budget budget = MakeBudget("heavy", Mode::kEnforce);
  budget.per_query_limit = 2;
  budget.warning_threshold = 80;
  const Report report =
      FormatVerdict(Context(budget, "exports", 1.6),
                    Verdict(Action::kWarn, Limit::kPerQueryLimit, 2, 1.6, 80), false);
  EXPECT_EQ(report.message,
            "[PGINSIGHTS] Traffic Control: query would be blocked by budget \"heavy\": "
            "per_query_limit exceeded");
  EXPECT_EQ(
      report.detail,
      "Rule \"exports\", predicted cost 1.6 CPU-s, limit per_query_limit = 2 s of full-server use "
      "(2 CPU-s), level 1.6 CPU-s (80% of the limit), mode enforce, warning_threshold 80%.");
  EXPECT_EQ(report.hint, "");
}

TEST(Messages, PerQueryLimitZero) {
  Budget budget = MakeBudget("nothing-heavy", Mode::kEnforce);
  budget.per_query_limit = 0;
  const Report report = FormatVerdict(Context(budget, "r", 0.001),
                                      Verdict(Action::kRefuse, Limit::kPerQueryLimit, 0, 0.001,
                                              std::numeric_limits<double>::infinity()),
                                      true);
  EXPECT_EQ(
      report.detail,
      "Rule \"r\", predicted cost 0.001 CPU-s, limit per_query_limit = 0 s of full-server use (0 "
      "CPU-s), level 0.001 CPU-s (a limit of 0 sheds all of this budget's traffic), mode enforce.");
  EXPECT_EQ(report.hint, "");
}

TEST(Messages, ServerShareRefusedWithRetryHint) {
  Budget budget = MakeBudget("best-effort", Mode::kEnforce);
  budget.server_share = 25;
  budget.burst_limit = 2;
  const Report report =
      FormatVerdict(Context(budget, "export-free", 0.5),
                    Verdict(Action::kRefuse, Limit::kServerShare, 2, 2.5, 125, 2000), true);
  EXPECT_EQ(report.message,
            "[PGINSIGHTS] Traffic Control: query blocked by budget \"best-effort\": server_share "
            "exceeded");
  EXPECT_EQ(report.detail,
            "Rule \"export-free\", predicted cost 0.5 CPU-s, limit server_share = 25% with "
            "burst_limit = 2 s (a bucket of 2 CPU-s), level 2.5 CPU-s of debt with this statement "
            "(125% of the limit), mode enforce.");
  EXPECT_EQ(report.hint, "retry after 2000 ms");
}

TEST(Messages, RetryHintOfZeroAndLargeValues) {
  Budget budget = MakeBudget("b", Mode::kEnforce);
  budget.server_share = 1;
  EXPECT_EQ(FormatVerdict(Context(budget, "r", 1),
                          Verdict(Action::kRefuse, Limit::kServerShare, 1, 2, 200, 0), true)
                .hint,
            "retry after 0 ms");
  EXPECT_EQ(
      FormatVerdict(Context(budget, "r", 1),
                    Verdict(Action::kRefuse, Limit::kServerShare, 1, 2, 200, 86400000123), true)
          .hint,
      "retry after 86400000123 ms");
}

TEST(Messages, ServerShareRefusedWithoutAPredictableRetry) {
  Budget budget = MakeBudget("best-effort", Mode::kEnforce);
  budget.server_share = 25;
  const Report report =
      FormatVerdict(Context(budget, "export-free", 3),
                    Verdict(Action::kRefuse, Limit::kServerShare, 1, 3, 300, -1), true);
  EXPECT_EQ(report.detail,
            "Rule \"export-free\", predicted cost 3 CPU-s, limit server_share = 25% with "
            "burst_limit = 1 s (a bucket of 1 CPU-s), level 3 CPU-s of debt with this statement "
            "(300% of the limit), mode enforce.");
  EXPECT_EQ(report.hint, "");
}

TEST(Messages, ServerShareZero) {
  Budget budget = MakeBudget("blackhole", Mode::kEnforce);
  budget.server_share = 0;
  const Report report = FormatVerdict(Context(budget, "bots", 0.01),
                                      Verdict(Action::kRefuse, Limit::kServerShare, 0, 0.01,
                                              std::numeric_limits<double>::infinity()),
                                      true);
  EXPECT_EQ(report.message,
            "[PGINSIGHTS] Traffic Control: query blocked by budget \"blackhole\": server_share "
            "exceeded");
  EXPECT_EQ(report.detail,
            "Rule \"bots\", predicted cost 0.01 CPU-s, limit server_share = 0% (a limit of 0 sheds "
            "all of this budget's traffic), mode enforce.");
  EXPECT_EQ(report.hint, "");
}

TEST(Messages, ServerShareWarnedCarriesNoHint) {
  Budget budget = MakeBudget("observe", Mode::kWarn);
  budget.server_share = 10;
  VerdictContext context = Context(budget, "per-tenant", 0.5);
  context.each_key = "tenant";
  context.instance = "globex";
  // Even with a retry time (never set for warnings by the table): the statement runs.
  const Report report =
      FormatVerdict(context, Verdict(Action::kWarn, Limit::kServerShare, 1, 1.5, 150, 500), false);
  EXPECT_EQ(report.message,
            "[PGINSIGHTS] Traffic Control: query would be blocked by budget \"observe\": "
            "server_share exceeded");
  EXPECT_EQ(report.detail,
            "Rule \"per-tenant\" for tenant = \"globex\", predicted cost 0.5 CPU-s, limit "
            "server_share = 10% with burst_limit = 1 s (a bucket of 1 CPU-s), level 1.5 CPU-s of "
            "debt with this statement (150% of the limit), mode warn.");
  EXPECT_EQ(report.hint, "");
}

TEST(Messages, ServerShareWarningThreshold) {
  Budget budget = MakeBudget("steady", Mode::kEnforce);
  budget.server_share = 10;
  budget.warning_threshold = 75.5;
  const Report report =
      FormatVerdict(Context(budget, "r", 0.25),
                    Verdict(Action::kWarn, Limit::kServerShare, 10, 8.05, 80.5), false);
  EXPECT_EQ(report.detail,
            "Rule \"r\", predicted cost 0.25 CPU-s, limit server_share = 10% with burst_limit = 1 "
            "s (a bucket of 10 CPU-s), level 8.05 CPU-s of debt with this statement (81% of the "
            "limit), mode enforce, warning_threshold 75.5%.");
  EXPECT_EQ(report.hint, "");
}

TEST(Messages, QuotingAndPrefix) {
  const Budget budget = MakeBudget("b.1", Mode::kEnforce);
  VerdictContext context = Context(budget, "odd \"rule\" \\ name");
  context.prefix = "TC:";
  context.each_key = "tenant";
  context.instance = "a\"b";
  const Report report =
      FormatVerdict(context, Verdict(Action::kRefuse, Limit::kMaxConcurrent, 1, 2, 200), true);
  EXPECT_EQ(report.message, "TC: query blocked by budget \"b.1\": max_concurrent exceeded");
  EXPECT_EQ(report.detail,
            "Rule \"odd \\\"rule\\\" \\\\ name\" for tenant = \"a\\\"b\", predicted cost "
            "unknown, limit max_concurrent = 1, level 2 running with this statement (200% of the "
            "limit), mode enforce.");
}

// The whole path: a verdict the table produced, then its text.
class NoLock final : public TableLock {
 public:
  void LockExclusive() override {}
  void LockShared() override {}
  void Unlock() override {}
};

class StillClock final : public Clock {
 public:
  std::int64_t NowMicros() override { return now_us; }
  std::int64_t now_us = 1'000'000;
};

TEST(Messages, TableVerdictsFormatAsClientsSeeThem) {
  std::vector<std::uint64_t> words(BucketTable::RequiredBytes(16) / 8 + 1);
  const MemorySpan span{words.data(), words.size() * 8};
  BucketTable::Initialize(span, 16);
  NoLock lock;
  StillClock clock;
  BucketTable table(span, lock, clock);

  Budget budget = MakeBudget("best-effort", Mode::kEnforce);
  budget.server_share = 25;  // 2 cores: drain 0.5 CPU-s/s
  budget.burst_limit = 2;    // capacity 4 CPU-s
  AdmissionRequest request;
  request.budget = &budget;
  request.predicted_seconds = 3;
  request.server_cores = 2;
  ASSERT_TRUE(table.Admit({request}, AttemptKind::kFinal, 0).admitted);
  const AdmitResult refused = table.Admit({request}, AttemptKind::kFinal, 0);
  ASSERT_FALSE(refused.admitted);
  const Report report = FormatVerdict(Context(budget, "export-free", 3), refused.verdicts[0], true);
  EXPECT_EQ(report.message,
            "[PGINSIGHTS] Traffic Control: query blocked by budget \"best-effort\": server_share "
            "exceeded");
  EXPECT_EQ(report.detail,
            "Rule \"export-free\", predicted cost 3 CPU-s, limit server_share = 25% with "
            "burst_limit = 2 s (a bucket of 4 CPU-s), level 6 CPU-s of debt with this statement "
            "(150% of the limit), mode enforce.");
  EXPECT_EQ(report.hint, "retry after 4000 ms");  // 2 CPU-s too many at 0.5 CPU-s/s
}

}  // namespace
}  // namespace tc
