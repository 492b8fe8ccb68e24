/*
 * queue.c — waiting for a slot (queue_timeout_ms): the wait, waking the
 * waiters a release lets in, and refusing a wait that can never end.
 *
 * The queues themselves are the core's (src/core/bucket_table.cpp): one FIFO
 * per budget instance in shared memory. A statement that must wait is put at
 * the tail of one by tc_admit and sleeps on its own latch. Whatever frees
 * units of the instance (a release, a waiter admitted or leaving) makes the
 * core return the backends at the head of the queue that now fit, and the
 * caller sets their latches here (wake_backends): a release wakes only the
 * waiters it can admit, in order, and a newcomer queues behind them.
 *
 * A wait that can never end: PostgreSQL's deadlock detector cannot see our
 * queues, so every deadlock_timeout a waiter looks at the backends holding
 * units of the instance it waits for. If a holder waits, directly or through
 * other lock waits, for a heavyweight lock this backend holds (the chain
 * pg_blocking_pids shows), and the statement cannot fit while such holders
 * keep their units, it is refused (SQLSTATE 53000, a DETAIL naming the
 * holder). A backend that itself holds the units it would need (an open
 * cursor, an outer statement of the budget) is refused by the core at once.
 *
 * Every way out of a wait leaves the queue: admission or refusal (the core
 * does it in the same decision), an ERROR or cancel while waiting (PG_CATCH
 * here), FATAL or exit (the before_shmem_exit callback in holdings.c).
 *
 * Locking: none of its own. The core guards each queue with its bucket
 * entry's spinlock and never calls PostgreSQL; SetLatch and the lock
 * manager's pg_blocking_pids are called here, outside any core lock.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "traffic_control.h"

/* Processes a deadlock check follows through lock waits, at most. */
#define TC_MAX_LOCK_CHAIN 64

void
wake_backends(const tc_wakeups *wake)
{
	for (int i = 0; i < wake->count; i++)
	{
		int32		backend = wake->backends[i];

		if (backend >= 0 && (uint32) backend < ProcGlobal->allProcCount)
			SetLatch(&ProcGlobal->allProcs[backend].procLatch);
	}
}

void
leave_queue_quietly(void)
{
	tc_wakeups	wake;

	if (tc_waiter_leave(&wake))
		wake_backends(&wake);
	else
		elog(WARNING, "%s", tc_last_error());
}

/* Raises the core's last error, after taking this backend out of its queue. */
static void
raise_leaving_queue(void)
{
	char	   *message = pstrdup(tc_last_error());

	leave_queue_quietly();
	ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR), errmsg_internal("%s", message)));
}

void
admit_attempt(tc_statement *statement, tc_attempt attempt, tc_admission *admission)
{
	statement->wall_now_us = unix_now_us();
	if (!tc_admit(statement, attempt, admission))
		raise_leaving_queue();
	wake_backends(&admission->wake);
}

/*
 * Does the process `pid` wait, directly or through a chain of heavyweight
 * lock waits, for a lock this backend holds? Follows pg_blocking_pids (which
 * reports a parallel query's waits under its leader) from `pid`, visiting at
 * most TC_MAX_LOCK_CHAIN processes.
 */
static bool
waits_for_this_backend(int pid)
{
	int			chain[TC_MAX_LOCK_CHAIN];
	int			length = 0;
	bool		found = false;
	MemoryContext check_context;
	MemoryContext old_context;

	check_context = AllocSetContextCreate(CurrentMemoryContext,
										  "traffic_control deadlock check",
										  ALLOCSET_SMALL_SIZES);
	old_context = MemoryContextSwitchTo(check_context);
	chain[length++] = pid;
	for (int next = 0; next < length && !found; next++)
	{
		ArrayType  *blockers;
		int32	   *pids;
		int			count;

		blockers = DatumGetArrayTypeP(DirectFunctionCall1(pg_blocking_pids,
														  Int32GetDatum(chain[next])));
		pids = (int32 *) ARR_DATA_PTR(blockers);
		count = ArrayGetNItems(ARR_NDIM(blockers), ARR_DIMS(blockers));
		for (int i = 0; i < count && !found; i++)
		{
			bool		seen = false;

			found = pids[i] == MyProcPid;
			for (int j = 0; j < length && !seen; j++)
				seen = chain[j] == pids[i];
			if (!seen && length < TC_MAX_LOCK_CHAIN)
				chain[length++] = pids[i];
		}
	}
	MemoryContextSwitchTo(old_context);
	MemoryContextDelete(check_context);
	return found;
}

