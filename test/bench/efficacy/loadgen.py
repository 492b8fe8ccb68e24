#!/usr/bin/python3
"""Load of the efficacy benchmark (test/bench/efficacy/run.sh), one arm-run at
a time. Run with Debian's python3 (python3-psycopg).

  degradation  critical primary-key lookups (pgbench at a fixed rate, with its
               per-transaction log) alone, then again while best-effort
               analytics floods the server from persistent connections.
  queue        a jobs queue: a producer at a fixed rate (pgbench), SKIP LOCKED
               workers that measure their dequeue latency, overlapping long
               analytics queries, and a sampler of backlog and dead tuples.

Best-effort clients keep their connections and behave as docs/clients.md asks:
SQLSTATE 53000 is retried after the HINT's "retry after N ms", or after
--retry-ms when there is no such hint. Every attempt is one row of a CSV
(outcome completed / refused / canceled / error), so the report can count what
happened inside any time window. Times are Unix epoch seconds, as in
pgbench's log.
"""

import argparse
import csv
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time

import psycopg
from psycopg import errors

RETRY_HINT = re.compile(r"retry after (\d+) ms")

# Best-effort queries, run as the role `analytics` and tagged as best-effort.
# Parallel plans stay allowed (max_parallel_workers_per_gather as configured).
# The flood: a CPU-heavy pass over pgbench_accounts (1-2 s alone at scale 10).
FLOOD_QUERY = ("SELECT count(*), sum(abalance) FROM pgbench_accounts "
               "WHERE md5(aid::text) LIKE '%ab%' /*priority='bestEffort',app='analytics'*/")
# The queue test's long report: the same pass, eight times over.
ANALYTICS_QUERY = ("SELECT count(*) FROM pgbench_accounts a, generate_series(1, 8) g "
                   "WHERE md5(a.aid::text || g::text) LIKE '%ab%' /*priority='bestEffort',app='analytics'*/")


ATTEMPT_COLUMNS = ("client", "start", "end", "outcome", "sqlstate", "message", "detail")


