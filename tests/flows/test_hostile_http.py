"""Hostile HTTP framing on a loopback server: encodings the client did not ask for are refused unread,
gzip is inflated in bounded steps member after member, and no page echoing the request leaks a
credential. Memory is measured in a child process (its own peak RSS), never time."""

from __future__ import annotations

import base64
import gzip
import html
import json
import logging
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

from blocks.mixpanel import MixpanelCredentials, MixpanelTuning
from tasks.errors import (
    ConnectionDroppedError,
    InflatedBodyError,
    PipelineError,
    RetriableError,
    SettingsError,
    TruncatedStreamError,
    UnrequestedEncodingError,
)
from tasks.mixpanel.client import MixpanelClient
from tasks.mixpanel.gdpr_api import GdprClient
from tasks.mixpanel.settings import GdprSettings, Tuning
from tasks.pipeline.export import ExportSettings, export_days
from tests.conftest import local_destination
from tests.kit.hostile import DAY, ROWS, assert_one_sentence, credentials, run
from tests.kit.hostile_server import HostileServer, good_lines

MiB = 1 << 20
# the child may grow this much whatever it is served: far below any bomb here, far above one step
MAX_GROWTH_MB = 200
BOMB = 512 * MiB  # inflated size of every bomb: more than twice MAX_GROWTH_MB if inflated whole

USER = "sa-pipelines.7f3c.mp-service-account"
SECRET = "Qx7-service-secret-9f2e/+="
OAUTH = "oauth-bearer-token-5d1a8c"
PROJECT_TOKEN = "project-token-e4b09a"
BASIC = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()


@pytest.fixture
def server() -> Iterator[HostileServer]:
    srv = HostileServer().start()
    yield srv
    srv.stop()


def zeros(total: int, compress: Callable[[bytes], bytes], flush: Callable[[], bytes]) -> Iterator[bytes]:
    block = bytes(MiB)
    for _ in range(total // MiB):
        out = compress(block)
        if out:
            yield out
    yield flush()


def zstd_bomb() -> bytes:
    packer = zstandard.ZstdCompressor().compressobj()
    return b"".join(zeros(BOMB, packer.compress, packer.flush))


def deflate_bomb() -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 15)
    return b"".join(zeros(BOMB, packer.compress, packer.flush))


def gzip_of(total: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(zeros(total, packer.compress, packer.flush))


# the client alone, in a child: what it hands on, or the error, and how much its peak RSS grew
CHILD = """
import json, resource, sys
from datetime import date
from tasks.mixpanel.client import ExportRequest, MixpanelClient
from tasks.mixpanel.settings import ApiSettings, Tuning

settings = ApiSettings(1, ("sa", "pw"), export_url=sys.argv[1] + "/api/2.0/export", tuning=Tuning(max_attempts=1))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
try:
    with MixpanelClient(settings) as client, client.export(ExportRequest(date(2024, 1, 2), date(2024, 1, 2))) as chunks:
        out["bytes"] = sum(len(chunk) for chunk in chunks)
except Exception as exc:
    out["error"], out["message"] = type(exc).__name__, str(exc)
out["grown_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(out))
"""


def fetch_in_child(server: HostileServer) -> dict[str, object]:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, server.url], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("coding, bomb", [("zstd", zstd_bomb), ("deflate", deflate_bomb)])
def test_an_encoding_the_client_did_not_ask_for_is_refused_unread(
    server: HostileServer, coding: str, bomb: Callable[[], bytes]
) -> None:
    server.serve(bomb(), Content_Encoding=coding)
    out = fetch_in_child(server)
    assert out["error"] == UnrequestedEncodingError.__name__, out
    assert f"Content-Encoding '{coding}'" in str(out["message"]) and "proxy" in str(out["message"])
    assert_one_sentence(str(out["message"]))
    assert float(str(out["grown_mb"])) < MAX_GROWTH_MB, out


