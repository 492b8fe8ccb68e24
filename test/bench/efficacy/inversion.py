#!/usr/bin/python3
"""Priority inversion (issue 10, docs/efficacy.md "Priority inversion"): does
lowering best-effort backends' CPU priority (budget field cpu_priority) slow
critical *writes*, which wait for row locks, buffer content locks and WAL
locks that a low-priority backend may hold while the scheduler runs others?

One cluster (inversion.sh starts it); each arm is a traffic_control
configuration set with ALTER SYSTEM and a reload. Per arm-run:

  alone     critical writes (pgbench at a fixed rate, per-transaction log)
  loaded    the same, while best-effort writers (role analytics) update
            ranges of pgbench_accounts and bulk-insert into a scratch table,
            and, in scenario `contended`, normal-priority reporting queries
            (role reporting, in no budget) keep every CPU busy: what a
            low-priority lock holder competes with

A sampler records what the critical backends wait for (pg_stat_activity's
wait_event, every 20 ms). Arms are interleaved and their order rotates from
round to round; the summary shows medians and the spread over rounds.

Run with Debian's python3 (python3-psycopg).
"""

import argparse
import collections
import glob
import json
import os
import statistics
import sys
import threading
import time

import psycopg
from psycopg import sql

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadgen import Attempts, LoopClient, run_bounded, stop_clients, write_csv  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

RULES = [{"name": "analytics", "budget": "best-effort", "match": {"username": "analytics"}}]
ARMS = collections.OrderedDict([
    ("no-limits", None),
    ("tc-concurrent-2", {"name": "best-effort", "mode": "enforce", "max_concurrent": 2}),
    ("tc-concurrent-2-nice", {"name": "best-effort", "mode": "enforce", "max_concurrent": 2, "cpu_priority": 19}),
    ("tc-concurrent-2-idle", {"name": "best-effort", "mode": "enforce", "max_concurrent": 2, "cpu_priority": "idle"}),
])

# Best-effort writers: a range update (row locks on thousands of rows for the
# whole statement, exclusive buffer locks page by page, WAL) and a bulk insert
# (WAL insertion locks, relation extension lock). Both CPU-heavy enough that a
# low priority stretches them.
RANGE_UPDATE = ("UPDATE pgbench_accounts SET abalance = abalance + 0 "
                "WHERE aid BETWEEN %(lo)s AND %(lo)s + 10000 AND md5(aid::text) <> '' "
                "/*priority='bestEffort',app='batch'*/")
BULK_INSERT = ("INSERT INTO inversion_scratch SELECT g, md5(g::text) FROM generate_series(1, 20000) g "
               "/*priority='bestEffort',app='batch'*/")
# Normal-priority reporting in no budget: a CPU-heavy pass (as the efficacy
# flood), parallel plans off so each connection is one process.
REPORTING = ("SELECT count(*) FROM pgbench_accounts WHERE md5(aid::text) LIKE '%ab%' "
             "/*priority='normal',app='reporting'*/")


def range_update(naccounts, offset):
    """The next (query, parameters) of one range updater: its range moves
    through the table, so its row locks meet the critical transactions'
    random accounts."""
    state = {"lo": offset}

    def next_attempt():
        lo = state["lo"]
        state["lo"] = (lo + 10000) % max(1, naccounts - 10000)
        return RANGE_UPDATE, {"lo": lo}
    return next_attempt


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q / 100.0
    f = int(k)
    c = min(f + 1, len(values) - 1)
    return values[f] + (values[c] - values[f]) * (k - f)


def pgbench_latencies(prefix):
    out = []
    for path in glob.glob(prefix + ".*"):
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) >= 6 and p[2].isdigit():
                    out.append(int(p[2]) / 1000.0)
    return out


def configure(admin, budget):
    budgets = [budget] if budget else []
    rules = RULES if budget else []
    admin.execute("ALTER SYSTEM SET traffic_control.budgets = %s" % sql.quote(json.dumps(budgets)))
    admin.execute("ALTER SYSTEM SET traffic_control.rules = %s" % sql.quote(json.dumps(rules)))
    admin.execute("SELECT pg_reload_conf()")
    time.sleep(1.0)


