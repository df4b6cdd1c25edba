"""Delta Lake destination on a local folder and on S3 (moto): sandbox days read back through delta-rs and polars."""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake.exceptions import DeltaError

from sandbox import SandboxServer
from tasks.pipeline.exclude import event_rows_of
from tasks.schema import EVENTS_TABLE
from tasks.warehouses.tableformat import TableFormatHook, format_hook, reader
from tests.conftest import recent_days
from tests.tableformat_kit import (
    Lake,
    assert_no_file_holds,
    export,
    killed_in_its_commit,
    local_lake,
    race,
    rows_and_fingerprint,
    rows_of_cluster,
    s3_lake,
    synced_twice,
    truth,
)


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lake]:
    yield local_lake(tmp_path) if request.param == "local" else s3_lake(request.getfixturevalue("s3_server"))


def assert_day_is_the_sandbox(lake: Lake, sandbox: SandboxServer, day: date) -> None:
    want = truth(sandbox, day)
    assert rows_and_fingerprint(lake.day(day)) == want
    assert rows_and_fingerprint(lake.scan_day(day)) == want


def test_days_land_exactly_and_a_rerun_replaces_them(sandbox: SandboxServer, lake: Lake) -> None:
    days = recent_days(2, sandbox)
    export(sandbox, lake.block, days, "first")
    export(sandbox, lake.block, days, "second")
    destination = lake.block.connect(1)
    for day in days:
        assert_day_is_the_sandbox(lake, sandbox, day)
        manifest = destination.manifest(EVENTS_TABLE, day.isoformat())
        assert manifest is not None and lake.held(day) == manifest.sequence
    # each replace is one commit carrying the manifest's fields
    history = lake.table().history()
    assert [h["operation"] for h in history] == ["WRITE"] * 4
    newest = {h["mp.partition"]: h for h in reversed(history)}
    for day in days:
        manifest = destination.manifest(EVENTS_TABLE, day.isoformat())
        assert manifest is not None
        commit = newest[day.isoformat()]
        assert (commit["mp.run_id"], commit["mp.fingerprint"], commit["mp.rows"]) == (
            manifest.run_id,
            manifest.fingerprint,
            str(manifest.rows),
        )
        assert commit["mp.max_processing_time_ms"] == str(manifest.max_processing_time_ms)
    # the first run's version is still there for time travel, and was complete
    first = pl.from_arrow(lake.table(version=1).to_pyarrow_table(filters=[("day", "=", days[1].isoformat())]))
    assert rows_and_fingerprint(first) == truth(sandbox, days[1])  # type: ignore[arg-type]


def test_properties_are_the_exported_text_and_time_is_utc(sandbox: SandboxServer, tmp_path: Path) -> None:
    lake = local_lake(tmp_path)
    (day,) = recent_days(1, sandbox)
    export(sandbox, lake.block, [day], "types")
    schema = lake.table().to_pyarrow_table().schema
    assert schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert schema.field("properties").type == pa.string()
    frame = lake.day(day)
    files_frame = pl.read_parquet(list((tmp_path / "1" / "mp_master_event").rglob("*.parquet")))
    key = ["insert_id", "event_name", "properties"]
    assert frame.select(key).sort(key).equals(files_frame.select(key).sort(key)), "byte-identical properties"


def test_sigkill_in_the_middle_of_a_commit_keeps_the_previous_version_and_the_next_run_completes(
    sandbox: SandboxServer, lake: Lake
) -> None:
    (day,) = recent_days(1, sandbox)
    export(sandbox, lake.block, [day], "before")
    version = lake.table().version()
    killed_in_its_commit(sandbox, lake.block, day)

    assert lake.table().version() == version, "no Delta commit happened"
    assert_day_is_the_sandbox(lake, sandbox, day)  # the previous version, whole
    assert lake.table().history(1)[0]["mp.run_id"] == "before"

    destination = lake.block.connect(1)
    destination.repair(EVENTS_TABLE, day.isoformat())  # what every run does first
    manifest = destination.manifest(EVENTS_TABLE, day.isoformat())
    assert manifest is not None and manifest.run_id == "killed"
    assert lake.held(day) == manifest.sequence and lake.table().history(1)[0]["mp.run_id"] == "killed"
    export(sandbox, lake.block, [day], "after")
    assert_day_is_the_sandbox(lake, sandbox, day)
    assert lake.table().history(1)[0]["mp.run_id"] == "after"


