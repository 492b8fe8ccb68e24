-- Parallel plans: a statement is charged the CPU its parallel workers used,
-- not its leader's alone (buckets and estimator). Two budgets with a bucket
-- that drains nothing meanwhile: the debt left is the CPU charged.
CREATE EXTENSION traffic_control;
CREATE TABLE par_big AS SELECT g AS id, md5(g::text) AS payload FROM generate_series(1, 300000) g;
ANALYZE par_big;
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"par_serial","mode":"warn","server_share":0.0001,"burst_limit":1000},{"name":"par_parallel","mode":"warn","server_share":0.0001,"burst_limit":1000}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"par_serial","budget":"par_serial","match":{"run":"serial"}},{"name":"par_parallel","budget":"par_parallel","match":{"run":"parallel"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);

-- The same work serially, then by two workers with a leader that only
-- gathers their results.
SET max_parallel_workers_per_gather = 0;
SELECT count(*) FROM par_big WHERE md5(payload) LIKE '%ab%' /*run='serial'*/;
SET max_parallel_workers_per_gather = 2;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET parallel_leader_participation = off;
EXPLAIN (COSTS OFF) SELECT count(*) FROM par_big WHERE md5(payload) LIKE '%ab%' /*run='parallel'*/;
SELECT count(*) FROM par_big WHERE md5(payload) LIKE '%ab%' /*run='parallel'*/;
RESET ALL;
SELECT (SELECT debt_seconds FROM traffic_control.budget_status WHERE budget = 'par_serial') AS serial_cpu \gset
SELECT debt_seconds > 0.5 * :serial_cpu AS workers_charged
  FROM traffic_control.budget_status WHERE budget = 'par_parallel';

ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);
DROP TABLE par_big;
DROP EXTENSION traffic_control;
