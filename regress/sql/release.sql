-- A concurrency slot is released exactly once on every path. Budget
-- "rel_one" allows one statement at a time: if any path below leaked its
-- slot, the next tagged statement would be refused.
CREATE TABLE tc_rel (id int);
INSERT INTO tc_rel SELECT generate_series(1, 1000);
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"rel_one","mode":"enforce","max_concurrent":1},{"name":"rel_two","mode":"enforce","max_concurrent":2},{"name":"rel_three","mode":"enforce","max_concurrent":3}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"rel_one","match":{"route":"one"}},{"budget":"rel_two","match":{"route":"two"}},{"budget":"rel_three","match":{"route":"three"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
\set VERBOSITY terse
\set probe 'SELECT count(*) AS probe FROM tc_rel /*route=''one''*/;'

-- Normal end.
:probe
:probe

-- An open cursor holds the slot; a second statement is refused; the
-- transaction's abort releases the cursor's slot.
BEGIN;
DECLARE c1 CURSOR FOR SELECT id FROM tc_rel /*route='one'*/;
FETCH 1 FROM c1;
:probe
ROLLBACK;
:probe

-- A cursor closed explicitly.
BEGIN;
DECLARE c2 CURSOR FOR SELECT id FROM tc_rel /*route='one'*/;
FETCH 1 FROM c2;
CLOSE c2;
:probe
COMMIT;

-- A cursor left open at COMMIT.
BEGIN;
DECLARE c3 CURSOR FOR SELECT id FROM tc_rel /*route='one'*/;
FETCH 1 FROM c3;
COMMIT;
:probe

-- A cursor WITH HOLD is materialized at commit: its slot is free after.
DECLARE c4 CURSOR WITH HOLD FOR SELECT id FROM tc_rel /*route='one'*/;
:probe
FETCH 1 FROM c4;
CLOSE c4;

-- A cursor rolled back to a savepoint.
BEGIN;
SAVEPOINT s1;
DECLARE c5 CURSOR FOR SELECT id FROM tc_rel /*route='one'*/;
ROLLBACK TO SAVEPOINT s1;
:probe
COMMIT;

-- ERROR during execution.
SELECT 1 / (id - id) FROM tc_rel /*route='one'*/;
:probe

-- statement_timeout.
SET statement_timeout = '100ms';
SELECT pg_sleep(5) /*route='one'*/;
RESET statement_timeout;
:probe

-- PL/pgSQL EXCEPTION blocks (subtransaction rollback), with nested
-- statements admitted (track = all). (PL/pgSQL drops a trailing comment from
-- the query of PERFORM and of FOR ... IN query LOOP, so the loops below use
-- EXECUTE; SELECT ... INTO keeps it.)
SET traffic_control.track = 'all';
DO $$
DECLARE n int;
BEGIN
  BEGIN
    SELECT 1 / (id - id) INTO n FROM tc_rel /*route='one'*/;
  EXCEPTION WHEN division_by_zero THEN
    RAISE NOTICE 'caught division_by_zero';
  END;
  BEGIN
    FOR n IN EXECUTE 'SELECT id FROM tc_rel /*route=''one''*/' LOOP
      RAISE EXCEPTION 'leave the loop with an error';
    END LOOP;
  EXCEPTION WHEN raise_exception THEN
    RAISE NOTICE 'caught the error raised inside a cursor loop';
  END;
  SELECT count(*) INTO n FROM tc_rel /*route='one'*/;
  RAISE NOTICE 'slot free inside the block: % rows', n;
END $$;
-- With track = all a statement nested in another of the same budget needs a
-- second slot.
DO $$
DECLARE n int; m int;
BEGIN
  FOR n IN EXECUTE 'SELECT id FROM tc_rel /*route=''one''*/' LOOP
    SELECT count(*) INTO m FROM tc_rel /*route='one'*/;
  END LOOP;
END $$;
RESET traffic_control.track;
:probe

-- A parallel plan counts 1 + its planned workers; in a budget of 2 units it
-- runs with the one worker that fits (regress test parallel shows the cut),
-- and either way its units are given back.
ALTER TABLE tc_rel SET (parallel_workers = 2);
SET max_parallel_workers_per_gather = 2;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
EXPLAIN (COSTS OFF) SELECT count(*) FROM tc_rel;
SELECT count(*) AS cut_to_two FROM tc_rel /*route='two'*/;
SELECT count(*) AS needs_three FROM tc_rel /*route='three'*/;
RESET max_parallel_workers_per_gather;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
:probe

ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);
DROP TABLE tc_rel;
