"""An interrupted ``tqflow enqueue``, run again, leaves one live message per item: Ctrl-C
(SIGINT) and SIGKILL at a random point of the send, on both backends, the real command in its
own process."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Optional

import pytest

from blocks import CloudFilesStorage, LocalTaskQueue
from tests.support.cloud import sqs_credentials
from tests.support.helpers import child_env, wait_until
from tqflow.engine.messages import decode

#: Enough steps that an interrupt lands mid-send on a busy machine too: the local queue sends a
#: step of 1,000 in milliseconds, and 20,000 local items were too few (a fresh-clone run's
#: SIGINT came after the whole send); moto's SQS costs grow with the queue (receiving 600
#: messages takes a minute), so SQS runs fewer items in smaller steps. (Smaller sizes were tried: the signal then came
#: after the whole send on a busy machine.)
ITEMS = {"local": 50_000, "sqs": 300}
STEP = {"local": 1_000, "sqs": 50}
BIN = Path(sys.executable).parent


def make_target(backend: str, data: Path, moto: Optional[str] = None):
    """The queue an enqueue fills, the CLI options that name it, and the environment the
    command runs in. SQS needs a Prefect API (its blocks are saved there) and moto's URL."""
    if backend == "local":
        queue = LocalTaskQueue(path=str(data / "queue.sqlite"), queue_name="resume", wait_seconds=0)
        return queue, ["--data", str(data), "--queue", "resume"], child_env()
    from prefect.settings import PREFECT_API_URL

    from blocks.queues.sqs import SQSTaskQueue

    name = f"resume-{uuid.uuid4().hex[:8]}"
    queue = SQSTaskQueue(queue_name=name, aws_credentials=sqs_credentials(moto), wait_seconds=0)
    queue.save(name)
    CloudFilesStorage(cloudpath=f"file://{data}").save(name)
    env = {**child_env(), "PREFECT_API_URL": PREFECT_API_URL.value()}
    options = [
        "--queue-block",
        f"sqs-task-queue/{name}",
        "--storage-block",
        f"cloud-files-storage/{name}",
    ]
    return queue, options, env


@pytest.fixture
def target(request, backend, tmp_path):
    if backend == "local":
        return make_target(backend, tmp_path / "data")
    request.getfixturevalue("prefect_api")
    return make_target(backend, tmp_path / "data", request.getfixturevalue("moto_endpoint"))


def enqueue_command(items_file: Path, options: list[str], step: int = 1_000) -> list[str]:
    return [
        str(BIN / "tqflow"),
        "enqueue",
        "tests.tasks:square",
        "--items-file",
        str(items_file),
        "--batch",
        "resume",
        "--step",
        str(step),
        *options,
    ]


def live_keys(queue) -> Counter:
    """Every live message's key, counted: received with a long lease, then released."""
    keys: Counter = Counter()
    leases = []
    batch = 10 if queue.deduplicates is False else 1_000  # SQS receives at most 10 at once
    while True:
        got = queue.receive(max_messages=batch, lease_seconds=300, wait_seconds=0)
        if not got:
            break
        leases.extend(got)
        keys.update(decode(lease.body).key for lease in got)
    return keys


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_an_interrupted_enqueue_run_again_leaves_one_live_message_per_item(
    target, tmp_path, signum, backend
):
    queue, options, env = target
    n, step = ITEMS[backend], STEP[backend]
    roots = [864691135000000000 + 7 * i for i in range(n)]
    items_file = tmp_path / "roots.txt"
    items_file.write_text("\n".join(map(str, roots)) + "\n")
    stop_at = random.randint(1, n // 2)  # the first half: the signal lands before the last step

    first = subprocess.Popen(
        enqueue_command(items_file, options, step),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until(
        lambda: first.poll() is not None or (queue.exists() and queue.counts().visible >= stop_at),
        timeout=300,
        every=0.01 if backend == "local" else 0.2,
    )
    if first.poll() is not None:
        out, _ = first.communicate()
        raise AssertionError(
            f"the enqueue ended ({first.returncode}) before it could be interrupted:\n{out}"
        )
    first.send_signal(signum)
    out, _ = first.communicate(timeout=120)
    if signum == signal.SIGINT and first.returncode == 0:
        # On a busy machine the signal can land in the last step, which a first Ctrl-C lets
        # finish: then every item is queued, and the run again below must add none.
        assert "stopping after the step in progress" in out and f"queued {n:,} tasks" in out, out
    elif signum == signal.SIGINT:
        assert first.returncode == 130, out
        assert "Run the same enqueue again to queue the rest" in out, out

    again = subprocess.run(
        enqueue_command(items_file, options, step),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stdout + again.stderr

    keys = live_keys(queue)
    assert set(keys) == {str(r) for r in roots}  # every item queued
    extra = sum(keys.values()) - n
    if backend == "local" or signum == signal.SIGINT:
        assert extra == 0, f"{extra} duplicate messages"
    else:
        # SQS cannot deduplicate: a kill between a step's send and its record re-sends that step
        assert extra <= step, f"{extra} duplicate messages, more than one step"


@pytest.mark.parametrize("backend", ["local"])  # on SQS the interrupted runs above re-run too
def test_running_a_finished_enqueue_again_queues_nothing(target, tmp_path):
    queue, options, env = target
    items_file = tmp_path / "roots.txt"
    items_file.write_text("\n".join(str(864691135000000000 + i) for i in range(100)) + "\n")
    for expected in (
        "queued 100 tasks",
        "queued 0 tasks; 0 skipped as already done; 100 already queued",
    ):
        run = subprocess.run(
            enqueue_command(items_file, options),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0 and expected in run.stdout, run.stdout + run.stderr
    assert sum(live_keys(queue).values()) == 100


def test_the_sent_record_reads_its_steps_and_those_earlier_versions_wrote(storage):
    from tqflow.engine.layout import enqueued_prefix
    from tqflow.enqueue.sent_record import SentRecord

    record = SentRecord(storage, "b", "q")
    storage.put(enqueued_prefix("b", "q") + "00000000000000000001-old.txt", b"1\n2\n")
    record.add(["3", "4"])
    record.add(["5"])
    storage.put(enqueued_prefix("b", "q") + "00000000000000000009-bad.json", b'{"keys": [')
    assert record.keys() == {"1", "2", "3", "4", "5"}


def test_a_ctrl_c_while_waiting_on_a_pipe_that_never_writes_stops_at_once(tmp_path):
    import os

    pipe = tmp_path / "items.csv"
    os.mkfifo(pipe)
    writer = subprocess.Popen(
        ["sh", "-c", f'exec 3>"{pipe}"; exec sleep 600']
    )  # opens, writes nothing
    data = tmp_path / "data"
    command = [str(BIN / "tqflow"), "enqueue", "tests.tasks:square", "--items-file", str(pipe),
               "--data", str(data)]  # fmt: skip
    enqueue = subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        # blocked in the read: the pipe is open in the enqueue, and no line ever comes
        wait_until(
            lambda: any(os.path.realpath(f"/proc/{enqueue.pid}/fd/{fd}") == str(pipe)
                        for fd in os.listdir(f"/proc/{enqueue.pid}/fd")),
            timeout=120,
        )  # fmt: skip
        enqueue.send_signal(signal.SIGINT)
        out, err = enqueue.communicate(timeout=60)  # not "when the writer is done"
    finally:
        enqueue.kill()
        writer.kill()
        writer.wait()
    assert enqueue.returncode == 130, out + err
    assert "stopped while reading the items: nothing was queued" in " ".join(err.split())
    assert "Traceback" not in out + err
