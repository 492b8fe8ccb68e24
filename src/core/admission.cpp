#include "traffic_control/admission.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

#include "traffic_control/sqlcommenter.hpp"

namespace tc {

namespace {

// What the estimator learns the statement's cost per: its role, database
// and query id (0: none).
PatternKey PatternOf(const StatementInfo& statement) {
  return PatternKey{statement.user_id, statement.database_id,
                    statement.query_id ? static_cast<std::uint64_t>(*statement.query_id) : 0};
}

}  // namespace

void BuildMetadata(const StatementInfo& statement, Metadata* metadata, const RuleSet* only_keys_of,
                   std::vector<Tag>* tags_scratch, ParsedText* parsed) {
  metadata->Clear();
  // Flags, not key names, are tested here: this runs for every statement.
  auto wanted = [only_keys_of](BuiltinKey key) {
    return only_keys_of == nullptr || only_keys_of->UsesBuiltinKey(key);
  };
  // Built-ins first, each once, in a fixed order (explain() shows this order).
  auto set = [&](BuiltinKey key, const std::optional<std::string_view>& value) {
    if (value && wanted(key)) metadata->AppendNew(kBuiltinKeys[key], *value);
  };
  set(kUsername, statement.username);
  set(kApplicationName, statement.application_name);
  set(kRemoteAddress, statement.remote_address);
  set(kDatabase, statement.database);
  set(kCommand, statement.command);
  if (statement.query_id && wanted(kQueryId)) {
    char digits[24];
    const auto written = std::to_chars(digits, digits + sizeof digits, *statement.query_id);
    metadata->AppendNew(kBuiltinKeys[kQueryId], std::string_view(digits, written.ptr - digits));
  }
  if (wanted(kMemberOf)) {
    for (std::size_t i = 0; i < statement.member_of_count; ++i) {
      if (statement.member_of[i] != nullptr) {
        metadata->AppendNew(kBuiltinKeys[kMemberOf], statement.member_of[i]);
      }
    }
  }
  if (only_keys_of != nullptr && !only_keys_of->UsesTagKeys()) return;
  std::vector<Tag> local_tags;
  std::vector<Tag>& tags = tags_scratch != nullptr ? *tags_scratch : local_tags;
  if (parsed == nullptr || tags_scratch == nullptr) {
    parsed = nullptr;
  } else if (parsed->valid && parsed->text == statement.text) {
    metadata->AddTags(tags);  // the same text: the same tags, filtered already
    return;
  } else {
    parsed->valid = false;  // until the scratch holds this text's tags
  }
  ParseSqlCommenterTags(statement.text, &tags);
  if (only_keys_of != nullptr && !tags.empty()) {
    // Built-in keys stay in the list: AddTags must still see (and ignore) a
    // tag that tries to set one.
    tags.erase(std::remove_if(tags.begin(), tags.end(),
                              [&](const Tag& tag) {
                                return !IsBuiltinKey(tag.key) && !only_keys_of->UsesKey(tag.key);
                              }),
               tags.end());
  }
  if (parsed != nullptr) {
    parsed->text.assign(statement.text.data(), statement.text.size());
    parsed->valid = true;
  }
  metadata->AddTags(tags);
}

void AdmissionController::SetRuleSet(RuleSet rules, std::vector<RuleProblem> problems) {
  FlushRuleCounts();  // the pending counts (and repeats) belong to the old rules
  FlushHistory();
  rules_ = std::move(rules);
  problems_ = std::move(problems);
  matched_metadata_valid_ = false;
  tags_text_.valid = false;  // filtered for the old rules' keys
  duration_reports_.clear();
  rule_slots_.assign(rules_.rules().size(), kUnresolved);
  pending_counts_.assign(rule_slots_.size(), 0);
  history_slots_.assign(rules_.budgets().size(), kUnresolved);
  ResolveShed();
  ResolveQuarantine();
}

void AdmissionController::SetQuarantine(std::vector<QuarantinedPattern> quarantine) {
  quarantine_ = std::move(quarantine);
  ResolveQuarantine();
}

void AdmissionController::ResolveQuarantine() {
  quarantined_.clear();
  if (quarantine_.empty()) return;
  const std::vector<Budget>& budgets = rules_.budgets();
  for (const QuarantinedPattern& entry : quarantine_) {
    for (std::size_t i = 0; i < budgets.size(); ++i) {
      if (budgets[i].name != entry.budget) continue;
      QuarantineDeadline& deadline = quarantined_[QuarantineKey{i, entry.pattern}];
      if (entry.until_us > deadline.until_us) deadline = {entry.until_us, entry.reason};
    }
  }
}

void AdmissionController::SetShed(std::vector<ShedBudget> shed) {
  shed_ = std::move(shed);
  ResolveShed();
}

void AdmissionController::ResolveShed() {
  shed_until_.clear();
  if (shed_.empty()) return;
  const std::vector<Budget>& budgets = rules_.budgets();
  std::vector<std::int64_t> until(budgets.size(), 0);
  bool any = false;
  for (const ShedBudget& entry : shed_) {
    for (std::size_t i = 0; i < budgets.size(); ++i) {
      if (budgets[i].name != entry.budget) continue;
      until[i] = std::max(until[i], entry.until_us);
      any = true;
    }
  }
  if (any) shed_until_ = std::move(until);
}

std::int64_t AdmissionController::ShedUntil(std::string_view budget,
                                            std::int64_t wall_now_us) const {
  std::int64_t until = 0;
  for (const ShedBudget& entry : shed_) {
    if (entry.budget == budget && entry.until_us > wall_now_us)
      until = std::max(until, entry.until_us);
  }
  return until;
}

void AdmissionController::AttachHistory(ViolationHistory* history) {
  FoldRepeats();
  FlushHistory();
  history_ = history;
  history_slots_.assign(rules_.budgets().size(), kUnresolved);
}

void AdmissionController::AttachRuleCounters(RuleCounterTable* counters) {
  FoldRepeats();
  FlushRuleCounts();
  rule_counters_ = counters;
  rule_slots_.assign(rules_.rules().size(), kUnresolved);
  pending_counts_.assign(rule_slots_.size(), 0);
}

bool AdmissionController::Prepare(const StatementInfo& statement, std::optional<double>* predicted,
                                  bool* has_cost_limit) {
  *predicted = std::nullopt;
  *has_cost_limit = false;
  BuildMetadata(statement, &metadata_, &rules_, &tags_, &tags_text_);
  // A backend's statements mostly come with the same metadata (same role,
  // application and database, the same tags or none): the match of the last
  // statement, and what follows from it alone, is kept and reused while the
  // metadata stay the same.
  if (!matched_metadata_valid_ || !(metadata_ == matched_metadata_)) {
    FoldRepeats();                    // they are counts of the old matches_
    matched_metadata_valid_ = false;  // until matches_ and the rest agree again
    duration_reports_.clear();        // they were the old matches'

    matches_.clear();
    match_instances_.clear();
    rules_.Match(metadata_, &matches_);
    // Predict only when a cost limit can use the prediction: the estimator's
    // table is shared memory, and most budgets only cap concurrency.
    matches_have_cost_limit_ = false;
    for (const BudgetMatch& match : matches_) {
      const Budget& budget = rules_.budgets()[match.budget_index];
      if (budget.per_query_limit || budget.server_share) matches_have_cost_limit_ = true;
    }
    matched_metadata_.AssignFrom(metadata_);
    matched_metadata_valid_ = true;
  }
  if (matches_.empty()) return false;
  *has_cost_limit = matches_have_cost_limit_;

  const PatternKey pattern = PatternOf(statement);
  if (*has_cost_limit && patterns_ != nullptr && pattern.query_id != 0) {
    *predicted = CachedPredict(pattern, statement.plan_cost, statement.wall_now_us);
  }

  // 1 + the planned workers, no more than an enforce budget's
  // max_parallel_workers allows (when they can be cut).
  std::int64_t workers = std::max(0, statement.parallel_workers);
  if (statement.workers_can_be_cut) {
    for (const BudgetMatch& match : matches_) {
      const Budget& budget = rules_.budgets()[match.budget_index];
      if (budget.mode == Mode::kEnforce && budget.max_parallel_workers.has_value()) {
        workers = std::min(workers, *budget.max_parallel_workers);
      }
    }
  }
  const std::uint32_t weight = 1 + static_cast<std::uint32_t>(workers);
  const std::uint32_t min_weight = statement.workers_can_be_cut ? 1 : 0;
  const bool instances_known = match_instances_.size() == matches_.size();
  requests_.resize(matches_.size());
  for (std::size_t i = 0; i < matches_.size(); ++i) {
    const BudgetMatch& match = matches_[i];
    AdmissionRequest& request = requests_[i];
    request.budget = &rules_.budgets()[match.budget_index];
    request.has_instance = match.has_instance;
    request.instance = match.instance;
    request.weight = weight;
    request.min_weight = min_weight;
    request.predicted_seconds = *predicted;
    request.server_cores = statement.server_cores > 0 ? statement.server_cores : 1;
    const KnownInstance known = instances_known ? match_instances_[i] : KnownInstance{};
    request.key_hash = known.key_hash;
    request.hint_slot = known.slot;
    request.hint_generation = known.generation;
    request.shed_for_ms = -1;
    if (!shed_until_.empty()) {
      const std::int64_t until = shed_until_[match.budget_index];
      if (until > statement.wall_now_us)
        request.shed_for_ms = (until - statement.wall_now_us + 999) / 1000;
    }
    request.quarantined_for_ms = -1;
    // Only while the budget still has quarantine_s: setting it to 0 (and a
    // reload) ends its quarantines.
    if (!quarantined_.empty() && pattern.query_id != 0 && request.budget->quarantine_s > 0) {
      const auto found = quarantined_.find(QuarantineKey{match.budget_index, pattern});
      if (found != quarantined_.end() && found->second.until_us > statement.wall_now_us) {
        request.quarantined_for_ms = (found->second.until_us - statement.wall_now_us + 999) / 1000;
        request.quarantined_by = found->second.reason;
      }
    }
  }
  if (!instances_known && table_ != nullptr) {
    // Once per new match (and table): the table's hash of each instance.
    for (AdmissionRequest& request : requests_) {
      request.key_hash = table_->InstanceHash(request);
      match_instances_.push_back(KnownInstance{request.key_hash});
    }
  }
  return true;
}

Report AdmissionController::ReportFor(std::size_t index, const BudgetVerdict& verdict,
                                      bool refusing, std::string_view prefix,
                                      const std::optional<double>& predicted,
                                      std::int64_t stuck_pid) const {
  const BudgetMatch& match = matches_[index];
  const Rule& rule = rules_.rules()[match.rule_index];
  VerdictContext context;
  context.prefix = prefix;
  context.budget = requests_[index].budget;
  context.rule = rule.name;
  if (match.has_instance && rule.each) context.each_key = *rule.each;
  context.instance = match.instance;
  context.predicted_seconds = predicted;
  context.stuck_pid = stuck_pid;
  return FormatVerdict(context, verdict, refusing);
}

void AdmissionController::CountMatches(std::uint32_t statements) {
  if (rule_counters_ == nullptr) return;
  for (const BudgetMatch& match : matches_) {
    if (match.rule_index >= rule_slots_.size()) continue;
    std::int32_t& slot = rule_slots_[match.rule_index];
    if (slot == kUnresolved) {
      // Once per rule and backend: a lock-free lookup (or insertion) in the
      // shared table; after that one atomic add per statement.
      const Rule& rule = rules_.rules()[match.rule_index];
      slot = rule_counters_->Resolve(rule.name, rule.budget);
    }
    if (pending_counts_.size() != rule_slots_.size()) pending_counts_.assign(rule_slots_.size(), 0);
    if (pending_counts_[match.rule_index] == 0) pending_rules_.push_back(match.rule_index);
    pending_counts_[match.rule_index] += statements;
    pending_total_ += statements;
  }
  if (pending_total_ >= kRuleCountBatch) FlushRuleCounts();
}

void AdmissionController::CountPassingRepeat(std::int64_t wall_now_us) {
  const std::int64_t minute = wall_now_us / 60'000'000;
  if (repeats_ > 0 && minute != repeats_minute_) FoldRepeats();  // each in its own minute
  repeats_minute_ = minute;
  repeats_wall_us_ = wall_now_us;
  if (++repeats_ >= kRuleCountBatch) FoldRepeats();
}

void AdmissionController::FoldRepeats() {
  if (repeats_ == 0) return;
  const std::uint32_t statements = repeats_;
  repeats_ = 0;  // first: the flushes below fold again, finding nothing
  CountMatches(statements);
  RecordAllPassed(statements, repeats_wall_us_);
}

void AdmissionController::FlushRuleCounts() {
  FoldRepeats();
  if (pending_total_ == 0) return;
  pending_total_ = 0;
  for (const std::size_t rule : pending_rules_) {
    if (rule >= pending_counts_.size() || pending_counts_[rule] == 0) continue;
    if (rule_counters_ != nullptr && rule < rule_slots_.size()) {
      rule_counters_->Add(rule_slots_[rule], pending_counts_[rule]);  // kNoSlot: not counted
    }
    pending_counts_[rule] = 0;
  }
  pending_rules_.clear();
}

namespace {

// A budget's outcome for one statement; a larger value wins when several of
// its instances apply.
enum BudgetOutcome : std::uint8_t {
  kOutcomeNone = 0,
  kOutcomePass,
  kOutcomeWarn,
  kOutcomeRefusedMaxConcurrent,
  kOutcomeRefusedPerQueryLimit,
  kOutcomeRefusedServerShare,
  kOutcomeRefusedShed,
};

BudgetOutcome OutcomeOf(const BudgetVerdict& verdict) {
  switch (verdict.action) {
    case BudgetVerdict::Action::kPass:
      return kOutcomePass;
    case BudgetVerdict::Action::kWarn:
      return kOutcomeWarn;
    case BudgetVerdict::Action::kRefuse:
      break;
  }
  switch (verdict.limit) {
    case Limit::kPerQueryLimit:
      return kOutcomeRefusedPerQueryLimit;
    case Limit::kServerShare:
      return kOutcomeRefusedServerShare;
    case Limit::kShed:
    case Limit::kQuarantined:
      return kOutcomeRefusedShed;
    case Limit::kMaxConcurrent:
    case Limit::kNone:
      break;
  }
  return kOutcomeRefusedMaxConcurrent;
}

}  // namespace

std::int32_t AdmissionController::HistorySlot(std::size_t budget) {
  const std::size_t budget_count = rules_.budgets().size();
  if (history_slots_.size() != budget_count) history_slots_.assign(budget_count, kUnresolved);
  if (budget >= budget_count) return ViolationHistory::kNoSlot;
  std::int32_t& slot = history_slots_[budget];
  if (slot == kUnresolved) slot = history_->Resolve(rules_.budgets()[budget].name);
  return slot;
}

void AdmissionController::RecordHistory(const AdmitResult& result, std::int64_t wall_now_us) {
  if (history_ == nullptr) return;
  const std::size_t budget_count = rules_.budgets().size();
  const std::size_t n = std::min(matches_.size(), result.verdicts.size());
  if (budget_outcomes_.size() != budget_count) budget_outcomes_.assign(budget_count, kOutcomeNone);
  for (std::size_t i = 0; i < n; ++i) {
    std::uint8_t& outcome = budget_outcomes_[matches_[i].budget_index];
    outcome = std::max<std::uint8_t>(outcome, OutcomeOf(result.verdicts[i]));
  }
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t budget = matches_[i].budget_index;
    const std::uint8_t outcome = budget_outcomes_[budget];
    if (outcome == kOutcomeNone) continue;  // recorded for an earlier instance
    budget_outcomes_[budget] = kOutcomeNone;
    const bool refused = outcome >= kOutcomeRefusedMaxConcurrent;
    if (!refused && !result.admitted) continue;  // another budget refused it: it did not run
    const std::int32_t slot = HistorySlot(budget);
    if (slot == ViolationHistory::kNoSlot) continue;  // the history's budget table is full
    switch (outcome) {
      case kOutcomeRefusedMaxConcurrent:
        history_->Record(slot, ViolationHistory::kBlockedMaxConcurrent, wall_now_us);
        break;
      case kOutcomeRefusedPerQueryLimit:
        history_->Record(slot, ViolationHistory::kBlockedPerQueryLimit, wall_now_us);
        break;
      case kOutcomeRefusedServerShare:
        history_->Record(slot, ViolationHistory::kBlockedServerShare, wall_now_us);
        break;
      case kOutcomeRefusedShed:
        break;  // shed or quarantined: the history counts what the limits did
      case kOutcomeWarn:
        history_->Record(slot, ViolationHistory::kWarned, wall_now_us);
        history_->Record(slot, ViolationHistory::kAdmitted, wall_now_us);
        break;
      default:
        CountAdmittedInHistory(budget, slot, wall_now_us);
        break;
    }
  }
}

