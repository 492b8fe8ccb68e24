-- Producer of the queue-health test: one job per transaction.
INSERT INTO jobs (payload) VALUES (repeat('x', 200)) /*app='jobs'*/;
