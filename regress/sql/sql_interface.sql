-- The extension's SQL interface (CREATE EXTENSION traffic_control): the
-- status views budget_status, rule_status and pattern_estimates, explain()
-- and reset(), and who may use them. Enforcement itself needs none of it.
-- Timings vary from machine to machine, so costs are printed as comparisons.
-- Budget instances and their debt live in shared memory until a restart, so
-- the expected output is that of a cluster where this file did not run yet.
CREATE EXTENSION traffic_control;
\dx+ traffic_control

CREATE TABLE tc_sql_t (id int);
INSERT INTO tc_sql_t SELECT generate_series(1, 1000);
ANALYZE tc_sql_t;
CREATE ROLE tc_sql_plain LOGIN;
CREATE ROLE tc_sql_stats LOGIN IN ROLE pg_read_all_stats;
GRANT SELECT ON tc_sql_t TO tc_sql_stats;

-- One core is "the full server", so limits are plain CPU-seconds here.
ALTER SYSTEM SET traffic_control.server_cores = 1;
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"sql_shed","mode":"enforce","max_concurrent":0},{"name":"sql_warn","mode":"warn","max_concurrent":0},{"name":"sql_tenant","mode":"enforce","max_concurrent":5},{"name":"sql_one","mode":"enforce","max_concurrent":1},{"name":"sql_cost","mode":"warn","per_query_limit":1000,"server_share":0.001,"burst_limit":1000},{"name":"sql_tiny","mode":"enforce","per_query_limit":0},{"name":"sql_off","mode":"off","max_concurrent":0}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"shed","budget":"sql_shed","match":{"route":"shed"}},{"name":"warn","budget":"sql_warn","match":{"route":"warn"}},{"name":"tenant","budget":"sql_tenant","match":{"route":"tenant"},"each":"tenant"},{"name":"one","budget":"sql_one","match":{"route":"one"}},{"name":"cost","budget":"sql_cost","match":{"route":"cost"}},{"name":"tiny","budget":"sql_tiny","match":{"route":"tiny"}},{"name":"orphan","budget":"sql_missing","match":{"route":"orphan"}},{"name":"off","budget":"sql_off","match":{"route":"off"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
SELECT traffic_control.reset();

-- Every configured budget is listed, in configuration order, before any
-- statement matched it: zero counters, no instance.
SELECT budget, instance, mode, active, debt_seconds, admitted, warned, blocked,
       blocked_max_concurrent, blocked_per_query_limit, blocked_server_share, queued,
       last_blocked_at
  FROM traffic_control.budget_status WHERE budget LIKE 'sql\_%';
-- Every configured rule, in configuration order; a rule naming an unknown
-- budget says so.
SELECT * FROM traffic_control.rule_status;

-- Traffic: a refusal, a warning, three statements of two tenants.
SELECT 'ran' AS shed /*route='shed'*/;
SELECT 'ran' AS warned /*route='warn'*/;
SELECT 'ran' AS tenant /*route='tenant',tenant='acme'*/;
SELECT 'ran' AS tenant /*route='tenant',tenant='acme'*/;
SELECT 'ran' AS tenant /*route='tenant',tenant='globex'*/;
SELECT 'ran' AS off /*route='off'*/;

SELECT budget, instance, mode, active, admitted, warned, blocked, blocked_max_concurrent,
       blocked_per_query_limit, blocked_server_share, queued,
       last_blocked_at > now() - interval '5 minutes' AND last_blocked_at <= now()
         AS blocked_just_now
  FROM traffic_control.budget_status WHERE budget LIKE 'sql\_%';
-- matched counts refusals too (any outcome); off budgets never match.
SELECT rule, budget, matched FROM traffic_control.rule_status;

-- active: an open cursor holds the budget's slot until it is closed.
BEGIN;
DECLARE c1 CURSOR FOR SELECT id FROM tc_sql_t /*route='one'*/;
SELECT budget, active, admitted FROM traffic_control.budget_status WHERE budget = 'sql_one';
-- explain() sees the live state: a second statement would be refused now.
SELECT budget, rule, mode, decision, limit_name, detail
  FROM traffic_control.explain($$SELECT 1 /*route='one'*/$$);
CLOSE c1;
SELECT budget, decision, limit_name, detail
  FROM traffic_control.explain($$SELECT 1 /*route='one'*/$$);
COMMIT;
SELECT budget, active, admitted, blocked FROM traffic_control.budget_status WHERE budget = 'sql_one';

-- explain() plans without running, takes no slot and counts nothing:
-- explaining a statement of a max_concurrent 0 budget twice leaves the
-- counters as they were.
SELECT budget, instance, rule, mode, predicted_seconds, decision, limit_name, detail
  FROM traffic_control.explain($$SELECT 'x' /*route='shed'*/$$);
SELECT budget, decision FROM traffic_control.explain($$SELECT 'x' /*route='shed'*/$$);
SELECT budget, decision, limit_name FROM traffic_control.explain($$SELECT 'x' /*route='warn'*/$$);
SELECT budget, instance, decision
  FROM traffic_control.explain($$SELECT 'x' /*route='tenant',tenant='initech'*/$$);
SELECT budget, instance, active, admitted, warned, blocked
  FROM traffic_control.budget_status WHERE budget IN ('sql_shed', 'sql_warn', 'sql_tenant');
SELECT rule, matched FROM traffic_control.rule_status WHERE rule IN ('shed', 'warn', 'tenant');
-- An INSERT is planned, not run.
SELECT budget, decision, metadata->>'command' AS command
  FROM traffic_control.explain($$INSERT INTO tc_sql_t VALUES (0) /*route='shed'*/$$);
SELECT count(*) AS rows_after_explaining_an_insert FROM tc_sql_t;
-- The DETAIL is the one the statement gets when it really runs.
SET traffic_control.track = 'all';
DO $$
DECLARE
  explained text;
  refused text;
BEGIN
  SELECT detail INTO explained FROM traffic_control.explain('SELECT 2 /*route=''shed''*/');
  BEGIN
    EXECUTE 'SELECT 2 /*route=''shed''*/';
  EXCEPTION WHEN insufficient_resources THEN
    GET STACKED DIAGNOSTICS refused = PG_EXCEPTION_DETAIL;
  END;
  RAISE NOTICE 'explain() shows the DETAIL of the refusal: %', explained = refused;
END $$;
RESET traffic_control.track;

-- No budget applies: one row, admitted, with the metadata that was matched
-- (the built-ins of this session and the statement's tags).
SELECT budget, instance, rule, mode, predicted_seconds, decision, limit_name, detail,
       metadata->>'command' AS command, metadata->>'database' AS database,
       metadata->>'username' AS username, metadata->>'route' AS route,
       metadata ? 'query_id' AS has_query_id
  FROM traffic_control.explain($$SELECT id FROM tc_sql_t WHERE id = 7 /*route='nowhere'*/$$);
-- query_id and command come from the plan: the query id is PostgreSQL's own
-- (as EXPLAIN VERBOSE and pg_stat_statements show it; constants and tags
-- do not change it).
CREATE FUNCTION tc_sql_query_id(query text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  plan json;
BEGIN
  EXECUTE 'EXPLAIN (VERBOSE, FORMAT JSON) ' || query INTO plan;
  RETURN (plan->0->>'Query Identifier')::bigint;
END $$;
SELECT (metadata->>'query_id')::bigint = tc_sql_query_id('SELECT id FROM tc_sql_t WHERE id = 7')
         AS query_id_as_postgres_computes_it,
       metadata->>'query_id' = (SELECT metadata->>'query_id' FROM traffic_control.explain(
         'SELECT id FROM tc_sql_t WHERE id = 8 /*route=''elsewhere''*/')) AS same_pattern
  FROM traffic_control.explain('SELECT id FROM tc_sql_t WHERE id = 7');
SELECT metadata->>'command' AS command
  FROM traffic_control.explain($$UPDATE tc_sql_t SET id = id WHERE id < 0$$);
SELECT metadata->>'command' AS command
  FROM traffic_control.explain($$DELETE FROM tc_sql_t WHERE id < 0$$);
-- A utility statement is explained as the utility hook admits it.
SELECT budget, decision, metadata->>'command' AS command
  FROM traffic_control.explain($$CREATE TABLE tc_sql_never (id int) /*route='shed'*/$$);
-- A parallel plan counts 1 + its planned workers.
SET max_parallel_workers_per_gather = 2;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
ALTER TABLE tc_sql_t SET (parallel_workers = 2);
SELECT budget, decision, detail
  FROM traffic_control.explain($$SELECT count(*) FROM tc_sql_t /*route='shed'*/$$);
ALTER TABLE tc_sql_t RESET (parallel_workers);
RESET max_parallel_workers_per_gather;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
-- What explain() refuses to explain.
SELECT * FROM traffic_control.explain('SELECT 1; SELECT 2');
SELECT * FROM traffic_control.explain('BEGIN');
SELECT * FROM traffic_control.explain('EXECUTE some_statement');
SELECT * FROM traffic_control.explain('SELECT * FROM tc_sql_no_such_table');
SELECT * FROM traffic_control.explain('SELEC 1');
SELECT count(*) AS rows_for_null FROM traffic_control.explain(NULL);

-- pattern_estimates: what a budget with a cost limit taught the estimator.
-- A budget without server_share keeps no debt; this one has a tiny share,
-- so the CPU time its statements used stays as debt.
SET client_min_messages = warning;
SELECT count(*) FROM generate_series(1, 200000) /*route='cost'*/ \gset
SELECT count(*) FROM generate_series(1, 200000) /*route='cost'*/ \gset
SELECT count(*) FROM generate_series(1, 200000) /*route='cost'*/ \gset
RESET client_min_messages;
SELECT (SELECT (metadata->>'query_id')::bigint
          FROM traffic_control.explain('SELECT count(*) FROM generate_series(1, 200000)')) AS cost_query_id \gset
-- Every sample had a plan cost, so k (CPU-seconds per unit of plan cost) is
-- mean CPU / mean plan cost.
SELECT calls >= 1 AS learned, mean_cpu_ms > 0 AS cpu_measured,
       mean_plan_cost > 0 AS plan_cost_kept, k > 0 AS k_known,
       round((k * mean_plan_cost * 1000 / mean_cpu_ms)::numeric, 6) = 1 AS k_is_cpu_per_cost
  FROM traffic_control.pattern_estimates WHERE query_id = :cost_query_id;
SELECT budget, admitted, debt_seconds > 0 AS owes_cpu
  FROM traffic_control.budget_status WHERE budget = 'sql_cost';
-- Now explain() shows the prediction, and the same pattern (the tag is not
-- part of it) is refused by a per_query_limit of 0, with the prediction in
-- the DETAIL.
SELECT budget, predicted_seconds > 0 AS predicted, decision
  FROM traffic_control.explain($$SELECT count(*) FROM generate_series(1, 200000) /*route='cost'*/$$);
SELECT budget, predicted_seconds > 0 AS predicted, decision, limit_name,
       detail ~ '^Rule "tiny", predicted cost [0-9.e-]+ CPU-s, limit per_query_limit = 0 s of full-server use' AS detail_names_the_prediction
  FROM traffic_control.explain($$SELECT count(*) FROM generate_series(1, 200000) /*route='tiny'*/$$);

-- PL/pgSQL runs SELECT INTO through SPI with a row limit (1 row here): that
-- is how the function always runs the query, so the run teaches the
-- estimator. A cursor that fetched only part of its rows teaches nothing.
SET traffic_control.track = 'all';
DO $$
DECLARE total numeric;
BEGIN
  SELECT sum(g) INTO total FROM generate_series(1, 50000) AS g /*route='cost'*/;
END $$;
RESET traffic_control.track;
BEGIN;
DECLARE partial CURSOR FOR SELECT g FROM generate_series(1, 50000) AS g /*route='cost'*/;
FETCH 2 FROM partial;
COMMIT;
SELECT (SELECT (metadata->>'query_id')::bigint
          FROM traffic_control.explain('SELECT sum(g) FROM generate_series(1, 50000) AS g')) AS spi_query_id,
       (SELECT (metadata->>'query_id')::bigint
          FROM traffic_control.explain('SELECT g FROM generate_series(1, 50000) AS g')) AS cursor_query_id \gset
SELECT calls >= 1 AS select_into_learned, mean_cpu_ms > 0 AS cpu_measured
  FROM traffic_control.pattern_estimates WHERE query_id = :spi_query_id;
SELECT count(*) AS partial_cursor_learned
  FROM traffic_control.pattern_estimates WHERE query_id = :cursor_query_id;

-- Privileges. A plain role may read nothing and reset nothing.
SET ROLE tc_sql_plain;
SELECT * FROM traffic_control.budget_status;
SELECT * FROM traffic_control.rule_status;
SELECT * FROM traffic_control.pattern_estimates;
SELECT * FROM traffic_control.budget_status();
SELECT * FROM traffic_control.explain('SELECT 1');
SELECT traffic_control.reset();
RESET ROLE;
-- A member of pg_read_all_stats reads the views and may explain; the
-- metadata is its own (a tag cannot set a built-in key).
SET ROLE tc_sql_stats;
SELECT count(*) > 0 AS reads_budget_status FROM traffic_control.budget_status;
SELECT count(*) > 0 AS reads_rule_status FROM traffic_control.rule_status;
SELECT count(*) > 0 AS reads_pattern_estimates FROM traffic_control.pattern_estimates;
SELECT decision, metadata->>'username' AS username, metadata->>'route' AS route
  FROM traffic_control.explain($$SELECT 1 /*username='postgres',route='nowhere'*/$$);
SELECT traffic_control.reset();
RESET ROLE;
-- explain() plans as the current user: no plan for a table it may not read.
SET ROLE tc_sql_stats;
SELECT count(*) FROM traffic_control.explain('SELECT * FROM pg_authid');
RESET ROLE;
-- reset() checks for a superuser itself, even where EXECUTE was granted.
GRANT EXECUTE ON FUNCTION traffic_control.reset() TO tc_sql_plain;
SET ROLE tc_sql_plain;
SELECT traffic_control.reset();
RESET ROLE;
REVOKE EXECUTE ON FUNCTION traffic_control.reset() FROM tc_sql_plain;

-- reset() zeroes the counters (budgets and rules) but keeps what is live
-- (statements running, debt) and the learned estimates.
BEGIN;
DECLARE c2 CURSOR FOR SELECT id FROM tc_sql_t /*route='one'*/;
SELECT traffic_control.reset();
SELECT budget, instance, active, admitted, warned, blocked, blocked_max_concurrent,
       blocked_per_query_limit, blocked_server_share, queued, last_blocked_at
  FROM traffic_control.budget_status WHERE budget LIKE 'sql\_%';
COMMIT;
SELECT budget, active FROM traffic_control.budget_status WHERE budget = 'sql_one';
SELECT budget, debt_seconds > 0 AS still_owes FROM traffic_control.budget_status WHERE budget = 'sql_cost';
SELECT rule, matched FROM traffic_control.rule_status;
SELECT count(*) AS estimates_kept FROM traffic_control.pattern_estimates WHERE query_id = :cost_query_id;

-- Counters survive a reload. A renamed budget starts fresh; its old
-- instances stay, without a mode, until evicted. A rule that now names
-- another budget starts a fresh count.
SELECT 'ran' AS shed /*route='shed'*/;
SELECT 'ran' AS warned /*route='warn'*/;
SELECT rule, budget, matched FROM traffic_control.rule_status WHERE rule IN ('shed', 'warn');
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"sql_shed_renamed","mode":"warn","max_concurrent":0},{"name":"sql_warn","mode":"warn","max_concurrent":0}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"shed","budget":"sql_shed_renamed","match":{"route":"shed"}},{"name":"warn","budget":"sql_warn","match":{"route":"warn"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
SELECT 'ran' AS warned /*route='warn'*/;
SELECT budget, instance, mode, admitted, warned, blocked
  FROM traffic_control.budget_status WHERE budget LIKE 'sql\_%';
SELECT * FROM traffic_control.rule_status;

ALTER SYSTEM RESET traffic_control.server_cores;
ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);
DROP FUNCTION tc_sql_query_id(text);
DROP TABLE tc_sql_t;
DROP ROLE tc_sql_plain;
DROP ROLE tc_sql_stats;
DROP EXTENSION traffic_control;
DROP SCHEMA traffic_control;
