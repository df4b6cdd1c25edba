"""A request of many days holds one or two days' state at a time: a day the stream has moved past is
sealed (file finished, dedup keys spilled), and a late row of a sealed day still lands in that day."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest

from tasks.mixpanel.client import MixpanelClient
from tasks.pipeline.export import IDLE_BLOCKS, ExportSettings, export_days
from tests.conftest import fingerprint_of_rows, local_destination, read_day
from tests.kit.hostile import credentials
from tests.kit.hostile_server import HostileServer, counts_of, good_lines

FIRST = date(2024, 1, 2)
DAYS = [FIRST + timedelta(days=i) for i in range(3)]
BLOCK = 2048  # bytes per parse block, at least: one block per read of the response (up to 64 KiB)
READ = 64 << 10


@pytest.fixture
def server() -> Iterator[HostileServer]:
    srv = HostileServer().start()
    yield srv
    srv.stop()


def test_a_day_the_stream_moved_past_is_sealed_and_its_late_rows_still_land(
    server: HostileServer, tmp_path: Path
) -> None:
    first = good_lines(DAYS[0], 45)
    body = [
        *first[:40],
        *good_lines(DAYS[1], 4000),  # many blocks of another day: the first is sealed
        *first[40:],  # late rows of the sealed day
        first[0],  # and a duplicate of one of its early rows (same insert_id): stored, counted once
        *good_lines(DAYS[2], 30),
    ]
    assert 4000 * len(body[40]) > (IDLE_BLOCKS + 2) * READ
    server.serve(b"\n".join(body) + b"\n")
    with MixpanelClient(credentials(server).api_settings()) as client:
        results = export_days(
            client, local_destination(tmp_path), DAYS, ExportSettings(run_id="r", block_bytes=BLOCK)
        )

    assert [r.rows for r in results] == [46, 4000, 30]
    dest = local_destination(tmp_path)
    for day, unique in zip(DAYS, (45, 4000, 30), strict=True):
        manifest = dest.manifest("mp_master_event", day.isoformat())
        assert manifest is not None
        frame = read_day(tmp_path, day)
        assert frame.height == manifest.rows
        assert fingerprint_of_rows(frame) == manifest.fingerprint
        assert manifest.event_counts == {
            name: per_day[day.isoformat()] for name, per_day in counts_of(day, unique).items()
        }
    sealed = dest.manifest("mp_master_event", DAYS[0].isoformat())
    assert sealed is not None and len(sealed.files) == 2, "sealed once, then a file for the late rows"


def test_interleaved_days_are_never_sealed_and_keep_one_file_each(
    server: HostileServer, tmp_path: Path
) -> None:
    lines = [good_lines(day, 1500) for day in DAYS]
    body = [line for row in zip(*lines, strict=True) for line in row]  # every block holds every day
    server.serve(b"\n".join(body) + b"\n")
    with MixpanelClient(credentials(server).api_settings()) as client:
        results = export_days(
            client, local_destination(tmp_path), DAYS, ExportSettings(run_id="r", block_bytes=BLOCK)
        )
    assert len(body) * len(body[0]) > (IDLE_BLOCKS + 2) * READ
    assert [(r.rows, r.files) for r in results] == [(1500, 1)] * 3
