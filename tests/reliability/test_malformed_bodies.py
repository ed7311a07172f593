"""Reliability: bodies no worker can run — fuzzed by hypothesis — each end in the dead-letter
queue at once, with a reason, and the worker goes on."""

from __future__ import annotations

import json
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import scaled
from tqflow.engine.options import WorkerOptions
from tqflow.engine.worker import Worker

#: (examples, bodies per example) by backend. Hypothesis's first example is its simplest (every
#: body alike), so the bodies come in several examples, each on a queue of its own. Decoding,
#: importing and binding do not depend on the backend; the SQS run proves the move to its
#: dead-letter queue with the reason on fewer bodies, since moto takes ~0.1 s per dead letter.
EXAMPLES = {"local": (10, 50), "sqs": (scaled(3, 10), scaled(20, 50))}

_text = st.text(min_size=0, max_size=40)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)

#: Each strategy makes bodies that cannot run, each for its own reason.
bodies = st.one_of(
    # not JSON at all (text that does not parse, or parses to a non-object)
    _text.filter(lambda s: not s.strip().startswith("{")),
    st.lists(_json_value, max_size=3).map(json.dumps),
    # an object, but fn is missing or not a string
    st.dictionaries(_text.filter(lambda k: k != "fn"), _json_value, max_size=5).map(json.dumps),
    st.builds(
        lambda fn: json.dumps({"fn": fn, "kwargs": {}, "key": "k"}),
        st.integers() | st.none() | st.lists(st.integers(), max_size=2),
    ),
    # fn names a module that does not exist, or a function the module lacks
    st.builds(
        lambda mod, key: json.dumps({"fn": f"no_such_pkg_{mod}.tasks:f", "kwargs": {}, "key": key}),
        st.text("abcdefgh", min_size=1, max_size=8),
        st.text("0123456789", min_size=1, max_size=6),
    ),
    st.builds(
        lambda name: json.dumps({"fn": f"tests.tasks:missing_{name}", "kwargs": {}, "key": "k"}),
        st.text("abcdefgh", min_size=1, max_size=8),
    ),
    # kwargs of the wrong type, or that do not fit the function (unicode names, huge sets)
    st.builds(
        lambda kwargs: json.dumps({"fn": "tests.tasks:square", "kwargs": kwargs, "key": "k"}),
        st.lists(_json_value, max_size=3) | _text | st.integers(),
    ),
    st.builds(
        lambda extra: json.dumps(
            {"fn": "tests.tasks:square", "kwargs": {"x": 1, **extra}, "key": "k"}
        ),
        st.dictionaries(_text.filter(lambda k: k != "x"), _json_value, min_size=1, max_size=300),
    ),
    st.builds(
        lambda name: json.dumps({"fn": "tests.tasks:square", "kwargs": {name: 2}, "key": "k"}),
        _text.filter(lambda k: k != "x"),
    ),
)


def test_every_unrunnable_body_is_dead_lettered_with_a_reason_and_the_worker_survives(
    backend, queue_factory, storage, figure
):
    examples, size = EXAMPLES[backend]
    seen: list[str] = []

    @settings(
        max_examples=examples,
        database=None,
        suppress_health_check=[
            # A list here replaces the suite profile's (tests/conftest.py: too_slow), not adds.
            *settings.default.suppress_health_check,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(batch=st.lists(bodies, min_size=size, max_size=size))
    def each_dead_lettered_with_a_reason(batch: list[str]) -> None:
        queue = queue_factory(queue_name=f"fuzz-{uuid.uuid4().hex[:10]}", max_receive_count=3)
        assert queue.send(batch) == len(batch)

        stats = Worker(
            queue, storage, WorkerOptions(idle_seconds=0.2)
        ).run()  # in-process: a crash fails the test

        assert stats.dead_lettered == len(batch)
        assert stats.succeeded == stats.failed == 0
        counts = queue.counts()
        assert (counts.pending, counts.dead) == (0, len(batch))
        dead = queue.dead_letters(limit=len(batch))
        assert len(dead) == len(batch)
        assert all(d.reason and d.reason.strip() and d.receive_count == 1 for d in dead)
        seen.extend(batch)

    each_dead_lettered_with_a_reason()

    assert len(seen) == examples * size
    # No output for a task that never ran; an error file, where the body named an item.
    assert [p for p in storage.list("") if "/outputs/" in p] == []
    figure(
        "4. Malformed bodies (hypothesis fuzz)",
        trials=examples,
        items=len(seen),
        lost=0,
        duplicated=0,
        dead_lettered=len(seen),
        recovery_seconds=None,
        notes=f"{len(set(seen))} distinct bodies; each dead-lettered at its first receive with a "
        "reason; the worker ran on",
    )