def test_two_racing_runs_of_one_day_end_with_one_complete_day(sandbox: SandboxServer, lake: Lake) -> None:
    days = recent_days(2, sandbox)
    export(sandbox, lake.block, days, "seed")
    errors = race(sandbox, lake.block, days[1], ["racer-a", "racer-b", "racer-c"])
    assert not errors, errors  # a run that lost the manifest or the Delta race retried from the winner
    destination = lake.block.connect(1)
    manifest = destination.manifest(EVENTS_TABLE, days[1].isoformat())
    assert manifest is not None and manifest.run_id.startswith("racer-")
    assert lake.held(days[1]) == manifest.sequence
    for day in days:
        assert_day_is_the_sandbox(lake, sandbox, day)
    # two days written at the same time do not conflict: both commits land
    errors = race(sandbox, lake.block, days[0], ["other-day"]) + race(sandbox, lake.block, days[1], ["again"])
    assert not errors
    for day in days:
        assert_day_is_the_sandbox(lake, sandbox, day)


def test_a_purge_leaves_no_row_in_any_readable_version_nor_in_any_file(
    sandbox: SandboxServer, lake: Lake
) -> None:
    from tasks.sync.purge import PurgeScope, purge_destination

    days = recent_days(2, sandbox)
    export(sandbox, lake.block, days, "first")
    export(sandbox, lake.block, days, "second")  # an older version of each day to time-travel to
    frame = lake.day(days[0])
    user = frame.filter(pl.col("user_id").is_not_null())["distinct_id"][0]
    cluster = {user}
    assert frame.filter(event_rows_of(cluster)).height > 0
    destination = lake.block.connect(1)
    assert isinstance(format_hook(destination), TableFormatHook)
    report = purge_destination(destination, PurgeScope(frozenset(cluster), frozenset(cluster), {}), "purge")
    assert sum(report.events.values()) > 0

    table = lake.table()
    for day in days:
        manifest = destination.manifest(EVENTS_TABLE, day.isoformat())
        assert manifest is not None
        assert rows_and_fingerprint(lake.day(day)) == (manifest.rows, manifest.fingerprint)
    readable = []
    for version in range(table.version() + 1):
        try:
            rows = pl.from_arrow(lake.table(version=version).to_pyarrow_table())
        except (OSError, DeltaError):  # its files were removed: no reader can time-travel to it
            continue
        readable.append(version)
        assert rows.filter(event_rows_of(cluster)).height == 0, f"version {version} still holds the user"  # type: ignore[union-attr]
    assert table.version() in readable
    for name, data in lake.files():
        if name.endswith(".parquet"):
            rows = pl.from_arrow(pq.read_table(io.BytesIO(data)))
            assert rows.filter(event_rows_of(cluster)).height == 0, name  # type: ignore[union-attr]
        else:
            assert user.encode() not in data, name


