/*
 * traffic_control.c — the PostgreSQL side of traffic_control.
 *
 * This file is the thin C shim: GUCs, shared memory, executor and utility
 * hooks, and the bookkeeping that releases every concurrency slot exactly
 * once. All decisions are made by the C++ core behind include/traffic_control/
 * capi.h; every call into it returns false instead of throwing, and only then
 * does this file raise a PostgreSQL error (TC_CALL below).
 *
 * Locking rules
 * -------------
 * - The core's bucket and pattern tables each have an LWLock of the named
 *   tranche "traffic_control" (bucket_lock, pattern_lock), which the core
 *   takes and drops through tc_lock_ops: exclusive to create or evict an
 *   entry or to reset, shared to read a snapshot or a prediction. Entries
 *   have spinlocks of their own, and the bucket table's hot path (admitting
 *   an instance already in the table, every release) takes only those; see
 *   src/core/bucket_table.cpp. The core never calls anything that can raise
 *   while holding a lock, and holds one only for the lookups and arithmetic
 *   of one decision.
 * - TcShared.mutex (a spinlock) protects reported_config_hash and the log
 *   rate limit (log_window, log_window_lines, log_suppressed); nothing but a
 *   compare-and-store or a count happens under it, and it is released before
 *   any elog.
 * - AddinShmemInitLock is held while the shared segment is created, as in
 *   pg_stat_statements.
 *
 * Slot release
 * ------------
 * A statement that takes slots gets one holding token. The token is recorded
 * here with the QueryDesc (executor) or as a utility holding, and the
 * resource owner that was current at admission. It is released by the first
 * of: ExecutorEnd; the release of that resource owner (ERROR, cancel,
 * statement_timeout, subtransaction rollback, a portal dropped late); the end
 * of the transaction (safety net for executor holdings); PG_FINALLY around a
 * utility statement; and a before_shmem_exit callback (FATAL, terminate,
 * disconnect). The core ignores a token that was already released, so a
 * second attempt is harmless. A crash-restart formats the table anew.
 */
#include "postgres.h"

#include <float.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

#include "access/parallel.h"
#include "access/xact.h"
#include "commands/dbcommands.h"
#include "common/hashfn.h"
#include "executor/executor.h"
#include "common/ip.h"
#include "lib/stringinfo.h"
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "nodes/plannodes.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/queryjumble.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "traffic_control/capi.h"
#include "traffic_control.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* ---- GUCs ---- */

typedef enum TcTrack
{
	TC_TRACK_TOP,
	TC_TRACK_ALL
} TcTrack;

static const struct config_enum_entry track_options[] = {
	{"top", TC_TRACK_TOP, false},
	{"all", TC_TRACK_ALL, false},
	{NULL, 0, false}
};

static bool tc_enabled = true;
static char *tc_rules = NULL;
static char *tc_budgets = NULL;
static double tc_server_cores = 0;
static int	tc_max_buckets = 10000;
static int	tc_max_patterns = 10000;
static char *tc_message_prefix = NULL;
static int	tc_track = TC_TRACK_TOP;
static bool tc_track_utility = true;

/* traffic_control.log_level: the elevel of refusal and warning log lines. */
#define TC_LOG_OFF (-1)

static const struct config_enum_entry log_level_options[] = {
	{"off", TC_LOG_OFF, false},
	{"debug1", DEBUG1, false},
	{"info", INFO, false},
	{"notice", NOTICE, false},
	{"log", LOG, false},
	{"warning", WARNING, false},
	{NULL, 0, false}
};

static int	tc_log_level = LOG;
static int	tc_log_max_per_second = 10;

/* ---- shared state ---- */

typedef struct TcShared
{
	LWLock	   *bucket_lock;	/* protects the bucket table */
	LWLock	   *pattern_lock;	/* protects the estimator's pattern table */
	ConditionVariable slot_freed;	/* broadcast when a slot is released */
	slock_t		mutex;			/* protects reported_config_hash and log_* */
	uint32		reported_config_hash;	/* config whose problems were logged */
	/* Cluster-wide rate limit of the refusal and warning log lines: */
	int64		log_window;		/* the wall-clock second being counted */
	int			log_window_lines;	/* lines logged in that second */
	int64		log_suppressed; /* lines suppressed since the last one logged */
	Size		core_size;
	/* the core's tables follow at tc_core_address() */
} TcShared;

TcShared   *tc_shared = NULL;
static bool tc_core_attached = false;

/* ---- backend-local state ---- */

/* Executor nesting depth, as pg_stat_statements counts it. */
static int	nesting_level = 0;

/* Set by the assign hooks; the rule set is rebuilt between statements. */
static bool config_dirty = true;
/* The loaded rule set has no rule (kept here: asked on every statement). */
static bool config_empty = true;

