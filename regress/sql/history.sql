-- traffic_control.violation_history: per budget and minute, the statements
-- admitted, warned and refused by each limit. Counts are printed, not
-- timestamps; the budgets' names are used by no other test, so only this
-- file's statements are counted. A minute boundary may fall between the
-- statements and the query, so the counts are summed over the current and
-- the previous minute. The history lives in shared memory until a restart,
-- so the expected output is that of a cluster where this file did not run
-- yet.
CREATE EXTENSION traffic_control;
CREATE ROLE tc_hist_plain LOGIN;
CREATE ROLE tc_hist_stats LOGIN IN ROLE pg_read_all_stats;

ALTER SYSTEM SET traffic_control.server_cores = 1;
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"hist_shed","mode":"enforce","max_concurrent":0},{"name":"hist_warn","mode":"warn","max_concurrent":0},{"name":"hist_tenant","mode":"enforce","max_concurrent":5},{"name":"hist_tiny","mode":"enforce","per_query_limit":0},{"name":"hist_untouched","mode":"enforce","max_concurrent":5}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"shed","budget":"hist_shed","match":{"route":"shed"}},{"name":"warn","budget":"hist_warn","match":{"route":"warn"}},{"name":"tenant","budget":"hist_tenant","match":{"route":"tenant"},"each":"tenant"},{"name":"tiny","budget":"hist_tiny","match":{"route":"tiny"}},{"name":"both","budget":"hist_tenant","match":{"route":"both"},"each":"tenant"},{"name":"both_shed","budget":"hist_shed","match":{"route":"both"}},{"name":"untouched","budget":"hist_untouched","match":{"route":"untouched"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);

-- Nothing recorded yet for these budgets.
SELECT count(*) FROM traffic_control.violation_history WHERE budget LIKE 'hist\_%';

-- Three refusals, two warnings, three admissions of two `each` instances
-- (counted per budget), and one statement refused by hist_shed that
-- hist_tenant passed (it did not run: not admitted in hist_tenant).
\set VERBOSITY terse
SELECT 'ran' AS shed /*route='shed'*/;
SELECT 'ran' AS shed /*route='shed'*/;
SELECT 'ran' AS shed /*route='shed'*/;
SELECT 'ran' AS warned /*route='warn'*/;
SELECT 'ran' AS warned /*route='warn'*/;
SELECT 'ran' AS tenant /*route='tenant',tenant='acme'*/;
SELECT 'ran' AS tenant /*route='tenant',tenant='acme'*/;
SELECT 'ran' AS tenant /*route='tenant',tenant='globex'*/;
SELECT 'ran' AS both /*route='both',tenant='acme'*/;
\set VERBOSITY default

SELECT budget, sum(admitted) AS admitted, sum(warned) AS warned,
       sum(blocked_max_concurrent) AS blocked_max_concurrent,
       sum(blocked_per_query_limit) AS blocked_per_query_limit,
       sum(blocked_server_share) AS blocked_server_share,
       bool_and(minute >= date_trunc('minute', now()) - interval '1 minute'
                AND minute <= date_trunc('minute', now())) AS recent
  FROM traffic_control.violation_history
 WHERE budget LIKE 'hist\_%'
 GROUP BY budget ORDER BY budget;

-- Whole minutes only.
SELECT count(*) FILTER (WHERE minute <> date_trunc('minute', minute)) AS not_minutes
  FROM traffic_control.violation_history;

-- A per_query_limit refusal (a limit of 0 refuses any statement with a cost).
\set VERBOSITY terse
SELECT count(*) FROM generate_series(1, 200000) /*route='tiny'*/;
\set VERBOSITY default
SELECT budget, sum(admitted) AS admitted, sum(blocked_per_query_limit) AS blocked_per_query_limit
  FROM traffic_control.violation_history WHERE budget = 'hist_tiny' GROUP BY budget;

-- reset() does not clear the history.
SELECT traffic_control.reset();
SELECT sum(blocked_max_concurrent) AS blocked_after_reset
  FROM traffic_control.violation_history WHERE budget = 'hist_shed';

-- Privileges as the other views: superusers and pg_read_all_stats.
SET ROLE tc_hist_plain;
SELECT count(*) FROM traffic_control.violation_history;
SELECT count(*) FROM traffic_control.violation_history();
RESET ROLE;
SET ROLE tc_hist_stats;
SELECT count(*) > 0 AS sees_rows FROM traffic_control.violation_history;
RESET ROLE;

ALTER SYSTEM RESET traffic_control.server_cores;
ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);
DROP ROLE tc_hist_plain;
DROP ROLE tc_hist_stats;
DROP EXTENSION traffic_control;
DROP SCHEMA traffic_control;
