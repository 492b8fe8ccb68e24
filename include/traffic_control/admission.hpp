// The admission decision for one statement: metadata -> rules -> budgets ->
// verdicts -> what the client sees; and the backend's record of what it holds.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "traffic_control/bucket_table.hpp"
#include "traffic_control/core_header_guard.hpp"
#include "traffic_control/estimator.hpp"
#include "traffic_control/history.hpp"
#include "traffic_control/messages.hpp"
#include "traffic_control/metadata.hpp"
#include "traffic_control/rule_counters.hpp"
#include "traffic_control/ruleset.hpp"

namespace tc {

struct StatementInfo {
  std::string_view text;  // the statement's own text
  std::optional<std::string_view> username, application_name, remote_address, database, command;
  std::optional<std::int64_t> query_id;
  // member_of: those of the roles the rules name under member_of
  // (RuleSet::member_of_roles()) that the current role is a member of; the
  // server resolves them, the core only compares names. Not owned.
  const char* const* member_of = nullptr;
  std::size_t member_of_count = 0;
  // The role (current user) and database OIDs: with the query id, the key
  // the estimator learns and predicts per (as pg_stat_statements).
  std::uint32_t user_id = 0;
  std::uint32_t database_id = 0;
  int parallel_workers = 0;
  // Its workers can be cut at admission (the executor has not started yet):
  // a parallel plan that does not fit an enforce budget's max_concurrent
  // then runs with the workers that fit (Decision::parallel_workers).
  bool workers_can_be_cut = false;
  double plan_cost = -1;    // < 0: none
  double server_cores = 1;  // CPU-seconds per second of a full server
  std::int64_t wall_now_us = 0;
  std::string_view message_prefix;
};

struct Decision {
  enum class Outcome { kAdmitted, kRefused, kMustWait };
  Outcome outcome = Outcome::kAdmitted;
  std::int64_t queue_timeout_ms = 0;
  std::vector<Report> notices;
  Report refusal;
  std::int64_t holding = 0;  // 0 = nothing held
  // A budget with a cost limit applies: measure the statement's CPU time and
  // pass it to Release, so buckets are corrected and the estimator learns.
  bool measure_cpu = false;
  std::optional<double> predicted_seconds;
  // Admitted: the weakest CPU priority an enforce budget of the statement
  // asks for while it runs (Budget::cpu_priority; 0 = normal).
  int cpu_priority = 0;
  // Admitted: the parallel workers it may start (at most its planned ones:
  // fewer when an enforce budget's max_parallel_workers or free
  // max_concurrent units allow fewer).
  int parallel_workers = 0;
  // Admitted: the smallest max_duration_ms of its enforce budgets (0: none):
  // still running after that long, it is canceled with `duration_cancel` as
  // the error (SQLSTATE 57014). And of its warn budgets: having run longer,
  // it gets `duration_warning` as a NOTICE when it ends.
  std::int64_t cancel_after_ms = 0;
  Report duration_cancel;
  std::int64_t warn_after_ms = 0;
  Report duration_warning;
  // Identify those texts: equal versions, equal texts (0: unknown). A
  // caller that keeps a copy copies again only when its version moves.
  std::uint64_t duration_cancel_version = 0;
  std::uint64_t duration_warning_version = 0;
  // Admitted with cancel_after_ms: the quarantine_s of the budget whose
  // max_duration_ms that is (duration_cancel.budget; 0: none). The caller
  // quarantines the statement's pattern for it if the cancel happens.
  double cancel_quarantine_s = 0;
  // Refused: the enforce budgets with quarantine_s whose per_query_limit
  // refused it; the caller quarantines the statement's pattern in each.
  struct Quarantine {
    std::string budget;
    double seconds = 0;
  };
  std::vector<Quarantine> quarantine;
};

// One budget that applies to an explained statement: what Admit would decide
// for it now.
struct BudgetExplanation {
  const Budget* budget = nullptr;  // into the controller's rule set
  const Rule* rule = nullptr;      // the rule named in messages
  bool has_instance = false;
  std::string instance;  // the `each` value
  BudgetVerdict verdict;
  // The NOTICE (kWarn) or ERROR (kRefuse) the statement would get from this
  // budget; empty for kPass.
  Report report;
};

// What explain() shows: the statement's metadata, the prediction (made only
// when a budget with a cost limit applies, as in Admit) and one entry per
// budget that applies, in the order Admit decides them.
struct Explanation {
  Metadata metadata;
  std::optional<double> predicted_seconds;
  std::vector<BudgetExplanation> budgets;
};

// Fills `metadata` from the statement: built-ins first, then its tags.
// With `only_keys_of`, only the keys its rules use are filled in (the rest
// cannot change a match, and building them costs time on every statement).
// `tags_scratch`, when given, is reused to parse the tags into.
// `parsed`, with a scratch: the statement text the scratch holds the tags of
// (for the same `only_keys_of`). A statement with that very text reuses them
// instead of parsing again (a backend mostly repeats its statements, a
// prepared one with the same text every time).
struct ParsedText {
  std::string text;  // keeps its capacity from statement to statement
  bool valid = false;
};
void BuildMetadata(const StatementInfo& statement, Metadata* metadata,
                   const RuleSet* only_keys_of = nullptr, std::vector<Tag>* tags_scratch = nullptr,
                   ParsedText* parsed = nullptr);

class AdmissionController {
 public:
  AdmissionController() = default;
  // One per backend; it keeps pointers into its own containers.
  AdmissionController(const AdmissionController&) = delete;
  AdmissionController& operator=(const AdmissionController&) = delete;