typedef struct TcHeld
{
	int64		token;
	QueryDesc  *query;			/* executor holding; NULL for utility */
	ResourceOwner owner;		/* current at admission; NULL for utility */
	double		cpu_start;		/* process CPU seconds at admission; <0: not measured */
	int			runs;			/* ExecutorRun calls so far */
	bool		ran_whole;		/* one run, not cut short: the estimator may learn */
} TcHeld;

static TcHeld *held = NULL;
static int	held_count = 0;
static int	held_capacity = 0;
static bool exit_callback_registered = false;
static bool waiter_registered = false;	/* counted in the table's waiters */

/* Rules skipped while loading, copied here without calling PostgreSQL. */
#define TC_MAX_REPORTED_PROBLEMS 16
static char reported_problems[TC_MAX_REPORTED_PROBLEMS][256];
static int	reported_problem_count = 0;

/* Cached built-ins. */
static Oid	cached_user_id = InvalidOid;
static char cached_user_name[NAMEDATALEN];
static char *cached_database = NULL;
static bool remote_address_known = false;
static char remote_address[NI_MAXHOST];
static bool has_remote_address = false;

/* ---- previous hooks ---- */

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ExecutorRun_hook_type prev_ExecutorRun = NULL;
static ExecutorFinish_hook_type prev_ExecutorFinish = NULL;
static ExecutorEnd_hook_type prev_ExecutorEnd = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

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

/* ---------------------------------------------------------------------- */
/* GUC hooks                                                              */
/* ---------------------------------------------------------------------- */

static bool
check_json_setting(bool (*check) (const char *), char **newval, const char *name)
{
	if (check(*newval))
		return true;
	GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
	GUC_check_errmsg("invalid value for parameter \"%s\"", name);
	GUC_check_errdetail("%s", tc_last_error());
	return false;
}

static bool
check_budgets(char **newval, void **extra, GucSource source)
{
	return check_json_setting(tc_check_budgets, newval, "traffic_control.budgets");
}

static bool
check_rules(char **newval, void **extra, GucSource source)
{
	return check_json_setting(tc_check_rules, newval, "traffic_control.rules");
}

static void
assign_config(const char *newval, void *extra)
{
	config_dirty = true;
}

/* ---------------------------------------------------------------------- */
/* Shared memory                                                          */
/* ---------------------------------------------------------------------- */

static Size
tc_header_size(void)
{
	return MAXALIGN(sizeof(TcShared));
}

/* With room to start the core's tables on a cache line, as their layouts expect. */
static Size
tc_memsize(void)
{
	return add_size(add_size(tc_header_size(), PG_CACHE_LINE_SIZE),
					tc_shared_size(tc_max_buckets, tc_max_patterns));
}

static void *
tc_core_address(void)
{
	return (void *) TYPEALIGN(PG_CACHE_LINE_SIZE, (char *) tc_shared + tc_header_size());
}

static void
tc_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(tc_memsize());
	RequestNamedLWLockTranche("traffic_control", 2);
}

static void
tc_shmem_startup(void)
{
	bool		found;
	bool		formatted = true;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	tc_shared = NULL;
	tc_core_attached = false;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	tc_shared = ShmemInitStruct("traffic_control", tc_memsize(), &found);
	if (!found)
	{
		LWLockPadded *locks = GetNamedLWLockTranche("traffic_control");

		tc_shared->bucket_lock = &locks[0].lock;
		tc_shared->pattern_lock = &locks[1].lock;
		ConditionVariableInit(&tc_shared->slot_freed);
		SpinLockInit(&tc_shared->mutex);
		tc_shared->reported_config_hash = 0;
		tc_shared->log_window = 0;
		tc_shared->log_window_lines = 0;
		tc_shared->log_suppressed = 0;
		tc_shared->core_size = tc_shared_size(tc_max_buckets, tc_max_patterns);
		formatted = tc_shared_format(tc_core_address(), tc_shared->core_size, tc_max_buckets,
									 tc_max_patterns);
	}
	LWLockRelease(AddinShmemInitLock);

	if (!formatted)
		ereport(FATAL, (errmsg_internal("%s", tc_last_error())));

	/*
	 * The postmaster builds the rule set once, so that every backend forked
	 * from it starts with it ready instead of parsing and compiling the JSON
	 * at its first statement (milliseconds with 1,000 rules). After a reload
	 * each process rebuilds its own before its next statement, as before.
	 */
	if (!IsUnderPostmaster)
		maybe_reload_config();
}

static void
bucket_lock_exclusive(void)
{
	LWLockAcquire(tc_shared->bucket_lock, LW_EXCLUSIVE);
}

static void
bucket_lock_shared(void)
{
	LWLockAcquire(tc_shared->bucket_lock, LW_SHARED);
}

static void
bucket_unlock(void)
{
	LWLockRelease(tc_shared->bucket_lock);
}

static void
pattern_lock_exclusive(void)
{
	LWLockAcquire(tc_shared->pattern_lock, LW_EXCLUSIVE);
}

static void
pattern_lock_shared(void)
{
	LWLockAcquire(tc_shared->pattern_lock, LW_SHARED);
}

