/*
 * The one C ABI between the PostgreSQL shim (the C files of src/) and the C++ core.
 *
 * Every function is implemented in src/core/capi.cpp behind one guard that
 * catches every C++ exception: a function that can fail returns false and
 * tc_last_error() tells why; the shim then raises the PostgreSQL error outside
 * any C++ frame. Nothing here includes postgres.h, and nothing here calls back
 * into PostgreSQL except through the lock functions the shim hands over.
 */
#ifndef TRAFFIC_CONTROL_CAPI_H
#define TRAFFIC_CONTROL_CAPI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Text of the last failure (valid until the next call into the core). */
const char *tc_last_error(void);

/* ---- configuration (GUC check hooks; never raise, only report) ---- */
bool tc_check_budgets(const char *json);
bool tc_check_rules(const char *json);

/*
 * Rebuilds this backend's rule set from both GUC values (already validated).
 * Each rule skipped (unknown budget) is passed to `report`.
 */
typedef void (*tc_report_fn)(const char *rule, const char *message);
bool tc_load_config(const char *budgets_json, const char *rules_json, tc_report_fn report);
/* True when no rule can match: the per-statement fast path. Cannot fail. */
bool tc_config_empty(void);

/* The weakest cpu_priority an enforce budget of the loaded rule set asks for. */
int			tc_config_max_cpu_priority(void);

/*
 * The roles the loaded rules name under member_of (each once; 0 when no rule
 * tests member_of): the shim finds which of them the current role is a
 * member of and passes those in tc_statement.member_of. A name stays valid
 * until the next tc_load_config; NULL when `index` is out of range. Cannot
 * fail.
 */
size_t		tc_config_member_of_role_count(void);
const char *tc_config_member_of_role(size_t index);

/*
 * The CPU quota (cores) the process's cgroups set, read from
 * /proc/self/cgroup and /sys/fs/cgroup; 0 when there is none or it cannot
 * be read. Cannot fail.
 */
double tc_cgroup_cpu_quota(void);

/* ---- shared state (PostgreSQL shared memory) ----
 * One block holding the bucket table (max_buckets budget instances, and a
 * record per backend that may wait for a slot: max_backends, PostgreSQL's
 * MaxBackends), the estimator's pattern table (max_patterns query patterns),
 * the rule counters and the violation history (a fixed size). */
size_t		tc_shared_size(int max_buckets, int max_patterns, int max_backends);
bool		tc_shared_format(void *memory, size_t size, int max_buckets, int max_patterns,
							 int max_backends);

typedef struct tc_lock_ops
{
	void		(*lock_exclusive) (void);
	void		(*lock_shared) (void);
	void		(*unlock) (void);
} tc_lock_ops;

/*
 * Attaches this backend to formatted memory; lock functions must not raise.
 * `backend`: this backend's number, 0 .. max_backends - 1 (its PGPROC
 * number), or -1 for a process that never waits for a slot.
 */
bool		tc_attach(void *memory, size_t size, int max_buckets, int max_patterns,
					  int max_backends, int backend, const tc_lock_ops *bucket_lock,
					  const tc_lock_ops *pattern_lock);

/*
 * Backends (numbers as given to tc_attach) whose latches the shim must set:
 * waiters for a slot that now fit. Valid until the next call into the core.
 */
typedef struct tc_wakeups
{
	int			count;
	const int32_t *backends;
} tc_wakeups;

/* ---- admission ---- */
typedef struct tc_statement
{
	const char *text;			/* the statement's own text (not NUL-terminated) */
	size_t		text_len;
	const char *username;		/* NULL when unknown */
	const char *application_name;
	const char *remote_address; /* NULL for Unix-socket connections */
	const char *database;
	const char *command;		/* select, insert, update, delete, merge, utility */
	int64_t		query_id;
	bool		has_query_id;
	/*
	 * Those of the tc_config_member_of_role() names that the current role
	 * is a member of (NULL when none).
	 */
	const char *const *member_of;
	size_t		member_of_count;
	uint32_t	user_id;		/* the current role's OID (GetUserId()) */
	uint32_t	database_id;	/* MyDatabaseId; with these two, the estimator's
								 * pattern key, as pg_stat_statements' */
	int			parallel_workers;	/* planned workers; the statement counts 1 + this */
	bool		workers_can_be_cut; /* the executor can still start fewer workers */
	double		plan_cost;		/* planner total cost; <0 when none (utility) */
	double		server_cores;	/* CPU-seconds per second of a full server */
	int64_t		wall_now_us;	/* Unix epoch microseconds, for last_blocked_at */
	const char *message_prefix; /* traffic_control.message_prefix */
} tc_statement;

