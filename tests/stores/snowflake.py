"""A Snowflake stand-in on loopback for tests: fakesnow's HTTP server (fakesnow 0.12, a subprocess).

The real ``snowflake-connector-python`` talks to it over HTTP, so blocks run their own code path:
``SnowflakeCredentials`` carries ``host``, ``port`` and ``protocol="http"`` (extra fields the block
forwards to ``snowflake.connector.connect``).

Both sides need ``snowflake-connector-python<5``: fakesnow 0.12.1 imports
``snowflake.connector.converter`` (gone in 5), and connector 5's login fails against it
("Missing response field: master token").

What to know about the emulator (pinned down by tests/emulators/test_snowflake_emulator.py):

* there is no authentication: any user and password log in;
* connecting with a database or schema that does not exist creates it (real Snowflake leaves
  ``CURRENT_SCHEMA()`` NULL and fails the first unqualified statement);
* every connection shares one in-memory DuckDB, and one fakesnow serves the whole run
  (tests/stores/shared.py), so each test should use a database of its own (``unique_name``);
* a statement that fakesnow cannot handle comes back as HTTP 500, which the connector retries until
  ``network_timeout``: the credentials set a short one so such a test fails instead of hanging.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials

from tests.stores.process import free_port
from tests.stores.process import stop as stop_process
from tests.stores.shared import shared_server

ACCOUNT = "fakesnow"
USER = "fake"
PASSWORD = "snow"  # fakesnow accepts any password
WAREHOUSE = "COMPUTE_WH"  # ignored by fakesnow, required by SnowflakeConnector
NETWORK_TIMEOUT = 15  # seconds the connector keeps retrying an HTTP 500 (fakesnow's "unsupported")


@dataclass
class SnowflakeServer:
    """Where the emulator listens, and blocks configured for it."""

    host: str
    port: int

    def credentials(self, password: str = PASSWORD, **extra: Any) -> SnowflakeCredentials:
        """Credentials for the emulator; ``extra`` overrides or adds connect() arguments (``paramstyle="qmark"``)."""
        values: dict[str, Any] = {
            "account": ACCOUNT,
            "user": USER,
            "password": password,
            "host": self.host,
            "port": self.port,
            "protocol": "http",
            "network_timeout": NETWORK_TIMEOUT,
            # the out-of-band telemetry would go to snowflakecomputing.com: no internet here
            "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
        }
        return SnowflakeCredentials(**(values | extra))

    def connector(
        self, database: str, schema: str, warehouse: str = WAREHOUSE, **extra: Any
    ) -> SnowflakeConnector:
        """An unsaved connector block; use it as a context manager so its connection gets closed."""
        return SnowflakeConnector(
            credentials=self.credentials(**extra), database=database, schema=schema, warehouse=warehouse
        )


def unique_name(prefix: str = "MP_TEST") -> str:
    """An unquoted Snowflake identifier no other test uses (the emulator's catalog is shared)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}".upper()


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _start_fakesnow(workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """``python -m fakesnow -s -p PORT --host 127.0.0.1``; a port taken meanwhile means another try.

    ``TMPDIR`` points into ``workdir`` so the files PUT to stages (fakesnow keeps them in a
    ``mkdtemp`` directory it never removes) end up in the run's temporary folder.
    """
    log = workdir / "fakesnow.log"
    env = os.environ | {"TMPDIR": str(workdir)}
    for _ in range(3):
        port = free_port()
        with log.open("ab") as out:
            cmd = [sys.executable, "-m", "fakesnow", "-s", "-p", str(port), "--host", "127.0.0.1"]
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            if _listening("127.0.0.1", port):
                return process, {"port": port}
            time.sleep(0.1)
        stop_process(process)
    raise RuntimeError(f"fakesnow server did not start: see {log}")


@pytest.fixture(scope="session")
def snowflake_server() -> SnowflakeServer:
    """The run's fakesnow, started by the first worker that needs it."""
    return SnowflakeServer(host="127.0.0.1", port=shared_server("fakesnow", _start_fakesnow)["port"])