  // `problems`: what the RuleSet constructor reported (kept for rule_status).
  void SetRuleSet(RuleSet rules, std::vector<RuleProblem> problems = {});
  const RuleSet& rule_set() const { return rules_; }
  const std::vector<RuleProblem>& problems() const { return problems_; }
  bool empty() const { return rules_.empty(); }
  // The weakest cpu_priority any enforce budget of the rule set asks for.
  int max_cpu_priority() const;

  // Budgets shed by traffic_control.shed(): each refuses every statement
  // until `until_us` (wall clock, Unix epoch microseconds), whatever its mode
  // and limits. Replaces the previous list; names of budgets not in the rule
  // set are kept (they apply if a reload brings the budget back) but match
  // nothing. Keep it across SetRuleSet.
  struct ShedBudget {
    std::string budget;
    std::int64_t until_us = 0;
  };
  void SetShed(std::vector<ShedBudget> shed);
  // When the budget's shed ends (Unix epoch microseconds); 0 when it is not
  // shed at `wall_now_us`.
  std::int64_t ShedUntil(std::string_view budget, std::int64_t wall_now_us) const;

  // Patterns quarantined by budgets' quarantine_s (the server's shared
  // list): each is refused (enforce) or warned (warn) by its budget until
  // `until_us` (wall clock, Unix epoch microseconds), before the budget's
  // limits are checked. Replaces the previous list; entries of budgets not in
  // the rule set match nothing. Keep it across SetRuleSet.
  struct QuarantinedPattern {
    std::string budget;
    PatternKey pattern;
    std::int64_t until_us = 0;
    Limit reason = Limit::kNone;  // kPerQueryLimit; kNone: max_duration_ms
  };
  void SetQuarantine(std::vector<QuarantinedPattern> quarantine);

  // The shared table; without one nothing is admitted by concurrency (the
  // shim always attaches one).
  void AttachTable(BucketTable* table) {
    table_ = table;
    match_instances_.clear();  // they are the table's
  }
  // The estimator's pattern table; without one predictions are unknown.
  void AttachPatterns(PatternTable* patterns) { patterns_ = patterns; }
  // The shared per-rule `matched` counters; without them nothing is counted.
  void AttachRuleCounters(RuleCounterTable* counters);
  // The shared violation history; without it nothing is recorded.
  void AttachHistory(ViolationHistory* history);