static void
pattern_unlock(void)
{
	LWLockRelease(tc_shared->pattern_lock);
}

static const tc_lock_ops bucket_lock_ops = {bucket_lock_exclusive, bucket_lock_shared, bucket_unlock};
static const tc_lock_ops pattern_lock_ops = {pattern_lock_exclusive, pattern_lock_shared,
pattern_unlock};

void
ensure_core_attached(void)
{
	if (tc_core_attached)
		return;
	TC_CALL(tc_attach(tc_core_address(), tc_shared->core_size, tc_max_buckets, tc_max_patterns,
					  &bucket_lock_ops, &pattern_lock_ops));
	tc_core_attached = true;
}

/* ---------------------------------------------------------------------- */
/* Configuration                                                          */
/* ---------------------------------------------------------------------- */

static void
collect_problem(const char *rule, const char *message)
{
	/* Called from inside the core: no PostgreSQL function may be used here. */
	if (reported_problem_count >= TC_MAX_REPORTED_PROBLEMS)
		return;
	snprintf(reported_problems[reported_problem_count], sizeof(reported_problems[0]),
			 "rule \"%s\": %s", rule, message);
	reported_problem_count++;
}

/*
 * Rebuilds the rule set when a GUC changed. Only between statements: callers
 * check nesting_level == 0 first, so a statement never sees two rule sets.
 */
void
maybe_reload_config(void)
{
	uint32		config_hash;
	bool		first_to_report;

	if (!config_dirty)
		return;
	config_dirty = false;
	reported_problem_count = 0;
	if (!tc_load_config(tc_budgets, tc_rules, collect_problem))
	{
		ereport(WARNING,
				(errmsg("traffic_control: keeping the previous rules: %s", tc_last_error())));
		return;
	}
	config_empty = tc_config_empty();
	elog(DEBUG1, "traffic_control: configuration loaded");
	if (reported_problem_count == 0)
		return;

	/* Log each distinct configuration's problems once, not once per backend. */
	config_hash = hash_bytes((const unsigned char *) tc_budgets, strlen(tc_budgets)) ^
		hash_bytes((const unsigned char *) tc_rules, strlen(tc_rules));
	SpinLockAcquire(&tc_shared->mutex);
	first_to_report = tc_shared->reported_config_hash != config_hash;
	tc_shared->reported_config_hash = config_hash;
	SpinLockRelease(&tc_shared->mutex);
	if (first_to_report)
	{
		for (int i = 0; i < reported_problem_count; i++)
			ereport(LOG, (errmsg("traffic_control: %s", reported_problems[i])));
	}
}

/* ---------------------------------------------------------------------- */
/* Holdings                                                               */
/* ---------------------------------------------------------------------- */

static void tc_before_shmem_exit(int code, Datum arg);

/* Makes room for one more record before any slot is taken. */
static void
reserve_held_record(void)
{
	if (!exit_callback_registered)
	{
		before_shmem_exit(tc_before_shmem_exit, (Datum) 0);
		exit_callback_registered = true;
	}
	if (held_count < held_capacity)
		return;
	if (held == NULL)
	{
		held_capacity = 8;
		held = MemoryContextAlloc(TopMemoryContext, held_capacity * sizeof(TcHeld));
	}
	else
	{
		held = repalloc(held, held_capacity * 2 * sizeof(TcHeld));
		held_capacity *= 2;
	}
}

/* Process CPU time (user + system) in seconds; only read where it matters. */
static double
cpu_seconds_now(void)
{
	struct timespec now;

	if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now) != 0)
		return -1;
	return (double) now.tv_sec + (double) now.tv_nsec / 1e9;
}

/*
 * Reading the process CPU clock is a system call (a few microseconds on a
 * VM), as long as a whole cheap statement. So it is read for every statement
 * whose cost is unknown or predicted at 0.5 ms of CPU or more, and for cheap
 * ones at most once per TC_CHEAP_SAMPLE_INTERVAL_US of wall-clock time per
 * backend: every cheap statement of a backend running a few per second, about
 * one in 250 of one running 25,000 per second. That is enough to keep
 * learning their k, and bounds the cost of measuring to about 100 pairs of
 * clock reads per second and backend. An unmeasured statement keeps the debt
 * it was charged at admission.
 */
#define TC_CHEAP_STATEMENT_SECONDS 0.0005
#define TC_CHEAP_SAMPLE_INTERVAL_US 10000

static bool
worth_measuring(double predicted_seconds, int64 wall_now_us)
{
	static int64 last_cheap_sample_us = 0;

	if (predicted_seconds < 0 || predicted_seconds >= TC_CHEAP_STATEMENT_SECONDS)
		return true;
	/* A clock stepped back counts as time passed: sample again at once. */
	if (wall_now_us >= last_cheap_sample_us &&
		wall_now_us - last_cheap_sample_us < TC_CHEAP_SAMPLE_INTERVAL_US)
		return false;
	last_cheap_sample_us = wall_now_us;
	return true;
}

