-- traffic_control.shed() / unshed() (extension 1.1): the emergency lever;
-- and budget_status's 1.1 columns (configured limits, utilization_pct).
-- A shed budget refuses all its statements until the shed ends, whatever
-- its mode and limits; the shed survives a reload (not a restart: TAP
-- 002); only superusers can shed. Also: ALTER EXTENSION UPDATE from 1.0.

-- 1.0, then the update to 1.1: the functions and budget_status columns appear.
CREATE EXTENSION traffic_control VERSION '1.0';
SELECT extversion FROM pg_extension WHERE extname = 'traffic_control';
SELECT count(*) AS shed_functions FROM pg_proc WHERE proname IN ('shed', 'unshed');
ALTER EXTENSION traffic_control UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'traffic_control';
SELECT attname FROM pg_attribute
 WHERE attrelid = 'traffic_control.budget_status'::regclass AND attnum > 12 ORDER BY attnum;
DROP EXTENSION traffic_control;
CREATE EXTENSION traffic_control;
SELECT extversion FROM pg_extension WHERE extname = 'traffic_control';

ALTER SYSTEM SET traffic_control.budgets = '[{"name":"shed_be","mode":"warn","max_concurrent":100},{"name":"shed_critical","mode":"enforce","max_concurrent":100}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"shed_analytics","budget":"shed_be","match":{"shed":"be"}},{"name":"shed_checkout","budget":"shed_critical","match":{"shed":"critical"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);

SELECT 'runs' AS before_the_shed /*shed='be'*/;
SELECT traffic_control.shed('shed_be', '1 hour') > now() + interval '59 minutes' AS shed_for_an_hour;
-- Refused though the budget only warns; the DETAIL and HINT say for how long.
\set VERBOSITY terse
SELECT 'runs' AS while_shed /*shed='be'*/;
SET traffic_control.track = 'all';
DO $$
DECLARE detail text; hint text;
BEGIN
  EXECUTE 'SELECT 1 /*shed=''be''*/';
EXCEPTION WHEN insufficient_resources THEN
  GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
  RAISE NOTICE 'detail: %', regexp_replace(detail, 'another [0-9.]+ s', 'another N s');
  RAISE NOTICE 'retry after about an hour: %',
    substring(hint FROM 'retry after ([0-9]+) ms')::bigint BETWEEN 3590000 AND 3600000;
END $$;
RESET traffic_control.track;
SELECT 'runs' AS other_budgets_run /*shed='critical'*/;
SELECT 'runs' AS untagged_runs;
SELECT budget, blocked, blocked_shed, blocked_max_concurrent,
       shed_until BETWEEN now() + interval '59 minutes' AND now() + interval '61 minutes' AS shed_until_in_an_hour
  FROM traffic_control.budget_status WHERE budget LIKE 'shed%' ORDER BY budget;

-- A reload does not end it, even one that changes the budget's limits.
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"shed_be","mode":"enforce","max_concurrent":50},{"name":"shed_critical","mode":"enforce","max_concurrent":100}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
SELECT 'runs' AS after_a_reload /*shed='be'*/;
-- Nor does a new session see it otherwise.
\c
SELECT 'runs' AS in_a_new_session /*shed='be'*/;

-- Only superusers.
CREATE ROLE tc_shed_user LOGIN;
SET ROLE tc_shed_user;
SELECT traffic_control.shed('shed_critical', '1 minute');
SELECT traffic_control.unshed('shed_be');
RESET ROLE;
-- Even with EXECUTE granted.
GRANT EXECUTE ON FUNCTION traffic_control.shed(text, interval) TO tc_shed_user;
SET ROLE tc_shed_user;
\set VERBOSITY default
SELECT traffic_control.shed('shed_critical', '1 minute');
\set VERBOSITY terse
RESET ROLE;
REVOKE EXECUTE ON FUNCTION traffic_control.shed(text, interval) FROM tc_shed_user;
DROP ROLE tc_shed_user;

-- Bad input: an unknown budget, a duration that is not positive.
SELECT traffic_control.shed('no_such_budget', '1 minute');
SELECT traffic_control.shed('shed_critical', '0 seconds');
SELECT traffic_control.shed('shed_critical', '-5 minutes');

-- unshed: true when it was shed; the budget runs again at once.
SELECT traffic_control.unshed('shed_be') AS was_shed;
SELECT traffic_control.unshed('shed_be') AS was_shed_again;
SELECT 'runs' AS after_unshed /*shed='be'*/;
SELECT budget, shed_until FROM traffic_control.budget_status WHERE budget LIKE 'shed%' ORDER BY budget;

-- A shed ends by itself.
SELECT traffic_control.shed('shed_critical', '1 second') IS NOT NULL AS shed_briefly;
SELECT 'refused' AS during_the_short_shed /*shed='critical'*/;
SELECT pg_sleep(1.2);
SELECT 'runs' AS after_the_short_shed /*shed='critical'*/;

-- budget_status shows the configured limits and how full the fullest one
-- that fills over time is: 1 running of max_concurrent 4 is 25 %; a budget
-- with only per_query_limit has no utilization; server_cores = 2.
ALTER SYSTEM SET traffic_control.server_cores = 2;
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"shed_conc","mode":"enforce","max_concurrent":4},{"name":"shed_share","mode":"warn","server_share":50,"burst_limit":3,"per_query_limit":1.5},{"name":"shed_pq","mode":"enforce","per_query_limit":2}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"shed_conc","match":{"shed":"conc"}},{"budget":"shed_share","match":{"shed":"share"}},{"budget":"shed_pq","match":{"shed":"pq"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
BEGIN;
DECLARE held CURSOR FOR SELECT 1 /*shed='conc'*/;
FETCH held;
SELECT budget, max_concurrent, per_query_limit, server_share, burst_limit, utilization_pct
  FROM traffic_control.budget_status
 WHERE budget IN ('shed_conc', 'shed_share', 'shed_pq') ORDER BY budget;
COMMIT;
SELECT budget, utilization_pct FROM traffic_control.budget_status WHERE budget = 'shed_conc';

ALTER SYSTEM RESET traffic_control.server_cores;
ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);
DROP EXTENSION traffic_control;
