"""How one worker drains its queue: the one model of a worker's options.

The loop (`tqflow.engine.worker.Worker`), the ``worker`` flow, the pipeline's fleets (local
processes and deployment runs) and ``tqflow work`` all take a `WorkerOptions`, so an option is
added here, once, and reaches every way a worker is started.
"""

from __future__ import annotations

import re
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tqflow.engine.messages import check_batch

#: A unit's name: part of a report's file name (`tqflow.engine.layout.report_name`).
_UNIT = re.compile(r"[A-Za-z0-9._-]{1,64}")


class WorkerOptions(BaseModel):
    """Options of one worker loop.

    Example:
        ```python
        from tqflow.engine.options import WorkerOptions

        options = WorkerOptions(idle_seconds=60, task_timeout_seconds=3600)
        ```
    """

    model_config = ConfigDict(extra="forbid")

    default_batch: str = Field(
        default="default",
        description="Batch for python-task-queue bodies, which name none.",
    )
    idle_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "Stop after the queue has been empty this long (30 s gives an enqueue that is "
            "still sending time to send more)."
        ),
    )
    wait_for_in_flight: bool = Field(
        default=True,
        description=(
            "Stay while other workers hold messages (they may fail and come back), not only "
            "while messages are visible. A fleet that relaunches workers when messages turn "
            "visible sets it off, so no worker idles behind one slow or retried item."
        ),
    )
    max_tasks: Optional[int] = Field(default=None, ge=1, description="Stop after this many tasks.")
    max_seconds: Optional[float] = Field(default=None, ge=0, description="Stop after this long.")
    overwrite: bool = Field(
        default=False, description="Re-run items whose output exists instead of skipping them."
    )
    prefetch: Optional[int] = Field(
        default=None,
        ge=1,
        description="Messages leased per receive (default: sized from recent task durations).",
    )
    prefetch_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Without `prefetch`: lease enough messages for this much work per receive.",
    )
    ack_seconds: float = Field(
        default=1.0,
        ge=0,
        description="Longest a finished task's acknowledgement waits to be sent in a batch.",
    )
    retry_base_seconds: float = Field(
        default=5.0,
        ge=0,
        description="First backoff before a failed task is retried; it doubles per attempt.",
    )
    retry_when: Optional[str] = Field(
        default=None,
        description=(
            "``module:function`` taking (attempt, exception) and returning whether to retry; "
            "default: retry every failure but a PermanentTaskError."
        ),
    )
    task_timeout_seconds: Optional[float] = Field(
        default=None,
        gt=0,
        description=(
            "Stop a task after this long (a batch's own limit wins); it is retried, and "
            "dead-lettered after the queue's max receive count."
        ),
    )
    queue_unreachable_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Stop the worker when the queue cannot be reached for this long.",
    )
    allow: list[str] = Field(
        default_factory=list,
        description=(
            "Modules whose functions may run besides those of batches enqueued through tqflow "
            "and the queue block's allowed_modules."
        ),
    )
    import_modules: list[str] = Field(
        default_factory=list,
        description="Modules to import first (python-task-queue RegisteredTask classes).",
    )
    progress_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "How often the worker logs its counters, rate and failures since the last line "
            "(in a worker flow run, its only lines in the run log besides start and end)."
        ),
    )
    memory_limit_mib: Optional[int] = Field(
        default=None,
        ge=64,
        description=(
            "Local workers: a worker process whose resident memory passes this is killed and "
            "reported OOMKilled, as Kubernetes does at a pod's memory limit (on GKE the pod's "
            "memory_limit does it). Checked about once a second."
        ),
    )
    report_seconds: float = Field(
        default=10.0,
        gt=0,
        description=(
            "How often the worker rewrites its report of each batch (<batch>/workers/), which "
            "`tqflow status` sums. The pipeline slows it as its fleet grows: every 10 s, or "
            "every workers / 10 s from 100 workers on."
        ),
    )

    unit: Optional[str] = Field(
        default=None,
        description=(
            "The fleet unit this worker belongs to (a worker run's id, a local worker's "
            "number), set by the pipeline's fleet: the worker's report names it and is "
            "rewritten every report_seconds while the worker lives (the pipeline's sign of "
            "life), and the worker drains when the pipeline's fleet shrinks by its unit."
        ),
    )

    @field_validator("default_batch")
    @classmethod
    def _batch_names_a_folder(cls, value: str) -> str:
        return check_batch(value)  # ParameterError, raised through pydantic as it is

    @field_validator("unit")
    @classmethod
    def _unit_names_a_file(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not _UNIT.fullmatch(value):
            raise ValueError(
                f"unit={value!r}: give letters, digits, '.', '_' or '-' (at most 64): it is "
                "part of the worker's report's name"
            )
        return value

    def import_code(self) -> None:
        """Import the modules and the retry rule these options name, so that a name that does
        not import fails where the options are given, naming it, not in every worker."""
        from tqflow.engine.calls import import_module, resolve

        for module in self.import_modules:
            import_module(module, "import_modules (--import-module)")
        if self.retry_when:
            resolve(self.retry_when, "retry_when rule")

    @classmethod
    def of(cls, options: WorkerOptions | dict | None = None, **settings: object) -> WorkerOptions:
        """``options`` with ``settings`` (field names) over it; validated, so a misspelt or
        out-of-range option fails here, naming it."""
        if isinstance(options, WorkerOptions):
            options = options.model_dump(exclude_unset=True)
        return cls.model_validate({**(options or {}), **settings})
