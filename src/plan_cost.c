/*
 * plan_cost.c — the plan cost admission trusts.
 *
 * The cost model predicts a statement's CPU time as its plan's cost times a
 * learned k. A session could make its plans look cheap by changing the
 * planner's settings (SET cpu_tuple_cost = 1e-9, or enable_* to steer it),
 * and so buy its way past per_query_limit and server_share. So admission
 * uses the cost of the plan the server's own planner settings make.
 *
 * The planner settings are those of the "Planner Method Configuration"
 * (enable_*) and "Planner Cost Constants" (*_cost, effective_cache_size, the
 * parallel scan sizes) groups. The server's value of one is its value from
 * postgresql.conf, ALTER SYSTEM, the command line or ALTER ROLE ALL (source
 * up to PGC_S_GLOBAL): a value a database, a role, the client's connection
 * options, SET or a function's SET clause chose is the session's. The
 * postmaster records the server's values when it loads the library; each
 * backend refreshes them whenever a setting is not overridden (so a reload
 * is seen), and keeps the last known one for a setting its session
 * overrides.
 *
 * When, as a statement is planned, a planner setting differs from the
 * server's value, the statement is planned a second time, from a copy of its
 * query tree, under the server's values (set the way a function's SET clause
 * sets them, and restored at once), and that plan's total cost rides along
 * with the session's plan. It travels in the PlannedStmt as a PlanInvalItem
 * with a cache id no syscache has, which plan caching copies with the plan
 * and invalidation never matches. The executor runs the session's plan; the
 * CPU it really uses is charged as always when it ends.
 *
 * Locking: none; everything here is backend-local.
 */
#include "postgres.h"

#include "nodes/plannodes.h"
#include "optimizer/planner.h"
#include "utils/guc.h"
#include "utils/guc_tables.h"
#include "utils/memutils.h"

#include "traffic_control.h"

/* The cache id of the PlanInvalItem that carries the trusted cost ("TC"). */
#define TRUSTED_COST_CACHE_ID (-0x5443)

typedef struct PlannerSetting
{
	struct config_generic *guc;
	union
	{
		bool		boolean;
		int			integer;
		double		real;
	}			server_value;
} PlannerSetting;

static PlannerSetting *planner_settings = NULL;
static int	planner_setting_count = 0;

static bool
is_planner_setting(const struct config_generic *guc)
{
	return guc->group == QUERY_TUNING_METHOD || guc->group == QUERY_TUNING_COST;
}

/* Copies the setting's current value into its server value. */
static void
take_current_value(PlannerSetting *setting)
{
	switch (setting->guc->vartype)
	{
		case PGC_BOOL:
			setting->server_value.boolean = *((struct config_bool *) setting->guc)->variable;
			break;
		case PGC_INT:
			setting->server_value.integer = *((struct config_int *) setting->guc)->variable;
			break;
		case PGC_REAL:
			setting->server_value.real = *((struct config_real *) setting->guc)->variable;
			break;
		default:
			break;
	}
}

static bool
differs_from_server(const PlannerSetting *setting)
{
	switch (setting->guc->vartype)
	{
		case PGC_BOOL:
			return *((struct config_bool *) setting->guc)->variable != setting->server_value.boolean;
		case PGC_INT:
			return *((struct config_int *) setting->guc)->variable != setting->server_value.integer;
		case PGC_REAL:
			return *((struct config_real *) setting->guc)->variable != setting->server_value.real;
		default:
			return false;
	}
}

void
remember_server_planner_settings(void)
{
	int			count;
	struct config_generic **gucs = TC_GET_GUC_VARIABLES(&count);

	planner_settings = MemoryContextAllocZero(TopMemoryContext, count * sizeof(PlannerSetting));
	planner_setting_count = 0;
	for (int i = 0; i < count; i++)
	{
		if (!is_planner_setting(gucs[i]) ||
			(gucs[i]->vartype != PGC_BOOL && gucs[i]->vartype != PGC_INT &&
			 gucs[i]->vartype != PGC_REAL))
			continue;
		planner_settings[planner_setting_count].guc = gucs[i];
		take_current_value(&planner_settings[planner_setting_count]);
		planner_setting_count++;
	}
}

/*
 * Does any planner setting differ from the server's value now? Refreshes
 * the server's values of the settings the session does not override.
 */
static bool
session_overrides_planner(void)
{
	bool		overrides = false;

	for (int i = 0; i < planner_setting_count; i++)
	{
		PlannerSetting *setting = &planner_settings[i];

		if (setting->guc->source <= PGC_S_GLOBAL)
			take_current_value(setting);
		else if (differs_from_server(setting))
			overrides = true;
	}
	return overrides;
}

/* Sets every overridden planner setting to the server's value, until level ends. */
static void
apply_server_values(void)
{
	char		value[64];

	for (int i = 0; i < planner_setting_count; i++)
	{
		PlannerSetting *setting = &planner_settings[i];

		if (setting->guc->source <= PGC_S_GLOBAL || !differs_from_server(setting))
			continue;
		switch (setting->guc->vartype)
		{
			case PGC_BOOL:
				strlcpy(value, setting->server_value.boolean ? "on" : "off", sizeof(value));
				break;
			case PGC_INT:
				/* In the setting's base unit, as a number without a unit means. */
				snprintf(value, sizeof(value), "%d", setting->server_value.integer);
				break;
			default:
				snprintf(value, sizeof(value), "%.17g", setting->server_value.real);
				break;
		}
		(void) set_config_option(setting->guc->name, value, PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	}
}

PlannedStmt *
plan_with_trusted_cost(Query *parse, const char *query_string, int cursor_options,
					   ParamListInfo bound_params, planner_hook_type planner)
{
	Query	   *server_copy = NULL;
	PlannedStmt *result;

	if (planner_setting_count > 0 && session_overrides_planner())
		server_copy = copyObject(parse);	/* the planner scribbles on its input */
	result = planner(parse, query_string, cursor_options, bound_params);
	if (server_copy != NULL && result->planTree != NULL)
	{
		int			level = NewGUCNestLevel();
		PlannedStmt *server_plan;
		PlanInvalItem *carrier = makeNode(PlanInvalItem);
		float4		cost;

		apply_server_values();
		server_plan = planner(server_copy, query_string, cursor_options, bound_params);
		AtEOXact_GUC(true, level);

		cost = (float4) server_plan->planTree->total_cost;
		carrier->cacheId = TRUSTED_COST_CACHE_ID;
		memcpy(&carrier->hashValue, &cost, sizeof(cost));
		result->invalItems = lappend(result->invalItems, carrier);
	}
	return result;
}

double
admission_plan_cost(PlannedStmt *pstmt)
{
	ListCell   *cell;

	foreach(cell, pstmt->invalItems)
	{
		PlanInvalItem *item = lfirst_node(PlanInvalItem, cell);

		if (item->cacheId == TRUSTED_COST_CACHE_ID)
		{
			float4		cost;

			memcpy(&cost, &item->hashValue, sizeof(cost));
			return (double) cost;
		}
	}
	return pstmt->planTree != NULL ? pstmt->planTree->total_cost : -1;
}
