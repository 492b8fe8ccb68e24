#!/usr/bin/env bash
# Backends that end right after a statement, many at once (docs/testing.md,
# "Reconnect storm"): 32 pgbench clients that open a new connection for
# every transaction (-C) run statements of budgets whose per-backend state
# outlives the statement or is armed during it -- a CPU priority whose
# restore lingers after the statement (cpu_priority 5 and "idle"), the
# max_duration_ms timer, a concurrency slot -- so that backends exit while a
# restore is pending, and with 32 of them starting and ending on two cores
# the exit can take longer than the linger (50 ms here,
# traffic_control.cpu_priority_linger_ms; the default 1 s would make the
# race rarer, not impossible). Checks that no backend crashed (nor the
# postmaster reinitialized), that every transaction ran, and that no slot is
# left held.
#
# The extension must already be installed into the PostgreSQL that pg_config
# names. Run as root (the server runs as postgres, with CAP_SYS_NICE so that
# cpu_priority takes effect). Prints one "ok"/"not ok" line per check and
# "reconnect: N passed, M failed".
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
tc_install_dependencies

SECONDS_PER_RUN="${1:-8}"
WORK="$(mktemp -d /tmp/tc_reconnect.XXXXXX)"
chmod 755 "$WORK"
trap 'tc_stop_cluster "$WORK/cluster"' EXIT

cat >"$WORK/reconnect.conf" <<'CONF'
traffic_control.budgets = '[{"name":"nice","mode":"enforce","max_concurrent":64,"cpu_priority":5},{"name":"idle","mode":"enforce","max_concurrent":64,"cpu_priority":"idle"},{"name":"timed","mode":"enforce","max_concurrent":64,"max_duration_ms":60000}]'
traffic_control.rules = '[{"name":"nice","budget":"nice","match":{"test":"nice"}},{"name":"idle","budget":"idle","match":{"test":"idle"}},{"name":"timed","budget":"timed","match":{"test":"timed"}}]'
traffic_control.cpu_priority_linger_ms = 50
CONF
tc_start_cluster "$WORK/cluster" "$WORK/reconnect.conf"
psql -qAt -c "CREATE EXTENSION traffic_control" postgres
"$PG_BINDIR/pgbench" -i -q -s 1 postgres >/dev/null 2>&1

for budget in nice idle timed; do
  printf '%s\n' '\set aid random(1, 100000)' \
    "SELECT abalance FROM pgbench_accounts WHERE aid = :aid /*test='$budget'*/;" >"$WORK/$budget.sql"
done
chmod 644 "$WORK"/*.sql

PASSED=0
FAILED=0
check() {  # check DESCRIPTION COMMAND...
  if "${@:2}"; then
    PASSED=$((PASSED + 1)); echo "ok - $1"
  else
    FAILED=$((FAILED + 1)); echo "not ok - $1"
  fi
}

set +e
"$PG_BINDIR/pgbench" -n -C -c 32 -j 4 -T "$SECONDS_PER_RUN" -f "$WORK/nice.sql" \
  -f "$WORK/idle.sql" -f "$WORK/timed.sql" postgres >"$WORK/pgbench.out" 2>"$WORK/pgbench.err"
pgbench_status=$?
set -e
processed="$(sed -En 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$WORK/pgbench.out")"
failed="$(sed -En 's/^number of failed transactions: ([0-9]+).*/\1/p' "$WORK/pgbench.out")"
echo "# pgbench -C: ${processed:-0} transactions (exit $pgbench_status)"
check "pgbench ran every transaction to its end (exit 0, none failed)" \
  test "$pgbench_status" -eq 0 -a "${failed:-1}" -eq 0 -a "${processed:-0}" -gt 0
if [ "$pgbench_status" -ne 0 ]; then sed 's/^/# /' "$WORK/pgbench.err" | tail -n 5; fi

crashes="$(grep -cE 'terminated by signal|was terminated by exception|all server processes terminated' \
  "$WORK/cluster/server.log" || true)"
check "no backend crashed, no crash restart (server log)" test "$crashes" -eq 0
if [ "$crashes" -ne 0 ]; then grep -E 'terminated by signal' "$WORK/cluster/server.log" | sed 's/^/# /' | head -n 3; fi

# The last backends may still be exiting: their exits give their slots back.
active=""
for _ in $(seq 1 50); do
  active="$(psql -qAt -c "SELECT coalesce(sum(active), -1) FROM traffic_control.budget_status" postgres)"
  [ "$active" = 0 ] && break
  sleep 0.2
done
check "no slot is left held (budget_status.active is 0)" test "$active" = 0
admitted="$(psql -qAt -c "SELECT sum(admitted) FROM traffic_control.budget_status WHERE budget IN ('nice', 'idle', 'timed')" postgres)"
check "every transaction was admitted by its budget (${admitted:-0} >= ${processed:-0})" \
  test "${admitted:-0}" -ge "${processed:-1}"

tc_stop_cluster "$WORK/cluster"
if [ "$FAILED" -eq 0 ]; then rm -rf "$WORK"; else echo "# work directory kept: $WORK"; fi
echo "reconnect: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
