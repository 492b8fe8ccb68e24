"""psycopg 3 against a cluster running traffic_control with the budgets of
regress/test.conf:

  client_shed: enforce, max_concurrent 0, rule matches /*test='client_shed'*/
  client_warn: warn,    max_concurrent 0, rule matches /*test='client_warn'*/

Each case runs over three paths:
  simple   -- no parameters, prepare=False: the simple query protocol (PQsendQuery)
  extended -- parameters, prepare=False: the extended protocol, unnamed statement
              (PQsendQueryParams)
  prepared -- parameters, prepare=True: a named prepared statement (_pg3_N)
              executed with PQsendQueryPrepared

Connection: the standard PG* environment variables (test/run_all.sh exports
them for its cluster); PGDATABASE defaults to `postgres`.

Run with Debian's python3 (python3-psycopg): /usr/bin/python3 -m unittest -v
"""

import os
import unittest

import psycopg
from psycopg import errors

PREFIX = "[PGINSIGHTS] Traffic Control:"
SHED = "/*test='client_shed'*/"
WARN = "/*test='client_warn'*/"
BLOCKED = PREFIX + ' query blocked by budget "client_shed": max_concurrent exceeded'
WOULD_BLOCK = PREFIX + ' query would be blocked by budget "client_warn": max_concurrent exceeded'

# How each path sends a statement: (sql, params, prepare). `label` is selected
# back so the result can be checked; 7 travels as a bind parameter where there is one.
PATHS = {
    "simple": lambda label, tag: (f"SELECT '{label}'::text AS label, 7 AS n {tag}", None, False),
    "extended": lambda label, tag: (f"SELECT '{label}'::text AS label, %s::int AS n {tag}", (7,), False),
    "prepared": lambda label, tag: (f"SELECT '{label}'::text AS label, %s::int AS n {tag}", (7,), True),
}

# Executions per case: the prepared path runs often enough that PostgreSQL's
# plan cache would switch to a generic plan (after 5 custom plans).
RUNS = {"simple": 1, "extended": 2, "prepared": 7}


class Notice:
    """The fields of a notice, copied inside the handler: psycopg's Diagnostic
    reads from a libpq result that is freed when the handler returns, so a
    Diagnostic kept for later reads None everywhere."""

    def __init__(self, diag):
        self.severity = diag.severity
        self.sqlstate = diag.sqlstate
        self.message_primary = diag.message_primary
        self.message_detail = diag.message_detail


def connect(autocommit=True):
    conn = psycopg.connect(dbname=os.environ.get("PGDATABASE", "postgres"), autocommit=autocommit)
    notices = []
    conn.add_notice_handler(lambda diag: notices.append(Notice(diag)))
    return conn, notices


def run(conn, path, label, tag):
    sql, params, prepare = PATHS[path](label, tag)
    return conn.execute(sql, params, prepare=prepare).fetchall()


class ProtocolCheck(unittest.TestCase):
    """The paths really use the protocols their names say."""

    def test_simple_accepts_two_statements_extended_refuses_them(self):
        conn, _ = connect()
        with conn:
            cur = conn.execute("SELECT 1 AS a; SELECT 2 AS b", prepare=False)
            self.assertEqual(cur.fetchall(), [(1,)])
            self.assertTrue(cur.nextset(), "a second result over the simple protocol")
            self.assertEqual(cur.fetchall(), [(2,)])
            with self.assertRaisesRegex(errors.SyntaxError, "multiple commands"):
                conn.execute("SELECT %s::int AS a; SELECT 2 AS b", (1,), prepare=False)
            with self.assertRaisesRegex(errors.SyntaxError, "multiple commands"):
                conn.execute("SELECT %s::int AS a; SELECT 2 AS b", (1,), prepare=True)
            conn.execute("SELECT %s::int AS probe", (1,), prepare=True)
            rows = conn.execute(
                "SELECT from_sql FROM pg_prepared_statements"
                " WHERE statement = 'SELECT $1::int AS probe'").fetchall()
            self.assertEqual(rows, [(False,)], "a protocol-level named statement exists")


