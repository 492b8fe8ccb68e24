-- Admission that cannot be walked around (contract 1.1): what the client
-- runs is admitted once wherever it executes, work the server starts by
-- itself is never admitted, the control plane is never shed, the policy is
-- not readable by every role, a failing NOTICE cannot leak a slot, and every
-- backend applies a reload whatever it runs.
CREATE EXTENSION traffic_control;
\set regress_database :DBNAME
CREATE TABLE wa_items (id int);
INSERT INTO wa_items SELECT generate_series(1, 100);
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"wa_shed","mode":"enforce","max_concurrent":0},{"name":"wa_one","mode":"enforce","max_concurrent":1},{"name":"wa_warn","mode":"warn","max_concurrent":0},{"name":"wa_select","mode":"enforce","max_concurrent":0},{"name":"wa_tenant","mode":"warn","max_concurrent":0}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"wa_shed","budget":"wa_shed","match":{"route":"shed"}},{"name":"wa_one","budget":"wa_one","match":{"route":["one","enc"]}},{"name":"wa_warn","budget":"wa_warn","match":{"route":"warn"}},{"name":"wa_select","budget":"wa_select","match":{"command":"select","application_name":"wa_no_select"}},{"name":"wa_tenant","budget":"wa_tenant","match":{"route":"enc"},"each":"tenant"}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
\set VERBOSITY terse

-- 1. A cursor opened inside DO (or a function) and fetched at top level is
-- admitted at its first top-level fetch.
BEGIN;
DO $$DECLARE c refcursor := 'wa_c1'; BEGIN
  OPEN c FOR EXECUTE 'SELECT id FROM wa_items WHERE id <= 3 /*route=''shed''*/';
END$$;
FETCH ALL FROM wa_c1;
ROLLBACK;
CREATE FUNCTION wa_open(name text, query text) RETURNS refcursor LANGUAGE plpgsql AS $$
DECLARE c refcursor := name;
BEGIN
  OPEN c FOR EXECUTE query;
  RETURN c;
END $$;
BEGIN;
SELECT wa_open('wa_c2', 'SELECT id FROM wa_items /*route=''shed''*/');
FETCH 1 FROM wa_c2;
ROLLBACK;
-- Admitted once, it holds its slot until it is closed, like any cursor.
BEGIN;
SELECT wa_open('wa_c3', 'SELECT id FROM wa_items /*route=''one''*/');
FETCH 1 FROM wa_c3;
FETCH 1 FROM wa_c3;
SELECT count(*) AS while_open FROM wa_items /*route='one'*/;
ROLLBACK;
BEGIN;
SELECT wa_open('wa_c4', 'SELECT id FROM wa_items /*route=''one''*/');
FETCH 1 FROM wa_c4;
CLOSE wa_c4;
SELECT count(*) AS after_close FROM wa_items /*route='one'*/;
COMMIT;
-- A cursor opened and read within the function is part of the function's
-- statement (nested statements are admitted only with track = all).
DO $$DECLARE c refcursor; r record; BEGIN
  OPEN c FOR EXECUTE 'SELECT id FROM wa_items /*route=''shed''*/';
  FETCH c INTO r;
  CLOSE c;
END$$;

