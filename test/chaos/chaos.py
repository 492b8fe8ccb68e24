#!/usr/bin/python3
"""Chaos under load for traffic_control (issue 11; docs/testing.md, "Chaos under load").

Runs traffic that matches enforce budgets (with queues) from three kinds of
clients while backends are cancelled and terminated, the configuration is
reloaded (limits changed, budgets renamed while their statements hold slots),
statements hit statement_timeout and idle-in-transaction timeouts, PL/pgSQL
exception blocks catch refusals and errors, cursors are left open, procedures
commit, and clients disconnect in the middle of a statement. Then it checks:

  - every budget instance's `active` is 0 with the load stopped, while the
    idle client sessions are still connected, and once they are gone;
  - no idle client backend is left at a lowered CPU priority (family q runs
    at cpu_priority 5, whose restore lingers while a backend idles);
  - no backend crashed and the postmaster never restarted (server log,
    pg_postmaster_start_time, postmaster.pid);
  - the counters add up (the identities are listed in check_counters);
  - no slot is stuck: every enforce budget with max_concurrent N (and every
    `each` instance) runs N statements at once and refuses the N+1st, and a
    queued statement is woken by a release.

Client kinds, by the `cls` tag each statement carries:
  pgbench  pgbench processes (never disturbed): exact accounting
  clean    psycopg sessions that are never disturbed: exact accounting
  chaos    psycopg sessions that are cancelled, terminated, timed out and
           disconnected: accounting within bounds (a statement whose client
           lost track of it may or may not have been decided)

Start it through test/chaos/chaos.sh, which starts a throwaway cluster.
"""

import argparse
import collections
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time

import psycopg
from psycopg import errors

PREFIX = "[PGINSIGHTS] Traffic Control:"
BLOCKED_RE = re.compile(r'query blocked by budget "([^"]+)"')
WOULD_BLOCK_RE = re.compile(r'query would be blocked by budget "([^"]+)"')
RENAMED = "_renamed"

# Budget families: the statements tagged chaos='<family>' go to the family's
# budget, whatever its current name (chaos_x or chaos_x_renamed).
FAMILIES = ["a", "q", "e", "w", "s"]
BASE_NAMES = {"a": "chaos_a", "q": "chaos_q", "e": "chaos_e", "w": "chaos_w", "s": "chaos_s"}
TENANTS = ["t1", "t2", "t3", "t4"]  # --max-buckets uses many more
# `each` values that the client encoding LATIN1 cannot show (a euro sign, a
# byte that is not UTF-8): client text in a NOTICE that must not fail it.
AWKWARD_TENANTS = ["%E2%82%AC", "%FF", "caf%C3%A9"]
# Ledger budgets: no limits, one per client kind; every statement of that
# kind also matches its ledger, so the ledger counts that kind's decisions.
CLASSES = ["pgbench", "clean", "chaos"]

# The configuration the run starts with.
INITIAL_LIMITS = {
    "a": {"mode": "enforce", "max_concurrent": 3, "queue_timeout_ms": 0},
    "q": {"mode": "enforce", "max_concurrent": 2, "queue_timeout_ms": 500, "cpu_priority": 5},
    "e": {"mode": "enforce", "max_concurrent": 1, "queue_timeout_ms": 50, "warning_threshold": 50},
    "w": {"mode": "warn", "max_concurrent": 1},
    "s": {"mode": "enforce", "server_share": 10, "burst_limit": 0.5, "max_concurrent": 4},
}
# The final checks: no queues (a full budget refuses at once), and chaos_s
# draining at the whole server, so that whatever debt the load left goes fast.
FINAL_LIMITS = {f: dict(v, **({"queue_timeout_ms": 0} if "queue_timeout_ms" in v else {}))
                for f, v in INITIAL_LIMITS.items()}
FINAL_LIMITS["s"].update(server_share=100, burst_limit=1)
# What a reload may set (the mode of q sometimes flips to warn).
LIMIT_CHOICES = {
    "a": {"max_concurrent": [1, 2, 3, 4], "queue_timeout_ms": [0, 0, 20, 200]},
    "q": {"max_concurrent": [1, 2, 3], "queue_timeout_ms": [100, 500, 2000]},
    "e": {"max_concurrent": [1, 2], "queue_timeout_ms": [0, 50, 300], "warning_threshold": [50, 100]},
    "w": {"max_concurrent": [0, 1, 2]},
    "s": {"server_share": [5, 10, 20], "burst_limit": [0.25, 0.5], "max_concurrent": [2, 4]},
}
# A CPU-bound statement (some milliseconds of CPU) for the server_share budget.
CPU_QUERY = "SELECT count(*) FROM generate_series(1, 100000)"
RENAMABLE = ["a", "q", "e"]


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def family_of_budget(name):
    if name.endswith(RENAMED):
        name = name[: -len(RENAMED)]
    for family, base in BASE_NAMES.items():
        if base == name:
            return family
    return None


def tag(family, cls, tenant=None):
    extra = f",tenant='{tenant}'" if family == "e" else ""
    return f"/*chaos='{family}',cls='{cls}'{extra}*/"


def tag_body(family, cls, tenant=None):
    """The tag without the comment markers (for PL/pgSQL's format())."""
    return tag(family, cls, tenant)[2:-2]


class Config:
    """Budgets and rules: the families' current names and limits."""

    def __init__(self, limits):
        self.limits = {f: dict(v) for f, v in limits.items()}
        self.renamed = {f: False for f in FAMILIES}

    def name(self, family):
        return BASE_NAMES[family] + (RENAMED if self.renamed[family] else "")

    def budgets_json(self):
        budgets = []
        for family in FAMILIES:
            budget = {"name": self.name(family)}
            budget.update(self.limits[family])
            budgets.append(budget)
        for cls in CLASSES:
            budgets.append({"name": f"ledger_{cls}", "mode": "enforce"})
        return json.dumps(budgets, separators=(",", ":"))

    def rules_json(self):
        rules = []
        for family in FAMILIES:
            rule = {"name": f"family_{family}", "budget": self.name(family),
                    "match": {"chaos": family}}
            if family == "e":
                rule["each"] = "tenant"
            rules.append(rule)
        for cls in CLASSES:
            rules.append({"name": f"ledger_{cls}", "budget": f"ledger_{cls}", "match": {"cls": cls}})
        return json.dumps(rules, separators=(",", ":"))


