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

-- A parallel plan that does not fit runs with the workers that do: refused
-- only when not even its leader fits. (Before, max_concurrent 1 refused
-- every parallel plan forever: it counts 1 + its workers.) EXPLAIN ANALYZE
-- shows the workers it ran with; EXPLAIN alone is not admitted.
CREATE FUNCTION par_workers(query text, run bool) RETURNS int LANGUAGE plpgsql AS $$
DECLARE plan json;
BEGIN
  EXECUTE format('EXPLAIN (ANALYZE %s, COSTS OFF, TIMING OFF, SUMMARY OFF, FORMAT JSON) %s',
                 CASE WHEN run THEN 'true' ELSE 'false' END, query) INTO plan;
  RETURN jsonb_path_query_first(plan::jsonb, 'lax $.**."Workers Planned"')::int;
END $$;
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"par_one","mode":"enforce","max_concurrent":1},{"name":"par_two","mode":"enforce","max_concurrent":2},{"name":"par_capped","mode":"enforce","max_parallel_workers":1},{"name":"par_none","mode":"enforce","max_parallel_workers":0},{"name":"par_watch","mode":"warn","max_concurrent":1}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"par_one","budget":"par_one","match":{"run":"one"}},{"name":"par_two","budget":"par_two","match":{"run":"two"}},{"name":"par_capped","budget":"par_capped","match":{"run":"capped"}},{"name":"par_none","budget":"par_none","match":{"run":"none"}},{"name":"par_watch","budget":"par_watch","match":{"run":"watch"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
SET max_parallel_workers_per_gather = 3;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET traffic_control.track = 'all';  -- par_workers runs the statement nested
SELECT run, par_workers(format('SELECT count(*) FROM par_big /*run=%L*/', run), false) AS planned,
       par_workers(format('SELECT count(*) FROM par_big /*run=%L*/', run), true) AS ran_with
  FROM unnest(ARRAY['one', 'two', 'capped', 'none', 'watch']) AS run;
-- The result is the same with fewer workers.
SELECT count(*) FROM par_big /*run='one'*/;
-- A cursor holds par_two's first unit: a parallel plan gets the one left.
BEGIN;
DECLARE par_c CURSOR FOR SELECT id FROM par_big /*run='two'*/;
FETCH 1 FROM par_c;
SELECT par_workers('SELECT count(*) FROM par_big /*run=''two''*/', true) AS ran_with_one_unit_left;
COMMIT;
-- With par_one's only unit held, not even a leader fits: refused.
BEGIN;
DECLARE par_d CURSOR FOR SELECT id FROM par_big /*run='one'*/;
FETCH 1 FROM par_d;
\set VERBOSITY terse
SELECT count(*) FROM par_big /*run='one'*/;
\set VERBOSITY default
ROLLBACK;
RESET ALL;
DROP FUNCTION par_workers(text, bool);

ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);
DROP TABLE par_big;
DROP EXTENSION traffic_control;
