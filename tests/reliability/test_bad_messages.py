"""Reliability: every kind of message that fails outside its task function's own code, mixed
into a batch of good ones. Each must end as a reported failure (retried, then dead-lettered with
its reason and an error record), never as a worker crash."""

from __future__ import annotations

import json

from blocks import CAVECredentials
from tests.reliability.conftest import scaled
from tests.support.helpers import enqueue
from tqflow.engine.failures import read_error_record
from tqflow.engine.layout import output_path
from tqflow.engine.messages import decode
from tqflow.errors import MessageError

GOOD = scaled(20, 500)
TOKEN = "t0ken-never-shown"

#: key -> what its error record's last attempt says
BAD = {
    "9001": "cannot reach CAVE at http://127.0.0.1:9",  # its CAVE client cannot be built
    "9002": "the return value of tests.tasks:returns_a_set",  # not JSON: permanent
    "9003": "PermanentTaskError: zzz",  # 300 KiB of failure text
    "9004": "timed out after 2 s",  # hangs
    "9005": "has no 'no_such_function'",  # names nothing
    "9006": "nope",  # kwargs the function does not take
}


def test_every_kind_of_bad_message_is_dead_lettered_with_its_reason_and_the_worker_drains_the_rest(
    queue_factory, storage, forked_workers, figure
):
    queue = queue_factory(max_receive_count=2)
    enqueue(queue, "tests.tasks:square", range(GOOD // 2))
    enqueue(queue, "tests.tasks:needs_cave", [9001])
    enqueue(queue, "tests.tasks:returns_a_set", [9002])
    enqueue(queue, "tests.tasks:huge_permanent_error", [9003], size=300 * 1024)
    enqueue(queue, "tests.tasks:sleeps_on", [9004], slow=[9004])
    queue.send(
        [  # written by hand: tqflow's own enqueue refuses both
            _body("tests.tasks:no_such_function", "9005", {"x": 9005}),
            _body("tests.tasks:square", "9006", {"x": 9006, "nope": 1}),
        ]
    )
    queue.send(["{not json", json.dumps(["a", "list"])])  # undecodable: no key, no error record
    enqueue(queue, "tests.tasks:square", range(GOOD // 2, GOOD))
    # Nothing listens at the CAVE address: building the client fails on every attempt.
    cave = CAVECredentials(
        datastack_name="minnie65_public", server_address="http://127.0.0.1:9", token=TOKEN
    )

    stats = forked_workers.run(
        queue,
        storage,
        cave=cave,
        task_timeout_seconds=2,
        retry_base_seconds=0.05,
        idle_seconds=1,
        timeout=300,
    )

    assert stats["stop_reason"] == "idle"  # and the process exited 0 (checked by run)
    assert all(storage.exists(output_path("b", str(i))) for i in range(GOOD))
    dead = {_key(d.body): d for d in queue.dead_letters()}
    assert len(dead) == len(BAD) + 2, sorted(map(str, dead))
    for key, why in BAD.items():
        assert dead[key].reason  # a permanent failure's own text, or "received N times"
        record = read_error_record(storage, "b", key)
        assert why in record["attempts"][-1]["error"], (key, record["attempts"][-1]["error"][:300])
        assert TOKEN not in json.dumps(record)
    # cut to fit beside its body in one SQS message (256 KiB), whole in the error record
    assert (
        dead["9003"].reason.startswith("PermanentTaskError: zzz")
        and len(dead["9003"].reason) < 200 * 1024
    )
    assert len(read_error_record(storage, "b", "9003")["attempts"][0]["error"]) > 300 * 1024
    assert all(TOKEN not in d.reason for d in dead.values())
    figure(
        "11. Bad messages among good ones",
        trials=1,
        items=GOOD + len(BAD) + 2,
        lost=0,
        duplicated=0,
        dead_lettered=len(dead),
        recovery_seconds=None,
        notes="CAVE client that cannot be built, result not JSON, 300 KiB error, hung task, "
        "unknown function, wrong kwargs, 2 undecodable bodies: each dead-lettered with its reason; "
        f"the {GOOD} good items done by the same worker process, which ended idle",
    )


def _key(body: str) -> str:
    try:
        return decode(body).key
    except MessageError:
        return body  # undecodable: the body itself


def _body(fn: str, key: str, kwargs: dict) -> str:
    return json.dumps({"fn": fn, "kwargs": kwargs, "key": key, "batch": "b"})
