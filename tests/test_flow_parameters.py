"""The flows' block parameters, as the Prefect UI's run form uses them: it offers a type's saved
blocks in a picker, passes the one picked as ``{"$ref": {"block_document_id": ...}}``, and the
server checks that value against the parameter schema with Prefect's own validator before the
run is created. The form itself is driven in a browser by tests/test_ui.py."""

from __future__ import annotations

import uuid

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate

from flows.analysis import analysis
from flows.dead_letters import dead_letters
from flows.enqueue import enqueue
from flows.pipeline import pipeline
from flows.worker import worker

#: Each flow and its parameters that take a saved block.
BLOCK_PARAMETERS = [
    (pipeline, "queue"),
    (pipeline, "storage"),
    (pipeline, "cave"),
    (worker, "queue"),
    (worker, "storage"),
    (worker, "cave"),
    (enqueue, "queue"),
    (dead_letters, "queue"),
    (analysis, "storage"),
]
IDS = [f"{flow.name}-{name}" for flow, name in BLOCK_PARAMETERS]


def block_types(schema: dict, name: str) -> list[str]:
    """The block type slugs the run form offers a picker of for parameter ``name``."""
    branches = schema["properties"][name].get("anyOf", [schema["properties"][name]])
    refs = [b["$ref"].rsplit("/", 1)[-1] for b in branches if "$ref" in b]
    return [schema["definitions"][ref].get("block_type_slug") for ref in refs]


def errors_for(flow, name: str, value) -> list[str]:
    schema = parameter_schema(flow).model_dump()
    return [e.message for e in validate({name: value}, schema, preprocess=True) if name in e.path]


@pytest.mark.parametrize(("flow", "name"), BLOCK_PARAMETERS, ids=IDS)
def test_a_saved_block_picked_in_the_run_form_is_a_valid_parameter(flow, name):
    picked = {"$ref": {"block_document_id": str(uuid.uuid4())}}
    assert errors_for(flow, name, picked) == []


@pytest.mark.parametrize(("flow", "name"), BLOCK_PARAMETERS, ids=IDS)
def test_a_saved_blocks_slug_is_still_a_valid_parameter(flow, name):
    assert errors_for(flow, name, "some-block-type/some-name") == []


@pytest.mark.parametrize("flow", [pipeline, worker, enqueue, dead_letters], ids=lambda f: f.name)
def test_the_queue_picker_offers_the_saved_blocks_of_each_backend(flow):
    # An abstract TaskQueue has no saved blocks of its own: its picker was an "Add" button.
    schema = parameter_schema(flow).model_dump()
    assert block_types(schema, "queue") == ["local-task-queue", "sqs-task-queue"]