static void
release_token(int64 token, double cpu_start, bool completed)
{
	bool		wake = false;
	double		cpu_used = -1;

	if (cpu_start >= 0)
	{
		double		now = cpu_seconds_now();

		if (now >= cpu_start)
			cpu_used = now - cpu_start;
	}
	TC_CALL_QUIET(tc_release(token, cpu_used, completed, &wake));
	if (wake)
		ConditionVariableBroadcast(&tc_shared->slot_freed);
}

static void
release_record(int index, bool completed)
{
	TcHeld		record = held[index];

	/* Forget the record first: whatever happens next, it is released once. */
	held[index] = held[held_count - 1];
	held_count--;
	release_token(record.token, record.cpu_start, completed && record.ran_whole);
}

static void
release_query(QueryDesc *query)
{
	for (int i = held_count - 1; i >= 0; i--)
	{
		if (held[i].query == query)
			release_record(i, true);
	}
}

static void
release_owner(ResourceOwner owner)
{
	for (int i = held_count - 1; i >= 0; i--)
	{
		if (held[i].owner == owner && held[i].query != NULL)
			release_record(i, false);
	}
}

static void
release_executor_holdings(void)
{
	for (int i = held_count - 1; i >= 0; i--)
	{
		if (held[i].query != NULL)
			release_record(i, false);
	}
}

static void
tc_resource_release(ResourceReleasePhase phase, bool isCommit, bool isTopLevel, void *arg)
{
	/* PostgreSQL makes the owner being released current while calling us. */
	if (phase == RESOURCE_RELEASE_BEFORE_LOCKS && held_count > 0)
		release_owner(CurrentResourceOwner);
}

static void
tc_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* No executor outlives its transaction (held cursors are
			 * materialized at commit): anything left is released here. */
			if (held_count > 0)
				release_executor_holdings();
			break;
		default:
			break;
	}
}

static void
tc_before_shmem_exit(int code, Datum arg)
{
	bool		wake = false;

	held_count = 0;
	if (tc_shared == NULL || !tc_core_attached)
		return;
	/* FATAL while waiting for a slot exits without passing PG_CATCH. */
	if (waiter_registered)
	{
		waiter_registered = false;
		TC_CALL_QUIET(tc_waiter_remove());
	}
	TC_CALL_QUIET(tc_release_all(&wake));
	if (wake)
		ConditionVariableBroadcast(&tc_shared->slot_freed);
}

/* ---------------------------------------------------------------------- */
/* Admission                                                              */
/* ---------------------------------------------------------------------- */

const char *
command_name(CmdType command)
{
	switch (command)
	{
		case CMD_SELECT:
			return "select";
		case CMD_INSERT:
			return "insert";
		case CMD_UPDATE:
			return "update";
		case CMD_DELETE:
			return "delete";
		case CMD_MERGE:
			return "merge";
		default:
			return "utility";
	}
}

static int
plan_workers(Plan *plan)
{
	int			workers = 0;
	ListCell   *cell;
	List	   *children = NIL;

	if (plan == NULL)
		return 0;
	check_stack_depth();
	switch (nodeTag(plan))
	{
		case T_Gather:
			workers += ((Gather *) plan)->num_workers;
			break;
		case T_GatherMerge:
			workers += ((GatherMerge *) plan)->num_workers;
			break;
		case T_Append:
			children = ((Append *) plan)->appendplans;
			break;
		case T_MergeAppend:
			children = ((MergeAppend *) plan)->mergeplans;
			break;
		case T_BitmapAnd:
			children = ((BitmapAnd *) plan)->bitmapplans;
			break;
		case T_BitmapOr:
			children = ((BitmapOr *) plan)->bitmapplans;
			break;
		case T_SubqueryScan:
			workers += plan_workers(((SubqueryScan *) plan)->subplan);
			break;
		case T_CustomScan:
			children = ((CustomScan *) plan)->custom_plans;
			break;
		default:
			break;
	}
	foreach(cell, children)
		workers += plan_workers((Plan *) lfirst(cell));
	return workers + plan_workers(plan->lefttree) + plan_workers(plan->righttree);
}

/* Planned parallel workers of the whole statement (all Gather nodes). */
int
statement_workers(PlannedStmt *pstmt)
{
	int			workers;
	ListCell   *cell;

	if (!pstmt->parallelModeNeeded)
		return 0;
	workers = plan_workers(pstmt->planTree);
	foreach(cell, pstmt->subplans)
		workers += plan_workers((Plan *) lfirst(cell));
	return workers;
}

