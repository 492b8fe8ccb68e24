/*
 * shed.c — the emergency lever: traffic_control.shed(budget, duration) and
 * unshed(budget). A shed budget refuses every statement until the shed
 * ends, whatever its mode and limits (`query blocked by budget "<b>": shed`,
 * with a retry hint for when it ends).
 *
 * The list of shed budgets lives in shared memory, outside the
 * configuration: a reload neither ends nor changes a shed, a restart ends
 * them all. Each backend keeps a copy in its core (tc_set_shed), refreshed
 * between top-level statements when the list's version has moved, so the
 * statement path pays one atomic read.
 *
 * Locking: TcShared.mutex (a spinlock) guards shed[] and shed_count; under
 * it only the list is copied or edited (at most TC_MAX_SHED entries of a
 * few dozen bytes), never an elog. shed_version is atomic: bumped after
 * every change (with the mutex held, so a reader that sees the new version
 * and then takes the mutex copies the new list).
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "traffic_control/capi.h"
#include "traffic_control.h"

PG_FUNCTION_INFO_V1(traffic_control_shed_1_1);
PG_FUNCTION_INFO_V1(traffic_control_unshed_1_1);

/* The version of the list this backend's core has (0: none yet). */
static uint64 local_shed_version = 0;

void
init_shed_list(void)
{
	tc_shared->shed_count = 0;
	pg_atomic_init_u64(&tc_shared->shed_version, 1);
}

void
sync_shed_list(void)
{
	TcShedEntry copy[TC_MAX_SHED];
	tc_shed_budget list[TC_MAX_SHED];
	uint64		version;
	int			count;

	if (tc_shared == NULL)
		return;
	version = pg_atomic_read_u64(&tc_shared->shed_version);
	if (version == local_shed_version)
		return;

	SpinLockAcquire(&tc_shared->mutex);
	version = pg_atomic_read_u64(&tc_shared->shed_version);
	count = tc_shared->shed_count;
	memcpy(copy, tc_shared->shed, sizeof(TcShedEntry) * count);
	SpinLockRelease(&tc_shared->mutex);

	for (int i = 0; i < count; i++)
	{
		list[i].budget = copy[i].budget;
		list[i].until_us = copy[i].until_us;
	}
	TC_CALL(tc_set_shed(list, (size_t) count));
	local_shed_version = version;
}

static void
require_superuser(const char *function)
{
	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s", function),
				 errdetail("Only superusers can shed or unshed a budget.")));
	if (tc_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s needs traffic_control to be loaded via shared_preload_libraries",
						function)));
}

/*
 * Removes ended sheds and the entry of `budget` (under the mutex). Returns
 * whether `budget` had a shed that had not ended.
 */
static bool
drop_shed_entries(const char *budget, int64 now_us)
{
	bool		was_shed = false;
	int			kept = 0;

	for (int i = 0; i < tc_shared->shed_count; i++)
	{
		TcShedEntry *entry = &tc_shared->shed[i];

		if (strcmp(entry->budget, budget) == 0)
		{
			was_shed = was_shed || entry->until_us > now_us;
			continue;
		}
		if (entry->until_us <= now_us)
			continue;
		if (kept != i)
			tc_shared->shed[kept] = *entry;
		kept++;
	}
	tc_shared->shed_count = kept;
	return was_shed;
}

/* traffic_control.shed(budget text, duration interval) RETURNS timestamptz */
Datum
traffic_control_shed_1_1(PG_FUNCTION_ARGS)
{
	text	   *budget_text = PG_GETARG_TEXT_PP(0);
	Interval   *duration = PG_GETARG_INTERVAL_P(1);
	char	   *budget;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz until;
	int64		now_us = unix_now_us();
	bool		full;

	require_superuser("shed");
	budget = text_to_cstring(budget_text);
	maybe_reload_config();
	if (!tc_config_has_budget(budget))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("budget \"%s\" does not exist", budget),
				 errhint("traffic_control.budget_status lists the configured budgets.")));
	if (strlen(budget) >= TC_SHED_NAME_BYTES)	/* configured names are shorter */
		ereport(ERROR, (errmsg("budget name \"%s\" is too long", budget)));

	until = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
													TimestampTzGetDatum(now),
													IntervalPGetDatum(duration)));
	if (until <= now)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the duration of a shed must be positive")));

	SpinLockAcquire(&tc_shared->mutex);
	drop_shed_entries(budget, now_us);
	full = tc_shared->shed_count >= TC_MAX_SHED;
	if (!full)
	{
		TcShedEntry *entry = &tc_shared->shed[tc_shared->shed_count++];

		strlcpy(entry->budget, budget, sizeof(entry->budget));
		entry->until_us = now_us + (until - now);
		pg_atomic_fetch_add_u64(&tc_shared->shed_version, 1);
	}
	SpinLockRelease(&tc_shared->mutex);
	if (full)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("cannot shed more than %d budgets at once", TC_MAX_SHED),
				 errhint("Unshed a budget first.")));

	sync_shed_list();
	ereport(LOG,
			(errmsg("traffic_control: budget \"%s\" shed until %s by %s", budget,
					timestamptz_to_str(until), GetUserNameFromId(GetUserId(), false))));
	PG_RETURN_TIMESTAMPTZ(until);
}

/* traffic_control.unshed(budget text) RETURNS boolean: was it shed? */
Datum
traffic_control_unshed_1_1(PG_FUNCTION_ARGS)
{
	char	   *budget = text_to_cstring(PG_GETARG_TEXT_PP(0));
	bool		was_shed;

	require_superuser("unshed");
	SpinLockAcquire(&tc_shared->mutex);
	was_shed = drop_shed_entries(budget, unix_now_us());
	pg_atomic_fetch_add_u64(&tc_shared->shed_version, 1);
	SpinLockRelease(&tc_shared->mutex);

	sync_shed_list();
	if (was_shed)
		ereport(LOG,
				(errmsg("traffic_control: budget \"%s\" unshed by %s", budget,
						GetUserNameFromId(GetUserId(), false))));
	PG_RETURN_BOOL(was_shed);
}
