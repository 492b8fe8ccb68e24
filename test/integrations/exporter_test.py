#!/usr/bin/python3
"""Checks integrations/prometheus/traffic_control_queries.yaml with the real
postgres_exporter, and the Grafana dashboard's metric names against its
scrape. Run by exporter_test.sh, which starts the cluster (PGHOST, PGPORT;
budgets in its exporter.conf) and stops everything afterwards.

Standard library only (Debian's /usr/bin/python3); the server is reached with
psql. Prints TAP-style "ok N - ..." / "not ok N - ..." lines and
"exporter: N passed, M failed"; exits 1 when a check failed.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from checks import check, free_port, summary, wait_for

MONITOR_ROLE = "tc_monitor"
NO_STATS_ROLE = "tc_no_stats"  # a login role without pg_read_all_stats
# The budget metrics; every one is exported for every budget instance.
BUDGET_METRICS = [
    "traffic_control_budget_active",
    "traffic_control_budget_debt_seconds",
    "traffic_control_budget_admitted_total",
    "traffic_control_budget_warned_total",
    "traffic_control_budget_queued_total",
    "traffic_control_budget_canceled_total",
    "traffic_control_budget_cpu_seconds_total",
    "traffic_control_budget_shed",
    "traffic_control_budget_shed_until_timestamp_seconds",
    "traffic_control_budget_last_blocked_timestamp_seconds",
    "traffic_control_budget_utilization_pct",  # every budget here has max_concurrent
]
LIMIT = "traffic_control_budget_limit_value"
BLOCKED = "traffic_control_budget_blocked_total"
RULE_MATCHED = "traffic_control_rule_matched_total"
RULE_PROBLEM = "traffic_control_rule_problem"
ALL_METRICS = BUDGET_METRICS + [BLOCKED, LIMIT, RULE_MATCHED, RULE_PROBLEM]
REASONS = ["max_concurrent", "per_query_limit", "server_share", "shed", "quarantined"]
# (budget, each_value) -> mode: every instance the statements below create.
INSTANCES = {
    ("tenants", "acme"): "enforce",
    ("tenants", "globex"): "enforce",
    ("shed_all", ""): "enforce",
    ("watch", ""): "warn",
    ("lever", ""): "enforce",
    ("busy", ""): "enforce",
}
# Statements run per budget (the checks compare the scrape with these).
ACME, GLOBEX, REFUSED, WARNED, LEVER_BEFORE, LEVER_SHED = 3, 2, 4, 2, 2, 3

class Psql:
    def __init__(self, path):
        self.path = path

    def run(self, sql, user="postgres", timeout=30):
        """One psql session; returns (returncode, stdout, stderr)."""
        p = subprocess.run(
            [self.path, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", "postgres", "-c", sql],
            capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout.strip(), p.stderr.strip()

    def value(self, sql, user="postgres"):
        rc, out, err = self.run(sql, user)
        if rc != 0:
            raise RuntimeError("psql failed: %s: %s" % (sql, err))
        return out


def parse_exposition(text):
    """Prometheus text format -> ({name: [(labels, value)]}, {name: help}, {name: type})."""
    samples, helps, types = {}, {}, {}
    sample_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$')
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, text_ = line[7:].partition(" ")
            helps[name] = text_
        elif line.startswith("# TYPE "):
            name, _, type_ = line[7:].partition(" ")
            types[name] = type_
        elif line and not line.startswith("#"):
            m = sample_re.match(line)
            if not m:
                continue
            labels = dict(label_re.findall(m.group(2) or ""))
            samples.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return samples, helps, types


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def series(samples, name, **labels):
    """Values of the series of metric name whose labels include labels."""
    return [v for l, v in samples.get(name, []) if all(l.get(k) == w for k, w in labels.items())]


def check_value(samples, name, expected, description=None, tolerance=0.0, **labels):
    values = series(samples, name, **labels)
    sel = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    description = description or "%s{%s} == %g" % (name, sel, expected)
    if len(values) != 1:
        return check(False, description, "%d series match" % len(values))
    return check(abs(values[0] - expected) <= tolerance, description, "got %r" % values[0])


# ---- the dashboard -------------------------------------------------------
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "and", "or", "unless", "offset", "inf", "nan"}


def promql_metric_names(expr):
    """Metric names in a PromQL expression (or a Grafana label_values() query)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    e = re.sub(r"\$\{?\w+(?::\w+)?\}?", "", e)             # Grafana variables
    e = re.sub(r"\{[^}]*\}", "", e)                        # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                       # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue                                       # a function or keyword
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue                                       # 5m, 1e3
        names.add(word)
    return names


