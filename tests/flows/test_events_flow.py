"""The events flow on a Prefect test server, against the sandbox over real HTTP."""

from __future__ import annotations

import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from blocks.destinations.local import LocalDestination
from flows.events import events
from sandbox import SandboxServer
from tasks.errors import BadCredentialsError, FatalError
from tasks.lake.commit import STALE_STAGING_SECONDS, Lake, Stage
from tasks.lake.manifest import Manifest
from tasks.pipeline.plan import InvalidDateRangeError
from tests.conftest import (
    assert_day_matches_sandbox,
    credentials_for,
    local_destination,
    read_day,
    recent_days,
    staging_files,
    start_sandbox,
)
from tests.kit.lake import committed
from tests.stores.s3 import S3Server

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_the_flow_exports_a_week_in_two_requests_with_a_summary(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    days = recent_days(7, sandbox)
    rows = events(
        credentials_for(sandbox),
        LocalDestination(path=str(tmp_path)),
        from_date=days[0],
        to_date=days[-1],
        days_per_request=4,
    )
    assert [r["day"] for r in rows] == [d.isoformat() for d in days]
    for day in days:
        assert_day_matches_sandbox(tmp_path, sandbox, day)
    assert sandbox.stats()["export_requests"] == 2


def test_the_default_is_yesterday_in_the_project_calendar(sandbox: SandboxServer, tmp_path: Path) -> None:
    rows = events(credentials_for(sandbox), LocalDestination(path=str(tmp_path)))
    assert [r["day"] for r in rows] == [(sandbox.cfg.current_day() - timedelta(days=1)).isoformat()]


def test_concurrent_requests_never_exceed_mixpanel_rate_limits(tmp_path: Path) -> None:
    server = start_sandbox(events_per_day=50)
    try:
        days = recent_days(8, server)
        events(
            credentials_for(server),
            LocalDestination(path=str(tmp_path)),
            from_date=days[0],
            to_date=days[-1],
            days_per_request=1,
            max_concurrent_requests=8,
        )
        stats = server.stats()
        assert stats["export_requests"] == 8
        assert stats["rate_limited"] == 0
        assert stats["max_in_any_second"] <= 3
        for day in days:
            assert_day_matches_sandbox(tmp_path, server, day)
    finally:
        server.stop()


def test_bad_credentials_fail_fast_once_for_the_whole_run(sandbox: SandboxServer, tmp_path: Path) -> None:
    days = recent_days(6, sandbox)
    with pytest.raises(BadCredentialsError, match="rejected the credentials"):
        events(
            credentials_for(sandbox, service_account_secret="nope-not-it"),
            LocalDestination(path=str(tmp_path)),
            from_date=days[0],
            to_date=days[-1],
            days_per_request=1,
        )
    assert sandbox.stats()["export_requests"] == 1


@pytest.mark.parametrize(
    ("back_from", "back_to", "message"),
    [(1, -1, "in the future"), (1, 3, "before from_date")],
)
def test_bad_ranges_are_refused_before_any_request(
    sandbox: SandboxServer, tmp_path: Path, back_from: int, back_to: int, message: str
) -> None:
    today = sandbox.cfg.current_day()
    with pytest.raises(InvalidDateRangeError, match=message):
        events(
            credentials_for(sandbox),
            LocalDestination(path=str(tmp_path)),
            from_date=today - timedelta(days=back_from),
            to_date=today - timedelta(days=back_to),
        )
    assert sandbox.stats()["export_requests"] == 0
    assert not (tmp_path / "1").exists()


def test_local_epoch_projects_land_in_the_right_utc_instant_and_day(tmp_path: Path) -> None:
    server = start_sandbox(time_mode="local", timezone="America/Los_Angeles")
    try:
        days = recent_days(2, server)
        events(
            credentials_for(server), LocalDestination(path=str(tmp_path)), from_date=days[0], to_date=days[-1]
        )
        zone = ZoneInfo("America/Los_Angeles")
        for day in days:
            assert_day_matches_sandbox(tmp_path, server, day)
            frame = read_day(tmp_path, day)
            local_days = {t.astimezone(zone).date() for t in frame["time"].to_list()}
            assert local_days == {day}
            # the stored instant is the local wall clock of `properties.time` read in the project zone
            epoch = frame.select(pl.col("properties").str.json_path_match("$.time").cast(pl.Int64))[
                "properties"
            ]
            assert {date(1970, 1, 1) + timedelta(days=int(e) // 86400) for e in epoch.to_list()} == {day}
            utc = frame["time"].to_list()
            wall = [datetime(1970, 1, 1) + timedelta(seconds=int(e)) for e in epoch.to_list()]
            assert all(
                w.replace(tzinfo=zone, fold=0).astimezone(UTC) == t for w, t in zip(wall, utc, strict=True)
            )
    finally:
        server.stop()


def test_a_crash_between_staging_and_commit_keeps_the_old_day_and_the_next_run_repairs(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (day,) = recent_days(1, sandbox)
    target = LocalDestination(path=str(tmp_path))
    events(credentials_for(sandbox), target, from_date=day, to_date=day)
    before = committed(local_destination(tmp_path), "mp_master_event", day.isoformat())

    real_move = Lake.commit

    def crash_mid_commit(
        self: Lake, stage: Stage, partition: str, manifest: Manifest, expected: Manifest | None = None
    ) -> Manifest:  # files published, manifest not switched
        for item in stage.files.get(partition, []):
            self.storage.move(
                item.key, self.data_prefix(stage.table, partition) + "part-crashed-00000.parquet"
            )
        raise FatalError("simulated crash between staging and commit")

    monkeypatch.setattr(Lake, "commit", crash_mid_commit)
    with pytest.raises(FatalError, match="simulated crash"):
        events(credentials_for(sandbox), target, from_date=day, to_date=day)
    assert local_destination(tmp_path).manifest("mp_master_event", day.isoformat()) == before
    assert read_day(tmp_path, day).height == before.rows

    monkeypatch.setattr(Lake, "commit", real_move)
    events(credentials_for(sandbox), target, from_date=day, to_date=day)
    assert_day_matches_sandbox(tmp_path, sandbox, day)
    day_dir = tmp_path / "1" / "mp_master_event" / day.strftime("%Y/%m/%d")
    assert len(list(day_dir.iterdir())) == 1, "the orphan of the crashed run was removed"
    # what the crashed run staged (its edge file) stays outside every table until it is stale
    left = staging_files(tmp_path)
    assert left, "a crash leaves its staging behind"
    assert local_destination(tmp_path).remove_stale_staging() == 0, "a young staging may be a live run's"
    a_day_ago = time.time() - STALE_STAGING_SECONDS - 60
    for path in left:
        os.utime(path, (a_day_ago, a_day_ago))
    assert local_destination(tmp_path).remove_stale_staging() == len(left)
    assert staging_files(tmp_path) == []


def test_the_flow_takes_an_object_store_destination(sandbox: SandboxServer, s3_server: S3Server) -> None:
    from tasks.lake.tables import read_parquet
    from tests.stores.s3 import make_s3_destination

    (day,) = recent_days(1, sandbox)
    block = make_s3_destination(s3_server, prefix="pipelines")
    events(credentials_for(sandbox), block, from_date=day, to_date=day)
    lake = block.connect(1)
    manifest = committed(lake, "mp_master_event", day.isoformat())
    want = sandbox.expected(day, day)[day.isoformat()]
    assert (manifest.rows, manifest.fingerprint) == (want["rows"], want["fingerprint"])
    assert read_parquet(lake, [f.key for f in manifest.files]).height == want["rows"]
    assert lake.describe(manifest.files[0].key).startswith(
        f"s3://{block.bucket.bucket_name}/pipelines/1/mp_master_event/"
    )
