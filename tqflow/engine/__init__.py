"""The worker engine: task messages, the worker loop, leases, output layout, retries, time
limits and the worker process's entry.

It runs inside a worker pod and must never wait on the Prefect API, so it imports nothing from
Prefect (``tests/test_layout.py`` fails if it does): it works on the `contracts` that tqflow's
blocks implement.
"""