class Attempts:
    """The rows of one class of clients, shared by its threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rows = []

    def add(self, *row):
        with self.lock:
            self.rows.append(row)


class LoopClient(threading.Thread):
    """One persistent connection running `query` in a loop until `stop` is
    set; a refusal (53000) waits as the hint says, a lost connection is
    reconnected after retry_ms. `query` may be a callable returning the
    (query, parameters) of the next attempt."""

    def __init__(self, name, dsn, query, stop, attempts, retry_ms, start_delay=0.0):
        super().__init__(name=name, daemon=True)
        self.dsn, self.query, self.stop = dsn, query, stop
        self.attempts, self.retry_ms, self.start_delay = attempts, retry_ms, start_delay
        self.conn = None
        self.busy = False

    def connect(self):
        # prepare_threshold=None: never a named prepared statement, which
        # PgBouncer's transaction pooling (the pool-cap arm) cannot carry.
        self.conn = psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None,
                                    application_name="efficacy-" + self.name)

    def run(self):
        if self.stop.wait(self.start_delay):
            return
        while not self.stop.is_set():
            wait = 0.0
            t0 = time.time()
            try:
                if self.conn is None or self.conn.closed:
                    self.connect()
                    t0 = time.time()
                self.busy = True
                query, params = self.query() if callable(self.query) else (self.query, None)
                cur = self.conn.execute(query, params)
                if cur.description is not None:
                    cur.fetchall()
                self.busy = False
                self.attempts.add(self.name, t0, time.time(), "completed", "", "", "")
            except psycopg.Error as e:
                self.busy = False
                state = getattr(e, "sqlstate", None) or ""
                if self.stop.is_set():
                    outcome = "interrupted"  # our own cancel at the end of the run
                elif state == "53000":
                    outcome = "refused"
                    hint = (e.diag.message_hint or "") if e.diag else ""
                    m = RETRY_HINT.search(hint)
                    wait = int(m.group(1)) / 1000.0 if m else self.retry_ms / 1000.0
                elif state == "57014":
                    outcome = "canceled"  # statement_timeout (or a budget's own cancel)
                else:
                    outcome = "error"
                    wait = self.retry_ms / 1000.0
                    if self.conn is not None and (self.conn.closed or self.conn.broken):
                        self.close()
                first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
                detail = (e.diag.message_detail or "") if e.diag else ""
                self.attempts.add(self.name, t0, time.time(), outcome, state, first_line[:200], detail[:300])
            if wait:
                self.stop.wait(wait)
        self.close()

    def cancel(self):
        conn = self.conn
        if conn is not None and self.busy and not conn.closed:
            try:
                conn.cancel()
            except psycopg.Error:
                pass

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg.Error:
                pass
            self.conn = None


def stop_clients(clients, stop, timeout=15.0):
    """Ends a class of clients: cancels what runs and joins, bounded. The
    cancel is repeated, since one sent just before a statement reached the
    server is lost, and a statement left running would load the next arm."""
    stop.set()
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [c for c in clients if c.is_alive()]
        if not alive:
            break
        for c in alive:
            if isinstance(c, LoopClient):
                c.cancel()
        for c in alive:
            c.join(0.1)
    return [c.name for c in clients if c.is_alive()]


class CpuAccount:
    """How much of the machine went to this benchmark during a run and how
    much to everything else on it: the noise of a shared VM. Ours are the
    clusters' process trees (postmasters and their children, which include
    every backend and parallel worker), PgBouncer, this process and its
    pgbench children. Two measures of the others: the CPU they received (it
    grows when the arm leaves CPU idle, others fill it) and, sampled every
    second, how many of their threads were runnable (their demand)."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, roots):
        self.roots = set(roots)
        self.stop = threading.Event()
        self.runnable = []
        self.thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _stat(path):
        with open(path) as f:
            data = f.read()
        rest = data[data.rindex(")") + 2:].split()
        # state, ppid, [utime stime cutime cstime]
        return rest[0], int(rest[1]), [int(x) for x in rest[11:15]]

    def _scan(self):
        """(our CPU ticks, our runnable processes) over /proc."""
        ticks, running, me = 0, 0, os.getpid()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                state, ppid, t = self._stat("/proc/%s/stat" % pid)
            except (OSError, ValueError, IndexError):
                continue
            if int(pid) in self.roots:  # a postmaster: itself and the children it reaped
                ticks += sum(t)
            elif ppid in self.roots:  # its live children (backends, workers, autovacuum)
                ticks += t[0] + t[1]
            elif ppid != me:
                continue
            running += state == "R"
        for tid in os.listdir("/proc/self/task"):  # this process's threads (pgbench children counted above)
            try:
                running += self._stat("/proc/self/task/%s/stat" % tid)[0] == "R"
            except (OSError, ValueError, IndexError):
                pass
        return ticks, running

    def _sample(self):
        while not self.stop.wait(1.0):
            with open("/proc/loadavg") as f:
                all_running = int(f.read().split()[3].split("/")[0])
            self.runnable.append(max(0, all_running - self._scan()[1]))

    def snapshot(self):
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:8]]
        busy = (cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6]) / self.TICK  # user nice system irq softirq
        ours = self._scan()[0] / self.TICK
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        ours += me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
        return time.time(), busy, ours

    def start(self):
        self.begin = self.snapshot()
        self.thread.start()

    def write(self, path):
        self.stop.set()
        self.thread.join(5)
        end = self.snapshot()
        wall, busy, ours = end[0] - self.begin[0], end[1] - self.begin[1], end[2] - self.begin[2]
        capacity = wall * (os.cpu_count() or 1)
        others = max(0.0, busy - ours)
        write_csv(path, ("wall_s", "cpus", "machine_busy_cpu_s", "benchmark_cpu_s", "others_cpu_s", "others_pct",
                         "others_runnable_mean", "others_runnable_max"),
                  [(wall, os.cpu_count(), busy, ours, others, 100.0 * others / capacity if capacity else 0.0,
                    sum(self.runnable) / len(self.runnable) if self.runnable else 0.0,
                    max(self.runnable) if self.runnable else 0)])


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def run_bounded(cmd, seconds, log_path, env=None):
    """Runs a command that should end by itself after `seconds`, killing it
    after a grace period (every wait is bounded)."""
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            return p.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return -9


def pgbench_cmd(args, script, seconds, rate, clients, log_prefix=None):
    cmd = [args.pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients),
           "-R", str(rate), "-T", str(seconds), "-f", script, "-D", "naccounts=%d" % args.naccounts,
           "-h", args.host, "-p", str(args.port), "-U", args.user, args.dbname]
    if log_prefix:
        cmd[1:1] = ["-l", "--log-prefix=" + log_prefix]
    return cmd


