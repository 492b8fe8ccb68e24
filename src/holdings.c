/*
 * holdings.c — the concurrency slots this backend holds and every path that
 * gives them back (waiting for one is queue.c's).
 *
 * Slot release
 * ------------
 * A statement that takes slots gets one holding token. The token is recorded
 * here the moment it is granted, before anything that can fail (a NOTICE, a
 * log line), with the QueryDesc (executor) or the utility statement's
 * nesting level, and the resource owner that was current at admission. It
 * is released by the first of: ExecutorEnd; the release of that resource
 * owner (ERROR, cancel, statement_timeout, subtransaction rollback, a portal
 * dropped late); the end of the transaction (safety net for executor
 * holdings); PG_CATCH around a utility statement; and a before_shmem_exit
 * callback (FATAL, terminate, disconnect). Utility holdings ignore resource
 * owners and transaction ends, since VACUUM and CREATE INDEX CONCURRENTLY
 * commit transactions of their own while they run. The core ignores a token
 * that was already released, so a second attempt is harmless. A
 * crash-restart formats the table anew. Every release wakes the waiters it
 * lets in (wake_backends), and the exit callback also takes the backend out
 * of a queue it still waits in.
 *
 * A cursor that a function opens (nested, so not admitted under track = top)
 * gets a pending record, without a token: the hooks admit it at its first
 * top-level run (a FETCH, or a protocol Execute of the portal), and the
 * pending record goes wherever the cursor's would.
 *
 * Locking: none of its own.
 */
#include "postgres.h"

#include <time.h>

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "traffic_control.h"

/*
 * One record per statement that holds slots (token != 0), or per cursor
 * opened by a function that is admitted at its first top-level fetch
 * (pending, token 0).
 */
typedef struct TcHeld
{
	int64		token;			/* 0 while pending */
	QueryDesc  *query;			/* executor holding; NULL for a utility statement */
	int			utility_level;	/* a utility statement's nesting level */
	ResourceOwner owner;		/* current at admission */
	bool		pending;		/* opened nested; admitted at its first top-level run */
	bool		measured;		/* its CPU time is measured */
	bool		running;		/* measured and between cpu_start and now */
	double		cpu_start;		/* process CPU seconds when it last started running */
	double		cpu_spent;		/* CPU seconds of its runs before that */
	uint64		worker_cpu_start_ns;	/* its workers' CPU counter at admission */
	int			cpu_priority;	/* the CPU priority it runs at (0 = normal) */
	int			runs;			/* ExecutorRun calls so far */
	bool		ran_whole;		/* one run, not cut short: the estimator may learn */
	bool		owns_duration_timer;	/* it armed the max_duration_ms timer */
	int64		warn_after_ms;	/* a warn budget's max_duration_ms (0: none) */
	TimestampTz started;		/* when it was admitted (with warn_after_ms) */
	char	   *duration_warning;	/* the NOTICE and its DETAIL (TopMemoryContext) */
	char	   *duration_warning_detail;
	/* Canceled by max_duration_ms: quarantine its pattern in this budget. */
	double		quarantine_s;	/* 0: no quarantine */
	char		quarantine_budget[TC_SHED_NAME_BYTES];
	uint64		query_id;
	Oid			user_id;
} TcHeld;

static TcHeld *held = NULL;
int			held_count = 0;
static int	held_capacity = 0;
static bool exit_callback_registered = false;

static void tc_before_shmem_exit(int code, Datum arg);

void
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

static TcHeld *
append_record(int64 token, QueryDesc *query, int utility_level)
{
	TcHeld	   *record;

	Assert(held_count < held_capacity);
	record = &held[held_count++];
	record->token = token;
	record->query = query;
	record->utility_level = utility_level;
	record->owner = CurrentResourceOwner;
	record->pending = false;
	record->measured = false;
	record->running = false;
	record->cpu_start = 0;
	record->cpu_spent = 0;
	record->runs = 0;
	record->ran_whole = false;
	record->worker_cpu_start_ns = 0;
	record->cpu_priority = 0;
	record->owns_duration_timer = false;
	record->warn_after_ms = 0;
	record->started = 0;
	record->duration_warning = record->duration_warning_detail = NULL;
	record->quarantine_s = 0;
	return record;
}

/*
 * The backend runs at the weakest CPU priority its live holdings ask for
 * (statements nested with track = all, open cursors), and as it started
 * when none does: applied after every change of the records. After the
 * release of a top-level statement a restore may linger (priority.c); after
 * a nested one's, the statement around it goes on at its own priority now.
 */
