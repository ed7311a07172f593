"""`SentRecord`: what an enqueue sent to a queue that cannot deduplicate (SQS)."""

from __future__ import annotations

import logging
import time
import uuid

from tqflow.engine.contracts import BatchStorage
from tqflow.engine.layout import enqueued_prefix


class SentRecord:
    """What an enqueue sent to a queue that cannot deduplicate, kept in the batch's storage
    folder (``<batch>/enqueued/<queue>/<step>.json``, ``{"keys": [...]}``), so that a re-run,
    after the enqueue finished or was interrupted, sends only what is missing. The steps are
    read in parallel (a thousand of them at 10^6 items); ``.txt`` steps, one key per line, are
    what earlier versions wrote, and are read too."""

    def __init__(self, storage: BatchStorage, batch: str, queue_name: str):
        self.storage = storage
        self.prefix = enqueued_prefix(batch, queue_name)

    def keys(self) -> set[str]:
        paths = list(self.storage.list(self.prefix))
        keys: set[str] = set()
        steps = self.storage.get_json_many(p for p in paths if p.endswith(".json"))
        for path, step in steps.items():
            if not isinstance(step, dict) or not isinstance(step.get("keys"), list):
                steps.corrupt[path] = "not a record of sent keys"
                continue
            keys.update(map(str, step["keys"]))
        if steps.corrupt:
            # A damaged step forgets what it recorded: those items may be sent again, and
            # the worker skips any whose output exists. Nothing is lost either way.
            logging.getLogger("tqflow.enqueue").warning(
                "%s record(s) of sent items unreadable, their items may be sent again: %s",
                len(steps.corrupt),
                ", ".join(sorted(steps.corrupt)[:3]),
            )
        for path in (p for p in paths if p.endswith(".txt")):
            keys.update((self.storage.get(path) or b"").decode("utf-8").split())
        return keys

    def add(self, keys: list[str]) -> None:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        self.storage.put_json(self.prefix + name, {"keys": keys})
