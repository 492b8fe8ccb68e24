/*
 * priority.c — the OS CPU priority a statement runs at (budget field
 * cpu_priority): a nice value 1-19, or the SCHED_IDLE policy, set on the
 * backend while a statement of such a budget executes and restored as it
 * ends (holdings.c decides when: the weakest priority any of its live
 * holdings asks for), and taken over by its parallel workers.
 *
 * Lowering a process's priority is always allowed; restoring it is not: it
 * needs CAP_SYS_NICE, or an RLIMIT_NICE that allows the original nice value.
 * A backend that could lower its priority but not restore it would run
 * every later statement, of any budget, at the lowered priority. So the
 * postmaster checks once, as it loads the library, whether restoring is
 * allowed; when it is not, cpu_priority has no effect, and one WARNING per
 * server start says why (logged by the first process that loads a rule set
 * using the field).
 *
 * Restoring lingers. Changing a running process's priority costs more than
 * the system call: lowering it makes the kernel reschedule at once, and for
 * a stream of short statements of one budget (pgbench: ~50 us each) two
 * changes per statement cost a third of the throughput. So when the last
 * statement holding a priority ends, the backend keeps it while it does
 * nothing else: it is restored before the backend plans or runs anything
 * that does not ask for the same priority (restore_priority_if_due(), at
 * the planner and at every statement start), or after
 * traffic_control.cpu_priority_linger_ms of idleness (a timeout whose
 * handler restores it; 0 restores as each statement ends). A stream of
 * statements of one budget then changes the priority once. An idle backend
 * uses no CPU, so its priority while idle changes nothing for anyone.
 *
 * The default linger is 1 s, not shorter: on an overloaded server a busy
 * backend often waits tens of milliseconds for its client between two
 * statements (32 pgbench clients on 2 cores), and with a 50 ms linger those
 * waits restored and lowered the priority again and again, and the
 * timeout's SIGALRM came 20 times a second per backend. At 32 clients that
 * left 0.76-0.79 of the throughput without the library; with 1 s, 0.89-0.91,
 * as much as without cpu_priority (docs/benchmarks.md).
 *
 * Locking: TcShared.mutex guards priority_warning_logged (a test-and-set,
 * released before the WARNING). worker_priority[] are atomic: a backend
 * writes its own, its parallel workers read it. The linger timeout's handler
 * runs in a signal handler: it acts only while restore_due is set, and the
 * backend clears restore_due before it changes its priority itself.
 */
#include "postgres.h"

#include <errno.h>
#include <sched.h>
#include <sys/resource.h>

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "utils/timeout.h"

#include "traffic_control.h"

#define CAP_SYS_NICE_BIT 23

/* Decided in the postmaster by remember_priority_rights(); inherited. */
static bool priority_restorable = false;
static const char *not_restorable_reason = "";

/* This backend's nice value before it ever changed it, and what it runs at. */
static int	original_nice = 0;
static bool original_nice_known = false;
static volatile sig_atomic_t applied_priority = 0;

/* A restore to restore_to is due (lingering); the timeout that ends it. */
static volatile sig_atomic_t restore_due = false;
static volatile sig_atomic_t restore_to = 0;
static bool linger_timeout_registered = false;
static TimeoutId linger_timeout;

/* Is CAP_SYS_NICE in the effective capability set (/proc/self/status)? */
static bool
has_cap_sys_nice(void)
{
	FILE	   *status = fopen("/proc/self/status", "r");
	char		line[256];
	bool		has = false;

	if (status == NULL)
		return false;
	while (fgets(line, sizeof(line), status) != NULL)
	{
		unsigned long long mask;

		if (sscanf(line, "CapEff: %llx", &mask) == 1)
		{
			has = (mask >> CAP_SYS_NICE_BIT) & 1;
			break;
		}
	}
	fclose(status);
	return has;
}

void
remember_priority_rights(void)
{
	struct rlimit limit;
	int			nice_now;

	errno = 0;
	nice_now = getpriority(PRIO_PROCESS, 0);
	if (errno != 0)
		nice_now = 0;
	if (has_cap_sys_nice())
		priority_restorable = true;
	else if (getrlimit(RLIMIT_NICE, &limit) == 0 &&
			 (limit.rlim_cur == RLIM_INFINITY || (long) limit.rlim_cur >= 20 - nice_now))
		priority_restorable = true;
	else
	{
		priority_restorable = false;
		not_restorable_reason =
			"the server may lower a backend's CPU priority but not restore it: it has "
			"neither CAP_SYS_NICE nor an RLIMIT_NICE that allows its nice value";
	}
}

