#!/usr/bin/env bash
# pgbench comparison, interleaved in one run (docs/benchmarks.md):
#   A  library not loaded
#   B  loaded, no rules
#   C  loaded, 1,000 rules, every query matching a budget that never refuses
#      (enforce, max_concurrent and server_share limits far above the load, so
#      the concurrency slot, the leaky bucket and the estimator all do their
#      work on every statement)
# Each round restarts the server once per arm (the arms' order rotates from
# round to round) and runs `pgbench -S -M prepared` for DURATION seconds; the
# ratios B/A and C/A are printed per round and as medians. Usage: test/bench/pgbench_compare.sh [ROUNDS] [DURATION] [CLIENTS]
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$TC_ROOT"
ROUNDS="${1:-5}"
DURATION="${2:-10}"
CLIENTS="${3:-2}"

tc_install_dependencies
tc_build_and_install

WORK="$(mktemp -d /tmp/tc_bench.XXXXXX)"
chmod 755 "$WORK"
trap 'tc_stop_cluster "$WORK/cluster"; rm -rf "$WORK"' EXIT

# 1,000 rules: 999 on tags the benchmark never sends, one on application_name
# "pgbench" (pgbench's own), each with its own budget.
python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
budgets = [{"name": f"b{i}", "mode": "enforce", "max_concurrent": 1000000,
            "server_share": 100, "burst_limit": 1000} for i in range(1000)]
rules = [{"name": f"r{i}", "budget": f"b{i}", "match": {"route": f"/route/{i}"}} for i in range(999)]
rules.append({"name": "r999", "budget": "b999", "match": {"application_name": "pgbench"}})
with open(f"{work}/rules.conf", "w") as f:
    f.write("traffic_control.budgets = '%s'\n" % json.dumps(budgets, separators=(",", ":")))
    f.write("traffic_control.rules = '%s'\n" % json.dumps(rules, separators=(",", ":")))
PY

tc_start_cluster "$WORK/cluster"
CONF="$TC_DATA/postgresql.conf"
cp "$CONF" "$WORK/base.conf"
{
  echo "shared_buffers = 256MB"
  echo "max_connections = 40"
} >>"$WORK/base.conf"
"$PG_BINDIR/pgbench" -i -q -s 10 postgres >/dev/null 2>&1

set_arm() {
  local arm="$1"
  cp "$WORK/base.conf" "$CONF"
  case "$arm" in
    A) echo "shared_preload_libraries = ''" >>"$CONF" ;;
    B) echo "shared_preload_libraries = 'traffic_control'" >>"$CONF" ;;
    C) echo "shared_preload_libraries = 'traffic_control'" >>"$CONF"
       cat "$WORK/rules.conf" >>"$CONF" ;;
  esac
  chown postgres:postgres "$CONF" 2>/dev/null || true
  tc_as_postgres "$PG_BINDIR/pg_ctl" -D "$TC_DATA" -l "$WORK/cluster/server.log" -w -m fast restart >/dev/null
}

run_arm() {
  "$PG_BINDIR/pgbench" -S -M prepared -n -c "$CLIENTS" -j "$CLIENTS" -T "$DURATION" postgres 2>/dev/null |
    sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

declare -A TPS
echo "round  A_not_loaded  B_no_rules  C_1000_rules  B/A     C/A"
ORDERS=("A B C" "B C A" "C A B")
for round in $(seq 1 "$ROUNDS"); do
  # Rotate the order of the arms from round to round, so that a drift of the
  # machine within a round (or the position after a restart) favours no arm.
  for arm in ${ORDERS[$(( (round - 1) % 3 ))]}; do
    set_arm "$arm"
    "$PG_BINDIR/pgbench" -S -M prepared -n -c "$CLIENTS" -j "$CLIENTS" -T 2 postgres >/dev/null 2>&1  # warm up
    TPS[$arm,$round]="$(run_arm)"
  done
  a="${TPS[A,$round]}"; b="${TPS[B,$round]}"; c="${TPS[C,$round]}"
  awk -v r="$round" -v a="$a" -v b="$b" -v c="$c" \
    'BEGIN { printf "%5d  %12.0f  %10.0f  %12.0f  %.4f  %.4f\n", r, a, b, c, b / a, c / a }' 
done

python3 - "$ROUNDS" "$(for r in $(seq 1 "$ROUNDS"); do echo "${TPS[A,$r]} ${TPS[B,$r]} ${TPS[C,$r]}"; done)" <<'PY'
import statistics, sys
rows = [list(map(float, line.split())) for line in sys.argv[2].splitlines() if line.strip()]
b = [r[1] / r[0] for r in rows]
c = [r[2] / r[0] for r in rows]
print(f"median B/A (loaded, no rules)   = {statistics.median(b):.4f}  (min {min(b):.4f}, max {max(b):.4f}; target >= 0.99)")
print(f"median C/A (loaded, 1,000 rules) = {statistics.median(c):.4f}  (min {min(c):.4f}, max {max(c):.4f}; target >= 0.98)")
PY
