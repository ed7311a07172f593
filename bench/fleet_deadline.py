"""A fleet sized to a deadline (``workers="auto"``, ``finish_within_seconds``), from a cold start:
no earlier run of the batch says how long a task takes, so the sizer probes, measures, grows,
and shrinks at the tail. Local fleet, sleep-bound tasks (0.5 s each: the machine's two cores are
not what limits them), three deadlines. Prints when each batch finished against its deadline
and plots the fleet's size over time (bench/fleet_deadline.png).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

#: (tasks, deadline seconds): about 4, 6 and 4 workers' worth.
CASES = ((240, 30), (720, 60), (960, 120))
QUICK_CASES = ((240, 30),)
TASK_SECONDS = 0.5
MOST = 16
PLOT = Path(__file__).with_name("fleet_deadline.png")


def run(runs: int = 1, quick: bool = False) -> list[dict]:
    from bench.common import prefect_server
    from blocks import CloudFilesStorage, LocalTaskQueue
    from flows.pipeline import pipeline

    rows, series = [], []
    with tempfile.TemporaryDirectory() as folder, prefect_server(Path(folder)):
        for number, (tasks, deadline) in enumerate(QUICK_CASES if quick else CASES):
            data = Path(folder) / f"case{number}"
            queue = LocalTaskQueue(
                path=str(data / "q.sqlite"), queue_name="deadline", allowed_modules=["tests"]
            )
            summary = pipeline(
                fn="tests.tasks:tracked",
                queue=queue,
                storage=CloudFilesStorage(cloudpath=f"file://{data}"),
                batch="deadline",
                items=list(range(tasks)),
                kwargs={"log_dir": str(data), "seconds": TASK_SECONDS},
                workers="auto",
                finish_within_seconds=deadline,
                max_workers=MOST,
                worker_options={"idle_seconds": 1},
                poll_seconds=0.5,
                analyze=False,
            )
            finished = summary["elapsed_seconds"]
            sizes = [units for _, units in summary["fleet_size_over_time"]]
            series.append((tasks, deadline, summary["fleet_size_over_time"]))
            ideal = tasks * TASK_SECONDS / deadline
            rows.append(
                {
                    "measure": f"{tasks} tasks of {TASK_SECONDS} s within {deadline} s: finished "
                    f"after (workers: most {max(sizes)}, last {sizes[-1]}; {ideal:.1f} would "
                    "fill the deadline exactly)",
                    "value": f"{finished:.1f} s = {finished / deadline:.2f}x the deadline",
                    "unit": "",
                    "target": "0.8x-1.2x",
                    "met": 0.8 <= finished / deadline <= 1.2,
                }
            )
            print(rows[-1], flush=True)
    _plot(series)
    rows.append({"measure": "fleet size over time", "value": str(PLOT.name), "unit": ""})
    return rows


def _plot(series: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    for tasks, deadline, points in series:
        seconds, units = zip(*points, strict=True)
        line = ax.step(seconds, units, where="post", label=f"{tasks} tasks in {deadline} s")
        ax.axvline(deadline, color=line[0].get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("seconds since the workers started (dotted: the deadline)", fontsize=8)
    ax.set_ylabel("workers wanted", fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=90)
    plt.close(fig)
