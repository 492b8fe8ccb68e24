/*
 * quarantine.c — quarantine_s: after a statement is canceled by its budget's
 * max_duration_ms or refused by its per_query_limit, the budget refuses its
 * pattern (query id, role, database: as the estimator learns it) for
 * quarantine_s seconds (`query blocked by budget "<b>": quarantined`; in warn
 * mode a NOTICE). The runaway query that was just stopped is then not
 * started again at once by a client that retries.
 *
 * The list lives in shared memory, outside the configuration: a reload
 * neither ends nor changes a quarantine, a restart ends them all. Each
 * backend's core keeps a copy (tc_set_quarantine), refreshed between
 * top-level statements when the list's version moved, so the statement path
 * pays one atomic read, and a hash lookup only while something is
 * quarantined. The view traffic_control.quarantine lists what has not ended.
 *
 * Locking: TcShared.quarantine_mutex (a spinlock) guards quarantine[] and
 * quarantine_count; under it only the list is copied or edited (at most
 * TC_MAX_QUARANTINE entries of under a hundred bytes), never an elog.
 * quarantine_version is atomic, bumped with the mutex held after a change.
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "traffic_control/capi.h"
#include "traffic_control.h"

PG_FUNCTION_INFO_V1(traffic_control_quarantine_1_1);

#define QUARANTINE_COLUMNS 6

/* Longest quarantine kept: ten years (quarantine_s above it means "until a restart"). */
#define TC_MAX_QUARANTINE_SECONDS (10.0 * 365 * 86400)

/* The version of the list this backend's core has (0: none yet). */
static uint64 local_quarantine_version = 0;

void
init_quarantine_list(void)
{
	SpinLockInit(&tc_shared->quarantine_mutex);
	tc_shared->quarantine_count = 0;
	pg_atomic_init_u64(&tc_shared->quarantine_version, 1);
}

/* Copies the list (ended entries included: readers skip them); returns its length. */
static int
copy_quarantine(TcQuarantineEntry *copy, uint64 *version)
{
	int			count;

	SpinLockAcquire(&tc_shared->quarantine_mutex);
	*version = pg_atomic_read_u64(&tc_shared->quarantine_version);
	count = tc_shared->quarantine_count;
	memcpy(copy, tc_shared->quarantine, sizeof(TcQuarantineEntry) * count);
	SpinLockRelease(&tc_shared->quarantine_mutex);
	return count;
}

void
sync_quarantine_list(void)
{
	TcQuarantineEntry copy[TC_MAX_QUARANTINE];
	tc_quarantined_pattern list[TC_MAX_QUARANTINE];
	uint64		version;
	int			count;

	if (tc_shared == NULL)
		return;
	if (pg_atomic_read_u64(&tc_shared->quarantine_version) == local_quarantine_version)
		return;

	count = copy_quarantine(copy, &version);
	for (int i = 0; i < count; i++)
	{
		list[i].budget = copy[i].budget;
		list[i].query_id = copy[i].query_id;
		list[i].user_id = copy[i].user_id;
		list[i].database_id = copy[i].database_id;
		list[i].until_us = copy[i].until_us;
		list[i].reason = copy[i].reason;
	}
	TC_CALL(tc_set_quarantine(list, (size_t) count));
	local_quarantine_version = version;
}

static bool
same_pattern(const TcQuarantineEntry *entry, const char *budget, uint64 query_id,
			 Oid user_id, Oid database_id)
{
	return entry->query_id == query_id && entry->user_id == user_id &&
		entry->database_id == database_id && strcmp(entry->budget, budget) == 0;
}

