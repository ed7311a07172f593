"""Hand a block to a child process without a Prefect API and without a command line.

A spec is ``{"type": "module:Class", "data": {...}}``, secrets included, so it travels only on a
pipe (a child's stdin), never in argv, the environment, a log or a flow-run parameter.
"""

from __future__ import annotations

import importlib
from typing import Any

from prefect.blocks.core import Block


def block_spec(block: Block) -> dict[str, Any]:
    cls = type(block)
    return {
        "type": f"{cls.__module__}:{cls.__qualname__}",
        "data": block.model_dump(mode="json", context={"include_secrets": True}),
    }


def block_from_spec(spec: dict[str, Any]) -> Block:
    module, _, name = spec["type"].partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls.model_validate(spec["data"])
