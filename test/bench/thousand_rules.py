#!/usr/bin/env python3
"""Prints the benchmarks' arm C configuration (postgresql.conf lines).

1,000 budgets and 1,000 rules: 999 rules on tags the benchmark never sends,
one on application_name "pgbench" (pgbench's own), each with its own budget.
Every budget is an enforce budget whose max_concurrent and server_share are
far above the load, so the concurrency slot, the leaky bucket and the
estimator all do their work on every statement without ever refusing.
"""
import json

budgets = [{"name": f"b{i}", "mode": "enforce", "max_concurrent": 1000000,
            "server_share": 100, "burst_limit": 1000} for i in range(1000)]
rules = [{"name": f"r{i}", "budget": f"b{i}", "match": {"route": f"/route/{i}"}}
         for i in range(999)]
rules.append({"name": "r999", "budget": "b999", "match": {"application_name": "pgbench"}})
print("traffic_control.budgets = '%s'" % json.dumps(budgets, separators=(",", ":")))
print("traffic_control.rules = '%s'" % json.dumps(rules, separators=(",", ":")))