void AdmissionController::RecordAllPassed(std::uint32_t statements, std::int64_t wall_now_us) {
  if (history_ == nullptr) return;
  // Each budget once (matches_ are ordered by budget), into the batch.
  for (std::size_t i = 0; i < matches_.size(); ++i) {
    const std::size_t budget = matches_[i].budget_index;
    if (i > 0 && matches_[i - 1].budget_index == budget) continue;
    const std::int32_t slot = HistorySlot(budget);
    if (slot != ViolationHistory::kNoSlot) {
      CountAdmittedInHistory(budget, slot, wall_now_us, statements);
    }
  }
}

// Plain admissions are most statements: they are added to the shared ring in
// per-backend batches (one atomic add per batch), and flushed when the minute
// changes, before the history is read and at exit. Refusals and warnings are
// rare and recorded at once.
void AdmissionController::CountAdmittedInHistory(std::size_t budget, std::int32_t slot,
                                                 std::int64_t wall_now_us,
                                                 std::uint32_t statements) {
  const std::int64_t minute = wall_now_us / 60'000'000;
  if (minute != pending_history_minute_) FlushHistory();
  pending_history_minute_ = minute;
  pending_history_wall_us_ = wall_now_us;
  if (pending_admitted_.size() <= budget) pending_admitted_.resize(rules_.budgets().size(), 0);
  if (pending_admitted_slots_.size() != pending_admitted_.size()) {
    pending_admitted_slots_.resize(pending_admitted_.size(), ViolationHistory::kNoSlot);
  }
  if (pending_admitted_[budget] == 0) pending_budgets_.push_back(budget);
  pending_admitted_[budget] += statements;
  pending_admitted_slots_[budget] = slot;
  pending_admitted_total_ += statements;
  if (pending_admitted_total_ >= kHistoryBatch) FlushHistory();
}

