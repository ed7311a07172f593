"""GCS's object listing answered at a bucket's pace, for `http_proxy.py` in front of
fake-gcs-server.

fake-gcs-server's filesystem backend reads the whole folder for every page it lists (~1.25 s a
page at 100,000 objects, growing with the bucket): slower than GCS, and slower the more there
is, so a listing figure on it is the stand-in's. This answers ``GET /storage/v1/b/<bucket>/o``
from a sorted index of the backend's folder (objects are files there, named by their object
names), with GCS's rules: at most 1,000 names a page, ``prefix``, ``startOffset`` (inclusive),
``endOffset`` (exclusive), ``maxResults``, an opaque ``pageToken``; a request with a
``delimiter`` or for versions goes to fake-gcs-server itself. The proxy adds a bucket's
time per name listed (Google: 300 s for 10^6 objects in one sequence of pages, gcsfs#567).

The index is made at the first listing and again after any write or delete through the proxy:
every write must pass through it.
"""

from __future__ import annotations

import base64
import bisect
import os
from typing import Any, Optional

#: Most names GCS returns in one page.
MAX_PAGE = 1000


class BucketIndex:
    """The names of the objects in fake-gcs-server's folder for one bucket, sorted."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._names: Optional[list[str]] = None

    def changed(self) -> None:
        """A write or delete went through: read the folder again at the next listing."""
        self._names = None

    def names(self) -> list[str]:
        if self._names is None:
            found = []
            for here, _, files in os.walk(self.folder):
                relative = os.path.relpath(here, self.folder)
                start = "" if relative == "." else relative + "/"
                found += [start + name for name in files]
            self._names = sorted(found)
        return self._names

    def page(self, bucket: str, params: dict[str, str]) -> dict[str, Any]:
        """One page of a listing, as GCS's JSON API answers it."""
        names = self.names()
        prefix = params.get("prefix", "")
        first = max(prefix, params.get("startOffset", ""))
        if params.get("pageToken"):
            after = base64.urlsafe_b64decode(params["pageToken"].encode()).decode()
            first = max(first, after + "\0")
        end = params.get("endOffset")
        size = min(int(params.get("maxResults") or MAX_PAGE), MAX_PAGE)
        at = bisect.bisect_left(names, first)
        items: list[str] = []
        while at < len(names) and len(items) < size:
            name = names[at]
            if not name.startswith(prefix) or (end is not None and name >= end):
                break
            items.append(name)
            at += 1
        body: dict[str, Any] = {
            "kind": "storage#objects",
            "items": [{"kind": "storage#object", "name": n, "bucket": bucket} for n in items],
        }
        more = at < len(names) and names[at].startswith(prefix)
        if items and more and (end is None or names[at] < end):
            body["nextPageToken"] = base64.urlsafe_b64encode(items[-1].encode()).decode()
        return body


def answers_itself(params: dict[str, str]) -> bool:
    """Whether a listing with these parameters is answered from the index."""
    return not any(params.get(k) for k in ("delimiter", "versions", "matchGlob"))
