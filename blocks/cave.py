"""`CAVECredentials`: a CAVE token and datastack, and the CAVEclient built from them.

The token is handed to caveclient in memory (``auth_token=``); no token or server-cache file is
written. Libraries that only read token files (cloud-volume, cloud-files' ``middleauth+https``
paths) get them from `CAVECredentials.secrets_folder`, a private folder removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional
from urllib.parse import urlparse

from prefect.blocks.core import Block
from prefect.blocks.system import Secret
from pydantic import Field, SecretStr, field_validator

from blocks.slugs import block_slug
from tqflow.enqueue.source import CAVETableQuery
from tqflow.errors import CAVEQueryError, CredentialsError

if TYPE_CHECKING:
    import pandas as pd
    from caveclient import CAVEclient

DEFAULT_SERVER = "https://global.daf-apis.com"


class CAVECredentials(Block):
    """A CAVE token with the server and datastack it is for.

    Example:
        ```python
        from blocks import CAVECredentials

        cave = CAVECredentials(token="...", datastack_name="minnie65_public")
        cave.save("minnie")

        client = CAVECredentials.load("minnie").get_client()
        client.materialize.query_table("nucleus_detection_v0", limit=10)
        ```

        Load a saved block:
        ```python
        from blocks import CAVECredentials

        cave = CAVECredentials.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "CAVE Credentials"
    _description = "A CAVE token, server and datastack; builds CAVEclients for tqflow tasks."
    # Prefect's Secret logo: CAVE publishes none for reuse.
    _logo_url = Secret._logo_url
    _documentation_url = "https://caveconnectome.github.io/CAVEclient/"

    token: SecretStr = Field(
        default=...,
        description="CAVE auth token (from client.auth.get_new_token()).",
    )
    server_address: str = Field(
        default=DEFAULT_SERVER,
        description="Global CAVE server the token is for.",
    )
    datastack_name: Optional[str] = Field(
        default=None,
        description="Datastack to work on, e.g. minnie65_public. Empty: global services only.",
    )
    materialization_version: Optional[int] = Field(
        default=None,
        description=(
            "Materialization version to pin every query to, so a batch reads one consistent "
            "snapshot. Empty: the latest at the time the client is built."
        ),
    )

    @field_validator("server_address")
    @classmethod
    def _has_scheme(cls, value: str) -> str:
        value = value.rstrip("/")
        return value if "://" in value else f"https://{value}"

    @property
    def server_host(self) -> str:
        """The server's host name, as token files are named (``<host>-cave-secret.json``)."""
        return urlparse(self.server_address).netloc

    def _label(self) -> str:
        slug = block_slug(self)
        return f"CAVE block {slug}" if slug else "the CAVECredentials block"

    def get_client(self) -> "CAVEclient":
        """A CAVEclient for the datastack, authenticated with the block's token.

        Raises `CredentialsError` naming the block when CAVE refuses the token (401/403) or
        the server cannot be reached.
        """
        import requests
        from caveclient import CAVEclient

        try:
            return CAVEclient(
                datastack_name=self.datastack_name,
                server_address=self.server_address,
                auth_token=self.token.get_secret_value(),
                write_server_cache=False,
                version=self.materialization_version,
                global_only=self.datastack_name is None,
            )
        except requests.HTTPError as exc:
            raise self._http_error(exc) from None
        except requests.ConnectionError as exc:
            raise CredentialsError(
                f"cannot reach CAVE at {self.server_address} for {self._label()}: "
                f"{type(exc).__name__}; check server_address and the network"
            ) from None

    def _http_error(self, exc: Any) -> CredentialsError:
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            return CredentialsError(
                f"CAVE at {self.server_address} refused the token of {self._label()} "
                f"(HTTP {status}): get a new token (client.auth.get_new_token()) with access to "
                f"datastack {self.datastack_name!r} and save it in the block"
            )
        return CredentialsError(
            f"CAVE at {self.server_address} answered HTTP {status} for {self._label()} "
            f"(datastack {self.datastack_name!r}): check server_address and datastack_name"
        )

    @contextlib.contextmanager
    def secrets_folder(self) -> Iterator[Path]:
        """A private folder to use as ``CLOUD_VOLUME_DIR`` for libraries that read the token
        only from files: ``secrets/cave-secret.json`` and ``secrets/<host>-cave-secret.json``,
        readable by this user only, deleted on exit.

        The caller points the library at it, e.g. ``env={"CLOUD_VOLUME_DIR": str(folder)}``
        for a child process (cloud-volume reads the variable when it is imported).
        """
        with tempfile.TemporaryDirectory(prefix="tqflow-cave-") as root:  # created 0700
            secrets = Path(root) / "secrets"
            secrets.mkdir(mode=0o700)
            content = json.dumps({"token": self.token.get_secret_value()}).encode()
            for name in ("cave-secret.json", f"{self.server_host}-cave-secret.json"):
                fd = os.open(secrets / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
            yield Path(root)

    def query_column(
        self, query: CAVETableQuery, client: Optional["CAVEclient"] = None
    ) -> "pd.Series":
        """The ``query.column`` of the rows the query selects, in table order: a batch's work
        items, as caveclient returns them (`tqflow.enqueue.items.exact_column` reads them exactly)."""
        frame = self.query_table(
            query.table,
            filter_equal=query.filter_equal,
            filter_in=query.filter_in,
            columns=[query.column],
            version=query.materialization_version,
            client=client,
        )
        column = query.column
        if column not in frame.columns:
            raise CAVEQueryError(
                f"table {query.table!r} has no column {column!r}; it has {list(frame.columns)}"
            )
        return frame[column]

    def query_table(
        self,
        table: str,
        filter_equal: Optional[dict[str, Any]] = None,
        filter_in: Optional[dict[str, list[Any]]] = None,
        columns: Optional[list[str]] = None,
        version: Optional[int] = None,
        client: Optional["CAVEclient"] = None,
    ) -> "pd.DataFrame":
        """Rows of a materialization table at ``version`` (default: the block's)."""
        import requests

        client = client or self.get_client()
        try:
            return client.materialize.query_table(
                table,
                filter_equal_dict=filter_equal or None,
                filter_in_dict=filter_in or None,
                select_columns=columns,
                materialization_version=(
                    version if version is not None else self.materialization_version
                ),
                metadata=False,
                log_warning=False,
            )
        except requests.HTTPError as exc:
            status = getattr(exc.response, "status_code", None)
            if status in (401, 403):
                raise self._http_error(exc) from None
            raise CAVEQueryError(
                f"query of table {table!r} in datastack {self.datastack_name!r} failed with HTTP "
                f"{status}: {str(exc)[:300]}; check the table name and filters"
            ) from None
