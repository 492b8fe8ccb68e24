#!/usr/bin/env bash
# The demo (README): builds and installs traffic_control, starts a throwaway
# PostgreSQL 15 cluster with it preloaded, applies a critical / important /
# best-effort configuration and shows a shed query and a warned one while
# checkout keeps working. Everything is removed at the end.
set -euo pipefail
source "$(dirname "$0")/scripts/lib.sh"
cd "$TC_ROOT"

tc_install_dependencies
tc_build_and_install

WORK="$(mktemp -d /tmp/tc_demo.XXXXXX)"
chmod 755 "$WORK"
trap 'tc_stop_cluster "$WORK/cluster"; rm -rf "$WORK"' EXIT

cat >"$WORK/demo.conf" <<'CONF'
traffic_control.budgets = '[{"name":"critical","mode":"enforce","per_query_limit":2},{"name":"important","mode":"enforce","server_share":25,"max_concurrent":4},{"name":"best-effort","mode":"enforce","server_share":20,"max_concurrent":2},{"name":"reports-watch","mode":"warn","max_concurrent":1}]'
traffic_control.rules = '[{"name":"critical-traffic","budget":"critical","match":{"priority":"critical"}},{"name":"important-traffic","budget":"important","match":{"priority":"important"}},{"name":"best-effort-traffic","budget":"best-effort","match":{"priority":"bestEffort"}},{"name":"reports","budget":"reports-watch","match":{"route":"/reports"}}]'
CONF

tc_log "starting a throwaway cluster with traffic_control preloaded"
tc_start_cluster "$WORK/cluster" "$WORK/demo.conf"
psql() { command psql -X -v ON_ERROR_STOP=0 "$@"; }

tc_log "the configuration (postgresql.conf; change it with ALTER SYSTEM + pg_reload_conf())"
psql -Atc "SHOW traffic_control.budgets" | sed 's/},{/},\n {/g'
psql -Atc "SHOW traffic_control.rules" | sed 's/},{/},\n {/g'

psql -q <<'SQL'
CREATE TABLE orders (id bigserial PRIMARY KEY, customer int, amount numeric);
INSERT INTO orders (customer, amount) SELECT g % 1000, g FROM generate_series(1, 100000) g;
ANALYZE orders;
SQL

tc_log "two runaway best-effort analytics queries take both of best-effort's slots (max_concurrent 2)"
for i in 1 2; do
  psql -c "SELECT pg_sleep(4), count(*) FROM orders /*route='/analytics',priority='bestEffort'*/" >/dev/null 2>&1 &
done
sleep 1

tc_log "a third best-effort query is shed before it runs (SQLSTATE 53000)"
psql -v VERBOSITY=verbose -c "SELECT count(*) FROM orders /*route='/analytics',priority='bestEffort'*/" || true

tc_log "checkout (priority critical) keeps working meanwhile"
psql -c "\\timing on" -c "SELECT id, amount FROM orders WHERE id = 42 /*route='/checkout',priority='critical'*/"

tc_log "a report in a warn-mode budget runs, with a NOTICE saying it would have been blocked"
psql -c "SELECT pg_sleep(2) /*route='/reports'*/" >/dev/null 2>&1 &
sleep 0.5
psql -c "SELECT count(*) AS customers FROM (SELECT DISTINCT customer FROM orders) c /*route='/reports'*/"

wait
tc_log "once the runaway queries finish, best-effort traffic is admitted again"
psql -c "SELECT count(*) FROM orders /*route='/analytics',priority='bestEffort'*/"

tc_log "done: the throwaway cluster is removed"