typedef struct tc_report
{
	const char *message;
	const char *detail;
	const char *hint;			/* NULL when there is none */
	/* For the server log (never NULL): */
	const char *budget;			/* the budget's name */
	const char *rule;			/* the rule that put the statement in it */
	const char *limit_name;		/* max_concurrent, per_query_limit, server_share */
} tc_report;

typedef enum tc_outcome
{
	TC_ADMITTED = 0,			/* run it; `holding` is held (or 0 when nothing is) */
	TC_REFUSED = 1,				/* raise `refusal` with SQLSTATE 53000 */
	TC_MUST_WAIT = 2			/* wait for a slot, then call tc_admit again */
} tc_outcome;

typedef struct tc_quarantine_request
{
	const char *budget;
	double		seconds;
} tc_quarantine_request;

typedef struct tc_admission
{
	tc_outcome	outcome;
	int64_t		queue_timeout_ms;	/* TC_MUST_WAIT: how long waiting may last */
	int			notice_count;	/* NOTICEs to send (admitted or refused) */
	const tc_report *notices;
	tc_report	refusal;		/* TC_REFUSED */
	int64_t		holding;		/* TC_ADMITTED: token for tc_release, 0 = none */
	bool		measure_cpu;	/* measure CPU time and pass it to tc_release */
	double		predicted_seconds;	/* CPU-seconds predicted; <0 = unknown */
	int			cpu_priority;	/* TC_ADMITTED: nice 0-19 to run at, or TC_CPU_PRIORITY_IDLE */
	int			parallel_workers;	/* TC_ADMITTED: workers it may start (<= planned) */
	/* TC_ADMITTED, max_duration_ms: cancel it (57014, duration_cancel) still
	 * running after cancel_after_ms; NOTICE duration_warning when it ends
	 * having run longer than warn_after_ms. 0: none. */
	int64_t		cancel_after_ms;
	tc_report	duration_cancel;
	uint64_t	duration_cancel_version;	/* same version, same texts (0: unknown) */
	int64_t		warn_after_ms;
	tc_report	duration_warning;
	/* TC_ADMITTED with cancel_after_ms: if the cancel happens, quarantine the
	 * statement's pattern in duration_cancel.budget for this long (0: no). */
	double		cancel_quarantine_s;
	/* TC_REFUSED: quarantine the statement's pattern in each of these
	 * budgets (refused by their per_query_limit) for its seconds. */
	int			quarantine_count;
	const tc_quarantine_request *quarantine;
	tc_wakeups	wake;			/* waiters to wake, whatever the outcome */
} tc_admission;

/* tc_admission.cpu_priority: the SCHED_IDLE policy (weaker than nice 19). */
#define TC_CPU_PRIORITY_IDLE 20

typedef enum tc_attempt
{
	TC_ATTEMPT_FIRST = 0,		/* may wait for a slot: counted as queued */
	TC_ATTEMPT_RETRY = 1,		/* woken while waiting: may wait again */
	TC_ATTEMPT_FINAL = 2		/* the queue time is over: refuse, never wait */
} tc_attempt;

/*
 * Decides one statement. Output pointers stay valid until the next tc_admit
 * call. TC_MUST_WAIT: this backend now waits in a budget's queue (FIFO);
 * sleep until the latch is set (a release that lets it in wakes it) and
 * call again. Any other outcome has taken it out of the queue. If the call
 * fails, take it out with tc_waiter_leave.
 */
bool tc_admit(const tc_statement *statement, tc_attempt attempt, tc_admission *out);

/*
 * The deadlock check of a wait, once deadlock_timeout has passed: the
 * backends other than this one that hold units of the budget instance this
 * backend waits for (none when it waits for none). Valid until the next call.
 */
bool tc_queue_holders(const int32_t **backends, int *count);