void AdmissionController::FlushHistory() {
  FoldRepeats();
  if (pending_admitted_total_ == 0) return;
  pending_admitted_total_ = 0;
  for (const std::size_t budget : pending_budgets_) {
    if (budget >= pending_admitted_.size() || pending_admitted_[budget] == 0) continue;
    if (history_ != nullptr) {
      history_->Record(pending_admitted_slots_[budget], ViolationHistory::kAdmitted,
                       pending_history_wall_us_, pending_admitted_[budget]);
    }
    pending_admitted_[budget] = 0;
  }
  pending_budgets_.clear();
}

void AdmissionController::DropPendingRuleCounts() {
  FoldRepeats();  // their history counts stay pending
  for (const std::size_t rule : pending_rules_) {
    if (rule < pending_counts_.size()) pending_counts_[rule] = 0;
  }
  pending_rules_.clear();
  pending_total_ = 0;
}

int AdmissionController::max_cpu_priority() const {
  int priority = 0;
  for (const Budget& budget : rules_.budgets()) {
    if (budget.mode == Mode::kEnforce) priority = std::max(priority, budget.cpu_priority);
  }
  return priority;
}

Decision AdmissionController::Admit(const StatementInfo& statement, AttemptKind attempt) {
  Decision decision;
  Admit(statement, attempt, &decision);
  return decision;
}