  // With kWillWait or kRetry, a statement that could wait for a slot gets
  // kMustWait instead of being refused; kFinal never waits.
  // A decision that is final (admitted or refused, not kMustWait) adds 1 to
  // the `matched` counter of the rule of every budget that applied, and
  // records the outcome per budget in the violation history.
  Decision Admit(const StatementInfo& statement, AttemptKind attempt);
  // The same into `decision` (every field set), whose storage is reused from
  // statement to statement: the server's path.
  void Admit(const StatementInfo& statement, AttemptKind attempt, Decision* decision);

  // The deadlock check of a wait for a slot. `stuck`: backends holding units
  // of the instance this backend waits for that wait (directly or not) for
  // a lock this backend holds; `stuck_pid`: the process id of one of them.
  // When the wait can never end while they keep their units
  // (BucketTable::WaitCanNeverEnd), decides the statement finally, as Admit
  // with kFinal, a refusal's DETAIL saying why and naming `stuck_pid`, and
  // returns true; else changes nothing and returns false.
  bool AdmitIfWaitNeverEnds(const StatementInfo& statement, const std::int32_t* stuck,
                            std::size_t count, std::int64_t stuck_pid, Decision* decision);

  // What Admit would decide for the statement now, per budget, without
  // taking a slot, charging debt or counting anything (BucketTable::Evaluate).
  // The prediction is made as in Admit, which counts as a use of the pattern
  // for the estimator's eviction order. Throws std::logic_error without an
  // attached table.
  Explanation Explain(const StatementInfo& statement);

  // Releases a holding once (waiters it lets in are added to the table's
  // wakes()). `cpu_seconds`: what the statement really used (corrects the
  // buckets' debt); `completed`: it ran to its end, so the estimator learns
  // from it (an error or a cancel would teach it that a heavy pattern is
  // cheap).
  // `canceled`: max_duration_ms canceled it (counted by every instance it held).
  void Release(std::int64_t holding, std::optional<double> cpu_seconds = std::nullopt,
               bool completed = false, bool canceled = false);
  void ReleaseAll();

  // Adds this backend's pending rule match counts to the shared counters
  // (they are added in batches of kRuleCountBatch: one shared cache line
  // written per batch instead of per statement). Called before the counters
  // are read and when the backend exits.
  void FlushRuleCounts();
  // Forgets the pending counts (reset()).
  void DropPendingRuleCounts();
  // Adds this backend's pending admitted counts to the violation history.
  void FlushHistory();
  static constexpr std::uint32_t kHistoryBatch = 32;
  static constexpr std::uint32_t kRuleCountBatch = 32;
  std::size_t held_count() const { return holdings_.size(); }

