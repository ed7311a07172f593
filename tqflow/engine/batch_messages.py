"""A batch's task messages, made from its items: one message per item, keyed by `item_key`, the
call checked once, with the first item, before any message is made (`task_messages`, what
every enqueue sends).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

from tqflow.engine.calls import bind, resolve, signature_of
from tqflow.engine.messages import TaskMessage, check_batch, item_key
from tqflow.errors import BadArgumentsError


def task_messages(
    fn: str,
    items: Iterable[Any],
    batch: str,
    kwargs: Mapping[str, Any] | None = None,
    item_param: str | None = None,
    task_timeout_seconds: float | None = None,
) -> Iterator[TaskMessage]:
    """One message per item: ``fn(<item_param>=item, **kwargs)``, keyed by `item_key`, with
    the batch's time limit per task if one is given.

    ``item_param`` defaults to the function's first parameter. Raises `UnknownFunctionError`
    or `BadArgumentsError` before any message is made if ``fn`` cannot take the arguments.
    """
    check_batch(batch)
    func = resolve(fn)
    fixed = dict(kwargs or {})
    if item_param is None:
        signature = signature_of(func)
        params = list(signature.parameters.values()) if signature is not None else []
        if not params:
            raise BadArgumentsError(f"{fn} takes no parameter for the item")
        if params[0].kind in (params[0].VAR_POSITIONAL, params[0].VAR_KEYWORD):
            star = "*" if params[0].kind is params[0].VAR_POSITIONAL else "**"
            raise BadArgumentsError(
                f"{fn} takes {star}{params[0].name} first, no parameter of its own for the item "
                f"(tqflow calls fn(<parameter>=item, **kwargs)): wrap it in a function whose "
                "first parameter takes the item, e.g. def task(root_id): ..."
            )
        item_param = params[0].name
    if item_param in fixed:
        raise BadArgumentsError(
            f"kwargs set {item_param!r}, the parameter of {fn} that takes each item; remove "
            f"{item_param!r} from kwargs, or name another parameter for the item (item_param)"
        )
    first = True
    for item in items:
        message = TaskMessage(
            fn=fn,
            key=item_key(item),
            batch=batch,
            kwargs={item_param: item, **fixed},
            task_timeout_seconds=task_timeout_seconds,
        )
        if first:  # check the call once, with the first item, before anything is queued
            bind(
                func,
                message.args,
                message.kwargs,
                {"storage": lambda: None, "cave": lambda: None},
                key=message.key,
                fn=fn,
            )
            first = False
        yield message