class Ledger:
    """What the clients saw, by (class, family, kind). Kinds: admitted (the
    statement was certainly admitted: it ran, or failed after admission),
    refused (53000 from the family's budget), uncertain (the client lost track
    of it: cancel, timeout, terminate, disconnect; it may have been admitted,
    refused or neither), notice (warn NOTICE seen)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.events = collections.Counter()
        self.unexpected = []

    def add(self, cls, family, kind, n=1):
        if n:
            with self.lock:
                self.counts[(cls, family, kind)] += n

    def event(self, name, n=1):
        with self.lock:
            self.events[name] += n

    def fail(self, text):
        with self.lock:
            self.unexpected.append(text)

    def get(self, cls=None, family=None, kind=None):
        with self.lock:
            return sum(v for (c, f, k), v in self.counts.items()
                       if (cls is None or c == cls) and (family is None or f == family)
                       and (kind is None or k == kind))


def classify(exc):
    """(kind, detail) of an exception raised by a statement."""
    if isinstance(exc, errors.InsufficientResources):
        message = exc.diag.message_primary or ""
        match = BLOCKED_RE.search(message)
        if message.startswith(PREFIX) and match and family_of_budget(match.group(1)):
            return "refused", family_of_budget(match.group(1))
        return "other", f"53000 {message}"
    if isinstance(exc, errors.QueryCanceled):
        message = exc.diag.message_primary or ""
        return ("timeout" if "statement timeout" in message else "canceled"), message
    if isinstance(exc, errors.AdminShutdown):
        return "terminated", str(exc)
    if isinstance(exc, errors.IdleInTransactionSessionTimeout):
        return "idle_timeout", str(exc)
    if isinstance(exc, errors.InFailedSqlTransaction):
        return "failed_transaction", str(exc)
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and (
            sqlstate is None or sqlstate.startswith("08")):
        return "lost", str(exc).strip()[:300]
    return "other", f"{type(exc).__name__} {sqlstate} {str(exc).strip()[:300]}"


class Client(threading.Thread):
    """One psycopg session running a random mix of operations until `stop`."""

    def __init__(self, run, cls, index, seed):
        super().__init__(name=f"{cls}-{index}", daemon=True)
        self.run_ = run
        self.cls = cls
        self.rng = random.Random(seed)
        self.app = f"{cls}-{index}"
        self.conn = None
        self.track = None  # of self.conn
        self.inflight = []  # families of the statements the current round trip may decide
        self.ops = [
            (self.op_single, 30), (self.op_transaction, 8), (self.op_cursor, 8),
            (self.op_nested, 6), (self.op_do, 4), (self.op_multi, 4), (self.op_copy, 3),
            (self.op_error_after_admission, 3), (self.op_prepared, 4), (self.op_cpu, 6),
            (self.op_parallel, 2), (self.op_disabled, 2), (self.op_client_encoding, 2),
            (self.op_function_cursor, 3),
        ]
        if cls == "chaos":
            self.ops += [
                (self.op_statement_timeout, 10), (self.op_cursor_left_open, 6),
                (self.op_idle_timeout, 2), (self.op_disconnect, 4), (self.op_procedure, 4),
                (self.op_pipeline, 4),
            ]

    # ---- connections -------------------------------------------------------
    def connect(self, app=None):
        """A new session; retried, since a cancel or terminate can hit a chaos
        session while it is set up. The client's own session admits nested
        statements (track = all) or only top-level ones (track = top, where a
        cursor a function opens is admitted at its first top-level fetch)."""
        deadline = time.monotonic() + 60
        track = self.rng.choice(["all", "top"])
        while True:
            conn = None
            try:
                conn = psycopg.connect(self.run_.dsn, application_name=app or self.app,
                                       autocommit=True, connect_timeout=10)
                conn.add_notice_handler(self.on_notice)
                conn.execute(f"SET traffic_control.track = '{track}'")
                if app is None:
                    self.track = track
                return conn
            except psycopg.Error as exc:
                if conn is not None:
                    conn.close()
                if self.cls != "chaos" or time.monotonic() > deadline:
                    raise
                self.run_.ledger.event(f"chaos session setup failed ({classify(exc)[0]})")
                time.sleep(0.05)

    def on_notice(self, diag):
        match = WOULD_BLOCK_RE.search(diag.message_primary or "")
        if match and family_of_budget(match.group(1)):
            self.run_.ledger.add(self.cls, family_of_budget(match.group(1)), "notice")

    def drop_connection(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn = None  # the loop reconnects

    def recover(self):
        """After an error: end the transaction and close cursors (a WITH HOLD
        cursor outlives it), or drop a session that is gone."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.drop_connection()
            return
        try:
            if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self.conn.execute("ROLLBACK")
            self.conn.execute("CLOSE ALL")
            self.conn.execute("RESET statement_timeout")
            self.conn.execute("RESET idle_in_transaction_session_timeout")
            self.conn.execute("RESET client_encoding")
        except psycopg.Error as exc:
            if self.cls != "chaos":
                self.run_.ledger.fail(f"{self.name}: recovering failed: {exc}")
            self.drop_connection()

    def abrupt_close(self, conn):
        """Closes the socket under libpq, as a client that vanishes."""
        try:
            sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        except OSError:
            pass
        try:
            conn.close()
        except Exception:
            pass

    # ---- accounting ----------------------------------------------------------
    def admitted(self, family, n=1):
        self.run_.ledger.add(self.cls, family, "admitted", n)

    def refused(self, family, n=1):
        self.run_.ledger.add(self.cls, family, "refused", n)

    def uncertain(self, family, n=1):
        self.run_.ledger.add(self.cls, family, "uncertain", n)

    def execute(self, families, sql, params=None, prepare=None):
        """One round trip deciding the statements of `families` (in order)."""
        self.inflight = list(families)
        cur = self.conn.execute(sql, params, prepare=prepare)
        self.inflight = []
        for family in families:
            self.admitted(family)
        return cur

    def on_error(self, exc):
        kind, detail = classify(exc)
        self.run_.ledger.event(f"client saw {kind}")
        inflight, self.inflight = self.inflight, []
        if kind == "refused":
            if detail in inflight:
                inflight.remove(detail)
                self.refused(detail)
            else:
                self.run_.ledger.fail(f"{self.name}: refused by family {detail} not in flight {inflight}")
            if inflight and self.cls != "chaos":
                self.run_.ledger.fail(f"{self.name}: refusal left {inflight} undecided")
        elif self.cls != "chaos" or kind == "other":
            self.run_.ledger.fail(f"{self.name}: unexpected {kind}: {detail}")
        for family in inflight:
            self.uncertain(family)
        self.recover()

    # ---- operations ------------------------------------------------------------
    def pick(self):
        family = self.rng.choice(FAMILIES)
        return family, self.rng.choice(self.run_.tenants)

    def op_single(self):
        family, tenant = self.pick()
        seconds = self.rng.choice([0, 0.002, 0.005, 0.01, 0.03])
        t = tag(family, self.cls, tenant)
        if self.rng.random() < 0.5:
            self.execute([family], f"SELECT pg_sleep({seconds}) {t}")  # simple protocol
        else:
            self.execute([family], f"SELECT pg_sleep(%s) {t}", (seconds,))  # extended

    def op_prepared(self):
        family, tenant = self.pick()
        for _ in range(self.rng.randint(1, 7)):
            self.execute([family], f"SELECT pg_sleep(%s) {tag(family, self.cls, tenant)}",
                         (0.002,), prepare=True)

    def op_transaction(self):
        self.conn.execute("BEGIN")
        for _ in range(self.rng.randint(1, 3)):
            family, tenant = self.pick()
            self.execute([family], f"SELECT pg_sleep(0.003) {tag(family, self.cls, tenant)}")
        self.conn.execute(self.rng.choice(["COMMIT", "ROLLBACK"]))

    def op_cursor(self):
        family, tenant = self.pick()
        variant = self.rng.choice(["close", "commit_open", "rollback_open", "savepoint", "hold"])
        query = f"SELECT g, pg_sleep(0.001) FROM generate_series(1, 30) g {tag(family, self.cls, tenant)}"
        self.conn.execute("BEGIN")
        if variant == "savepoint":
            self.conn.execute("SAVEPOINT s")
        hold = " WITH HOLD" if variant == "hold" else ""
        self.execute([family], f"DECLARE c CURSOR{hold} FOR {query}")
        self.conn.execute("FETCH 5 FROM c")
        if variant == "close":
            self.conn.execute("CLOSE c")
            self.conn.execute("COMMIT")
        elif variant == "commit_open":
            self.conn.execute("COMMIT")
        elif variant == "rollback_open":
            self.conn.execute("ROLLBACK")
        elif variant == "savepoint":
            self.conn.execute("ROLLBACK TO SAVEPOINT s")
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("COMMIT")  # materialized: holds nothing after
            self.conn.execute("FETCH 5 FROM c")
            self.conn.execute("CLOSE c")

    def op_nested(self):
        """A PL/pgSQL function whose EXCEPTION blocks catch refusals of its
        nested statements (track = all) and division-by-zero errors raised
        after admission (a subtransaction rollback releases the slot)."""
        family, tenant = self.pick()
        n = self.rng.randint(1, 4)
        self.inflight = [family] * n
        row = self.conn.execute("SELECT * FROM chaos_nested(%s, %s, %s)",
                                (tag_body(family, self.cls, tenant), n,
                                 self.rng.random() < 0.5)).fetchone()
        self.inflight = []
        ok, refused, failed = row
        if ok + refused + failed != n or (self.track == "top" and refused):
            self.run_.ledger.fail(f"{self.name}: chaos_nested returned {row} for {n} (track {self.track})")
        if self.track == "all":  # else its statements are not admitted
            self.admitted(family, ok + failed)
            self.refused(family, refused)

    def op_do(self):
        family, tenant = self.pick()
        self.execute([family], f"DO $$BEGIN PERFORM pg_sleep(0.003); END$$ {tag(family, self.cls, tenant)}")

    def op_multi(self):
        """Two statements in one simple-protocol string (one implicit
        transaction): the first refusal ends it."""
        first, second = self.rng.sample(FAMILIES, 2)
        tenant = self.rng.choice(self.run_.tenants)
        self.inflight = [first, second]
        try:
            self.conn.execute(f"SELECT pg_sleep(0.002) {tag(first, self.cls, tenant)}; "
                              f"SELECT pg_sleep(0.002) {tag(second, self.cls, tenant)}")
        except errors.InsufficientResources as exc:
            kind, family = classify(exc)
            if kind == "refused" and family == second:
                self.inflight = [second]
                self.admitted(first)
            elif kind == "refused" and family == first:
                self.inflight = [first]  # the second never ran
            raise
        self.inflight = []
        self.admitted(first)
        self.admitted(second)

    def op_copy(self):
        family, tenant = self.pick()
        self.inflight = [family]
        with self.conn.cursor() as cur:
            with cur.copy(f"COPY (SELECT g FROM generate_series(1, 20) g) TO STDOUT "
                          f"{tag(family, self.cls, tenant)}") as copy:
                for _ in copy:
                    pass
        self.inflight = []
        self.admitted(family)

    def op_error_after_admission(self):
        """Admitted, then an ERROR in execution (inside a savepoint or not)."""
        family, tenant = self.pick()
        savepoint = self.rng.random() < 0.5
        if savepoint:
            self.conn.execute("BEGIN")
            self.conn.execute("SAVEPOINT s")
        self.inflight = [family]
        try:
            self.conn.execute(f"SELECT 1/(g-g) FROM generate_series(1, 1) g {tag(family, self.cls, tenant)}")
            self.run_.ledger.fail(f"{self.name}: division by zero did not fail")
        except errors.DivisionByZero:
            self.inflight = []
            self.admitted(family)
        if savepoint:
            self.conn.execute("ROLLBACK TO SAVEPOINT s")
            self.conn.execute("COMMIT")

    def op_cpu(self):
        """CPU for the server_share budget (s), sometimes for another."""
        family, tenant = self.pick()
        if self.rng.random() < 0.7:
            family = "s"
        self.execute([family], f"{CPU_QUERY} {tag(family, self.cls, tenant)}")

    def op_parallel(self):
        """A parallel plan: it holds 1 + planned workers units (or is refused
        when they exceed max_concurrent)."""
        family, tenant = self.pick()
        self.conn.execute("BEGIN")
        for setting in ["parallel_setup_cost = 0", "parallel_tuple_cost = 0",
                        "min_parallel_table_scan_size = 0", "max_parallel_workers_per_gather = 2"]:
            self.conn.execute(f"SET LOCAL {setting}")
        self.execute([family], f"SELECT count(*) FROM pgbench_accounts {tag(family, self.cls, tenant)}")
        self.conn.execute("COMMIT")

    def op_disabled(self):
        """A cursor admitted, then traffic_control.enabled turned off in the
        session: statements are not admitted, the cursor's slot is still
        given back when it is closed."""
        family, tenant = self.pick()
        self.conn.execute("BEGIN")
        self.execute([family], f"DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 30) g "
                               f"{tag(family, self.cls, tenant)}")
        self.conn.execute("SET LOCAL traffic_control.enabled = off")
        self.conn.execute("FETCH 5 FROM c")
        self.conn.execute(f"SELECT pg_sleep(0.002) {tag(family, self.cls, tenant)}")  # not admitted
        if self.rng.random() < 0.5:
            self.conn.execute("CLOSE c")
        self.conn.execute("COMMIT")

    def op_client_encoding(self):
        """An `each` value the client encoding cannot show, in the DETAIL of
        the warning_threshold NOTICE of chaos_e."""
        tenant = self.rng.choice(AWKWARD_TENANTS)
        self.conn.execute("SET client_encoding = 'LATIN1'")
        self.execute(["e"], f"SELECT pg_sleep(0.002) {tag('e', self.cls, tenant)}")
        self.conn.execute("RESET client_encoding")

    def op_function_cursor(self):
        """A cursor a function opens, used at top level: admitted when it is
        opened (track = all: a nested statement) or at its first top-level
        FETCH or MOVE (track = top); never when it is closed unfetched."""
        family, tenant = self.pick()
        at_open = self.track == "all"
        variant = self.rng.choice(["fetch", "move", "fetch_twice", "close_unfetched", "rollback"])
        self.conn.execute("BEGIN")
        opened = ("SELECT chaos_open_cursor(%s)", (tag_body(family, self.cls, tenant),))
        if at_open:
            self.execute([family], *opened)
        else:
            self.conn.execute(*opened)
        if variant == "close_unfetched":
            self.conn.execute('CLOSE "chaos_cur"')
        else:
            first = 'MOVE 10 IN "chaos_cur"' if variant == "move" else 'FETCH 10 FROM "chaos_cur"'
            if at_open:
                self.conn.execute(first)
            else:
                self.execute([family], first)
            if variant == "fetch_twice":
                self.conn.execute('FETCH 10 FROM "chaos_cur"')
        self.conn.execute("ROLLBACK" if variant == "rollback" else "COMMIT")

    # chaos-only operations ---------------------------------------------------
    def op_statement_timeout(self):
        family, tenant = self.pick()
        self.conn.execute(f"SET statement_timeout = {self.rng.randint(5, 80)}")
        self.execute([family], f"SELECT pg_sleep({self.rng.choice([0.02, 0.05, 0.1, 0.2])}) "
                               f"{tag(family, self.cls, tenant)}")
        self.conn.execute("RESET statement_timeout")

    def op_cursor_left_open(self):
        """A cursor left open in an idle transaction, then the client commits
        or vanishes."""
        family, tenant = self.pick()
        self.conn.execute("BEGIN")
        self.execute([family], "DECLARE c CURSOR FOR SELECT g, pg_sleep(0.001) FROM generate_series(1, 30) g "
                               + tag(family, self.cls, tenant))
        self.conn.execute("FETCH 3 FROM c")
        time.sleep(self.rng.uniform(0, 0.15))
        if self.rng.random() < 0.5:
            self.run_.ledger.event("clients vanished with a cursor open")
            self.abrupt_close(self.conn)
            self.conn = None
        else:
            self.conn.execute("COMMIT")

    def op_idle_timeout(self):
        family, tenant = self.pick()
        self.conn.execute("SET idle_in_transaction_session_timeout = 30")
        self.conn.execute("BEGIN")
        self.execute([family], "DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 30) g "
                               + tag(family, self.cls, tenant))
        self.conn.execute("FETCH 3 FROM c")
        time.sleep(0.1)
        self.conn.execute("COMMIT")  # normally fails: the session was ended

    def op_disconnect(self):
        """A client that disconnects in the middle of a statement (half of
        them with client_connection_check_interval, so the backend notices at
        once)."""
        family, tenant = self.pick()
        conn = self.connect(app=f"{self.app}-disc")
        try:
            if self.rng.random() < 0.5:
                conn.execute("SET client_connection_check_interval = 10")
            sql = f"SELECT pg_sleep({self.rng.choice([0.05, 0.2, 0.5])}) {tag(family, self.cls, tenant)}"
            conn.pgconn.send_query(sql.encode())
            self.uncertain(family)
            time.sleep(self.rng.uniform(0, 0.06))
        finally:
            self.run_.ledger.event("clients vanished mid-statement")
            self.abrupt_close(conn)

    def op_procedure(self):
        """CALL (a utility statement, admitted in w) of a procedure that
        commits between its nested statements (admitted with track = all)."""
        family, tenant = self.pick()
        n = self.rng.randint(1, 3)
        body = tag_body(family, self.cls, tenant).replace("'", "''")
        nested = [family] * n if self.track == "all" else []
        self.execute(["w"] + nested, f"CALL chaos_proc('{body}', {n}) {tag('w', self.cls)}")

    def op_pipeline(self):
        families = [self.rng.choice(FAMILIES) for _ in range(self.rng.randint(2, 4))]
        tenant = self.rng.choice(self.run_.tenants)
        self.inflight = list(families)
        # prepare=False: psycopg 3.1.7 counts a statement as prepared when its
        # Parse was in the part of a pipeline that an error made the server
        # skip ("prepared statement _pg3_N does not exist" afterwards).
        with self.conn.pipeline():
            for family in families:
                self.conn.execute(f"SELECT pg_sleep(%s) {tag(family, self.cls, tenant)}", (0.003,),
                                  prepare=False)
        self.inflight = []
        for family in families:
            self.admitted(family)

    # ---- the loop ----------------------------------------------------------------
    def run(self):
        try:
            ops, weights = zip(*self.ops)
            while not self.run_.stop.is_set():
                if self.conn is None:
                    self.conn = self.connect()
                op = self.rng.choices(ops, weights)[0]
                self.inflight = []
                try:
                    op()
                    self.run_.ledger.event(f"{self.cls} {op.__name__[3:]}")
                except psycopg.Error as exc:  # every error is classified
                    self.on_error(exc)
            # The last statement is family q's (cpu_priority): the priority
            # its backend ran at must be gone once it idles (check_idle_priority).
            if self.conn is not None and self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                try:
                    self.execute(["q"], f"SELECT 1 {tag('q', self.cls, self.rng.choice(self.run_.tenants))}")
                except psycopg.Error as exc:
                    self.on_error(exc)
            # Stay connected, idle, until the checker has looked at `active`:
            # a slot leaked by a live session shows only while it lives.
            if self.conn is not None and self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self.recover()
        except Exception as exc:  # noqa: BLE001
            self.run_.ledger.fail(f"{self.name} died: {type(exc).__name__}: {exc}")
        finally:
            self.run_.client_idle()
            self.run_.release.wait(timeout=600)
            if self.conn is not None:
                try:
                    self.conn.close()
                except Exception:
                    pass


