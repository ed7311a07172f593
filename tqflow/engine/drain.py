"""A worker's notice to drain: its fleet shrank by its unit.

A shrinking fleet does not SIGTERM the workers it no longer needs (a task stopped half-way is
run again elsewhere, at full cost): it names their units in ``<batch>/fleet/drain.json``
(`DrainBoard`, written by the pipeline's controller), and each worker of such a unit finishes
the task it is running, takes no more, releases what it had prefetched and ends with
`StopReason.DRAINED` (`DrainNotice`, read by the worker loop between tasks, at most every
``every_seconds``: one read per worker per report interval, ten a second across a fleet of
1,000).
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

from tqflow.engine.contracts import Storage
from tqflow.engine.layout import drain_path


class DrainNotice:
    """Whether ``unit``'s workers have been asked to drain, read from storage at most every
    ``every_seconds`` (a read that fails is tried again next time: the worker goes on)."""

    def __init__(
        self,
        storage: Storage,
        batch: str,
        unit: str,
        every_seconds: float,
        log: logging.Logger | logging.LoggerAdapter,
    ) -> None:
        self.storage, self.path, self.unit = storage, drain_path(batch), unit
        self.every_seconds, self.log = every_seconds, log
        self._next_read = time.monotonic() + every_seconds
        self._requested = False

    def requested(self) -> bool:
        if self._requested or time.monotonic() < self._next_read:
            return self._requested
        self._next_read = time.monotonic() + self.every_seconds
        try:
            board = self.storage.get_json(self.path)
        except Exception as exc:  # a notice is never worth the work: look again later
            self.log.debug("could not read %s: %s", self.path, exc)
            return False
        units = board.get("units") if isinstance(board, dict) else None
        self._requested = isinstance(units, list) and self.unit in units
        return self._requested


class DrainBoard:
    """The pipeline's side: the units told to drain, written whole each time it grows."""

    def __init__(self, storage: Storage, batch: str) -> None:
        self.storage, self.path = storage, drain_path(batch)
        self.units: set[str] = set()

    def drain(self, units: Iterable[str]) -> None:
        """Add ``units`` to the board (raises if the board cannot be written: the caller
        tries again on its next tick)."""
        units = set(units) - self.units
        if not units:
            return
        self.storage.put_json(self.path, {"units": sorted(self.units | units)})
        self.units |= units
