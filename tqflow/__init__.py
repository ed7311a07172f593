"""tqflow's parts below the Prefect flows (`flows`) and blocks (`blocks`).

- `tqflow.engine`: the worker that runs in a pod; imports nothing from Prefect.
- `tqflow.fleet`: starting workers (local processes or deployment runs) and watching a batch drain.
- `tqflow.gke`: sizing pods for a GKE node and the work pool's job template.
- `tqflow.errors`: every error tqflow raises on purpose.
- `tqflow.enqueue`: queueing a batch; `tqflow.results`: reading it back (analysis, dead letters).
- `tqflow.examples`: example task functions.
"""
