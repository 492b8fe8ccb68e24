#!/usr/bin/env bash
# PgBouncer integration test (docs/operations.md, "PgBouncer (transaction
# pooling)"): starts a throwaway cluster with the library preloaded and the
# budgets below, and Debian's pgbouncer in transaction pooling mode in front of
# it; many psycopg clients share a pool of two server connections.
# pgbouncer_test.py does the work (it starts and stops the PgBouncer
# instances); this script provides the packages, the cluster and the cleanup.
#
# The extension must already be installed into the PostgreSQL that pg_config
# names (make -f Makefile.pgxs install, or test/run_all.sh). Run as root (the
# server and PgBouncer run as postgres) or as a user who can run initdb. Prints
# one "ok"/"not ok" line per check and "pgbouncer: N passed, M failed"; exits
# non-zero when a check failed.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"

tc_install_dependencies pgbouncer python3-psycopg

WORK="$(mktemp -d /tmp/tc_pgbouncer.XXXXXX)"
chmod 755 "$WORK"
mkdir "$WORK/pgbouncer"  # PgBouncer's ini, userlist, log and pid files
if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$WORK/pgbouncer"; fi
# pgbouncer_test.py stops what it starts; this is the backstop for an
# interrupted or crashed run: the PgBouncer instances by their pid files, then
# the cluster.
cleanup() {
  tc_kill_pidfiles "$WORK"/pgbouncer/*.pid
  tc_stop_cluster "$WORK/cluster"
}
trap cleanup EXIT

# Budgets, one per class of statement the clients send (route tag, or none):
#   report: enforce, max_concurrent 0 -- every report statement is refused
#   checkout: enforce with room to spare -- every checkout statement is admitted
#   audit: warn, max_concurrent 0 -- every audit statement runs with a NOTICE
#   untagged: the default rule's budget -- every statement no other rule took
#   one: enforce, one slot and a queue -- statements take turns
#   batch_app: enforce, max_concurrent 0 for application_name "batch", exactly
#     (rule batch_exact) or as PgBouncer's application_name_add_host writes it
#     ("batch - host:port", rule batch_with_host)
# client_connection_check_interval: a backend whose client (here: PgBouncer,
# which closes the server connection when its client vanishes mid-statement)
# is gone ends its statement at once instead of when it would have finished.
cat >"$WORK/pgbouncer.conf" <<'EOF'
traffic_control.budgets = '[{"name":"report","mode":"enforce","max_concurrent":0},{"name":"checkout","mode":"enforce","max_concurrent":10},{"name":"audit","mode":"warn","max_concurrent":0},{"name":"untagged","mode":"enforce","max_concurrent":10},{"name":"one","mode":"enforce","max_concurrent":1,"queue_timeout_ms":5000},{"name":"batch_app","mode":"enforce","max_concurrent":0}]'
traffic_control.rules = '[{"name":"report","budget":"report","match":{"route":"report"}},{"name":"checkout","budget":"checkout","match":{"route":"checkout"}},{"name":"audit","budget":"audit","match":{"route":"audit"}},{"name":"one","budget":"one","match":{"route":"one"}},{"name":"batch_exact","budget":"batch_app","match":{"application_name":"batch"}},{"name":"batch_with_host","budget":"batch_app","match":{"application_name":{"prefix":"batch - "}}},{"name":"untagged","budget":"untagged","default":true}]'
client_connection_check_interval = '100ms'
EOF
tc_start_cluster "$WORK/cluster" "$WORK/pgbouncer.conf"

set +e
/usr/bin/python3 "$TC_ROOT/test/integrations/pgbouncer_test.py" --workdir "$WORK/pgbouncer" \
  --pgbouncer "$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
status=$?
set -e
if [ "$status" -ne 0 ]; then
  for log in "$WORK"/pgbouncer/*.log; do
    echo "# $(basename "$log"):"; sed 's/^/# /' "$log" 2>/dev/null | tail -n 20 || true
  done
  echo "# server log:"; sed 's/^/# /' "$WORK/cluster/server.log" 2>/dev/null | tail -n 30 || true
fi
cleanup
trap - EXIT
if [ "$status" -eq 0 ]; then rm -rf "$WORK"; else echo "# work directory kept: $WORK"; fi
exit "$status"
