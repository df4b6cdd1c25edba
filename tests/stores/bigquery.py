"""A BigQuery on loopback for tests: bqemulator 1.4.0 (DuckDB underneath, a subprocess) in its own virtualenv.

* bqemulator pins ``duckdb==1.5.5``, which conflicts with the project's dependencies, so it is installed
  on demand into ``.tools/bqemulator`` (gitignored): a venv made with the project's Python, then its pip.
  The install runs once per machine (~50 s cold), under a file lock so that parallel pytest processes
  do not race; it needs only pip and the package index.
* bqemulator refuses to start without DuckDB's ``spatial`` extension and would download it; there is
  no internet here, so each session installs it offline (``INSTALL '<file>'``) from the file shipped in
  the ``duckdb-extension-spatial`` wheel, into a private ``HOME`` under the session's tmp dir.
* google-cloud-bigquery is not a dependency of the project, so ``BigQueryEmulator.client()`` returns a
  small REST client over httpx (``BigQueryHTTP``) that speaks the same v2 API the SDK uses.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stores.process import free_port
from tests.stores.process import stop as stop_process

BQEMULATOR_VERSION = "1.4.0"
REQUIREMENTS = [
    f"bqemulator=={BQEMULATOR_VERSION}",
    "duckdb==1.5.5",
    "duckdb-extension-spatial==1.5.5",
    "numpy",
]
PROJECT = "test-project"
TOOLS = Path(__file__).resolve().parents[2] / ".tools" / "bqemulator"
BQEMULATOR = TOOLS / "bin" / "bqemulator"
PYTHON = TOOLS / "bin" / "python"
MARKER = TOOLS / ".installed"  # written last: holds the requirements of a complete install
START_TIMEOUT = 90.0

_INSTALL_EXTENSION = """
import sys
import duckdb
con = duckdb.connect()
con.execute(f"INSTALL '{sys.argv[1]}'")
con.execute("LOAD spatial")
"""


def _installed() -> bool:
    return BQEMULATOR.exists() and MARKER.exists() and MARKER.read_text() == json.dumps(REQUIREMENTS)


def install_bqemulator() -> Path:
    """``pip install bqemulator==1.4.0 ...`` into ``.tools/bqemulator`` unless that exact set is there."""
    if _installed():
        return BQEMULATOR
    TOOLS.parent.mkdir(parents=True, exist_ok=True)
    with (TOOLS.parent / "bqemulator.install.lock").open("a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if _installed():
            return BQEMULATOR
        MARKER.unlink(missing_ok=True)
        if not PYTHON.exists():
            made = subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(TOOLS)],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if made.returncode != 0:
                pytest.fail(f"python -m venv {TOOLS} failed:\n{made.stderr[-3000:]}")
        pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        done = subprocess.run([*pip, *REQUIREMENTS], capture_output=True, text=True, timeout=900)
        if done.returncode != 0 or not BQEMULATOR.exists():
            pytest.fail(f"pip install {' '.join(REQUIREMENTS)} failed:\n{done.stderr[-3000:]}")
        MARKER.write_text(json.dumps(REQUIREMENTS))
    return BQEMULATOR


def _spatial_extension_file() -> Path:
    """The ``spatial.duckdb_extension`` shipped inside the installed duckdb-extension-spatial package."""
    pattern = "lib/python*/site-packages/duckdb_extension_spatial/**/spatial.duckdb_extension"
    found = sorted(TOOLS.glob(pattern))
    if not found:
        pytest.fail(f"no spatial.duckdb_extension under {TOOLS}: reinstall (delete {MARKER})")
    return found[0]


def _install_spatial(home: Path) -> None:
    """``INSTALL '<file>'`` with the emulator's DuckDB, into ``home/.duckdb``: no network needed."""
    env = os.environ | {"HOME": str(home)}
    cmd = [str(PYTHON), "-c", _INSTALL_EXTENSION, str(_spatial_extension_file())]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"installing DuckDB's spatial extension offline failed:\n{done.stderr[-3000:]}")


class BigQueryError(Exception):
    """An error answered by the emulator: an HTTP error, or a 200 whose body carries ``errors``."""

    def __init__(self, http_status: int, reason: str, message: str) -> None:
        super().__init__(f"{http_status} {reason}: {message}")
        self.http_status = http_status
        self.reason = reason
        self.message = message


