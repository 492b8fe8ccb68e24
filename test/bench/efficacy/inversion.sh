#!/usr/bin/env bash
# Priority inversion (issue 10; results in docs/efficacy.md "Priority
# inversion"): critical writes at a fixed rate, alone and next to best-effort
# writers, with the best-effort budget at normal priority, nice 19 and idle,
# and (scenario `contended`) normal-priority reporting keeping the CPUs busy.
# See inversion.py for what each arm-run does.
#
# Usage: test/bench/efficacy/inversion.sh [--quick] [--docs] [--fsync on|off]
#                                         [--out DIR] [inversion.py options]
#   --quick   one short round (about 2 minutes)
#   --docs    write docs/efficacy-inversion.md from this run
#   --fsync on|off   durable commits (default off, as the other efficacy
#             runs: on this VM a WAL flush takes tens of milliseconds and
#             would hide what CPU scheduling does to the lock holders)
# The full run (3 rounds, 2 scenarios, 4 arms, 22 s each) takes about 11
# minutes on a 2-core VM. Runs as root on Debian 12; the server runs as the
# postgres OS user with CAP_SYS_NICE (lib.sh's tc_start_server).
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib.sh"
HERE="$TC_ROOT/test/bench/efficacy"
PY=/usr/bin/python3

OUT="" EXTRA=() FSYNC=off
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) EXTRA+=(--rounds 1 --alone 3 --loaded 8) ;;
    --out) OUT="$2"; shift ;;
    --fsync) FSYNC="$2"; shift ;;
    --docs) EXTRA+=(--docs "$TC_ROOT/docs/efficacy-inversion.md") ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) EXTRA+=("$1") ;;
  esac
  shift
done

tc_install_dependencies python3-psycopg util-linux
tc_build_and_install
[ -n "$OUT" ] || OUT="$TC_ROOT/build/inversion/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d /tmp/tc_inversion.XXXXXX)"
chmod 755 "$WORK"
trap 'tc_stop_cluster "$WORK/cluster"; cp "$WORK/cluster/server.log" "$OUT/" 2>/dev/null; rm -rf "$WORK"' EXIT

# With fsync off a commit still takes the WAL insertion and write locks, but
# does not wait for the disk.
cat >"$WORK/inversion.conf" <<CONF
fsync = $FSYNC
shared_buffers = 256MB
max_connections = 40
autovacuum_naptime = 5s
CONF
tc_log "cluster: pgbench scale 10, roles analytics (best-effort) and reporting"
tc_start_cluster "$WORK/cluster" "$WORK/inversion.conf"
timeout 600 "$PG_BINDIR/pgbench" -i -q -s 10 postgres >"$WORK/cluster/pgbench-init.log" 2>&1
"$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 postgres <<'SQL'
CREATE EXTENSION traffic_control;
CREATE ROLE analytics LOGIN;
CREATE ROLE reporting LOGIN;
ALTER ROLE reporting SET max_parallel_workers_per_gather = 0;
CREATE TABLE inversion_scratch (id int, payload text);
GRANT SELECT, UPDATE ON pgbench_accounts TO analytics;
GRANT INSERT ON inversion_scratch TO analytics;
GRANT SELECT ON pgbench_accounts TO reporting;
VACUUM ANALYZE;
SQL
NACCOUNTS=$("$PG_BINDIR/psql" -X -At -c "SELECT count(*) FROM pgbench_accounts" postgres)

tc_log "arms (results in $OUT)"
{
  echo "commit=$(git -C "$TC_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$TC_ROOT" diff --quiet HEAD 2>/dev/null || echo +changes)"
  echo "started=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpus=$(nproc)"
  echo "fsync=$FSYNC"
  echo "args=${EXTRA[*]}"
} >"$OUT/run.env"
$PY "$HERE/inversion.py" --host "$PGHOST" --port "$PGPORT" --pgbench "$PG_BINDIR/pgbench" \
  --naccounts "$NACCOUNTS" --out "$OUT" "${EXTRA[@]}"
echo "finished=$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$OUT/run.env"
echo "results: $OUT (summary.md, results.json, per arm-run pgbench logs)"
