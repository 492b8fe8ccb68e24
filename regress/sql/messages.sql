-- What clients see: the NOTICE of a warn budget, the ERROR (SQLSTATE 53000)
-- of an enforce budget, DETAIL and HINT, the prefix; modes; several budgets;
-- warning_threshold; track and track_utility.
ALTER SYSTEM SET traffic_control.budgets = '[{"name":"msg_warn","mode":"warn","max_concurrent":0},{"name":"msg_enforce","mode":"enforce","max_concurrent":0},{"name":"msg_queue","mode":"enforce","max_concurrent":1,"queue_timeout_ms":100},{"name":"msg_threshold","mode":"enforce","max_concurrent":4,"warning_threshold":20},{"name":"msg_off","mode":"off","max_concurrent":0},{"name":"msg_tenant","mode":"enforce","max_concurrent":0}]';
ALTER SYSTEM SET traffic_control.rules = '[{"name":"warn_rule","budget":"msg_warn","match":{"route":["warn","both"]}},{"name":"enforce_rule","budget":"msg_enforce","match":{"route":["enforce","both"]}},{"name":"queue_rule","budget":"msg_queue","match":{"route":"queue"}},{"name":"threshold_rule","budget":"msg_threshold","match":{"route":"threshold"}},{"name":"off_rule","budget":"msg_off","match":{"route":"off"}},{"name":"tenant_rule","budget":"msg_tenant","match":{"route":"tenant"},"each":"tenant"},{"name":"inner_rule","budget":"msg_enforce","match":{"route":"inner"}},{"name":"ddl_rule","budget":"msg_enforce","match":{"route":"ddl"}}]';
SELECT pg_reload_conf(), pg_sleep(0.5);

-- Warn: a NOTICE, and the statement runs.
SELECT 'ran' AS warned /*route='warn'*/;
-- Enforce: refused with SQLSTATE 53000, DETAIL and HINT.
SELECT 'ran' AS refused /*route='enforce'*/;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- Both budgets apply: the warn NOTICE is sent and the enforce budget refuses.
SELECT 'ran' AS both /*route='both'*/;
-- A budget in mode "off" takes no part.
SELECT 'ran' AS off /*route='off'*/;
-- The session's own open cursor holds the budget's only slot: waiting could
-- never admit the next statement, so it is refused at once and says why.
-- (A refusal after waiting out queue_timeout_ms: regress/specs/queue.spec.)
BEGIN;
DECLARE holder CURSOR FOR SELECT 1 /*route='queue'*/;
SELECT 'ran' AS queued /*route='queue'*/;
ROLLBACK;
SELECT 'ran' AS slot_free_again /*route='queue'*/;
-- warning_threshold: an enforce budget warns at 20% of max_concurrent.
SELECT 'ran' AS over_threshold /*route='threshold'*/;
-- each: the instance is named.
SELECT 'ran' AS tenant /*route='tenant',tenant='acme'*/;
SELECT 'ran' AS no_tenant_no_match /*route='tenant'*/;

-- The prefix is configurable.
ALTER SYSTEM SET traffic_control.message_prefix = 'TC:';
SELECT pg_reload_conf(), pg_sleep(0.5);
SELECT 'ran' AS refused /*route='enforce'*/;
ALTER SYSTEM RESET traffic_control.message_prefix;
SELECT pg_reload_conf(), pg_sleep(0.5);

-- track: nested statements are admitted only with track = all.
CREATE FUNCTION tc_nested() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
  SELECT count(*) INTO n FROM pg_class /*route='inner'*/;
  RETURN 1;
END $$;
SELECT tc_nested() AS top_only;
SET traffic_control.track = 'all';
SELECT tc_nested() AS all_levels;
RESET traffic_control.track;
DROP FUNCTION tc_nested();

-- track_utility: utility statements are admitted unless it is off.
CREATE TABLE tc_ddl (id int) /*route='ddl'*/;
SET traffic_control.track_utility = off;
CREATE TABLE tc_ddl (id int) /*route='ddl'*/;
RESET traffic_control.track_utility;
DROP TABLE tc_ddl;

-- The master switch: a superuser may turn enforcement off for a session.
SET traffic_control.enabled = off;
SELECT 'ran' AS disabled /*route='enforce'*/;
RESET traffic_control.enabled;

ALTER SYSTEM RESET traffic_control.budgets;
ALTER SYSTEM RESET traffic_control.rules;
SELECT pg_reload_conf(), pg_sleep(0.5);