class BigQueryHTTP:
    """The few BigQuery v2 REST calls a destination needs, over httpx (no google-cloud-bigquery here)."""

    def __init__(self, url: str, project: str) -> None:
        self.url = url
        self.project = project
        self.http = httpx.Client(timeout=120)
        self._api = f"{url}/bigquery/v2/projects/{project}"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> BigQueryHTTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _check(response: httpx.Response) -> dict[str, Any]:
        body: dict[str, Any] = response.json() if response.content else {}
        if response.status_code >= 400:
            error = body.get("error", {})
            reason = (error.get("errors") or [{}])[0].get("reason", error.get("status", ""))
            raise BigQueryError(response.status_code, reason, error.get("message", response.text))
        # jobs.query answers 200 with ``errors``; jobs.insert answers 200 with ``status.errorResult``
        failure = body.get("status", {}).get("errorResult") or (body.get("errors") or [None])[0]
        if failure:
            raise BigQueryError(response.status_code, failure.get("reason", ""), failure["message"])
        return body

    def create_dataset(self, dataset: str) -> dict[str, Any]:
        reference = {"projectId": self.project, "datasetId": dataset}
        return self._check(self.http.post(f"{self._api}/datasets", json={"datasetReference": reference}))

    def create_table(
        self, dataset: str, table: str, schema: list[dict[str, str]], partition_field: str | None = None
    ) -> dict[str, Any]:
        """tables.insert; ``partition_field``: DAY time partitioning on that column."""
        resource: dict[str, Any] = {
            "tableReference": {"projectId": self.project, "datasetId": dataset, "tableId": table},
            "schema": {"fields": schema},
        }
        if partition_field:
            resource["timePartitioning"] = {"type": "DAY", "field": partition_field}
        return self._check(self.http.post(f"{self._api}/datasets/{dataset}/tables", json=resource))

    def get_table(self, dataset: str, table: str) -> dict[str, Any]:
        return self._check(self.http.get(f"{self._api}/datasets/{dataset}/tables/{table}"))

    def query_response(self, sql: str, params: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:
        """jobs.query (GoogleSQL); ``params``: ``{name: (TYPE, value)}`` as named query parameters."""
        body: dict[str, Any] = {"query": sql, "useLegacySql": False}
        if params:
            body["parameterMode"] = "NAMED"
            body["queryParameters"] = [
                {"name": name, "parameterType": {"type": kind}, "parameterValue": {"value": value}}
                for name, (kind, value) in params.items()
            ]
        return self._check(self.http.post(f"{self._api}/queries", json=body))

    def query(self, sql: str, params: dict[str, tuple[str, str]] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts of the wire values (strings or None; TIMESTAMP as epoch microseconds)."""
        answer = self.query_response(sql, params)
        names = [field["name"] for field in answer.get("schema", {}).get("fields", [])]
        return [
            {n: cell["v"] for n, cell in zip(names, row["f"], strict=True)} for row in answer.get("rows", [])
        ]

    def load(
        self,
        dataset: str,
        table: str,
        data: bytes,
        source_format: str,
        schema: list[dict[str, str]] | None = None,
        write_disposition: str = "WRITE_APPEND",
    ) -> dict[str, Any]:
        """A load job from local bytes (multipart upload, as the SDK's ``load_table_from_file``)."""
        load: dict[str, Any] = {
            "destinationTable": {"projectId": self.project, "datasetId": dataset, "tableId": table},
            "sourceFormat": source_format,
            "writeDisposition": write_disposition,
        }
        if schema is not None:
            load["schema"] = {"fields": schema}
        boundary = uuid.uuid4().hex
        head = (
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
            f"{json.dumps({'configuration': {'load': load}})}\r\n"
            f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
        response = self.http.post(
            f"{self.url}/upload/bigquery/v2/projects/{self.project}/jobs",
            params={"uploadType": "multipart"},
            content=body,
            headers={"Content-Type": f"multipart/related; boundary={boundary}"},
        )
        return self._check(response)


@dataclass
class BigQueryEmulator:
    url: str  # the REST endpoint, e.g. http://127.0.0.1:PORT (BIGQUERY_EMULATOR_HOST for the SDK)
    project: str
    grpc_endpoint: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> BigQueryHTTP:
        return BigQueryHTTP(self.url, self.project)


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


def _wait_until_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> bool:
    """True once ``/readyz`` answers 200; False if the process exited (a port was taken meanwhile)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process(process)
    pytest.fail(f"bqemulator did not answer on {url} within {START_TIMEOUT:.0f} s:\n{_log_tail(log)}")


def _start(binary: Path, workdir: Path) -> BigQueryEmulator:
    home = workdir / "home"
    home.mkdir()
    _install_spatial(home)
    env = os.environ | {
        "HOME": str(home),  # DuckDB finds the spatial extension under $HOME/.duckdb
        "TMPDIR": str(workdir),
        "BQEMU_UPLOAD_STAGING_DIR": str(workdir / "uploads"),
        "BQEMU_ENABLE_FORMAT_EXTENSIONS": "false",  # avro would be downloaded: no network here
    }
    for attempt in range(3):  # another process may grab a free port before the emulator binds it
        rest, grpc = free_port(), free_port()
        log = workdir / f"bqemulator-{attempt}.log"
        args = ["start", "--rest-port", str(rest), "--grpc-port", str(grpc), "--project", PROJECT]
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(binary), *args], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        url = f"http://127.0.0.1:{rest}"
        if _wait_until_ready(process, url, log):
            return BigQueryEmulator(url, PROJECT, f"127.0.0.1:{grpc}", process, log)
    pytest.fail(f"bqemulator could not start:\n{_log_tail(log)}")


@pytest.fixture(scope="session")
def bigquery_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigQueryEmulator]:
    """bqemulator on 127.0.0.1 (installed into ``.tools/bqemulator`` first if needed), in memory."""
    binary = install_bqemulator()
    server = _start(binary, tmp_path_factory.mktemp("bqemulator"))
    try:
        yield server
    finally:
        stop_process(server.process)
