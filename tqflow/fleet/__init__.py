"""Fleets of workers: start N worker processes or deployment runs on a queue, replace lost
ones while work remains (`fanout`, `warm_workers`), and watch the batch drain (`monitor`)."""
