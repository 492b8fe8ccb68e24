-- Rule matching of contract 1.1: a default rule catches only what no other
-- rule matched; match values {"not": ...} and {"prefix": ...}; the built-in
-- key member_of (role membership, which a tag cannot claim).
CREATE EXTENSION traffic_control;
-- The default rule below sheds every statement no other rule matches: keep
-- this session's DDL and ALTER SYSTEM out of admission.
SET traffic_control.track_utility = off;

-- Malformed match values and rule fields are rejected, item and field named.
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"a","match":{"route":{"nott":"x"}}}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"a","match":{"route":{"not":"x","prefix":"y"}}}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"a","match":{"tier":{"not":[]}}}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"a"},{"budget":"a","match":{"tier":{"prefix":7}}}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"a","match":{"remote_address":{"prefix":"10.1."}}}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"a","match":{"remote_address":{"not":"office"}}}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"a","match":{"member_of":{"prefix":"app_"}}}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"a","match":{"member_of":""}}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"a","each":"member_of"}]';
ALTER SYSTEM SET traffic_control.rules = '[{"budget":"a","default":"yes"}]';

\set VERBOSITY terse

-- Roles: r11_alice is a member of r11_analysts through r11_team, r11_bob
-- directly, r11_carol not at all.
CREATE ROLE r11_analysts NOLOGIN;
CREATE ROLE r11_team NOLOGIN IN ROLE r11_analysts;
CREATE ROLE r11_alice NOLOGIN IN ROLE r11_team;
CREATE ROLE r11_bob NOLOGIN IN ROLE r11_analysts;
CREATE ROLE r11_carol NOLOGIN;
GRANT EXECUTE ON FUNCTION traffic_control.explain(text)
  TO r11_analysts, r11_carol;

-- r11_critical has no limit; r11_rest and r11_analytics shed everything.
SELECT replace($j$[
  {"name":"r11_critical","mode":"enforce"},
  {"name":"r11_paused","mode":"off","max_concurrent":0},
  {"name":"r11_analytics","mode":"enforce","max_concurrent":0},
  {"name":"r11_rest","mode":"enforce","max_concurrent":0}]$j$, E'\n', '') AS budgets \gset
SELECT replace($j$[
  {"name":"r11_everything_else","budget":"r11_rest","default":true},
  {"name":"r11_checkout","budget":"r11_critical","match":{"route":"checkout"}},
  {"name":"r11_per_tenant","budget":"r11_critical","match":{"route":"tenant"},"each":"tenant"},
  {"name":"r11_paused","budget":"r11_paused","match":{"route":"paused"}},
  {"name":"r11_paying","budget":"r11_critical","match":{"route":"tier","tier":{"not":["free","trial"]}}},
  {"name":"r11_api","budget":"r11_critical","match":{"route":{"prefix":["/api/","/v2/"]}}},
  {"name":"r11_analysts","budget":"r11_analytics","match":{"route":"report","member_of":"r11_analysts"}},
  {"name":"r11_others","budget":"r11_critical","match":{"route":"report","member_of":{"not":["r11_analysts","r11_no_such_role"]}}}]$j$, E'\n', '') AS rules \gset
ALTER SYSTEM SET traffic_control.budgets = :'budgets';
ALTER SYSTEM SET traffic_control.rules = :'rules';
SELECT pg_reload_conf(), pg_sleep(0.5);

-- Default rule: an untagged statement, or one no other rule matches, is
-- caught; one another rule matched is not.
SELECT 1 AS untagged;
SELECT 1 AS unmatched_route /*route='search'*/;
SELECT 1 AS checkout /*route='checkout'*/;
SELECT rule, budget, decision FROM traffic_control.explain('SELECT 1');
SELECT rule, budget, decision
  FROM traffic_control.explain($$SELECT 1 /*route='checkout'*/$$);
-- A rule with `each` matches only statements that carry its key.
SELECT 1 AS with_tenant /*route='tenant',tenant='acme'*/;
SELECT 1 AS without_tenant /*route='tenant'*/;
-- A rule whose budget is off still matched: the default does not take it.
SELECT 1 AS paused /*route='paused'*/;

-- not: any other value, or no value at all; not the listed ones.
SELECT 1 AS paid /*route='tier',tier='paid'*/;
SELECT 1 AS no_tier /*route='tier'*/;
SELECT 1 AS free /*route='tier',tier='free'*/;
SELECT 1 AS trial /*route='tier',tier='trial'*/;

-- prefix: the value starts with one of them.
SELECT 1 AS api_orders /*route='/api/orders'*/;
SELECT 1 AS v2_users /*route='%2Fv2%2Fusers'*/;
SELECT 1 AS not_api /*route='/apiv2/orders'*/;
SELECT 1 AS api_upper /*route='/API/orders'*/;

-- member_of: directly (r11_bob) or through another role (r11_alice).
SET ROLE r11_bob;
SELECT 1 AS bob_report /*route='report'*/;
SET ROLE r11_alice;
SELECT 1 AS alice_report /*route='report'*/;
SELECT rule, budget, decision, metadata->'member_of' AS member_of
  FROM traffic_control.explain($$SELECT 1 /*route='report'*/$$);
SET ROLE r11_carol;
SELECT 1 AS carol_report /*route='report'*/;
-- A tag cannot claim a membership...
SELECT 1 AS carol_claims /*route='report',member_of='r11_analysts'*/;
SELECT rule, metadata->'member_of' AS member_of
  FROM traffic_control.explain($$SELECT 1 /*route='report',member_of='r11_analysts'*/$$);
RESET ROLE;
-- ... and a superuser is a member only of what it was granted.
SELECT 1 AS superuser_report /*route='report'*/;

-- Memberships granted or revoked while the session runs count at once.
GRANT r11_analysts TO r11_carol;
SET ROLE r11_carol;
SELECT 1 AS carol_granted /*route='report'*/;
RESET ROLE;
REVOKE r11_analysts FROM r11_carol;
SET ROLE r11_carol;
SELECT 1 AS carol_revoked /*route='report'*/;
RESET ROLE;
-- A role named under member_of that does not exist has no members, and
-- starts to count once it is created.
CREATE ROLE r11_no_such_role NOLOGIN;
GRANT r11_no_such_role TO r11_carol;
SET ROLE r11_carol;
SELECT 1 AS carol_in_created_role /*route='report'*/;
RESET ROLE;

-- Back to the cluster's file configuration.
ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5) /*route='checkout'*/;
SELECT 1 AS untagged_again;
RESET traffic_control.track_utility;
DROP EXTENSION traffic_control;
DROP ROLE r11_alice, r11_bob, r11_carol, r11_no_such_role, r11_team, r11_analysts;