def test_many_stacked_gzip_members_are_inflated_in_steps_and_refused(server: HostileServer) -> None:
    member = gzip_of(MiB)
    server.serve(member * (BOMB // MiB), Content_Encoding="gzip")
    out = fetch_in_child(server)
    assert out["error"] == InflatedBodyError.__name__, out  # httpx read the first member only
    assert float(str(out["grown_mb"])) < MAX_GROWTH_MB, out


def test_a_gzip_declared_twice_is_inflated_twice_in_steps_and_refused(server: HostileServer) -> None:
    server.serve(gzip.compress(gzip_of(BOMB), 9), Content_Encoding="gzip, gzip")
    out = fetch_in_child(server)
    assert out["error"] == InflatedBodyError.__name__, out
    assert float(str(out["grown_mb"])) < MAX_GROWTH_MB, out  # httpx inflated the inner layer whole


def test_a_gzip_inside_a_gzip_declared_once_is_handed_on_as_it_is(server: HostileServer) -> None:
    inner = gzip_of(BOMB)
    server.serve(gzip.compress(inner, 9), Content_Encoding="gzip")
    out = fetch_in_child(server)
    assert out["bytes"] == len(inner), out  # not JSON lines: the parser refuses it, never inflated
    assert float(str(out["grown_mb"])) < MAX_GROWTH_MB, out


def test_a_multi_member_gzip_body_of_json_lines_is_read_exactly(
    server: HostileServer, tmp_path: Path
) -> None:
    lines = good_lines(DAY, ROWS)
    plain = b"\n".join(lines) + b"\n"
    server.serve(plain)
    (whole,) = run(server, tmp_path / "plain", "plain")
    half = len(lines) // 2
    members = [
        gzip.compress(b"".join(line + b"\n" for line in part)) for part in (lines[:half], lines[half:])
    ]
    server.serve(b"".join(members), Content_Encoding="gzip")
    (stacked,) = run(server, tmp_path / "stacked", "stacked")
    assert (stacked.rows, stacked.fingerprint) == (ROWS, whole.fingerprint)


@pytest.mark.parametrize("ratio", [1e12, 5.0, float("nan")])
def test_a_max_inflation_ratio_out_of_range_is_refused_with_the_range(ratio: float) -> None:
    with pytest.raises(SettingsError) as plain:
        Tuning(max_inflation_ratio=ratio)
    assert "between 10 and 1000" in str(plain.value)
    assert_one_sentence(str(plain.value))
    with pytest.raises(ValueError, match="between 10 and 1000"):
        MixpanelTuning(max_inflation_ratio=ratio)
    with pytest.raises(ValueError, match="between 10 and 1000"):
        MixpanelCredentials(project_id=1, project_secret="x" * 12, max_inflation_ratio=ratio)


# the 200 page is quoted in 120 bytes: they cut the base64 short, so its start is looked for too
FORMS = (SECRET, BASIC, BASIC[:8], OAUTH, PROJECT_TOKEN)


def echo_page(status: int) -> Callable[[str, dict[str, str]], tuple[int, bytes]]:
    """A proxy's page listing the request's headers (sorted, so the credentials come first)
    HTML-escaped with non-breaking spaces, the Basic user it decoded, the headers as text and as
    JSON, and the request line with its query."""

    def page(requestline: str, headers: dict[str, str]) -> tuple[int, bytes]:
        rows = sorted(headers.items())
        auth = headers.get("Authorization", headers.get("authorization", ""))
        user = base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else "-"
        text = "\n".join(f"{k}: {v}" for k, v in rows)
        escaped = "<br>".join(
            f"{html.escape(k)}:&nbsp;{html.escape(v).replace(' ', '&nbsp;')}" for k, v in rows
        )
        json_dump = html.escape(json.dumps(dict(rows)))
        body = f"<html><body><p>{escaped}</p><p>user {user}</p><pre>{text}\n{requestline}</pre><code>{json_dump}</code></body></html>"
        return status, body.encode()

    return page


def everything_said(error: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    said = [caplog.text]
    seen: BaseException | None = error
    while seen is not None:
        said += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(said)


@pytest.mark.parametrize("status", [200, 502])
def test_an_echoing_proxy_page_leaves_no_credential_in_any_error_or_log(
    server: HostileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    server.echo = echo_page(status)
    creds = credentials(server, service_account_username=USER, service_account_secret=SECRET)
    with pytest.raises(PipelineError) as export_error, MixpanelClient(creds.api_settings()) as client:
        export_days(client, local_destination(tmp_path), [DAY], ExportSettings(run_id="echo"))
    assert isinstance(export_error.value, RetriableError)
    said = everything_said(export_error.value, caplog)
    assert "Basic&nbsp;***" in str(export_error.value)  # the page was quoted, masked
    with (
        GdprClient(creds.api_settings(), GdprSettings(PROJECT_TOKEN, OAUTH), notify=logging.warning) as gdpr,
        pytest.raises(PipelineError) as gdpr_error,
    ):
        gdpr.status("task-1")
    said += everything_said(gdpr_error.value, caplog)
    for form in FORMS:
        assert form not in said, form


def test_a_gzip_body_cut_before_its_member_ends_is_retried_not_committed(
    server: HostileServer, tmp_path: Path
) -> None:
    whole = gzip.compress(b"\n".join(good_lines(DAY, ROWS)) + b"\n")
    # every line inflates, only the CRC and length trailer are missing: the body cannot show the cut
    server.serve(whole[:-8], Content_Encoding="gzip")
    with pytest.raises(RetriableError) as info:
        run(server, tmp_path, "cut")
    assert isinstance(info.value.__cause__, TruncatedStreamError), repr(info.value)
    assert "ended inside a gzip member" in str(info.value)
    assert not list(tmp_path.rglob("manifest*"))


def test_a_gzip_body_with_a_wrong_checksum_is_retried_not_committed(
    server: HostileServer, tmp_path: Path
) -> None:
    whole = bytearray(gzip.compress(b"\n".join(good_lines(DAY, ROWS)) + b"\n"))
    whole[-8] ^= 0xFF  # the CRC-32 of the member's bytes: every line inflates, the check fails
    server.serve(bytes(whole), Content_Encoding="gzip")
    with pytest.raises(RetriableError) as info:
        run(server, tmp_path, "corrupt")
    assert isinstance(info.value.__cause__, ConnectionDroppedError), repr(info.value)
    assert "gzip answer is corrupt" in str(info.value)
    assert not list(tmp_path.rglob("manifest*"))