void AdmissionController::Admit(const StatementInfo& statement, AttemptKind attempt,
                                Decision* decision) {
  Admit(statement, attempt, decision, 0);
}

bool AdmissionController::AdmitIfWaitNeverEnds(const StatementInfo& statement,
                                               const std::int32_t* stuck, std::size_t count,
                                               std::int64_t stuck_pid, Decision* decision) {
  if (table_ == nullptr || !table_->WaitCanNeverEnd(stuck, count)) return false;
  Admit(statement, AttemptKind::kFinal, decision, stuck_pid);
  return true;
}

void AdmissionController::Admit(const StatementInfo& statement, AttemptKind attempt,
                                Decision* decision_out, std::int64_t stuck_pid) {
  Decision& decision = *decision_out;
  decision.outcome = Decision::Outcome::kAdmitted;
  decision.queue_timeout_ms = 0;
  decision.notices.clear();
  if (!decision.refusal.message.empty()) decision.refusal = Report{};
  decision.holding = 0;
  decision.measure_cpu = false;
  decision.predicted_seconds.reset();
  decision.cpu_priority = 0;
  decision.cancel_after_ms = decision.warn_after_ms = 0;
  decision.cancel_quarantine_s = 0;
  decision.quarantine.clear();
  decision.parallel_workers = std::max(0, statement.parallel_workers);
  if (rules_.empty() || table_ == nullptr) return;

  std::optional<double> predicted;
  bool has_cost_limit = false;
  if (!Prepare(statement, &predicted, &has_cost_limit)) return;
  decision.predicted_seconds = predicted;
  const PatternKey pattern = PatternOf(statement);

  AdmitResult& result = admit_result_;
  table_->Admit(requests_, attempt, statement.wall_now_us, &result);
  if (!result.admitted && result.may_wait && attempt != AttemptKind::kFinal) {
    decision.outcome = Decision::Outcome::kMustWait;
    decision.queue_timeout_ms = result.queue_timeout_ms;
    return;
  }
  if (result.admitted) {
    // Hints for the next statement with the same match: every instance
    // tracked, one holding per request in order.
    const bool all_held = result.untracked == 0 && result.holdings.size() == requests_.size();
    for (std::size_t i = 0; i < match_instances_.size(); ++i) {
      match_instances_[i].slot = all_held ? result.holdings[i].slot : AdmissionRequest::kNoHint;
      match_instances_[i].generation = all_held ? result.holdings[i].generation : 0;
    }
    // Every request of the statement took the same units: 1 + its workers.
    if (!result.holdings.empty()) {
      decision.parallel_workers =
          std::min(decision.parallel_workers, static_cast<int>(result.holdings[0].weight) - 1);
    }
    for (std::size_t i = 0; i < matches_.size(); ++i) {
      const Budget& budget = rules_.budgets()[matches_[i].budget_index];
      if (budget.mode == Mode::kEnforce) {
        decision.cpu_priority = std::max(decision.cpu_priority, budget.cpu_priority);
      }
      if (budget.max_duration_ms) NoteMaxDuration(i, statement.message_prefix, &decision);
    }
    const bool learn = has_cost_limit && patterns_ != nullptr && pattern.query_id != 0;
    try {
      decision.holding = Hold(result, learn, pattern, statement.plan_cost, predicted);
      // Measured for budget_status.cpu_seconds too (the caller samples cheap
      // statements whose prediction is known).
      decision.measure_cpu = has_cost_limit || decision.holding != 0;
    } catch (...) {
      // Not recorded, so nothing could ever give the slots back: now.
      for (const Holding& holding : result.holdings) {
        if (holding.slot != Holding::kUntrackedSlot) table_->Release(holding);
      }
      throw;
    }
  }
  try {
    // Final: admitted or refused, so the statement counts as matched once.
    bool all_passed = result.admitted;
    for (std::size_t i = 0; i < result.verdicts.size() && all_passed; ++i) {
      all_passed = result.verdicts[i].action == BudgetVerdict::Action::kPass;
    }
    if (all_passed) {
      CountPassingRepeat(statement.wall_now_us);
      return;  // nothing to report
    }
    FoldRepeats();  // the history in the order the statements came
    CountMatches();
    RecordHistory(result, statement.wall_now_us);
    // A wait that could never end is refused by the budget it waited for;
    // else the first refusing budget (in budget order) is the error. The
    // others are not reported, as the statement is refused anyway.
    const std::size_t waited = static_cast<std::size_t>(result.waited_request);
    const bool stuck = stuck_pid != 0 && result.waited_request >= 0 &&
                       waited < result.verdicts.size() &&
                       result.verdicts[waited].action == BudgetVerdict::Action::kRefuse;
    if (stuck) {
      decision.outcome = Decision::Outcome::kRefused;
      decision.refusal = ReportFor(waited, result.verdicts[waited], true, statement.message_prefix,
                                   predicted, stuck_pid);
    }
    for (std::size_t i = 0; i < matches_.size(); ++i) {
      const BudgetVerdict& verdict = result.verdicts[i];
      if (verdict.action == BudgetVerdict::Action::kPass) continue;
      const bool refusing = verdict.action == BudgetVerdict::Action::kRefuse;
      if (refusing && decision.outcome == Decision::Outcome::kRefused) continue;
      Report report = ReportFor(i, verdict, refusing, statement.message_prefix, predicted);
      if (!refusing) {
        decision.notices.push_back(std::move(report));
      } else {
        decision.outcome = Decision::Outcome::kRefused;
        decision.refusal = std::move(report);
      }
    }
    if (pattern.query_id != 0) {
      for (std::size_t i = 0; i < matches_.size(); ++i) {
        const Budget& budget = *requests_[i].budget;
        const BudgetVerdict& verdict = result.verdicts[i];
        if (verdict.action == BudgetVerdict::Action::kRefuse &&
            verdict.limit == Limit::kPerQueryLimit && budget.quarantine_s > 0) {
          decision.quarantine.push_back({budget.name, budget.quarantine_s});
        }
      }
    }
  } catch (...) {
    // The caller never learns the holding of a decision that failed.
    if (decision.holding != 0) Release(decision.holding);
    decision.holding = 0;
    throw;
  }
}

