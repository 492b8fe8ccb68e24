#include "traffic_control/admission.hpp"

#include <algorithm>
#include <string>

#include "traffic_control/sqlcommenter.hpp"

namespace tc {

void BuildMetadata(const StatementInfo& statement, Metadata* metadata) {
  metadata->Clear();
  auto set = [metadata](std::string_view key, const std::optional<std::string_view>& value) {
    if (value) metadata->SetBuiltin(key, *value);
  };
  set("username", statement.username);
  set("application_name", statement.application_name);
  set("remote_address", statement.remote_address);
  set("database", statement.database);
  set("command", statement.command);
  if (statement.query_id) metadata->SetBuiltin("query_id", std::to_string(*statement.query_id));
  metadata->AddTags(ParseSqlCommenterTags(statement.text));
}

Decision AdmissionController::Admit(const StatementInfo& statement, AttemptKind attempt) {
  Decision decision;
  if (rules_.empty() || table_ == nullptr) return decision;

  BuildMetadata(statement, &metadata_);
  matches_.clear();
  rules_.Match(metadata_, &matches_);
  if (matches_.empty()) return decision;

  // Predict only when a cost limit can use the prediction: the estimator's
  // table is shared memory, and most budgets only cap concurrency.
  bool has_cost_limit = false;
  for (const BudgetMatch& match : matches_) {
    const Budget& budget = rules_.budgets()[match.budget_index];
    if (budget.per_query_limit || budget.server_share) has_cost_limit = true;
  }
  const std::uint64_t query_id =
      statement.query_id ? static_cast<std::uint64_t>(*statement.query_id) : 0;
  std::optional<double> predicted;
  if (has_cost_limit && patterns_ != nullptr && query_id != 0) {
    predicted = patterns_->Predict(query_id, statement.plan_cost);
  }
  decision.predicted_seconds = predicted;

  const std::uint32_t weight =
      1 + static_cast<std::uint32_t>(std::max(0, statement.parallel_workers));
  requests_.clear();
  for (const BudgetMatch& match : matches_) {
    AdmissionRequest request;
    request.budget = &rules_.budgets()[match.budget_index];
    request.has_instance = match.has_instance;
    request.instance = match.instance;
    request.weight = weight;
    request.predicted_seconds = predicted;
    request.server_cores = statement.server_cores > 0 ? statement.server_cores : 1;
    requests_.push_back(request);
  }

  AdmitResult result = table_->Admit(requests_, attempt, statement.wall_now_us);
  if (!result.admitted && result.may_wait && attempt != AttemptKind::kFinal) {
    decision.outcome = Decision::Outcome::kMustWait;
    decision.queue_timeout_ms = result.queue_timeout_ms;
    return decision;
  }

  for (std::size_t i = 0; i < matches_.size(); ++i) {
    const BudgetVerdict& verdict = result.verdicts[i];
    if (verdict.action == BudgetVerdict::Action::kPass) continue;
    const BudgetMatch& match = matches_[i];
    const Rule& rule = rules_.rules()[match.rule_index];
    VerdictContext context;
    context.prefix = statement.message_prefix;
    context.budget = requests_[i].budget;
    context.rule = rule.name;
    if (match.has_instance && rule.each) context.each_key = *rule.each;
    context.instance = match.instance;
    context.predicted_seconds = predicted;
    const bool refusing = verdict.action == BudgetVerdict::Action::kRefuse;
    Report report = FormatVerdict(context, verdict, refusing);
    if (refusing) {
      // The first refusing budget (in budget order) is the error; the others
      // are not reported, as the statement is refused anyway.
      if (decision.outcome != Decision::Outcome::kRefused) {
        decision.outcome = Decision::Outcome::kRefused;
        decision.refusal = std::move(report);
      }
    } else {
      decision.notices.push_back(std::move(report));
    }
  }

  if (result.admitted) {
    decision.outcome = Decision::Outcome::kAdmitted;
    Held held;
    for (const Holding& holding : result.holdings) {
      if (holding.slot != Holding::kUntrackedSlot) held.holdings.push_back(holding);
    }
    held.query_id = query_id;
    held.plan_cost = statement.plan_cost;
    held.learn = has_cost_limit && patterns_ != nullptr && query_id != 0;
    decision.measure_cpu = has_cost_limit;
    if (!held.holdings.empty() || held.learn) {
      decision.holding = next_holding_++;
      holdings_.emplace(decision.holding, std::move(held));
    }
  }
  return decision;
}

bool AdmissionController::Release(std::int64_t holding, std::optional<double> cpu_seconds,
                                  bool completed) {
  auto it = holdings_.find(holding);
  if (it == holdings_.end()) return false;
  // Erase before releasing so that even an exception cannot make a second
  // release of the same holding possible.
  Held held = std::move(it->second);
  holdings_.erase(it);
  bool wake = false;
  if (table_ != nullptr) {
    for (const Holding& h : held.holdings) wake |= table_->Release(h, cpu_seconds);
  }
  if (completed && held.learn && cpu_seconds && patterns_ != nullptr) {
    patterns_->Record(held.query_id, held.plan_cost, *cpu_seconds);
  }
  return wake;
}

bool AdmissionController::ReleaseAll() {
  bool wake = false;
  while (!holdings_.empty()) wake |= Release(holdings_.begin()->first);
  return wake;
}

}  // namespace tc
