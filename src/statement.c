/*
 * statement.c — one statement's way into the core: its built-in metadata
 * (role, database, client address, application_name, command, query id),
 * its planned parallel workers, and the call to tc_admit.
 *
 * The role's and the database's names are looked up once and cached; the
 * client address is formatted once per connection; the roles the current
 * role is a member of (member_of) are cached until a role, a membership or
 * the rules change.
 *
 * It also tells the control plane apart (is_control_plane): a statement that
 * only reloads the configuration or reads and calls the extension's own
 * objects is never admitted, so that an emergency configuration cannot lock
 * the operator out of fixing it.
 *
 * Locking: none here (the core takes its own).
 */
#include "postgres.h"

#include <sys/socket.h>

#include "access/transam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "common/ip.h"
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "utils/acl.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "traffic_control.h"

/* Cached built-ins. */
static Oid	cached_user_id = InvalidOid;
static char cached_user_name[NAMEDATALEN];
static char *cached_database = NULL;
static bool remote_address_known = false;
static char remote_address[NI_MAXHOST];
static bool has_remote_address = false;

/*
 * member_of: those of the roles the rules name that the current role is a
 * member of. Worked out again only when the role, the rules, or a role or a
 * membership (pg_authid, pg_auth_members: a syscache invalidation) changed,
 * so a statement costs catalog lookups only then; none at all when no rule
 * tests member_of.
 */
static size_t member_of_configured = 0;	/* tc_config_member_of_role_count() */
static uint64 member_of_changes = 0;	/* loads and invalidations so far */
static bool member_of_valid = false;	/* the list below is complete */
static uint64 member_of_resolved_at = 0;	/* member_of_changes it reflects */
static Oid	member_of_user = InvalidOid;	/* the role it is for */
static bool member_of_callbacks_registered = false;
static MemoryContext member_of_context = NULL;
static const char **member_of_roles = NULL; /* in member_of_context */
static size_t member_of_count = 0;

const char *
command_name(CmdType command)
{
	switch (command)
	{
		case CMD_SELECT:
			return "select";
		case CMD_INSERT:
			return "insert";
		case CMD_UPDATE:
			return "update";
		case CMD_DELETE:
			return "delete";
		case CMD_MERGE:
			return "merge";
		default:
			return "utility";
	}
}

/*
 * The planned parallel workers of a plan tree (every Gather and Gather
 * Merge). With `allowed`, each Gather's workers are first cut to what is
 * left of *allowed, in plan order, and *allowed is reduced by them.
 */
static int
plan_workers(Plan *plan, int *allowed)
{
	int			workers = 0;
	int		   *num_workers = NULL;
	ListCell   *cell;
	List	   *children = NIL;

	if (plan == NULL)
		return 0;
	check_stack_depth();
	switch (nodeTag(plan))
	{
		case T_Gather:
			num_workers = &((Gather *) plan)->num_workers;
			break;
		case T_GatherMerge:
			num_workers = &((GatherMerge *) plan)->num_workers;
			break;
		case T_Append:
			children = ((Append *) plan)->appendplans;
			break;
		case T_MergeAppend:
			children = ((MergeAppend *) plan)->mergeplans;
			break;
		case T_BitmapAnd:
			children = ((BitmapAnd *) plan)->bitmapplans;
			break;
		case T_BitmapOr:
			children = ((BitmapOr *) plan)->bitmapplans;
			break;
		case T_SubqueryScan:
			workers += plan_workers(((SubqueryScan *) plan)->subplan, allowed);
			break;
		case T_CustomScan:
			children = ((CustomScan *) plan)->custom_plans;
			break;
		default:
			break;
	}
	if (num_workers != NULL)
	{
		if (allowed != NULL)
		{
			*num_workers = Min(*num_workers, Max(*allowed, 0));
			*allowed -= *num_workers;
		}
		workers += *num_workers;
	}
	foreach(cell, children)
		workers += plan_workers((Plan *) lfirst(cell), allowed);
	return workers + plan_workers(plan->lefttree, allowed) +
		plan_workers(plan->righttree, allowed);
}

static int
all_plan_workers(PlannedStmt *pstmt, int *allowed)
{
	int			workers;
	ListCell   *cell;

	if (!pstmt->parallelModeNeeded)
		return 0;
	workers = plan_workers(pstmt->planTree, allowed);
	foreach(cell, pstmt->subplans)
		workers += plan_workers((Plan *) lfirst(cell), allowed);
	return workers;
}

int
statement_workers(PlannedStmt *pstmt)
{
	return all_plan_workers(pstmt, NULL);
}

