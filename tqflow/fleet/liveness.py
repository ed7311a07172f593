"""A unit's signs of life, read from a listing of its batch's worker reports.

Every worker of a fleet unit rewrites its report every ``report_seconds`` while it lives, each
time under a new name that carries its unit (`tqflow.engine.reports`), so one listing of
``<batch>/workers/`` tells which units wrote since the last look: no report is read, and no
clock but the controller's is compared. A unit that is running, as its fleet sees it, and has
written nothing for ``silent_seconds`` is *silent*: its run is Running for Prefect but no worker
of it works (a pod that vanished with its run left Running, PrefectHQ/prefect#8409; a process
hung outside any task).

When most of three or more running units fall silent at once, the likelier cause is the storage
the reports go to: none is declared silent then.
"""

from __future__ import annotations

from typing import Optional

from tqflow.engine.contracts import StorageReader
from tqflow.engine.layout import report_version, reports_prefix, unit_of_report


class Liveness:
    def __init__(self, storage: StorageReader, batch: str, silent_seconds: float) -> None:
        self.storage, self.batch, self.silent_seconds = storage, batch, silent_seconds
        #: The newest version seen of each report.
        self._versions: dict[str, int] = {}
        #: When a unit last wrote (first seen to, at the first look), on the controller's clock.
        self._wrote: dict[str, float] = {}
        #: When each running unit was first seen running.
        self._running_since: dict[str, float] = {}
        #: Of the last look: how many running units were silent, when most of them were.
        self.suspect: Optional[int] = None

    def silent(self, running_units: frozenset[str], now: float) -> list[str]:
        """The running units that have written no report for ``silent_seconds``; raises if
        the reports cannot be listed (the controller then declares none)."""
        for path in self.storage.list(reports_prefix(self.batch)):
            if not path.endswith(".json"):
                continue
            report, version = report_version(path)
            unit = unit_of_report(report)
            if unit is not None and version > self._versions.get(report, -1):
                self._versions[report] = version
                self._wrote[unit] = now
        for gone in set(self._running_since) - running_units:
            del self._running_since[gone]
        for unit in running_units:
            self._running_since.setdefault(unit, now)
        silent = [
            unit
            for unit in sorted(running_units)
            if now - max(self._running_since[unit], self._wrote.get(unit, float("-inf")))
            > self.silent_seconds
        ]
        self.suspect = None
        if len(running_units) >= 3 and len(silent) > len(running_units) / 2:
            self.suspect = len(silent)
            return []
        return silent