bool
cpu_priority_takes_effect(void)
{
	return priority_restorable;
}

void
warn_if_priority_has_no_effect(int max_cpu_priority)
{
	bool		first;

	if (priority_restorable || max_cpu_priority <= 0 || tc_shared == NULL)
		return;
	SpinLockAcquire(&tc_shared->mutex);
	first = !tc_shared->priority_warning_logged;
	tc_shared->priority_warning_logged = true;
	SpinLockRelease(&tc_shared->mutex);
	if (first)
		ereport(WARNING,
				(errmsg("traffic_control: cpu_priority has no effect: %s", not_restorable_reason),
				 errhint("Start the server with CAP_SYS_NICE (systemd: AmbientCapabilities=CAP_SYS_NICE; "
						 "as root: setpriv --reuid=postgres --regid=postgres --init-groups "
						 "--inh-caps=+sys_nice --ambient-caps=+sys_nice pg_ctl ...) or with "
						 "RLIMIT_NICE of 20 (systemd: LimitNICE=20; ulimit -e 20).")));
}

/* Runs this process at `priority` (0 = as it started). False on failure. */
static bool
set_process_priority(int priority)
{
	struct sched_param param = {0};
	int			nice_value;

	if (!original_nice_known)
	{
		errno = 0;
		original_nice = getpriority(PRIO_PROCESS, 0);
		if (errno != 0)
			original_nice = 0;
		original_nice_known = true;
	}
	if (priority == TC_CPU_PRIORITY_IDLE)
		return sched_setscheduler(0, SCHED_IDLE, &param) == 0;
	if (applied_priority == TC_CPU_PRIORITY_IDLE &&
		sched_setscheduler(0, SCHED_OTHER, &param) != 0)
		return false;
	nice_value = Max(original_nice, priority);
	return setpriority(PRIO_PROCESS, 0, nice_value) == 0;
}

/* Sets the priority now; false (errno set) when the system refused. */
static bool
change_priority(int priority)
{
	bool		changed = set_process_priority(priority);

	if (changed)
		applied_priority = priority;
	if (MyProc != NULL && tc_shared != NULL)
		pg_atomic_write_u32(&tc_shared->backends[TC_PROC_NUMBER(MyProc)].worker_priority,
							(uint32) applied_priority);
	return changed;
}

/*
 * The linger timeout (in a signal handler): the idle backend restores. Not
 * once the backend is exiting: a client that disconnects right after a
 * statement ends the backend while it lingers, and the timeout can fire in
 * the middle of proc_exit, after ProcKill has cleared MyProc and shared
 * memory may be detached (a segfault). An exiting process has nothing to
 * restore.
 */
static void
linger_timeout_handler(void)
{
	int			saved_errno = errno;

	if (proc_exit_inprogress || MyProc == NULL)
		return;
	if (restore_due)
	{
		restore_due = false;
		if (!change_priority(restore_to))
			restore_due = true; /* retried, with a WARNING, at the next statement */
	}
	errno = saved_errno;
}

void
apply_cpu_priority(int priority, bool may_linger)
{
	if (!priority_restorable)
		return;
	restore_due = false;		/* whatever happens next replaces a pending restore */
	if (priority == applied_priority)
		return;
	if (may_linger && priority < applied_priority && tc_cpu_priority_linger_ms > 0)
	{
		if (!linger_timeout_registered)
		{
			linger_timeout = RegisterTimeout(USER_TIMEOUT, linger_timeout_handler);
			linger_timeout_registered = true;
		}
		restore_to = priority;
		restore_due = true;
		enable_timeout_after(linger_timeout, tc_cpu_priority_linger_ms);
		return;
	}
	if (!change_priority(priority))
		ereport(WARNING,
				(errmsg("traffic_control: could not set the backend's CPU priority to %d: %m",
						priority)));
}

void
restore_priority_if_due(void)
{
	if (restore_due)
		apply_cpu_priority(restore_to, false);
}

void
take_leader_priority(void)
{
	PGPROC	   *leader = MyProc->lockGroupLeader;
	int			priority;

	if (leader == NULL || TC_PROC_NUMBER(leader) >= MaxBackends)
		return;
	priority = (int) pg_atomic_read_u32(&tc_shared->backends[TC_PROC_NUMBER(leader)].worker_priority);
	/* A worker ends with its part of the query: nothing to restore. */
	if (priority > 0 && set_process_priority(priority))
		applied_priority = priority;
}