/*
 * `stuck`: those of them that wait, directly or not, for a lock this backend
 * holds; `stuck_pid`: the process id of one of them. If the statement can
 * never fit while they keep their units, it is decided finally now (*decided
 * set; *out as from tc_admit: refused with a DETAIL naming stuck_pid, or
 * admitted after all). Else nothing changes and the wait goes on.
 */
bool tc_admit_if_wait_never_ends(const tc_statement *statement, const int32_t *stuck,
								 int count, int stuck_pid, bool *decided, tc_admission *out);

/*
 * Gives back what `holding` holds; unknown or already released tokens are
 * ignored, so a holding is released exactly once. `cpu_seconds` (<0 when not
 * measured) corrects the budgets' debt; `completed` (the statement ran to its
 * end) lets the estimator learn from it; `canceled` (max_duration_ms
 * canceled it) is counted. *wake: waiters to wake.
 */
bool		tc_release(int64_t holding, double cpu_seconds, bool completed, bool canceled,
					   tc_wakeups *wake);
/* Releases everything this backend holds (exit, safety net). */
bool tc_release_all(tc_wakeups *wake);

/*
 * Takes this backend out of the queue it waits in, if any: every way a wait
 * ends without a final tc_admit (cancel, timeout, error, exit). Cheap when
 * it waits in none.
 */
bool tc_waiter_leave(tc_wakeups *wake);

/* ---- SQL interface (src/sql_functions.c) ----
 * The rows each function returns point into backend-local storage of the
 * core that stays valid until the next call of the same function: copy them
 * into PostgreSQL memory before calling it again. Strings are NUL-terminated;
 * the `each` values and metadata also come with their length. All of them
 * need tc_attach first. */

/*
 * Budgets shed by traffic_control.shed(): each refuses all its statements
 * until until_us (Unix epoch microseconds), whatever its mode and limits.
 * Replaces the backend's previous list; kept across tc_load_config.
 */
/* Is `name` a budget of this backend's configuration? */
bool		tc_config_has_budget(const char *name);

typedef struct tc_shed_budget
{
	const char *budget;
	int64_t		until_us;
} tc_shed_budget;
bool		tc_set_shed(const tc_shed_budget *shed, size_t count);

/*
 * Patterns quarantined by budgets' quarantine_s (the server's shared list):
 * statements of the pattern (query id, role, database) are refused by the
 * budget (warned in warn mode) until until_us (Unix epoch microseconds).
 * Replaces the backend's previous list; kept across tc_load_config.
 */
#define TC_QUARANTINE_PER_QUERY_LIMIT 1	/* refused by per_query_limit */
#define TC_QUARANTINE_MAX_DURATION 2	/* canceled by max_duration_ms */
typedef struct tc_quarantined_pattern
{
	const char *budget;
	uint64_t	query_id;
	uint32_t	user_id;
	uint32_t	database_id;
	int64_t		until_us;
	int			reason;			/* TC_QUARANTINE_* */
} tc_quarantined_pattern;
bool		tc_set_quarantine(const tc_quarantined_pattern *quarantine, size_t count);

/* traffic_control.budget_status: one row per budget instance. */
typedef struct tc_budget_status_row
{
	const char *budget;
	const char *instance;		/* the `each` value; NULL when none */
	size_t		instance_len;
	const char *mode;			/* NULL: the budget is no longer configured */
	int64_t		active;			/* concurrency units held now */
	double		debt_seconds;	/* leaky bucket debt, CPU-seconds, drained to now */
	uint64_t	admitted;
	uint64_t	warned;
	uint64_t	blocked_max_concurrent;
	uint64_t	blocked_per_query_limit;
	uint64_t	blocked_server_share;
	uint64_t	blocked_shed;	/* refused because the budget was shed */
	uint64_t	canceled;		/* canceled by max_duration_ms */
	uint64_t	blocked_quarantined;	/* refused: their pattern was quarantined */
	double		cpu_seconds;	/* CPU its statements used, workers included */
	uint64_t	queued;
	int64_t		last_blocked_at_us; /* Unix epoch microseconds; 0 = never */
	int64_t		shed_until_us;	/* latest end of a shed of the budget (Unix
								 * epoch microseconds, maybe past); 0 = none */
	/* The configured limits (has_*: set in the configuration). */
	bool		has_max_concurrent;
	int64_t		max_concurrent;
	bool		has_per_query_limit;
	double		per_query_limit;
	bool		has_server_share;
	double		server_share;
	double		burst_limit;	/* meaningful with has_server_share */
	/* Percent of the fullest limit that fills over time (UtilizationPercent). */
	bool		has_utilization;
	double		utilization_pct;
} tc_budget_status_row;

