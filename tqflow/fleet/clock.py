"""The time the batch controller and its fleets read and wait on.

`SystemClock` in production; a simulated clock (``bench/fleet_day.py``) drives the same
controller and fleets through a day of a thousand pods in seconds: ``sleep`` is where the
simulated world moves on.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (what a record kept in storage says)."""
        ...

    def monotonic(self) -> float:
        """Seconds for intervals, never going back."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
