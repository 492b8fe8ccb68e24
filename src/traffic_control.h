/*
 * traffic_control.h — what the files of the PostgreSQL shim share.
 *
 * The shim is one file per concern:
 *   hooks.c          _PG_init, the executor, utility and planner hooks, what
 *                    counts as a statement
 *   settings.c       GUC definitions and hooks, the rule set rebuilt between
 *                    statements, server cores
 *   shmem.c          the shared segment, its LWLocks and the core's lock ops
 *   holdings.c       holding records, every release path, the CPU a
 *                    statement and its parallel workers used
 *   priority.c       the OS CPU priority a statement runs at (cpu_priority)
 *   queue.c          waiting for a slot, waking waiters, the deadlock check
 *   statement.c      built-in metadata, plan workers (and cutting them), the
 *                    call into the core, the control plane
 *   plan_cost.c      the plan cost admission trusts (the server's planner
 *                    settings, not the session's)
 *   reporting.c      NOTICE/ERROR text for the client, rate-limited log lines
 *   sql_functions.c  the SQL interface (views, explain, reset)
 *   shed.c           shed() and unshed(): the shared list of shed budgets
 *   duration.c       max_duration_ms: the timer that cancels a statement
 *   quarantine.c     quarantine_s: the shared list of quarantined patterns
 * All decisions are made by the C++ core behind traffic_control/capi.h.
 *
 * These names are internal to the library: hidden from the dynamic symbol
 * table (PostgreSQL 15 does not build modules with -fvisibility=hidden), so
 * a function of the same name in another loaded library can never take
 * their place.
 */
#ifndef TRAFFIC_CONTROL_SHIM_H
#define TRAFFIC_CONTROL_SHIM_H

#include "executor/execdesc.h"
#include "nodes/nodes.h"
#include "nodes/plannodes.h"
#include "optimizer/planner.h"
#include "port/atomics.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "datatype/timestamp.h"

#include "pg_compat.h"
#include "traffic_control/capi.h"

#if defined(__GNUC__)
#define TC_INTERNAL __attribute__((visibility("hidden")))
#else
#define TC_INTERNAL
#endif

/*
 * The one way a core failure becomes a PostgreSQL error: the core call has
 * returned (no C++ frame is live) before ereport runs.
 */
#define TC_CALL(call) \
	do { \
		if (!(call)) \
			ereport(ERROR, \
					(errcode(ERRCODE_INTERNAL_ERROR), \
					 errmsg_internal("%s", tc_last_error()))); \
	} while (0)

/* The same for cleanup paths, where raising an ERROR would recurse. */
#define TC_CALL_QUIET(call) \
	do { \
		if (!(call)) \
			elog(WARNING, "%s", tc_last_error()); \
	} while (0)

/* ---- duration.c ---- */

/*
 * Arms this backend's max_duration_ms timer: after `after_ms` the running
 * statement is canceled with `cancel`'s text. False (nothing done) when it
 * is armed already, by a statement around this one.
 */
extern TC_INTERNAL bool arm_max_duration(int64 after_ms, const tc_report *cancel,
									   uint64 text_version);

/* Disarms it (the statement that armed it has ended, however it ended). */
extern TC_INTERNAL void disarm_max_duration(void);

/* A new top-level statement: a cancel of an ended statement needs its text no more. */
extern TC_INTERNAL void forget_duration_cancel(void);

/* Has the timer fired (its statement is being canceled)? */
extern TC_INTERNAL bool duration_cancel_fired(void);

/* Before a run of the statement that armed the timer (a cursor's FETCH). */
extern TC_INTERNAL void cancel_if_duration_expired(void);

/* From the emit_log_hook: gives the cancel the timer caused the budget's text. */
extern TC_INTERNAL bool rewrite_duration_cancel(ErrorData *edata);

/* ---- shed.c ---- */

/* Formats the shared list of shed budgets (while the segment is created). */
extern TC_INTERNAL void init_shed_list(void);

/* Gives this backend's core the shared list of shed budgets, if it moved. */
extern TC_INTERNAL void sync_shed_list(void);

/* ---- quarantine.c ---- */

/* Formats the shared list of quarantined patterns (segment creation). */
extern TC_INTERNAL void init_quarantine_list(void);

/* Gives this backend's core the shared list, if it moved. */
extern TC_INTERNAL void sync_quarantine_list(void);

