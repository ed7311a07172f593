"""Prefect artifact keys: lowercase letters, digits and dashes only."""

from __future__ import annotations

import re


def artifact_key(batch: str, what: str) -> str:
    """The key of a batch's ``what`` artifact (``<batch>-dashboard``, ``<batch>-summary``)."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{batch}-{what}".lower()).strip("-")