void
fill_builtins(tc_statement *statement)
{
	Oid			user_id = GetUserId();

	if (user_id != cached_user_id)
	{
		char	   *name = GetUserNameFromId(user_id, true);

		strlcpy(cached_user_name, name ? name : "", sizeof(cached_user_name));
		cached_user_id = user_id;
	}
	statement->username = cached_user_name[0] ? cached_user_name : NULL;

	if (cached_database == NULL && OidIsValid(MyDatabaseId))
	{
		char	   *name = get_database_name(MyDatabaseId);

		if (name)
			cached_database = MemoryContextStrdup(TopMemoryContext, name);
	}
	statement->database = cached_database;

	if (!remote_address_known)
	{
		remote_address_known = true;
		if (MyProcPort != NULL &&
			(MyProcPort->raddr.addr.ss_family == AF_INET ||
			 MyProcPort->raddr.addr.ss_family == AF_INET6) &&
			pg_getnameinfo_all(&MyProcPort->raddr.addr, MyProcPort->raddr.salen,
							   remote_address, sizeof(remote_address), NULL, 0,
							   NI_NUMERICHOST) == 0)
		{
			char	   *scope = strchr(remote_address, '%');

			if (scope)
				*scope = '\0';	/* fe80::1%eth0: the zone is not part of the address */
			has_remote_address = true;
		}
	}
	statement->remote_address = has_remote_address ? remote_address : NULL;
	statement->application_name = application_name;
}