/*
 * Quarantines the pattern (query_id, the current role, this database) in
 * `budget` for `seconds` (reason TC_QUARANTINE_*), and logs it. Cleanup
 * paths call it: it raises no ERROR (a full list drops the entry that ends
 * first).
 */
extern TC_INTERNAL void quarantine_pattern(const char *budget, double seconds, int reason,
										   uint64 query_id, Oid user_id);

/* ---- settings.c ---- */

typedef enum TcTrack
{
	TC_TRACK_TOP,
	TC_TRACK_ALL
} TcTrack;

/* traffic_control.log_level = off */
#define TC_LOG_OFF (-1)

extern TC_INTERNAL bool tc_enabled;
extern TC_INTERNAL char *tc_rules;
extern TC_INTERNAL char *tc_budgets;
extern TC_INTERNAL int tc_max_buckets;
extern TC_INTERNAL int tc_max_patterns;
extern TC_INTERNAL char *tc_message_prefix;
extern TC_INTERNAL int tc_track;
extern TC_INTERNAL bool tc_track_utility;
extern TC_INTERNAL int tc_log_level;
extern TC_INTERNAL int tc_log_max_per_second;
extern TC_INTERNAL int tc_cpu_priority_linger_ms;

/* The loaded rule set has no rule (asked on every statement). */
extern TC_INTERNAL bool tc_config_is_empty;

/* Defines the GUCs (from _PG_init). */
extern TC_INTERNAL void define_settings(void);

/*
 * Rebuilds this backend's rule set when traffic_control.rules or .budgets
 * changed. Those settings change only between top-level statements (they are
 * reloaded with the configuration file, never SET), so calling it from a SQL
 * function does not change the rules under a running statement.
 */
extern TC_INTERNAL void maybe_reload_config(void);

/* traffic_control.server_cores, or the number of online CPUs when it is 0. */
extern TC_INTERNAL double effective_server_cores(void);

/* ---- shmem.c ---- */

/* What a backend shares with its parallel workers. */
typedef struct TcBackendSlot
{
	pg_atomic_uint64 worker_cpu_ns; /* CPU nanoseconds its parallel workers used */
	pg_atomic_uint32 worker_priority;	/* the cpu_priority it runs at now */
} TcBackendSlot;

/* A budget shed by traffic_control.shed() (shed.c). */
#define TC_MAX_SHED 64
#define TC_SHED_NAME_BYTES 64	/* budget names are at most 63 bytes */
typedef struct TcShedEntry
{
	char		budget[TC_SHED_NAME_BYTES];
	int64		until_us;		/* Unix epoch microseconds */
} TcShedEntry;

/* A pattern quarantined by a budget's quarantine_s (quarantine.c). */
#define TC_MAX_QUARANTINE 128
typedef struct TcQuarantineEntry
{
	char		budget[TC_SHED_NAME_BYTES];
	uint64		query_id;
	Oid			user_id;
	Oid			database_id;
	int64		until_us;		/* Unix epoch microseconds */
	int			reason;			/* TC_QUARANTINE_* */
} TcQuarantineEntry;

typedef struct TcShared
{
	LWLock	   *bucket_lock;	/* protects the bucket table */
	LWLock	   *pattern_lock;	/* protects the estimator's pattern table */
	slock_t		mutex;			/* protects reported_config_hash and log_* */
	uint32		reported_config_hash;	/* config whose problems were logged */
	/* Cluster-wide rate limit of the refusal and warning log lines: */
	int64		log_window;		/* the wall-clock second being counted */
	int			log_window_lines;	/* lines logged in that second */
	int64		log_suppressed; /* lines suppressed since the last one logged */
	bool		priority_warning_logged;	/* under mutex: "cpu_priority has no effect" */
	/* Shed budgets (shed.c), under mutex; the version is bumped on a change. */
	pg_atomic_uint64 shed_version;
	int			shed_count;
	TcShedEntry shed[TC_MAX_SHED];
	/* Quarantined patterns (quarantine.c), as the shed list. */
	slock_t		quarantine_mutex;
	pg_atomic_uint64 quarantine_version;
	int			quarantine_count;
	TcQuarantineEntry quarantine[TC_MAX_QUARANTINE];
	Size		core_size;
	/* the core's tables follow, on a cache line, after: */
	TcBackendSlot backends[FLEXIBLE_ARRAY_MEMBER];	/* by PGPROC number */
} TcShared;

