"""Naming saved blocks instead of passing their secrets: a *slug* (``"sqs-task-queue/prod"``)
names a saved block; deployments in ``prefect.yaml`` and a pipeline's worker runs pass blocks
this way, so their parameters hold names, not credentials (`block_slug`, `load_block`). And the
schema a block needs to be picked in the UI's run form (`referable_by`).
"""

from __future__ import annotations

from typing import Any, Optional, TypeVar, Union

from prefect.blocks.core import Block, schema_extra
from prefect.utilities.dispatch import lookup_type
from pydantic import ConfigDict

B = TypeVar("B", bound=Block)


def referable_by(field: str) -> ConfigDict:
    """``model_config`` of a tqflow block whose fields all have defaults, so that the Prefect UI's
    run form can pass a saved one as a flow parameter.

    The server checks a block parameter against "the block inline, or ``{"$ref":
    {"block_document_id": ...}}``: exactly one". With no required field, the reference is also a
    valid inline block, matches both, and the form refused every saved block ("is not valid
    under any of the given schemas"). The form drops schema keywords it does not know (a
    ``not: {required: [$ref]}`` was dropped) but keeps ``required``, so the schema names the
    block's identifying ``field`` as required. Python callers may still leave it out (its
    default applies); the UI's forms fill it with the default.
    """

    def extra(schema: dict[str, Any], model: type[Block]) -> None:
        schema_extra(schema, model)
        schema["required"] = sorted({*schema.get("required", []), field})

    return ConfigDict(json_schema_extra=extra)


def block_slug(block: Block) -> Optional[str]:
    """``block-type-slug/name`` of a saved (or loaded) block; None for one never saved. The one
    place that reads Prefect's record of a block's name."""
    name = getattr(block, "_block_document_name", None)
    if name is None or getattr(block, "_is_anonymous", False):
        return None
    return f"{block.get_block_type_slug()}/{name}"


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
        block = _load(value)
    except ValueError as exc:
        raise ValueError(
            f"no saved block {value!r} ({exc}); save one first, e.g. in the Prefect UI or "
            "with block.save('name')"
        ) from None
    if not isinstance(block, kind):
        raise ValueError(f"block {value!r} is a {type(block).__name__}, not a {kind.__name__}")
    return block


def _load(slug: str) -> Block:
    """The saved block ``slug`` names, loaded by its class when this process has imported it
    (tqflow's own always are). ``Block.load(slug)`` first imports every installed collection
    (prefect-kubernetes, prefect-aws, prefect-gcp: ~0.8 s of CPU per process), even when the
    class is registered already; it stays the way to other packages' block types."""
    block_type_slug, _, name = slug.partition("/")
    try:
        cls = lookup_type(Block, block_type_slug)
    except KeyError:
        return Block.load(slug)
    return cls.load(name)
