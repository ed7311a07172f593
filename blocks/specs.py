"""Name saved blocks instead of passing their secrets.

- A *slug* (``"sqs-task-queue/prod"``) names a saved block: deployments in ``prefect.yaml``
  pass blocks this way, so their parameters hold names, not credentials.
- A *spec* (`tqflow.engine.specs`) carries a block, secrets included, to a worker process.
"""

from __future__ import annotations

from typing import TypeVar, Union

from prefect.blocks.core import Block

B = TypeVar("B", bound=Block)


def load_block(value: Union[B, str], kind: type[B]) -> B:
    """``value`` itself, or the saved block its slug (``block-type-slug/name``) names.

    Raises `ValueError` naming the slug, what was expected, and how to make one.
    """
    if not isinstance(value, str):
        return value
    if "/" not in value:
        raise ValueError(
            f"{value!r} is not a block slug: write block-type-slug/name, e.g. local-task-queue/demo"
        )
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
