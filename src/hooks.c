/*
 * hooks.c — where PostgreSQL hands statements to traffic_control: _PG_init,
 * the executor and utility hooks, and what counts as a statement.
 *
 * A statement is admitted after planning, before execution: in ExecutorStart
 * for planned statements, in ProcessUtility for utility statements. Nested
 * statements (functions, DO blocks) count one executor nesting level, as
 * pg_stat_statements counts it, and are admitted only with
 * traffic_control.track = all. Utility statements whose cost is an inner
 * query, or that must never be refused, pass through (is_pass_through_utility).
 *
 * Locking: none here. All decisions are made by the C++ core behind
 * include/traffic_control/capi.h; every call into it returns false instead of
 * throwing, and only then does the shim raise a PostgreSQL error (TC_CALL).
 */
#include "postgres.h"

#include "access/parallel.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/queryjumble.h"

#include "traffic_control.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* Executor nesting depth, as pg_stat_statements counts it. */
static int	nesting_level = 0;

static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ExecutorRun_hook_type prev_ExecutorRun = NULL;
static ExecutorFinish_hook_type prev_ExecutorFinish = NULL;
static ExecutorEnd_hook_type prev_ExecutorEnd = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Is this backend, at this depth, one that admits statements at all? */
static bool
admission_active(void)
{
	if (!tc_enabled || tc_shared == NULL || IsParallelWorker())
		return false;
	if (tc_track == TC_TRACK_TOP && nesting_level > 0)
		return false;
	if (nesting_level == 0)
		maybe_reload_config();
	if (tc_config_is_empty)
		return false;
	ensure_core_attached();
	return true;
}

static void
tc_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	if ((eflags & EXEC_FLAG_EXPLAIN_ONLY) == 0 && admission_active())
	{
		PlannedStmt *pstmt = queryDesc->plannedstmt;
		int64		token;
		double		cpu_start;

		token = admit_statement(queryDesc->sourceText, pstmt->stmt_location, pstmt->stmt_len,
								command_name(pstmt->commandType), pstmt->queryId,
								statement_workers(pstmt),
								pstmt->planTree ? pstmt->planTree->total_cost : -1,
								&cpu_start);
		if (token != 0)
			record_holding(token, queryDesc, cpu_start);
	}

	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

static void
tc_ExecutorRun(QueryDesc *queryDesc, ScanDirection direction, uint64 count, bool execute_once)
{
	nesting_level++;
	PG_TRY();
	{
		if (prev_ExecutorRun)
			prev_ExecutorRun(queryDesc, direction, count, execute_once);
		else
			standard_ExecutorRun(queryDesc, direction, count, execute_once);
	}
	PG_FINALLY();
	{
		nesting_level--;
	}
	PG_END_TRY();
	if (held_count > 0)
		note_run(queryDesc, count);
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

static void
tc_ExecutorEnd(QueryDesc *queryDesc)
{
	if (held_count > 0)
		release_query(queryDesc);

	if (prev_ExecutorEnd)
		prev_ExecutorEnd(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
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

static void
tc_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				  ProcessUtilityContext context, ParamListInfo params,
				  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *statement = pstmt->utilityStmt;
	volatile int64 token = 0;
	double		cpu_start = -1;

	if (is_pass_through_utility(statement))
	{
		run_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
		return;
	}

	if (tc_track_utility && admission_active())
		token = admit_statement(queryString, pstmt->stmt_location, pstmt->stmt_len, "utility",
								pstmt->queryId, 0, -1, &cpu_start);

	nesting_level++;
	PG_TRY();
	{
		run_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		nesting_level--;
		if (token != 0)
			release_token(token, cpu_start, false);
		PG_RE_THROW();
	}
	PG_END_TRY();
	nesting_level--;
	if (token != 0)
		release_token(token, cpu_start, true);
}

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("traffic_control must be loaded via shared_preload_libraries"),
				 errhint("Add traffic_control to shared_preload_libraries in postgresql.conf "
						 "and restart the server.")));

	define_settings();

	/* query_id is a built-in metadata key. */
	EnableQueryId();

	install_shmem_hooks();
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
}
