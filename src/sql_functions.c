/*
 * sql_functions.c — the functions behind the extension's SQL objects
 * (sql/traffic_control--1.0.sql): the status views budget_status,
 * rule_status, pattern_estimates and violation_history, explain() and
 * reset().
 *
 * Enforcement needs none of this: it works from shared_preload_libraries
 * alone (src/hooks.c). These functions only read the shared tables
 * (reset() zeroes counters) through the C ABI of the core. Every core call
 * goes through TC_SQL_CALL: the core returns false instead of throwing, and
 * the error is raised here, after no C++ frame is live. The rows the core
 * returns are copied into tuples only after the call returned.
 *
 * The views and explain() use this backend's rule set, brought up to date
 * first (maybe_reload_config): the configuration only changes between
 * top-level statements, so this is the configuration the statement that
 * calls them would be admitted with.
 *
 * The C symbols carry the SQL script's version (_1_0): a later library
 * keeps serving the 1.0 definitions until ALTER EXTENSION UPDATE, as
 * pg_stat_statements does.
 *
 * Locking: none here. The core takes the bucket table's and the pattern
 * table's LWLocks shared to copy them (exclusive for reset()), and the rule
 * counters and the violation history need no lock (atomic operations; see
 * src/core/rule_counters.cpp and src/core/history.cpp).
 */
#include "postgres.h"

#include <math.h>

#include "executor/executor.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "tcop/cmdtag.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "traffic_control/capi.h"
#include "traffic_control.h"

PG_FUNCTION_INFO_V1(traffic_control_budget_status_1_0);
PG_FUNCTION_INFO_V1(traffic_control_budget_status_1_1);
PG_FUNCTION_INFO_V1(traffic_control_rule_status_1_0);
PG_FUNCTION_INFO_V1(traffic_control_pattern_estimates_1_0);
PG_FUNCTION_INFO_V1(traffic_control_violation_history_1_0);
PG_FUNCTION_INFO_V1(traffic_control_explain_1_0);
PG_FUNCTION_INFO_V1(traffic_control_reset_1_0);

#define BUDGET_STATUS_COLUMNS 13
#define BUDGET_STATUS_COLUMNS_1_1 23
#define RULE_STATUS_COLUMNS 4
#define PATTERN_ESTIMATES_COLUMNS 5
#define VIOLATION_HISTORY_COLUMNS 7
#define EXPLAIN_COLUMNS 9

/* As TC_CALL (traffic_control.h): raise only after the core returned. */
#define TC_SQL_CALL(call) \
	do { \
		if (!(call)) \
			ereport(ERROR, \
					(errcode(ERRCODE_INTERNAL_ERROR), \
					 errmsg_internal("%s", tc_last_error()))); \
	} while (0)

/*
 * Every function starts here: the library must have been preloaded (it
 * cannot be loaded any other way, but a clear error is cheap), the rule set
 * current and the core attached to shared memory.
 */
static void
prepare_core(const char *function)
{
	if (tc_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s needs traffic_control to be loaded via shared_preload_libraries",
						function),
				 errhint("Add traffic_control to shared_preload_libraries in postgresql.conf "
						 "and restart the server.")));
	maybe_reload_config();
	ensure_core_attached();
}

/* Saturates: counters are unsigned in the core, bigint in SQL. */
static Datum
counter_datum(uint64 value)
{
	return Int64GetDatum(value > (uint64) PG_INT64_MAX ? PG_INT64_MAX : (int64) value);
}

/*
 * Bytes from the client (tags, `each` values; URL-decoding can make any
 * byte; display values are cut at 255 bytes) as text valid in the database
 * encoding: a byte that does not start a valid character is shown as \xHH.
 * The values are short (at most a few kilobytes).
 */
