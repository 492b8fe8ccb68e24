/*
 * reporting.c — what a decision says: NOTICEs and the refusal's ERROR for
 * the client, and one line per warning or refusal in the server log, with a
 * cluster-wide rate limit.
 *
 * The log lines never reach the client (an emit_log_hook clears
 * output_to_client for them), and a refusal whose log line the rate limit
 * suppressed keeps its own ERROR out of the server log too, so an overload of
 * refusals cannot flood the log.
 *
 * Text from clients (tag and `each` values, URL-decoded into any bytes) is
 * made safe for the client's encoding before it is sent (client_safe): a
 * message PostgreSQL cannot convert would fail as it is sent.
 *
 * Locking: TcShared.mutex (a spinlock) guards the rate limit's window and
 * counts; only a count happens under it, and it is released before any elog.
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/elog.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "traffic_control.h"

static emit_log_hook_type prev_emit_log_hook = NULL;

/* Set just before one of our log lines is raised; the hook clears it. */
static bool hide_next_from_client = false;

/*
 * Set just before a refusal whose log line the rate limit suppressed: its
 * ERROR then stays out of the server log too, so an overload of refusals
 * cannot flood the log through PostgreSQL's own ERROR entries either.
 */
static bool hide_next_refusal_from_log = false;

/*
 * Keeps our log lines out of the client's messages whatever their level
 * (INFO, NOTICE, WARNING would otherwise reach it). Only output_to_client
 * is changed, as the hook runs before elog.c sends the message anywhere.
 */
