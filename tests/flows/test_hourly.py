"""Hourly increments then the daily replacement of the same day: no event lost, none duplicated."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from blocks.destinations.local import LocalDestination
from flows.events import events, events_hourly
from sandbox import SandboxServer
from tests.conftest import (
    assert_day_matches_sandbox,
    credentials_for,
    fingerprint_of_rows,
    local_destination,
    read_day,
)
from tests.kit.expected import epoch_ms

pytestmark = pytest.mark.usefixtures("prefect_server")


def assert_day_is_what_mixpanel_had_processed(root: Path, server: SandboxServer, day: date, cut: int) -> None:
    want = server.expected(day, day, processed_until_ms=cut)[day.isoformat()]
    manifest = local_destination(root).manifest("mp_master_event", day.isoformat())
    assert manifest is not None
    assert (manifest.rows, manifest.fingerprint) == (want["rows"], want["fingerprint"])
    # rows and the order-free fingerprint recomputed from the files: a lost or doubled event changes both
    frame = read_day(root, day)
    assert (frame.height, fingerprint_of_rows(frame)) == (want["rows"], want["fingerprint"])


def test_hourly_increments_then_the_daily_run_equal_the_sandbox(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    credentials = credentials_for(sandbox)
    today = sandbox.cfg.current_day()
    destination = LocalDestination(path=str(tmp_path))
    yesterday = today - timedelta(days=1)
    cuts = [epoch_ms(today, 7.5), epoch_ms(today, 8.5), epoch_ms(today, 13.5)]
    for cut in cuts:
        sandbox.set_processed_until(cut)
        events_hourly(credentials, destination)
        assert_day_is_what_mixpanel_had_processed(tmp_path, sandbox, today, cut)
        assert_day_is_what_mixpanel_had_processed(tmp_path, sandbox, yesterday, cut)
    manifest = local_destination(tmp_path).manifest("mp_master_event", today.isoformat())
    assert manifest is not None and manifest.increments == 2
    assert len(manifest.files) == 3, "each hour added its own file beside the earlier ones"

    before = sandbox.stats()["export_requests"]
    quiet = events_hourly(credentials, destination)  # nothing new processed: no change at all
    assert sandbox.stats()["export_requests"] - before == 2
    assert {r["day"]: r["rows added"] for r in quiet} == {yesterday.isoformat(): 0, today.isoformat(): 0}
    after = local_destination(tmp_path).manifest("mp_master_event", today.isoformat())
    assert after == manifest

    sandbox.set_processed_until(None)  # the day closed and Mixpanel processed everything
    events(credentials, destination, from_date=yesterday, to_date=yesterday)
    assert_day_matches_sandbox(tmp_path, sandbox, yesterday)
    final = local_destination(tmp_path).manifest("mp_master_event", yesterday.isoformat())
    assert final is not None and final.increments == 0 and len(final.files) == 1
