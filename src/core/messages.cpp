#include "traffic_control/messages.hpp"

#include <cmath>
#include <cstdio>
#include <string>

namespace tc {

std::string FormatNumber(double value) {
  if (std::isinf(value)) return value > 0 ? "infinity" : "-infinity";
  if (std::isnan(value)) return "NaN";
  char buffer[64];
  // %.6g keeps messages short while exact for the integers and simple
  // fractions DBAs write in configs.
  std::snprintf(buffer, sizeof buffer, "%.6g", value);
  return buffer;
}

namespace {

std::string Quote(std::string_view text) {
  std::string quoted = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') quoted += '\\';
    quoted += c;
  }
  quoted += '"';
  return quoted;
}

std::string PercentOfLimit(const BudgetVerdict& verdict) {
  return " (" + FormatNumber(std::round(verdict.level_percent)) + "% of the limit)";
}

// "another N s": milliseconds left, rounded up to a tenth of a second.
std::string ForAnother(std::int64_t ms) {
  return "for another " + FormatNumber(std::ceil(static_cast<double>(ms) / 100.0) / 10.0) + " s";
}

// "limit ..., level ..." in the units a DBA configured and in CPU-seconds.
std::string LimitAndLevel(const Budget& budget, const BudgetVerdict& verdict) {
  constexpr const char* kShedsAll = " (a limit of 0 sheds all of this budget's traffic)";
  switch (verdict.limit) {
    case Limit::kShed:
      return "shed by traffic_control.shed() " + ForAnother(verdict.retry_after_ms);
    case Limit::kQuarantined:
      return "pattern quarantined " + ForAnother(verdict.retry_after_ms) +
             " (quarantine_s = " + FormatNumber(budget.quarantine_s) + ") after " +
             (verdict.quarantined_by == Limit::kPerQueryLimit
                  ? "a statement of it was refused by per_query_limit"
                  : "a statement of it was canceled by max_duration_ms");
    case Limit::kPerQueryLimit: {
      std::string text =
          "limit per_query_limit = " + FormatNumber(budget.per_query_limit.value_or(0)) +
          " s of full-server use (" + FormatNumber(verdict.limit_value) + " CPU-s), level " +
          FormatNumber(verdict.level) + " CPU-s";
      return text + (verdict.limit_value == 0 ? kShedsAll : PercentOfLimit(verdict));
    }
    case Limit::kServerShare: {
      const double share = budget.server_share.value_or(0);
      if (share == 0 || verdict.limit_value == 0) {
        return "limit server_share = 0%" + std::string(kShedsAll);
      }
      return "limit server_share = " + FormatNumber(share) +
             "% with burst_limit = " + FormatNumber(budget.burst_limit) + " s (a bucket of " +
             FormatNumber(verdict.limit_value) + " CPU-s), level " + FormatNumber(verdict.level) +
             " CPU-s of debt with this statement" + PercentOfLimit(verdict);
    }
    case Limit::kMaxConcurrent:
    default: {
      std::string text = "limit " + std::string(LimitName(verdict.limit)) + " = " +
                         FormatNumber(verdict.limit_value) + ", level " +
                         FormatNumber(verdict.level);
      if (verdict.queued_ahead > 0) {
        text += " with this statement, " + FormatNumber(verdict.queued_ahead) +
                " of them queued ahead of it";
      } else {
        text += " running with this statement";
      }
      return text + (verdict.limit_value == 0 ? kShedsAll : PercentOfLimit(verdict));
    }
  }
}

}  // namespace

Report FormatDurationExceeded(const VerdictContext& context, bool cancel) {
  Report report;
  report.budget = context.budget->name;
  report.rule = std::string(context.rule);
  report.limit = "max_duration_ms";
  report.message = std::string(context.prefix) +
                   (cancel ? " query canceled by budget " : " query would be canceled by budget ") +
                   Quote(context.budget->name) + ": max_duration_ms exceeded";
  report.detail = "Rule " + Quote(context.rule);
  if (!context.each_key.empty()) {
    report.detail += " for " + std::string(context.each_key) + " = " + Quote(context.instance);
  }
  report.detail +=
      ", limit max_duration_ms = " + std::to_string(context.budget->max_duration_ms.value_or(0)) +
      ", mode " + std::string(ModeName(context.budget->mode)) + ".";
  return report;
}

Report FormatVerdict(const VerdictContext& context, const BudgetVerdict& verdict, bool refused) {
  Report report;
  const std::string limit_name(LimitName(verdict.limit));
  report.budget = context.budget->name;
  report.rule = std::string(context.rule);
  report.limit = limit_name;
  report.message =
      std::string(context.prefix) +
      (refused ? " query blocked by budget " : " query would be blocked by budget ") +
      Quote(context.budget->name) + ": " + limit_name +
      (verdict.limit == Limit::kShed || verdict.limit == Limit::kQuarantined ? "" : " exceeded");

  report.detail = "Rule " + Quote(context.rule);
  if (!context.each_key.empty()) {
    report.detail += " for " + std::string(context.each_key) + " = " + Quote(context.instance);
  }
  report.detail += ", predicted cost ";
  report.detail += context.predicted_seconds ? FormatNumber(*context.predicted_seconds) + " CPU-s"
                                             : std::string("unknown");
  report.detail += ", " + LimitAndLevel(*context.budget, verdict) + ", mode " +
                   std::string(ModeName(context.budget->mode));
  if (context.budget->warning_threshold && !refused && context.budget->mode == Mode::kEnforce) {
    report.detail +=
        ", warning_threshold " + FormatNumber(*context.budget->warning_threshold) + "%";
  }
  report.detail += ".";
  const bool concurrency = refused && verdict.limit == Limit::kMaxConcurrent;
  if (concurrency && verdict.held_by_caller > 0) {
    report.detail += " The wait could never end: this session already holds " +
                     std::to_string(verdict.held_by_caller) +
                     " of these units (an open cursor, or an outer statement of this budget).";
    report.hint =
        "Close this session's cursors of this budget, or raise max_concurrent, and retry.";
    return report;
  }
  if (concurrency && context.stuck_pid != 0) {
    report.detail += " The wait could never end: process " + std::to_string(context.stuck_pid) +
                     " holds units of this budget and waits for a lock this transaction holds.";
    report.hint =
        "Retry the transaction: the holder can finish once this transaction's locks "
        "are released.";
    return report;
  }

  if (refused && verdict.retry_after_ms >= 0) {
    // The time until the bucket has drained enough for this statement, if
    // nothing else is charged meanwhile (clients add jitter: see docs).
    report.hint = "retry after " + std::to_string(verdict.retry_after_ms) + " ms";
  } else if (refused && verdict.limit == Limit::kMaxConcurrent && verdict.limit_value > 0) {
    if (context.budget->queue_timeout_ms > 0) {
      report.hint = "No slot became free within queue_timeout_ms = " +
                    std::to_string(context.budget->queue_timeout_ms) +
                    "; retry when fewer statements of this budget are running.";
    } else {
      report.hint = "Retry when fewer statements of this budget are running.";
    }
  }
  return report;
}

}  // namespace tc
