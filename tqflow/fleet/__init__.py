"""Fleets of workers on a queue: local processes forked warm (`local`, `warm_workers`),
deployment runs (`deployment`), several processes in one run (`processes`); how workers end
(`endings`); the batch controller that watches a batch drain and sizes the fleet (`controller`,
`sizing`, `liveness`, `api_budget`), and the batch's dashboard (`dashboard`)."""
