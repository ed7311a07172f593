"""Fleets of workers on a queue: local processes forked warm (`local`, `warm_workers`),
deployment runs (`deployment`), several processes in one run (`processes`); how workers end
(`endings`); the loop that watches a batch drain and sizes the fleet (`monitor`, `sizing`)."""