void
quarantine_pattern(const char *budget, double seconds, int reason, uint64 query_id,
				   Oid user_id)
{
	int64		now_us = unix_now_us();
	int64		until_us;
	TcQuarantineEntry *entry = NULL;
	int			kept = 0;

	if (tc_shared == NULL || query_id == 0 || !(seconds > 0) ||
		strlen(budget) >= TC_SHED_NAME_BYTES)
		return;
	until_us = now_us + (int64) (Min(seconds, TC_MAX_QUARANTINE_SECONDS) * 1e6);

	SpinLockAcquire(&tc_shared->quarantine_mutex);
	/* Drop what has ended; find the pattern's entry. */
	for (int i = 0; i < tc_shared->quarantine_count; i++)
	{
		TcQuarantineEntry *current = &tc_shared->quarantine[i];

		if (current->until_us <= now_us)
			continue;
		if (kept != i)
			tc_shared->quarantine[kept] = *current;
		if (same_pattern(&tc_shared->quarantine[kept], budget, query_id, user_id, MyDatabaseId))
			entry = &tc_shared->quarantine[kept];
		kept++;
	}
	tc_shared->quarantine_count = kept;
	if (entry == NULL && kept < TC_MAX_QUARANTINE)
		entry = &tc_shared->quarantine[tc_shared->quarantine_count++];
	else if (entry == NULL)
	{
		/* Full: the quarantine that ends first makes room. */
		entry = &tc_shared->quarantine[0];
		for (int i = 1; i < kept; i++)
		{
			if (tc_shared->quarantine[i].until_us < entry->until_us)
				entry = &tc_shared->quarantine[i];
		}
	}
	strlcpy(entry->budget, budget, sizeof(entry->budget));
	entry->query_id = query_id;
	entry->user_id = user_id;
	entry->database_id = MyDatabaseId;
	entry->until_us = until_us;
	entry->reason = reason;
	pg_atomic_fetch_add_u64(&tc_shared->quarantine_version, 1);
	SpinLockRelease(&tc_shared->quarantine_mutex);

	ereport(LOG,
			(errmsg("traffic_control: query id " INT64_FORMAT " quarantined by budget \"%s\" for %g s "
					"after %s",
					(int64) query_id, budget, seconds,
					reason == TC_QUARANTINE_PER_QUERY_LIMIT ?
					"a refusal by per_query_limit" : "a cancel by max_duration_ms")));
}

/*
 * traffic_control.quarantine: query_id, budget, until, reason, and the role
 * and database the pattern is of; only quarantines that have not ended.
 */
Datum
traffic_control_quarantine_1_1(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TcQuarantineEntry copy[TC_MAX_QUARANTINE];
	uint64		version;
	int			count;
	int64		now_us;

	if (tc_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("traffic_control.quarantine needs traffic_control to be loaded via "
						"shared_preload_libraries")));
	InitMaterializedSRF(fcinfo, 0);
	count = copy_quarantine(copy, &version);
	now_us = unix_now_us();

	for (int i = 0; i < count; i++)
	{
		const TcQuarantineEntry *entry = &copy[i];
		Datum		values[QUARANTINE_COLUMNS];
		bool		nulls[QUARANTINE_COLUMNS];
		TimestampTz until;
		char	   *role;
		char	   *database;

		if (entry->until_us <= now_us ||
			!unix_us_to_timestamptz(entry->until_us, &until))
			continue;
		memset(nulls, 0, sizeof(nulls));
		values[0] = Int64GetDatum((int64) entry->query_id);
		values[1] = CStringGetTextDatum(entry->budget);
		values[2] = TimestampTzGetDatum(until);
		values[3] = CStringGetTextDatum(entry->reason == TC_QUARANTINE_PER_QUERY_LIMIT ?
										"per_query_limit" : "max_duration_ms");
		/* A role or database dropped since: NULL. */
		role = GetUserNameFromId(entry->user_id, true);
		if (role != NULL)
			values[4] = DirectFunctionCall1(namein, CStringGetDatum(role));
		else
			nulls[4] = true;
		database = get_database_name(entry->database_id);
		if (database != NULL)
			values[5] = DirectFunctionCall1(namein, CStringGetDatum(database));
		else
			nulls[5] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
