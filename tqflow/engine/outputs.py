"""What an output record (``<batch>/outputs/<key>.json``) and a failed attempt hold, and how a
task's return value is made storable. Where they live: `tqflow.engine.layout`."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from tqflow.engine.messages import TaskMessage
from tqflow.errors import ResultNotJSONError


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def encoded_output(message: TaskMessage, record: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """An output record (`output_record`) as it is stored, encoded once: JSON, with NaN and
    infinities in its result as null (so the analysis never meets them), and the record that
    holds that result. Raises `ResultNotJSONError` naming the call when it is not JSON."""
    try:
        return record, _ENCODER.encode(record).encode("utf-8")
    except ValueError:  # NaN or an infinity somewhere: rare, so only then walked and again
        record = {**record, "result": _finite(record.get("result"))}
        return record, _ENCODER.encode(record).encode("utf-8")
    except (TypeError, RecursionError) as exc:
        raise ResultNotJSONError(
            f"the return value of {message.fn}({message.key}) cannot be stored as JSON ({exc}): "
            "return numbers, strings, lists and dicts (NumPy values are fine), and write large "
            "or binary results through the injected storage, returning their paths"
        ) from None


def json_default(obj: Any) -> Any:
    """What ``json.dumps`` makes of a value it does not know: NumPy's arrays and scalars as
    lists and numbers; anything else is refused."""
    if hasattr(obj, "tolist"):  # NumPy arrays and scalars
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


#: One encoder, kept: ``json.dumps`` builds a new one on every call.
_ENCODER = json.JSONEncoder(default=json_default, allow_nan=False)


def _finite(value: Any) -> Any:
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def output_record(
    message: TaskMessage,
    result: Any,
    *,
    attempt: int,
    seconds: float,
    worker: str,
    resources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record written to ``output_path``: the result, what produced it, and what it used
    (`tqflow.engine.task_resources.TaskResources`)."""
    return {
        "key": message.key,
        "batch": message.batch,
        "fn": message.fn,
        "kwargs": message.kwargs,
        "result": result,
        "attempt": attempt,
        "seconds": round(seconds, 6),
        "worker": worker,
        "finished_at": now_iso(),
        "resources": resources,
    }


def failed_attempt(
    *, attempt: int, error: BaseException, traceback: str, worker: str
) -> dict[str, Any]:
    """One entry of an error record's ``attempts``."""
    return {
        "attempt": attempt,
        "error": f"{type(error).__name__}: {error}",
        "traceback": traceback,
        "worker": worker,
        "failed_at": now_iso(),
    }