void
clamp_statement_workers(QueryDesc *queryDesc, int allowed)
{
	PlannedStmt *copy;

	if (statement_workers(queryDesc->plannedstmt) <= allowed)
		return;
	/* The plan may be cached for later executions: cut a copy. */
	copy = copyObject(queryDesc->plannedstmt);
	(void) all_plan_workers(copy, &allowed);
	queryDesc->plannedstmt = copy;
}

static void
member_of_invalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	/*
	 * Called while invalidations are processed, maybe in the middle of
	 * fill_member_of's lookups: no catalog access here, only a count that
	 * makes the list being built out of date.
	 */
	member_of_changes++;
}

void
member_of_config_changed(void)
{
	/* Asked here, once per load, not on every statement. */
	member_of_configured = tc_config_member_of_role_count();
	member_of_changes++;
}

/*
 * Membership as pg_auth_members records it, directly or through other
 * roles, whatever their INHERIT; a role is a member of itself. Not
 * superuserness: is_member_of_role() counts a superuser as a member of
 * every role, which would put maintenance work of the postgres role in
 * every member_of budget. A role that does not exist (yet) is a member of
 * nothing and has no members.
 */
static void
fill_member_of(tc_statement *statement, Oid user_id)
{
	statement->member_of = NULL;
	statement->member_of_count = 0;
	if (member_of_configured == 0)
		return;
	if (!member_of_valid || member_of_resolved_at != member_of_changes ||
		user_id != member_of_user)
	{
		uint64		changes = member_of_changes;

		/* The catalog can only be read inside a transaction. */
		if (!IsTransactionState())
			return;
		if (!member_of_callbacks_registered)
		{
			CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, member_of_invalidate, (Datum) 0);
			CacheRegisterSyscacheCallback(AUTHOID, member_of_invalidate, (Datum) 0);
			member_of_context = AllocSetContextCreate(TopMemoryContext,
													  "traffic_control member_of",
													  ALLOCSET_SMALL_SIZES);
			member_of_callbacks_registered = true;
		}
		/* Invalid until the end: an error on the way leaves it invalid. */
		member_of_valid = false;
		MemoryContextReset(member_of_context);
		member_of_count = 0;
		member_of_roles = MemoryContextAlloc(member_of_context,
											 member_of_configured * sizeof(const char *));
		for (size_t i = 0; i < member_of_configured; i++)
		{
			const char *name = tc_config_member_of_role(i);
			Oid			role = name != NULL ? get_role_oid(name, true) : InvalidOid;

			if (OidIsValid(role) && is_member_of_role_nosuper(user_id, role))
				member_of_roles[member_of_count++] = MemoryContextStrdup(member_of_context,
																		 name);
		}
		member_of_user = user_id;
		member_of_resolved_at = changes;
		member_of_valid = true;
	}
	statement->member_of = member_of_roles;
	statement->member_of_count = member_of_count;
}

void
fill_builtins(tc_statement *statement)
{
	Oid			user_id = GetUserId();

	if (user_id != cached_user_id)
	{
		char	   *name = GetUserNameFromId(user_id, true);

		strlcpy(cached_user_name, name ? name : "", sizeof(cached_user_name));
		cached_user_id = user_id;
	}
	statement->username = cached_user_name[0] ? cached_user_name : NULL;
	/* The estimator learns per (role, database, query id). */
	statement->user_id = (uint32) user_id;
	statement->database_id = (uint32) MyDatabaseId;

	if (cached_database == NULL && OidIsValid(MyDatabaseId))
	{
		char	   *name = get_database_name(MyDatabaseId);

		if (name)
			cached_database = MemoryContextStrdup(TopMemoryContext, name);
	}
	statement->database = cached_database;

	if (!remote_address_known)
	{
		remote_address_known = true;
		if (MyProcPort != NULL &&
			(MyProcPort->raddr.addr.ss_family == AF_INET ||
			 MyProcPort->raddr.addr.ss_family == AF_INET6) &&
			pg_getnameinfo_all(&MyProcPort->raddr.addr, MyProcPort->raddr.salen,
							   remote_address, sizeof(remote_address), NULL, 0,
							   NI_NUMERICHOST) == 0)
		{
			char	   *scope = strchr(remote_address, '%');

			if (scope)
				*scope = '\0';	/* fe80::1%eth0: the zone is not part of the address */
			has_remote_address = true;
		}
	}
	statement->remote_address = has_remote_address ? remote_address : NULL;
	statement->application_name = application_name;
	fill_member_of(statement, user_id);
}