static void
tc_emit_log(ErrorData *edata)
{
	rewrite_duration_cancel(edata);
	if (hide_next_from_client)
	{
		hide_next_from_client = false;
		if (edata->elevel < ERROR)
			edata->output_to_client = false;
	}
	if (hide_next_refusal_from_log)
	{
		hide_next_refusal_from_log = false;
		if (edata->elevel == ERROR && edata->sqlerrcode == ERRCODE_INSUFFICIENT_RESOURCES)
			edata->output_to_server = false;
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/* Would a message of this level reach the server log (elog.c's rule)? */
static bool
reaches_server_log(int elevel)
{
	/* For log_min_messages, LOG ranks between ERROR and FATAL. */
	if (elevel == LOG || elevel == LOG_SERVER_ONLY)
		return log_min_messages == LOG || log_min_messages <= ERROR;
	if (log_min_messages == LOG)
		return elevel >= FATAL;
	return elevel >= log_min_messages;
}

/*
 * Takes one line of the cluster-wide allowance of log_max_per_second lines
 * per wall-clock second (0 = no limit). False: suppress the line. True: log
 * it, after reporting *suppressed lines suppressed since the last one logged.
 */
static bool
take_log_line(int64 *suppressed)
{
	int64		second = GetCurrentTimestamp() / USECS_PER_SEC;
	int			limit = tc_log_max_per_second;
	bool		allowed;

	SpinLockAcquire(&tc_shared->mutex);
	if (tc_shared->log_window != second)
	{
		tc_shared->log_window = second;
		tc_shared->log_window_lines = 0;
	}
	allowed = limit <= 0 || tc_shared->log_window_lines < limit;
	if (allowed)
	{
		tc_shared->log_window_lines++;
		*suppressed = tc_shared->log_suppressed;
		tc_shared->log_suppressed = 0;
	}
	else
		tc_shared->log_suppressed++;
	SpinLockRelease(&tc_shared->mutex);
	return allowed;
}

/* Appends "text" with " and \ escaped, as the core quotes names. */
static void
append_quoted(StringInfo buf, const char *text)
{
	appendStringInfoChar(buf, '"');
	for (const char *c = text ? text : ""; *c != '\0'; c++)
	{
		if (*c == '"' || *c == '\\')
			appendStringInfoChar(buf, '\\');
		appendStringInfoChar(buf, *c);
	}
	appendStringInfoChar(buf, '"');
}

/*
 * One line for the server log, never for the client:
 *   traffic_control: refused: budget "b", rule "r", reason max_concurrent,
 *   application_name "psql", user "alice"
 * with the client's DETAIL. A refusal's statement and context are left to
 * the ERROR that follows.
 */
static bool
log_report(const tc_report *report, bool refused, int elevel)
{
	int64		suppressed = 0;
	StringInfoData line;

	if (!take_log_line(&suppressed))
		return false;
	if (suppressed > 0)
	{
		hide_next_from_client = true;
		ereport(elevel,
				(errhidestmt(true), errhidecontext(true),
				 errmsg_internal("traffic_control: " INT64_FORMAT
								 " more refusal and warning log line%s suppressed"
								 " (log_max_per_second = %d)",
								 suppressed, suppressed == 1 ? "" : "s",
								 tc_log_max_per_second)));
		hide_next_from_client = false;
	}

	initStringInfo(&line);
	appendStringInfoString(&line, refused ? "traffic_control: refused: budget "
						   : "traffic_control: warned: budget ");
	append_quoted(&line, report->budget);
	appendStringInfoString(&line, ", rule ");
	append_quoted(&line, report->rule);
	appendStringInfo(&line, ", reason %s, application_name ",
					 report->limit_name ? report->limit_name : "");
	append_quoted(&line, application_name);
	appendStringInfoString(&line, ", user ");
	append_quoted(&line, current_user_name());

	hide_next_from_client = true;
	ereport(elevel,
			(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
			 errmsg_internal("%s", line.data),
			 report->detail ? errdetail_internal("%s", report->detail) : 0,
			 errhidestmt(refused), errhidecontext(refused)));
	hide_next_from_client = false;
	pfree(line.data);
	return true;
}

/*
 * Logs the warnings and the refusal of one decision, before they are sent.
 * Returns true when the refusal's line was suppressed by the rate limit.
 */
static bool
log_admission(const tc_admission *admission)
{
	int			elevel = tc_log_level == LOG ? LOG_SERVER_ONLY : tc_log_level;

	if (tc_log_level == TC_LOG_OFF || !reaches_server_log(elevel))
		return false;
	for (int i = 0; i < admission->notice_count; i++)
		log_report(&admission->notices[i], false, elevel);
	if (admission->outcome == TC_REFUSED)
		return !log_report(&admission->refusal, true, elevel);
	return false;
}

/*
 * The text as it can be sent to this client: as is when it is ASCII (valid
 * in every encoding PostgreSQL supports), or valid text in the database
 * encoding that the client also uses; otherwise every byte outside ASCII is
 * written \xHH. A message that cannot be converted to the client encoding
 * would fail while it is sent.
 */
const char *
client_safe(const char *text)
{
	const unsigned char *c;
	StringInfoData escaped;
	int			encoding = GetDatabaseEncoding();

	if (text == NULL)
		return NULL;
	for (c = (const unsigned char *) text; *c != '\0' && *c < 0x80; c++)
		;
	if (*c == '\0')
		return text;
	if (encoding != PG_SQL_ASCII && pg_get_client_encoding() == encoding &&
		pg_verifymbstr(text, strlen(text), true))
		return text;
	initStringInfo(&escaped);
	for (c = (const unsigned char *) text; *c != '\0'; c++)
	{
		if (*c < 0x80)
			appendStringInfoChar(&escaped, (char) *c);
		else
			appendStringInfo(&escaped, "\\x%02x", *c);
	}
	return escaped.data;
}

static void
send_notices(const tc_admission *admission)
{
	for (int i = 0; i < admission->notice_count; i++)
	{
		const tc_report *notice = &admission->notices[i];

		ereport(NOTICE,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg_internal("%s", client_safe(notice->message)),
				 errdetail_internal("%s", client_safe(notice->detail)),
				 notice->hint ? errhint("%s", client_safe(notice->hint)) : 0));
	}
}

void
report_admission(const tc_admission *admission)
{
	bool		refusal_log_suppressed = log_admission(admission);

	send_notices(admission);
	if (admission->outcome == TC_REFUSED)
	{
		const tc_report *refusal = &admission->refusal;

		hide_next_refusal_from_log = refusal_log_suppressed;
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg_internal("%s", client_safe(refusal->message)),
				 errdetail_internal("%s", client_safe(refusal->detail)),
				 refusal->hint ? errhint("%s", client_safe(refusal->hint)) : 0));
	}
}

void
install_log_hook(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = tc_emit_log;
}