static char *
valid_string(const char *bytes, size_t len, int *out_len)
{
	int			encoding = GetDatabaseEncoding();
	StringInfoData buf;
	size_t		i = 0;

	if (pg_verifymbstr(bytes, (int) len, true))
	{
		char	   *copy = palloc(len + 1);

		memcpy(copy, bytes, len);
		copy[len] = '\0';
		*out_len = (int) len;
		return copy;
	}
	initStringInfo(&buf);
	while (i < len)
	{
		int			char_len = pg_encoding_verifymbchar(encoding, bytes + i,
														(int) Min(len - i, MAX_MULTIBYTE_CHAR_LEN));

		if (char_len > 0)
		{
			appendBinaryStringInfo(&buf, bytes + i, char_len);
			i += char_len;
		}
		else
		{
			appendStringInfo(&buf, "\\x%02x", (unsigned char) bytes[i]);
			i++;
		}
	}
	*out_len = buf.len;
	return buf.data;
}

static Datum
valid_text_datum(const char *bytes, size_t len)
{
	int			text_len;
	char	   *string = valid_string(bytes, len, &text_len);

	return PointerGetDatum(cstring_to_text_with_len(string, text_len));
}

/* Unix-epoch microseconds (0 = never) as timestamptz. */
bool
unix_us_to_timestamptz(int64 unix_us, TimestampTz *result)
{
	if (unix_us <= 0)
		return false;
	*result = unix_us - ((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY);
	return true;
}

/* ---------------------------------------------------------------------- */
/* traffic_control.budget_status                                          */
/* ---------------------------------------------------------------------- */

/*
 * The rows of budget_status: the 1.0 columns, and with `v1_1` the columns
 * 1.1 appends (blocked_shed, shed_until, the configured limits,
 * utilization_pct, canceled, cpu_seconds, quarantined). `blocked` counts
 * every refusal: in 1.1 those of a shed and of a quarantine too.
 */
static void
budget_status_rows(FunctionCallInfo fcinfo, bool v1_1)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const tc_budget_status_row *rows = NULL;
	size_t		count = 0;
	int			columns PG_USED_FOR_ASSERTS_ONLY =
		v1_1 ? BUDGET_STATUS_COLUMNS_1_1 : BUDGET_STATUS_COLUMNS;
	int64		now_us;

	prepare_core("traffic_control.budget_status");
	InitMaterializedSRF(fcinfo, 0);
	TC_SQL_CALL(tc_budget_status(effective_server_cores(), &rows, &count));
	now_us = unix_now_us();

	for (size_t i = 0; i < count; i++)
	{
		const tc_budget_status_row *row = &rows[i];
		Datum		values[BUDGET_STATUS_COLUMNS_1_1];
		bool		nulls[BUDGET_STATUS_COLUMNS_1_1];
		uint64		blocked;
		TimestampTz timestamp;
		int			c = 0;

		memset(nulls, 0, sizeof(nulls));
		blocked = row->blocked_max_concurrent + row->blocked_per_query_limit +
			row->blocked_server_share +
			(v1_1 ? row->blocked_shed + row->blocked_quarantined : 0);

		values[c++] = CStringGetTextDatum(row->budget);
		if (row->instance != NULL)
			values[c++] = valid_text_datum(row->instance, row->instance_len);
		else
			nulls[c++] = true;
		if (row->mode != NULL)
			values[c++] = CStringGetTextDatum(row->mode);
		else
			nulls[c++] = true;
		values[c++] = Int64GetDatum(row->active);
		values[c++] = Float8GetDatum(row->debt_seconds);
		values[c++] = counter_datum(row->admitted);
		values[c++] = counter_datum(row->warned);
		values[c++] = counter_datum(blocked);
		values[c++] = counter_datum(row->blocked_max_concurrent);
		values[c++] = counter_datum(row->blocked_per_query_limit);
		values[c++] = counter_datum(row->blocked_server_share);
		values[c++] = counter_datum(row->queued);
		if (unix_us_to_timestamptz(row->last_blocked_at_us, &timestamp))
			values[c++] = TimestampTzGetDatum(timestamp);
		else
			nulls[c++] = true;
		if (v1_1)
		{
			values[c++] = counter_datum(row->blocked_shed);
			/* Only a shed that has not ended; the core keeps its deadline. */
			if (row->shed_until_us > now_us &&
				unix_us_to_timestamptz(row->shed_until_us, &timestamp))
				values[c++] = TimestampTzGetDatum(timestamp);
			else
				nulls[c++] = true;
			/* The configured limits: NULL where the budget has none. */
			values[c] = Int64GetDatum(row->max_concurrent);
			nulls[c++] = !row->has_max_concurrent;
			values[c] = Float8GetDatum(row->per_query_limit);
			nulls[c++] = !row->has_per_query_limit;
			values[c] = Float8GetDatum(row->server_share);
			nulls[c++] = !row->has_server_share;
			values[c] = Float8GetDatum(row->burst_limit);
			nulls[c++] = !row->has_server_share;
			values[c] = Float8GetDatum(row->utilization_pct);
			nulls[c++] = !row->has_utilization;
			values[c++] = counter_datum(row->canceled);
			values[c++] = Float8GetDatum(row->cpu_seconds);
			values[c++] = counter_datum(row->blocked_quarantined);
		}
		Assert(c == columns);

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
}

Datum
traffic_control_budget_status_1_0(PG_FUNCTION_ARGS)
{
	budget_status_rows(fcinfo, false);
	return (Datum) 0;
}

Datum
traffic_control_budget_status_1_1(PG_FUNCTION_ARGS)
{
	budget_status_rows(fcinfo, true);
	return (Datum) 0;
}

/* ---------------------------------------------------------------------- */
/* traffic_control.rule_status                                            */
/* ---------------------------------------------------------------------- */

Datum
traffic_control_rule_status_1_0(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const tc_rule_status_row *rows = NULL;
	size_t		count = 0;

	prepare_core("traffic_control.rule_status");
	InitMaterializedSRF(fcinfo, 0);
	TC_SQL_CALL(tc_rule_status(&rows, &count));

	for (size_t i = 0; i < count; i++)
	{
		const tc_rule_status_row *row = &rows[i];
		Datum		values[RULE_STATUS_COLUMNS];
		bool		nulls[RULE_STATUS_COLUMNS];

		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetTextDatum(row->rule);
		values[1] = CStringGetTextDatum(row->budget);
		if (row->has_matched)
			values[2] = counter_datum(row->matched);
		else
			nulls[2] = true;
		if (row->problem != NULL)
			values[3] = CStringGetTextDatum(row->problem);
		else
			nulls[3] = true;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ---------------------------------------------------------------------- */
/* traffic_control.pattern_estimates                                      */
/* ---------------------------------------------------------------------- */

Datum
traffic_control_pattern_estimates_1_0(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const tc_pattern_row *rows = NULL;
	size_t		count = 0;

	prepare_core("traffic_control.pattern_estimates");
	InitMaterializedSRF(fcinfo, 0);
	TC_SQL_CALL(tc_pattern_estimates(&rows, &count));

	for (size_t i = 0; i < count; i++)
	{
		const tc_pattern_row *row = &rows[i];
		Datum		values[PATTERN_ESTIMATES_COLUMNS];
		bool		nulls[PATTERN_ESTIMATES_COLUMNS];

		memset(nulls, 0, sizeof(nulls));
		values[0] = Int64GetDatum(row->query_id);
		values[1] = counter_datum(row->calls);
		values[2] = Float8GetDatum(row->mean_cpu_seconds * 1000.0);
		values[3] = Float8GetDatum(row->mean_plan_cost);
		if (isnan(row->k))
			nulls[4] = true;
		else
			values[4] = Float8GetDatum(row->k);

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ---------------------------------------------------------------------- */
/* traffic_control.violation_history                                      */
/* ---------------------------------------------------------------------- */

Datum
traffic_control_violation_history_1_0(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const tc_violation_history_row *rows = NULL;
	size_t		count = 0;
	int64		now_us;

	prepare_core("traffic_control.violation_history");
	InitMaterializedSRF(fcinfo, 0);
	now_us = GetCurrentTimestamp() +
		((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY);
	TC_SQL_CALL(tc_violation_history(now_us, &rows, &count));

	for (size_t i = 0; i < count; i++)
	{
		const tc_violation_history_row *row = &rows[i];
		Datum		values[VIOLATION_HISTORY_COLUMNS];
		bool		nulls[VIOLATION_HISTORY_COLUMNS];
		TimestampTz minute;

		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetTextDatum(row->budget);
		if (unix_us_to_timestamptz(row->minute_start_s * USECS_PER_SEC, &minute))
			values[1] = TimestampTzGetDatum(minute);
		else
			nulls[1] = true;
		values[2] = counter_datum(row->admitted);
		values[3] = counter_datum(row->warned);
		values[4] = counter_datum(row->blocked_max_concurrent);
		values[5] = counter_datum(row->blocked_per_query_limit);
		values[6] = counter_datum(row->blocked_server_share);

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ---------------------------------------------------------------------- */
/* traffic_control.reset()                                                */
/* ---------------------------------------------------------------------- */

Datum
traffic_control_reset_1_0(PG_FUNCTION_ARGS)
{
	/* EXECUTE is revoked from PUBLIC too; this holds even after a GRANT. */
	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be superuser to reset traffic_control's counters")));
	prepare_core("traffic_control.reset");
	TC_SQL_CALL(tc_reset_counters());
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------- */
/* traffic_control.explain(query text)                                    */
/* ---------------------------------------------------------------------- */

static bool
is_member_of_item(const tc_metadata_item *item)
{
	return item->key_len == strlen("member_of") &&
		memcmp(item->key, "member_of", item->key_len) == 0;
}

static JsonbValue
metadata_string(const char *text, size_t len)
{
	JsonbValue	value;

	value.type = jbvString;
	value.val.string.val = valid_string(text, len, &value.val.string.len);
	return value;
}

/*
 * The metadata as a jsonb object (keys sorted by jsonb itself). member_of,
 * the one key that repeats (a value per role), becomes an array.
 */
static Datum
metadata_jsonb(const tc_explanation *explanation)
{
	JsonbParseState *state = NULL;
	JsonbValue *result;
	bool		member_of_done = false;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (size_t i = 0; i < explanation->metadata_count; i++)
	{
		const tc_metadata_item *item = &explanation->metadata[i];
		JsonbValue	key = metadata_string(item->key, item->key_len);
		JsonbValue	value;

		if (is_member_of_item(item))
		{
			if (member_of_done)
				continue;
			member_of_done = true;
			pushJsonbValue(&state, WJB_KEY, &key);
			pushJsonbValue(&state, WJB_BEGIN_ARRAY, NULL);
			for (size_t j = i; j < explanation->metadata_count; j++)
			{
				const tc_metadata_item *role = &explanation->metadata[j];

				if (!is_member_of_item(role))
					continue;
				value = metadata_string(role->value, role->value_len);
				pushJsonbValue(&state, WJB_ELEM, &value);
			}
			pushJsonbValue(&state, WJB_END_ARRAY, NULL);
			continue;
		}
		value = metadata_string(item->value, item->value_len);
		pushJsonbValue(&state, WJB_KEY, &key);
		pushJsonbValue(&state, WJB_VALUE, &value);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbPGetDatum(JsonbValueToJsonb(result));
}

static const char *
decision_name(tc_explain_decision decision)
{
	switch (decision)
	{
		case TC_DECISION_WARN:
			return "warn";
		case TC_DECISION_REFUSE:
			return "refuse";
		case TC_DECISION_ADMIT:
			break;
	}
	return "admit";
}

/*
 * An error with a position in the explained text points into that text (as
 * SPI does for a query a function runs), not into the calling statement.
 */
static void
explained_query_error_callback(void *arg)
{
	const char *query_string = (const char *) arg;
	int			position = geterrposition();

	if (position > 0)
	{
		errposition(0);
		internalerrposition(position);
		internalerrquery(query_string);
	}
}

/*
 * Parses, analyzes and plans the one statement of `query_string` as the
 * current user, and fills what admission would see of it.
 */
static void
plan_statement(const char *query_string, tc_statement *statement)
{
	ErrorContextCallback error_context;
	List	   *parsetrees;
	RawStmt    *raw;
	List	   *queries;
	Query	   *query;
	uint64		query_id;

	error_context.callback = explained_query_error_callback;
	error_context.arg = unconstify(char *, query_string);
	error_context.previous = error_context_stack;
	error_context_stack = &error_context;

	parsetrees = pg_parse_query(query_string);
	if (list_length(parsetrees) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("traffic_control.explain() takes exactly one statement"),
				 errdetail("The text holds %d statements.", list_length(parsetrees))));
	raw = linitial_node(RawStmt, parsetrees);

	if (is_pass_through_utility(raw->stmt))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("traffic_control does not admit %s statements themselves",
						GetCommandTagName(CreateCommandTag(raw->stmt))),
				 errhint("Explain the query the statement runs, if it runs one: that query is "
						 "admitted on its own.")));

	/* The statement's own text, as the executor hook passes it. */
	statement->text = query_string + Max(raw->stmt_location, 0);
	statement->text_len = raw->stmt_len > 0 ? (size_t) raw->stmt_len : strlen(statement->text);

	queries = pg_analyze_and_rewrite_fixedparams(raw, query_string, NULL, 0, NULL);
	if (list_length(queries) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("traffic_control.explain() cannot explain a statement that rules "
						"rewrite into %d statements", list_length(queries))));
	query = linitial_node(Query, queries);

	if (query->commandType == CMD_UTILITY)
	{
		/* As the utility hook admits it: no plan, no cost, no workers. */
		statement->command = "utility";
		statement->plan_cost = -1;
		statement->parallel_workers = 0;
		query_id = query->queryId;
	}
	else
	{
		PlannedStmt *pstmt = pg_plan_query(query, query_string, CURSOR_OPT_PARALLEL_OK, NULL);

		/* As EXPLAIN: only a query the user may run is explained. */
		TC_CHECK_PLAN_PERMISSIONS(pstmt);
		statement->command = command_name(pstmt->commandType);
		statement->plan_cost = admission_plan_cost(pstmt);
		statement->parallel_workers = statement_workers(pstmt);
		query_id = pstmt->queryId;
	}
	statement->query_id = (int64) query_id;
	statement->has_query_id = query_id != UINT64CONST(0);

	error_context_stack = error_context.previous;
}

Datum
traffic_control_explain_1_0(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *query_string = text_to_cstring(PG_GETARG_TEXT_PP(0));
	tc_statement statement;
	tc_explanation explanation;
	Datum		metadata;

	prepare_core("traffic_control.explain");
	InitMaterializedSRF(fcinfo, 0);

	memset(&statement, 0, sizeof(statement));
	plan_statement(query_string, &statement);
	fill_builtins(&statement);
	statement.server_cores = effective_server_cores();
	statement.message_prefix = "";	/* only the DETAIL is shown */

	TC_SQL_CALL(tc_explain(&statement, &explanation));

	metadata = metadata_jsonb(&explanation);
	if (explanation.row_count == 0)
	{
		/* No budget applies: admitted untouched; the metadata tells why. */
		Datum		values[EXPLAIN_COLUMNS];
		bool		nulls[EXPLAIN_COLUMNS];

		memset(values, 0, sizeof(values));
		memset(nulls, true, sizeof(nulls));
		values[5] = CStringGetTextDatum(decision_name(TC_DECISION_ADMIT));
		nulls[5] = false;
		values[8] = metadata;
		nulls[8] = false;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		return (Datum) 0;
	}

	for (size_t i = 0; i < explanation.row_count; i++)
	{
		const tc_explain_row *row = &explanation.rows[i];
		Datum		values[EXPLAIN_COLUMNS];
		bool		nulls[EXPLAIN_COLUMNS];

		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetTextDatum(row->budget);
		if (row->instance != NULL)
			values[1] = valid_text_datum(row->instance, row->instance_len);
		else
			nulls[1] = true;
		values[2] = CStringGetTextDatum(row->rule);
		values[3] = CStringGetTextDatum(row->mode);
		if (explanation.has_prediction)
			values[4] = Float8GetDatum(explanation.predicted_seconds);
		else
			nulls[4] = true;
		values[5] = CStringGetTextDatum(decision_name(row->decision));
		if (row->limit_name != NULL)
			values[6] = CStringGetTextDatum(row->limit_name);
		else
			nulls[6] = true;
		if (row->detail != NULL)
			values[7] = valid_text_datum(row->detail, strlen(row->detail));
		else
			nulls[7] = true;
		values[8] = metadata;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