/* ---- the control plane ---- */

typedef struct ControlPlaneWalk
{
	bool		extension_known;	/* extension looked up (once per walk) */
	Oid			extension;		/* traffic_control's OID; InvalidOid: not installed */
	bool		touches_control_plane;	/* calls or reads one of ours, or pg_reload_conf */
} ControlPlaneWalk;

/* Is the object a member of the traffic_control extension? */
static bool
extension_member(ControlPlaneWalk *walk, Oid class_id, Oid object_id)
{
	if (!walk->extension_known)
	{
		walk->extension = get_extension_oid("traffic_control", true);
		walk->extension_known = true;
	}
	return OidIsValid(walk->extension) &&
		getExtensionOfObject(class_id, object_id) == walk->extension;
}

/*
 * check_function_callback: true for a function the control plane may not
 * call. Allowed: pg_reload_conf(), the extension's functions, and built-in
 * functions that are neither volatile nor set-returning (comparisons,
 * casts, aggregates, now()), so the work is bounded by the extension's own
 * rows.
 */
static bool
function_outside_control_plane(Oid function, void *context)
{
	ControlPlaneWalk *walk = (ControlPlaneWalk *) context;

	if (function == F_PG_RELOAD_CONF)
	{
		walk->touches_control_plane = true;
		return false;
	}
	if (function >= FirstNormalObjectId)
	{
		if (!extension_member(walk, ProcedureRelationId, function))
			return true;
		walk->touches_control_plane = true;
		return false;
	}
	return get_func_retset(function) || func_volatile(function) == PROVOLATILE_VOLATILE;
}

static bool
expression_outside_control_plane(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (check_functions_in_node(node, function_outside_control_plane, context))
		return true;
	return expression_tree_walker(node, expression_outside_control_plane, context);
}

/*
 * Walks the plan shapes a query of the extension's views and functions
 * takes; any other kind of plan node is not the control plane.
 */
static bool
plan_outside_control_plane(Plan *plan, ControlPlaneWalk *walk)
{
	List	   *expressions = NIL;
	List	   *children = NIL;
	ListCell   *cell;

	if (plan == NULL)
		return false;
	check_stack_depth();
	switch (nodeTag(plan))
	{
		case T_Result:
			expressions = list_make1(((Result *) plan)->resconstantqual);
			break;
		case T_FunctionScan:
			expressions = ((FunctionScan *) plan)->functions;
			break;
		case T_SubqueryScan:
			children = list_make1(((SubqueryScan *) plan)->subplan);
			break;
		case T_Limit:
			expressions = list_make2(((Limit *) plan)->limitOffset, ((Limit *) plan)->limitCount);
			break;
		case T_Hash:
			expressions = ((Hash *) plan)->hashkeys;
			break;
		case T_HashJoin:
			expressions = list_concat(list_make1(((Join *) plan)->joinqual),
									  ((HashJoin *) plan)->hashclauses);
			break;
		case T_MergeJoin:
			expressions = list_concat(list_make1(((Join *) plan)->joinqual),
									  ((MergeJoin *) plan)->mergeclauses);
			break;
		case T_NestLoop:
			expressions = list_make1(((Join *) plan)->joinqual);
			break;
		case T_Append:
			children = ((Append *) plan)->appendplans;
			break;
		case T_Agg:
		case T_Sort:
		case T_IncrementalSort:
		case T_Unique:
		case T_Material:
			break;
		default:
			return true;
	}
	if (expression_outside_control_plane((Node *) plan->targetlist, walk) ||
		expression_outside_control_plane((Node *) plan->qual, walk) ||
		expression_outside_control_plane((Node *) expressions, walk))
		return true;
	foreach(cell, children)
	{
		if (plan_outside_control_plane((Plan *) lfirst(cell), walk))
			return true;
	}
	return plan_outside_control_plane(plan->lefttree, walk) ||
		plan_outside_control_plane(plan->righttree, walk);
}