static void
apply_held_priority(bool after_release)
{
	int			priority = 0;

	for (int i = 0; i < held_count; i++)
		priority = Max(priority, held[i].cpu_priority);
	apply_cpu_priority(priority, after_release && between_top_level_statements());
}

void
record_holding(int64 token, QueryDesc *query, int utility_level, bool measure_cpu,
			   int cpu_priority)
{
	TcHeld	   *record = append_record(token, query, utility_level);

	if (measure_cpu)
	{
		record->cpu_start = cpu_seconds_now();
		record->measured = record->running = record->cpu_start >= 0;
		record->worker_cpu_start_ns =
			pg_atomic_read_u64(&tc_shared->backends[TC_PROC_NUMBER(MyProc)].worker_cpu_ns);
	}
	if (cpu_priority > 0 && cpu_priority_takes_effect())
	{
		record->cpu_priority = cpu_priority;
		apply_held_priority(false);
	}
}

void
record_max_duration(const tc_admission *admission, uint64 query_id)
{
	TcHeld	   *record = &held[held_count - 1];

	if (admission->cancel_after_ms > 0)
	{
		record->owns_duration_timer =
			arm_max_duration(admission->cancel_after_ms, &admission->duration_cancel,
							 admission->duration_cancel_version);
		if (record->owns_duration_timer && !record->measured)
			record->started = GetCurrentTimestamp();
		if (record->owns_duration_timer && admission->cancel_quarantine_s > 0 && query_id != 0)
		{
			record->quarantine_s = admission->cancel_quarantine_s;
			strlcpy(record->quarantine_budget, admission->duration_cancel.budget,
					sizeof(record->quarantine_budget));
			record->query_id = query_id;
			record->user_id = GetUserId();
		}
	}
	if (admission->warn_after_ms > 0)
	{
		record->warn_after_ms = admission->warn_after_ms;
		record->started = GetCurrentTimestamp();
		record->duration_warning =
			MemoryContextStrdup(TopMemoryContext,
								client_safe(admission->duration_warning.message));
		record->duration_warning_detail =
			MemoryContextStrdup(TopMemoryContext,
								client_safe(admission->duration_warning.detail));
	}
}

/*
 * A statement of a warn budget with max_duration_ms that ran to its end
 * and took longer gets the NOTICE the budget would have canceled it with.
 * Called after its slots are given back: a NOTICE can fail.
 */
static void
warn_if_ran_too_long(TcHeld *record, bool completed)
{
	bool		too_long = completed &&
		TimestampDifferenceExceeds(record->started, GetCurrentTimestamp(),
								   (int) Min(record->warn_after_ms, (int64) PG_INT32_MAX));

	if (too_long)
		ereport(NOTICE,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg_internal("%s", record->duration_warning),
				 errdetail_internal("%s", record->duration_warning_detail)));
	pfree(record->duration_warning);
	pfree(record->duration_warning_detail);
}

void
record_pending(QueryDesc *query)
{
	reserve_held_record();
	append_record(0, query, 0)->pending = true;
}

double
cpu_seconds_now(void)
{
	struct timespec now;

	if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now) != 0)
		return -1;
	return (double) now.tv_sec + (double) now.tv_nsec / 1e9;
}

/*
 * CPU seconds a record's statement used, its parallel workers' included
 * (they have ended: the executor waits for them before it ends); <0 when
 * not measured.
 */
static double
cpu_used(const TcHeld *record)
{
	double		used = record->cpu_spent;
	uint64		worker_ns;

	if (!record->measured)
		return -1;
	worker_ns = pg_atomic_read_u64(&tc_shared->backends[TC_PROC_NUMBER(MyProc)].worker_cpu_ns);
	if (worker_ns >= record->worker_cpu_start_ns)
		used += (double) (worker_ns - record->worker_cpu_start_ns) / 1e9;
	if (record->running)
	{
		double		now = cpu_seconds_now();

		if (now < record->cpu_start)
			return -1;
		used += now - record->cpu_start;
	}
	return used;
}

