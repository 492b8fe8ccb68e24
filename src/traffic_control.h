/*
 * traffic_control.h — what src/traffic_control.c shares with the other files
 * of the PostgreSQL shim (src/sql_functions.c, the SQL interface).
 *
 * These are internal to the library: hidden from the dynamic symbol table
 * (PostgreSQL 15 does not build modules with -fvisibility=hidden), so a
 * function of the same name in another loaded library can never take their
 * place.
 */
#ifndef TRAFFIC_CONTROL_SHIM_H
#define TRAFFIC_CONTROL_SHIM_H

#include "nodes/nodes.h"
#include "nodes/plannodes.h"

#include "traffic_control/capi.h"

#if defined(__GNUC__)
#define TC_INTERNAL __attribute__((visibility("hidden")))
#else
#define TC_INTERNAL
#endif

/* The shared segment; NULL when the library was not preloaded. */
extern TC_INTERNAL struct TcShared *tc_shared;

/* Attaches the core to the shared segment (tc_shared must be set). */
extern TC_INTERNAL void ensure_core_attached(void);

/*
 * Rebuilds this backend's rule set when traffic_control.rules or .budgets
 * changed. Those settings change only between top-level statements (they are
 * reloaded with the configuration file, never SET), so calling it from a SQL
 * function does not change the rules under a running statement.
 */
extern TC_INTERNAL void maybe_reload_config(void);

/* traffic_control.server_cores, or the number of online CPUs when it is 0. */
extern TC_INTERNAL double effective_server_cores(void);

/* Planned parallel workers of a statement (all its Gather nodes). */
extern TC_INTERNAL int statement_workers(PlannedStmt *pstmt);

/* The `command` metadata value of a planned statement's command type. */
extern TC_INTERNAL const char *command_name(CmdType command);

/* Fills the built-in metadata of the current session and role. */
extern TC_INTERNAL void fill_builtins(tc_statement *statement);

/* Utility statements that are never admitted themselves. */
extern TC_INTERNAL bool is_pass_through_utility(Node *statement);

#endif							/* TRAFFIC_CONTROL_SHIM_H */
