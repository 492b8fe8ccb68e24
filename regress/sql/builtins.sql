-- Built-in metadata keys: username, application_name, remote_address,
-- database, query_id, command. A tag can never set a built-in key.
CREATE ROLE tc_app_user LOGIN;
GRANT pg_read_all_settings TO tc_app_user;
CREATE TABLE tc_items (id int);
GRANT ALL ON tc_items TO tc_app_user;

-- query_id: the pattern's id as pg_stat_statements shows it (EXPLAIN VERBOSE
-- prints it too). Constants do not change the pattern.
CREATE FUNCTION tc_query_id(query text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE plan json;
BEGIN
  EXECUTE 'EXPLAIN (VERBOSE, FORMAT JSON) ' || query INTO plan;
  RETURN plan->0->>'Query Identifier';
END $$;
SELECT tc_query_id('SELECT 42 AS answer FROM tc_items') AS qid \gset

SELECT replace(format($j$[
  {"name":"bi_user","budget":"bi_shed","match":{"username":"tc_app_user","command":"select"}},
  {"name":"bi_app","budget":"bi_shed","match":{"application_name":"nightly-batch"}},
  {"name":"bi_db","budget":"bi_shed","match":{"database":"contrib_regression","route":"db"}},
  {"name":"bi_insert","budget":"bi_shed","match":{"command":"insert","route":"cmd"}},
  {"name":"bi_tcp","budget":"bi_shed","match":{"remote_address":["127.0.0.0/8","::1/128"],"command":"select"}},
  {"name":"bi_query","budget":"bi_shed","match":{"query_id":"%s"}}]$j$, :'qid'), E'\n', '') AS rules \gset
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"bi_shed","mode":"enforce","max_concurrent":0}]';
ALTER SYSTEM SET traffic_control.rules = :'rules';
SELECT pg_reload_conf(), pg_sleep(0.5);
\set VERBOSITY terse

-- username is the current role.
SET ROLE tc_app_user;
SELECT count(*) AS as_app_user FROM tc_items;
INSERT INTO tc_items VALUES (1);
RESET ROLE;
SELECT count(*) AS as_postgres FROM tc_items;
-- A tag cannot pretend to be another role.
SELECT count(*) AS tag_is_not_username FROM tc_items /*username='tc_app_user'*/;

-- application_name.
SET application_name = 'nightly-batch';
SELECT 1 AS batch;
RESET application_name;
SELECT 1 AS not_batch /*application_name='nightly-batch'*/;

-- database (with a tag, so the rule does not catch the test's own statements).
SELECT 1 AS in_this_database /*route='db'*/;

-- command.
INSERT INTO tc_items VALUES (2) /*route='cmd'*/;
SELECT count(*) AS select_is_not_insert FROM tc_items /*route='cmd'*/;

-- query_id: the same pattern with another constant is the same query.
SELECT 42 AS answer FROM tc_items;
SELECT 43 AS answer FROM tc_items;
SELECT 42 AS answer, 43 AS other FROM tc_items;

-- remote_address: this session uses a Unix socket (no address); a TCP
-- connection from 127.0.0.1 matches 127.0.0.0/8.
SELECT 1 AS over_unix_socket;
\set unix_host :HOST
\c -reuse-previous=on host=127.0.0.1
SELECT 1 AS over_tcp;
\c -reuse-previous=on host=:unix_host
SELECT 1 AS back_on_unix_socket;

ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);
DROP FUNCTION tc_query_id(text);
DROP TABLE tc_items;
DROP ROLE tc_app_user;
