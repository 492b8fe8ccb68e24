#!/usr/bin/python3
"""traffic_control behind Debian's PgBouncer in transaction pooling mode.

Run by pgbouncer_test.sh, which starts the cluster (PGHOST, PGPORT; budgets
and rules in its pgbouncer.conf) and stops everything afterwards. This script
starts two PgBouncer instances as the postgres user:

  main: application_name_add_host = 0, databases
        tc      -- default_pool_size 2: many clients share two server connections
        tc_one  -- pool_size 1: one server connection, for exact sequences
  host: application_name_add_host = 1, database tc_one

What it shows (docs/operations.md, "PgBouncer (transaction pooling)"):
  - tags travel with each statement, never with the server connection;
  - concurrency slots are held per statement and none is left behind by
    clients that vanish mid-statement;
  - which application_name a statement runs with, as PgBouncer 1.18 sets it;
  - psycopg's server-side prepared statements collide on a shared server
    connection; prepare=False (the extended protocol, unnamed statement) works.

Debian's /usr/bin/python3 with python3-psycopg. Prints TAP-style
"ok N - ..." / "not ok N - ..." lines and "pgbouncer: N passed, M failed";
exits 1 when a check failed.
"""
import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import psycopg
from psycopg import errors

from checks import check, free_port, summary, wait_for

PREFIX = "[PGINSIGHTS] Traffic Control:"
CLASSES = ["checkout", "report", "audit", "untagged"]
TAGS = {"checkout": "/*route='checkout'*/", "report": "/*route='report'*/",
        "audit": "/*route='audit'*/", "untagged": ""}
BLOCKED_REPORT = PREFIX + ' query blocked by budget "report": max_concurrent exceeded'
WARNED_AUDIT = PREFIX + ' query would be blocked by budget "audit": max_concurrent exceeded'
BLOCKED_BATCH = PREFIX + ' query blocked by budget "batch_app": max_concurrent exceeded'
POOL_SIZE = 2
CLIENTS = 16
PER_CLASS = 10        # single statements of each class, per client
TRANSACTIONS = 3      # per client: BEGIN; checkout; audit; untagged; COMMIT
SLOT_CLIENTS = 8      # the max_concurrent 1 budget "one": clients ...
SLOT_STATEMENTS = 5   # ... and statements each


class Notice:
    """A notice's fields, copied inside the handler (psycopg's Diagnostic reads
    a libpq result that is freed when the handler returns)."""

    def __init__(self, diag):
        self.severity = diag.severity_nonlocalized
        self.message_primary = diag.message_primary