/*
 * Every configured budget (this backend's rule set: load the configuration
 * first) with its instances, or one row of zeros without an instance when
 * it has none yet; then instances of budgets no longer configured.
 */
bool		tc_budget_status(double server_cores, const tc_budget_status_row **rows,
							 size_t *count);

/* traffic_control.rule_status: one row per configured rule, in order. */
typedef struct tc_rule_status_row
{
	const char *rule;
	const char *budget;
	bool		has_matched;	/* false: not counted (counter table full) */
	uint64_t	matched;
	const char *problem;		/* NULL when none */
} tc_rule_status_row;

bool		tc_rule_status(const tc_rule_status_row **rows, size_t *count);

/*
 * traffic_control.pattern_estimates: one row per learned query pattern, that
 * is per (role, database, query id) as pg_stat_statements keys its entries,
 * ordered by query id, role, database. A query id repeats when several roles
 * or databases run it.
 */
typedef struct tc_pattern_row
{
	int64_t		query_id;
	uint32_t	user_id;		/* the role's OID */
	uint32_t	database_id;	/* the database's OID */
	uint64_t	calls;
	double		mean_cpu_seconds;
	double		mean_plan_cost;
	double		k;				/* CPU-seconds per unit of plan cost; NaN = unknown */
} tc_pattern_row;

bool		tc_pattern_estimates(const tc_pattern_row **rows, size_t *count);

/*
 * traffic_control.violation_history: one row per budget and minute with a
 * count, for the six hours up to the minute of wall_now_us (Unix epoch
 * microseconds), ordered by budget and minute. Not zeroed by reset().
 */
typedef struct tc_violation_history_row
{
	const char *budget;
	int64_t		minute_start_s; /* Unix epoch seconds */
	uint64_t	admitted;		/* warned ones included */
	uint64_t	warned;
	uint64_t	blocked_max_concurrent;
	uint64_t	blocked_per_query_limit;
	uint64_t	blocked_server_share;
} tc_violation_history_row;

bool		tc_violation_history(int64_t wall_now_us, const tc_violation_history_row **rows,
								 size_t *count);

/* traffic_control.reset(): zero the budgets' and the rules' counters. */
bool		tc_reset_counters(void);

/* traffic_control.explain(): what admission would decide, changing nothing. */
typedef enum tc_explain_decision
{
	TC_DECISION_ADMIT = 0,
	TC_DECISION_WARN = 1,
	TC_DECISION_REFUSE = 2
} tc_explain_decision;

typedef struct tc_explain_row
{
	const char *budget;
	const char *instance;		/* the `each` value; NULL when none */
	size_t		instance_len;
	const char *rule;			/* the rule named in messages */
	const char *mode;
	tc_explain_decision decision;
	const char *limit_name;		/* the limit that warned or refused; NULL for admit */
	const char *detail;			/* the DETAIL of the NOTICE or ERROR; NULL for admit */
} tc_explain_row;

typedef struct tc_metadata_item
{
	const char *key;
	size_t		key_len;
	const char *value;
	size_t		value_len;
} tc_metadata_item;

typedef struct tc_explanation
{
	size_t		row_count;		/* budgets that apply; 0 = none */
	const tc_explain_row *rows;
	size_t		metadata_count;
	const tc_metadata_item *metadata;	/* built-ins, then tags */
	bool		has_prediction;
	double		predicted_seconds;	/* CPU-seconds, when has_prediction */
} tc_explanation;

/*
 * Decides `statement` as tc_admit would (wall_now_us is not used), without
 * taking a slot, charging debt or counting anything.
 */
bool		tc_explain(const tc_statement *statement, tc_explanation *out);

#ifdef __cplusplus
}
#endif

#endif							/* TRAFFIC_CONTROL_CAPI_H */