def test_an_existing_version_is_reloaded_when_the_table_lags_the_manifest(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    lake = local_lake(tmp_path)
    (day,) = recent_days(1, sandbox)
    export(sandbox, lake.block, [day], "one")
    destination = lake.block.connect(1)
    manifest = destination.manifest(EVENTS_TABLE, day.isoformat())
    assert manifest is not None
    # the table written by someone else in between (an older run, a manual fix): repair converges
    older = msgspec.structs.replace(manifest, sequence=manifest.sequence - 1)
    hook = format_hook(destination)
    assert hook is not None
    hook.table_format.replace(
        EVENTS_TABLE, day.isoformat(), older, reader(destination, EVENTS_TABLE, day.isoformat(), older, ())
    )
    assert lake.day(day).height == 0
    destination.repair(EVENTS_TABLE, day.isoformat())
    assert_day_is_the_sandbox(lake, sandbox, day)


@pytest.mark.usefixtures("prefect_server")
def test_hourly_increments_append_then_the_nightly_run_replaces_the_day(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    from flows.events import events, events_hourly
    from tests.conftest import credentials_for
    from tests.kit.expected import epoch_ms

    lake = local_lake(tmp_path)
    credentials = credentials_for(sandbox)
    today = sandbox.cfg.current_day()
    for cut in (epoch_ms(today, 7.5), epoch_ms(today, 13.5)):
        sandbox.set_processed_until(cut)
        events_hourly(credentials, lake.block)
        want = sandbox.expected(today, today, processed_until_ms=cut)[today.isoformat()]
        assert rows_and_fingerprint(lake.day(today)) == (want["rows"], want["fingerprint"])
    modes = [
        h["operationParameters"]["mode"] for h in lake.table().history() if h["mp.partition"] == str(today)
    ]
    assert modes == ["Append", "Overwrite"], "the first hour wrote the day, the next one appended to it"
    manifest = lake.block.connect(1).manifest(EVENTS_TABLE, today.isoformat())
    assert manifest is not None and manifest.increments == 1 and lake.held(today) == manifest.sequence

    sandbox.set_processed_until(None)
    events(credentials, lake.block, from_date=today, to_date=today)
    assert_day_is_the_sandbox(lake, sandbox, today)
    newest = lake.table().history(1)[0]
    assert newest["operationParameters"]["mode"] == "Overwrite" and newest["mp.increments"] == "0"


@pytest.mark.usefixtures("prefect_server")
def test_upkeep_compacts_hourly_files_and_removes_versions_past_the_retention(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    from flows.events import events_hourly
    from flows.upkeep import upkeep
    from tests.conftest import credentials_for
    from tests.kit.expected import epoch_ms

    lake = local_lake(tmp_path)
    lake.block.retention_hours = 0  # keep no old version: everything replaced can go at once
    credentials = credentials_for(sandbox)
    today = sandbox.cfg.current_day()
    for hours in (3.5, 7.5, 11.5, 15.5):
        sandbox.set_processed_until(epoch_ms(today, hours))
        events_hourly(credentials, lake.block)
    want = sandbox.expected(today, today, processed_until_ms=epoch_ms(today, 15.5))[today.isoformat()]
    held = lake.held(today)
    assert len([f for f in lake.table().file_uris() if today.isoformat() in f]) == 4

    (row,) = [r for r in upkeep(credentials, [lake.block]) if r["table"] == EVENTS_TABLE]
    assert row["files_compacted"] >= 4  # type: ignore[operator]
    assert [f for f in lake.table().file_uris() if today.isoformat() in f] != []
    assert len([f for f in lake.table().file_uris() if today.isoformat() in f]) == 1
    assert rows_and_fingerprint(lake.day(today)) == (want["rows"], want["fingerprint"])
    assert lake.held(today) == held, "compaction keeps the day's version"
    on_disk = {p.name for p in (tmp_path / "1" / "delta" / EVENTS_TABLE).rglob("*.parquet")}
    assert on_disk == {u.rsplit("/", 1)[1] for u in lake.table().file_uris()}, "replaced files were removed"


@pytest.mark.usefixtures("prefect_server")
def test_the_gdpr_flow_removes_a_cluster_from_every_table_and_every_version(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    from flows.gdpr import gdpr
    from tasks.schema import PEOPLE_TABLE
    from tests.conftest import credentials_for
    from tests.sync_kit import tokens

    lake = local_lake(tmp_path)
    user, cluster = synced_twice(sandbox, lake.block)
    people_rows = pl.from_arrow(lake.table(PEOPLE_TABLE).to_pyarrow_table())
    assert people_rows.filter(pl.col("distinct_id").is_in(list(cluster))).height == 1  # type: ignore[union-attr]

    gdpr(credentials_for(sandbox), [lake.block], gdpr_credentials=tokens(sandbox), distinct_ids=[user])

    for table, rows_of in rows_of_cluster(cluster):
        current = lake.table(table)
        assert current.version() > 0
        for version in range(current.version() + 1):
            try:
                rows = pl.from_arrow(lake.table(table, version).to_pyarrow_table())
            except (OSError, DeltaError):  # its files were removed
                continue
            assert rows.filter(rows_of).height == 0, f"{table} version {version}"  # type: ignore[union-attr]
    assert_no_file_holds(lake.files(), cluster)


def test_upkeep_removes_files_no_version_references_once_older_than_the_grace(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    lake = local_lake(tmp_path)
    lake.block.retention_hours = 2
    (day,) = recent_days(1, sandbox)
    export(sandbox, lake.block, [day], "first")
    export(sandbox, lake.block, [day], "second")  # the first version's files: removed, within the retention
    folder = tmp_path / "1" / "delta" / EVENTS_TABLE / f"day={day.isoformat()}"
    three_hours_ago = time.time() - 3 * 3600
    for path in folder.glob("*.parquet"):  # every file older than the grace, as if written long ago
        os.utime(path, (three_hours_ago, three_hours_ago))
    live = sorted(folder.glob("*.parquet"))
    # writers that lost their commit race: their uploaded files are in the folder, in no version
    lost, uploading = folder / "part-lost-race.parquet", folder / "part-uploading-now.parquet"
    for path in (lost, uploading):
        shutil.copyfile(live[0], path)
    os.utime(lost, (three_hours_ago, three_hours_ago))
    hook = format_hook(lake.block.connect(1))
    assert hook is not None

    report = hook.table_format.upkeep()

    assert not lost.exists(), "a file of no version, older than the grace, is removed"
    assert uploading.exists(), "a writer's fresh file is kept: its commit may still come"
    assert report[EVENTS_TABLE]["orphans_removed"] == 1  # type: ignore[index]
    assert sorted(folder.glob("*.parquet")) == sorted([*live, uploading])
    assert_day_is_the_sandbox(lake, sandbox, day)
    lake.table(version=lake.table().version() - 1).to_pyarrow_table()  # time travel within the retention
