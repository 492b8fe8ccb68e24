/*
 * holdings.c — the concurrency slots this backend holds, every path that
 * gives them back, and waiting for one.
 *
 * Slot release
 * ------------
 * A statement that takes slots gets one holding token. The token is recorded
 * here with the QueryDesc (executor) or kept by the utility hook, with the
 * resource owner that was current at admission. It is released by the first
 * of: ExecutorEnd; the release of that resource owner (ERROR, cancel,
 * statement_timeout, subtransaction rollback, a portal dropped late); the end
 * of the transaction (safety net for executor holdings); PG_CATCH around a
 * utility statement; and a before_shmem_exit callback (FATAL, terminate,
 * disconnect). The core ignores a token that was already released, so a
 * second attempt is harmless. A crash-restart formats the table anew.
 *
 * Locking: none of its own. Waiters sleep on TcShared.slot_freed, a
 * condition variable that every release which may admit a waiter
 * broadcasts.
 */
#include "postgres.h"

#include <time.h>

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "traffic_control.h"

typedef struct TcHeld
{
	int64		token;
	QueryDesc  *query;			/* executor holding */
	ResourceOwner owner;		/* current at admission */
	double		cpu_start;		/* process CPU seconds at admission; <0: not measured */
	int			runs;			/* ExecutorRun calls so far */
	bool		ran_whole;		/* one run, not cut short: the estimator may learn */
} TcHeld;

static TcHeld *held = NULL;
int			held_count = 0;
static int	held_capacity = 0;
static bool exit_callback_registered = false;
static bool waiter_registered = false;	/* counted in the table's waiters */

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

void
record_holding(int64 token, QueryDesc *query, double cpu_start)
{
	Assert(held_count < held_capacity);
	held[held_count].token = token;
	held[held_count].query = query;
	held[held_count].owner = CurrentResourceOwner;
	held[held_count].cpu_start = cpu_start;
	held[held_count].runs = 0;
	held[held_count].ran_whole = false;
	held_count++;
}

double
cpu_seconds_now(void)
{
	struct timespec now;

	if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now) != 0)
		return -1;
	return (double) now.tv_sec + (double) now.tv_nsec / 1e9;
}

void
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

void
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

/*
 * Marks whether the statement's executor ran it whole in one run, the only
 * case that teaches the estimator what its pattern costs: one run, not cut
 * short by a row limit (no limit, or fewer rows than the limit). A cursor or
 * a portal fetching part of its rows, or fetching in several runs with other
 * statements in between, would teach it too little or too much. A row limit
 * set through SPI (PL/pgSQL's SELECT INTO asks for 1 or 2 rows) is how the
 * function always runs that query, so that run teaches its cost as well.
 */
void
note_run(QueryDesc *query, uint64 count)
{
	for (int i = 0; i < held_count; i++)
	{
		if (held[i].query != query)
			continue;
		held[i].runs++;
		held[i].ran_whole = held[i].runs == 1 &&
			(count == 0 || query->estate->es_processed < count ||
			 query->dest->mydest == DestSPI);
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
	if (!core_attached())
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

/*
 * Retries whenever a slot is freed, until the budget's queue timeout, then
 * makes the final attempt. Only statements that must wait pay for the error
 * handling this needs.
 */
void
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

void
register_release_callbacks(void)
{
	RegisterResourceReleaseCallback(tc_resource_release, NULL);
	RegisterXactCallback(tc_xact_callback, NULL);
}