/* The shared segment; NULL when the library was not preloaded. */
extern TC_INTERNAL TcShared *tc_shared;

/* Installs the shared memory hooks (from _PG_init). */
extern TC_INTERNAL void install_shmem_hooks(void);

/* Attaches the core to the shared segment (tc_shared must be set). */
extern TC_INTERNAL void ensure_core_attached(void);

/* Is this process attached to the core's tables? */
extern TC_INTERNAL bool core_attached(void);

/* ---- holdings.c ---- */

/* Installs the release callbacks (from _PG_init). */
extern TC_INTERNAL void register_release_callbacks(void);

/* Makes room for one more record before any slot is taken. */
extern TC_INTERNAL void reserve_held_record(void);

/*
 * Records a granted holding (token != 0, or a CPU priority to run at) made
 * room for by reserve_held_record: an executor holding (query != NULL) or a
 * utility statement's at utility_level. With measure_cpu its CPU clock
 * starts now; with a cpu_priority the backend runs at it from now on.
 */
extern TC_INTERNAL void record_holding(int64 token, QueryDesc *query, int utility_level,
									   bool measure_cpu, int cpu_priority);

/*
 * Gives the record just made by record_holding its admission's
 * max_duration_ms: arms the cancel timer (unless a statement around it
 * did), keeps a warn budget's NOTICE for when it ends.
 */
extern TC_INTERNAL void record_max_duration(const tc_admission *admission, uint64 query_id);

/* Records a cursor opened nested, to be admitted at its first top-level run. */
extern TC_INTERNAL void record_pending(QueryDesc *query);

/* Forgets a query's pending record; false when it has none. */
extern TC_INTERNAL bool take_pending(QueryDesc *query);

/* Releases a query's holdings (ExecutorEnd). */
extern TC_INTERNAL void release_query(QueryDesc *query);

/* Releases the holding of the utility statement at this nesting level. */
extern TC_INTERNAL void release_utility(int utility_level, bool completed);

/* Around each ExecutorRun of a query: its CPU clock, and what it teaches. */
extern TC_INTERNAL void before_run(QueryDesc *query);
extern TC_INTERNAL void after_run(QueryDesc *query, uint64 count);

/*
 * In a parallel worker, around its part of the query: its CPU time is added
 * to its leader's worker_cpu_ns, so the statement is charged what it used.
 */
extern TC_INTERNAL void worker_started(void);
extern TC_INTERNAL void worker_ended(void);

/* Holdings recorded and not yet released. */
extern TC_INTERNAL int held_count;

/* Process CPU time (user + system) in seconds; <0 when unknown. */
extern TC_INTERNAL double cpu_seconds_now(void);

/* ---- queue.c ---- */

/*
 * One tc_admit attempt (wall clock set here); wakes the waiters it lets in.
 * On a core failure, leaves the queue and raises the error.
 */
extern TC_INTERNAL void admit_attempt(tc_statement *statement, tc_attempt attempt,
									  tc_admission *admission);

/*
 * Waits for a slot after a first attempt said TC_MUST_WAIT; *admission
 * receives the last attempt's outcome.
 */
extern TC_INTERNAL void wait_for_admission(tc_statement *statement, tc_admission *admission);

/* Sets the latches of the backends the core names (waiters that now fit). */
extern TC_INTERNAL void wake_backends(const tc_wakeups *wake);

/* Takes this backend out of the queue it waits in, if any; never raises. */
extern TC_INTERNAL void leave_queue_quietly(void);

/* ---- statement.c ---- */

/* Planned parallel workers of a statement (all its Gather nodes). */
extern TC_INTERNAL int statement_workers(PlannedStmt *pstmt);

/*
 * Runs the query with at most `allowed` parallel workers in all: its Gather
 * nodes are cut, in plan order, in a copy of the plan it then executes. A
 * Gather left with none runs its plan in the leader.
 */
extern TC_INTERNAL void clamp_statement_workers(QueryDesc *queryDesc, int allowed);

/* The `command` metadata value of a planned statement's command type. */
extern TC_INTERNAL const char *command_name(CmdType command);

/* Fills the built-in metadata of the current session and role. */
extern TC_INTERNAL void fill_builtins(tc_statement *statement);

