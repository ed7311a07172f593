"""Pass blocks around without their secrets showing.

- A *spec* is ``{"type": "module:Class", "data": {...}}``, secrets included, so it travels only
  on a pipe (a child's stdin), never in argv, the environment, a log or a flow-run parameter.
- A *slug* (``"sqs-task-queue/prod"``) names a saved block: deployments in ``prefect.yaml``
  pass blocks this way, so their parameters hold names, not credentials.
"""

from __future__ import annotations

import importlib
from typing import Any, TypeVar, Union

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


B = TypeVar("B", bound=Block)


def load_block(value: Union[B, str], kind: type[B]) -> B:
    """``value`` itself, or the saved block its slug (``block-type-slug/name``) names.

    Raises `ValueError` naming the slug, what was expected, and how to make one.
    """
    if not isinstance(value, str):
        return value
    if "/" not in value:
        raise ValueError(f"{value!r} is not a block slug: write block-type-slug/name, e.g. local-task-queue/demo")
    try:
        block = Block.load(value)
    except ValueError as exc:
        raise ValueError(
            f"no saved block {value!r} ({exc}); save one first, e.g. in the Prefect UI or "
            "with block.save('name')"
        ) from None
    if not isinstance(block, kind):
        raise ValueError(f"block {value!r} is a {type(block).__name__}, not a {kind.__name__}")
    return block
