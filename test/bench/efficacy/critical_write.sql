-- Critical writes of the priority-inversion test (inversion.sh): pgbench's
-- TPC-B-like transaction on one account, tagged critical. Under the test's
-- best-effort writers it waits for row locks, buffer content locks and WAL
-- insertion/flush locks that a low-priority backend may hold.
\set aid random(1, :naccounts)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid /*priority='critical',app='web'*/;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, :delta, CURRENT_TIMESTAMP) /*priority='critical',app='web'*/;
END;
