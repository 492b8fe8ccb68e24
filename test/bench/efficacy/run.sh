#!/usr/bin/env bash
# The efficacy benchmark (issue 10; results in docs/efficacy.md): does a limit
# on best-effort analytics keep critical traffic fast and a job queue healthy
# while the analytics overload the server, and what does each kind of limit
# cost the analytics?
#
#   graceful degradation  critical primary-key lookups at a fixed rate
#                         (pgbench -R, per-transaction log), alone and then
#                         under a flood of CPU-heavy analytics from persistent
#                         connections that retry on SQLSTATE 53000
#   queue health          a producer at a fixed rate, SKIP LOCKED workers,
#                         overlapping long analytics (PlanetScale's test,
#                         scaled to 2 cores): backlog, dead tuples, dequeue
#                         latency over time
#
# Each arm (test/bench/efficacy/arms/*.json: no limits, statement_timeout,
# a PgBouncer pool cap, traffic_control budgets) is its own cluster, a copy of
# one template with the data; all run at once (an idle cluster costs nothing)
# and the arms take turns, in an order that rotates from round to round, so
# every arm sees the same (noisy) machine. An arm whose configuration the
# server rejects (a budget field this build does not know yet) is skipped and
# the report says so.
#
# Usage: test/bench/efficacy/run.sh [--quick] [--rounds N] [--arms a,b,...]
#                                   [--out DIR] [--docs | --no-docs]
#   --quick    smoke test, about 3 minutes: one short round
#   --rounds   rounds of each test (full: 2)
#   --arms     only these arms (names without the NN- prefix)
#   --out      results directory (default build/efficacy/<time>)
#   --docs     write docs/efficacy.md and its plots from this run (the
#              default for a full run; --no-docs to keep the docs as they are)
# Runs as root on Debian 12 (apt-get installs what is missing; the servers run
# as the postgres OS user). On a 2-core VM the full run takes about 14 minutes
# with six arms; each further arm adds about 2.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib.sh"
HERE="$TC_ROOT/test/bench/efficacy"
PY=/usr/bin/python3 # Debian's, for python3-psycopg and python3-matplotlib

QUICK=0 ROUNDS="" ONLY="" OUT="" DOCS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS="$2"; shift ;;
    --arms) ONLY=",$2," ; shift ;;
    --out) OUT="$2"; shift ;;
    --docs) DOCS=1 ;;
    --no-docs) DOCS=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# Durations in seconds. Graceful degradation, per arm and round: critical alone
# (ALONE), then the flood starts, RAMP later critical runs again for FLOOD.
# Queue health: QUEUE per arm and round.
if [ "$QUICK" = 1 ]; then
  : "${ROUNDS:=1}"; ALONE=3; RAMP=2; FLOOD=5; QUEUE=10; MODE=quick
else
  : "${ROUNDS:=2}"; ALONE=8; RAMP=2; FLOOD=16; QUEUE=30; MODE=full
fi
[ -n "$DOCS" ] || DOCS=$([ "$QUICK" = 1 ] && echo 0 || echo 1)
SCALE=10
CRITICAL_RATE=200 CRITICAL_CLIENTS=2 FLOOD_CONNECTIONS=6
PRODUCER_RATE=200 WORKERS=4 WORK_MS=10 ANALYTICS_CONNECTIONS=3 ANALYTICS_STAGGER=5

tc_install_dependencies pgbouncer python3-psycopg python3-matplotlib util-linux
tc_build_and_install
PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"

[ -n "$OUT" ] || OUT="$TC_ROOT/build/efficacy/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT/raw" "$OUT/arms" "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d /tmp/tc_efficacy.XXXXXX)"
chmod 755 "$WORK"
STARTED=$(date +%s)
SAMPLER_PID=""
step() { tc_log "$* [$(( $(date +%s) - STARTED )) s]"; }

