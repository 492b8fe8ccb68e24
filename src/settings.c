/*
 * settings.c — the GUCs, and the rule set each process builds from them.
 *
 * traffic_control.rules and .budgets are validated by the core in their
 * check hooks (a bad value is rejected with the item and field named, and a
 * bad file keeps the last good configuration). Their assign hooks only mark
 * the configuration dirty: every process rebuilds its rule set at its next
 * statement, never in the middle of one (maybe_reload_config).
 *
 * The policy (rules and budgets: tenant names, address ranges, limits) is
 * readable only by superusers and pg_read_all_settings (GUC_SUPERUSER_ONLY).
 *
 * Locking: TcShared.mutex (a spinlock) guards reported_config_hash, so that
 * each distinct configuration's problems are logged once, not once per
 * backend; only a compare-and-store happens under it, and it is released
 * before any elog.
 */
#include "postgres.h"

#include <sched.h>
#include <unistd.h>

#include "common/hashfn.h"
#include "utils/guc.h"

#include "traffic_control.h"

static const struct config_enum_entry track_options[] = {
	{"top", TC_TRACK_TOP, false},
	{"all", TC_TRACK_ALL, false},
	{NULL, 0, false}
};

/* traffic_control.log_level: the elevel of refusal and warning log lines. */
static const struct config_enum_entry log_level_options[] = {
	{"off", TC_LOG_OFF, false},
	{"debug1", DEBUG1, false},
	{"info", INFO, false},
	{"notice", NOTICE, false},
	{"log", LOG, false},
	{"warning", WARNING, false},
	{NULL, 0, false}
};

bool		tc_enabled = true;
char	   *tc_rules = NULL;
char	   *tc_budgets = NULL;
static double tc_server_cores = 0;
int			tc_max_buckets = 10000;
int			tc_max_patterns = 10000;
char	   *tc_message_prefix = NULL;
int			tc_track = TC_TRACK_TOP;
bool		tc_track_utility = true;
int			tc_log_level = LOG;
int			tc_log_max_per_second = 10;
int			tc_cpu_priority_linger_ms = 1000;

/* What server_cores = 0 means here; 0 = not worked out yet (see below). */
static double usable_cpus = 0;

/* Set by the assign hooks; the rule set is rebuilt between statements. */
static bool config_dirty = true;
bool		tc_config_is_empty = true;

/* Rules skipped while loading, copied here without calling PostgreSQL. */
#define TC_MAX_REPORTED_PROBLEMS 16
static char reported_problems[TC_MAX_REPORTED_PROBLEMS][256];
static int	reported_problem_count = 0;

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
 * check that no statement is executing first, so a statement never sees two
 * rule sets.
 */
void
maybe_reload_config(void)
{
	uint32		config_hash;
	bool		first_to_report;

	sync_shed_list();			/* one atomic read unless a shed changed */
	sync_quarantine_list();		/* the same for quarantined patterns */
	if (!config_dirty)
		return;
	config_dirty = false;
	usable_cpus = 0;			/* worked out again at its next use */
	reported_problem_count = 0;
	if (!tc_load_config(tc_budgets, tc_rules, collect_problem))
	{
		ereport(WARNING,
				(errmsg("traffic_control: keeping the previous rules: %s", tc_last_error())));
		return;
	}
	tc_config_is_empty = tc_config_empty();
	member_of_config_changed();
	elog(DEBUG1, "traffic_control: configuration loaded");
	warn_if_priority_has_no_effect(tc_config_max_cpu_priority());
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

/*
 * What server_cores = 0 means: the CPUs this process may use. A cgroup CPU
 * quota where one is set (a container's --cpus, systemd's CPUQuota=), else
 * the CPUs it may run on (its affinity mask, within the online ones).
 * Worked out once per process and again after every reload (a quota can be
 * changed while the server runs).
 */
static double
find_usable_cpus(void)
{
	double		quota = tc_cgroup_cpu_quota();
	cpu_set_t	mask;
	long		online = sysconf(_SC_NPROCESSORS_ONLN);
	double		cpus = online > 0 ? (double) online : 1;

	if (sched_getaffinity(0, sizeof(mask), &mask) == 0 && CPU_COUNT(&mask) > 0)
		cpus = Min(cpus, (double) CPU_COUNT(&mask));
	if (quota > 0)
		cpus = Min(cpus, quota);
	return cpus;
}

double
effective_server_cores(void)
{
	if (tc_server_cores > 0)
		return tc_server_cores;
	if (usable_cpus <= 0)
		usable_cpus = find_usable_cpus();
	return usable_cpus;
}

void
define_settings(void)
{
	DefineCustomBoolVariable("traffic_control.enabled",
							 "Master switch: admit statements against budgets.",
							 "A superuser may turn it off for one session.",
							 &tc_enabled, true, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("traffic_control.rules",
							   "Rules (JSON array) sorting statements into budgets.",
							   NULL, &tc_rules, "[]", PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_rules, assign_config, NULL);
	DefineCustomStringVariable("traffic_control.budgets",
							   "Budgets (JSON array): limits for the traffic rules put in them.",
							   NULL, &tc_budgets, "[]", PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_budgets, assign_config, NULL);
	DefineCustomRealVariable("traffic_control.server_cores",
							 "CPU-seconds per second that make a full server (0 = the CPUs the server may use: its cgroup quota, else its CPUs).",
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
	DefineCustomIntVariable("traffic_control.cpu_priority_linger_ms",
							"How long an idle backend keeps the CPU priority a statement's budget lowered (0 = restored as the statement ends).",
							NULL, &tc_cpu_priority_linger_ms, 1000, 0, 60000, PGC_SIGHUP,
							GUC_UNIT_MS, NULL, NULL, NULL);
	MarkGUCPrefixReserved("traffic_control");
}