def degradation(args):
    """critical alone for --alone s, then critical during a best-effort flood
    (the flood starts --ramp s before the critical phase and stops after it)."""
    os.makedirs(args.out, exist_ok=True)
    account = CpuAccount(args.account_pids)
    account.start()
    events = [("phase", "start", "end")]
    crit = os.path.join(os.path.dirname(os.path.abspath(__file__)), "critical.sql")

    t0 = time.time()
    rc = run_bounded(pgbench_cmd(args, crit, args.alone, args.critical_rate, args.critical_clients,
                                 os.path.join(args.out, "crit_alone")),
                     args.alone, os.path.join(args.out, "pgbench_alone.log"))
    events.append(("alone", t0, time.time()))
    if rc != 0:
        print("pgbench (critical alone) exited with %d" % rc, file=sys.stderr)

    stop = threading.Event()
    attempts = Attempts()
    clients = [LoopClient("be%d" % i, args.analytics_dsn, args.flood_query, stop, attempts, args.retry_ms)
               for i in range(args.flood_connections)]
    t_flood = time.time()
    for c in clients:
        c.start()
    time.sleep(args.ramp)
    t1 = time.time()
    rc2 = run_bounded(pgbench_cmd(args, crit, args.flood, args.critical_rate, args.critical_clients,
                                  os.path.join(args.out, "crit_flood")),
                      args.flood, os.path.join(args.out, "pgbench_flood.log"))
    t2 = time.time()
    stuck = stop_clients(clients, stop)
    events += [("flood", t_flood, time.time()), ("critical_under_flood", t1, t2)]
    if rc2 != 0:
        print("pgbench (critical under flood) exited with %d" % rc2, file=sys.stderr)
    if stuck:
        print("best-effort clients still running after the stop: %s" % ", ".join(stuck), file=sys.stderr)
    account.write(os.path.join(args.out, "cpu.csv"))
    write_csv(os.path.join(args.out, "phases.csv"), events[0], events[1:])
    write_csv(os.path.join(args.out, "best_effort.csv"),
              ATTEMPT_COLUMNS, attempts.rows)
    return 0 if rc == 0 and rc2 == 0 else 1


class Worker(threading.Thread):
    """A queue worker: takes the oldest job with FOR UPDATE SKIP LOCKED,
    works on it for work_ms holding the row lock, deletes it, commits."""

    DEQUEUE = ("SELECT id, extract(epoch FROM clock_timestamp() - created_at) * 1000 "
               "FROM jobs ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED /*app='jobs'*/")
    DONE = "DELETE FROM jobs WHERE id = %s /*app='jobs'*/"

    def __init__(self, name, dsn, stop, work_ms, rows):
        super().__init__(name=name, daemon=True)
        self.dsn, self.stop, self.work_ms, self.rows = dsn, stop, work_ms, rows
        self.errors = 0

    def run(self):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, application_name="efficacy-" + self.name)
                t0 = time.time()
                row = conn.execute(self.DEQUEUE).fetchone()
                t1 = time.time()
                if row is None:
                    conn.commit()
                    self.stop.wait(0.005)
                    continue
                self.stop.wait(self.work_ms / 1000.0)
                conn.execute(self.DONE, (row[0],))
                conn.commit()
                self.rows.append((self.name, t0, (t1 - t0) * 1000.0, float(row[1]), time.time()))
            except psycopg.Error:
                self.errors += 1
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg.Error:
                        pass
                conn = None
                self.stop.wait(0.2)
        if conn is not None:
            conn.close()


SAMPLE = """
SELECT (SELECT count(*) FROM jobs),
       (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM jobs_id_seq),
       n_dead_tup, n_live_tup, autovacuum_count,
       (SELECT coalesce(max(age(backend_xmin)), 0) FROM pg_stat_activity),
       (SELECT count(*) FROM pg_stat_activity
         WHERE usename = 'analytics' AND state = 'active' AND backend_type = 'client backend')
  FROM pg_stat_user_tables WHERE relname = 'jobs'
"""


