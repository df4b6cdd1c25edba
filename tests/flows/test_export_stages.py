"""The pipelined export (tasks.pipeline.stages): a failure in the reading, parsing or splitting stage
fails the unit with that stage's own sentence, commits nothing, and leaves no stage thread running,
even while the stages upstream of the failure still have body to read (issue 26)."""

from __future__ import annotations

import threading
import time
import traceback
import zlib
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from blocks.mixpanel import MixpanelCredentials
from tasks.errors import MalformedRecordsError, RetriableError, TruncatedStreamError
from tasks.lake.files import RollingFiles, Rows
from tasks.lake.manifest import fingerprint_hex
from tasks.mixpanel.client import MixpanelClient
from tasks.mixpanel.settings import ApiSettings
from tasks.pipeline.export import ExportSettings, export_days
from tasks.pipeline.parse import row_hash
from tests.conftest import local_destination, staging_files
from tests.kit.hostile_server import HostileServer, counts_of, epoch, event_line, good_lines

DAY = date(2024, 1, 2)
ROWS = 40_000  # some 6 MB of body: many parse blocks of BLOCK below, so every stage is busy
BLOCK = 64 << 10
BAD_AT = 100  # the 0-based index of the bad line: early, with most of the body still to come


@pytest.fixture
def server() -> Iterator[HostileServer]:
    srv = HostileServer().start()
    yield srv
    srv.stop()


def _api_settings(server: HostileServer) -> ApiSettings:
    return MixpanelCredentials(
        project_id=1,
        service_account_username="sa",
        service_account_secret="pw",
        api_base_url=server.url,
        retry_backoff_seconds=0.01,
        max_attempts=2,
        export_requests_per_second=100,
    ).api_settings()


def run(server: HostileServer, root: Path, run_id: str) -> None:
    with MixpanelClient(_api_settings(server)) as client:
        export_days(client, local_destination(root), [DAY], ExportSettings(run_id=run_id, block_bytes=BLOCK))


def committed(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "1").rglob("*"))
        if p.is_file() and "_staging" not in p.parts and "_rejects" not in p.parts
    }


def stage_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("mp-export")]


def frames(error: BaseException) -> set[str]:
    return {entry.name for entry in traceback.extract_tb(error.__traceback__)}


LINES = good_lines(DAY, ROWS)


def body(bad: bytes) -> bytes:
    return b"\n".join([*LINES[:BAD_AT], bad, *LINES[BAD_AT:]]) + b"\n"


def commit_small_day(server: HostileServer, root: Path) -> dict[str, bytes]:
    server.serve(b"\n".join(LINES[:50]) + b"\n")
    server.counts = counts_of(DAY, 50)
    run(server, root, "good")
    before = committed(root)
    assert before and stage_threads() == []
    return before


