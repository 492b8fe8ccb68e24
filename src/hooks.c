/*
 * hooks.c — where PostgreSQL hands statements to traffic_control: _PG_init,
 * the executor, utility and planner hooks, and what counts as a statement.
 *
 * A statement is admitted after planning, before execution: in ExecutorStart
 * for planned statements, in ProcessUtility for utility statements. Nested
 * statements (functions, DO blocks) count one executor nesting level, as
 * pg_stat_statements counts it, and are admitted only with
 * traffic_control.track = all. Utility statements whose cost is an inner
 * query, or that must never be refused, pass through (is_pass_through_utility).
 *
 * What the client runs is admitted once, wherever it executes: a cursor that
 * a function opens is admitted at its first top-level run (holdings.c keeps
 * it pending until then). Work PostgreSQL starts by itself is never admitted:
 * statements run while planning (functions the planner evaluates), while a
 * transaction commits (deferred triggers and foreign-key checks), and by any
 * process that is not a client backend (autovacuum, walsenders, logical
 * replication and other background workers, parallel workers). Nor is the
 * control plane (is_control_plane). Every client backend applies a reload of
 * the rules before its next top-level statement, whether or not it admits
 * that statement.
 *
 * Locking: none here. All decisions are made by the C++ core behind
 * include/traffic_control/capi.h; every call into it returns false instead of
 * throwing, and only then does the shim raise a PostgreSQL error (TC_CALL).
 */
#include "postgres.h"

#include "access/parallel.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "optimizer/planner.h"
#include "tcop/pquery.h"
#include "tcop/utility.h"
#include "utils/fmgrprotos.h"
#include "utils/portal.h"

#include "traffic_control.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* Executor nesting depth, as pg_stat_statements counts it. */
static int	nesting_level = 0;

/*
 * Above 0 while PostgreSQL works on its own behalf: planning, or a
 * transaction command (COMMIT runs deferred triggers). Nothing that runs
 * then is a client statement.
 */
static int	server_work_level = 0;

/*
 * The statement a DECLARE, EXPLAIN, CREATE TABLE AS or COPY (query) at top
 * level runs its inner query for: PostgreSQL 15 plans the inner query with
 * no location of its own (0, length 0: the whole string), so in a string of
 * several statements its tag is found in the outer statement's text.
 */
static const char *outer_text = NULL;
static int	outer_location = 0;
static int	outer_length = 0;

static planner_hook_type prev_planner = NULL;
static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ExecutorRun_hook_type prev_ExecutorRun = NULL;
static ExecutorFinish_hook_type prev_ExecutorFinish = NULL;
static ExecutorEnd_hook_type prev_ExecutorEnd = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

bool
between_top_level_statements(void)
{
	return nesting_level == 0;
}

/* Deferred triggers run at commit with no executor level around them. */
static bool
in_trigger(void)
{
	LOCAL_FCINFO(fcinfo, 0);

	InitFunctionCallInfoData(*fcinfo, NULL, 0, InvalidOid, NULL, NULL);
	return DatumGetInt32(pg_trigger_depth(fcinfo)) > 0;
}

/*
 * Called as every statement starts: is it one the client runs (at any
 * depth)? Between top-level statements the rule set is brought up to date
 * first.
 */
static bool
client_statement(void)
{
	if (tc_shared == NULL || MyBackendType != B_BACKEND || server_work_level > 0)
		return false;
	if (nesting_level == 0)
	{
		forget_duration_cancel();
		maybe_reload_config();
		if (in_trigger())
			return false;
	}
	return true;
}

/* Is this client statement, at this depth, one to admit? */
static bool
admission_active(void)
{
	if (!tc_enabled || tc_config_is_empty)
		return false;
	if (tc_track == TC_TRACK_TOP && nesting_level > 0)
		return false;
	ensure_core_attached();
	return true;
}

/* Is the portal being started a cursor (its query started, not yet run)? */
static bool
opening_cursor(void)
{
	return ActivePortal != NULL && ActivePortal->status == PORTAL_DEFINED &&
		ActivePortal->strategy == PORTAL_ONE_SELECT && ActivePortal->queryDesc == NULL;
}

/*
 * Admits a planned statement. Before the executor has started
 * (workers_can_be_cut), a parallel plan that does not fit its budgets' free
 * max_concurrent units, or that asks for more than their
 * max_parallel_workers, runs with the workers it is allowed.
 */
static void
admit_query(QueryDesc *queryDesc, bool workers_can_be_cut)
{
	PlannedStmt *pstmt = queryDesc->plannedstmt;
	TcStatementToAdmit what;
	int			allowed;

	if (is_control_plane(pstmt))
	{
		restore_priority_if_due();
		return;
	}
	what.source = queryDesc->sourceText;
	what.location = pstmt->stmt_location;
	what.length = pstmt->stmt_len;
	if (outer_text != NULL && what.location <= 0 && what.length == 0 && what.source != NULL &&
		(what.source == outer_text || strcmp(what.source, outer_text) == 0))
	{
		what.location = outer_location;
		what.length = outer_length;
	}
	what.command = command_name(pstmt->commandType);
	what.query_id = pstmt->queryId;
	what.workers = statement_workers(pstmt);
	what.workers_can_be_cut = workers_can_be_cut && what.workers > 0;
	what.plan_cost = admission_plan_cost(pstmt);
	allowed = admit_statement(&what, queryDesc, 0);
	if (allowed < what.workers)
		clamp_statement_workers(queryDesc, allowed);
}

