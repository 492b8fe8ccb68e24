#!/usr/bin/env bash
# Makes docs/violation_graph.png from a real run: builds and installs
# traffic_control, starts a throwaway PostgreSQL 15 cluster with it
# preloaded, applies a critical / important / best-effort configuration,
# drives about three minutes of tagged load through psql (three phases of a
# minute, each overloading other budgets), then draws
# traffic_control.violation_history with tools/violation_graph.py.
# Everything but the PNG is removed at the end.
#   usage: tools/make_violation_graph_demo.sh [output.png]
set -euo pipefail
source "$(dirname "$0")/../test/scripts/lib.sh"
cd "$TC_ROOT"
OUTPUT="${1:-$TC_ROOT/docs/violation_graph.png}"
PHASE_SECONDS="${TC_PHASE_SECONDS:-60}"

tc_install_dependencies python3-matplotlib python3-psycopg
tc_build_and_install

WORK="$(mktemp -d /tmp/tc_graph.XXXXXX)"
chmod 755 "$WORK"
trap 'jobs -p | xargs -r kill 2>/dev/null || true; tc_stop_cluster "$WORK/cluster"; rm -rf "$WORK"' EXIT

# critical warns above 4 concurrent statements and is never refused;
# important and best-effort refuse above 3 and 1.
cat >"$WORK/graph.conf" <<'CONF'
traffic_control.budgets = '[{"name":"critical","mode":"warn","max_concurrent":4},{"name":"important","mode":"enforce","max_concurrent":3},{"name":"best-effort","mode":"enforce","max_concurrent":1}]'
traffic_control.rules = '[{"name":"critical-traffic","budget":"critical","match":{"priority":"critical"}},{"name":"important-traffic","budget":"important","match":{"priority":"important"}},{"name":"best-effort-traffic","budget":"best-effort","match":{"priority":"bestEffort"}}]'
CONF

tc_log "starting a throwaway cluster with traffic_control preloaded"
tc_start_cluster "$WORK/cluster" "$WORK/graph.conf"
command psql -X -q -c "CREATE EXTENSION traffic_control"

# A batch of 20 statements of one priority, each sleeping up to $2 seconds.
batch() {
  local priority="$1" max_sleep="$2" file="$WORK/batch_${1}_${2}.sql"
  for _ in $(seq 20); do
    echo "SELECT pg_sleep(random() * $max_sleep) /*priority='$priority'*/;"
  done >"$file"
  echo "$file"
}

# clients priority max_sleep: that many psql loops until the phase ends.
drive() {
  local clients="$1" priority="$2" max_sleep="$3" end="$4" file
  file="$(batch "$priority" "$max_sleep")"
  for _ in $(seq "$clients"); do
    (while [ "$(date +%s)" -lt "$end" ]; do
      command psql -X -q -v ON_ERROR_STOP=0 -f "$file" >/dev/null 2>&1 || true
    done) &
  done
}

phase() {
  local name="$1"
  shift
  tc_log "phase: $name (${PHASE_SECONDS}s)"
  local end=$(($(date +%s) + PHASE_SECONDS))
  while [ "$#" -gt 0 ]; do
    drive "$1" "$2" "$3" "$end"
    shift 3
  done
  wait
}

phase "best-effort analytics pile up" 5 bestEffort 0.3 2 important 0.2 2 critical 0.1
phase "an important batch job overloads important, critical runs hot" \
  2 bestEffort 0.3 7 important 0.3 7 critical 0.2
phase "everything at once" 6 bestEffort 0.2 5 important 0.2 5 critical 0.2

tc_log "the violation history"
command psql -X -c "SELECT budget, to_char(minute, 'HH24:MI') AS minute, admitted, warned,
  blocked_max_concurrent AS refused FROM traffic_control.violation_history ORDER BY 1, 2"

tc_log "drawing $OUTPUT"
/usr/bin/python3 "$TC_ROOT/tools/violation_graph.py" -o "$OUTPUT" \
  --title "Violation graph: 3 minutes of demo load (refused solid, warned dashed)"
