/*
 * pg_compat.h — the one place where the shim depends on the PostgreSQL major
 * version: the hook signatures and server APIs that differ between versions,
 * as macros the .c files use instead of the version-specific names.
 *
 * Supported: PostgreSQL 15 (the version Debian 12 ships, the only one built
 * and tested here). 15 is also the floor: shmem_request_hook and
 * MarkGUCPrefixReserved() first appear in 15.
 *
 * For 16, 17 and 18 the differences known from their release notes and
 * headers are handled below, but no build or test has run against them (no
 * such server is packaged for Debian 12): a port is "make it compile with
 * -Werror against that version's headers, then run the whole test command
 * there" (docs/operations.md, "PostgreSQL versions").
 *
 * Checked and the same from 15 through 18, so no macro: the signatures of
 * ExecutorStart_hook (void; only 18's beta 1 had it return bool, reverted
 * before 18.0), ExecutorFinish_hook, ExecutorEnd_hook, ProcessUtility_hook
 * (its last change, readOnlyTree, came in 14), planner_hook (changes in 19),
 * emit_log_hook and shmem_startup_hook.
 *
 * Included by traffic_control.h, after postgres.h.
 */
#ifndef TRAFFIC_CONTROL_PG_COMPAT_H
#define TRAFFIC_CONTROL_PG_COMPAT_H

#if PG_VERSION_NUM < 150000
#error "traffic_control needs PostgreSQL 15 or later (shmem_request_hook, MarkGUCPrefixReserved)"
#endif

/* EnableQueryId() (hooks.c): the header moved in 16. */
#if PG_VERSION_NUM >= 160000
#include "nodes/queryjumble.h"
#else
#include "utils/queryjumble.h"
#endif

/*
 * The ExecutorRun hook's parameters and the arguments passed on to the next
 * hook: 18 dropped execute_once. The parameters are named queryDesc,
 * direction and count in every version.
 */
#if PG_VERSION_NUM >= 180000
#define TC_EXECUTOR_RUN_PARAMS \
	QueryDesc *queryDesc, ScanDirection direction, uint64 count
#define TC_EXECUTOR_RUN_ARGS queryDesc, direction, count
#else
#define TC_EXECUTOR_RUN_PARAMS \
	QueryDesc *queryDesc, ScanDirection direction, uint64 count, bool execute_once
#define TC_EXECUTOR_RUN_ARGS queryDesc, direction, count, execute_once
#endif

/*
 * A PGPROC's index in ProcGlobal->allProcs (what the shared per-backend slots
 * are indexed by): 17 removed PGPROC.pgprocno. Needs storage/proc.h.
 */
#if PG_VERSION_NUM >= 170000
#define TC_PROC_NUMBER(proc) ((int) GetNumberFromPGProc(proc))
#else
#define TC_PROC_NUMBER(proc) ((proc)->pgprocno)
#endif

/*
 * All GUC variables, their number in *count: 16 returns the count itself (and
 * a palloc'd array, taken once at load). Needs utils/guc_tables.h.
 */
#if PG_VERSION_NUM >= 160000
#define TC_GET_GUC_VARIABLES(count) get_guc_variables(count)
#else
#define TC_GET_GUC_VARIABLES(count) \
	(*(count) = GetNumConfigOptions(), get_guc_variables())
#endif

/*
 * The permission check EXPLAIN makes on a planned statement, erroring out
 * when the user may not read a relation: 16 moved the permissions out of the
 * range table (RTEPermissionInfo) and renamed the function.
 */
#if PG_VERSION_NUM >= 160000
#define TC_CHECK_PLAN_PERMISSIONS(pstmt) \
	((void) ExecCheckPermissions((pstmt)->rtable, (pstmt)->permInfos, true))
#else
#define TC_CHECK_PLAN_PERMISSIONS(pstmt) ((void) ExecCheckRTPerms((pstmt)->rtable, true))
#endif

#endif							/* TRAFFIC_CONTROL_PG_COMPAT_H */