class PgbenchLoop(threading.Thread):
    """pgbench runs of a few seconds each, back to back until `stop`. A
    pgbench client stops at its first error (PostgreSQL 15's pgbench retries
    only serialization failures and deadlocks), so each run reports its
    processed transactions per script and the errors its clients stopped on."""

    SCRIPTS = [  # (file, family, weight, body)
        ("pgb_read.sql", "q", 6, "\\set aid random(1, 100000)\n"
         "SELECT abalance FROM pgbench_accounts WHERE aid = :aid " + tag("q", "pgbench") + ";\n"),
        ("pgb_a.sql", "a", 2, "SELECT pg_sleep(0.01) " + tag("a", "pgbench") + ";\n"),
        ("pgb_q.sql", "q", 3, "SELECT pg_sleep(0.02) " + tag("q", "pgbench") + ";\n"),
        ("pgb_e1.sql", "e", 1, "SELECT pg_sleep(0.01) " + tag("e", "pgbench", "t1") + ";\n"),
        ("pgb_e2.sql", "e", 1, "SELECT pg_sleep(0.01) " + tag("e", "pgbench", "t2") + ";\n"),
        ("pgb_w.sql", "w", 1, "SELECT pg_sleep(0.005) " + tag("w", "pgbench") + ";\n"),
        ("pgb_s.sql", "s", 1, CPU_QUERY + " " + tag("s", "pgbench") + ";\n"),
    ]

    def __init__(self, run, clients, seed):
        super().__init__(name="pgbench", daemon=True)
        self.run_ = run
        self.clients = clients
        self.rng = random.Random(seed)
        self.runs = 0
        for file, _, _, body in self.SCRIPTS:
            with open(os.path.join(run.workdir, file), "w") as out:
                out.write(body)

    def run(self):
        ledger = self.run_.ledger
        try:
            while not self.run_.stop.is_set():
                mode = self.rng.choice(["simple", "extended", "prepared"])
                command = [self.run_.args.pgbench, "-n", "-c", str(self.clients), "-j", "1",
                           "-T", str(self.rng.randint(2, 5)), "-M", mode]
                for file, _, weight, _ in self.SCRIPTS:
                    command += ["-f", f"{os.path.join(self.run_.workdir, file)}@{weight}"]
                command.append("postgres")
                env = dict(os.environ, PGAPPNAME="pgbench")
                done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
                self.runs += 1
                self.account(done)
        except Exception as exc:  # noqa: BLE001
            ledger.fail(f"pgbench loop died: {type(exc).__name__}: {exc}")

    def account(self, done):
        ledger = self.run_.ledger
        out, err = done.stdout, done.stderr
        if "number of transactions actually processed" not in out:
            ledger.fail(f"pgbench run without results (exit {done.returncode}): {err[-2000:]}")
            return
        processed = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
        # Per script: "SQL script N: <file>" ... " - M transactions (...)";
        # pgbench leaves these out when nothing was processed.
        per_script = re.findall(r"SQL script (\d+): (\S+)\n - weight: \d+[^\n]*\n - (\d+) transactions", out)
        if len(per_script) != len(self.SCRIPTS) and processed != 0:
            ledger.fail(f"pgbench output: {len(per_script)} script sections: {out[-2000:]}")
            return
        total = 0
        for number, file, transactions in per_script:
            family = self.SCRIPTS[int(number) - 1][1]
            ledger.add("pgbench", family, "admitted", int(transactions))
            total += int(transactions)
        if processed != total:
            ledger.fail(f"pgbench: processed {processed} != sum of scripts {total}")
        failed = re.search(r"number of failed transactions: (\d+)", out)
        if failed and int(failed.group(1)) != 0:
            ledger.fail(f"pgbench: {failed.group(1)} failed (retried) transactions")
        for line in err.splitlines():
            aborted = re.search(r"client \d+ script (\d+) aborted in command \d+ query \d+: (.*)", line)
            if aborted:
                match = BLOCKED_RE.search(aborted.group(2))
                family = family_of_budget(match.group(1)) if match else None
                if PREFIX in aborted.group(2) and family == self.SCRIPTS[int(aborted.group(1))][1]:
                    ledger.add("pgbench", family, "refused")
                    ledger.event("pgbench clients stopped by a refusal")
                else:
                    ledger.fail(f"pgbench client stopped by: {line}")
                continue
            notice = WOULD_BLOCK_RE.search(line)
            if line.startswith("NOTICE:") and notice and family_of_budget(notice.group(1)):
                ledger.add("pgbench", family_of_budget(notice.group(1)), "notice")