/* The rules changed: work member_of out again before its next use. */
extern TC_INTERNAL void member_of_config_changed(void);

/* The current role's name, as fill_builtins last saw it. */
extern TC_INTERNAL const char *current_user_name(void);

/* Unix epoch microseconds. */
extern TC_INTERNAL int64 unix_now_us(void);

/* What admit_statement decides about. */
typedef struct TcStatementToAdmit
{
	const char *source;			/* the query string it is part of */
	int			location;		/* its position in source (<= 0: from the start) */
	int			length;			/* its length (0: to the end) */
	const char *command;		/* the `command` metadata value */
	uint64		query_id;
	int			workers;		/* planned parallel workers */
	bool		workers_can_be_cut; /* the executor has not started yet */
	double		plan_cost;		/* <0: none (utility) */
} TcStatementToAdmit;

/*
 * Decides one statement and records what it holds (query != NULL: an
 * executor holding; else a utility statement's at utility_level), or raises
 * the refusal. Waits for a slot when a budget has a queue timeout. Returns
 * the parallel workers it may start (no more than planned).
 */
extern TC_INTERNAL int admit_statement(const TcStatementToAdmit *what, QueryDesc *query,
									   int utility_level);

/*
 * Is the statement only the control plane: reloading the configuration
 * (pg_reload_conf) or reading and calling the extension's own objects?
 */
extern TC_INTERNAL bool is_control_plane(PlannedStmt *pstmt);

/* ---- priority.c ---- */

/* Checks whether a lowered CPU priority can be restored (postmaster). */
extern TC_INTERNAL void remember_priority_rights(void);

/* Does cpu_priority take effect in this server? */
extern TC_INTERNAL bool cpu_priority_takes_effect(void);

/* One WARNING per server start when a rule set uses cpu_priority in vain. */
extern TC_INTERNAL void warn_if_priority_has_no_effect(int max_cpu_priority);

/*
 * Runs this backend at `priority` (0 = as it started, 1-19, or idle). With
 * may_linger (a statement ended), a weaker priority is kept until the
 * backend does something else or idles (priority.c says why).
 */
extern TC_INTERNAL void apply_cpu_priority(int priority, bool may_linger);

/* Before the backend plans or runs anything: ends a lingering priority. */
extern TC_INTERNAL void restore_priority_if_due(void);

/* In a parallel worker: runs at its leader's priority. */
extern TC_INTERNAL void take_leader_priority(void);

/* ---- plan_cost.c ---- */

/* Records the server's planner settings (from _PG_init, in the postmaster). */
extern TC_INTERNAL void remember_server_planner_settings(void);

/*
 * Plans with `planner`; when the session's planner settings differ from the
 * server's, also plans a copy under the server's and keeps that plan's cost
 * with the result.
 */
extern TC_INTERNAL PlannedStmt *plan_with_trusted_cost(Query *parse, const char *query_string,
													   int cursor_options,
													   ParamListInfo bound_params,
													   planner_hook_type planner);

/* The total cost admission uses for a planned statement; <0 when none. */
extern TC_INTERNAL double admission_plan_cost(PlannedStmt *pstmt);

/* ---- reporting.c ---- */

/* Installs the emit_log_hook (from _PG_init). */
extern TC_INTERNAL void install_log_hook(void);

/*
 * The text as it can be sent to this client (valid in its encoding, else
 * every byte outside ASCII written \xHH); may return `text` itself.
 */
extern TC_INTERNAL const char *client_safe(const char *text);

/*
 * Logs the decision's warnings and refusal (rate-limited), sends its NOTICEs
 * and raises its refusal.
 */
extern TC_INTERNAL void report_admission(const tc_admission *admission);

/* ---- hooks.c ---- */

/* Utility statements that are never admitted themselves. */
extern TC_INTERNAL bool is_pass_through_utility(Node *statement);

/*
 * No statement is executing (none around the caller): a top-level
 * statement's release, not a nested one's.
 */
extern TC_INTERNAL bool between_top_level_statements(void);

/* ---- sql_functions.c ---- */

/* A Unix-epoch microsecond time as a timestamptz; false for 0 (never) or out of range. */
extern TC_INTERNAL bool unix_us_to_timestamptz(int64 unix_us, TimestampTz *result);

#endif							/* TRAFFIC_CONTROL_SHIM_H */
