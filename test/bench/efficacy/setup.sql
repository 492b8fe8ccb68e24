-- Objects of the efficacy benchmark, created once in the template cluster
-- (after pgbench -i -s 10).

-- The best-effort class runs as its own role, so role-based limits
-- (ALTER ROLE ... SET statement_timeout, a PgBouncer pool per user,
-- a traffic_control rule on username) can all be applied to it.
CREATE ROLE analytics LOGIN;
GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO analytics;

-- The queue of the queue-health test. Autovacuum may run on it as soon as
-- a few hundred rows are dead (cluster settings: autovacuum_naptime).
CREATE TABLE jobs (
  id bigserial PRIMARY KEY,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  payload text
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000,
        autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000,
        autovacuum_vacuum_cost_delay = 0);

VACUUM ANALYZE;
CHECKPOINT;