/*
 * The deadlock check, once deadlock_timeout has passed (and again every
 * deadlock_timeout): finds the holders of the instance this backend waits
 * for that wait for its locks, and asks the core whether the statement can
 * fit while they keep their units. True when that decided the statement
 * (refused, or admitted after all): *admission holds the outcome.
 */
static bool
decided_wait_never_ends(tc_statement *statement, tc_admission *admission)
{
	const int32 *holders;
	int			count;
	int32	   *stuck;
	int			stuck_count = 0;
	int			stuck_pid = 0;
	bool		decided = false;

	if (!tc_queue_holders(&holders, &count))
		raise_leaving_queue();
	if (count == 0)
		return false;
	/* Copied: the core's array lives until the next call into it. */
	stuck = palloc(count * sizeof(int32));
	memcpy(stuck, holders, count * sizeof(int32));
	for (int i = 0; i < count; i++)
	{
		PGPROC	   *proc;
		int			pid;

		if (stuck[i] < 0 || (uint32) stuck[i] >= ProcGlobal->allProcCount)
			continue;
		proc = &ProcGlobal->allProcs[stuck[i]];
		pid = proc->pid;
		/*
		 * Only a holder waiting for a heavyweight lock, or leading a parallel
		 * query whose workers might be, can be waiting for us (read without
		 * a lock: a holder that starts waiting later is seen next time).
		 */
		if (pid == 0 || (proc->waitLock == NULL && proc->lockGroupLeader == NULL) ||
			!waits_for_this_backend(pid))
			continue;
		stuck[stuck_count++] = stuck[i];
		if (stuck_pid == 0)
			stuck_pid = pid;
	}
	if (stuck_count > 0)
	{
		statement->wall_now_us = unix_now_us();
		if (!tc_admit_if_wait_never_ends(statement, stuck, stuck_count, stuck_pid, &decided,
										 admission))
			raise_leaving_queue();
		if (decided)
			wake_backends(&admission->wake);
	}
	pfree(stuck);
	return decided;
}

/*
 * Sleeps on this backend's latch until a release lets the statement in (the
 * core names it to be woken), then tries again; the last attempt is made at
 * the queue timeout. Interruptible: cancel, statement_timeout and terminate
 * end the wait through CHECK_FOR_INTERRUPTS.
 */
void
wait_for_admission(tc_statement *statement, tc_admission *admission)
{
	TimestampTz start = GetCurrentTimestamp();
	TimestampTz deadline = TimestampTzPlusMilliseconds(start, admission->queue_timeout_ms);
	TimestampTz next_check = TimestampTzPlusMilliseconds(start, DeadlockTimeout);

	PG_TRY();
	{
		for (;;)
		{
			TimestampTz now = GetCurrentTimestamp();

			if (now >= next_check)
			{
				if (decided_wait_never_ends(statement, admission))
					break;
				next_check = TimestampTzPlusMilliseconds(now, DeadlockTimeout);
			}
			if (now < deadline)
				(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								 TimestampDifferenceMilliseconds(now, Min(deadline, next_check)),
								 PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
			admit_attempt(statement,
						  GetCurrentTimestamp() < deadline ? TC_ATTEMPT_RETRY : TC_ATTEMPT_FINAL,
						  admission);
			if (admission->outcome != TC_MUST_WAIT)
				break;
		}
	}
	PG_CATCH();
	{
		leave_queue_quietly();
		PG_RE_THROW();
	}
	PG_END_TRY();
}