void AdmissionController::NoteMaxDuration(std::size_t index, std::string_view prefix,
                                          Decision* decision) {
  const BudgetMatch& match = matches_[index];
  const Budget& budget = rules_.budgets()[match.budget_index];
  const bool cancel = budget.mode == Mode::kEnforce;
  std::int64_t& after = cancel ? decision->cancel_after_ms : decision->warn_after_ms;
  if (after != 0 && after <= *budget.max_duration_ms) return;  // an earlier one applies
  after = *budget.max_duration_ms;
  if (cancel) decision->cancel_quarantine_s = budget.quarantine_s;
  // Formatted once per match (a backend's statements mostly share theirs),
  // then copied into the decision's strings, whose capacity is reused.
  if (duration_reports_.size() != matches_.size() || duration_prefix_ != prefix) {
    duration_reports_.assign(matches_.size(), Report{});
    duration_report_versions_.assign(matches_.size(), 0);
    duration_prefix_.assign(prefix.data(), prefix.size());
  }
  Report& report = duration_reports_[index];
  if (report.message.empty()) {
    duration_report_versions_[index] = next_duration_version_++;
    const Rule& rule = rules_.rules()[match.rule_index];
    VerdictContext context;
    context.prefix = prefix;
    context.budget = &budget;
    context.rule = rule.name;
    if (match.has_instance && rule.each) context.each_key = *rule.each;
    context.instance = match.instance;
    report = FormatDurationExceeded(context, cancel);
  }
  Report& out = cancel ? decision->duration_cancel : decision->duration_warning;
  std::uint64_t& version =
      cancel ? decision->duration_cancel_version : decision->duration_warning_version;
  if (version == duration_report_versions_[index]) return;  // the decision holds it already
  version = duration_report_versions_[index];
  out.message = report.message;
  out.detail = report.detail;
  out.hint = report.hint;
  out.budget = report.budget;
  out.rule = report.rule;
  out.limit = report.limit;
}

