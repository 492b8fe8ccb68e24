#!/usr/bin/env python3
"""Prints the benchmarks' arm C configuration (postgresql.conf lines).

1,000 budgets and 1,000 rules: 999 rules on tags the benchmark never sends,
one on application_name "pgbench" (pgbench's own), each with its own budget.
Every budget is an enforce budget whose max_concurrent and server_share are
far above the load; the one the benchmark's statements match also has
per_query_limit and max_duration_ms far above it, so the concurrency slot,
the leaky bucket, the estimator and the duration timer all do their work on
every statement without ever refusing or canceling. The budget the benchmark's statements match also sets
cpu_priority (--cpu-priority, default 1): the backend's priority is lowered
as each statement starts and restored as it ends (two system calls), when the
server may restore it (CAP_SYS_NICE).
"""
import argparse
import json

parser = argparse.ArgumentParser()
parser.add_argument("--cpu-priority", type=int, default=1)
args = parser.parse_args()

budgets = [{"name": f"b{i}", "mode": "enforce", "max_concurrent": 1000000,
            "server_share": 100, "burst_limit": 1000} for i in range(1000)]
budgets[999]["per_query_limit"] = 1000
budgets[999]["max_duration_ms"] = 600000
if args.cpu_priority:
    budgets[999]["cpu_priority"] = args.cpu_priority
rules = [{"name": f"r{i}", "budget": f"b{i}", "match": {"route": f"/route/{i}"}}
         for i in range(999)]
rules.append({"name": "r999", "budget": "b999", "match": {"application_name": "pgbench"}})
print("traffic_control.budgets = '%s'" % json.dumps(budgets, separators=(",", ":")))
print("traffic_control.rules = '%s'" % json.dumps(rules, separators=(",", ":")))
