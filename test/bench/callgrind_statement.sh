#!/usr/bin/env bash
# What one pgbench statement costs the server, counted rather than timed
# (docs/benchmarks.md): instructions, L1 instruction-cache misses and L1 data
# misses per statement in the backend, under callgrind's cache simulation,
# for the same three arms as pgbench_compare.sh (A not loaded, B loaded with
# no rules, C 1,000 rules with every query matched). The counts do not drift
# with the machine's speed, so a change of a few hundred instructions per
# statement shows up in one run.
#
# Each arm's server runs under valgrind; one pgbench client runs N and then
# 2N `-M prepared` transactions of pgbench -S's lookup carrying the
# contract's two-tag comment (as pgbench_compare.sh) on two connections, and the difference of
# the two backends' counts divided by N is one statement (connection setup and
# the first statement's configuration load cancel out).
# Usage: test/bench/callgrind_statement.sh [N=2000]
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$TC_ROOT"
N="${1:-2000}"

tc_install_dependencies valgrind
tc_build_and_install

WORK="$(mktemp -d /tmp/tc_callgrind.XXXXXX)"
chmod 755 "$WORK"
cleanup() {
  for arm in A B C; do
    if [ -f "$WORK/$arm/data/postmaster.pid" ]; then
      tc_as_postgres "$PG_BINDIR/pg_ctl" -D "$WORK/$arm/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

python3 "$TC_ROOT/test/bench/thousand_rules.py" --cpu-priority 0 >"$WORK/rules.conf"
# pgbench -S's statement with a two-tag comment (as in pgbench_compare.sh).
cat >"$WORK/select.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid /*route='%2Fbench%2Flookup',app='bench'*/;
SQL
chmod 644 "$WORK/select.sql"

measure_arm() {
  local arm="$1" dir="$WORK/$1" port
  mkdir -p "$dir/out"
  chown -R postgres "$dir"
  tc_as_postgres "$PG_BINDIR/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
  port="$(tc_free_port)"
  {
    echo "port = $port"
    echo "listen_addresses = ''"
    echo "unix_socket_directories = '$dir'"
    echo "fsync = off"
    echo "autovacuum = off"
    case "$arm" in
      A) ;;
      B) echo "shared_preload_libraries = 'traffic_control'" ;;
      C) echo "shared_preload_libraries = 'traffic_control'"; cat "$WORK/rules.conf" ;;
    esac
  } >>"$dir/data/postgresql.conf"
  tc_as_postgres "$PG_BINDIR/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
  "$PG_BINDIR/pgbench" -h "$dir" -p "$port" -U postgres -i -q -s 1 postgres >/dev/null 2>&1
  tc_as_postgres "$PG_BINDIR/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null

  tc_as_postgres valgrind --tool=callgrind --cache-sim=yes \
    --callgrind-out-file="$dir/out/cg.%p" "$PG_BINDIR/postgres" -D "$dir/data" \
    >"$dir/valgrind.log" 2>&1 &
  local ready=0
  for _ in $(seq 1 240); do
    if "$PG_BINDIR/pg_isready" -q -h "$dir" -p "$port"; then ready=1; break; fi
    sleep 0.5
  done
  [ "$ready" = 1 ] || { echo "arm $arm: the server did not start under valgrind" >&2; exit 1; }
  for transactions in "$N" "$((2 * N))"; do
    "$PG_BINDIR/pgbench" -h "$dir" -p "$port" -U postgres -f "$WORK/select.sql" -M prepared -n -c 1 \
      -t "$transactions" postgres >/dev/null 2>&1
  done
  tc_as_postgres "$PG_BINDIR/pg_ctl" -D "$dir/data" -m fast -w -t 120 stop >/dev/null
}

for arm in A B C; do
  tc_log "arm $arm under callgrind ($N and $((2 * N)) transactions)"
  measure_arm "$arm"
done

# The two pgbench backends are the two processes with the most instructions.
python3 - "$WORK" "$N" <<'PY'
import glob, re, subprocess, sys
work, n = sys.argv[1], int(sys.argv[2])
names = {"Ir": "instructions", "I1mr": "L1i misses", "D1mr": "L1d read misses",
         "D1mw": "L1d write misses"}
per_statement = {}
for arm in "ABC":
    runs = []
    for path in glob.glob(f"{work}/{arm}/out/cg.*"):
        events = summary = None
        with open(path) as f:
            for line in f:
                if line.startswith("events:"):
                    events = line.split()[1:]
                elif line.startswith("summary:"):
                    summary = [int(x) for x in line.split()[1:]]
                    break
        if events and summary:
            runs.append((summary[0], dict(zip(events, summary)), path))
    runs.sort(key=lambda r: r[0])
    (_, short, _), (_, long, _) = runs[-2], runs[-1]
    if arm == "C":
        c_runs = (runs[-2][2], runs[-1][2])
    per_statement[arm] = {e: (long[e] - short[e]) / n for e in names}
print(f"{'per statement':<18}" + "".join(f"{a:>10}" for a in ("A", "B", "C", "B-A", "C-A")))
for e, label in names.items():
    a, b, c = (per_statement[x][e] for x in "ABC")
    print(f"{label:<18}{a:>10.0f}{b:>10.0f}{c:>10.0f}{b - a:>+10.0f}{c - a:>+10.0f}")

# Under valgrind a statement runs some 50 times slower, so arm C predicts it
# above 0.5 ms: every statement then asks the shared estimator and has its CPU
# time measured and recorded, which natively a cheap statement does at most
# once per 10 ms. Shown apart, so the rest can be compared with a native run.
def inclusive(path, function):
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--show=Ir",
                          "--threshold=100", path], capture_output=True, text=True).stdout
    total = 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+\S+:" + re.escape(function) + r"\b", line)
        if m:
            total = max(total, int(m.group(1).replace(",", "")))
    return total
estimator = 0.0
for function in ("tc::PatternTable::Predict", "tc::PatternTable::Record", "cpu_seconds_now"):
    estimator += (inclusive(c_runs[1], function) - inclusive(c_runs[0], function)) / n
print(f"of C-A instructions, estimator and CPU clock on every statement (valgrind only): "
      f"{estimator:.0f}")
PY
