"""Task messages: tqflow's format, python-task-queue's formats, keys and limits."""

from __future__ import annotations

import json
from functools import partial
from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.helpers import task_queue_bodies
from tqflow.engine.batch_messages import task_messages
from tqflow.engine.calls import bind, resolve
from tqflow.engine.messages import TaskMessage, decode, item_key
from tqflow.errors import (
    BadArgumentsError,
    MessageTooLargeError,
    UndecodableMessageError,
    UnknownFunctionError,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def bind_message(message: TaskMessage, injectables: Optional[dict] = None):
    """What the worker does with a message: its arguments bound to its function."""
    return bind(
        resolve(message.fn),
        message.args,
        message.kwargs,
        injectables or {},
        key=message.key,
        fn=message.fn,
    )


@given(kwargs=st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=5))
def test_encode_then_decode_gives_the_same_message(kwargs):
    message = TaskMessage(fn="tests.tasks:square", key="k1", batch="b", kwargs=kwargs)
    assert decode(message.encode()) == message


def test_message_body_is_the_documented_json():
    body = TaskMessage(fn="m:f", key="7", batch="b", kwargs={"x": 7}).encode()
    assert json.loads(body) == {"fn": "m:f", "kwargs": {"x": 7}, "key": "7", "batch": "b"}


def test_encode_refuses_a_body_over_the_limit_naming_the_item():
    message = TaskMessage(fn="m:f", key="item-9", batch="b", kwargs={"blob": "x" * 1000})
    with pytest.raises(MessageTooLargeError, match="item-9"):
        message.encode(max_bytes=500)


def test_encode_names_the_item_whose_arguments_are_not_json():
    message = TaskMessage(fn="m:f", key="item-3", batch="b", kwargs={"when": object()})
    with pytest.raises(BadArgumentsError, match="item-3"):
        message.encode()


@pytest.mark.parametrize(
    "item, key",
    [(864691135000000001, "864691135000000001"), ("abc_1.v2", "abc_1.v2"), ("007x", "007x")],
)
def test_readable_items_are_their_own_key(item, key):
    assert item_key(item) == key


@pytest.mark.parametrize(
    "a, b", [(1, "1"), (7, "007"), (1, 1.0), (1, True), ("true", True), ("h-1", "h-2"), (-5, "-5")]
)
def test_items_of_different_types_or_spellings_get_different_keys(a, b):
    assert item_key(a) != item_key(b)


@given(item=json_values)
def test_every_item_gets_a_deterministic_key_safe_as_a_file_name(item):
    key = item_key(item)
    assert key == item_key(json.loads(json.dumps(item)))
    assert "/" not in key and not key.startswith(".") and len(key) <= 200


def test_different_items_get_different_keys():
    assert item_key({"a": 1}) != item_key({"a": 2})
    assert item_key("x/y") != item_key("x_y")


