#!/usr/bin/env bash
# pgbench comparison, interleaved in one run (docs/benchmarks.md):
#   A  library not loaded
#   B  loaded, no rules
#   C  loaded, 1,000 rules, every query matching a budget that never refuses
#      (enforce, max_concurrent, server_share, per_query_limit and
#      max_duration_ms far above the load, so the concurrency slot, the leaky
#      bucket, the estimator and the duration timer all do their work on every
#      statement) and sets cpu_priority 1 (the backend's priority lowered and
#      restored around every statement)
# Every arm runs the same statement: pgbench -S's primary-key lookup carrying
# a SQLCommenter comment with two tags (parsed in B and C; in C no rule
# matches its tags, the budget is matched by application_name). The three
# arms are three clusters with identical data, all running at once
# (an idle cluster costs nothing), so a round is three back-to-back
# `pgbench -M prepared` runs of DURATION seconds with no restart in
# between: on a VM whose speed drifts by ±10% within minutes, arms compared
# seconds apart see the same machine. The arms' order rotates from round to
# round. Prints TPS per round and arm, the ratios B/A and C/A per round, and
# their medians. Usage: test/bench/pgbench_compare.sh [ROUNDS] [DURATION] [CLIENTS]
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$TC_ROOT"
ROUNDS="${1:-20}"
DURATION="${2:-5}"
CLIENTS="${3:-2}"

tc_install_dependencies
tc_build_and_install

WORK="$(mktemp -d /tmp/tc_bench.XXXXXX)"
chmod 755 "$WORK"
stop_all() {
  for arm in A B C; do tc_stop_cluster "$WORK/$arm"; done
  rm -rf "$WORK"
}
trap stop_all EXIT

# Arm C's 1,000 budgets and rules (the same as callgrind_statement.sh).
# TC_BENCH_CPU_PRIORITY (default 1; 0 leaves cpu_priority out of arm C).
python3 "$TC_ROOT/test/bench/thousand_rules.py" --cpu-priority "${TC_BENCH_CPU_PRIORITY:-1}" >"$WORK/rules.conf"

# One cluster with the pgbench data, copied three times, so the arms differ
# only in their configuration (none of them is the original).
tc_start_cluster "$WORK/template"
"$PG_BINDIR/pgbench" -i -q -s 10 postgres >/dev/null 2>&1
tc_as_postgres "$PG_BINDIR/pg_ctl" -D "$WORK/template/data" -m fast -w stop >/dev/null
for arm in A B C; do cp -a "$WORK/template" "$WORK/$arm"; done
rm -rf "$WORK/template"

declare -A PORT
for arm in A B C; do
  PORT[$arm]="$(tc_free_port)"
  conf="$WORK/$arm/data/postgresql.conf"
  {
    echo "port = ${PORT[$arm]}"
    echo "unix_socket_directories = '$WORK/$arm'"
    echo "shared_buffers = 256MB"
    echo "max_connections = 40"
    case "$arm" in
      A) echo "shared_preload_libraries = ''" ;;
      B) echo "shared_preload_libraries = 'traffic_control'" ;;
      C) echo "shared_preload_libraries = 'traffic_control'"; cat "$WORK/rules.conf" ;;
    esac
  } >>"$conf"
  rm -f "$WORK/$arm/data/postmaster.pid"
  # As every test cluster: with CAP_SYS_NICE, so cpu_priority takes effect.
  tc_start_server "$WORK/$arm/data" "$WORK/$arm/server.log"
done
if grep -q "cpu_priority has no effect" "$WORK/C/server.log"; then
  echo "note: arm C runs without CAP_SYS_NICE: cpu_priority has no effect" >&2
fi

# pgbench -S's statement with a two-tag comment.
cat >"$WORK/select.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid /*route='%2Fbench%2Flookup',app='bench'*/;
SQL
chmod 644 "$WORK/select.sql"

run_arm() {
  local arm="$1" seconds="$2"
  PGHOST="$WORK/$arm" PGPORT="${PORT[$arm]}" \
    "$PG_BINDIR/pgbench" -f "$WORK/select.sql" -M prepared -n -c "$CLIENTS" -j "$CLIENTS" -T "$seconds" postgres 2>/dev/null |
    sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

# Warm up every arm: shared buffers, caches, the estimator's patterns.
for arm in A B C; do run_arm "$arm" 3 >/dev/null; done

declare -A TPS
echo "round  A_not_loaded  B_no_rules  C_1000_rules  B/A     C/A"
ORDERS=("A B C" "B C A" "C A B" "A C B" "C B A" "B A C")
for round in $(seq 1 "$ROUNDS"); do
  for arm in ${ORDERS[$(( (round - 1) % 6 ))]}; do
    TPS[$arm,$round]="$(run_arm "$arm" "$DURATION")"
  done
  a="${TPS[A,$round]}"; b="${TPS[B,$round]}"; c="${TPS[C,$round]}"
  awk -v r="$round" -v a="$a" -v b="$b" -v c="$c" \
    'BEGIN { printf "%5d  %12.0f  %10.0f  %12.0f  %.4f  %.4f\n", r, a, b, c, b / a, c / a }'
done

python3 - "$(for r in $(seq 1 "$ROUNDS"); do echo "${TPS[A,$r]} ${TPS[B,$r]} ${TPS[C,$r]}"; done)" <<'PY'
import statistics, sys
rows = [list(map(float, line.split())) for line in sys.argv[1].splitlines() if line.strip()]
b = [r[1] / r[0] for r in rows]
c = [r[2] / r[0] for r in rows]
def quartiles(v):
    q = statistics.quantiles(v, n=4) if len(v) >= 2 else [v[0]] * 3
    return f"quartiles {q[0]:.4f} .. {q[2]:.4f}, min {min(v):.4f}, max {max(v):.4f}"
print(f"median B/A (loaded, no rules)    = {statistics.median(b):.4f}  ({quartiles(b)}; target >= 0.99)")
print(f"median C/A (loaded, 1,000 rules) = {statistics.median(c):.4f}  ({quartiles(c)}; target >= 0.98)")
totals = [sum(r[i] for r in rows) for i in range(3)]
print(f"total transactions ratio: B/A = {totals[1] / totals[0]:.4f}, C/A = {totals[2] / totals[0]:.4f}")
PY
