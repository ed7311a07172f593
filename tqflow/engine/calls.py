"""Calling a task: its function resolved from ``package.module:function`` (importing the
module, so a worker needs no registry imported first; python-task-queue ``RegisteredTask``
classes too), and a message's arguments bound to it, with what the worker injects.

A task asks the worker for an object by annotating a parameter with its type's name
(`INJECTED_TYPES`): ``storage: CloudFilesStorage`` (the worker's storage), ``cave: CAVEclient``
(its CAVE client). Only an annotation asks: a python-task-queue function's own ``storage``
argument is never replaced.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
from typing import Any, Callable, Mapping, Sequence

from tqflow.errors import BadArgumentsError, UnknownFunctionError


def resolve(fn: str, what: str = "task function") -> Callable[..., Any]:
    """Import ``package.module:function`` and return the callable; errors name it as ``what``
    (``"task function"``, ``"retry_when rule"``, ``"items_from function"``).

    A python-task-queue ``RegisteredTask`` class resolves to a callable that builds the task
    and runs its ``execute()``; any other class is refused.
    """
    module_name, colon, attr_path = fn.partition(":")
    if not colon or not module_name or not attr_path:
        raise UnknownFunctionError(
            f"{what} {fn!r} must be written package.module:function, e.g. "
            "tqflow.examples:skeleton_stats"
        )
    module = import_module(module_name, f"{what} {fn!r}")
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UnknownFunctionError(
                f"module {module_name!r} has no {attr_path!r} ({what} {fn!r}); check "
                "the name, or the version of the package installed in the worker"
            ) from None
    if inspect.isclass(target):
        if callable(getattr(target, "execute", None)):
            return _registered_task_runner(target)
        raise UnknownFunctionError(
            f"{what} {fn!r} is a class, not a function: name a function "
            "(package.module:function), or a python-task-queue RegisteredTask class"
        )
    if not callable(target):
        raise UnknownFunctionError(f"{what} {fn!r} is a {type(target).__name__}, not a function")
    return target


def import_module(name: str, what: str) -> Any:
    """``importlib.import_module(name)``; a module that cannot be imported, or raises while it
    is, is an `UnknownFunctionError` naming ``what`` needs it and how to provide it."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # ImportError, or any error raised while importing it
        raise UnknownFunctionError(
            f"cannot import module {name!r} for {what} ({type(exc).__name__}: {exc}); "
            f"{_import_hint(name, exc)}"
        ) from None


def _import_hint(module_name: str, exc: Exception) -> str:
    top = module_name.split(".")[0]
    here = os.getcwd()
    if isinstance(exc, ModuleNotFoundError) and (
        os.path.isfile(os.path.join(here, top + ".py")) or os.path.isdir(os.path.join(here, top))
    ):
        return (
            f"{top!r} is in the current folder ({here}), where this program does not look for "
            "modules: install your package (pip install -e .) or run with PYTHONPATH=. — and "
            "install it in the worker's environment too (for GKE: the worker image)"
        )
    return (
        "install the package that provides it in the worker's environment (for GKE: the "
        "worker image)"
    )


def _registered_task_runner(cls: type) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        return cls(*args, **kwargs).execute()

    run.__signature__ = inspect.signature(cls)  # type: ignore[attr-defined]
    run.__name__ = cls.__name__
    return run


@functools.lru_cache(maxsize=256)
def signature_of(func: Callable[..., Any]) -> inspect.Signature | None:
    """``inspect.signature`` once per function: it costs more than a no-op task."""
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


#: What a task may ask the worker for, by annotating a parameter with the type's name:
#: ``storage: CloudFilesStorage`` (the worker's storage), ``cave: CAVEclient`` (its CAVE client).
#: Names, not the engine's protocols: cloud-files' own ``CloudFiles`` has every member of
#: `Storage`, so a structural match would replace a python-task-queue function's own
#: ``storage: CloudFiles`` argument; and caveclient's ``CAVEclient`` is a factory whose clients
#: are not its instances. The names work for string annotations that cannot be resolved too.
INJECTED_TYPES = {"storage": ("CloudFilesStorage",), "cave": ("CAVEclient", "CAVEclientFull")}


@functools.lru_cache(maxsize=256)
def injected_parameters(func: Callable[..., Any]) -> tuple[tuple[str, str, int], ...]:
    """``(parameter, what, position)`` for each parameter of ``func`` annotated with a type the
    worker injects. Only an annotation asks: a python-task-queue function's own ``storage``
    argument is never replaced."""
    signature = signature_of(func)
    if signature is None:
        return ()
    found = []
    for position, (name, parameter) in enumerate(signature.parameters.items()):
        annotation = parameter.annotation
        if annotation is inspect.Parameter.empty:
            continue
        text = (
            annotation
            if isinstance(annotation, str)
            else getattr(annotation, "__name__", str(annotation))
        )
        for what, type_names in INJECTED_TYPES.items():
            if any(re.search(rf"\b{type_name}\b", text) for type_name in type_names):
                found.append((name, what, position))
    return tuple(found)


def bind(
    func: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    injectables: Mapping[str, Callable[[], Any]] = {},
    *,
    key: str,
    fn: str,
) -> inspect.BoundArguments:
    """Bind a message's ``args`` and ``kwargs`` to ``func`` (the function ``fn`` names, for
    item ``key``: the words of the error).

    A parameter annotated with a type the worker injects (`INJECTED_TYPES`) that the message
    does not set gets the object ``injectables[what]()`` makes. Raises `BadArgumentsError`
    naming the function and what is wrong.
    """
    signature = signature_of(func)
    if signature is None:
        return _unchecked(args, kwargs)
    arguments = dict(kwargs)
    injected = injected_parameters(func)
    for name, what, position in injected:
        if name not in arguments and position >= len(args) and what in injectables:
            arguments[name] = injectables[what]()
    try:
        bound = signature.bind(*args, **arguments)
    except TypeError as exc:
        skip = {name for name, _, _ in injected}
        expected = ", ".join(n for n in signature.parameters if n not in skip)
        raise BadArgumentsError(
            f"arguments of item {key!r} do not fit {fn}({expected}): {exc}"
        ) from None
    return bound


def _unchecked(args: Sequence[Any], kwargs: Mapping[str, Any]) -> inspect.BoundArguments:
    # Builtins without a signature: let the call itself check the arguments.
    sig = inspect.Signature(
        [
            inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
            inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
        ]
    )
    return sig.bind(*args, **kwargs)