std::int64_t AdmissionController::Hold(const AdmitResult& result, bool learn,
                                       const PatternKey& pattern, double plan_cost,
                                       const std::optional<double>& predicted) {
  bool holds = learn;
  for (const Holding& holding : result.holdings) holds |= holding.slot != Holding::kUntrackedSlot;
  if (!holds) return 0;
  absl::InlinedVector<Holding, 2> slots;  // built first: a failure records nothing
  for (const Holding& holding : result.holdings) {
    if (holding.slot != Holding::kUntrackedSlot) slots.push_back(holding);
  }
  Held& held = holdings_.emplace_back();
  held.holdings = std::move(slots);
  held.pattern = pattern;
  held.plan_cost = plan_cost;
  held.predicted_seconds = predicted && std::isfinite(*predicted) ? *predicted : 0;
  held.learn = learn;
  held.token = next_holding_++;
  return held.token;
}

std::optional<double> AdmissionController::CachedPredict(const PatternKey& pattern,
                                                         double plan_cost, std::int64_t now) {
  const PredictionKey key{pattern, plan_cost};
  // The last entry used is asked first: a backend mostly repeats a statement.
  CachedPrediction* entry = recent_prediction_;
  if (entry == nullptr || !(recent_prediction_key_ == key)) {
    const auto it = predictions_.find(key);
    entry = it != predictions_.end() ? &it->second : nullptr;
  }
  if (entry != nullptr && entry->seconds < kCachedPredictionMaxSeconds &&
      entry->uses < kPredictionReuses && now - entry->fetched_us < kPredictionMaxAgeUs &&
      now >= entry->fetched_us) {
    ++entry->uses;
    recent_prediction_ = entry;
    recent_prediction_key_ = key;
    return entry->seconds;
  }
  recent_prediction_ = nullptr;  // the map may change below, moving its entries
  const std::optional<double> predicted = patterns_->Predict(pattern, plan_cost);
  if (!predicted) {
    if (entry != nullptr) predictions_.erase(key);
    return predicted;
  }
  if (entry == nullptr) {
    if (predictions_.size() >= kPredictionCacheSize) predictions_.clear();
    entry = &predictions_[key];
  }
  *entry = CachedPrediction{*predicted, now, 1};
  recent_prediction_ = entry;
  recent_prediction_key_ = key;
  return predicted;
}

