/*
 * shmem.c — the shared segment: its request, its creation, and the LWLocks
 * the core takes through tc_lock_ops.
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
 * - TcShared.mutex (a spinlock) protects reported_config_hash (settings.c)
 *   and the log rate limit (reporting.c); nothing but a compare-and-store or
 *   a count happens under it, and it is released before any elog.
 * - backends[] (one per backend, by PGPROC number) are atomic: a backend's
 *   parallel workers add the CPU time they used to its worker_cpu_ns and
 *   read the priority it runs at; the backend reads the one and writes the
 *   other. No lock.
 * - TcShared.mutex (below) also guards priority_warning_logged and the
 *   list of shed budgets (src/shed.c), which is copied under it.
 * - TcShared.quarantine_mutex guards the list of quarantined patterns
 *   (src/quarantine.c) the same way.
 * - AddinShmemInitLock is held while the shared segment is created, as in
 *   pg_stat_statements. A crash-restart creates and formats it anew.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shmem.h"

#include "traffic_control.h"

TcShared   *tc_shared = NULL;
static bool tc_core_attached = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* The header, with one slot per backend. */
static Size
tc_header_size(void)
{
	return add_size(MAXALIGN(offsetof(TcShared, backends)),
					mul_size(MaxBackends, sizeof(TcBackendSlot)));
}

/* With room to start the core's tables on a cache line, as their layouts expect. */
static Size
tc_memsize(void)
{
	return add_size(add_size(tc_header_size(), PG_CACHE_LINE_SIZE),
					tc_shared_size(tc_max_buckets, tc_max_patterns, MaxBackends));
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
		SpinLockInit(&tc_shared->mutex);
		tc_shared->reported_config_hash = 0;
		tc_shared->log_window = 0;
		tc_shared->log_window_lines = 0;
		tc_shared->log_suppressed = 0;
		tc_shared->priority_warning_logged = false;
		init_shed_list();
		init_quarantine_list();
		for (int i = 0; i < MaxBackends; i++)
		{
			pg_atomic_init_u64(&tc_shared->backends[i].worker_cpu_ns, 0);
			pg_atomic_init_u32(&tc_shared->backends[i].worker_priority, 0);
		}
		tc_shared->core_size = tc_shared_size(tc_max_buckets, tc_max_patterns, MaxBackends);
		formatted = tc_shared_format(tc_core_address(), tc_shared->core_size, tc_max_buckets,
									 tc_max_patterns, MaxBackends);
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
	int			backend = -1;

	if (tc_core_attached)
		return;
	/* Its PGPROC number: the core's queues wake it by setting its latch. */
	if (MyProc != NULL && TC_PROC_NUMBER(MyProc) < MaxBackends)
		backend = TC_PROC_NUMBER(MyProc);
	TC_CALL(tc_attach(tc_core_address(), tc_shared->core_size, tc_max_buckets, tc_max_patterns,
					  MaxBackends, backend, &bucket_lock_ops, &pattern_lock_ops));
	tc_core_attached = true;
}

bool
core_attached(void)
{
	return tc_shared != NULL && tc_core_attached;
}

void
install_shmem_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = tc_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = tc_shmem_startup;
}
