"""The Prefect API requests a batch may spend a minute, and launches paced to them.

Prefect Cloud limits an account's requests a minute, every API call counted (625 / 1,250 /
2,500 / 5,000 on Hobby / Starter / Team / Pro), and answers 429 with a Retry-After beyond.
Most of a batch's calls are not the controller's but its worker runs': each run, executed as a
pod executes it, makes ~22 calls of its own (its states, its blocks, its stats artifact) and the
Kubernetes worker ~6 more to submit it (`RUN_REQUESTS`, bench/README.md). A thousand-worker
launch at once is thousands of calls in a minute: the 429s that follow slow every run's
start and end. `ApiBudget` paces launches so that the batch stays within the share of a plan
it is given; 429s that come anyway are waited out by Prefect's client, and a controller look
that fails is only "unknown" (`tqflow.fleet.controller`).
"""

from __future__ import annotations

from typing import Optional, Union

from tqflow.errors import ParameterError

#: Requests a minute, every call counted, by Prefect Cloud plan (docs.prefect.io, rate limits).
PLANS = {"hobby": 625, "starter": 1_250, "team": 2_500, "pro": 5_000}
#: A worker run's own calls, as a pod makes them, and the Kubernetes worker's to submit it.
RUN_REQUESTS = 28
#: The controller's calls per look (queue counts are not Prefect's; the fleet's two reads and
#: now and then the pod events or the stats of runs that ended).
LOOK_REQUESTS = 3
#: Of a plan's minute, the share a batch's launches may burst into at once.
BURST = 0.25

BudgetSetting = Union[int, str, None]


def requests_per_minute(setting: BudgetSetting) -> Optional[int]:
    """A budget setting as requests a minute: a plan's name, a number, or ``None`` (no limit:
    a self-hosted server)."""
    if setting is None:
        return None
    if isinstance(setting, str) and not setting.isdigit():
        try:
            return PLANS[setting.lower()]
        except KeyError:
            raise ParameterError(
                f"api_budget={setting!r}: give a Prefect Cloud plan ({', '.join(PLANS)}), a "
                "number of requests a minute, or nothing on a self-hosted server"
            ) from None
    value = int(setting)
    if value < 2 * RUN_REQUESTS:
        raise ParameterError(
            f"api_budget={setting!r}: at least {2 * RUN_REQUESTS} requests a minute (a worker "
            f"run alone makes ~{RUN_REQUESTS})"
        )
    return value


class ApiBudget:
    """A token bucket of ``per_minute`` requests (none: no limit), refilled continuously,
    holding at most `BURST` of a minute; launches take `RUN_REQUESTS` each, looks
    `LOOK_REQUESTS`."""

    def __init__(self, per_minute: Optional[int], now: float) -> None:
        self.per_minute = per_minute
        self.capacity = None if per_minute is None else max(RUN_REQUESTS, BURST * per_minute)
        self._tokens = self.capacity or 0.0
        self._at = now

    def _refill(self, now: float) -> None:
        if self.per_minute is None or self.capacity is None:
            return
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.per_minute / 60)
        self._at = now

    def look(self, now: float) -> None:
        """A look of the controller's spent its requests."""
        self._refill(now)
        if self.per_minute is not None:
            self._tokens -= LOOK_REQUESTS

    def launches(self, wanted: int, now: float) -> int:
        """How many of ``wanted`` launches the budget allows now; takes their requests."""
        if self.per_minute is None:
            return wanted
        self._refill(now)
        allowed = max(0, min(wanted, int(self._tokens // RUN_REQUESTS)))
        self._tokens -= allowed * RUN_REQUESTS
        return allowed
