"""A list taken a slice at a time: what every reader and writer that works in steps uses."""

from __future__ import annotations

from typing import Iterator, Sequence, TypeVar

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in slices of ``size`` (the last one shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
