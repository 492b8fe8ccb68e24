-- The cost model: a pattern's cost is learned from the CPU time it really
-- used (plan cost x k); per_query_limit refuses a statement predicted too
-- expensive before it runs; server_share/burst_limit (a reverse leaky bucket)
-- refuses repeated statements that use up the share, with a retry hint.
-- Timings vary from machine to machine, so this file prints comparisons, not
-- durations.
CREATE TABLE tc_big (id int PRIMARY KEY, payload text);
INSERT INTO tc_big SELECT g, md5(g::text) FROM generate_series(1, 400000) g;
ANALYZE tc_big;
-- One core is "the full server", so limits are plain CPU-seconds here.
ALTER SYSTEM SET traffic_control.server_cores = 1;
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"reports","mode":"warn","per_query_limit":0.005}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"reports","budget":"reports","match":{"route":"/reports"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);

-- Learn the pattern in warn mode (a heavy plan: a sequential scan).
SET client_min_messages = warning;
SELECT clock_timestamp() AS t0 \gset
SELECT count(*) FROM tc_big WHERE id <= 400000 AND payload LIKE '%abc%' /*route='/reports'*/ \gset
SELECT extract(epoch FROM clock_timestamp() - :'t0') AS heavy_run_s \gset
SELECT count(*) FROM tc_big WHERE id <= 400000 AND payload LIKE '%abc%' /*route='/reports'*/ \gset
SELECT count(*) FROM tc_big WHERE id <= 400000 AND payload LIKE '%abc%' /*route='/reports'*/ \gset
RESET client_min_messages;
-- Now the prediction is known: warn mode sends the NOTICE and runs it.
\set VERBOSITY terse
SELECT count(*) > 0 AS ran FROM tc_big WHERE id <= 400000 AND payload LIKE '%abc%' /*route='/reports'*/;

-- Enforce: the heavy statement is refused before it runs, so refusing it
-- costs a small fraction of running it.
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"reports","mode":"enforce","per_query_limit":0.005}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
SELECT clock_timestamp() AS t1 \gset
SELECT count(*) > 0 AS ran FROM tc_big WHERE id <= 400000 AND payload LIKE '%abc%' /*route='/reports'*/;
SELECT extract(epoch FROM clock_timestamp() - :'t1') AS refusal_s \gset
SELECT :refusal_s < :heavy_run_s / 4 AS refusal_costs_a_fraction_of_a_run;
-- Session settings cannot buy admission: with every planner cost constant
-- made tiny the session's plan costs nearly nothing, yet admission judges the
-- plan the server's settings make, so the prediction and the refusal stay.
CREATE EXTENSION traffic_control;
SELECT predicted_seconds AS server_prediction FROM traffic_control.explain(
  $q$SELECT count(*) FROM tc_big WHERE id <= 400000 AND payload LIKE '%abc%' /*route='/reports'*/$q$) \gset
SET cpu_tuple_cost = 1e-9;
SET cpu_operator_cost = 1e-9;
SET seq_page_cost = 1e-9;
SET random_page_cost = 1e-9;
SET parallel_tuple_cost = 1e-9;
SET parallel_setup_cost = 0;
SELECT count(*) > 0 AS ran FROM tc_big WHERE id <= 400000 AND payload LIKE '%abc%' /*route='/reports'*/;
SELECT abs(predicted_seconds - :server_prediction) <= 1e-6 * :server_prediction AS same_prediction
  FROM traffic_control.explain(
  $q$SELECT count(*) FROM tc_big WHERE id <= 400000 AND payload LIKE '%abc%' /*route='/reports'*/$q$);
-- The session's settings are back as it set them after each statement.
SHOW cpu_tuple_cost;
RESET cpu_tuple_cost;
RESET cpu_operator_cost;
RESET seq_page_cost;
RESET random_page_cost;
RESET parallel_tuple_cost;
RESET parallel_setup_cost;
DROP EXTENSION traffic_control;
-- The same pattern with a cheap plan (an index lookup) is predicted cheap and
-- runs in the same budget.
SELECT count(*) AS light FROM tc_big WHERE id <= 10 AND payload LIKE '%abc%' /*route='/reports'*/;

-- server_share: 10% of the server with a burst of 0.3 CPU-seconds. Repeated
-- moderate statements use up the burst and are refused with a retry hint;
-- after waiting that long, the next one is admitted.
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"share","mode":"enforce","server_share":10,"burst_limit":0.3}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"share","budget":"share","match":{"route":"/share"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
SET traffic_control.track = 'all';
CREATE TEMP TABLE tc_share_result (admitted int, refused bool, message text, hint text, retry_ms int, admitted_after_wait bool);
DO $$
DECLARE
  admitted int := 0;
  refused bool := false;
  message text;
  hint text;
  retry_ms int;
  retried bool := false;
  n bigint;
BEGIN
  FOR i IN 1..200 LOOP
    BEGIN
      EXECUTE 'SELECT count(*) FROM tc_big WHERE payload LIKE ''%ab%'' /*route=''/share''*/' INTO n;
      admitted := admitted + 1;
    EXCEPTION WHEN insufficient_resources THEN
      GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
      refused := true;
      EXIT;
    END;
  END LOOP;
  retry_ms := substring(hint FROM 'retry after ([0-9]+) ms')::int;
  IF retry_ms IS NOT NULL THEN
    PERFORM pg_sleep((retry_ms + 50) / 1000.0);  -- a little slack for clock granularity
    BEGIN
      EXECUTE 'SELECT count(*) FROM tc_big WHERE payload LIKE ''%ab%'' /*route=''/share''*/' INTO n;
      retried := true;
    EXCEPTION WHEN insufficient_resources THEN
      retried := false;
    END;
  END IF;
  INSERT INTO tc_share_result VALUES (admitted, refused, message, hint, retry_ms, retried);
END $$;
RESET traffic_control.track;
SELECT admitted BETWEEN 1 AND 199 AS some_admitted_first, refused, message,
       hint ~ '^retry after [0-9]+ ms$' AS hint_has_retry_after, retry_ms > 0 AS must_wait,
       admitted_after_wait
  FROM tc_share_result;

-- server_share 0 sheds everything, with no retry hint (a retry cannot help).
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"share","mode":"enforce","server_share":0}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
SELECT 1 AS shed /*route='/share'*/;
SET traffic_control.track = 'all';
DO $$
DECLARE hint text;
BEGIN
  EXECUTE 'SELECT 1 /*route=''/share''*/';
EXCEPTION WHEN insufficient_resources THEN
  GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
  RAISE NOTICE 'shed without a retry hint: %', coalesce(hint, '') = '';
END $$;
RESET traffic_control.track;

ALTER SYSTEM RESET traffic_control.server_cores;
ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);
DROP TABLE tc_big;
