"""A stand-in CAVE deployment for tests: caveclient's own `CAVEclientMock` registrations.

`CAVEclientMock` registers the info, chunkedgraph and materialization responses a CAVEclient
needs to start, builds a client with a fixed token, and forgets them. `cave_registrations`
keeps those registrations (it stops the mock just before its client is built), so a test can
serve them itself and let `CAVECredentials.get_client()` build the client with the block's own
token. Later calls (table queries) are registered by each test.

`responses` blocks every real connection while active, localhost included: never use it in a
test that also talks to a local server (Prefect API, moto, the GCS emulator).
"""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
import pyarrow as pa
import responses
from caveclient.tools import testing

SERVER = testing.TEST_GLOBAL_SERVER
LOCAL_SERVER = testing.TEST_LOCAL_SERVER
DATASTACK = testing.TEST_DATASTACK
QUERY_URL = f"{LOCAL_SERVER}/materialize/api/v3/datastack/{DATASTACK}/version/{{version}}/table/{{table}}/query"


class _Registered(Exception):
    pass


def cave_registrations(version: int = 1, **options: Any) -> list[responses.BaseResponse]:
    """The responses `CAVEclientMock(materialization=True, set_version=version)` registers."""

    def stop(**kwargs: Any) -> None:
        raise _Registered(list(responses.registered()))

    original = testing.CAVEclient
    testing.CAVEclient = stop
    try:
        testing.CAVEclientMock(
            materialization=True,
            available_materialization_versions=[1, 2, 3],
            set_version=version,
            **options,
        )
    except _Registered as registered:
        return registered.args[0]
    finally:
        testing.CAVEclient = original
    raise AssertionError("CAVEclientMock built a client without going through CAVEclient")


def arrow_body(frame: pd.DataFrame) -> bytes:
    """A table as the materialization service returns it (an Arrow IPC stream)."""
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


def authorizations(rsps: responses.RequestsMock) -> set[str]:
    """The Authorization headers of every request the service saw."""
    return {call.request.headers.get("Authorization", "") for call in rsps.calls}