# ---- PgBouncer -------------------------------------------------------------
class PgBouncer:
    """One pgbouncer process run as postgres (it refuses root), daemonised with
    its pid file in the work directory (pgbouncer_test.sh kills it by that file
    if this script dies)."""

    def __init__(self, workdir, binary, name, add_host, databases):
        self.port = free_port()
        self.name = name
        self.pidfile = os.path.join(workdir, name + ".pid")
        self.log = os.path.join(workdir, name + ".log")
        ini = os.path.join(workdir, name + ".ini")
        userlist = os.path.join(workdir, "userlist.txt")
        with open(userlist, "w") as f:
            f.write('"postgres" ""\n')  # auth_type trust still needs the name listed
        server = "host=127.0.0.1 port=%s dbname=postgres" % os.environ["PGPORT"]
        with open(ini, "w") as f:
            f.write("[databases]\n")
            for db, extra in databases.items():
                f.write("%s = %s %s\n" % (db, server, extra))
            f.write("\n".join([
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                "listen_port = %d" % self.port,
                "unix_socket_dir =",
                "auth_type = trust",
                "auth_file = " + userlist,
                "pool_mode = transaction",
                "default_pool_size = %d" % POOL_SIZE,
                "max_client_conn = 100",
                "application_name_add_host = %d" % add_host,
                # No "select 1" health check on a pooled connection during the
                # test: it would be one more statement in the counts.
                "server_check_delay = 3600",
                "logfile = " + self.log,
                "pidfile = " + self.pidfile,
                ""]))
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        for path in (ini, userlist):
            if os.geteuid() == 0:
                subprocess.run(["chown", "postgres:postgres", path], check=True)
        subprocess.run(as_postgres + [binary, "-d", ini], check=True)
        up = wait_for(self._accepts, 15)
        if not up:
            raise RuntimeError("pgbouncer %s did not start, see %s" % (name, self.log))

    def _accepts(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def connect(self, dbname="tc", application_name=None, **kwargs):
        """A psycopg connection through this PgBouncer; its notices are
        collected in conn.notices."""
        params = dict(host="127.0.0.1", port=self.port, dbname=dbname, user="postgres",
                      autocommit=True, connect_timeout=10)
        if application_name is not None:
            params["application_name"] = application_name
        params.update(kwargs)
        conn = psycopg.connect(**params)
        conn.notices = []
        conn.add_notice_handler(lambda diag: conn.notices.append(Notice(diag)))
        return conn

    def stop(self):
        try:
            with open(self.pidfile) as f:
                pid = int(f.read())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        wait_for(lambda: not os.path.exists("/proc/%d" % pid), 10)


# ---- the server, directly ---------------------------------------------------
def direct():
    """A direct superuser connection, with traffic_control off for it, so the
    test's own queries never count in a budget."""
    conn = psycopg.connect(host=os.environ["PGHOST"], port=os.environ["PGPORT"],
                           dbname="postgres", user="postgres", autocommit=True)
    conn.execute("SET traffic_control.enabled = off")
    return conn


def budget_rows(mon):
    cur = mon.execute("SELECT budget, active, admitted, warned, blocked, blocked_max_concurrent,"
                      " queued FROM traffic_control.budget_status WHERE instance IS NULL")
    cols = [c.name for c in cur.description]
    return {row[0]: dict(zip(cols, row)) for row in cur.fetchall()}


def all_idle(mon):
    rows = budget_rows(mon)
    return rows if all(r["active"] == 0 for r in rows.values()) else None


def sql_error(exc):
    """(sqlstate, primary message, detail) of a psycopg error."""
    return exc.sqlstate, exc.diag.message_primary, exc.diag.message_detail


# ---- 1. tags travel with each statement -------------------------------------
def statement(cls, n, use_params):
    """One statement of a class; returns (sql, params). It selects its number
    back and the server connection's pid."""
    if use_params:  # the extended protocol, unnamed statement (prepare=False)
        return "SELECT %s::int AS n, pg_backend_pid() AS pid " + TAGS[cls], (n,)
    return "SELECT %d AS n, pg_backend_pid() AS pid %s" % (n, TAGS[cls]), None


class TagClient(threading.Thread):
    """Sends PER_CLASS statements of every class and TRANSACTIONS
    transactions of three statements (checkout, audit, untagged), shuffled,
    and counts what happened to each class."""

    def __init__(self, bouncer, index, seed):
        super().__init__(name="tags-%d" % index)
        self.bouncer, self.index, self.rng = bouncer, index, random.Random(seed + index)
        self.sent = dict.fromkeys(CLASSES, 0)
        self.refused = dict.fromkeys(CLASSES, 0)  # 53000 with the report text
        self.wrong = []     # anything else: other errors, a wrong value back
        self.pids = set()   # server connections (backend pids) it ran on
        self.notices = []
        self.error = None

    def run_one(self, conn, cls, n):
        sql, params = statement(cls, n, self.rng.random() < 0.5)
        self.sent[cls] += 1
        try:
            row = conn.execute(sql, params, prepare=False).fetchone()
        except errors.InsufficientResources as e:
            code, message, _ = sql_error(e)
            if cls == "report" and message == BLOCKED_REPORT:
                self.refused[cls] += 1
            else:
                self.wrong.append("%s refused: %s %s" % (cls, code, message))
            return False
        if row[0] != n:
            self.wrong.append("%s returned %r, sent %d" % (cls, row[0], n))
        self.pids.add(row[1])
        return True

    def run(self):
        try:
            work = [c for c in CLASSES for _ in range(PER_CLASS)] + ["txn"] * TRANSACTIONS
            self.rng.shuffle(work)
            # prepare_threshold=None: psycopg never prepares a statement on its
            # own (after 5 runs by default), which PgBouncer 1.18 cannot pool.
            conn = self.bouncer.connect("tc", "tags-%d" % self.index, prepare_threshold=None)
            with conn:
                for i, item in enumerate(work):
                    n = self.index * 1000 + i
                    if item == "txn":
                        with conn.transaction():
                            for cls in ("checkout", "audit", "untagged"):
                                self.run_one(conn, cls, n)
                    else:
                        self.run_one(conn, item, n)
                self.notices = conn.notices
        except Exception as e:  # noqa: BLE001 -- reported as a failed check
            self.error = "%s: %s" % (type(e).__name__, e)


def check_tags(bouncer, mon, seed):
    mon.execute("SELECT traffic_control.reset()")
    clients = [TagClient(bouncer, i, seed) for i in range(CLIENTS)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(120)
    errors_ = ["%s: %s" % (c.name, c.error) for c in clients if c.error]
    check(not errors_, "%d clients ran %d statements each through PgBouncer without a broken connection"
          % (CLIENTS, len(CLASSES) * PER_CLASS + 3 * TRANSACTIONS), "; ".join(errors_[:3]))
    total = {cls: sum(c.sent[cls] for c in clients) for cls in CLASSES}

    # The premise: statements of many clients really interleaved over the two
    # pooled server connections (fails in session pooling, or with a pool
    # larger than the clients, where each client keeps one server connection).
    pids = set().union(*(c.pids for c in clients))
    switched = sum(1 for c in clients if len(c.pids) > 1)
    check(len(pids) <= POOL_SIZE and switched >= CLIENTS // 2,
          "statements of %d clients ran over at most %d server connections, most clients on more than one"
          % (CLIENTS, POOL_SIZE), "server pids %s, %d clients switched" % (sorted(pids), switched))

    # A tag stuck to the server connection (metadata cached per session, or the
    # previous statement's tags reused) would refuse untagged and checkout
    # statements that follow a report statement on the same connection, and
    # admit report statements that follow others.
    bad_report = [(c.name, c.sent["report"], c.refused["report"]) for c in clients
                  if c.refused["report"] != c.sent["report"]]
    check(not bad_report, "every client: each of its %d report statements refused with 53000 (%s)"
          % (PER_CLASS, BLOCKED_REPORT), bad_report[:3])
    wrong = [(c.name, w) for c in clients for w in c.wrong]
    check(not wrong, "no checkout, audit or untagged statement refused or answered wrongly (%d sent)"
          % (total["checkout"] + total["audit"] + total["untagged"]), wrong[:3])

    # A NOTICE sent late (after the statement's ReadyForQuery, e.g. when the
    # next statement starts) would reach whichever client PgBouncer gives the
    # server connection next: counts per client would not match.
    bad_notices = []
    for c in clients:
        texts = [n.message_primary for n in c.notices]
        if (len(texts) != c.sent["audit"] or any(t != WARNED_AUDIT for t in texts)
                or any(n.severity != "NOTICE" for n in c.notices)):
            bad_notices.append((c.name, c.sent["audit"], texts[:2]))
    check(not bad_notices, "every client received exactly one warn NOTICE per audit statement it sent, "
          "and no other", bad_notices[:3])

    # The shared counters agree with what the clients sent: PgBouncer's own
    # statements (SET application_name on assignment) are not counted, and no
    # statement is counted in another class's budget.
    rows = budget_rows(mon)
    expected = {
        "report": dict(admitted=0, warned=0, blocked=total["report"],
                       blocked_max_concurrent=total["report"]),
        "checkout": dict(admitted=total["checkout"], warned=0, blocked=0),
        "audit": dict(admitted=total["audit"], warned=total["audit"], blocked=0),
        "untagged": dict(admitted=total["untagged"], warned=0, blocked=0),
    }
    for budget, want in expected.items():
        got = {k: rows.get(budget, {}).get(k) for k in want}
        check(got == want, "budget_status %s: %s" % (
            budget, ", ".join("%s %d" % kv for kv in want.items())), "got %s" % got)


# ---- 2. concurrency slots per statement --------------------------------------
SLOT_SQL = ("SELECT clock_timestamp() AS started, pg_sleep(0.05), clock_timestamp() AS ended,"
            " pg_backend_pid() AS pid /*route='one'*/")


def check_slots(bouncer, mon):
    mon.execute("SELECT traffic_control.reset()")
    runs, failures = [], []
    lock = threading.Lock()

    def client(i):
        try:
            with bouncer.connect("tc", "slots-%d" % i, prepare_threshold=None) as conn:
                for _ in range(SLOT_STATEMENTS):
                    row = conn.execute(SLOT_SQL, prepare=False).fetchone()
                    with lock:
                        runs.append((row[0], row[2], row[3]))
        except Exception as e:  # noqa: BLE001 -- reported as a failed check
            with lock:
                failures.append("%s: %s" % (type(e).__name__, e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(SLOT_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    n = SLOT_CLIENTS * SLOT_STATEMENTS
    # A slot held by the server connection instead of the statement (released
    # at session end) would never come back while PgBouncer keeps the
    # connection: the others would wait out queue_timeout_ms and be refused.
    check(not failures and len(runs) == n,
          "budget one (max_concurrent 1, queue): all %d statements of %d clients admitted"
          % (n, SLOT_CLIENTS), "%d ran; %s" % (len(runs), failures[:2]))
    runs.sort()
    overlaps = [(a, b) for a, b in zip(runs, runs[1:]) if b[0] < a[1]]
    pids = {r[2] for r in runs}
    # Slots counted per connection, or not at all, would let the statements
    # of the two server connections overlap.
    check(len(pids) == POOL_SIZE and not overlaps,
          "they ran on both pooled server connections, never two at once",
          "pids %s, %d overlaps" % (sorted(pids), len(overlaps)))
    rows = budget_rows(mon)
    one = rows.get("one", {})
    check(one.get("admitted") == n and one.get("blocked") == 0 and (one.get("queued") or 0) > 0,
          "budget_status one: admitted %d, blocked 0, queued > 0 (the two connections took turns)" % n,
          one)


# ---- 3. clients that vanish mid-statement ------------------------------------
ABRUPT_CLIENT = """
import sys, psycopg
conn = psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), dbname="tc", user="postgres",
                       autocommit=True)
conn.execute("SELECT %s AS marker, pg_sleep(60) /*route='one'*/" % repr(sys.argv[2]))
"""


def server_backends(mon, marker):
    return mon.execute("SELECT pid, wait_event_type, wait_event FROM pg_stat_activity"
                       " WHERE query LIKE %s AND pid <> pg_backend_pid()",
                       ("%" + marker + "%",)).fetchall()


def check_abrupt_disconnect(bouncer, mon):
    """A client holding the one slot and a client queued for it are killed
    (SIGKILL: the socket closes without a Terminate message). PgBouncer closes
    their server connections; the backends end; every slot comes back."""
    procs = []
    try:
        holder = subprocess.Popen([sys.executable, "-c", ABRUPT_CLIENT, str(bouncer.port), "abrupt-holder"])
        procs.append(holder)
        holding = wait_for(lambda: any(r[2] == "PgSleep" for r in server_backends(mon, "abrupt-holder")), 15)
        waiter = subprocess.Popen([sys.executable, "-c", ABRUPT_CLIENT, str(bouncer.port), "abrupt-waiter"])
        procs.append(waiter)
        queued = wait_for(lambda: any(r[1] == "Extension" for r in server_backends(mon, "abrupt-waiter")), 15)
        check(holding and queued, "a client holds budget one's slot (pg_sleep) and another waits in its queue")
        for p in procs:
            p.kill()
            p.wait()
        gone = wait_for(lambda: not server_backends(mon, "abrupt-"), 15)
        check(gone, "after both clients are killed, PgBouncer drops their server connections and the backends end",
              server_backends(mon, "abrupt-"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # A slot not given back on the FATAL path (client gone) or a queue entry
    # left behind would show as active > 0 here.
    rows = wait_for(lambda: all_idle(mon), 10)
    check(rows, "budget_status.active is 0 for every budget once the clients are gone",
          budget_rows(mon))
    before = budget_rows(mon).get("one", {}).get("queued")
    with bouncer.connect("tc", "after-abrupt") as conn:
        started = time.monotonic()
        try:
            conn.execute("SELECT 1 /*route='one'*/", prepare=False)
            outcome = "admitted"
        except psycopg.Error as e:  # a leaked slot: refused after queue_timeout_ms
            outcome = "%s %s" % (e.sqlstate, e.diag.message_primary)
        took = time.monotonic() - started
    after = budget_rows(mon).get("one", {}).get("queued")
    check(outcome == "admitted" and after == before and took < 2,
          "then a statement of budget one is admitted at once, without queueing",
          "%s; queued %s -> %s, %.2f s" % (outcome, before, after, took))


# ---- 4. application_name -----------------------------------------------------
def app_name_of(conn):
    """The application_name the statement ran with, or the refusal."""
    try:
        return conn.execute("SELECT current_setting('application_name')", prepare=False).fetchone()[0]
    except errors.InsufficientResources as e:
        _, message, detail = sql_error(e)
        rule = re.match(r'Rule "([^"]+)"', detail or "")
        return ("refused", message, rule.group(1) if rule else detail)


def local_port(conn):
    with socket.socket(fileno=os.dup(conn.fileno())) as s:
        return s.getsockname()[1]


def check_application_name(main, host):
    """PgBouncer 1.18 has no track_extra_parameters (1.20+): application_name
    is one of the parameters it tracks per client itself. On every assignment
    of a server connection it sends SET application_name when the client's
    value differs from the connection's -- if the client has one."""
    refused_exact = ("refused", BLOCKED_BATCH, "batch_exact")
    refused_host = ("refused", BLOCKED_BATCH, "batch_with_host")
    # tc_one has one server connection: every client below shares it.
    web = main.connect("tc_one", "web")
    batch = main.connect("tc_one", "batch")
    nameless = main.connect("tc_one")  # libpq sends no application_name
    main_other = main.connect("tc_one", "other")
    try:
        # A name that stuck to the server connection (set by whichever client
        # created it) would give web and batch the same answer here.
        seen = [app_name_of(c) for c in (web, batch, web, batch)]
        check(seen == ["web", refused_exact, "web", refused_exact],
              "add_host off: each client's statements run with its own startup application_name "
              "(web admitted, batch refused by the exact rule), alternating on one server connection", seen)
        # A client without application_name gets no SET: it runs with the
        # name the previous client left on the server connection.
        app_name_of(web)
        seen = [app_name_of(nameless)]
        app_name_of(batch)
        seen.append(app_name_of(nameless))
        check(seen == ["web", refused_exact],
              "add_host off: a client without application_name runs with the previous client's "
              "(web, then after batch's statement refused as batch)", seen)
        # SET application_name by the client is tracked too (PgBouncer reads
        # the server's ParameterStatus) and set again on its next assignment,
        # after another client had the connection.
        web.execute("SET application_name = 'batch'")
        other = app_name_of(main_other)
        seen = app_name_of(web)
        web.execute("SET application_name = 'web'")
        check(other == "other" and seen == refused_exact and app_name_of(web) == "web",
              "add_host off: a client's SET application_name follows that client to its next statements",
              "other %r, web after SET %r" % (other, seen))
    finally:
        for c in (web, batch, nameless, main_other):
            c.close()

    web = host.connect("tc_one", "web")
    batch = host.connect("tc_one", "batch")
    nameless = host.connect("tc_one")
    try:
        seen = [app_name_of(web), app_name_of(batch), app_name_of(nameless)]
        want = ["web - 127.0.0.1:%d" % local_port(web), refused_host,
                "app - 127.0.0.1:%d" % local_port(nameless)]
        # The exact rule cannot match "batch - host:port"; a prefix rule does.
        check(seen == want, "add_host on: startup names become 'NAME - host:port' ('app - ...' without one): "
              "batch is refused by the prefix rule, not the exact one", "got %s, want %s" % (seen, want))
        app_name_of(batch)
        seen = app_name_of(nameless)
        check(seen == want[2], "add_host on: a client without application_name no longer inherits one", seen)
        batch.execute("SET application_name = 'batch'")
        seen = app_name_of(batch)
        check(seen == refused_exact, "add_host on: a name set later with SET gets no host appended "
              "(the exact rule matches it)", seen)
    finally:
        for c in (web, batch, nameless):
            c.close()


# ---- 5. prepared statements ------------------------------------------------
def check_prepared(main):
    """PgBouncer 1.18 does not track protocol-level prepared statements (1.21
    does, max_prepared_statements): a statement psycopg prepares (prepare=True,
    or on its own after prepare_threshold runs) lives on one server
    connection, where another client's statement of the same name collides.
    prepare=False (the unnamed statement of the extended protocol, what the
    tag checks above use half the time) has no such problem."""
    a = main.connect("tc_one", "prep-a")
    b = main.connect("tc_one", "prep-b")
    try:
        first = a.execute("SELECT %s::int /*route='checkout'*/", (1,), prepare=True).fetchone()[0]
        try:
            b.execute("SELECT %s::text /*route='checkout'*/", ("x",), prepare=True)
            collided = None
        except errors.DuplicatePreparedStatement as e:
            collided = e.sqlstate
        check(first == 1 and collided == "42P05",
              "server-side prepared statements (psycopg prepare=True) of two clients collide on the "
              "pooled connection: 42P05", "first %r, second %r" % (first, collided))
        got = b.execute("SELECT %s::text /*route='checkout'*/", ("x",), prepare=False).fetchone()[0]
        check(got == "x", "the same statement with prepare=False runs", got)
    finally:
        a.close()
        b.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--pgbouncer", default="/usr/sbin/pgbouncer")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    version = subprocess.run([args.pgbouncer, "--version"], capture_output=True, text=True).stdout
    print("# %s; seed %d (--seed to replay)" % (version.splitlines()[0] if version else "?", seed))

    bouncers = []
    try:
        mon = direct()
        mon.execute("CREATE EXTENSION IF NOT EXISTS traffic_control")
        main_ = PgBouncer(args.workdir, args.pgbouncer, "main", 0,
                          {"tc": "", "tc_one": "pool_size=1"})
        bouncers.append(main_)
        host = PgBouncer(args.workdir, args.pgbouncer, "host", 1, {"tc_one": "pool_size=1"})
        bouncers.append(host)
        started = time.monotonic()
        check_tags(main_, mon, seed)
        check_slots(main_, mon)
        check_abrupt_disconnect(main_, mon)
        check_application_name(main_, host)
        check_prepared(main_)
        rows = wait_for(lambda: all_idle(mon), 10)
        check(rows, "at the end, budget_status.active is 0 for every budget", budget_rows(mon))
        print("# checks took %.1f s" % (time.monotonic() - started))
    except Exception as e:  # noqa: BLE001 -- an unexpected error is one failure
        check(False, "the test ran to the end", "%s: %s" % (type(e).__name__, e))
    finally:
        for b in bouncers:
            b.stop()
    return summary("pgbouncer")


if __name__ == "__main__":
    sys.exit(main())