cleanup() {
  set +e
  [ -z "$SAMPLER_PID" ] || kill "$SAMPLER_PID" 2>/dev/null
  for pidfile in "$WORK"/*/pgbouncer/pgbouncer.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
  done
  for dir in "$WORK"/*/; do
    dir="${dir%/}"
    tc_stop_cluster "$dir"
    name="$(basename "$dir")"
    [ -f "$dir/server.log" ] && cp "$dir/server.log" "$OUT/logs/$name.server.log"
    [ -f "$dir/pgbouncer/pgbouncer.log" ] && cp "$dir/pgbouncer/pgbouncer.log" "$OUT/logs/$name.pgbouncer.log"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Machine load while the benchmark runs (the noise section of the report).
$PY - "$OUT/raw/machine.csv" <<'PY' &
import sys, time
with open(sys.argv[1], "w", buffering=1) as f:
    f.write("t,load1,cpu_user,cpu_nice,cpu_system,cpu_idle,cpu_iowait,cpu_steal\n")
    while True:
        load = open("/proc/loadavg").read().split()[0]
        cpu = open("/proc/stat").readline().split()[1:9]
        f.write("%.1f,%s,%s,%s,%s,%s,%s,%s\n" % (time.time(), load, cpu[0], cpu[1], cpu[2], cpu[3], cpu[4], cpu[7]))
        time.sleep(5)
PY
SAMPLER_PID=$!

# ---- the template: pgbench data, the analytics role, the jobs table ---------
step "template cluster: pgbench scale $SCALE, role analytics, jobs table"
cat >"$WORK/common.conf" <<EOF
shared_buffers = 256MB
max_connections = 40
autovacuum_naptime = 5s
EOF
tc_start_cluster "$WORK/template" "$WORK/common.conf"
timeout 600 "$PG_BINDIR/pgbench" -i -q -s "$SCALE" postgres >"$WORK/template/pgbench-init.log" 2>&1
timeout 300 "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -f "$HERE/setup.sql" postgres
NACCOUNTS=$("$PG_BINDIR/psql" -X -At -c "SELECT count(*) FROM pgbench_accounts" postgres)

# ---- the arms: a copy of the template each, configured, checked ------------
declare -A PORT ANALYTICS_DSN FILE
CANDIDATES=() ARMS=()
psql_template() { timeout 60 "$PG_BINDIR/psql" -X -U postgres "$@" postgres; }
psql_arm() { # psql_arm ARM [psql args...]
  local arm="$1"; shift
  timeout 60 "$PG_BINDIR/psql" -X -h "$WORK/$arm" -p "${PORT[$arm]}" -U postgres "$@" postgres
}
skip_arm() { # skip_arm ARM REASON...
  local arm="$1"; shift
  printf 'skipped\n%s\n' "$*" >"$OUT/arms/$arm.status"
  tc_log "arm $arm skipped: $*"
  [ ! -d "$WORK/$arm" ] || tc_stop_cluster "$WORK/$arm"
}

for file in "$HERE"/arms/*.json; do
  arm="$($PY "$HERE/arms.py" name "$file")"
  if [ -n "$ONLY" ] && [[ "$ONLY" != *",$arm,"* ]]; then continue; fi
  cp "$file" "$OUT/arms/$arm.json"
  if [ "$($PY "$HERE/arms.py" enabled "$file")" != yes ]; then
    printf 'disabled\n"enabled": false in %s\n' "${file#"$TC_ROOT"/}" >"$OUT/arms/$arm.status"
    continue
  fi
  # The server validates the arm's configuration first, on the template
  # (traffic_control's check hook names the item and the field it rejects).
  if ! err="$($PY "$HERE/arms.py" sql "$file" | psql_template -q -v ON_ERROR_STOP=1 2>&1 >/dev/null)"; then
    skip_arm "$arm" "the server rejected its configuration: $(echo "$err" | sed 's/^psql:<stdin>:[0-9]*: //' | tr '\n' ' ')"
    continue
  fi
  psql_template -q -c "ALTER SYSTEM RESET ALL" -c "SELECT pg_reload_conf()" >/dev/null
  $PY "$HERE/arms.py" roles "$file" | while read -r role; do
    psql_template -q -c "ALTER ROLE \"$role\" RESET ALL" >/dev/null
  done
  FILE[$arm]="$file"
  CANDIDATES+=("$arm")
done
tc_as_postgres "$PG_BINDIR/pg_ctl" -D "$WORK/template/data" -m fast -w -t 60 stop >/dev/null

for arm in "${CANDIDATES[@]}"; do
  file="${FILE[$arm]}"
  step "arm $arm: a copy of the template"
  cp -a "$WORK/template" "$WORK/$arm"
  rm -f "$WORK/$arm/data/postmaster.pid" "$WORK/$arm/server.log"
  PORT[$arm]="$(tc_free_port)"
  {
    echo "port = ${PORT[$arm]}"
    echo "unix_socket_directories = '$WORK/$arm'"
    $PY "$HERE/arms.py" conf "$file"
  } >>"$WORK/$arm/data/postgresql.conf"
  # tc_start_server: as the postgres OS user with CAP_SYS_NICE (cpu_priority
  # needs it to restore a backend's priority); every arm starts the same way.
  if ! tc_start_server "$WORK/$arm/data" "$WORK/$arm/server.log"; then
    skip_arm "$arm" "the server did not start: $(grep -E 'FATAL|ERROR' "$WORK/$arm/server.log" | head -3)"
    continue
  fi
  if ! err="$($PY "$HERE/arms.py" sql "$file" | psql_arm "$arm" -q -v ON_ERROR_STOP=1 2>&1 >/dev/null)"; then
    skip_arm "$arm" "the server rejected its configuration: $(echo "$err" | sed 's/^psql:<stdin>:[0-9]*: //' | tr '\n' ' ')"
    continue
  fi
  sleep 1 # the reload reaches every backend at its next statement
  mismatch=""
  while IFS=$'\t' read -r setting want; do
    got="$(psql_arm "$arm" -At -c "SHOW $setting")"
    [ "$got" = "$want" ] || mismatch="$setting is $got after the reload"
  done < <($PY "$HERE/arms.py" expected "$file")
  if [ -n "$mismatch" ]; then skip_arm "$arm" "$mismatch"; continue; fi
  if [ "$($PY "$HERE/arms.py" uses-pgbouncer "$file")" = yes ]; then
    pb="$WORK/$arm/pgbouncer"
    mkdir -p "$pb"
    echo '"analytics" ""' >"$pb/userlist.txt"
    bport="$(tc_free_port)"
    $PY "$HERE/arms.py" pgbouncer "$file" "$pb" "$WORK/$arm" "${PORT[$arm]}" "$bport" >"$pb/pgbouncer.ini"
    chown -R postgres:postgres "$pb"
    tc_as_postgres "$PGBOUNCER" -d "$pb/pgbouncer.ini" >/dev/null
    ANALYTICS_DSN[$arm]="host=127.0.0.1 port=$bport user=analytics dbname=postgres"
    for _ in $(seq 1 50); do
      "$PG_BINDIR/psql" -X -At -c "SELECT 1" "${ANALYTICS_DSN[$arm]}" >/dev/null 2>&1 && break
      sleep 0.2
    done
    if ! "$PG_BINDIR/psql" -X -At -c "SELECT 1" "${ANALYTICS_DSN[$arm]}" >/dev/null 2>&1; then
      skip_arm "$arm" "PgBouncer did not accept connections: $(tail -3 "$pb/pgbouncer.log" 2>/dev/null | tr '\n' ' ')"
      continue
    fi
  else
    ANALYTICS_DSN[$arm]="host=$WORK/$arm port=${PORT[$arm]} user=analytics dbname=postgres"
  fi
  # Warnings the configuration caused (e.g. cpu_priority without CAP_SYS_NICE).
  notes="$(grep -E 'WARNING' "$WORK/$arm/server.log" | sed 's/^.*WARNING: *//' | sort -u | head -5 || true)"
  printf 'ran\n%s\n' "$notes" >"$OUT/arms/$arm.status"
  ARMS+=("$arm")
done
[ "${#ARMS[@]}" -gt 0 ] || { echo "no arm could run" >&2; exit 1; }

cat >"$OUT/run.env" <<EOF
mode=$MODE
rounds=$ROUNDS
alone_s=$ALONE
ramp_s=$RAMP
flood_s=$FLOOD
queue_s=$QUEUE
scale=$SCALE
critical_rate=$CRITICAL_RATE
critical_clients=$CRITICAL_CLIENTS
flood_connections=$FLOOD_CONNECTIONS
producer_rate=$PRODUCER_RATE
workers=$WORKERS
work_ms=$WORK_MS
analytics_connections=$ANALYTICS_CONNECTIONS
analytics_stagger_s=$ANALYTICS_STAGGER
arms=${ARMS[*]}
cpus=$(nproc)
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
kernel=$(uname -r)
postgres=$("$PG_BINDIR/postgres" --version)
pgbouncer=$("$PGBOUNCER" --version 2>/dev/null | head -1)
commit=$(git -C "$TC_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$TC_ROOT" diff --quiet HEAD 2>/dev/null || echo +changes)
started=$(date -u -d "@$STARTED" +%Y-%m-%dT%H:%M:%SZ)
EOF

loadgen() { # loadgen MODE ARM ROUND SECONDS [args...]
  local mode="$1" arm="$2" round="$3" seconds="$4"; shift 4
  local dir="$OUT/raw/$mode/$arm/r$round"
  mkdir -p "$dir"
  psql_arm "$arm" -q -c "CHECKPOINT" >/dev/null
  local pids="" a
  for a in "${ARMS[@]}"; do
    pids+=" $(head -1 "$WORK/$a/data/postmaster.pid")"
    [ ! -f "$WORK/$a/pgbouncer/pgbouncer.pid" ] || pids+=" $(cat "$WORK/$a/pgbouncer/pgbouncer.pid")"
  done
  if ! timeout "$((seconds + 90))" $PY "$HERE/loadgen.py" "$mode" --out "$dir" \
      --host "$WORK/$arm" --port "${PORT[$arm]}" --analytics-dsn "${ANALYTICS_DSN[$arm]}" \
      --pgbench "$PG_BINDIR/pgbench" --naccounts "$NACCOUNTS" --account-pids "$pids" \
      "$@" 2>"$dir/loadgen.err"; then
    echo "  $mode $arm round $round: the load generator failed (see $dir/loadgen.err)" >&2
  fi
  # Nothing of this run may go on loading the machine during the next one (a
  # backend busy with a query does not notice that its client is gone).
  psql_arm "$arm" -q -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                          WHERE usename = 'analytics' OR application_name LIKE 'efficacy-%'" >/dev/null
  for _ in $(seq 1 50); do
    [ "$(psql_arm "$arm" -At -c "SELECT count(*) FROM pg_stat_activity
                                  WHERE usename = 'analytics' OR application_name LIKE 'efficacy-%'")" = 0 ] && break
    sleep 0.2
  done
}

# ---- the rounds -------------------------------------------------------------
n=${#ARMS[@]}
for round in $(seq 1 "$ROUNDS"); do
  order=()
  for i in $(seq 0 $((n - 1))); do order+=("${ARMS[$(( (i + round - 1) % n ))]}"); done
  step "round $round/$ROUNDS, graceful degradation: ${order[*]}"
  for arm in "${order[@]}"; do
    echo "  $arm"
    loadgen degradation "$arm" "$round" $((ALONE + RAMP + FLOOD)) \
      --alone "$ALONE" --ramp "$RAMP" --flood "$FLOOD" \
      --critical-rate "$CRITICAL_RATE" --critical-clients "$CRITICAL_CLIENTS" \
      --flood-connections "$FLOOD_CONNECTIONS"
  done
  step "round $round/$ROUNDS, queue health: ${order[*]}"
  for arm in "${order[@]}"; do
    echo "  $arm"
    psql_arm "$arm" -q -c "TRUNCATE jobs RESTART IDENTITY" >/dev/null
    loadgen queue "$arm" "$round" "$QUEUE" --duration "$QUEUE" \
      --producer-rate "$PRODUCER_RATE" --workers "$WORKERS" --work-ms "$WORK_MS" \
      --analytics-connections "$ANALYTICS_CONNECTIONS" --analytics-stagger "$ANALYTICS_STAGGER"
  done
done
echo "finished=$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$OUT/run.env"
echo "elapsed_s=$(( $(date +%s) - STARTED ))" >>"$OUT/run.env"

# ---- the report ---------------------------------------------------------------
kill "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
step "report"
$PY "$HERE/report.py" "$OUT"
if [ "$DOCS" = 1 ]; then
  $PY "$HERE/report.py" "$OUT" --docs "$TC_ROOT/docs"
  echo "wrote docs/efficacy.md and docs/efficacy/*.png"
fi
echo "results: $OUT (summary.md, plots/, raw/)"
