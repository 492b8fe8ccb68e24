-- traffic_control 1.0 -> 1.1 (ALTER EXTENSION traffic_control UPDATE).
-- CREATE EXTENSION traffic_control installs 1.0 and then runs this script.
\echo Use "ALTER EXTENSION traffic_control UPDATE" to load this file. \quit

-- ---- shed() / unshed(): the emergency lever ------------------------------
-- A shed budget refuses all its statements until the shed ends, whatever its
-- mode and limits. Sheds survive configuration reloads, not restarts.
-- Superusers only (checked by the functions as well).
CREATE FUNCTION @extschema@.shed(budget text, duration interval)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'traffic_control_shed_1_1'
LANGUAGE C STRICT VOLATILE;

CREATE FUNCTION @extschema@.unshed(budget text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'traffic_control_unshed_1_1'
LANGUAGE C STRICT VOLATILE;

REVOKE ALL ON FUNCTION @extschema@.shed(text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.unshed(text) FROM PUBLIC;

-- ---- budget_status gains blocked_shed, shed_until, the limits, utilization --
DROP VIEW @extschema@.budget_status;
DROP FUNCTION @extschema@.budget_status();

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
    OUT last_blocked_at timestamptz,
    OUT blocked_shed bigint,
    OUT shed_until timestamptz,
    OUT max_concurrent bigint,
    OUT per_query_limit float8,
    OUT server_share float8,
    OUT burst_limit float8,
    OUT utilization_pct float8,
    OUT canceled bigint,
    OUT cpu_seconds float8,
    OUT quarantined bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'traffic_control_budget_status_1_1'
LANGUAGE C STRICT VOLATILE;

CREATE VIEW @extschema@.budget_status AS
  SELECT * FROM @extschema@.budget_status();

REVOKE ALL ON @extschema@.budget_status FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.budget_status() FROM PUBLIC;
GRANT SELECT ON @extschema@.budget_status TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION @extschema@.budget_status() TO pg_read_all_stats;

-- ---- quarantine: patterns refused for quarantine_s after a cancel or refusal --
CREATE FUNCTION @extschema@.quarantine(
    OUT query_id bigint,
    OUT budget text,
    OUT until timestamptz,
    OUT reason text,
    OUT role name,
    OUT database name)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'traffic_control_quarantine_1_1'
LANGUAGE C STRICT VOLATILE;

CREATE VIEW @extschema@.quarantine AS
  SELECT * FROM @extschema@.quarantine();

REVOKE ALL ON @extschema@.quarantine FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.quarantine() FROM PUBLIC;
GRANT SELECT ON @extschema@.quarantine TO pg_read_all_stats;
GRANT EXECUTE ON FUNCTION @extschema@.quarantine() TO pg_read_all_stats;
