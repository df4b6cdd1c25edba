"""Delta Lake's own quirks (the scenarios every destination shares run in test_destination_scenarios):
its schema, one commit per replace, a table that lags the manifest, and upkeep's compaction and cleanup."""

from __future__ import annotations

import os
import shutil
import time
from datetime import date
from pathlib import Path

import msgspec
import polars as pl
import pyarrow as pa
import pytest

from sandbox import SandboxServer
from tasks.errors import FatalError
from tasks.schema import EVENTS_TABLE
from tasks.warehouses.tableformat import format_hook, reader
from tests.conftest import recent_days
from tests.kit.destinations import DeltaTarget, export, local_delta, reading, sandbox_day
from tests.stores.gcs import GcsServer, make_gcs_destination


def assert_day_is_the_sandbox(lake: DeltaTarget, sandbox: SandboxServer, day: date) -> None:
    assert set(lake.readings(day)) == {sandbox_day(sandbox, day)}


def test_properties_are_the_exported_text_and_time_is_utc(sandbox: SandboxServer, tmp_path: Path) -> None:
    lake = local_delta(tmp_path)
    (day,) = recent_days(1, sandbox)
    export(sandbox, lake.block, [day], "types")
    schema = lake.table().to_pyarrow_table().schema
    assert schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert schema.field("properties").type == pa.string()
    frame = lake.frame(day)
    files_frame = pl.read_parquet(list((tmp_path / "dest" / "1" / "mp_master_event").rglob("*.parquet")))
    key = ["insert_id", "event_name", "properties"]
    assert frame.select(key).sort(key).equals(files_frame.select(key).sort(key)), "byte-identical properties"


def test_each_replace_is_one_delta_write_and_the_replaced_version_stays_readable(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    lake = local_delta(tmp_path)
    days = recent_days(2, sandbox)
    export(sandbox, lake.block, days, "first")
    export(sandbox, lake.block, days, "second")
    history = lake.table().history()
    assert [h["operation"] for h in history] == ["WRITE"] * 4
    for day in days:
        commit = lake.commit_of(day)
        assert commit["mp.max_processing_time_ms"] == str(lake.manifest(day).max_processing_time_ms)
    # the first run's version is still there for time travel, and was complete
    first = pl.DataFrame(
        pl.from_arrow(lake.table(version=1).to_pyarrow_table(filters=[("day", "=", days[1].isoformat())]))
    )
    assert reading(first) == sandbox_day(sandbox, days[1])


def test_an_existing_version_is_reloaded_when_the_table_lags_the_manifest(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    lake = local_delta(tmp_path)
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
    assert lake.frame(day).height == 0
    destination.repair(EVENTS_TABLE, day.isoformat())
    assert_day_is_the_sandbox(lake, sandbox, day)


@pytest.mark.usefixtures("prefect_server")
def test_upkeep_compacts_hourly_files_and_removes_versions_past_the_retention(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    from flows.events import events_hourly
    from flows.upkeep import upkeep
    from tests.conftest import credentials_for
    from tests.kit.expected import epoch_ms

    lake = local_delta(tmp_path)
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
    assert reading(lake.frame(today)) == (want["rows"], want["fingerprint"])
    assert lake.held(today) == held, "compaction keeps the day's version"
    on_disk = {p.name for p in (tmp_path / "dest" / "1" / "delta" / EVENTS_TABLE).rglob("*.parquet")}
    assert on_disk == {u.rsplit("/", 1)[1] for u in lake.table().file_uris()}, "replaced files were removed"


def test_upkeep_removes_files_no_version_references_once_older_than_the_grace(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    lake = local_delta(tmp_path)
    lake.block.retention_hours = 2
    (day,) = recent_days(1, sandbox)
    export(sandbox, lake.block, [day], "first")
    export(sandbox, lake.block, [day], "second")  # the first version's files: removed, within the retention
    folder = tmp_path / "dest" / "1" / "delta" / EVENTS_TABLE / f"day={day.isoformat()}"
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


def test_table_formats_on_gcs_are_refused_with_the_reason(gcs_server: GcsServer) -> None:
    """delta-rs uploads to GCS through the XML API, which no local GCS server serves: untested, so refused."""
    from blocks.destinations.gcs import GcsDestination
    from blocks.destinations.registry import Capability, entries

    files = make_gcs_destination(gcs_server)
    for style in ("delta", "iceberg"):
        with pytest.raises(
            FatalError, match="not written on GCS: delta-rs uploads to GCS through the XML API"
        ):
            files.table_location(1, "delta", style)
    assert GcsDestination not in [e.block() for e in entries(capability=Capability.CARRIES_TABLE_FORMATS)]
