-- max_duration_ms: a statement of an enforce budget still running after
-- its budget's max_duration_ms is canceled (SQLSTATE 57014) with the
-- budget's message; its slot is released and the CPU it used is charged.
-- A warn budget's statement runs on, with a NOTICE when it ends.
CREATE EXTENSION traffic_control;
CREATE TABLE dur_big AS SELECT g AS id FROM generate_series(1, 300000) g;
ANALYZE dur_big;
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"dur_cancel","mode":"enforce","max_duration_ms":300,"max_concurrent":5,"server_share":1,"burst_limit":100},{"name":"dur_warn","mode":"warn","max_duration_ms":200},{"name":"dur_long","mode":"enforce","max_duration_ms":60000}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"dur_cancel","budget":"dur_cancel","match":{"dur":"cancel"}},{"name":"dur_warn","budget":"dur_warn","match":{"dur":"warn"}},{"name":"dur_long","budget":"dur_long","match":{"dur":"long"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);

-- Fast statements are not touched.
SELECT count(*) FROM dur_big WHERE id < 10 /*dur='cancel'*/;

-- Canceled: the budget's message, SQLSTATE 57014, the slot given back.
\set VERBOSITY verbose
SELECT pg_sleep(5) /*dur='cancel'*/;
\set VERBOSITY default
SELECT budget, active FROM traffic_control.budget_status WHERE budget = 'dur_cancel';

-- A CPU-bound statement: canceled too, and the CPU it used is charged to
-- the budget's bucket.
SELECT count(*) FROM generate_series(1, 500000000) /*dur='cancel'*/;
SELECT budget, active, debt_seconds > 0.1 AS charged_its_cpu
  FROM traffic_control.budget_status WHERE budget = 'dur_cancel';

-- A PL/pgSQL block sees the cancel as query_canceled.
SET traffic_control.track = 'all';
DO $$
BEGIN
  EXECUTE 'SELECT pg_sleep(5) /*dur=''cancel''*/';
EXCEPTION WHEN query_canceled THEN
  RAISE NOTICE 'caught: %', SQLSTATE;
END $$;
RESET traffic_control.track;
SELECT budget, active FROM traffic_control.budget_status WHERE budget = 'dur_cancel';

-- statement_timeout, when shorter, still wins with its own message.
SET statement_timeout = '100ms';
SELECT pg_sleep(5) /*dur='cancel'*/;
RESET statement_timeout;

-- The timer ends with the statement: the next statement of the session is
-- not canceled by it, nor is a user's cancel given the budget's text.
SELECT count(*) FROM dur_big WHERE id < 10 /*dur='cancel'*/;
SELECT pg_sleep(0.5);

-- A warn budget: the statement runs to its end, then the NOTICE.
SELECT pg_sleep(0.4), 'finished' AS result /*dur='warn'*/;
-- ... and none for a statement within the limit.
SELECT 'quick' AS result /*dur='warn'*/;

-- A cursor holds its timer until it is closed.
BEGIN;
DECLARE slow CURSOR FOR SELECT pg_sleep(0.2) FROM generate_series(1, 5) /*dur='cancel'*/;
FETCH 1 FROM slow;
FETCH 1 FROM slow;
FETCH 1 FROM slow;
ROLLBACK;
-- canceled: the four cancels above (sleep, CPU-bound, caught in PL/pgSQL, cursor).
SELECT budget, active, canceled FROM traffic_control.budget_status WHERE budget = 'dur_cancel';

-- A long limit never fires for a short statement.
SELECT pg_sleep(0.1), 'ran' AS result /*dur='long'*/;

-- Bad values are rejected, naming the field.
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"x","max_duration_ms":0}]';
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"x","max_duration_ms":"5s"}]';

ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);
DROP TABLE dur_big;
DROP EXTENSION traffic_control;
