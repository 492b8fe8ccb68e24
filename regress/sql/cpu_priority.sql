-- cpu_priority: the backend runs at the budget's nice value (or SCHED_IDLE)
-- while a statement of the budget executes, and as before once it ends,
-- whichever way it ends. The test cluster runs with CAP_SYS_NICE (as
-- test/scripts/lib.sh starts it), so a lowered priority can be restored.
-- /proc/self/stat (fields after the command name): nice is the 17th,
-- the scheduling policy the 39th (0 = normal, 5 = SCHED_IDLE).
CREATE EXTENSION traffic_control;
CREATE FUNCTION pri_now(OUT nice int, OUT policy int, OUT pid int) LANGUAGE sql PARALLEL SAFE AS $$
  SELECT split_part(split_part(s, ') ', 2), ' ', 17)::int,
         split_part(split_part(s, ') ', 2), ' ', 39)::int,
         split_part(s, ' ', 1)::int
    FROM pg_read_file('/proc/self/stat') AS s
$$;
CREATE TABLE pri_big AS SELECT g AS id FROM generate_series(1, 200000) g;
ANALYZE pri_big;
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"pri_nice","mode":"enforce","cpu_priority":10},{"name":"pri_nicer","mode":"enforce","cpu_priority":15},{"name":"pri_idle","mode":"enforce","cpu_priority":"idle"},{"name":"pri_warn","mode":"warn","cpu_priority":19}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"pri_nice","budget":"pri_nice","match":{"pri":["nice","both"]}},{"name":"pri_nicer","budget":"pri_nicer","match":{"pri":["nicer","both"]}},{"name":"pri_idle","budget":"pri_idle","match":{"pri":"idle"}},{"name":"pri_warn","budget":"pri_warn","match":{"pri":"warn"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);

-- During the statement, and after it.
SELECT nice, policy FROM pri_now() /*pri='nice'*/;
SELECT nice, policy FROM pri_now();
SELECT nice, policy FROM pri_now() /*pri='idle'*/;
SELECT nice, policy FROM pri_now();
-- Several budgets: the weakest priority; a warn budget's is not applied.
SELECT nice, policy FROM pri_now() /*pri='both'*/;
SELECT nice, policy FROM pri_now() /*pri='warn'*/;

-- Restored whichever way the statement ends: an error, statement_timeout,
-- an error caught by an exception block (track = all: the nested statement
-- has its own priority), a utility statement.
\set VERBOSITY terse
SELECT 1 / (id - id) FROM pri_big /*pri='nice'*/;
SELECT nice, policy FROM pri_now();
SET statement_timeout = '100ms';
SELECT pg_sleep(5) /*pri='idle'*/;
RESET statement_timeout;
SELECT nice, policy FROM pri_now();
SET traffic_control.track = 'all';
DO $$
DECLARE n int;
BEGIN
  BEGIN
    EXECUTE 'SELECT 1 / 0 /*pri=''nicer''*/' INTO n;
  EXCEPTION WHEN division_by_zero THEN
    RAISE NOTICE 'after the nested error: %', (SELECT row(p.nice, p.policy)::text FROM pri_now() p);
  END;
END $$;
RESET traffic_control.track;
DO $$BEGIN RAISE NOTICE 'in a utility statement: %', (SELECT row(p.nice, p.policy)::text FROM pri_now() p); END$$ /*pri='nice'*/;
SELECT nice, policy FROM pri_now();

-- An open cursor keeps its statement's priority until it is closed.
BEGIN;
DECLARE pri_c CURSOR FOR SELECT id FROM pri_big /*pri='nice'*/;
FETCH 1 FROM pri_c;
SELECT nice, policy FROM pri_now();
CLOSE pri_c;
SELECT nice, policy FROM pri_now();
COMMIT;

-- Parallel workers run at their leader's priority (the workers read their
-- own /proc/self/stat; the leader only gathers).
SET max_parallel_workers_per_gather = 2;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET parallel_leader_participation = off;
SELECT DISTINCT p.nice AS worker_nice, p.pid <> pg_backend_pid() AS in_a_worker
  FROM pri_big, LATERAL pri_now() p /*pri='nicer'*/;
RESET ALL;
SELECT nice, policy FROM pri_now();

ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);
DROP TABLE pri_big;
DROP FUNCTION pri_now();
DROP EXTENSION traffic_control;
