-- Configuration: defaults, validation in the check hook, privileges.
SHOW traffic_control.enabled;
SHOW traffic_control.message_prefix;
SHOW traffic_control.track;
SHOW traffic_control.track_utility;
SHOW traffic_control.max_buckets;
SHOW traffic_control.max_patterns;
SHOW traffic_control.server_cores;

-- A malformed budget or rule is rejected with the item and the field named.
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"a"},{"name":"b"},{"name":"c","server_share":150}]';
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"a","mode":"block"}]';
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"a","max_concurent":2}]';
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"a"},{"name":"a"}]';
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"has space"}]';
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"a","max_concurrent":1.5}]';
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"a","burst_limit":0}]';
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"a","queue_timeout_ms":-1}]';
ALTER SYSTEM SET traffic_control.budgets = '{"name":"a"}';
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"a",}]';
ALTER SYSTEM SET traffic_control.rules = '[{"match":{"route":"x"}}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"a","match":{"remote_address":"10.1.2.3/16"}}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"a","match":{"tier":["free",7]}}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"a","match":{"command":"drop"}}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"a"},{"name":"rule1","budget":"a"}]';

-- SIGHUP settings cannot be changed with SET.
SET traffic_control.budgets = '[]';

-- Only a superuser may turn enforcement off.
CREATE ROLE tc_plain_user LOGIN;
SET ROLE tc_plain_user;
SET traffic_control.enabled = off;
SET traffic_control.track = 'all';
RESET ROLE;
SET traffic_control.enabled = off;
SHOW traffic_control.enabled;
RESET traffic_control.enabled;
DROP ROLE tc_plain_user;

-- Unknown settings under the prefix are rejected (the prefix is reserved).
SET traffic_control.no_such_setting = 1;

-- A valid configuration is accepted and takes effect after a reload.
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"cfg_shed","mode":"enforce","max_concurrent":0}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"cfg_rule","budget":"cfg_shed","match":{"route":"cfg"}}, {"budget":"no_such_budget","match":{"route":"x"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);
SELECT 1 AS shed /*route='cfg'*/;
SELECT 1 AS other_route /*route='other'*/;
-- A rule naming an unknown budget is skipped; the other rules still work.

-- Back to the cluster's file configuration.
ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);
SELECT 1 AS back_to_file_config /*route='cfg'*/;
