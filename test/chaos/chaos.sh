#!/usr/bin/env bash
# Chaos under load (docs/testing.md, "Chaos under load"): starts a throwaway
# cluster with the library preloaded, runs test/chaos/chaos.py against it and
# stops it. The extension must already be installed (make -f Makefile.pgxs
# install, or test/run_all.sh). Run as root (the server runs as postgres) or
# as a user who can run initdb.
#
#   test/chaos/chaos.sh [--duration SECONDS] [--cancels N] [--seed N] [--max-buckets N]
#                       [other chaos.py options: chaos.py --help]
#
# --duration 75 (the default) is the short run of test/run_all.sh;
# --duration 0 --cancels 10000 the long run. The seed is printed first; the
# last line is "chaos: N checks passed, M failed". The work directory (server
# log, pgbench scripts) is removed when every check passed, kept otherwise.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"

if ! /usr/bin/python3 -c 'import psycopg' 2>/dev/null; then
  echo "chaos.sh needs psycopg 3 for /usr/bin/python3 (apt-get install python3-psycopg)" >&2
  exit 1
fi

WORK="$(mktemp -d /tmp/tc_chaos.XXXXXX)"
chmod 755 "$WORK"
trap 'tc_stop_cluster "$WORK/cluster"' EXIT
cp "$TC_ROOT/test/chaos/chaos.conf" "$WORK/chaos.conf"
# --max-buckets N (a restart setting): a small bucket table, so that
# instances are evicted under the load.
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [ "${args[$i]}" = "--max-buckets" ] && [ $((i + 1)) -lt ${#args[@]} ]; then
    echo "traffic_control.max_buckets = ${args[$((i + 1))]}" >>"$WORK/chaos.conf"
  fi
done
tc_start_cluster "$WORK/cluster" "$WORK/chaos.conf"

set +e
/usr/bin/python3 "$TC_ROOT/test/chaos/chaos.py" --pgbench "$PG_BINDIR/pgbench" \
  --server-log "$WORK/cluster/server.log" --data "$TC_DATA" --workdir "$WORK" "$@"
status=$?
set -e
tc_stop_cluster "$WORK/cluster"
if [ "$status" -eq 0 ]; then
  rm -rf "$WORK"
else
  echo "chaos: work directory kept: $WORK (server log: $WORK/cluster/server.log)"
fi
exit "$status"