Explanation AdmissionController::Explain(const StatementInfo& statement) {
  if (table_ == nullptr) throw std::logic_error("explain without a bucket table");
  Explanation explanation;
  std::optional<double> predicted;
  bool has_cost_limit = false;
  const bool applies = Prepare(statement, &predicted, &has_cost_limit);
  BuildMetadata(statement, &explanation.metadata);  // every key, for the DBA to read
  if (!applies) return explanation;
  explanation.predicted_seconds = predicted;

  const std::vector<BudgetVerdict> verdicts = table_->Evaluate(requests_);
  explanation.budgets.reserve(matches_.size());
  for (std::size_t i = 0; i < matches_.size(); ++i) {
    const BudgetMatch& match = matches_[i];
    BudgetExplanation& entry = explanation.budgets.emplace_back();
    entry.budget = requests_[i].budget;
    entry.rule = &rules_.rules()[match.rule_index];
    entry.has_instance = match.has_instance;
    entry.instance = match.instance;
    entry.verdict = verdicts[i];
    if (entry.verdict.action != BudgetVerdict::Action::kPass) {
      entry.report =
          ReportFor(i, entry.verdict, entry.verdict.action == BudgetVerdict::Action::kRefuse,
                    statement.message_prefix, predicted);
    }
  }
  return explanation;
}

void AdmissionController::Release(std::int64_t holding, std::optional<double> cpu_seconds,
                                  bool completed, bool canceled) {
  std::size_t index = holdings_.size();
  while (index > 0 && holdings_[index - 1].token != holding) --index;
  if (index == 0) return;
  // Forget it before releasing so that even an exception cannot make a second
  // release of the same holding possible.
  Held held = std::move(holdings_[index - 1]);
  if (index != holdings_.size()) holdings_[index - 1] = std::move(holdings_.back());
  holdings_.pop_back();
  if (table_ != nullptr) {
    for (const Holding& h : held.holdings) {
      table_->Release(h, cpu_seconds, canceled, held.predicted_seconds);
    }
  }
  if (completed && held.learn && cpu_seconds && patterns_ != nullptr) {
    patterns_->Record(held.pattern, held.plan_cost, *cpu_seconds);
  }
}

void AdmissionController::ReleaseAll() {
  while (!holdings_.empty()) Release(holdings_.back().token);
}

}  // namespace tc