 private:
  // Fills metadata_, matches_ and requests_ for the statement; returns the
  // prediction and whether a budget with a cost limit applies. False when no
  // budget applies.
  bool Prepare(const StatementInfo& statement, std::optional<double>* predicted,
               bool* has_cost_limit);
  // Admit, with the process id of a holder that waits for this backend
  // when the wait was found to never end (0: none).
  void Admit(const StatementInfo& statement, AttemptKind attempt, Decision* decision,
             std::int64_t stuck_pid);
  // The NOTICE or ERROR for matches_[index]; `stuck_pid` as in Admit.
  Report ReportFor(std::size_t index, const BudgetVerdict& verdict, bool refusing,
                   std::string_view prefix, const std::optional<double>& predicted,
                   std::int64_t stuck_pid = 0) const;
  // Records what an admission holds (its slots, and whether the estimator
  // learns from it); returns its token, 0 when it holds nothing. On an
  // exception nothing is recorded.
  std::int64_t Hold(const AdmitResult& result, bool learn, const PatternKey& pattern,
                    double plan_cost, const std::optional<double>& predicted);
  // Adds `statements` to the counter of the rule of every match.
  void CountMatches(std::uint32_t statements = 1);
  // A final decision that admitted the statement with every budget passing,
  // the common case: counted once per statement here, and added to the rule
  // counts and the history (FoldRepeats) in batches, when the match or the
  // minute changes, and before any flush. Per statement it then touches none
  // of the per-rule and per-budget arrays.
  void CountPassingRepeat(std::int64_t wall_now_us);
  void FoldRepeats();
  std::uint32_t repeats_ = 0;  // of matches_, not yet folded
  std::int64_t repeats_minute_ = 0;
  std::int64_t repeats_wall_us_ = 0;
  // Records `statements` admitted statements, every budget passing, for each
  // budget of matches_ once.
  void RecordAllPassed(std::uint32_t statements, std::int64_t wall_now_us);
  // Records a final decision in the violation history, once per budget (not
  // per `each` instance): refused by a limit (the budget refused), else,
  // when the statement was admitted, admitted (and warned when it warned).
  // (Admit counts decisions that admitted with every budget passing through
  // CountPassingRepeat instead.)
  void RecordHistory(const AdmitResult& result, std::int64_t wall_now_us);
  // The history slot of budget `budget` (resolved once), or kNoSlot.
  std::int32_t HistorySlot(std::size_t budget);
  std::vector<std::uint32_t> pending_counts_;  // per rule, not yet in the shared table
  std::vector<std::size_t> pending_rules_;     // the rules whose pending count is not 0
  void CountAdmittedInHistory(std::size_t budget, std::int32_t slot, std::int64_t wall_now_us,
                              std::uint32_t statements = 1);
  std::vector<std::uint32_t> pending_admitted_;       // per budget index
  std::vector<std::int32_t> pending_admitted_slots_;  // their history slots
  std::vector<std::size_t> pending_budgets_;          // where pending_admitted_ is not 0
  std::uint32_t pending_admitted_total_ = 0;
  std::int64_t pending_history_minute_ = -1;
  std::int64_t pending_history_wall_us_ = 0;
  std::uint32_t pending_total_ = 0;

  RuleSet rules_;
  std::vector<RuleProblem> problems_;
  BucketTable* table_ = nullptr;
  PatternTable* patterns_ = nullptr;
  RuleCounterTable* rule_counters_ = nullptr;
  // Per rule (index into rules_.rules()): its counter's slot, kUnresolved
  // until first needed. Slots never change while the table lives.
  static constexpr std::int32_t kUnresolved = -2;
  std::vector<std::int32_t> rule_slots_;
  ViolationHistory* history_ = nullptr;
  // Per budget (index into rules_.budgets()): its history slot, kUnresolved
  // until first needed; and the per-statement scratch of its outcome.
  std::vector<std::int32_t> history_slots_;
  std::vector<std::uint8_t> budget_outcomes_;
  struct Held {
    std::int64_t token = 0;  // Decision::holding
    // Most statements match one or two budgets: no allocation for them.
    absl::InlinedVector<Holding, 2> holdings;
    PatternKey pattern;  // as admitted (a later SET ROLE does not move it)
    double plan_cost = -1;
    double predicted_seconds = 0;  // 0 when unknown: cpu_seconds of an unmeasured release
    bool learn = false;            // record the CPU time in the estimator
  };
  // One per statement that holds something: a handful at most (nested
  // statements, open cursors), so a vector searched from the newest.
  std::vector<Held> holdings_;
  std::int64_t next_holding_ = 1;