static PlannedStmt *
tc_planner(Query *parse, const char *query_string, int cursor_options,
		   ParamListInfo bound_params)
{
	PlannedStmt *result;

	restore_priority_if_due();	/* planning runs at the priority of no statement */
	server_work_level++;
	PG_TRY();
	{
		result = plan_with_trusted_cost(parse, query_string, cursor_options, bound_params,
										prev_planner ? prev_planner : standard_planner);
	}
	PG_FINALLY();
	{
		server_work_level--;
	}
	PG_END_TRY();
	return result;
}

static void
tc_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	if (IsParallelWorker() && tc_shared != NULL)
		worker_started();
	else if ((eflags & EXEC_FLAG_EXPLAIN_ONLY) == 0 && client_statement())
	{
		if (admission_active())
			admit_query(queryDesc, true);
		else
		{
			restore_priority_if_due();
			if (nesting_level > 0 && tc_enabled && opening_cursor())
				record_pending(queryDesc);
		}
	}
	else
		restore_priority_if_due();

	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/*
 * A cursor a function opened, run for the first time at top level: admitted
 * now, unless PostgreSQL is only materializing a holdable cursor at commit.
 */
static void
admit_pending(QueryDesc *queryDesc)
{
	if (!take_pending(queryDesc))
		return;
	if (ActivePortal != NULL && ActivePortal->holdStore != NULL)
		return;
	if (client_statement() && admission_active())
		admit_query(queryDesc, false);	/* its executor has started */
}

static void
tc_ExecutorRun(TC_EXECUTOR_RUN_PARAMS)
{
	if (held_count > 0)
	{
		if (nesting_level == 0)
			admit_pending(queryDesc);
		before_run(queryDesc);
	}
	nesting_level++;
	PG_TRY();
	{
		if (prev_ExecutorRun)
			prev_ExecutorRun(TC_EXECUTOR_RUN_ARGS);
		else
			standard_ExecutorRun(TC_EXECUTOR_RUN_ARGS);
	}
	PG_FINALLY();
	{
		nesting_level--;
	}
	PG_END_TRY();
	if (held_count > 0)
		after_run(queryDesc, count);
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

/*
 * The holding is released after the executor has ended: a Gather stopped
 * early shuts its workers down only then, and their CPU time counts.
 */
static void
tc_ExecutorEnd(QueryDesc *queryDesc)
{
	if (prev_ExecutorEnd)
		prev_ExecutorEnd(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);

	if (held_count > 0)
		release_query(queryDesc);
	if (IsParallelWorker() && tc_shared != NULL)
		worker_ended();
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
run_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
			ProcessUtilityContext context, ParamListInfo params,
			QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
							dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

/* Does this pass-through statement run an inner query of its own text? */
static bool
runs_inner_query(Node *statement)
{
	switch (nodeTag(statement))
	{
		case T_DeclareCursorStmt:
		case T_ExplainStmt:
		case T_CreateTableAsStmt:
		case T_CopyStmt:
			return true;
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
	int			level = nesting_level;
	bool		admitted = false;

	if (is_pass_through_utility(statement))
	{
		bool		server_work = IsA(statement, TransactionStmt);
		bool		sets_outer = level == 0 && runs_inner_query(statement);

		if (!server_work && !sets_outer)
		{
			/* EXECUTE, FETCH, SET ...: no bookkeeping of their own. */
			if (level == 0 && server_work_level == 0 && tc_shared != NULL)
				maybe_reload_config();
			run_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
			return;
		}
		if (server_work)
			server_work_level++;
		else
		{
			outer_text = queryString;
			outer_location = pstmt->stmt_location;
			outer_length = pstmt->stmt_len;
		}
		PG_TRY();
		{
			run_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
		}
		PG_FINALLY();
		{
			if (server_work)
				server_work_level--;
			else
				outer_text = NULL;
		}
		PG_END_TRY();
		return;
	}

	if (client_statement() && tc_track_utility && admission_active())
		admitted = true;
	else
		restore_priority_if_due();

	PG_TRY();
	{
		if (admitted)
		{
			TcStatementToAdmit what = {queryString, pstmt->stmt_location, pstmt->stmt_len,
			"utility", pstmt->queryId, 0, false, -1};

			(void) admit_statement(&what, NULL, level);
		}
		nesting_level++;
		run_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		nesting_level = level;
		if (admitted)
			release_utility(level, false);
		PG_RE_THROW();
	}
	PG_END_TRY();
	nesting_level = level;
	if (admitted)
		release_utility(level, true);
}

void
_PG_init(void)
{
	/*
	 * Loaded any other way (LOAD, a function of the extension, pg_upgrade's
	 * check of the libraries): no hooks and no settings, as
	 * pg_stat_statements does; the extension's functions say what is
	 * missing.
	 */
	if (!process_shared_preload_libraries_in_progress)
		return;

	define_settings();

	/* query_id is a built-in metadata key. */
	EnableQueryId();

	install_shmem_hooks();
	prev_planner = planner_hook;
	planner_hook = tc_planner;
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
	install_log_hook();
	register_release_callbacks();
	remember_server_planner_settings();
	remember_priority_rights();
}
