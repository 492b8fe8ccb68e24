/*
 * duration.c — max_duration_ms: a statement of an enforce budget still
 * running after its budget's max_duration_ms is canceled (SQLSTATE 57014,
 * `query canceled by budget "<b>": max_duration_ms exceeded`); one of a warn
 * budget that ran longer gets a NOTICE as it ends (holdings.c) and runs on.
 *
 * One timer per backend, a USER_TIMEOUT registered at its first use (the
 * timeout table is set up per process, after the library is loaded). The
 * first statement that needs it arms it; its holding's release disarms it,
 * on every path (holdings.c). A nested statement (track = all) runs under
 * the timer of the statement around it.
 *
 * The timer's handler does what statement_timeout's does: it asks for a
 * query cancel, and PostgreSQL raises "canceling statement due to user
 * request" (57014) at its next interrupt check. As the error is reported,
 * the emit_log_hook (reporting.c) puts the budget's message and DETAIL in
 * its place (rewrite_duration_cancel), for the client and the server log.
 * An EXCEPTION block that catches the cancel sees PostgreSQL's text, with
 * the same SQLSTATE.
 *
 * No locks: all of this is the backend's own state. The handler only sets
 * flags (volatile sig_atomic_t) and the latch.
 */
#include "postgres.h"

#include <signal.h>

#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timeout.h"

#include "traffic_control/capi.h"
#include "traffic_control.h"

static bool duration_timeout_registered = false;
static TimeoutId duration_timeout;
static volatile sig_atomic_t duration_armed = false;
static volatile sig_atomic_t duration_fired = false;
/* The fired cancel has been reported with the budget's text (once). */
static bool cancel_reported = false;
/*
 * The cancel's text, client-safe (copied at an arming whose text's version
 * differs from the last one: no allocation, and no copy for a stream of
 * statements of one budget).
 */
static char cancel_message[1024];
static char cancel_detail[1024];
static uint64 cancel_text_version = 0;
static int	cancel_text_encoding = -1; /* client_safe depends on it */

static void
duration_timeout_handler(void)
{
	if (!duration_armed)
		return;
	duration_fired = true;
	QueryCancelPending = true;
	InterruptPending = true;
	SetLatch(MyLatch);
}

static void
remember_text(char *slot, size_t size, const char *text)
{
	strlcpy(slot, text != NULL ? client_safe(text) : "", size);
}

bool
arm_max_duration(int64 after_ms, const tc_report *cancel, uint64 text_version)
{
	if (duration_armed || after_ms <= 0)
		return false;
	if (!duration_timeout_registered)
	{
		duration_timeout = RegisterTimeout(USER_TIMEOUT, duration_timeout_handler);
		duration_timeout_registered = true;
	}
	if (text_version == 0 || text_version != cancel_text_version ||
		pg_get_client_encoding() != cancel_text_encoding)
	{
		remember_text(cancel_message, sizeof(cancel_message), cancel->message);
		remember_text(cancel_detail, sizeof(cancel_detail), cancel->detail);
		cancel_text_version = text_version;
		cancel_text_encoding = pg_get_client_encoding();
	}
	duration_fired = false;
	cancel_reported = false;
	duration_armed = true;
	enable_timeout_after(duration_timeout, (int) Min(after_ms, (int64) PG_INT32_MAX));
	return true;
}

void
disarm_max_duration(void)
{
	if (!duration_armed)
		return;
	duration_armed = false;
	disable_timeout(duration_timeout, false);
}

void
forget_duration_cancel(void)
{
	if (!duration_armed)
		duration_fired = false;
	cancel_reported = false;
}

bool
duration_cancel_fired(void)
{
	return duration_fired;
}

void
cancel_if_duration_expired(void)
{
	/*
	 * The timer fired while the statement was not running (a cursor between
	 * fetches: PostgreSQL drops a cancel that arrives while it waits for the
	 * client): the statement is canceled as it runs again.
	 */
	if (duration_armed && duration_fired)
	{
		QueryCancelPending = true;
		InterruptPending = true;
	}
}

bool
rewrite_duration_cancel(ErrorData *edata)
{
	if (!duration_fired || cancel_reported || edata->elevel != ERROR ||
		edata->sqlerrcode != ERRCODE_QUERY_CANCELED || cancel_message[0] == '\0')
		return false;
	cancel_reported = true;
	/* elog.c frees these with the error, in ErrorContext (current here). */
	edata->message = pstrdup(cancel_message);
	edata->detail = pstrdup(cancel_detail);
	edata->detail_log = NULL;
	edata->hint = NULL;
	return true;
}