  // Backend-local cache of known predictions, keyed by pattern (role,
  // database and query id: after a SET ROLE the other role's predictions are
  // not reused) and plan cost (a prepared statement's generic plan keeps its
  // cost): most statements
  // then touch no shared cache line of the estimator. An entry is asked again
  // after kPredictionReuses uses or kPredictionMaxAgeUs; unknown predictions
  // are never cached, so a new pattern is learned as soon as it is recorded.
  // `now_us`: the statement's wall clock (read by the caller anyway; a step
  // back only makes the entry be asked again).
  std::optional<double> CachedPredict(const PatternKey& pattern, double plan_cost,
                                      std::int64_t now_us);
  static constexpr std::uint32_t kPredictionReuses = 64;
  // Only cheap statements use the cache: for them the shared lookup costs as
  // much as the statement. A heavier one always gets the estimator's current
  // prediction, so its refusal and its retry hint reflect what was just
  // learned (a retry after the hint must then be admitted).
  static constexpr double kCachedPredictionMaxSeconds = 0.0005;
  static constexpr std::int64_t kPredictionMaxAgeUs = 1'000'000;
  static constexpr std::size_t kPredictionCacheSize = 1024;
  struct CachedPrediction {
    double seconds = 0;
    std::int64_t fetched_us = 0;
    std::uint32_t uses = 0;
  };
  struct PredictionKey {
    PatternKey pattern;
    double plan_cost;
    bool operator==(const PredictionKey& o) const {
      return pattern == o.pattern && plan_cost == o.plan_cost;
    }
    template <typename H>
    friend H AbslHashValue(H h, const PredictionKey& key) {
      return H::combine(std::move(h), key.pattern.query_id, key.pattern.user_id,
                        key.pattern.database_id, key.plan_cost);
    }
  };
  absl::flat_hash_map<PredictionKey, CachedPrediction> predictions_;
  // The entry CachedPredict used last (into predictions_; nullptr after any
  // change of the map) and its key.
  CachedPrediction* recent_prediction_ = nullptr;
  PredictionKey recent_prediction_key_{PatternKey{}, 0};
  // Per-statement scratch, reused to keep the hot path allocation-light.
  Metadata metadata_;
  std::vector<Tag> tags_;
  ParsedText tags_text_;  // what tags_ was parsed from (invalid after a rule change)
  std::vector<BudgetMatch> matches_;
  // The metadata matches_ was matched from (valid until the rules change).
  Metadata matched_metadata_;
  bool matched_metadata_valid_ = false;
  // Follow from matches_ alone: a budget among them has a cost limit; per
  // match, what the attached table said of its instance (empty until
  // computed for this table): its InstanceHash, and where the last admission
  // held it (the Holding's slot and generation, sent as a hint; kNoHint
  // until an admission held every instance of the match).
  bool matches_have_cost_limit_ = false;
  // SetShed's list, and its deadline per budget of rules_ (empty: none shed).
  std::vector<ShedBudget> shed_;
  std::vector<std::int64_t> shed_until_;
  void ResolveShed();
  // SetQuarantine's list, and by (budget index of rules_, pattern) the
  // latest deadline and its reason (empty: nothing quarantined).
  std::vector<QuarantinedPattern> quarantine_;
  struct QuarantineKey {
    std::size_t budget_index;
    PatternKey pattern;
    bool operator==(const QuarantineKey& o) const {
      return budget_index == o.budget_index && pattern == o.pattern;
    }
    template <typename H>
    friend H AbslHashValue(H h, const QuarantineKey& key) {
      return H::combine(std::move(h), key.budget_index, key.pattern.query_id, key.pattern.user_id,
                        key.pattern.database_id);
    }
  };
  struct QuarantineDeadline {
    std::int64_t until_us = 0;
    Limit reason = Limit::kNone;
  };
  absl::flat_hash_map<QuarantineKey, QuarantineDeadline> quarantined_;
  void ResolveQuarantine();
  // Adds matches_[index]'s max_duration_ms to an admitted decision when it
  // is the earliest of its kind (cancel for enforce, warning for warn).
  void NoteMaxDuration(std::size_t index, std::string_view prefix, Decision* decision);
  // NoteMaxDuration's reports, per match of matches_ (empty message: not yet
  // formatted), for message prefix duration_prefix_, and their versions.
  std::vector<Report> duration_reports_;
  std::vector<std::uint64_t> duration_report_versions_;
  std::uint64_t next_duration_version_ = 1;
  std::string duration_prefix_;
  struct KnownInstance {
    std::uint64_t key_hash = 0;
    std::uint32_t slot = AdmissionRequest::kNoHint;
    std::uint64_t generation = 0;
  };
  std::vector<KnownInstance> match_instances_;
  std::vector<AdmissionRequest> requests_;
  AdmitResult admit_result_;
};

}  // namespace tc
