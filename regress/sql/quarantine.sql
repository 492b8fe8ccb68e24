-- quarantine_s: after a statement is canceled by its budget's max_duration_ms
-- or refused by its per_query_limit, the budget refuses its pattern (query
-- id, role, database) for quarantine_s seconds, before it runs: "quarantined".
-- Other patterns, other roles and budgets without quarantine_s are not
-- touched; a warn budget quarantines nothing; a quarantine ends by itself,
-- or when the budget's quarantine_s is removed. traffic_control.quarantine
-- lists what is quarantined; budget_status counts the refusals
-- (quarantined) and the CPU each budget's statements used (cpu_seconds).
CREATE EXTENSION traffic_control;
CREATE TABLE q_big (id int PRIMARY KEY, payload text);
INSERT INTO q_big SELECT g, md5(g::text) FROM generate_series(1, 300000) g;
ANALYZE q_big;
CREATE ROLE q_other;
GRANT SELECT ON q_big TO q_other;
-- One core is "the full server", so limits are plain CPU-seconds here.
ALTER SYSTEM SET traffic_control.server_cores = 1;
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"q_runaway","mode":"enforce","max_duration_ms":200,"quarantine_s":2},{"name":"q_plain","mode":"enforce","max_duration_ms":200},{"name":"q_cost","mode":"enforce","per_query_limit":0.005,"quarantine_s":30},{"name":"q_warn","mode":"warn","per_query_limit":0.005,"quarantine_s":30},{"name":"q_cpu","mode":"enforce","max_concurrent":5}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"q_runaway","budget":"q_runaway","match":{"q":"runaway"}},{"name":"q_plain","budget":"q_plain","match":{"q":"plain"}},{"name":"q_cost","budget":"q_cost","match":{"q":"cost"}},{"name":"q_warn","budget":"q_warn","match":{"q":"warn"}},{"name":"q_cpu","budget":"q_cpu","match":{"q":"cpu"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
\set VERBOSITY terse

-- A runaway statement is canceled; then its pattern is refused at once,
-- whatever its constants, without running. Another pattern still runs
-- (pg_sleep(5) would be one: an integer constant makes another query id).
SELECT pg_sleep(5.0) /*q='runaway'*/;
SELECT clock_timestamp() AS t0 \gset
SELECT pg_sleep(5.0) /*q='runaway'*/;
SELECT clock_timestamp() - :'t0' < interval '1 s' AS refused_without_running;
SELECT pg_sleep(0.01) /*q='runaway'*/;
SELECT 'another pattern runs' AS result /*q='runaway'*/;

-- The view: what, where, why and until when (within quarantine_s).
SELECT budget, reason, role = current_user AS this_role,
       database = current_database() AS this_database,
       until > now() AND until <= now() + interval '2.5 s' AS until_in_quarantine_s,
       query_id <> 0 AS has_query_id
  FROM traffic_control.quarantine;

-- The DETAIL and the HINT say why and for how long (numbers elided).
SET traffic_control.track = 'all';
DO $$
DECLARE
  state text; detail text; hint text;
BEGIN
  EXECUTE 'SELECT pg_sleep(0.01) /*q=''runaway''*/';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, detail = PG_EXCEPTION_DETAIL,
                          hint = PG_EXCEPTION_HINT;
  RAISE NOTICE '% / % / %', state, regexp_replace(detail, '[0-9]+([.][0-9]+)?', 'N', 'g'),
                            regexp_replace(hint, '[0-9]+', 'N', 'g');
END $$;
RESET traffic_control.track;

-- Another role's statements of the same pattern are its own pattern.
SET ROLE q_other;
SELECT pg_sleep(0.01) AS other_role_runs /*q='runaway'*/;
RESET ROLE;

-- A budget without quarantine_s cancels but quarantines nothing.
SELECT pg_sleep(5.0) /*q='plain'*/;
SELECT pg_sleep(0.01) AS plain_runs_again /*q='plain'*/;

-- The quarantine ends by itself.
SELECT pg_sleep(2.1);
SELECT pg_sleep(0.01) AS runs_after_the_quarantine /*q='runaway'*/;
SELECT count(*) AS quarantined_now FROM traffic_control.quarantine;

-- per_query_limit: learn the heavy pattern under a warn budget (patterns are
-- learned per role, database and query id, whatever the budget). A warn
-- budget warns and quarantines nothing.
SET client_min_messages = warning;
SELECT count(*) FROM q_big WHERE id <= 300000 AND payload LIKE '%abc%' /*q='warn'*/ \gset
SELECT count(*) FROM q_big WHERE id <= 300000 AND payload LIKE '%abc%' /*q='warn'*/ \gset
RESET client_min_messages;
SELECT count(*) > 0 AS ran FROM q_big WHERE id <= 300000 AND payload LIKE '%abc%' /*q='warn'*/;
SELECT count(*) AS quarantined_now FROM traffic_control.quarantine;
-- Enforce: refused by per_query_limit, and from then on quarantined, even
-- with constants that make it cheap enough for the limit.
SELECT count(*) FROM q_big WHERE id <= 300000 AND payload LIKE '%abc%' /*q='cost'*/;
SELECT count(*) FROM q_big WHERE id <= 10 AND payload LIKE '%abc%' /*q='cost'*/;
SELECT budget, reason FROM traffic_control.quarantine;
-- Not in another budget: q_warn only warns about the heavy statement.
SELECT count(*) FROM q_big WHERE id <= 10 AND payload LIKE '%abc%' /*q='warn'*/;

-- A reload that keeps quarantine_s keeps the quarantine; removing the
-- budget's quarantine_s ends it.
SELECT pg_reload_conf(), pg_sleep(0.3);
SELECT count(*) FROM q_big WHERE id <= 10 AND payload LIKE '%abc%' /*q='cost'*/;
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"q_runaway","mode":"enforce","max_duration_ms":200,"quarantine_s":2},{"name":"q_plain","mode":"enforce","max_duration_ms":200},{"name":"q_cost","mode":"enforce","per_query_limit":0.005},{"name":"q_warn","mode":"warn","per_query_limit":0.005,"quarantine_s":30},{"name":"q_cpu","mode":"enforce","max_concurrent":5}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
SELECT count(*) AS cheap_runs FROM q_big WHERE id <= 10 AND payload LIKE '%abc%' /*q='cost'*/;

-- A cancel caught by a PL/pgSQL block: with track = all the nested
-- statement is admitted itself, and its cancel quarantines its pattern.
SET traffic_control.track = 'all';
DO $$
BEGIN
  EXECUTE 'SELECT pg_sleep(5.0) /*q=''runaway''*/';
EXCEPTION WHEN query_canceled THEN
  RAISE NOTICE 'caught: %', SQLSTATE;
END $$;
RESET traffic_control.track;
SELECT budget, reason FROM traffic_control.quarantine WHERE budget = 'q_runaway';

-- budget_status: canceled, quarantined (refusals of a quarantine, also in
-- blocked), and cpu_seconds, measured for every budget: q_cpu only caps
-- concurrency.
SELECT count(*) FROM generate_series(1, 3000000) /*q='cpu'*/;
SELECT budget, canceled, quarantined, blocked, blocked_per_query_limit
  FROM traffic_control.budget_status WHERE budget LIKE 'q\_%' ORDER BY budget;
SELECT budget, cpu_seconds > 0.05 AS used_cpu, cpu_seconds < 30 AS plausible
  FROM traffic_control.budget_status WHERE budget IN ('q_cpu', 'q_warn') ORDER BY budget;
SELECT traffic_control.reset();
SELECT budget, quarantined, cpu_seconds FROM traffic_control.budget_status
  WHERE budget IN ('q_cpu', 'q_runaway') ORDER BY budget;

-- Only superusers and pg_read_all_stats read the view.
SET ROLE q_other;
SELECT * FROM traffic_control.quarantine;
RESET ROLE;

ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
ALTER SYSTEM RESET traffic_control.server_cores;
SELECT pg_reload_conf(), pg_sleep(0.5);
DROP TABLE q_big;
DROP ROLE q_other;
DROP EXTENSION traffic_control;