bool
is_control_plane(PlannedStmt *pstmt)
{
	ControlPlaneWalk walk;
	ListCell   *cell;

	if (pstmt->commandType != CMD_SELECT)
		return false;
	/* Cheap first: any table (the common case) is not the control plane. */
	foreach(cell, pstmt->rtable)
	{
		RangeTblEntry *rte = lfirst_node(RangeTblEntry, cell);

		switch (rte->rtekind)
		{
			case RTE_RELATION:
				if (rte->relkind != RELKIND_VIEW)
					return false;
				break;
			case RTE_FUNCTION:
			case RTE_SUBQUERY:
			case RTE_JOIN:
			case RTE_RESULT:
				break;
			default:
				return false;
		}
	}

	walk.extension_known = false;
	walk.touches_control_plane = false;
	foreach(cell, pstmt->rtable)
	{
		RangeTblEntry *rte = lfirst_node(RangeTblEntry, cell);

		if (rte->rtekind != RTE_RELATION)
			continue;
		if (!extension_member(&walk, RelationRelationId, rte->relid))
			return false;
		walk.touches_control_plane = true;
	}
	if (plan_outside_control_plane(pstmt->planTree, &walk))
		return false;
	foreach(cell, pstmt->subplans)
	{
		if (plan_outside_control_plane((Plan *) lfirst(cell), &walk))
			return false;
	}
	return walk.touches_control_plane;
}

const char *
current_user_name(void)
{
	return cached_user_name;
}

int64
unix_now_us(void)
{
	return GetCurrentTimestamp() +
		((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY);
}

/*
 * Reading the process CPU clock is a system call (a few microseconds on a
 * VM), as long as a whole cheap statement. So it is read for every statement
 * whose cost is unknown or predicted at 0.5 ms of CPU or more, and for cheap
 * ones at most once per TC_CHEAP_SAMPLE_INTERVAL_US of wall-clock time per
 * backend: every cheap statement of a backend running a few per second, about
 * one in 250 of one running 25,000 per second. That is enough to keep
 * learning their k, and bounds the cost of measuring to about 100 pairs of
 * clock reads per second and backend. An unmeasured statement keeps the debt
 * it was charged at admission.
 */
#define TC_CHEAP_STATEMENT_SECONDS 0.0005
#define TC_CHEAP_SAMPLE_INTERVAL_US 10000

static bool
worth_measuring(double predicted_seconds, int64 wall_now_us)
{
	static int64 last_cheap_sample_us = 0;

	if (predicted_seconds < 0 || predicted_seconds >= TC_CHEAP_STATEMENT_SECONDS)
		return true;
	/* A clock stepped back counts as time passed: sample again at once. */
	if (wall_now_us >= last_cheap_sample_us &&
		wall_now_us - last_cheap_sample_us < TC_CHEAP_SAMPLE_INTERVAL_US)
		return false;
	last_cheap_sample_us = wall_now_us;
	return true;
}

int
admit_statement(const TcStatementToAdmit *what, QueryDesc *query, int utility_level)
{
	tc_statement statement;
	tc_admission admission;

	memset(&statement, 0, sizeof(statement));
	if (what->source != NULL)
	{
		int			location = Max(what->location, 0);

		statement.text = what->source + location;
		statement.text_len = what->length > 0 ? (size_t) what->length :
			strlen(what->source + location);
	}
	fill_builtins(&statement);
	statement.command = what->command;
	statement.query_id = (int64) what->query_id;
	statement.has_query_id = what->query_id != UINT64CONST(0);
	statement.parallel_workers = what->workers;
	statement.workers_can_be_cut = what->workers_can_be_cut;
	statement.plan_cost = what->plan_cost;
	statement.server_cores = effective_server_cores();
	statement.message_prefix = tc_message_prefix;

	reserve_held_record();

	admit_attempt(&statement, TC_ATTEMPT_FIRST, &admission);
	if (admission.outcome == TC_MUST_WAIT)
		wait_for_admission(&statement, &admission);

	/* Held from here on, whatever reporting it does: a NOTICE can fail. */
	if (admission.holding != 0 || admission.cpu_priority > 0 ||
		admission.cancel_after_ms > 0 || admission.warn_after_ms > 0)
	{
		record_holding(admission.holding, query, utility_level,
					   admission.measure_cpu &&
					   worth_measuring(admission.predicted_seconds, statement.wall_now_us),
					   admission.cpu_priority);
		if (admission.cancel_after_ms > 0 || admission.warn_after_ms > 0)
			record_max_duration(&admission, what->query_id);
	}
	/* A statement that runs at no priority of its own ends a lingering one. */
	if (admission.cpu_priority <= 0 || !cpu_priority_takes_effect() ||
		admission.outcome != TC_ADMITTED)
		restore_priority_if_due();
	/* Before the refusal is raised: the pattern is not to run again soon. */
	for (int i = 0; i < admission.quarantine_count; i++)
		quarantine_pattern(admission.quarantine[i].budget, admission.quarantine[i].seconds,
						   TC_QUARANTINE_PER_QUERY_LIMIT, what->query_id, GetUserId());
	report_admission(&admission);
	return Min(admission.parallel_workers, what->workers);
}
