"""A real Azure Blob Storage on loopback for tests: Azurite (npm, a subprocess) behind a tiny fault proxy.

* Azurite 3.35.0 is installed on demand into ``.tools/azurite`` (gitignored) with npm: 3.37 needs Node 22,
  this machine has Node 20. One Azurite serves the whole run (tests/stores/shared.py), each test in
  containers of its own. The install runs once per machine, under a file lock so that parallel pytest
  processes do not race; it needs only npm and the npm registry.
* It runs in memory with the published development account ``devstoreaccount1``; a wrong key gets a real
  ``403 AuthorizationFailure`` (Azure itself answers ``AuthenticationFailed``).
* ``FaultProxy`` forwards requests unchanged (Shared Key signatures do not cover the Host header) and can
  answer the next N requests itself with a 5xx, or drop their connection (status 0): Azurite has no fault
  injection of its own. Destinations go through it when made with ``through_proxy=True``.
"""

from __future__ import annotations

import base64
import fcntl
import http.client
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient
from prefect_azure import AzureBlobStorageCredentials

from blocks.destinations.azure import AzureBlobDestination
from tests.stores.process import free_port
from tests.stores.process import stop as stop_process
from tests.stores.proxy import FaultProxy
from tests.stores.shared import shared_server

AZURITE_VERSION = "3.35.0"
TOOLS = Path(__file__).resolve().parents[2] / ".tools" / "azurite"
AZURITE = TOOLS / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
# Azurite's published development key (documented by Microsoft), not a secret
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
WRONG_KEY = base64.b64encode(b"not the key of devstoreaccount1 at all, 64 bytes long.........").decode()


def _installed_version() -> str | None:
    package = TOOLS / "node_modules" / "azurite" / "package.json"
    if not AZURITE.exists() or not package.exists():
        return None
    return str(json.loads(package.read_text())["version"])


def install_azurite() -> Path:
    """``npm install azurite@3.35.0`` into ``.tools/azurite`` unless that version is there already."""
    if _installed_version() == AZURITE_VERSION:
        return AZURITE
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to install Azurite for the Azure tests: install Node.js 20 with npm.")
    TOOLS.mkdir(parents=True, exist_ok=True)
    with (TOOLS.parent / "azurite.install.lock").open("a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if _installed_version() != AZURITE_VERSION:
            args = [
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(TOOLS),
                f"azurite@{AZURITE_VERSION}",
            ]
            done = subprocess.run([npm, *args], capture_output=True, text=True, timeout=900)
            if done.returncode != 0 or _installed_version() != AZURITE_VERSION:
                pytest.fail(f"npm install azurite@{AZURITE_VERSION} failed:\n{done.stderr[-3000:]}")
    return AZURITE


@dataclass
class AzuriteServer:
    port: int
    proxy: FaultProxy

    def connection_string(self, key: str = KEY, through_proxy: bool = False) -> str:
        port = self.proxy.port if through_proxy else self.port
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
        )

    def service(self) -> BlobServiceClient:
        """A plain SDK client straight to Azurite, to set up and inspect behind the destination's back."""
        return BlobServiceClient.from_connection_string(self.connection_string())


def _wait_until_healthy(
    process: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 60.0
) -> bool:
    """True once Azurite answers HTTP; False if it exited (the port was taken meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            probe.request("GET", f"/{ACCOUNT}?comp=list")
            probe.getresponse().read()  # 403 without credentials: it is serving
            probe.close()
            return True
        except OSError:
            time.sleep(0.1)
    stop_process(process)
    pytest.fail(
        f"Azurite did not answer on 127.0.0.1:{port} within {timeout:.0f} s:\n{log.read_text()[-3000:]}"
    )


def _start(binary: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    for attempt in range(3):  # another process may grab the free port before Azurite binds it
        port = free_port()
        log = workdir / f"azurite-{attempt}.log"
        args = ["--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence"]
        args += ["--skipApiVersionCheck", "--loose", "--disableTelemetry"]
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(binary), *args], cwd=workdir, stdout=out, stderr=subprocess.STDOUT
            )
        if _wait_until_healthy(process, port, log):
            return process, port, log
    pytest.fail(f"Azurite could not start:\n{log.read_text()[-3000:]}")


def _start_azurite(workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    process, port, _ = _start(install_azurite(), workdir)
    return process, {"port": port}


@pytest.fixture(scope="session")
def azure_server() -> Iterator[AzuriteServer]:
    """The run's Azurite blob service on 127.0.0.1 (installed first if needed), behind this worker's proxy."""
    port = shared_server("azurite", _start_azurite)["port"]
    proxy = FaultProxy(port, azure_error).serve_in_background()
    try:
        yield AzuriteServer(port, proxy)
    finally:
        proxy.stop()


def azure_error(status: int) -> tuple[dict[str, str], bytes]:
    return {"x-ms-error-code": "ServerBusy"}, b""


def make_azure_destination(
    server: AzuriteServer,
    container: str | None = None,
    bad_credentials: bool = False,
    prefix: str = "",
    through_proxy: bool = False,
) -> AzureBlobDestination:
    """An unsaved destination block on ``container`` (a fresh one when None), with short retry pauses."""
    if container is None:
        container = f"t-{uuid.uuid4().hex[:20]}"
        server.service().create_container(container)
    connection = server.connection_string(WRONG_KEY if bad_credentials else KEY, through_proxy)
    return AzureBlobDestination(
        credentials=AzureBlobStorageCredentials(connection_string=connection),
        container=container,
        prefix=prefix,
        retry_total=3,
        retry_backoff_seconds=0.01,
    )


def inject_azure_errors(server: AzuriteServer, status: int, count: int) -> None:
    """The next ``count`` requests through the proxy get ``status`` (a 5xx; 0 drops the connection)."""
    server.proxy.fail(status, count)
