"""Nightly reconciliation on the sandbox: only days Mixpanel changed are replaced, in every destination."""

from __future__ import annotations

import time
from datetime import date, timedelta
from pathlib import Path

import pytest

from flows.events import events
from flows.reconcile import reconcile
from sandbox import SandboxServer
from tasks.lake.manifest import Manifest
from tests.conftest import credentials_for, fingerprint_of_rows, recent_days
from tests.kit.sync import Three, day_frame, day_range_utc, three_destinations
from tests.stores.s3 import S3Server

pytestmark = pytest.mark.usefixtures("prefect_server")
DAYS = 12


@pytest.fixture
def synced(sandbox: SandboxServer, tmp_path: Path, s3_server: S3Server) -> tuple[Three, list[date]]:
    """Twelve days exported to a local folder, S3 and DuckDB."""
    kit = three_destinations(tmp_path, s3_server)
    days = recent_days(DAYS, sandbox)
    for block in kit.blocks:
        events(credentials_for(sandbox), block, from_date=days[0], to_date=days[-1])
    return kit, days


def assert_day_equals_sandbox(kit: Three, sandbox: SandboxServer, day: date) -> None:
    want = sandbox.expected(day, day)[day.isoformat()]
    for dest in kit.connected():
        manifest = dest.manifest("mp_master_event", day.isoformat())
        assert manifest is not None
        assert (manifest.rows, manifest.fingerprint) == (want["rows"], want["fingerprint"]), dest.describe("")
        frame = day_frame(dest, day)
        assert (frame.height, fingerprint_of_rows(frame)) == (want["rows"], want["fingerprint"])
    start, end = day_range_utc(day)
    rows = kit.duckdb_rows(
        "SELECT event_name, CAST(properties AS VARCHAR) FROM mp_master_event WHERE time >= ? AND time < ?",
        [start, end],
    )
    assert len(rows) == want["rows"]
    assert fingerprint_of_rows_from(rows) == want["fingerprint"], "the warehouse holds the new day"


def fingerprint_of_rows_from(rows: list[tuple[str, str]]) -> str:
    import polars as pl

    return fingerprint_of_rows(pl.DataFrame(rows, schema=["event_name", "properties"], orient="row"))


def run(sandbox: SandboxServer, kit: Three) -> tuple[list[dict[str, object]], dict[str, int]]:
    before = sandbox.stats()
    rows = reconcile(credentials_for(sandbox), kit.blocks, lookback_days=DAYS, settle_hours=0)
    after = sandbox.stats()
    used = {key: after[key] - before[key] for key in ("export_requests", "counts_requests")}
    return rows, used


def test_late_events_three_days_back_replace_that_day_only(
    sandbox: SandboxServer, synced: tuple[Three, list[date]]
) -> None:
    kit, days = synced
    late_day = days[-3]
    before = kit.manifests(days)
    added = sandbox.add_events(late_day, 25, processed_at_ms=int(time.time() * 1000))
    assert added == 25

    rows, used = run(sandbox, kit)

    assert {r["day"] for r in rows} == {late_day.isoformat()}
    assert len(rows) == 3, "one row per destination"
    assert all("25 event(s) processed after the export" in str(r["reason"]) for r in rows)
    assert all(r["rows after"] == r["rows before"] + 25 for r in rows)  # type: ignore[operator]
    assert_day_equals_sandbox(kit, sandbox, late_day)
    after = kit.manifests(days)
    for old, new in zip(before, after, strict=True):
        assert {d: b for d, b in new.items() if d != late_day} == {
            d: b for d, b in old.items() if d != late_day
        }
        assert new[late_day] != old[late_day]
    # one probe and one count request for all twelve days, then one re-export per destination; the
    # status at the end asks one count request per destination
    assert used == {"export_requests": 1 + 3, "counts_requests": 1 + 3}


def data_files(root: Path) -> list[Path]:
    """Every file but the day notes the status at the end of each reconcile records (its counts)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and "/_state/status/" not in p.as_posix())


def test_nothing_changed_rewrites_nothing(sandbox: SandboxServer, synced: tuple[Three, list[date]]) -> None:
    kit, days = synced
    before = kit.manifests(days)
    files = data_files(Path(kit.local.path))
    rows, used = run(sandbox, kit)
    assert rows == []
    assert kit.manifests(days) == before
    assert data_files(Path(kit.local.path)) == files
    assert used == {"export_requests": 1, "counts_requests": 1 + 3}  # + each destination's status


def test_deleted_events_are_found_by_the_counts(
    sandbox: SandboxServer, synced: tuple[Three, list[date]]
) -> None:
    kit, days = synced
    local = kit.connected()[0]
    frame = day_frame(local, days[4])
    user = frame.filter(frame["user_id"].is_not_null())["user_id"][0]
    touched = [d for d in days if day_frame(local, d).filter(day_frame(local, d)["user_id"] == user).height]
    sandbox.delete_users([user])

    rows, used = run(sandbox, kit)

    changed = sorted({str(r["day"]) for r in rows})
    assert changed == [d.isoformat() for d in touched]
    assert all("Mixpanel counts" in str(r["reason"]) for r in rows)
    for day in touched:
        assert_day_equals_sandbox(kit, sandbox, day)
    assert used["counts_requests"] == 1 + 3  # + each destination's status


def test_a_day_is_checked_only_once_it_settled(
    sandbox: SandboxServer, synced: tuple[Three, list[date]]
) -> None:
    kit, days = synced
    sandbox.add_events(days[-1], 5)
    before = sandbox.stats()["export_requests"]
    assert reconcile(credentials_for(sandbox), kit.blocks, lookback_days=DAYS, settle_hours=24) == []
    assert sandbox.stats()["export_requests"] == before, "exported minutes ago: not settled, not checked"


def test_a_day_without_recorded_counts_is_counted_from_its_files(
    sandbox: SandboxServer, synced: tuple[Three, list[date]]
) -> None:
    """Manifests written before counts were recorded (or by hourly increments) still compare."""
    import msgspec

    kit, days = synced
    dest = kit.connected()[0]
    manifest = dest.manifest("mp_master_event", days[0].isoformat())
    assert manifest is not None and manifest.event_counts is not None
    older: Manifest = msgspec.structs.replace(manifest, event_counts=None)
    dest.storage.put_bytes(dest.manifest_key("mp_master_event", days[0].isoformat()), older.encode())
    rows = reconcile(credentials_for(sandbox), [kit.local], lookback_days=DAYS, settle_hours=0)
    assert rows == []


def test_a_lookback_below_one_day_is_refused(sandbox: SandboxServer, tmp_path: Path) -> None:
    from blocks.destinations.local import LocalDestination

    with pytest.raises(Exception, match="lookback_days: Input should be greater than or equal to 1"):
        reconcile(credentials_for(sandbox), [LocalDestination(path=str(tmp_path))], lookback_days=0)
    assert sandbox.stats()["export_requests"] == 0


def test_days_outside_the_window_are_not_checked(
    sandbox: SandboxServer, synced: tuple[Three, list[date]]
) -> None:
    kit, days = synced
    sandbox.add_events(days[0], 3)  # twelve days back: outside a window of five
    rows = reconcile(credentials_for(sandbox), [kit.local], lookback_days=5, settle_hours=0)
    assert rows == []
    assert days[0] < days[-1] - timedelta(days=4)