@pytest.mark.parametrize(
    "body, reason",
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON list"),
        ('{"hello": 1}', "neither 'fn'"),
        ('{"fn": "no_colon", "key": "k"}', "package.module:function"),
        ('{"fn": "m:f", "kwargs": [], "key": "k"}', "'kwargs' must be an object"),
        ('{"fn": "m:f", "key": "../etc/passwd"}', "cannot name an output file"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_undecodable_bodies_are_refused_with_the_reason(body, reason):
    with pytest.raises(UndecodableMessageError, match=reason):
        decode(body)


def test_unknown_module_is_named_with_the_fix():
    with pytest.raises(UnknownFunctionError, match="no_such_module.*install the package"):
        resolve("no_such_module:f")


def test_unknown_function_in_a_known_module_is_named():
    with pytest.raises(UnknownFunctionError, match="has no 'nope'"):
        resolve("tests.tasks:nope")


def test_arguments_that_do_not_bind_are_named():
    message = TaskMessage(fn="tests.tasks:square", key="k", batch="b", kwargs={"y": 1})
    with pytest.raises(BadArgumentsError, match=r"tests.tasks:square\(x\)"):
        bind_message(message)


def test_bind_injects_storage_only_when_the_function_asks_for_it():
    message = TaskMessage(fn="tests.tasks:writes_extra", key="k", batch="b", kwargs={"x": 2})
    bound = bind_message(message, {"storage": lambda: "the-storage"})
    assert bound.arguments == {"x": 2, "storage": "the-storage"}
    square = TaskMessage(fn="tests.tasks:square", key="k", batch="b", kwargs={"x": 2})
    assert bind_message(square, {"storage": lambda: 1 / 0}).arguments == {"x": 2}


def test_task_messages_pass_each_item_to_the_first_parameter():
    messages = list(task_messages("tests.tasks:tracked", [1, 2], "b", {"log_dir": "/tmp/x"}))
    assert [m.kwargs for m in messages] == [
        {"x": 1, "log_dir": "/tmp/x"},
        {"x": 2, "log_dir": "/tmp/x"},
    ]
    assert [m.key for m in messages] == ["1", "2"]


def test_task_messages_check_the_call_before_making_any():
    with pytest.raises(BadArgumentsError):
        list(task_messages("tests.tasks:square", [1], "b", {"unknown": 1}))


def test_task_queue_queueable_body_decodes_and_runs(tmp_path):
    import tests.tq_tasks as tq_tasks

    (body,) = task_queue_bodies(tmp_path, [partial(tq_tasks.power, 3, exponent=4)])
    message = decode(body, default_batch="legacy")
    assert message.fn == "tests.tq_tasks:power"
    assert message.batch == "legacy"
    func = resolve(message.fn)
    bound = bind_message(message)
    assert func(*bound.args, **bound.kwargs) == 81
    assert message.key == decode(body).key  # deterministic


def test_task_queue_registered_task_body_decodes_and_runs(tmp_path):
    import tests.tq_tasks as tq_tasks

    (body,) = task_queue_bodies(
        tmp_path, [tq_tasks.WriteTask(path=str(tmp_path / "out"), text="hi")]
    )
    message = decode(body)
    assert message.fn == "tests.tq_tasks:WriteTask"
    func = resolve(message.fn)
    bound = bind_message(message)
    func(*bound.args, **bound.kwargs)
    assert (tmp_path / "out").read_text() == "hi"


def test_unregistered_task_queue_class_names_the_fix():
    with pytest.raises(UnknownFunctionError, match="import_modules"):
        decode('{"payload": {"class": "NeverDefinedTask", "a": 1}, "queueName": "q"}')


def test_a_cloudfiles_client_parameter_keeps_its_own_argument():
    # cloud-files' CloudFiles has every member of tqflow's storage contract; a
    # python-task-queue function that takes one must not get the worker's storage.
    message = TaskMessage(fn="tests.tasks:reads_with_cloudfiles", key="k", batch="b", args=("a",))
    bound = bind_message(message, {"storage": lambda: "THE-WORKERS-STORAGE"})
    assert "storage" not in bound.arguments


def test_a_parameter_named_storage_is_injected_only_when_annotated_so():
    from tqflow.engine.calls import resolve

    injected = {"storage": lambda: "THE-WORKERS-STORAGE"}
    own = TaskMessage(fn="tests.tasks:takes_its_own_storage", key="k", batch="b", args=("a.txt",))
    bound = bind_message(own, injected)
    assert resolve(own.fn)(*bound.args, **bound.kwargs) == "gs://theirs/a.txt"
    positional = TaskMessage(fn=own.fn, key="k", batch="b", args=("a.txt", "s3://mine"))
    bound = bind_message(positional, injected)
    assert bound.arguments["storage"] == "s3://mine"
    annotated = TaskMessage(fn="tests.tasks:writes_extra", key="k", batch="b", kwargs={"x": 2})
    assert bind_message(annotated, injected).arguments["storage"] == "THE-WORKERS-STORAGE"