def dashboard_queries(dashboard):
    """(where, expression) for every panel target and query variable."""
    out = []

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            if "expr" in t:
                out.append(("panel %r" % p.get("title"), t["expr"]))
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.match(r"\s*label_values\((.*),\s*\w+\s*\)\s*$", q or "")
            out.append(("variable %r" % v.get("name"), m.group(1) if m else q or ""))
    return out


def check_dashboard(path, scraped_names):
    try:
        with open(path) as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        check(False, "the dashboard is valid JSON", str(e))
        return
    check(True, "the dashboard is valid JSON")
    variables = dashboard.get("templating", {}).get("list", [])
    ds_vars = [v["name"] for v in variables if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    check(len(ds_vars) == 1, "the dashboard has a Prometheus datasource variable", repr(ds_vars))
    def all_panels(items):
        for p in items:
            yield p
            yield from all_panels(p.get("panels", []))
    bad = []
    for p in all_panels(dashboard.get("panels", [])):
        if p.get("type") == "row":
            continue
        for thing in [p] + p.get("targets", []):
            uid = (thing.get("datasource") or {}).get("uid")
            if not ds_vars or uid != "${%s}" % ds_vars[0]:
                bad.append(p.get("title"))
    check(not bad, "every panel and target uses the datasource variable", repr(sorted(set(bad))))
    queries = dashboard_queries(dashboard)
    used = set()
    empty = []
    for where, expr in queries:
        names = promql_metric_names(expr)
        if not names:
            empty.append(where)
        used |= names
    check(queries and not empty, "every dashboard query names a metric (%d queries)" % len(queries),
          "none in: %s" % empty)
    missing = sorted(used - scraped_names)
    check(not missing, "every metric the dashboard uses is in the scrape (%s)" % ", ".join(sorted(used)),
          "missing: %s" % missing)
    for needed in ["traffic_control_budget_active", BLOCKED, "traffic_control_budget_admitted_total",
                   "traffic_control_budget_queued_total", "traffic_control_budget_debt_seconds",
                   "traffic_control_budget_shed"]:
        check(needed in used, "the dashboard graphs %s" % needed)


def check_alerts(path, scraped_names):
    """The example alert rules: every expr names only scraped metrics."""
    with open(path) as f:
        exprs = re.findall(r"^\s*expr:\s*(.+)$", f.read(), re.M)
    used = set()
    for expr in exprs:
        used |= promql_metric_names(expr)
    missing = sorted(used - scraped_names)
    check(exprs and not missing, "every metric the %d example alerts use is in the scrape" % len(exprs),
          "missing: %s" % missing)


# ---- the run -------------------------------------------------------------
def refuse(psql, sql, times, error, description):
    """Runs sql times, each in its own session; each must fail with error."""
    refused = 0
    for _ in range(times):
        rc, _, err = psql.run(sql)
        refused += rc != 0 and error in err
    check(refused == times, description, "%d refused" % refused)


def run_statements(psql):
    """The statements whose counts the scrape must show; returns facts for the checks."""
    facts = {"t0": time.time()}
    rc, _, err = psql.run(
        "CREATE EXTENSION traffic_control;"
        "CREATE ROLE %s LOGIN;"
        "GRANT pg_read_all_stats TO %s;"
        "CREATE ROLE %s LOGIN;" % (MONITOR_ROLE, MONITOR_ROLE, NO_STATS_ROLE))
    if not check(rc == 0, "CREATE EXTENSION and the monitoring role", err):
        raise SystemExit(1)
    row = psql.value("SELECT rolsuper, pg_has_role('%s', 'pg_read_all_stats', 'MEMBER') "
                     "FROM pg_roles WHERE rolname = '%s'" % (MONITOR_ROLE, MONITOR_ROLE))
    check(row == "f|t", "the monitoring role is in pg_read_all_stats and is not a superuser", row)

    admitted = ["SELECT 1 /*app='web',tenant='acme'*/;"] * ACME + \
               ["SELECT 1 /*app='web',tenant='globex'*/;"] * GLOBEX + \
               ["SELECT 1 /*app='report'*/;"] * WARNED + \
               ["SELECT 1 /*app='lever'*/;"] * LEVER_BEFORE
    rc, _, err = psql.run("".join(admitted))
    check(rc == 0, "admitted statements run (tenants, watch, lever)", err)

    refuse(psql, "SELECT 1 /*app='batch'*/", REFUSED, 'blocked by budget "shed_all": max_concurrent',
           "%d statements refused by shed_all (max_concurrent 0)" % REFUSED)

    facts["shed_until"] = float(psql.value(
        "SELECT EXTRACT(EPOCH FROM traffic_control.shed('lever', '1 hour'))"))
    refuse(psql, "SELECT 1 /*app='lever'*/", LEVER_SHED, 'blocked by budget "lever": shed',
           "%d statements refused by the shed budget lever" % LEVER_SHED)
    return facts


def start_sleeper(psql, workdir):
    """A statement holding busy's only slot (active 1) for up to 60 s."""
    sleeper = subprocess.Popen(
        [psql.path, "-X", "-At", "-U", "postgres", "-d", "postgres",
         "-c", "SELECT pg_sleep(60) /*app='busy'*/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    with open(os.path.join(workdir, "sleeper.pid"), "w") as f:
        f.write(str(sleeper.pid))
    active = wait_for(lambda: psql.value(
        "SELECT active FROM traffic_control.budget_status WHERE budget = 'busy'") == "1", 15)
    check(active, "a sleeping statement holds busy's slot")
    # It waits queue_timeout_ms (300 ms) for the slot, then is refused.
    rc, _, err = psql.run("SELECT 1 /*app='busy'*/")
    check(rc != 0 and 'blocked by budget "busy": max_concurrent' in err,
          "a second busy statement queues and is refused", err)
    return sleeper


def stop_sleeper(psql, sleeper, workdir):
    psql.run("SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
             "WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()")
    try:
        sleeper.wait(timeout=15)
    except subprocess.TimeoutExpired:
        sleeper.kill()
        sleeper.wait(timeout=5)
    os.unlink(os.path.join(workdir, "sleeper.pid"))


def exporter_flags(help_text):
    """The options that keep the scrape to our queries, as far as this version has them."""
    flags = []
    for flag in ["--disable-default-metrics", "--disable-settings-metrics"]:
        if flag in help_text:
            flags.append(flag)
    # The collectors, on by default: 0.11 has database and bgwriter
    # (--collector.NAME in its --help), later versions more (--[no-]collector.NAME).
    for name in re.findall(r"--(?:\[no-\])?collector\.([a-z_]+)\s", help_text):
        flags.append("--no-collector." + name)
    return flags


def start_exporter(args, port, role=MONITOR_ROLE, name="exporter"):
    exe = "prometheus-postgres-exporter"
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30)
    help_text = help_text.stdout + help_text.stderr
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    version = (version.stdout + version.stderr).strip().splitlines()
    if role == MONITOR_ROLE:
        print("# %s" % (version[0] if version else "postgres_exporter, unknown version"))
    query_flag = "--extend.query-path"
    if query_flag not in help_text:  # removed by some later version
        check(False, "the exporter has %s" % query_flag)
        raise SystemExit(1)
    command = [exe, "--web.listen-address=127.0.0.1:%d" % port, "%s=%s" % (query_flag, args.queries)]
    command += exporter_flags(help_text)
    print("# %s: %s" % (role, " ".join(command)))
    env = dict(os.environ)
    # The cluster's Unix socket directory, as the monitoring role.
    env["DATA_SOURCE_NAME"] = "host=%s port=%s user=%s dbname=postgres sslmode=disable" % (
        os.environ["PGHOST"], os.environ["PGPORT"], role)
    log = open(os.path.join(args.workdir, name + ".log"), "w")
    exporter = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    with open(os.path.join(args.workdir, name + ".pid"), "w") as f:
        f.write(str(exporter.pid))
    return exporter


def stop_exporter(exporter, workdir, name="exporter"):
    exporter.terminate()
    try:
        exporter.wait(timeout=10)
    except subprocess.TimeoutExpired:
        exporter.kill()
        exporter.wait(timeout=5)
    os.unlink(os.path.join(workdir, name + ".pid"))


def check_role_needs_stats(args):
    """The same exporter as a role outside pg_read_all_stats scrapes nothing of ours."""
    port = free_port()
    exporter = start_exporter(args, port, NO_STATS_ROLE, "exporter_no_stats")
    try:
        text = scrape_when_up("http://127.0.0.1:%d/metrics" % port, exporter)
    finally:
        stop_exporter(exporter, args.workdir, "exporter_no_stats")
    samples = parse_exposition(text or "")[0]
    ours = [n for n in samples if n.startswith("traffic_control_")]
    check(text is not None and series(samples, "pg_exporter_last_scrape_error") == [1.0] and not ours,
          "as a role outside pg_read_all_stats: no traffic_control metrics, pg_exporter_last_scrape_error 1",
          "scraped: %s, ours: %s" % (text is not None, ours))


def scrape_when_up(url, exporter):
    """The first scrape in which the exporter reached the server (pg_up 1), or None."""
    def attempt():
        if exporter.poll() is not None:
            return "exited"
        try:
            text = scrape(url)
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            return None
        return text if re.search(r"^pg_up 1$", text, re.M) else None
    text = wait_for(attempt, 30, 0.25)
    return text if text and text != "exited" else None


def check_scrape(samples, helps, types, facts, scrape_time):
    # The exporter itself.
    check_value(samples, "pg_up", 1)
    check_value(samples, "pg_exporter_last_scrape_error", 0)
    loaded = series(samples, "pg_exporter_user_queries_load_error")
    check(loaded == [0.0], "the query file loads (pg_exporter_user_queries_load_error 0)", repr(loaded))
    noise = sorted(n for n in samples if not re.match(
        r"(traffic_control_|pg_up$|pg_exporter_|postgres_exporter_build_info$|go_|process_|promhttp_)", n))
    check(not noise, "no default PostgreSQL metrics (they are disabled)", "%d: %s" % (len(noise), noise[:5]))

    # Every metric: HELP text, TYPE (counters end in _total), the labels.
    for name in ALL_METRICS:
        want_type = "counter" if name.endswith("_total") else "gauge"
        check(helps.get(name, "") != "" and types.get(name) == want_type,
              "%s has HELP and TYPE %s" % (name, want_type), "type %r" % types.get(name))
    for name in BUDGET_METRICS + [BLOCKED, LIMIT]:
        want = {"budget", "each_value", "mode", "server"} | ({"reason"} if name == BLOCKED else set()) \
            | ({"limit"} if name == LIMIT else set())
        got = {(l["budget"], l.get("each_value"), l.get("mode")) for l, _ in samples.get(name, [])}
        labelsets = {frozenset(l) for l, _ in samples.get(name, [])}
        check(got == {(b, e, m) for (b, e), m in INSTANCES.items()} and labelsets == {frozenset(want)},
              "%s: one series per budget instance, labels %s" % (name, ",".join(sorted(want))),
              "got %s, label sets %s" % (sorted(got), [sorted(s) for s in labelsets]))
    reasons = {}
    for l, _ in samples.get(BLOCKED, []):
        reasons.setdefault((l["budget"], l["each_value"]), set()).add(l.get("reason"))
    check(all(r == set(REASONS) for r in reasons.values()) and reasons,
          "%s: reason is %s for every instance" % (BLOCKED, "/".join(REASONS)), repr(reasons))

    # Values: what run_statements() and start_sleeper() did.
    admitted = {("tenants", "acme"): ACME, ("tenants", "globex"): GLOBEX, ("shed_all", ""): 0,
                ("watch", ""): WARNED, ("lever", ""): LEVER_BEFORE, ("busy", ""): 1}
    for (b, e), n in admitted.items():
        check_value(samples, "traffic_control_budget_admitted_total", n, budget=b, each_value=e)
    for (b, e) in INSTANCES:
        check_value(samples, "traffic_control_budget_warned_total", WARNED if b == "watch" else 0,
                    budget=b, each_value=e)
        check_value(samples, "traffic_control_budget_queued_total", 1 if b == "busy" else 0,
                    budget=b, each_value=e)
        check_value(samples, "traffic_control_budget_canceled_total", 0, budget=b, each_value=e)
        check_value(samples, "traffic_control_budget_active", 1 if b == "busy" else 0,
                    budget=b, each_value=e)
        check_value(samples, "traffic_control_budget_debt_seconds", 0, budget=b, each_value=e)
        check_value(samples, "traffic_control_budget_shed", 1 if b == "lever" else 0,
                    budget=b, each_value=e)
    # CPU: nothing ran in shed_all; the others ran cheap statements (a few ms at most).
    check_value(samples, "traffic_control_budget_cpu_seconds_total", 0, budget="shed_all", each_value="")
    cpu = [v for _, v in samples.get("traffic_control_budget_cpu_seconds_total", [])]
    check(cpu and all(0 <= v < 5 for v in cpu),
          "traffic_control_budget_cpu_seconds_total: every instance between 0 and 5 CPU-s", repr(cpu))
    # Utilization: busy's only slot is held; a limit of 0 counts as full.
    limits = {"tenants": 5, "shed_all": 0, "watch": 0, "lever": 10, "busy": 1}
    for (b, e) in INSTANCES:
        check_value(samples, "traffic_control_budget_utilization_pct",
                    100 if b in ("busy", "shed_all", "watch") else 0, budget=b, each_value=e)
        check_value(samples, LIMIT, limits[b], budget=b, each_value=e, limit="max_concurrent")
    check(all(l.get("limit") == "max_concurrent" for l, _ in samples.get(LIMIT, [])),
          "%s: only the limits the budgets set (max_concurrent here)" % LIMIT)
    blocked = {("shed_all", "max_concurrent"): REFUSED, ("lever", "shed"): LEVER_SHED,
               ("busy", "max_concurrent"): 1}
    for (b, e) in INSTANCES:
        for reason in REASONS:
            check_value(samples, BLOCKED, blocked.get((b, reason), 0), budget=b, each_value=e, reason=reason)
    check_value(samples, "traffic_control_budget_shed_until_timestamp_seconds", facts["shed_until"],
                "shed_until_timestamp_seconds{budget=\"lever\"} is the end shed() returned (%.3f)"
                % facts["shed_until"], tolerance=0.01, budget="lever")
    check(all(v == 0 for l, v in samples.get("traffic_control_budget_shed_until_timestamp_seconds", [])
              if l["budget"] != "lever"), "shed_until_timestamp_seconds is 0 for the budgets not shed")
    name = "traffic_control_budget_last_blocked_timestamp_seconds"
    for (b, e) in INSTANCES:
        values = series(samples, name, budget=b, each_value=e)
        if b in ("shed_all", "lever", "busy"):
            check(len(values) == 1 and facts["t0"] - 1 <= values[0] <= scrape_time + 1,
                  "%s{budget=\"%s\"} is the time of its last refusal" % (name, b), repr(values))
        else:
            check(values == [0.0], "%s{budget=\"%s\",each_value=\"%s\"} == 0 (never refused)" % (name, b, e),
                  repr(values))

    # Rules (busy's is checked after the sleeping statement ends: a backend
    # adds its rule counts to the shared counters when it exits).
    matched = {"per_tenant": ACME + GLOBEX, "refuse_batch": REFUSED, "watch_reports": WARNED,
               "lever": LEVER_BEFORE + LEVER_SHED}
    for rule, n in matched.items():
        check_value(samples, RULE_MATCHED, n, rule=rule)
    check(series(samples, RULE_MATCHED, rule="broken") in ([], [0.0]),
          "the skipped rule counts nothing")
    check_value(samples, RULE_PROBLEM, 1, rule="broken", budget="no_such_budget")
    for rule in list(matched) + ["busy"]:
        check_value(samples, RULE_PROBLEM, 0, rule=rule)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--psql", required=True)
    parser.add_argument("--queries", required=True)
    parser.add_argument("--dashboard", required=True)
    parser.add_argument("--alerts", required=True)
    args = parser.parse_args()
    psql = Psql(args.psql)
    exporter = sleeper = None
    try:
        facts = run_statements(psql)
        sleeper = start_sleeper(psql, args.workdir)
        port = free_port()
        exporter = start_exporter(args, port)
        url = "http://127.0.0.1:%d/metrics" % port
        text = scrape_when_up(url, exporter)
        if not check(text is not None, "the exporter serves /metrics with pg_up 1 within 30 s"):
            return 1
        scrape_time = time.time()
        with open(os.path.join(args.workdir, "scrape1.txt"), "w") as f:
            f.write(text)
        samples, helps, types = parse_exposition(text)
        check_scrape(samples, helps, types, facts, scrape_time)
        connected = psql.value("SELECT count(*) FROM pg_stat_activity WHERE usename = '%s'" % MONITOR_ROLE)
        check(connected != "0", "the exporter is connected as %s" % MONITOR_ROLE, connected)

        # The sleeping statement ends: busy's slot is free, its session's
        # rule count reaches the shared counter.
        stop_sleeper(psql, sleeper, args.workdir)
        sleeper = None
        def busy_idle():
            s, _, _ = parse_exposition(scrape(url))
            return s if series(s, "traffic_control_budget_active", budget="busy") == [0.0] else None
        samples2 = wait_for(busy_idle, 15, 0.25)
        check(samples2 is not None, "active{budget=\"busy\"} drops to 0 when its statement ends")
        if samples2:
            check_value(samples2, RULE_MATCHED, 2, rule="busy")
            check_value(samples2, "traffic_control_budget_admitted_total", 1, budget="busy")

        check_dashboard(args.dashboard, set(samples))
        check_alerts(args.alerts, set(samples))
        check_role_needs_stats(args)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        check(False, "the test runs to its end", str(e))
    finally:
        if sleeper is not None:
            stop_sleeper(psql, sleeper, args.workdir)
        if exporter is not None:
            stop_exporter(exporter, args.workdir)
        status = summary("exporter")
    return status


if __name__ == "__main__":
    sys.exit(main())
