"""Reliability: the Prefect API stops answering in the middle of a worker run.

The API is the session's test server, frozen with SIGSTOP and thawed with SIGCONT: requests
hang, as they do when a network path or an overloaded server goes quiet. The queue backend is
not what is under test here, so this runs on the local queue only.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.server.api.server import SubprocessASGIServer

from blocks import LocalTaskQueue
from flows.worker import worker
from tests.reliability.conftest import scaled
from tests.support.helpers import enqueue, wait_until
from tqflow.engine.layout import outputs_prefix

ITEMS = scaled(400, 1_500)
OUTAGE_SECONDS = scaled(5, 10)


def count_outputs(storage) -> int:
    return sum(1 for p in storage.list(outputs_prefix("b")) if p.endswith(".json"))


def test_queue_work_goes_on_through_an_api_outage_and_the_report_arrives_after_it(
    prefect_api, storage, tmp_path, figure
):
    queue = LocalTaskQueue(
        path=str(tmp_path / "queue.sqlite"),
        queue_name="outage",
        wait_seconds=0,
        allowed_modules=["tests"],
    )
    queue.ensure()
    log_dir = tmp_path / "executions"
    log_dir.mkdir()
    enqueue(queue, "tests.tasks:counted", range(ITEMS), log_dir=str(log_dir), seconds=0.02)
    api = SubprocessASGIServer._instances[None].server_process
    outage: dict[str, float] = {}

    def freeze_the_api_mid_run() -> None:
        wait_until(lambda: count_outputs(storage) >= ITEMS // 5, timeout=120)
        outage["outputs_before"] = count_outputs(storage)
        os.kill(api.pid, signal.SIGSTOP)
        outage["start"] = time.time()
        try:
            time.sleep(OUTAGE_SECONDS)
            outage["outputs_during"] = count_outputs(storage) - outage["outputs_before"]
        finally:
            outage["end"] = time.time()
            os.kill(api.pid, signal.SIGCONT)

    freezer = threading.Thread(target=freeze_the_api_mid_run)
    freezer.start()
    try:
        state = worker(
            queue, storage, {"idle_seconds": 0.5, "progress_seconds": 0.5}, return_state=True
        )
    finally:
        freezer.join()
    stats = state.result()

    assert state.is_completed()
    assert outage["outputs_during"] > 0, "queue work stopped while the API was down"
    assert stats["succeeded"] == ITEMS and count_outputs(storage) == ITEMS
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
        artifacts = client.read_artifacts()
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    assert run.state.is_completed()
    assert run.end_time.timestamp() > outage["end"], "the run ended before the API came back"
    assert any(a.key == "worker-stats" and a.flow_run_id == run_id for a in artifacts)
    during = [
        log
        for log in logs
        if outage["start"] <= log.timestamp.timestamp() <= outage["end"]
        and "tasks/s" in log.message
    ]
    assert during, "the progress logged during the outage never reached the API"
    figure(
        "7. Prefect API outage during a worker run",
        trials=1,
        items=ITEMS,
        lost=ITEMS - count_outputs(storage),
        duplicated=0,
        dead_lettered=queue.counts().dead,
        recovery_seconds=None,
        notes=f"API frozen {OUTAGE_SECONDS} s: {outage['outputs_during']} tasks done meanwhile; "
        f"{len(during)} progress logs from the outage delivered after it; run Completed with its "
        "worker-stats artifact",
    )
