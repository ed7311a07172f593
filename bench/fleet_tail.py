"""No idle tail: a batch whose one item is retried keeps its fleet waiting under the old rule
(a worker stays while anything is in flight or delayed), not under tqflow's (a worker leaves
when nothing is visible, and the pipeline starts one again when the retry comes back).

The same local pipeline run twice, side by side: 400 tasks of 50 ms on 8 workers, one of
which fails its first four attempts (retried after 5, 10, 20 and 40 s). Measured: the idle
worker-seconds after the first-attempt drain (when every other item is done), from each
worker's report (started / last written) and each output's finish time.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

ITEMS, QUICK_ITEMS, WORKERS = 400, 100, 8
FAILING = 7


def _seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def idle_after_first_drain(storage, batch: str) -> tuple[float, float, int]:
    """Worker-seconds the fleet spent after every item but the failing one was done, the wall
    time the batch took, and how many workers ran."""
    from tqflow.engine.layout import outputs_prefix
    from tqflow.engine.reports import read_reports

    records = storage.get_json_many(list(storage.list(outputs_prefix(batch))))
    finished = {r["key"]: _seconds(r["finished_at"]) for r in records.values()}
    first_drain = max(t for key, t in finished.items() if key != str(FAILING))
    reports = read_reports(storage, batch)
    # each worker's time alive after the drain (a worker started later counts from its start),
    # less the few seconds of the failing item's attempts
    idle = sum(
        max(0.0, _seconds(r["updated_at"]) - max(_seconds(r["started_at"]), first_drain))
        for r in reports
    )
    started = min(_seconds(r["started_at"]) for r in reports)
    return idle, max(finished.values()) - started, len(reports)


def run(runs: int = 1, quick: bool = False) -> list[dict]:
    from bench.common import prefect_server
    from blocks import CloudFilesStorage, LocalTaskQueue
    from flows.pipeline import pipeline

    items = QUICK_ITEMS if quick else ITEMS
    found = {}
    with tempfile.TemporaryDirectory() as folder, prefect_server(Path(folder)):
        for rule, wait in (("before", True), ("tqflow", False)):
            data = Path(folder) / rule
            queue = LocalTaskQueue(
                path=str(data / "q.sqlite"),
                queue_name=rule,
                allowed_modules=["tests"],
                max_receive_count=6,
            )
            storage = CloudFilesStorage(cloudpath=f"file://{data}")
            pipeline(
                fn="tests.tasks:fails_first",
                queue=queue,
                storage=storage,
                batch="tail",
                items=list(range(items)),
                kwargs={"log_dir": str(data), "failures": {str(FAILING): 4}, "seconds": 0.05},
                workers=WORKERS,
                # the pipeline's own idle time (5 s) and retry backoff (5 s, doubling)
                worker_options={"wait_for_in_flight": wait, "report_seconds": 1},
                poll_seconds=0.5,
                analyze=False,
            )
            found[rule] = idle_after_first_drain(storage, "tail")
            print(f"{rule}: {found[rule]}", flush=True)
    (before_idle, before_wall, before_n), (now_idle, now_wall, now_n) = (
        found["before"],
        found["tqflow"],
    )
    ratio = now_idle / before_idle if before_idle else float("nan")
    return [
        {
            "measure": f"idle worker-seconds after the first-attempt drain, {WORKERS} workers, "
            "one item retried 4 times: before / tqflow",
            "value": f"{before_idle:,.0f} / {now_idle:,.0f}",
            "unit": "s",
        },
        {
            "measure": "**idle worker-seconds after the drain, tqflow vs before**",
            "value": f"{ratio:.2f}x",
            "unit": "",
            "target": "<= 0.25x",
            "met": ratio <= 0.25,
        },
        {
            "measure": "the batch's wall time: before / tqflow",
            "value": f"{before_wall:,.0f} / {now_wall:,.0f}",
            "unit": "s",
        },
        {
            "measure": "workers that ran (reports): before / tqflow",
            "value": f"{before_n} / {now_n}",
            "unit": "",
        },
    ]


def main() -> None:  # pragma: no cover - a manual run
    for row in run():
        print(row)


if __name__ == "__main__":
    main()