-- 2. Work the server starts by itself: foreign-key checks and deferred
-- triggers run at COMMIT, and functions the planner evaluates, are never
-- admitted as client statements. Budget wa_select sheds every SELECT of
-- this session while application_name is wa_no_select.
CREATE TABLE wa_parent (id int PRIMARY KEY);
CREATE TABLE wa_child (parent int REFERENCES wa_parent DEFERRABLE INITIALLY DEFERRED);
CREATE FUNCTION wa_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
  EXECUTE 'SELECT count(*) FROM wa_items' INTO n;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER wa_deferred AFTER INSERT ON wa_parent
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION wa_check();
SET application_name = 'wa_no_select';
SELECT 1 AS shed_select;
BEGIN;
INSERT INTO wa_parent VALUES (1);
INSERT INTO wa_child VALUES (1);
COMMIT;
-- The same in an implicit transaction: the checks run as it commits.
INSERT INTO wa_parent VALUES (2);
INSERT INTO wa_child VALUES (2);
RESET application_name;
SELECT (SELECT count(*) FROM wa_parent) AS parents, (SELECT count(*) FROM wa_child) AS children;
-- An IMMUTABLE function that runs a query is evaluated by the planner: its
-- query is not a client statement (one NOTICE each, for the tagged one only).
CREATE FUNCTION wa_folded(n int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$
DECLARE r int;
BEGIN
  EXECUTE 'SELECT $1 + 1 /*route=''warn''*/' INTO r USING n;
  RETURN r;
END $$;
SELECT wa_folded(1) AS untagged;
SELECT wa_folded(2) AS tagged /*route='warn'*/;

-- 4. The policy is readable only by superusers and pg_read_all_settings.
CREATE ROLE wa_plain;
SET ROLE wa_plain;
SHOW traffic_control.budgets;
SHOW traffic_control.rules;
SELECT name FROM pg_settings WHERE name IN ('traffic_control.budgets', 'traffic_control.rules');
SELECT current_setting('traffic_control.rules') IS NOT NULL AS readable;
RESET ROLE;
GRANT pg_read_all_settings TO wa_plain;
SET ROLE wa_plain;
SELECT count(*) AS visible FROM pg_settings WHERE name IN ('traffic_control.budgets', 'traffic_control.rules');
RESET ROLE;
DROP ROLE wa_plain;

-- 5. A NOTICE that cannot be sent (the `each` value has no equivalent in
-- the client's encoding) neither fails the statement nor leaks the slot it
-- holds in wa_one: the value is escaped for the client.
\set VERBOSITY default
SET client_encoding = 'LATIN1';
SELECT 'ran' AS escaped /*route='enc',tenant='%E6%97%A5'*/;
RESET client_encoding;
\set VERBOSITY terse
SELECT 'ran' AS slot_free /*route='enc',tenant='a'*/;

-- 7. A session that only runs DO blocks (track = all, track_utility = off)
-- applies a reload before its next statement.
SET traffic_control.track = 'all';
SET traffic_control.track_utility = off;
DO $$BEGIN PERFORM 1; END$$;
ALTER SYSTEM SET traffic_control.rules = '[{"name":"wa_shed","budget":"wa_shed","match":{"route":["shed","reloaded"]}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
DO $$DECLARE n bigint; BEGIN
  EXECUTE 'SELECT count(*) FROM wa_items /*route=''reloaded''*/' INTO n;
END$$;
RESET traffic_control.track;
RESET traffic_control.track_utility;

-- 8. The control plane is never shed: with every SELECT of the session
-- refused, reloading the configuration and reading the extension's views
-- still work; anything else is still refused.
ALTER SYSTEM SET traffic_control.rules = '[{"name":"wa_select","budget":"wa_select","match":{"command":"select","application_name":"wa_no_select"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
SET application_name = 'wa_no_select';
SELECT pg_sleep(0);
SELECT pg_reload_conf();
SELECT budget, mode FROM traffic_control.budget_status WHERE budget = 'wa_select';
SELECT rule, budget FROM traffic_control.rule_status;
SELECT pg_reload_conf(), count(*) FROM wa_items;
SELECT pg_reload_conf(), pg_sleep(0);
RESET application_name;

-- 9. The inner query of EXPLAIN ANALYZE, DECLARE, CREATE TABLE AS and
-- COPY (query) in a multi-statement string is admitted with its own
-- statement's tag, not the string's last one.
ALTER SYSTEM SET traffic_control.rules = '[{"name":"wa_shed","budget":"wa_shed","match":{"route":"shed"}},{"name":"wa_warn","budget":"wa_warn","match":{"route":"warn"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT 1 /*route='shed'*/ \; SELECT 2 AS second /*route='warn'*/;
CREATE TABLE wa_copy AS SELECT 1 AS one /*route='shed'*/ \; SELECT 2 AS second /*route='warn'*/;
COPY (SELECT 1) TO STDOUT /*route='shed'*/ \; SELECT 2 AS second /*route='warn'*/;
BEGIN;
DECLARE wa_c5 CURSOR FOR SELECT 1 /*route='shed'*/ \; SELECT 2 AS second /*route='warn'*/;
ROLLBACK;

-- 9. A cursor is charged the CPU of its own fetches, not that of the
-- statements run while it is open (a server_share that drains nothing
-- meanwhile: the debt is what was charged).
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"wa_share","mode":"enforce","server_share":0.0001,"burst_limit":1000}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"wa_share","budget":"wa_share","match":{"route":"share"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
BEGIN;
DECLARE wa_c6 CURSOR FOR SELECT id FROM wa_items /*route='share'*/;
FETCH 1 FROM wa_c6;
SELECT count(*) AS busy FROM generate_series(1, 3000000);
FETCH 1 FROM wa_c6;
CLOSE wa_c6;
COMMIT;
SELECT debt_seconds < 0.05 AS charged_only_its_fetches FROM traffic_control.budget_status WHERE budget = 'wa_share';

ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);

-- 9. CREATE EXTENSION refuses a traffic_control schema that another role
-- controls (it could replace the extension's objects): one it owns, one
-- holding objects, one another role may create objects in. The schema an
-- earlier CREATE EXTENSION made (DROP EXTENSION leaves it) is fine.
CREATE DATABASE wa_schema;
\c wa_schema
CREATE ROLE wa_owner;
CREATE SCHEMA traffic_control AUTHORIZATION wa_owner;
CREATE EXTENSION traffic_control;
ALTER SCHEMA traffic_control OWNER TO CURRENT_USER;
CREATE FUNCTION traffic_control.budget_status() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE EXTENSION traffic_control;
DROP FUNCTION traffic_control.budget_status();
GRANT CREATE ON SCHEMA traffic_control TO wa_owner;
CREATE EXTENSION traffic_control;
REVOKE CREATE ON SCHEMA traffic_control FROM wa_owner;
CREATE EXTENSION traffic_control;
DROP EXTENSION traffic_control;
CREATE EXTENSION traffic_control;
SELECT count(*) AS views FROM pg_views WHERE schemaname = 'traffic_control';
\c :regress_database
DROP DATABASE wa_schema;
DROP ROLE wa_owner;
DROP EXTENSION traffic_control;