def test_a_failure_in_the_reading_stage_is_its_own_sentence(server: HostileServer, tmp_path: Path) -> None:
    before = commit_small_day(server, tmp_path)
    whole = zlib.compress(b"\n".join(LINES) + b"\n", 1, wbits=31)
    server.serve(whole[: len(whole) // 2], Content_Encoding="gzip")  # the connection ends mid-member
    with pytest.raises(RetriableError) as info:
        run(server, tmp_path, "bad")
    cause = info.value.__cause__
    assert isinstance(cause, TruncatedStreamError), repr(info.value)
    assert "ended inside a gzip member" in str(info.value)
    assert {"produce", "byte_batches"} <= frames(cause), "raised in the reading thread"
    assert committed(tmp_path) == before and staging_files(tmp_path) == []
    assert stage_threads() == []


def test_a_failure_in_the_parsing_stage_is_its_own_sentence(server: HostileServer, tmp_path: Path) -> None:
    before = commit_small_day(server, tmp_path)
    server.serve(body(b'{"error": "export terminated early"}'))
    with pytest.raises(RetriableError) as info:
        run(server, tmp_path, "bad")
    cause = info.value.__cause__
    assert isinstance(cause, TruncatedStreamError), repr(info.value)
    assert f"cut the export short at line {BAD_AT + 1}" in str(info.value)
    assert {"produce", "_parsed"} <= frames(cause), "raised in the parsing thread"
    assert committed(tmp_path) == before and staging_files(tmp_path) == []
    assert stage_threads() == []


def test_a_failure_in_the_splitting_stage_stops_the_stages_still_reading(
    server: HostileServer, tmp_path: Path
) -> None:
    before = commit_small_day(server, tmp_path)
    server.serve(body(b"{not json"))
    with pytest.raises(MalformedRecordsError, match=f"first at line {BAD_AT + 1}: invalid JSON") as info:
        run(server, tmp_path, "bad")
    assert {"produce", "_take"} <= frames(info.value), "raised in the thread splitting frames by day"
    assert committed(tmp_path) == before and staging_files(tmp_path) == []
    assert stage_threads() == []


def test_a_reader_waiting_on_a_stalled_socket_is_woken_when_a_later_stage_fails(
    server: HostileServer, tmp_path: Path
) -> None:
    before = commit_small_day(server, tmp_path)
    release = threading.Event()

    def stalled() -> Iterator[bytes]:
        yield body(b"{not json")
        release.wait(60)  # Mixpanel goes quiet with the connection open: the reader waits in recv

    server.serve(stalled)
    started = time.monotonic()
    try:
        with pytest.raises(MalformedRecordsError, match=f"first at line {BAD_AT + 1}"):
            run(server, tmp_path, "bad")
        assert time.monotonic() - started < 20, "the read was interrupted, not waited out"
        assert stage_threads() == []
    finally:
        release.set()
    assert committed(tmp_path) == before and staging_files(tmp_path) == []


def test_the_pipelined_export_commits_what_one_thread_would(server: HostileServer, tmp_path: Path) -> None:
    server.serve(b"\n".join(LINES) + b"\n")
    run(server, tmp_path, "whole")
    manifest = local_destination(tmp_path).manifest("mp_master_event", DAY.isoformat())
    assert manifest is not None and manifest.rows == ROWS
    expected = sum(row_hash(line.split(b'"')[3].decode(), _props(line)) for line in LINES)
    assert manifest.fingerprint == fingerprint_hex(expected)
    assert manifest.max_processing_time_ms == epoch(DAY, ROWS - 1) * 1000 + 5
    assert stage_threads() == []


def _props(line: bytes) -> bytes:
    return line[line.index(b',"properties":') + 14 : -1]


def test_frames_are_made_ready_for_files_in_the_splitting_thread_and_edges_written_in_batches(
    server: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the writing thread is the export's long pole when it converts frames itself (each conversion
    # waits for the GIL the parser holds): it only writes, and the day's few merge edges per block go
    # to it in batches, not one write per block
    pairs = 5
    lines = [
        event_line(
            "Page View",
            {
                "time": epoch(DAY, i),
                "distinct_id": f"user-{i % pairs}",
                "$insert_id": f"ins-{i}",
                "$device_id": f"dev-{i % pairs}",
                "$user_id": f"user-{i % pairs}",
            },
        )
        for i in range(ROWS)
    ]
    server.serve(b"\n".join(lines) + b"\n")
    converted_in: set[str] = set()
    rows_of = RollingFiles.rows_of

    def recording(self: RollingFiles, frame: pl.DataFrame) -> Rows:
        converted_in.add(threading.current_thread().name)
        return rows_of(self, frame)

    monkeypatch.setattr(RollingFiles, "rows_of", recording)
    settings = ExportSettings(run_id="edges", block_bytes=BLOCK, identity_mode="simplified")
    with MixpanelClient(_api_settings(server)) as client:
        export_days(client, local_destination(tmp_path), [DAY], settings)
    assert converted_in == {"mp-export-split"}
    (edges,) = (tmp_path / "1" / "_state" / "identity_edges").rglob("*.parquet")
    assert pq.ParquetFile(edges).metadata.num_row_groups == 1  # some 100 blocks brought edges
    table = pq.read_table(edges)
    assert sorted(set(zip(table["a"].to_pylist(), table["b"].to_pylist(), strict=True))) == sorted(
        (f"$device:dev-{i}", f"user-{i}") for i in range(pairs)
    )
