-- Critical traffic of the efficacy benchmark: one primary-key lookup per
-- transaction (pgbench -D naccounts=<rows of pgbench_accounts>).
\set aid random(1, :naccounts)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid /*priority='critical',app='web'*/;
