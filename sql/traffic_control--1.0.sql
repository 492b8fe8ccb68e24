-- traffic_control 1.0
-- Enforcement works from shared_preload_libraries alone; the SQL objects
-- (status views, explain, reset) are added here. A later version adds a
-- traffic_control--1.0--1.1.sql upgrade script; the C functions are named
-- with the version that defined them, so an old definition keeps working
-- with a newer library until ALTER EXTENSION traffic_control UPDATE.
\echo Use "CREATE EXTENSION traffic_control" to load this file. \quit

-- The schema is created with the extension (traffic_control.control), and
-- stays when the extension is dropped. A schema of that name that a role
-- other than a superuser owns, that holds objects, or in which a role other
-- than its owner may create objects, is refused: that role could replace the
-- extension's objects with its own.
DO $$
DECLARE
  schema_oid oid := '@extschema@'::regnamespace;
BEGIN
  IF (SELECT NOT r.rolsuper
        FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
       WHERE n.oid = schema_oid)
     OR EXISTS (SELECT FROM pg_namespace n, aclexplode(n.nspacl) a
                 WHERE n.oid = schema_oid AND a.privilege_type = 'CREATE'
                   AND a.grantee <> n.nspowner)
     OR EXISTS (SELECT FROM pg_class WHERE relnamespace = schema_oid)
     OR EXISTS (SELECT FROM pg_proc WHERE pronamespace = schema_oid)
     OR EXISTS (SELECT FROM pg_type WHERE typnamespace = schema_oid)
     OR EXISTS (SELECT FROM pg_operator WHERE oprnamespace = schema_oid)
     OR EXISTS (SELECT FROM pg_collation WHERE collnamespace = schema_oid)
     OR EXISTS (SELECT FROM pg_conversion WHERE connamespace = schema_oid)
     OR EXISTS (SELECT FROM pg_opfamily WHERE opfnamespace = schema_oid)
     OR EXISTS (SELECT FROM pg_ts_config WHERE cfgnamespace = schema_oid)
     OR EXISTS (SELECT FROM pg_ts_dict WHERE dictnamespace = schema_oid)
  THEN
    RAISE EXCEPTION 'schema "@extschema@" is not fit for CREATE EXTENSION traffic_control'
      USING ERRCODE = 'duplicate_schema',
            DETAIL = 'It is owned by a role that is not a superuser, holds objects, or lets another role create objects in it.',
            HINT = 'Drop or rename that schema (whoever controls it could replace the extension''s objects), then create the extension.';
  END IF;
END
$$;

-- Its objects carry their own privileges; USAGE alone grants nothing.
GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;

-- ---- budget_status -------------------------------------------------------
-- One row per budget instance in shared memory (one per budget, or per
-- budget and `each` value), and one row of zeros for each configured budget
-- that has no instance yet. mode is NULL for an instance whose budget is no
-- longer configured (its counters stay until it is evicted or reset()).
CREATE FUNCTION @extschema@.budget_status(
    OUT budget text,
    OUT instance text,
    OUT mode text,
    OUT active bigint,
    OUT debt_seconds float8,
    OUT admitted bigint,
    OUT warned bigint,
    OUT blocked bigint,
    OUT blocked_max_concurrent bigint,
    OUT blocked_per_query_limit bigint,
    OUT blocked_server_share bigint,
    OUT queued bigint,
    OUT last_blocked_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'traffic_control_budget_status_1_0'
LANGUAGE C STRICT VOLATILE;

CREATE VIEW @extschema@.budget_status AS
  SELECT * FROM @extschema@.budget_status();

-- ---- rule_status ---------------------------------------------------------
-- One row per configured rule, in configuration order, with the statements
-- it put into its budget since the last reset() and why it is skipped.
CREATE FUNCTION @extschema@.rule_status(
    OUT rule text,
    OUT budget text,
    OUT matched bigint,
    OUT problem text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'traffic_control_rule_status_1_0'
LANGUAGE C STRICT VOLATILE;

CREATE VIEW @extschema@.rule_status AS
  SELECT * FROM @extschema@.rule_status();

-- ---- pattern_estimates -----------------------------------------------------
-- What the cost estimator learned per query pattern (query_id as in
-- pg_stat_statements.queryid): k is CPU-seconds per unit of plan cost.
CREATE FUNCTION @extschema@.pattern_estimates(
    OUT query_id bigint,
    OUT calls bigint,
    OUT mean_cpu_ms float8,
    OUT mean_plan_cost float8,
    OUT k float8)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'traffic_control_pattern_estimates_1_0'
LANGUAGE C STRICT VOLATILE;

CREATE VIEW @extschema@.pattern_estimates AS
  SELECT * FROM @extschema@.pattern_estimates();

-- ---- violation_history -------------------------------------------------------
-- Per budget (not per `each` instance) and minute of the last six hours:
-- statements admitted (warned ones included), warned, and refused by each
-- limit. A fixed ring in shared memory for up to 256 budget names; a budget
-- first seen when 256 names are recorded is not recorded. Kept across
-- reset(), cleared at server start.
CREATE FUNCTION @extschema@.violation_history(
    OUT budget text,
    OUT minute timestamptz,
    OUT admitted bigint,
    OUT warned bigint,
    OUT blocked_max_concurrent bigint,
    OUT blocked_per_query_limit bigint,
    OUT blocked_server_share bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'traffic_control_violation_history_1_0'
LANGUAGE C STRICT VOLATILE;

CREATE VIEW @extschema@.violation_history AS
  SELECT * FROM @extschema@.violation_history();

-- ---- explain(query) ----------------------------------------------------------
-- Plans the statement (never runs it) and shows, per budget that applies,
-- the decision admission would make now, changing nothing.
CREATE FUNCTION @extschema@.explain(
    query text,
    OUT budget text,
    OUT instance text,
    OUT rule text,
    OUT mode text,
    OUT predicted_seconds float8,
    OUT decision text,
    OUT limit_name text,
    OUT detail text,
    OUT metadata jsonb)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'traffic_control_explain_1_0'
LANGUAGE C STRICT VOLATILE;

-- ---- reset() -------------------------------------------------------------------
-- Zeroes the budgets' and the rules' counters (not running statements, not
-- debt, not the learned estimates). Superusers only (checked in C as well).
CREATE FUNCTION @extschema@.reset()
RETURNS void
AS 'MODULE_PATHNAME', 'traffic_control_reset_1_0'
LANGUAGE C STRICT VOLATILE;

-- ---- privileges ------------------------------------------------------------------
-- Status and explain: superusers and pg_read_all_stats (grant more if you
-- like: GRANT SELECT ON traffic_control.budget_status TO monitoring, plus
-- EXECUTE on the function behind it). reset(): superusers only.
REVOKE ALL ON @extschema@.budget_status FROM PUBLIC;
REVOKE ALL ON @extschema@.rule_status FROM PUBLIC;
REVOKE ALL ON @extschema@.pattern_estimates FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.budget_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.rule_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.pattern_estimates() FROM PUBLIC;
REVOKE ALL ON @extschema@.violation_history FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.violation_history() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.explain(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.reset() FROM PUBLIC;

GRANT SELECT ON @extschema@.budget_status TO pg_read_all_stats;
GRANT SELECT ON @extschema@.rule_status TO pg_read_all_stats;
GRANT SELECT ON @extschema@.pattern_estimates TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION @extschema@.budget_status() TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION @extschema@.rule_status() TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION @extschema@.pattern_estimates() TO pg_read_all_stats;
GRANT SELECT ON @extschema@.violation_history TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION @extschema@.violation_history() TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION @extschema@.explain(text) TO pg_read_all_stats;
