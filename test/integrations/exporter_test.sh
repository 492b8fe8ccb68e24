#!/usr/bin/env bash
# Prometheus integration test (docs/operations.md, "Monitoring with Prometheus
# and Grafana"): starts a throwaway cluster with the library preloaded and a
# few budgets, runs tagged statements, starts Debian's
# prometheus-postgres-exporter with integrations/prometheus/
# traffic_control_queries.yaml as a pg_read_all_stats role, scrapes /metrics
# and checks the series, their labels and values, and that every metric the
# Grafana dashboard and the example alerts use is exported.
# exporter_test.py does the work; this script provides the package, the
# cluster and the cleanup.
#
# The extension must already be installed into the PostgreSQL that pg_config
# names (make -f Makefile.pgxs install, or test/run_all.sh). Run as root (the
# server runs as postgres) or as a user who can run initdb. Prints one
# "ok"/"not ok" line per check and "exporter: N passed, M failed"; exits
# non-zero when a check failed.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"

tc_install_dependencies prometheus-postgres-exporter

WORK="$(mktemp -d /tmp/tc_exporter.XXXXXX)"
chmod 755 "$WORK"
# exporter_test.py stops what it starts itself; this is the backstop for an
# interrupted or crashed run: the exporters and the sleeping psql by their
# pid files, then the cluster.
cleanup() {
  tc_kill_pidfiles "$WORK"/*.pid
  tc_stop_cluster "$WORK/cluster"
}
trap cleanup EXIT

cat >"$WORK/exporter.conf" <<'EOF'
# tenants: per-tenant instances (each); shed_all: enforce with
# max_concurrent 0, so every statement is refused; watch: warn with
# max_concurrent 0, so every statement is admitted with a warning; lever: is
# shed by the test; busy: one slot and a short queue, held by a sleeping
# statement so that active is 1 and a second statement queues and is refused.
traffic_control.budgets = '[{"name":"tenants","mode":"enforce","max_concurrent":5},{"name":"shed_all","mode":"enforce","max_concurrent":0},{"name":"watch","mode":"warn","max_concurrent":0},{"name":"lever","mode":"enforce","max_concurrent":10},{"name":"busy","mode":"enforce","max_concurrent":1,"queue_timeout_ms":300}]'
traffic_control.rules = '[{"name":"per_tenant","budget":"tenants","match":{"app":"web"},"each":"tenant"},{"name":"refuse_batch","budget":"shed_all","match":{"app":"batch"}},{"name":"watch_reports","budget":"watch","match":{"app":"report"}},{"name":"lever","budget":"lever","match":{"app":"lever"}},{"name":"busy","budget":"busy","match":{"app":"busy"}},{"name":"broken","budget":"no_such_budget","match":{"app":"nothing"}}]'
EOF
tc_start_cluster "$WORK/cluster" "$WORK/exporter.conf"

set +e
/usr/bin/python3 "$TC_ROOT/test/integrations/exporter_test.py" --workdir "$WORK" \
  --psql "$PG_BINDIR/psql" \
  --queries "$TC_ROOT/integrations/prometheus/traffic_control_queries.yaml" \
  --dashboard "$TC_ROOT/integrations/grafana/traffic_control_dashboard.json" \
  --alerts "$TC_ROOT/integrations/prometheus/traffic_control_alerts.yaml"
status=$?
set -e
if [ "$status" -ne 0 ]; then
  echo "# exporter log:"; sed 's/^/# /' "$WORK/exporter.log" 2>/dev/null | tail -n 30 || true
  echo "# server log:"; sed 's/^/# /' "$WORK/cluster/server.log" 2>/dev/null | tail -n 30 || true
fi
cleanup
trap - EXIT
if [ "$status" -eq 0 ]; then rm -rf "$WORK"; else echo "# work directory kept: $WORK"; fi
exit "$status"
