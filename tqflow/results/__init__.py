"""A batch read back: its outputs into one table (`table`, through the workers' shards,
`shard_index`), summarised and drawn (`summary`), the whole done by `analyze.analyze_batch`;
and its dead letters as rows (`dead_letters`). No Prefect here: the ``analysis`` and
``dead-letters`` flows and their commands are thin callers."""