static int64
unix_now_us(void)
{
	return GetCurrentTimestamp() +
		((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY);
}

/* ---- the server log of refusals and warnings ---- */

static emit_log_hook_type prev_emit_log_hook = NULL;

/* Set just before one of our log lines is raised; the hook clears it. */
static bool hide_next_from_client = false;

/*
 * Set just before a refusal whose log line the rate limit suppressed: its
 * ERROR then stays out of the server log too, so an overload of refusals
 * cannot flood the log through PostgreSQL's own ERROR entries either.
 */
static bool hide_next_refusal_from_log = false;

/*
 * Keeps our log lines out of the client's messages whatever their level
 * (INFO, NOTICE, WARNING would otherwise reach it). Only output_to_client
 * is changed, as the hook runs before elog.c sends the message anywhere.
 */
static void
tc_emit_log(ErrorData *edata)
{
	if (hide_next_from_client)
	{
		hide_next_from_client = false;
		if (edata->elevel < ERROR)
			edata->output_to_client = false;
	}
	if (hide_next_refusal_from_log)
	{
		hide_next_refusal_from_log = false;
		if (edata->elevel == ERROR && edata->sqlerrcode == ERRCODE_INSUFFICIENT_RESOURCES)
			edata->output_to_server = false;
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/* Would a message of this level reach the server log (elog.c's rule)? */
static bool
reaches_server_log(int elevel)
{
	/* For log_min_messages, LOG ranks between ERROR and FATAL. */
	if (elevel == LOG || elevel == LOG_SERVER_ONLY)
		return log_min_messages == LOG || log_min_messages <= ERROR;
	if (log_min_messages == LOG)
		return elevel >= FATAL;
	return elevel >= log_min_messages;
}

/*
 * Takes one line of the cluster-wide allowance of log_max_per_second lines
 * per wall-clock second (0 = no limit). False: suppress the line. True: log
 * it, after reporting *suppressed lines suppressed since the last one logged.
 */
static bool
take_log_line(int64 *suppressed)
{
	int64		second = GetCurrentTimestamp() / USECS_PER_SEC;
	int			limit = tc_log_max_per_second;
	bool		allowed;

	SpinLockAcquire(&tc_shared->mutex);
	if (tc_shared->log_window != second)
	{
		tc_shared->log_window = second;
		tc_shared->log_window_lines = 0;
	}
	allowed = limit <= 0 || tc_shared->log_window_lines < limit;
	if (allowed)
	{
		tc_shared->log_window_lines++;
		*suppressed = tc_shared->log_suppressed;
		tc_shared->log_suppressed = 0;
	}
	else
		tc_shared->log_suppressed++;
	SpinLockRelease(&tc_shared->mutex);
	return allowed;
}

/* Appends "text" with " and \ escaped, as the core quotes names. */
static void
append_quoted(StringInfo buf, const char *text)
{
	appendStringInfoChar(buf, '"');
	for (const char *c = text ? text : ""; *c != '\0'; c++)
	{
		if (*c == '"' || *c == '\\')
			appendStringInfoChar(buf, '\\');
		appendStringInfoChar(buf, *c);
	}
	appendStringInfoChar(buf, '"');
}

/*
 * One line for the server log, never for the client:
 *   traffic_control: refused: budget "b", rule "r", reason max_concurrent,
 *   application_name "psql", user "alice"
 * with the client's DETAIL. A refusal's statement and context are left to
 * the ERROR that follows.
 */
static bool
log_report(const tc_report *report, bool refused, int elevel)
{
	int64		suppressed = 0;
	StringInfoData line;

	if (!take_log_line(&suppressed))
		return false;
	if (suppressed > 0)
	{
		hide_next_from_client = true;
		ereport(elevel,
				(errhidestmt(true), errhidecontext(true),
				 errmsg_internal("traffic_control: " INT64_FORMAT
								 " more refusal and warning log line%s suppressed"
								 " (log_max_per_second = %d)",
								 suppressed, suppressed == 1 ? "" : "s",
								 tc_log_max_per_second)));
		hide_next_from_client = false;
	}

	initStringInfo(&line);
	appendStringInfoString(&line, refused ? "traffic_control: refused: budget "
						   : "traffic_control: warned: budget ");
	append_quoted(&line, report->budget);
	appendStringInfoString(&line, ", rule ");
	append_quoted(&line, report->rule);
	appendStringInfo(&line, ", reason %s, application_name ",
					 report->limit_name ? report->limit_name : "");
	append_quoted(&line, application_name);
	appendStringInfoString(&line, ", user ");
	append_quoted(&line, cached_user_name);

	hide_next_from_client = true;
	ereport(elevel,
			(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
			 errmsg_internal("%s", line.data),
			 report->detail ? errdetail_internal("%s", report->detail) : 0,
			 errhidestmt(refused), errhidecontext(refused)));
	hide_next_from_client = false;
	pfree(line.data);
	return true;
}

/*
 * Logs the warnings and the refusal of one decision, before they are sent.
 * Returns true when the refusal's line was suppressed by the rate limit.
 */
static bool
log_admission(const tc_admission *admission)
{
	int			elevel = tc_log_level == LOG ? LOG_SERVER_ONLY : tc_log_level;

	if (tc_log_level == TC_LOG_OFF || !reaches_server_log(elevel))
		return false;
	for (int i = 0; i < admission->notice_count; i++)
		log_report(&admission->notices[i], false, elevel);
	if (admission->outcome == TC_REFUSED)
		return !log_report(&admission->refusal, true, elevel);
	return false;
}

static void
send_notices(const tc_admission *admission)
{
	for (int i = 0; i < admission->notice_count; i++)
	{
		const tc_report *notice = &admission->notices[i];

		ereport(NOTICE,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg_internal("%s", notice->message),
				 errdetail_internal("%s", notice->detail),
				 notice->hint ? errhint("%s", notice->hint) : 0));
	}
}

double
effective_server_cores(void)
{
	static double online_cpus = 0;

	if (tc_server_cores > 0)
		return tc_server_cores;
	if (online_cpus <= 0)
	{
		long		n = sysconf(_SC_NPROCESSORS_ONLN);

		online_cpus = n > 0 ? (double) n : 1;
	}
	return online_cpus;
}

/*
 * Waits for a slot after a first attempt said TC_MUST_WAIT: retries whenever
 * a slot is freed, until the budget's queue timeout, then makes the final
 * attempt. *admission receives the last attempt's outcome. Only statements
 * that must wait pay for the error handling this needs.
 */
static void
wait_for_admission(tc_statement *statement, tc_admission *admission)
{
	TimestampTz deadline;

	/* Prepare before re-checking, so no wakeup can be missed. */
	ConditionVariablePrepareToSleep(&tc_shared->slot_freed);
	PG_TRY();
	{
		TC_CALL(tc_waiter_add());
		waiter_registered = true;
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											   admission->queue_timeout_ms);
		for (;;)
		{
			tc_attempt	attempt = GetCurrentTimestamp() < deadline ?
				TC_ATTEMPT_RETRY : TC_ATTEMPT_FINAL;

			statement->wall_now_us = unix_now_us();
			TC_CALL(tc_admit(statement, attempt, admission));
			if (admission->outcome != TC_MUST_WAIT)
				break;
			{
				long		remaining_ms =
					TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);

				if (remaining_ms > 0)
					ConditionVariableTimedSleep(&tc_shared->slot_freed, remaining_ms,
												PG_WAIT_EXTENSION);
			}
		}
	}
	PG_CATCH();
	{
		ConditionVariableCancelSleep();
		if (waiter_registered)
		{
			waiter_registered = false;
			TC_CALL_QUIET(tc_waiter_remove());
		}
		PG_RE_THROW();
	}
	PG_END_TRY();

	ConditionVariableCancelSleep();
	waiter_registered = false;
	TC_CALL(tc_waiter_remove());
}

/*
 * Decides one statement. Returns the holding token (0 when nothing is held)
 * and sets *cpu_start when the statement's CPU time must be measured, or
 * raises the refusal. Waits for a slot when a budget has a queue timeout.
 */