class WaitSampler(threading.Thread):
    """Counts the wait events of the critical pgbench backends."""

    def __init__(self, dsn):
        super().__init__(daemon=True)
        self.dsn, self.stop = dsn, threading.Event()
        self.counts = collections.Counter()
        self.samples = 0

    def run(self):
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.wait(0.02):
                rows = conn.execute("SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') "
                                    "FROM pg_stat_activity WHERE application_name = 'pgbench' "
                                    "AND state = 'active'").fetchall()
                self.samples += 1
                for (w,) in rows:
                    self.counts[w] += 1


def arm_run(args, admin, scenario, arm, round_no):
    out = os.path.join(args.out, scenario, arm, "r%d" % round_no)
    os.makedirs(out, exist_ok=True)
    admin.execute("TRUNCATE inversion_scratch")
    admin.execute("CHECKPOINT")
    script = os.path.join(HERE, "critical_write.sql")

    def pgbench(seconds, prefix):
        cmd = [args.pgbench, "-n", "-M", "prepared", "-c", "2", "-j", "2", "-R", str(args.rate),
               "-T", str(seconds), "-f", script, "-D", "naccounts=%d" % args.naccounts,
               "-l", "--log-prefix=" + os.path.join(out, prefix),
               "-h", args.host, "-p", str(args.port), "-U", "postgres", "postgres"]
        return run_bounded(cmd, seconds, os.path.join(out, prefix + ".out"))

    pgbench(args.alone, "alone")
    stop = threading.Event()
    attempts = Attempts()
    be_dsn = "host=%s port=%s user=analytics dbname=postgres" % (args.host, args.port)
    rep_dsn = "host=%s port=%s user=reporting dbname=postgres" % (args.host, args.port)
    clients = []
    for i in range(args.updaters):
        offset = i * args.naccounts // max(1, args.updaters)
        clients.append(LoopClient("upd%d" % i, be_dsn, range_update(args.naccounts, offset), stop, attempts, 200))
    for i in range(args.inserters):
        clients.append(LoopClient("ins%d" % i, be_dsn, BULK_INSERT, stop, attempts, 200))
    reporting = Attempts()
    if scenario == "contended":
        for i in range(args.reporting):
            clients.append(LoopClient("rep%d" % i, rep_dsn, REPORTING, stop, reporting, 200))
    for c in clients:
        c.start()
    time.sleep(2)
    sampler = WaitSampler("host=%s port=%s user=postgres dbname=postgres" % (args.host, args.port))
    sampler.start()
    t1 = time.time()
    pgbench(args.loaded, "loaded")
    t2 = time.time()
    sampler.stop.set()
    sampler.join(5)
    stuck = stop_clients(clients, stop)
    if stuck:
        print("  still running after the stop: %s" % ", ".join(stuck), file=sys.stderr)
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE usename IN ('analytics', 'reporting')")
    write_csv(os.path.join(out, "best_effort.csv"), ("client", "start", "end", "outcome", "sqlstate", "message",
                                                      "detail"), attempts.rows)
    done = sum(1 for r in attempts.rows if r[3] == "completed" and t1 <= r[2] <= t2)
    refused = sum(1 for r in attempts.rows if r[3] == "refused" and t1 <= r[2] <= t2)
    rep_done = sum(1 for r in reporting.rows if r[3] == "completed" and t1 <= r[2] <= t2)
    alone = pgbench_latencies(os.path.join(out, "alone"))
    loaded = pgbench_latencies(os.path.join(out, "loaded"))
    lock_waits = {k: v for k, v in sampler.counts.items() if k != "CPU"}
    row = {
        "scenario": scenario, "arm": arm, "round": round_no,
        "alone_p50": percentile(alone, 50), "alone_p99": percentile(alone, 99),
        "loaded_p50": percentile(loaded, 50), "loaded_p99": percentile(loaded, 99),
        "loaded_max": max(loaded) if loaded else float("nan"), "loaded_n": len(loaded),
        "be_done": done, "be_refused": refused, "reporting_done": rep_done,
        "wait_samples": sampler.samples, "waits": dict(sorted(lock_waits.items(), key=lambda kv: -kv[1])[:6]),
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(row, f)
    print("  %-9s %-22s r%d  alone p99 %6.1f ms  loaded p50 %6.1f p99 %7.1f max %7.1f ms  "
          "best-effort done %3d refused %3d  reporting %3d  waits %s"
          % (scenario, arm, round_no, row["alone_p99"], row["loaded_p50"], row["loaded_p99"], row["loaded_max"],
             done, refused, rep_done, row["waits"]), flush=True)
    return row


ARM_TEXT = {
    "no-limits": "no budget: the writers run at will",
    "tc-concurrent-2": "best-effort `max_concurrent: 2`, normal priority",
    "tc-concurrent-2-nice": "the same with `cpu_priority: 19`",
    "tc-concurrent-2-idle": "the same with `cpu_priority: \"idle\"` (`SCHED_IDLE`)",
}


def table(rows):
    lines = ["| scenario | arm | critical p99 alone | critical p50 loaded | critical p99 loaded (range) "
             "| loaded / alone p99 | best-effort statements done | reporting done | what critical waited for "
             "(samples) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for scenario in sorted({r["scenario"] for r in rows}, reverse=True):
        for arm in ARMS:
            rs = [r for r in rows if r["scenario"] == scenario and r["arm"] == arm]
            if not rs:
                continue
            med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
            p99s = [r["loaded_p99"] for r in rs]
            waits = collections.Counter()
            for r in rs:
                waits.update(r["waits"])
            top = ", ".join("%s %d" % kv for kv in waits.most_common(3)) or "none"
            lines.append("| %s | %s | %.1f ms | %.1f ms | %.1f ms (%.1f–%.1f) | %.1f× | %d | %s | %s |" % (
                scenario, arm, med("alone_p99"), med("loaded_p50"), med("loaded_p99"), min(p99s), max(p99s),
                med("loaded_p99") / med("alone_p99"), med("be_done"),
                "%d" % med("reporting_done") if scenario == "contended" else "–", top))
    return "\n".join(lines) + "\n"


def observations(rows):
    """One sentence per scenario: the priority arms against the same budget at
    normal priority (the inversion, if any, shows there)."""
    out = []
    for scenario in sorted({r["scenario"] for r in rows}, reverse=True):
        def p99(arm):
            rs = [r["loaded_p99"] for r in rows if r["scenario"] == scenario and r["arm"] == arm]
            return statistics.median(rs) if rs else float("nan")
        base = p99("tc-concurrent-2")
        parts = []
        for arm in ("tc-concurrent-2-nice", "tc-concurrent-2-idle"):
            v = p99(arm)
            if v == v and base == base:
                parts.append("%s %.1f ms (%s)" % (arm, v, "%.2f× the same budget at normal priority" % (v / base)))
        # Slower only when even the priority arm's best round is worse than
        # the normal-priority arm's worst: on this VM single rounds move a lot.
        def p99s(arm):
            return [r["loaded_p99"] for r in rows if r["scenario"] == scenario and r["arm"] == arm]
        worse = [a for a in ("tc-concurrent-2-nice", "tc-concurrent-2-idle")
                 if p99s(a) and p99s("tc-concurrent-2") and min(p99s(a)) > max(p99s("tc-concurrent-2"))]
        verdict = ("**lowered priority made critical writes slower** in every round: " + ", ".join(worse)) \
            if worse else ("no inversion that shows above the noise: the rounds' ranges of the priority arms "
                           "overlap the normal-priority arm's")
        out.append("- `%s`: critical p99 under load with normal priority %.1f ms; %s. %s." % (
            scenario, base, "; ".join(parts), verdict[0].upper() + verdict[1:]))
    return "\n".join(out) + "\n"


def read_env(directory):
    env = {}
    path = os.path.join(directory, "run.env")
    if os.path.exists(path):
        for line in open(path):
            k, _, v = line.rstrip("\n").partition("=")
            env[k] = v
    return env


def document(rows, env, meta):
    rounds = max(r["round"] for r in rows)
    return """# Priority inversion: does `cpu_priority` slow critical writes?

<!-- Written by test/bench/efficacy/inversion.py from a run of test/bench/efficacy/inversion.sh;
     do not edit by hand: rerun the benchmark. -->

A backend running at a lowered CPU priority (budget field `cpu_priority`) can hold
what a critical transaction waits for: the row locks of rows it updates, an
exclusive buffer content lock while it changes a page, a WAL insertion lock while
it copies a record in, the WAL write lock while it writes WAL out. If the
scheduler then prefers others, the critical transaction waits on a process that
does not get the CPU: a priority inversion. This test measures it with critical
*writes*, the traffic that can wait on such locks (the main efficacy test's
critical traffic only reads).

## How it was run

- One cluster (pgbench scale 10, `fsync = %(fsync)s`, started with `CAP_SYS_NICE`);
  each arm is a `traffic_control.budgets`/`rules` pair set with `ALTER SYSTEM` and a
  reload. %(rounds)d round(s), the arms' order rotating; medians over rounds, the range
  of the rounds in parentheses.
- Critical: pgbench `-R %(rate)s -c 2 -M prepared -l`, pgbench's TPC-B-like write on one
  random account (`UPDATE pgbench_accounts`, `INSERT INTO pgbench_history`) tagged
  critical, as the superuser; latency from the scheduled start. Alone for %(alone)s s,
  then under load for %(loaded)s s.
- Best-effort writers, role `analytics`, matched by the budget: %(updaters)s connections
  each looping an `UPDATE` of a 10,001-row range of `pgbench_accounts` (the range
  moves through the table, so its row locks meet the critical accounts) and
  %(inserters)s connections each looping a 20,000-row `INSERT ... SELECT` (WAL).
  SQLSTATE 53000 is retried after the HINT's delay.
- Scenario `writers`: nothing else runs. Scenario `contended`: also %(reporting)s
  connections of role `reporting`, in no budget, at normal priority, loop a CPU-heavy
  `count(*)` (parallel plans off): every CPU is busy, so a low-priority lock holder
  gets little CPU, which is when an inversion would show.
- A sampler reads the critical backends' `wait_event` every 20 ms; the last column
  counts what they waited for (`Lock:transactionid`: a row lock of a best-effort
  update; `LWLock:WAL*`: WAL locks; `IO:*`: I/O).
- Machine: %(cpus)s CPUs; commit %(commit)s; started %(started)s.

## Results

%(table)s
## Observations

%(observations)s
Reproduce: `test/bench/efficacy/inversion.sh` (about 11 minutes; `--quick` for one
short round, `--fsync on` for durable commits). The VM is noisy: read the ranges,
not one round.
""" % dict(fsync=env.get("fsync", "off"), rounds=rounds, rate=meta["rate"], alone=meta["alone"],
           loaded=meta["loaded"], updaters=meta["updaters"], inserters=meta["inserters"],
           reporting=meta["reporting"], cpus=env.get("cpus", "?"), commit=env.get("commit", "?"),
           started=env.get("started", "?"), table=table(rows), observations=observations(rows))


def report(directory, docs=None):
    with open(os.path.join(directory, "results.json")) as f:
        rows = json.load(f)
    with open(os.path.join(directory, "meta.json")) as f:
        meta = json.load(f)
    text = document(rows, read_env(directory), meta)
    with open(os.path.join(directory, "summary.md"), "w") as f:
        f.write(text)
    print(table(rows))
    print(observations(rows))
    if docs:
        with open(docs, "w") as f:
            f.write(text)
        print("wrote %s" % docs)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        rp = argparse.ArgumentParser(prog="inversion.py report")
        rp.add_argument("directory")
        rp.add_argument("--docs", help="also write this Markdown file (docs/efficacy-inversion.md)")
        a = rp.parse_args(sys.argv[2:])
        report(a.directory, a.docs)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", required=True)
    ap.add_argument("--pgbench", required=True)
    ap.add_argument("--naccounts", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--alone", type=int, default=5)
    ap.add_argument("--loaded", type=int, default=15)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--updaters", type=int, default=3)
    ap.add_argument("--inserters", type=int, default=2)
    ap.add_argument("--reporting", type=int, default=2)
    ap.add_argument("--scenarios", default="writers,contended")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--docs", help="also write this Markdown file (docs/efficacy-inversion.md)")
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error("unknown arms: %s" % ", ".join(unknown))
    rows = []
    with psycopg.connect("host=%s port=%s user=postgres dbname=postgres" % (args.host, args.port),
                         autocommit=True) as admin:
        for round_no in range(1, args.rounds + 1):
            order = arms[(round_no - 1) % len(arms):] + arms[:(round_no - 1) % len(arms)]
            for scenario in args.scenarios.split(","):
                for arm in order:
                    configure(admin, ARMS[arm])
                    rows.append(arm_run(args, admin, scenario, arm, round_no))
        configure(admin, None)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump({k: getattr(args, k) for k in ("rate", "alone", "loaded", "updaters", "inserters", "reporting",
                                                   "rounds")}, f)
    report(args.out, args.docs)


if __name__ == "__main__":
    main()