class Run:
    def __init__(self, args):
        self.args = args
        self.dsn = f"host={args.host} port={args.port} user=postgres dbname=postgres"
        self.workdir = args.workdir
        self.stop = threading.Event()
        self.release = threading.Event()  # the clients may disconnect
        self.idle_lock = threading.Condition()
        self.idle_clients = 0
        self.ledger = Ledger()
        self.config = Config(INITIAL_LIMITS)
        self.applied = []  # the budgets last written by apply_config
        # With a small bucket table, many `each` values make instances evict
        # one another (and their counters go with them).
        self.tenants = TENANTS if not args.max_buckets else [f"t{i}" for i in range(1, 41)]
        self.checks_passed = 0
        self.checks_failed = 0
        self.stats = collections.Counter()

    def client_idle(self):
        with self.idle_lock:
            self.idle_clients += 1
            self.idle_lock.notify_all()

    # ---- checks -------------------------------------------------------------
    def check(self, ok, what):
        if ok:
            self.checks_passed += 1
            log(f"ok      {what}")
        else:
            self.checks_failed += 1
            log(f"FAILED  {what}")
        return ok

    def admin(self, app):
        # Not "chaos-...": the victims of cancels and terminates are chosen by
        # that prefix of application_name.
        return psycopg.connect(self.dsn, application_name=app, autocommit=True)

    # ---- configuration --------------------------------------------------------
    def apply_config(self, conn, config):
        """ALTER SYSTEM and pg_reload_conf(). A process that reloads reads
        postgresql.auto.conf when its signal arrives, perhaps between two of
        these ALTER SYSTEMs; so a rename first adds the new name, then points
        the rules at it, then drops the old name: every state of the file
        has the budget each rule names."""
        budgets = json.loads(config.budgets_json())
        names = {b["name"] for b in budgets}
        union = budgets + [b for b in self.applied if b["name"] not in names]
        if union != budgets:
            self.alter(conn, "budgets", json.dumps(union, separators=(",", ":")))
        self.alter(conn, "rules", config.rules_json())
        self.alter(conn, "budgets", config.budgets_json())
        conn.execute("SELECT pg_reload_conf()")
        self.applied = budgets

    @staticmethod
    def alter(conn, setting, value):
        conn.execute(f"ALTER SYSTEM SET traffic_control.{setting} = '{value}'")

    def wait_config(self, conn, config, timeout=60):
        """Polls until this session has the configuration (a reload is a signal)."""
        wanted = config.budgets_json()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            budgets = conn.execute("SHOW traffic_control.budgets").fetchone()[0]
            rules = conn.execute("SHOW traffic_control.rules").fetchone()[0]
            if budgets == wanted and rules == config.rules_json():
                return True
            time.sleep(0.05)
        return False

    # ---- setup ------------------------------------------------------------------
    def setup(self):
        with self.admin("tc-setup") as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS traffic_control")
            conn.execute(SETUP_SQL)
            self.start_time = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
            self.apply_config(conn, self.config)
            if not self.wait_config(conn, self.config):
                raise RuntimeError("the initial configuration was not loaded")
        subprocess.run([self.args.pgbench, "-i", "-q", "-s", "1", "postgres"], check=True,
                       capture_output=True, env=dict(os.environ, PGAPPNAME="pgbench-init"))
        self.postmaster_pid = self.read_postmaster_pid()
        self.log_offset = os.path.getsize(self.args.server_log)

    def read_postmaster_pid(self):
        with open(os.path.join(self.args.data, "postmaster.pid")) as f:
            return f.readline().strip()

    # ---- chaos: cancels and terminates -----------------------------------------
    # Sessions of the chaos clients, and the parallel workers of their statements.
    VICTIMS_SQL = """
        SELECT pid, state, coalesce(wait_event_type, ''), backend_type FROM pg_stat_activity
         WHERE (application_name LIKE 'chaos-%' AND backend_type = 'client backend')
            OR (backend_type = 'parallel worker' AND leader_pid IN
                  (SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'chaos-%'))"""

    def chaos_loop(self, seed):
        rng = random.Random(seed)
        conn = self.admin("tc-chaos-killer")
        try:
            while not self.stop.is_set():
                time.sleep(rng.expovariate(1000.0 / self.args.cancel_interval_ms))
                rows = conn.execute(self.VICTIMS_SQL).fetchall()
                if not rows:
                    continue
                workers = [r for r in rows if r[3] == "parallel worker"]
                active = [r for r in rows if r[1] == "active" and r[3] == "client backend"]
                if workers and rng.random() < 0.3:
                    rows = workers
                elif active and rng.random() < 0.8:
                    rows = active
                pid, state, wait, backend_type = rng.choice(rows)
                if backend_type == "parallel worker":
                    where = "parallel worker"
                else:
                    where = "queued" if (state == "active" and wait == "Extension") else (state or "starting")
                if rng.random() < 1.0 / self.args.terminate_every:
                    if conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]:
                        self.stats["terminates"] += 1
                        self.stats[f"terminates of {where} backends"] += 1
                else:
                    if conn.execute("SELECT pg_cancel_backend(%s)", (pid,)).fetchone()[0]:
                        self.stats["cancels"] += 1
                        self.stats[f"cancels of {where} backends"] += 1
        except Exception as exc:  # noqa: BLE001
            self.ledger.fail(f"chaos loop died: {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    # ---- chaos: reloads and renames ------------------------------------------------
    def reload_loop(self, seed):
        rng = random.Random(seed)
        conn = self.admin("tc-chaos-reloader")
        try:
            while not self.stop.is_set():
                time.sleep(rng.expovariate(1000.0 / self.args.reload_interval_ms))
                if rng.random() < 0.05:
                    try:
                        conn.execute("ALTER SYSTEM SET traffic_control.budgets = "
                                     "'[{\"name\":\"bad\",\"max_concurrent\":-1}]'")
                        self.ledger.fail("an invalid budgets value was accepted")
                    except errors.InvalidParameterValue:
                        self.stats["invalid configurations rejected"] += 1
                    continue
                family = rng.choice(FAMILIES)
                limits = self.config.limits[family]
                for field, choices in LIMIT_CHOICES[family].items():
                    limits[field] = rng.choice(choices)
                if family == "q":
                    limits["mode"] = "warn" if rng.random() < 0.1 else "enforce"
                if family in RENAMABLE and rng.random() < self.args.rename_probability:
                    name = self.config.name(family)
                    held = conn.execute("SELECT coalesce(sum(active), 0) FROM traffic_control.budget_status "
                                        "WHERE budget = %s", (name,)).fetchone()[0]
                    self.config.renamed[family] = not self.config.renamed[family]
                    self.stats["renames"] += 1
                    if held > 0:
                        self.stats["renames while the budget held slots"] += 1
                self.apply_config(conn, self.config)
                self.stats["reloads"] += 1
        except Exception as exc:  # noqa: BLE001
            self.ledger.fail(f"reload loop died: {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    # ---- the load phase ----------------------------------------------------------------
    def load(self):
        args = self.args
        seeds = random.Random(args.seed)
        threads = []
        threads += [Client(self, "clean", i, seeds.getrandbits(64)) for i in range(args.clean_clients)]
        threads += [Client(self, "chaos", i, seeds.getrandbits(64)) for i in range(args.chaos_clients)]
        pgbench = PgbenchLoop(self, args.pgbench_clients, seeds.getrandbits(64))
        threads.append(pgbench)
        killer = threading.Thread(target=self.chaos_loop, args=(seeds.getrandbits(64),), daemon=True)
        reloader = threading.Thread(target=self.reload_loop, args=(seeds.getrandbits(64),), daemon=True)
        started = time.monotonic()
        for thread in threads + [killer, reloader]:
            thread.start()
        last_report = started
        while True:
            time.sleep(0.5)
            elapsed = time.monotonic() - started
            if args.duration and elapsed >= args.duration:
                break
            if args.cancels and self.stats["cancels"] >= args.cancels:
                break
            if time.monotonic() - last_report >= 15:
                last_report = time.monotonic()
                log(f"{elapsed:.0f} s: {self.stats['cancels']} cancels, {self.stats['terminates']} terminates, "
                    f"{self.stats['reloads']} reloads, {self.stats['renames']} renames")
        self.stop.set()
        self.load_seconds = time.monotonic() - started
        log(f"load stopped after {self.load_seconds:.1f} s; waiting for the clients")
        deadline = time.monotonic() + 180
        hung = []
        for thread in [killer, reloader, pgbench]:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
            if thread.is_alive():
                hung.append(thread.name)
        clients = [t for t in threads if isinstance(t, Client)]
        with self.idle_lock:
            self.idle_lock.wait_for(lambda: self.idle_clients == len(clients),
                                    timeout=max(0.1, deadline - time.monotonic()))
            idle = self.idle_clients
        self.check(idle == len(clients) and not hung,
                   f"the load ended: {idle} of {len(clients)} client sessions idle ({hung or 'no thread hung'})")
        with self.admin("tc-checker-idle") as conn:
            self.wait_inactive(conn, "with the load stopped and the client sessions still connected and idle")
            self.check_idle_priority(conn)
        self.release.set()
        for thread in clients:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
            if thread.is_alive():
                hung.append(thread.name)
        self.check(not hung, f"every client thread ended after the load ({hung or 'all did'})")
        self.pgbench_runs = pgbench.runs

    def check_idle_priority(self, conn):
        """Every idle client backend runs at nice 0 under the normal policy:
        a lowered priority lingers at most 1 s after a statement (src/priority.c)."""
        time.sleep(1.5)
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND state LIKE 'idle%' AND pid <> pg_backend_pid()").fetchall()]
        lowered = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(") ", 1)[1].split()
            except OSError:
                continue  # it exited meanwhile
            nice, policy = int(fields[16]), int(fields[38])
            if nice != 0 or policy != 0:
                lowered.append((pid, nice, policy))
        self.check(pids and not lowered,
                   f"no idle client backend left at a lowered CPU priority "
                   f"({len(pids)} idle; {lowered or 'none lowered'})")

    def wait_inactive(self, conn, when):
        """Polls until every budget instance has active = 0 (statements that
        lost their client may still be finishing): 30 s at most."""
        deadline = time.monotonic() + 30
        while True:
            busy = conn.execute("SELECT budget, instance, active FROM traffic_control.budget_status "
                                "WHERE active <> 0").fetchall()
            if not busy or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.check(not busy, f"every budget instance has active = 0 {when} ({busy or 'none busy'})")

    # ---- after the load ------------------------------------------------------------------
    def settle(self, conn):
        """Waits until no other client backend is left (they exit after their
        clients disconnect), then until every instance's active is 0."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                "AND pid <> pg_backend_pid()").fetchone()[0]
            if left == 0:
                break
            time.sleep(0.2)
        self.check(left == 0, f"every client backend exited after the load ({left} left)")
        self.wait_inactive(conn, "once the clients are gone")

    def check_counters(self, conn, identities=True):
        """The identities between the server's counters and what the clients
        saw. S = budget_status summed over a family's names and instances,
        L = a ledger budget's budget_status row, M = its rule's matched,
        H = violation_history summed over minutes; client counts per class."""
        status = conn.execute("SELECT budget, instance, mode, active, admitted, warned, blocked, "
                              "blocked_max_concurrent, blocked_per_query_limit, blocked_server_share, queued "
                              "FROM traffic_control.budget_status").fetchall()
        matched = dict(conn.execute("SELECT rule, matched FROM traffic_control.rule_status").fetchall())
        history = conn.execute("SELECT budget, sum(admitted), sum(warned), sum(blocked_max_concurrent), "
                               "sum(blocked_per_query_limit), sum(blocked_server_share) "
                               "FROM traffic_control.violation_history GROUP BY budget").fetchall()
        S = collections.defaultdict(collections.Counter)
        by_name = collections.defaultdict(collections.Counter)
        for (budget, instance, mode, active, admitted, warned, blocked, b_mc, b_pql, b_ss, queued) in status:
            row = collections.Counter(admitted=admitted, warned=warned, blocked=blocked,
                                      blocked_max_concurrent=b_mc, blocked_per_query_limit=b_pql,
                                      blocked_server_share=b_ss, queued=queued)
            by_name[budget].update(row)
            family = family_of_budget(budget)
            if family:
                S[family].update(row)
            elif budget.startswith("ledger_"):
                S[budget].update(row)
            else:
                self.check(False, f"no unknown budget in budget_status ({budget})")
        self.server = S
        self.matched = matched
        led = self.ledger
        if not identities:
            return
        L = {cls: S[f"ledger_{cls}"] for cls in CLASSES}
        M = {cls: matched.get(f"ledger_{cls}") or 0 for cls in CLASSES}

        sum_admitted = sum(S[f]["admitted"] for f in FAMILIES)
        sum_ledger = sum(L[c]["admitted"] for c in CLASSES)
        self.check(sum_admitted == sum_ledger,
                   f"(1) admitted, all family budgets = all ledgers: {sum_admitted} = {sum_ledger}")
        sum_blocked = sum(S[f]["blocked"] for f in FAMILIES)
        sum_decided = sum(M[c] - L[c]["admitted"] for c in CLASSES)
        self.check(sum_blocked == sum_decided,
                   f"(2) blocked, all family budgets = ledger rules' matched - ledgers' admitted: "
                   f"{sum_blocked} = {sum_decided}")
        self.check(all(L[c]["blocked"] == 0 for c in CLASSES), "(2) no ledger budget refused anything")
        self.check(all(S[f]["blocked_per_query_limit"] == 0 for f in FAMILIES) and
                   all(S[f]["blocked_server_share"] == 0 for f in FAMILIES if f != "s"),
                   "(2) refusals by max_concurrent, and by server_share only in chaos_s "
                   f"({S['s']['blocked_server_share']} there)")
        for budget, h_admitted, h_warned, h_b_mc, h_b_pql, h_b_ss in history:
            s = by_name[budget]
            self.check((h_admitted, h_warned, h_b_mc, h_b_pql, h_b_ss) ==
                       (s["admitted"], s["warned"], s["blocked_max_concurrent"],
                        s["blocked_per_query_limit"], s["blocked_server_share"]),
                       f"(3) violation_history = budget_status for {budget}: admitted {h_admitted}/"
                       f"{s['admitted']}, warned {h_warned}/{s['warned']}, blocked {h_b_mc + h_b_pql + h_b_ss}/"
                       f"{s['blocked']}")
        named = {row[0] for row in history}
        for budget, s in by_name.items():
            if budget not in named:
                self.check(s["admitted"] + s["blocked"] == 0, f"(3) {budget} has history rows")
        for cls in ["pgbench", "clean"]:
            c_admitted = led.get(cls, kind="admitted")
            c_refused = led.get(cls, kind="refused")
            self.check(L[cls]["admitted"] == c_admitted,
                       f"(4) {cls}: ledger admitted = statements the clients saw admitted: "
                       f"{L[cls]['admitted']} = {c_admitted}")
            self.check(M[cls] - L[cls]["admitted"] == c_refused,
                       f"(4) {cls}: ledger matched - admitted = 53000 refusals the clients saw: "
                       f"{M[cls] - L[cls]['admitted']} = {c_refused}")
            self.check(led.get(cls, kind="uncertain") == 0, f"(4) {cls}: no statement of unknown outcome")
        c_admitted = led.get("chaos", kind="admitted")
        c_refused = led.get("chaos", kind="refused")
        c_uncertain = led.get("chaos", kind="uncertain")
        a, r = L["chaos"]["admitted"], M["chaos"] - L["chaos"]["admitted"]
        self.check(c_admitted <= a <= c_admitted + c_uncertain,
                   f"(5) chaos: seen admitted <= ledger admitted <= + unknown: {c_admitted} <= {a} <= "
                   f"{c_admitted + c_uncertain}")
        self.check(c_refused <= r <= c_refused + c_uncertain,
                   f"(5) chaos: seen refused <= ledger refusals <= + unknown: {c_refused} <= {r} <= "
                   f"{c_refused + c_uncertain}")
        for f in FAMILIES:
            seen_a, seen_r = led.get(family=f, kind="admitted"), led.get(family=f, kind="refused")
            unknown = led.get(family=f, kind="uncertain")
            seen_n = led.get(family=f, kind="notice")
            self.check(seen_a <= S[f]["admitted"] <= seen_a + unknown,
                       f"(6) family {f}: admitted {seen_a} <= {S[f]['admitted']} <= {seen_a + unknown}")
            self.check(seen_r <= S[f]["blocked"] <= seen_r + unknown,
                       f"(6) family {f}: blocked {seen_r} <= {S[f]['blocked']} <= {seen_r + unknown}")
            self.check(seen_n <= S[f]["warned"] <= seen_n + unknown,
                       f"(6) family {f}: warned {seen_n} <= {S[f]['warned']} <= {seen_n + unknown}")

    # ---- no slot is stuck ----------------------------------------------------------------
    def run_at_once(self, conn, config, family, tenant, n):
        """n sessions of the family (and tenant) hold a slot each, blocked on an
        advisory lock; the n+1st is refused; all n finish once it is released."""
        name = config.name(family)
        instance = tenant if family == "e" else None
        t = tag(family, "final", tenant)
        what = f"{name}" + (f" tenant {tenant}" if instance else "")
        conn.execute("SELECT pg_advisory_lock(4242)")
        sessions = [self.admin(f"tc-final-{i}") for i in range(n + 1)]
        results = [None] * n
        try:
            for s in sessions:
                if not self.wait_config(s, config):
                    raise RuntimeError("a final session did not load the final configuration")

            def hold(i):
                try:
                    sessions[i].execute(f"SELECT pg_advisory_xact_lock_shared(4242) {t}")
                    results[i] = "ok"
                except Exception as exc:  # noqa: BLE001
                    results[i] = f"{type(exc).__name__}: {exc}"
            holders = [threading.Thread(target=hold, args=(i,), daemon=True) for i in range(n)]
            for h in holders:
                h.start()
            deadline = time.monotonic() + 60
            active = None
            while time.monotonic() < deadline:
                active = conn.execute("SELECT active FROM traffic_control.budget_status WHERE budget = %s "
                                      "AND instance IS NOT DISTINCT FROM %s", (name, instance)).fetchone()
                if (active and active[0] == n) or any(r is not None for r in results):
                    break
                time.sleep(0.05)
            self.check(active is not None and active[0] == n,
                       f"(7) {what}: {n} statements hold slots at once (active = {active and active[0]})")
            try:
                sessions[n].execute(f"SELECT 1 {t}")
                extra = "admitted"
            except errors.InsufficientResources as exc:
                extra = "refused" if f'budget "{name}": max_concurrent exceeded' in str(exc) else str(exc)
            self.check(extra == "refused", f"(7) {what}: statement {n + 1} is refused ({extra})")
        finally:
            conn.execute("SELECT pg_advisory_unlock(4242)")
        for h in holders:
            h.join(timeout=60)
        self.check(results == ["ok"] * n, f"(7) {what}: all {n} finish ({results})")
        for s in sessions:
            s.close()

    def check_queue_wakes(self, conn):
        """With q full and a long queue timeout, a queued statement is admitted
        as soon as a slot is released (not at its timeout)."""
        config = Config(FINAL_LIMITS)
        config.limits["q"]["queue_timeout_ms"] = 60000
        self.apply_config(conn, config)
        self.wait_config(conn, config)
        n = config.limits["q"]["max_concurrent"]
        name = config.name("q")
        t = tag("q", "final")
        conn.execute("SELECT pg_advisory_lock(4243)")
        sessions = [self.admin(f"tc-queue-{i}") for i in range(n + 1)]
        results = [None] * (n + 1)
        finished = [None] * (n + 1)
        for s in sessions:
            self.wait_config(s, config)

        def hold(i):
            try:
                sessions[i].execute(f"SELECT pg_advisory_xact_lock_shared(4243) {t}")
                results[i] = "ok"
            except Exception as exc:  # noqa: BLE001
                results[i] = f"{type(exc).__name__}: {exc}"
            finished[i] = time.monotonic()
        holders = [threading.Thread(target=hold, args=(i,), daemon=True) for i in range(n)]
        for h in holders:
            h.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = conn.execute("SELECT active FROM traffic_control.budget_status WHERE budget = %s", (name,)).fetchone()
            if row and row[0] == n:
                break
            time.sleep(0.05)
        waiter = threading.Thread(target=hold, args=(n,), daemon=True)
        waiter.start()
        queued = False
        while time.monotonic() < deadline:
            queued = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                                  "AND wait_event_type = 'Extension'", (f"tc-queue-{n}",)).fetchone()[0] == 1
            if queued:
                break
            time.sleep(0.05)
        self.check(queued, f"(8) {name}: statement {n + 1} waits in the queue")
        released = time.monotonic()
        conn.execute("SELECT pg_advisory_unlock(4243)")
        for h in holders + [waiter]:
            h.join(timeout=90)
        waited = (finished[n] or float("inf")) - released
        self.check(results == ["ok"] * (n + 1) and waited < 30,
                   f"(8) {name}: the queued statement is admitted when a slot is released "
                   f"({results[n]}, {waited:.1f} s after the release; its queue timeout is 60 s)")
        for s in sessions:
            s.close()

    def check_slots(self, conn):
        config = Config(FINAL_LIMITS)
        self.apply_config(conn, config)
        self.check(self.wait_config(conn, config), "the final configuration is loaded")
        for family in ["a", "q", "s"]:
            self.run_at_once(conn, config, family, None, config.limits[family]["max_concurrent"])
        for tenant in TENANTS + ["fresh"]:
            self.run_at_once(conn, config, "e", tenant, config.limits["e"]["max_concurrent"])
        self.check_queue_wakes(conn)
        busy = conn.execute("SELECT budget, instance, active FROM traffic_control.budget_status "
                            "WHERE active <> 0").fetchall()
        self.check(not busy, f"every budget instance has active = 0 at the end ({busy or 'none busy'})")
        # chaos_s now drains at 100% of the server (its final statements set
        # the rate): whatever debt the load left drains within seconds.
        deadline = time.monotonic() + 90
        while True:
            owing = conn.execute("SELECT budget, instance, debt_seconds FROM traffic_control.budget_status "
                                 "WHERE debt_seconds <> 0 AND budget = %s", (config.name("s"),)).fetchall()
            if not owing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.check(not owing, f"chaos_s's debt drains to 0 ({owing or 'none owed'})")
        negative = conn.execute("SELECT budget, instance, debt_seconds FROM traffic_control.budget_status "
                                "WHERE NOT debt_seconds >= 0").fetchall()
        self.check(not negative, f"no budget's debt is negative or NaN ({negative or 'none'})")

    # ---- the server ----------------------------------------------------------------------
    def check_server(self, conn):
        start_time = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        self.check(start_time == self.start_time and self.read_postmaster_pid() == self.postmaster_pid,
                   f"the postmaster never restarted (started {start_time}, pid {self.postmaster_pid})")
        with open(self.args.server_log, errors="replace") as f:
            f.seek(self.log_offset)
            text = f.read()
        # A parallel worker that is terminated ends with exit code 1, which the
        # postmaster logs; any other exit code, or a signal, is a crash.
        bad = re.compile(r"terminated by signal|was terminated by|PANIC:|TRAP:|exited with exit code|"
                         r"server process \(PID|reinitializing|all server processes terminated|"
                         r"rule skipped")
        benign = re.compile(r'background worker "parallel worker" \(PID \d+\) exited with exit code 1$')
        crashes = [line for line in text.splitlines() if bad.search(line) and not benign.search(line)]
        self.check(not crashes, f"no crash, restart or skipped rule in the server log ({crashes[:5] or 'none'})")
        # A victim that exited after it was chosen: pg_cancel_backend and
        # pg_terminate_backend warn and return false.
        warnings = [line for line in text.splitlines() if "WARNING:" in line
                    and "is not a PostgreSQL backend process" not in line]
        self.check(not warnings, f"no WARNING in the server log ({warnings[:5] or 'none'})")
        self.log_counts = collections.Counter()
        for line in text.splitlines():
            for label, pattern in [("FATAL terminating connection due to administrator command",
                                    "terminating connection due to administrator command"),
                                   ("ERROR canceling statement due to user request",
                                    "canceling statement due to user request"),
                                   ("ERROR canceling statement due to statement timeout",
                                    "canceling statement due to statement timeout"),
                                   ("FATAL connection to client lost", "connection to client lost"),
                                   ("FATAL idle-in-transaction timeout",
                                    "terminating connection due to idle-in-transaction timeout"),
                                   ("LOG traffic_control refusal/warning lines", "LOG:  traffic_control: ")]:
                if pattern in line:
                    self.log_counts[label] += 1

    def report(self):
        led = self.ledger
        log("---- figures ----")
        log(f"seed {self.args.seed}; load {self.load_seconds:.1f} s; pgbench runs {self.pgbench_runs}")
        for key in sorted(self.stats):
            log(f"  {key}: {self.stats[key]}")
        for cls in CLASSES:
            log(f"  {cls}: admitted {led.get(cls, kind='admitted')}, refused {led.get(cls, kind='refused')}, "
                f"unknown outcome {led.get(cls, kind='uncertain')}, warn notices {led.get(cls, kind='notice')}")
        for f in FAMILIES:
            s = self.server[f]
            log(f"  server, family {f}: admitted {s['admitted']}, blocked {s['blocked']}, "
                f"warned {s['warned']}, queued {s['queued']}")
        log(f"  server, all families: {sum(self.server[f]['admitted'] for f in FAMILIES)} statements admitted, "
            f"{sum(self.server[f]['blocked'] for f in FAMILIES)} refused, "
            f"{sum(self.server[f]['queued'] for f in FAMILIES)} queued")
        log(f"  run time {time.monotonic() - self.started:.0f} s (setup, load, checks)")
        for key in sorted(led.events):
            log(f"  {key}: {led.events[key]}")
        for key in sorted(self.log_counts):
            log(f"  server log, {key}: {self.log_counts[key]}")

    def main(self):
        log(f"seed {self.args.seed} (replay: test/chaos/chaos.sh --seed {self.args.seed} "
            f"--duration {self.args.duration} --cancels {self.args.cancels})")
        self.started = time.monotonic()
        self.setup()
        self.load()
        with self.admin("tc-checker") as conn:
            self.settle(conn)
            if self.args.max_buckets:
                # Evicted instances take their counters with them.
                log("--max-buckets: the counter identities are not checked")
                self.check_counters(conn, identities=False)
            else:
                self.check_counters(conn)
            self.check(not self.ledger.unexpected,
                       f"no unexpected client errors ({len(self.ledger.unexpected)}: "
                       f"{self.ledger.unexpected[:10]})")
            # The chaos did happen.
            self.check(self.stats["cancels"] > 0 and self.stats["terminates"] > 0 and
                       self.stats["reloads"] > 0 and self.stats["renames while the budget held slots"] > 0,
                       "cancels, terminates, reloads and renames with slots held all happened")
            self.check(self.server["q"]["queued"] > 0, "statements waited in a queue")
            self.check_slots(conn)
            self.check_server(conn)
        self.report()
        print(f"chaos: {self.checks_passed} checks passed, {self.checks_failed} failed", flush=True)
        return 0 if self.checks_failed == 0 else 1


SETUP_SQL = r"""
CREATE OR REPLACE FUNCTION chaos_nested(tags text, n int, fail boolean,
                                        OUT ok int, OUT refused int, OUT failed int)
LANGUAGE plpgsql AS $f$
DECLARE v int;
BEGIN
  ok := 0; refused := 0; failed := 0;
  FOR i IN 1..n LOOP
    BEGIN
      IF fail AND i % 2 = 0 THEN
        EXECUTE format('SELECT 1/(g-g) FROM generate_series(1, 1) g /*%s*/', tags) INTO v;
      ELSE
        EXECUTE format('SELECT 1 FROM pg_sleep(0.003) /*%s*/', tags) INTO v;
      END IF;
      ok := ok + 1;
    EXCEPTION
      WHEN insufficient_resources THEN refused := refused + 1;
      WHEN division_by_zero THEN failed := failed + 1;
    END;
  END LOOP;
END $f$;

CREATE OR REPLACE PROCEDURE chaos_proc(tags text, n int)
LANGUAGE plpgsql AS $f$
DECLARE v int;
BEGIN
  FOR i IN 1..n LOOP
    EXECUTE format('SELECT 1 FROM pg_sleep(0.003) /*%s*/', tags) INTO v;
    COMMIT;
  END LOOP;
END $f$;

CREATE OR REPLACE FUNCTION chaos_open_cursor(tags text) RETURNS refcursor
LANGUAGE plpgsql AS $f$
DECLARE c refcursor := 'chaos_cur';
BEGIN
  OPEN c FOR EXECUTE format('SELECT g FROM generate_series(1, 50) g /*%s*/', tags);
  RETURN c;
END $f$;
"""


def main():
    logging.getLogger("psycopg").setLevel(logging.ERROR)  # "error ignored terminating <Pipeline>"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=75,
                        help="seconds of load (0: until --cancels cancels)")
    parser.add_argument("--cancels", type=int, default=0,
                        help="stop the load after this many cancels (0: at --duration)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed; default: random)")
    parser.add_argument("--clean-clients", type=int, default=4)
    parser.add_argument("--chaos-clients", type=int, default=8)
    parser.add_argument("--pgbench-clients", type=int, default=4)
    parser.add_argument("--cancel-interval-ms", type=float, default=40, help="mean time between cancels")
    parser.add_argument("--terminate-every", type=float, default=12,
                        help="one terminate per this many cancels, on average")
    parser.add_argument("--reload-interval-ms", type=float, default=400, help="mean time between reloads")
    parser.add_argument("--rename-probability", type=float, default=0.3,
                        help="chance that a reload of a renamable budget renames it")
    parser.add_argument("--max-buckets", type=int, default=0,
                        help="the cluster's traffic_control.max_buckets when chaos.sh set it small "
                             "(40 tenants; counters are not compared)")
    parser.add_argument("--pgbench", required=True)
    parser.add_argument("--server-log", required=True)
    parser.add_argument("--data", required=True, help="the cluster's data directory")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--host", default=os.environ.get("PGHOST"))
    parser.add_argument("--port", default=os.environ.get("PGPORT"))
    args = parser.parse_args()
    if not args.duration and not args.cancels:
        parser.error("give --duration or --cancels")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 2**31)
    return Run(args).main()


if __name__ == "__main__":
    sys.exit(main())