static int64
admit_statement(const char *source, int location, int length, const char *command,
				uint64 query_id, int workers, double plan_cost, double *cpu_start)
{
	tc_statement statement;
	tc_admission admission;
	bool		refusal_log_suppressed;

	memset(&statement, 0, sizeof(statement));
	if (source != NULL)
	{
		if (location < 0)
			location = 0;
		statement.text = source + location;
		statement.text_len = length > 0 ? (size_t) length : strlen(source + location);
	}
	fill_builtins(&statement);
	statement.command = command;
	statement.query_id = (int64) query_id;
	statement.has_query_id = query_id != UINT64CONST(0);
	statement.parallel_workers = workers;
	statement.plan_cost = plan_cost;
	statement.server_cores = effective_server_cores();
	statement.message_prefix = tc_message_prefix;
	*cpu_start = -1;

	reserve_held_record();

	statement.wall_now_us = unix_now_us();
	TC_CALL(tc_admit(&statement, TC_ATTEMPT_FIRST, &admission));
	if (admission.outcome == TC_MUST_WAIT)
		wait_for_admission(&statement, &admission);

	refusal_log_suppressed = log_admission(&admission);
	send_notices(&admission);
	if (admission.outcome == TC_REFUSED)
	{
		hide_next_refusal_from_log = refusal_log_suppressed;
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg_internal("%s", admission.refusal.message),
				 errdetail_internal("%s", admission.refusal.detail),
				 admission.refusal.hint ? errhint("%s", admission.refusal.hint) : 0));
	}
	if (admission.measure_cpu && admission.holding != 0 &&
		worth_measuring(admission.predicted_seconds, statement.wall_now_us))
		*cpu_start = cpu_seconds_now();
	return admission.holding;
}

/* Is this backend, at this depth, one that admits statements at all? */
static bool
admission_active(void)
{
	if (!tc_enabled || tc_shared == NULL || IsParallelWorker())
		return false;
	if (tc_track == TC_TRACK_TOP && nesting_level > 0)
		return false;
	if (nesting_level == 0)
		maybe_reload_config();
	if (config_empty)
		return false;
	ensure_core_attached();
	return true;
}

/* ---------------------------------------------------------------------- */
/* Hooks                                                                  */
/* ---------------------------------------------------------------------- */

static void
tc_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	if ((eflags & EXEC_FLAG_EXPLAIN_ONLY) == 0 && admission_active())
	{
		PlannedStmt *pstmt = queryDesc->plannedstmt;
		int64		token;
		double		cpu_start;

		token = admit_statement(queryDesc->sourceText, pstmt->stmt_location, pstmt->stmt_len,
								command_name(pstmt->commandType), pstmt->queryId,
								statement_workers(pstmt),
								pstmt->planTree ? pstmt->planTree->total_cost : -1,
								&cpu_start);
		if (token != 0)
		{
			held[held_count].token = token;
			held[held_count].query = queryDesc;
			held[held_count].owner = CurrentResourceOwner;
			held[held_count].cpu_start = cpu_start;
			held[held_count].runs = 0;
			held[held_count].ran_whole = false;
			held_count++;
		}
	}

	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/*
 * Marks whether the statement's executor ran it whole in one run, the only
 * case that teaches the estimator what its pattern costs: one run, not cut
 * short by a row limit (no limit, or fewer rows than the limit). A cursor or
 * a portal fetching part of its rows, or fetching in several runs with other
 * statements in between, would teach it too little or too much. A row limit
 * set through SPI (PL/pgSQL's SELECT INTO asks for 1 or 2 rows) is how the
 * function always runs that query, so that run teaches its cost as well.
 */
static void
note_run(QueryDesc *queryDesc, uint64 count)
{
	for (int i = 0; i < held_count; i++)
	{
		if (held[i].query != queryDesc)
			continue;
		held[i].runs++;
		held[i].ran_whole = held[i].runs == 1 &&
			(count == 0 || queryDesc->estate->es_processed < count ||
			 queryDesc->dest->mydest == DestSPI);
	}
}

static void
tc_ExecutorRun(QueryDesc *queryDesc, ScanDirection direction, uint64 count, bool execute_once)
{
	nesting_level++;
	PG_TRY();
	{
		if (prev_ExecutorRun)
			prev_ExecutorRun(queryDesc, direction, count, execute_once);
		else
			standard_ExecutorRun(queryDesc, direction, count, execute_once);
	}
	PG_FINALLY();
	{
		nesting_level--;
	}
	PG_END_TRY();
	if (held_count > 0)
		note_run(queryDesc, count);
}

static void
tc_ExecutorFinish(QueryDesc *queryDesc)
{
	nesting_level++;
	PG_TRY();
	{
		if (prev_ExecutorFinish)
			prev_ExecutorFinish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
	}
	PG_FINALLY();
	{
		nesting_level--;
	}
	PG_END_TRY();
}

