-- traffic_control 1.0
-- Enforcement works from shared_preload_libraries alone; the SQL objects
-- (status views, explain, reset) are added here.
\echo Use "CREATE EXTENSION traffic_control" to load this file. \quit
