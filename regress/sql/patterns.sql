-- Patterns are learned per (role, database, query id), as pg_stat_statements
-- keys them: what one role runs cannot change another role's predictions,
-- neither for a query id both run nor for a pattern the other role has not
-- run yet (an unseen pattern is predicted from its own role's history only,
-- and is unknown while that role has none).
-- Timings vary from machine to machine, so this file prints comparisons, not
-- durations; a prediction is compared bit for bit (float8send).
CREATE EXTENSION traffic_control;
CREATE TABLE tc_pat (id int PRIMARY KEY, payload text);
INSERT INTO tc_pat SELECT g, md5(g::text) FROM generate_series(1, 200000) g;
ANALYZE tc_pat;
CREATE ROLE tc_pat_a;
CREATE ROLE tc_pat_b;
GRANT SELECT ON tc_pat TO tc_pat_a, tc_pat_b;
GRANT EXECUTE ON FUNCTION traffic_control.explain(text) TO tc_pat_a, tc_pat_b;

-- A warn budget whose limit nothing reaches: every statement it matches is
-- measured and learned from, and none is warned.
ALTER SYSTEM SET traffic_control.server_cores = 1;
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"pat_cost","mode":"warn","per_query_limit":1000}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"pat_cost","budget":"pat_cost","match":{"route":"/pat"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);

-- Pattern Q: role A runs it over the whole table, role B over a slice (the
-- constant is not part of the query id). Pattern R: another query id.
SELECT (SELECT (metadata->>'query_id')::bigint FROM traffic_control.explain(
          $$SELECT count(*) FROM tc_pat WHERE id <= 1 AND payload LIKE '%abc%'$$)) AS q_id,
       (SELECT (metadata->>'query_id')::bigint FROM traffic_control.explain(
          $$SELECT count(*) FROM tc_pat WHERE payload LIKE '%ff%'$$)) AS r_id \gset
SELECT :q_id <> :r_id AS two_patterns;