static void
tc_ExecutorEnd(QueryDesc *queryDesc)
{
	if (held_count > 0)
		release_query(queryDesc);

	if (prev_ExecutorEnd)
		prev_ExecutorEnd(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
}

/*
 * Utility statements whose cost is an inner query that the executor admits
 * on its own (EXECUTE, DECLARE CURSOR, EXPLAIN ANALYZE, CREATE TABLE AS, COPY (query) TO), or
 * that must never be refused (transaction control, session settings).
 * They are not admitted themselves and do not count as a nesting level, so
 * their inner query is admitted as a top-level statement.
 */
bool
is_pass_through_utility(Node *statement)
{
	switch (nodeTag(statement))
	{
		case T_TransactionStmt:
		case T_PrepareStmt:
		case T_ExecuteStmt:
		case T_DeallocateStmt:
		case T_DeclareCursorStmt:
		case T_FetchStmt:
		case T_ClosePortalStmt:
		case T_ExplainStmt:
		case T_CreateTableAsStmt:
		case T_VariableSetStmt:
		case T_VariableShowStmt:
		case T_DiscardStmt:
			return true;
		case T_CopyStmt:
			/* COPY (query) TO: the query is admitted; COPY FROM/TO a table is not */
			return ((CopyStmt *) statement)->query != NULL;
		default:
			return false;
	}
}

static void
tc_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				  ProcessUtilityContext context, ParamListInfo params,
				  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *statement = pstmt->utilityStmt;
	volatile int64 token = 0;
	double		cpu_start = -1;

	if (is_pass_through_utility(statement))
	{
		if (prev_ProcessUtility)
			prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
								dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
									queryEnv, dest, qc);
		return;
	}

	if (tc_track_utility && admission_active())
		token = admit_statement(queryString, pstmt->stmt_location, pstmt->stmt_len, "utility",
								pstmt->queryId, 0, -1, &cpu_start);

	nesting_level++;
	PG_TRY();
	{
		if (prev_ProcessUtility)
			prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
								dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
									queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		nesting_level--;
		if (token != 0)
			release_token(token, cpu_start, false);
		PG_RE_THROW();
	}
	PG_END_TRY();
	nesting_level--;
	if (token != 0)
		release_token(token, cpu_start, true);
}

/* ---------------------------------------------------------------------- */
/* Module load                                                            */
/* ---------------------------------------------------------------------- */

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("traffic_control must be loaded via shared_preload_libraries"),
				 errhint("Add traffic_control to shared_preload_libraries in postgresql.conf "
						 "and restart the server.")));

	DefineCustomBoolVariable("traffic_control.enabled",
							 "Master switch: admit statements against budgets.",
							 "A superuser may turn it off for one session.",
							 &tc_enabled, true, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("traffic_control.rules",
							   "Rules (JSON array) sorting statements into budgets.",
							   NULL, &tc_rules, "[]", PGC_SIGHUP, 0,
							   check_rules, assign_config, NULL);
	DefineCustomStringVariable("traffic_control.budgets",
							   "Budgets (JSON array): limits for the traffic rules put in them.",
							   NULL, &tc_budgets, "[]", PGC_SIGHUP, 0,
							   check_budgets, assign_config, NULL);
	DefineCustomRealVariable("traffic_control.server_cores",
							 "CPU-seconds per second that make a full server (0 = online CPUs).",
							 NULL, &tc_server_cores, 0, 0, 1000000, PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("traffic_control.max_buckets",
							"Shared-memory slots for budget instances (budgets x each values).",
							NULL, &tc_max_buckets, 10000, 16, 10000000, PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("traffic_control.max_patterns",
							"Shared-memory slots for query patterns of the cost estimator.",
							NULL, &tc_max_patterns, 10000, 16, 10000000, PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomStringVariable("traffic_control.message_prefix",
							   "Prefix of every notice and error traffic_control sends.",
							   NULL, &tc_message_prefix, "[PGINSIGHTS] Traffic Control:",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomEnumVariable("traffic_control.track",
							 "Admit only top-level statements (top) or nested ones too (all).",
							 NULL, &tc_track, TC_TRACK_TOP, track_options, PGC_SUSET, 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("traffic_control.track_utility",
							 "Admit utility statements (DDL, COPY, VACUUM, CALL, DO ...).",
							 NULL, &tc_track_utility, true, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomEnumVariable("traffic_control.log_level",
							 "Level of the server log lines for refusals and warnings (off = none).",
							 "The lines go to the server log only, never to the client.",
							 &tc_log_level, LOG, log_level_options, PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("traffic_control.log_max_per_second",
							"Refusal and warning log lines per second, cluster-wide (0 = no limit).",
							NULL, &tc_log_max_per_second, 10, 0, 1000000, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	MarkGUCPrefixReserved("traffic_control");

	/* query_id is a built-in metadata key. */
	EnableQueryId();

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = tc_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = tc_shmem_startup;
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = tc_ExecutorStart;
	prev_ExecutorRun = ExecutorRun_hook;
	ExecutorRun_hook = tc_ExecutorRun;
	prev_ExecutorFinish = ExecutorFinish_hook;
	ExecutorFinish_hook = tc_ExecutorFinish;
	prev_ExecutorEnd = ExecutorEnd_hook;
	ExecutorEnd_hook = tc_ExecutorEnd;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = tc_ProcessUtility;
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = tc_emit_log;

	RegisterResourceReleaseCallback(tc_resource_release, NULL);
	RegisterXactCallback(tc_xact_callback, NULL);
}