static void
release_record(int index, bool completed)
{
	TcHeld		record = held[index];
	tc_wakeups	wake;
	bool		canceled;
	double		cpu;

	/* Forget the record first: whatever happens next, it is released once. */
	held[index] = held[held_count - 1];
	held_count--;
	if (record.cpu_priority > 0)
		apply_held_priority(true);
	canceled = !completed && record.owns_duration_timer && duration_cancel_fired();
	if (record.owns_duration_timer)
		disarm_max_duration();
	if (record.token != 0)
	{
		cpu = cpu_used(&record);
		if (canceled && cpu < 0 && record.started != 0)
		{
			/*
			 * A cheap-looking statement that was not sampled (see
			 * statement.c) and ran until max_duration_ms canceled it: its
			 * running time is charged, at most what one process can have
			 * used.
			 */
			cpu = (double) (GetCurrentTimestamp() - record.started) / USECS_PER_SEC;
		}
		if (tc_release(record.token, cpu, completed && record.ran_whole, canceled, &wake))
			wake_backends(&wake);
		else
			elog(WARNING, "%s", tc_last_error());
	}
	if (canceled && record.quarantine_s > 0)
		quarantine_pattern(record.quarantine_budget, record.quarantine_s,
						   TC_QUARANTINE_MAX_DURATION, record.query_id, record.user_id);
	if (record.duration_warning != NULL)
		warn_if_ran_too_long(&record, completed);
}

void
release_query(QueryDesc *query)
{
	for (int i = held_count - 1; i >= 0; i--)
	{
		if (held[i].query == query)
			release_record(i, true);
	}
}

void
release_utility(int utility_level, bool completed)
{
	for (int i = held_count - 1; i >= 0; i--)
	{
		if (held[i].query == NULL && held[i].utility_level == utility_level)
		{
			/* A utility statement runs once, whole. */
			held[i].ran_whole = completed;
			release_record(i, completed);
		}
	}
}

bool
take_pending(QueryDesc *query)
{
	for (int i = held_count - 1; i >= 0; i--)
	{
		if (held[i].query == query && held[i].pending)
		{
			held[i] = held[held_count - 1];
			held_count--;
			return true;
		}
	}
	return false;
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

void
before_run(QueryDesc *query)
{
	for (int i = 0; i < held_count; i++)
	{
		if (held[i].query == query && held[i].owns_duration_timer)
			cancel_if_duration_expired();
		if (held[i].query == query && held[i].measured && !held[i].running)
		{
			held[i].cpu_start = cpu_seconds_now();
			held[i].running = held[i].cpu_start >= 0;
		}
	}
}

/*
 * Marks whether the statement's executor ran it whole in one run, the only
 * case that teaches the estimator what its pattern costs: one run, not cut
 * short by a row limit (no limit, or fewer rows than the limit). A cursor or
 * a portal fetching part of its rows, or fetching in several runs with other
 * statements in between, would teach it too little or too much. A row limit
 * set through SPI (PL/pgSQL's SELECT INTO asks for 1 or 2 rows) is how the
 * function always runs that query, so that run teaches its cost as well.
 *
 * A run with a row limit may be followed by more (a cursor's fetches): its
 * CPU clock stops here and starts again at the next run, so the statements
 * run between two fetches are not charged to it.
 */
void
after_run(QueryDesc *query, uint64 count)
{
	for (int i = 0; i < held_count; i++)
	{
		TcHeld	   *record = &held[i];

		if (record->query != query)
			continue;
		record->runs++;
		record->ran_whole = record->runs == 1 &&
			(count == 0 || query->estate->es_processed < count ||
			 query->dest->mydest == DestSPI);
		if (count != 0 && record->running)
		{
			double		now = cpu_seconds_now();

			if (now >= record->cpu_start)
				record->cpu_spent += now - record->cpu_start;
			record->running = false;
		}
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
	tc_wakeups	wake;

	held_count = 0;
	/* The process ends: no priority to restore. */
	if (!core_attached())
		return;
	/* FATAL while waiting for a slot exits without passing PG_CATCH. */
	leave_queue_quietly();
	if (tc_release_all(&wake))
		wake_backends(&wake);
	else
		elog(WARNING, "%s", tc_last_error());
}

/* ---- parallel workers ---- */

static double worker_cpu_start = -1;

void
worker_started(void)
{
	take_leader_priority();
	worker_cpu_start = cpu_seconds_now();
}

void
worker_ended(void)
{
	double		now = cpu_seconds_now();
	PGPROC	   *leader = MyProc->lockGroupLeader;

	if (worker_cpu_start >= 0 && now >= worker_cpu_start && leader != NULL &&
		TC_PROC_NUMBER(leader) < MaxBackends)
		pg_atomic_fetch_add_u64(&tc_shared->backends[TC_PROC_NUMBER(leader)].worker_cpu_ns,
								(uint64) ((now - worker_cpu_start) * 1e9));
	worker_cpu_start = -1;
}

void
register_release_callbacks(void)
{
	RegisterResourceReleaseCallback(tc_resource_release, NULL);
	RegisterXactCallback(tc_xact_callback, NULL);
}