def queue(args):
    os.makedirs(args.out, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    stop = threading.Event()
    worker_rows = []
    workers = [Worker("w%d" % i, args.critical_dsn, stop, args.work_ms, worker_rows)
               for i in range(args.workers)]
    attempts = Attempts()
    # Overlapping: each analytics client starts a stagger later than the last.
    analytics = [LoopClient("an%d" % i, args.analytics_dsn, args.analytics_query, stop, attempts,
                            args.retry_ms, start_delay=i * args.analytics_stagger)
                 for i in range(args.analytics_connections)]
    samples = []
    sampler_conn = psycopg.connect(args.critical_dsn, autocommit=True, application_name="efficacy-sampler")
    account = CpuAccount(args.account_pids)
    account.start()

    t_start = time.time()
    for t in workers:
        t.start()
    producer_log = os.path.join(args.out, "producer.log")
    log = open(producer_log, "w")
    producer = subprocess.Popen(pgbench_cmd(args, os.path.join(here, "producer.sql"), args.duration,
                                            args.producer_rate, 2),
                                stdout=log, stderr=subprocess.STDOUT)
    for t in analytics:
        t.start()
    next_sample = t_start
    while time.time() < t_start + args.duration:
        now = time.time()
        try:
            r = sampler_conn.execute(SAMPLE).fetchone()
            samples.append((now,) + tuple(r))
        except psycopg.Error as e:
            print("sampler: %s" % str(e).splitlines()[0], file=sys.stderr)
        next_sample += args.sample_every
        time.sleep(max(0.0, next_sample - time.time()))
    t_end = time.time()
    stuck = stop_clients(analytics, stop) + stop_clients(workers, stop)
    try:
        producer.wait(timeout=30)
    except subprocess.TimeoutExpired:
        producer.kill()
        producer.wait()
    log.close()
    sampler_conn.close()
    account.write(os.path.join(args.out, "cpu.csv"))
    if stuck:
        print("queue clients still running after the stop: %s" % ", ".join(stuck), file=sys.stderr)

    write_csv(os.path.join(args.out, "phases.csv"), ("phase", "start", "end"), [("queue", t_start, t_end)])
    write_csv(os.path.join(args.out, "samples.csv"),
              ("t", "backlog", "produced", "n_dead_tup", "n_live_tup", "autovacuum_count",
               "max_xmin_age", "analytics_active"), samples)
    write_csv(os.path.join(args.out, "dequeues.csv"),
              ("worker", "start", "lock_ms", "job_age_ms", "done"), worker_rows)
    write_csv(os.path.join(args.out, "analytics.csv"),
              ATTEMPT_COLUMNS, attempts.rows)
    if sum(w.errors for w in workers):
        print("worker errors: %d" % sum(w.errors for w in workers), file=sys.stderr)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("degradation", "queue"))
    p.add_argument("--out", required=True, help="directory for this arm-run's raw files")
    p.add_argument("--host", required=True, help="the server's socket directory (critical traffic)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", default="postgres")
    p.add_argument("--dbname", default="postgres")
    p.add_argument("--analytics-dsn", required=True, help="how the analytics role connects")
    p.add_argument("--pgbench", default="pgbench")
    p.add_argument("--naccounts", type=int, default=1000000)
    p.add_argument("--retry-ms", type=int, default=200)
    p.add_argument("--account-pids", type=lambda v: [int(x) for x in v.split()], default=[],
                   help="postmaster (and PgBouncer) PIDs whose CPU is the benchmark's own")
    # degradation
    p.add_argument("--alone", type=int, default=10)
    p.add_argument("--flood", type=int, default=20)
    p.add_argument("--ramp", type=float, default=3.0)
    p.add_argument("--critical-rate", type=int, default=200)
    p.add_argument("--critical-clients", type=int, default=2)
    p.add_argument("--flood-connections", type=int, default=6)
    p.add_argument("--flood-query", default=FLOOD_QUERY)
    # queue
    p.add_argument("--duration", type=int, default=90)
    p.add_argument("--producer-rate", type=int, default=200)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--work-ms", type=float, default=10.0)
    p.add_argument("--analytics-connections", type=int, default=3)
    p.add_argument("--analytics-stagger", type=float, default=5.0)
    p.add_argument("--analytics-query", default=ANALYTICS_QUERY)
    p.add_argument("--sample-every", type=float, default=2.0)
    args = p.parse_args()
    args.critical_dsn = "host=%s port=%d user=%s dbname=%s" % (args.host, args.port, args.user, args.dbname)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
    return degradation(args) if args.mode == "degradation" else queue(args)


if __name__ == "__main__":
    sys.exit(main())
