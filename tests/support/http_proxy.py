"""An HTTP proxy in front of a stand-in, adding what the stand-in is too kind to show: a cloud's
latency, a rate limit's 429s, and a count of the requests a client sends.

    python tests/support/http_proxy.py --upstream http://127.0.0.1:4200 --port 5000 \\
        [--delay-seconds 0.03] [--throttle-share 0.2] [--retry-after 1] \\
        [--gcs-folder /tmp/fake-gcs-x --list-seconds-per-name 0.00027] [--gcs-batch]

- every request waits ``--delay-seconds`` before it is forwarded (a bucket 30 ms away);
- a ``--throttle-share`` of requests is answered ``429 Too Many Requests`` with
  ``Retry-After`` instead of being forwarded (Prefect Cloud over its rate limit);
- with ``--gcs-folder`` (fake-gcs-server's filesystem root) it answers GCS object listings
  itself, at a bucket's pace: ``--list-seconds-per-name`` for each name listed, on top of the
  delay (`gcs_listing.py`);
- with ``--gcs-batch`` it answers GCS's batch endpoint (``POST /batch/storage/v1``, a
  ``multipart/mixed`` of requests: what cloud-files sends to check or delete many objects, and
  to check one) by sending each part to the server and packing the answers as GCS does:
  fake-gcs-server has no such endpoint, and google-cloud-storage then fails with "Bad response:
  not multi-part". It counts as the one request it is;
- WebSockets (Prefect's events) are passed through, neither delayed nor throttled;
- ``GET /__proxy__/counts`` answers the requests forwarded and throttled so far, by method and
  path (UUIDs and object names replaced by ``{id}``), and the service's failed answers by
  status; ``POST /__proxy__/reset`` zeroes them.

Started and stopped by `tests.support.services.http_proxy`, like every other service.
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import json
import random
import re
import uuid
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import uvicorn
import websockets
from gcs_listing import BucketIndex, answers_itself  # beside this script

#: Headers that belong to one connection, not to the message: never forwarded.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
#: A GCS bucket's objects: listed with GET, written with POST / PUT / PATCH / DELETE.
_GCS_OBJECTS = re.compile(r"^(?:/upload)?/storage/v1/b/([^/]+)/o(?:/|$)")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def kind_of(method: str, path: str) -> str:
    """``METHOD /path`` with what varies from call to call replaced by ``{id}``."""
    path = _UUID.sub("{id}", path)
    path = re.sub(r"/o/[^/]+$", "/o/{id}", path)  # a GCS object's name
    return f"{method} {path}"


class Proxy:
    def __init__(
        self,
        upstream: str,
        delay: float,
        throttle_share: float,
        retry_after: int,
        gcs_folder: str | None = None,
        list_seconds_per_name: float = 0.0,
        gcs_batch: bool = False,
    ):
        self.upstream = upstream.rstrip("/")
        self.delay, self.throttle_share, self.retry_after = delay, throttle_share, retry_after
        self.gcs_folder, self.list_seconds_per_name = gcs_folder, list_seconds_per_name
        self.gcs_batch = gcs_batch
        self.indexes: dict[str, BucketIndex] = {}
        self.forwarded: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        #: Answers of the service that were not a success, by request and status.
        self.failed: Counter[str] = Counter()
        self.client = httpx.AsyncClient(
            base_url=self.upstream,
            timeout=httpx.Timeout(600.0),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        method, path = scope["method"], scope["path"]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if path.startswith("/__proxy__/"):
            await self.control(method, path, send)
            return
        kind = kind_of(method, path)
        if self.throttle_share and random.random() < self.throttle_share:
            self.throttled[kind] += 1
            await _respond(
                send,
                429,
                [(b"retry-after", str(self.retry_after).encode())],
                b'{"detail": "rate limit"}',
            )
            return
        self.forwarded[kind] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.gcs_folder and await self.gcs_listing(scope, send):
            return
        if self.gcs_batch and method == "POST" and path == "/batch/storage/v1":
            await self.gcs_batch_request(scope, body, send)
            return
        headers = [
            (k, v) for k, v in scope["headers"] if k.decode("latin-1").lower() not in HOP_BY_HOP
        ]
        query = scope.get("query_string", b"").decode("latin-1")
        request = self.client.build_request(
            method, path + (f"?{query}" if query else ""), headers=headers, content=body
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            await _respond(send, 502, [], f"proxy: {type(exc).__name__}: {exc}".encode())
            return
        try:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        if response.status_code >= 400:
            self.failed[f"{kind} {response.status_code}"] += 1
        out = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in response.headers.multi_items()
            if k.lower() not in HOP_BY_HOP
        ]
        await _respond(send, response.status_code, out, raw)

    async def gcs_listing(self, scope: dict[str, Any], send: Any) -> bool:
        """Answer a GCS listing from the bucket's index; note a write. ``True`` if answered."""
        found = _GCS_OBJECTS.match(scope["path"])
        if found is None:
            if scope["path"].startswith("/batch/"):  # deletes in a batch: any bucket
                for index in self.indexes.values():
                    index.changed()
            return False
        bucket = found.group(1)
        index = self.indexes.setdefault(bucket, BucketIndex(f"{self.gcs_folder}/{bucket}"))
        if scope["method"] != "GET":
            index.changed()
            return False
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if not scope["path"].endswith("/o") or not answers_itself(params):
            return False
        page = index.page(bucket, params)
        await asyncio.sleep(self.list_seconds_per_name * len(page["items"]))
        body = json.dumps(page).encode()
        await _respond(send, 200, [(b"content-type", b"application/json")], body)
        return True

    async def gcs_batch_request(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        """GCS's batch endpoint: each part of the ``multipart/mixed`` body is a request, sent
        to the server at once; the answers go back as the parts of one ``multipart/mixed``."""
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        message = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + content_type + b"\r\nMIME-Version: 1.0\r\n\r\n" + body
        )
        parts = message.get_payload()
        if not isinstance(parts, list):
            await _respond(send, 400, [], b"proxy: a batch request that is not multipart")
            return
        answers = await asyncio.gather(*(self._batch_part(part) for part in parts))
        boundary = f"batch_{uuid.uuid4().hex}"
        out = b""
        for content_id, response in answers:
            out += (
                (
                    f"--{boundary}\r\nContent-Type: application/http\r\n"
                    f"Content-ID: <response-{content_id.strip('<>')}>\r\n\r\n"
                    f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n"
                    f"Content-Type: {response.headers.get('content-type', 'application/json')}\r\n"
                    f"Content-Length: {len(response.content)}\r\n\r\n"
                ).encode()
                + response.content
                + b"\r\n"
            )
        out += f"--{boundary}--\r\n".encode()
        kind = f"multipart/mixed; boundary={boundary}".encode()
        await _respond(send, 200, [(b"content-type", kind)], out)

    async def _batch_part(self, part: Any) -> tuple[str, httpx.Response]:
        text = part.get_payload()
        head, _, content = text.replace("\r\n", "\n").partition("\n\n")
        request_line, *header_lines = head.split("\n")
        method, uri, _ = request_line.split(" ", 2)
        target = urlsplit(uri)
        headers = {
            name: value
            for name, _, value in (line.partition(": ") for line in header_lines if line)
            if name.lower() not in HOP_BY_HOP
        }
        response = await self.client.request(
            method,
            target.path + (f"?{target.query}" if target.query else ""),
            headers=headers,
            content=content.encode(),
        )
        if response.status_code >= 400 and response.status_code != 404:
            self.failed[f"{kind_of(method, target.path)} {response.status_code}"] += 1
        return str(part.get("Content-ID", "")), response

    async def control(self, method: str, path: str, send: Any) -> None:
        if path == "/__proxy__/counts":
            body = {
                "forwarded": dict(self.forwarded),
                "throttled": dict(self.throttled),
                "failed": dict(self.failed),
            }
            await _respond(
                send, 200, [(b"content-type", b"application/json")], json.dumps(body).encode()
            )
        elif path == "/__proxy__/reset" and method == "POST":
            self.forwarded.clear()
            self.throttled.clear()
            self.failed.clear()
            await _respond(send, 200, [], b"{}")
        else:
            await _respond(send, 404, [], b"")

    async def websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        url = self.upstream.replace("http", "ws", 1) + scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        if query:
            url += f"?{query}"
        try:
            upstream = await websockets.connect(url, subprotocols=scope.get("subprotocols") or None)
        except Exception:
            await send({"type": "websocket.close", "code": 1011})
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

        async def client_to_upstream() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    await upstream.close()
                    return
                data = message.get("text") if message.get("text") is not None else message["bytes"]
                await upstream.send(data)

        async def upstream_to_client() -> None:
            try:
                async for data in upstream:
                    key = "text" if isinstance(data, str) else "bytes"
                    await send({"type": "websocket.send", key: data})
            finally:
                try:
                    await send({"type": "websocket.close", "code": 1000})
                except Exception:
                    pass

        tasks = [
            asyncio.ensure_future(client_to_upstream()),
            asyncio.ensure_future(upstream_to_client()),
        ]
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await upstream.close()


async def _respond(send: Any, status: int, headers: list, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-seconds", type=float, default=0.0)
    parser.add_argument("--throttle-share", type=float, default=0.0)
    parser.add_argument("--retry-after", type=int, default=1)
    parser.add_argument("--gcs-folder")
    parser.add_argument("--list-seconds-per-name", type=float, default=0.0)
    parser.add_argument("--gcs-batch", action="store_true")
    args = parser.parse_args()
    proxy = Proxy(
        args.upstream,
        args.delay_seconds,
        args.throttle_share,
        args.retry_after,
        args.gcs_folder,
        args.list_seconds_per_name,
        args.gcs_batch,
    )
    uvicorn.run(
        proxy,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        ws="websockets",
        backlog=2048,
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