class DriverTest(unittest.TestCase):

    def assert_refusal(self, exc):
        self.assertIsInstance(exc, errors.InsufficientResources)
        self.assertEqual(exc.sqlstate, "53000")
        self.assertTrue(str(exc).startswith(PREFIX), str(exc))
        self.assertEqual(exc.diag.severity, "ERROR")
        self.assertEqual(exc.diag.message_primary, BLOCKED)
        detail = exc.diag.message_detail
        self.assertIsNotNone(detail, "DETAIL is present")
        self.assertIn('Rule "client_shed"', detail)
        self.assertIn("mode enforce", detail)

    # One test per path and case; they are attached below the class.
    def check_warn(self, path):
        conn, notices = connect()
        with conn:
            for i in range(RUNS[path]):
                notices.clear()
                rows = run(conn, path, f"warn_{path}", WARN)
                self.assertEqual(rows, [(f"warn_{path}", 7)], f"run {i + 1}")
                self.assertEqual(len(notices), 1, f"one NOTICE on run {i + 1}")
                notice = notices[0]
                self.assertEqual(notice.severity, "NOTICE")
                self.assertEqual(notice.sqlstate, "53000")
                self.assertTrue(notice.message_primary.startswith(PREFIX), notice.message_primary)
                self.assertEqual(notice.message_primary, WOULD_BLOCK)
                self.assertIn('Rule "client_warn"', notice.message_detail or "")
            # A statement without the tag matches no budget: no NOTICE.
            notices.clear()
            run(conn, path, f"quiet_{path}", "")
            self.assertEqual(notices, [], "no NOTICE for an untagged statement")

    def check_refusal(self, path):
        conn, _ = connect(autocommit=True)
        with conn:
            for i in range(RUNS[path]):
                with self.assertRaises(errors.InsufficientResources, msg=f"run {i + 1}") as cm:
                    run(conn, path, f"shed_{path}", SHED)
                self.assert_refusal(cm.exception)
                self.assertEqual(run(conn, path, f"after_{path}", ""), [(f"after_{path}", 7)])

    def check_refusal_in_transaction(self, path):
        conn, _ = connect(autocommit=False)
        with conn:
            run(conn, path, f"before_{path}", "")
            with self.assertRaises(errors.InsufficientResources) as cm:
                run(conn, path, f"tx_{path}", SHED)
            self.assert_refusal(cm.exception)
            with self.assertRaises(errors.InFailedSqlTransaction):
                conn.execute("SELECT 1")
            conn.rollback()
            self.assertEqual(run(conn, path, f"tx_after_{path}", ""), [(f"tx_after_{path}", 7)])
            conn.commit()

    def test_percent_in_a_tag_with_parameters(self):
        # psycopg parses %-placeholders when parameters are passed, so a
        # URL-encoded tag value is written %% there (and % without parameters).
        conn, notices = connect()
        with conn:
            rows = conn.execute(
                "SELECT %s::int AS n /*route='%%2Fcheckout',test='client_warn'*/", (7,)).fetchall()
            self.assertEqual(rows, [(7,)])
            self.assertEqual([d.message_primary for d in notices], [WOULD_BLOCK])
            notices.clear()
            rows = conn.execute("SELECT 7 AS n /*route='%2Fcheckout',test='client_warn'*/").fetchall()
            self.assertEqual(rows, [(7,)])
            self.assertEqual([d.message_primary for d in notices], [WOULD_BLOCK])


CASES = {
    "warn_notice_reaches_the_handler_and_the_result_arrives": DriverTest.check_warn,
    "refusal_raises_53000_and_the_connection_stays_usable": DriverTest.check_refusal,
    "refusal_in_a_transaction_then_rollback": DriverTest.check_refusal_in_transaction,
}
for _path in PATHS:
    for _case, _check in CASES.items():
        setattr(DriverTest, f"test_{_path}_{_case}",
                lambda self, _p=_path, _c=_check: _c(self, _p))


if __name__ == "__main__":
    unittest.main()