-- 1. New roles have no history: their predictions are unknown, whatever
-- other roles (the earlier tests' superuser) taught the estimator.
SET ROLE tc_pat_b;
SELECT metadata->>'username' AS explained_as, predicted_seconds IS NULL AS b_q_unknown
  FROM traffic_control.explain($$SELECT count(*) FROM tc_pat WHERE id <= 100000 AND payload LIKE '%abc%' /*route='/pat'*/$$);
RESET ROLE;

-- 2. Role A learns Q (a heavy plan: the whole table).
SET ROLE tc_pat_a;
SELECT count(*) FROM tc_pat WHERE id <= 200000 AND payload LIKE '%abc%' /*route='/pat'*/ \gset
SELECT count(*) FROM tc_pat WHERE id <= 200000 AND payload LIKE '%abc%' /*route='/pat'*/ \gset
SELECT count(*) FROM tc_pat WHERE id <= 200000 AND payload LIKE '%abc%' /*route='/pat'*/ \gset
SELECT count(*) FROM tc_pat WHERE id <= 200000 AND payload LIKE '%abc%' /*route='/pat'*/ \gset
SELECT count(*) FROM tc_pat WHERE id <= 200000 AND payload LIKE '%abc%' /*route='/pat'*/ \gset
SELECT predicted_seconds > 0 AS a_q_known
  FROM traffic_control.explain($$SELECT count(*) FROM tc_pat WHERE id <= 200000 AND payload LIKE '%abc%' /*route='/pat'*/$$);
RESET ROLE;
-- B still knows nothing: neither Q (A's pattern) nor R (nobody's yet).
SET ROLE tc_pat_b;
SELECT predicted_seconds IS NULL AS b_q_still_unknown
  FROM traffic_control.explain($$SELECT count(*) FROM tc_pat WHERE id <= 100000 AND payload LIKE '%abc%' /*route='/pat'*/$$);
SELECT predicted_seconds IS NULL AS b_r_unknown
  FROM traffic_control.explain($$SELECT count(*) FROM tc_pat WHERE payload LIKE '%ff%' /*route='/pat'*/$$);
RESET ROLE;

-- 3. Role B learns Q from its own runs (a lighter plan: half the table).
SET ROLE tc_pat_b;
SELECT count(*) FROM tc_pat WHERE id <= 100000 AND payload LIKE '%abc%' /*route='/pat'*/ \gset
SELECT count(*) FROM tc_pat WHERE id <= 100000 AND payload LIKE '%abc%' /*route='/pat'*/ \gset
SELECT count(*) FROM tc_pat WHERE id <= 100000 AND payload LIKE '%abc%' /*route='/pat'*/ \gset
SELECT encode(float8send(predicted_seconds), 'hex') AS b_q_before
  FROM traffic_control.explain($$SELECT count(*) FROM tc_pat WHERE id <= 100000 AND payload LIKE '%abc%' /*route='/pat'*/$$) \gset
-- R, unseen by B, is now predicted from B's own history.
SELECT encode(float8send(predicted_seconds), 'hex') AS b_r_before
  FROM traffic_control.explain($$SELECT count(*) FROM tc_pat WHERE payload LIKE '%ff%' /*route='/pat'*/$$) \gset
RESET ROLE;
SELECT :'b_q_before' <> '' AS b_q_known, :'b_r_before' <> '' AS b_r_known_from_b_alone;
-- One row per (role, database, query id): Q has A's and B's, each with its
-- own samples.
SELECT count(*) AS q_rows, array_agg(calls ORDER BY calls) AS calls_per_role
  FROM traffic_control.pattern_estimates WHERE query_id = :q_id;
SELECT count(*) AS r_rows FROM traffic_control.pattern_estimates WHERE query_id = :r_id;

-- 4. Role A runs Q and R many more times, at its own cost profile.
SET ROLE tc_pat_a;
SELECT count(*) FROM tc_pat WHERE id <= 200000 AND payload LIKE '%abc%' /*route='/pat'*/ \gset
SELECT count(*) FROM tc_pat WHERE id <= 200000 AND payload LIKE '%abc%' /*route='/pat'*/ \gset
SELECT count(*) FROM tc_pat WHERE id <= 200000 AND payload LIKE '%abc%' /*route='/pat'*/ \gset
SELECT count(*) FROM tc_pat WHERE id <= 200000 AND payload LIKE '%abc%' /*route='/pat'*/ \gset
SELECT count(*) FROM tc_pat WHERE id <= 200000 AND payload LIKE '%abc%' /*route='/pat'*/ \gset
SELECT count(*) FROM tc_pat WHERE payload LIKE '%ff%' /*route='/pat'*/ \gset
SELECT count(*) FROM tc_pat WHERE payload LIKE '%ff%' /*route='/pat'*/ \gset
SELECT count(*) FROM tc_pat WHERE payload LIKE '%ff%' /*route='/pat'*/ \gset
RESET ROLE;
-- B's predictions are exactly what they were: its pattern Q and its
-- fallback for R moved with none of A's samples.
SET ROLE tc_pat_b;
SELECT encode(float8send(predicted_seconds), 'hex') = :'b_q_before' AS b_q_unchanged
  FROM traffic_control.explain($$SELECT count(*) FROM tc_pat WHERE id <= 100000 AND payload LIKE '%abc%' /*route='/pat'*/$$);
SELECT encode(float8send(predicted_seconds), 'hex') = :'b_r_before' AS b_r_unchanged
  FROM traffic_control.explain($$SELECT count(*) FROM tc_pat WHERE payload LIKE '%ff%' /*route='/pat'*/$$);
RESET ROLE;
SELECT count(*) AS q_rows, array_agg(calls ORDER BY calls) AS calls_per_role
  FROM traffic_control.pattern_estimates WHERE query_id = :q_id;
SELECT count(*) AS r_rows, array_agg(calls) AS calls
  FROM traffic_control.pattern_estimates WHERE query_id = :r_id;

ALTER SYSTEM RESET traffic_control.server_cores;
ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);
DROP TABLE tc_pat;
DROP EXTENSION traffic_control;
DROP ROLE tc_pat_a;
DROP ROLE tc_pat_b;
