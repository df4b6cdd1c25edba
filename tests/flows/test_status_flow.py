"""The status flow against the sandbox over real HTTP: after a normal export every day is in sync; late events
make a day differ; a GDPR purge marks its days purged; a file removed or changed by hand is found; bad input
(an empty destination, a corrupt manifest, Mixpanel answering 429 or 5xx to the count query) gets its sentence
and the rows are still drawn. Days are the sandbox's recent days, each chosen by its place in the range."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from blocks.destinations.local import LocalDestination
from flows.events import events
from flows.gdpr import gdpr
from flows.status import artifact_key, status
from sandbox import SandboxServer
from tasks.lake.commit import Lake
from tasks.lake.store import LocalStore
from tasks.schema import EVENTS_TABLE
from tests.conftest import credentials_for, recent_days

pytestmark = pytest.mark.usefixtures("prefect_server")
DAYS = 4


def exported(sandbox: SandboxServer, tmp_path: Path) -> tuple[LocalDestination, list[date]]:
    block = LocalDestination(path=str(tmp_path / "data"), create_missing=True)
    days = recent_days(DAYS, sandbox)
    events(credentials_for(sandbox), block, from_date=days[0], to_date=days[-1])
    return block, days


def lake(block: LocalDestination, sandbox: SandboxServer) -> Lake:
    return Lake(LocalStore(Path(block.path)), sandbox.cfg.project_id)


def states(rows: list[dict[str, object]]) -> dict[date, str]:
    return {r["day"]: str(r["state"]) for r in rows}  # type: ignore[misc]


def test_after_a_normal_export_every_day_is_in_sync_and_published(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    block, days = exported(sandbox, tmp_path)
    before = sandbox.stats()["counts_requests"]
    rows = status(credentials_for(sandbox), block, days=30)
    assert states(rows) == dict.fromkeys(days, "in_sync")  # from the first committed day on
    assert all(r["difference"] == 0 and r["mixpanel_rows"] for r in rows)
    assert sandbox.stats()["counts_requests"] - before == 1, "one count request for every day"
    key = artifact_key(lake(block, sandbox))
    with get_client(sync_client=True) as client:
        table = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
        chart = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{key}-chart"]))
        )
    assert table and table[0].type == "table" and "4 of 4 day(s) in sync" in str(table[0].description)
    assert chart and "data:image/svg+xml;base64," in str(chart[0].data)
    assert "Every day matches Mixpanel." in str(chart[0].data)


def test_late_events_make_their_day_differ(sandbox: SandboxServer, tmp_path: Path) -> None:
    block, days = exported(sandbox, tmp_path)
    late = days[1]
    sandbox.add_events(late, 7, user="late-user")
    rows = status(credentials_for(sandbox), block)
    assert states(rows) == {d: "differs" if d == late else "in_sync" for d in days}
    (row,) = [r for r in rows if r["day"] == late]
    assert row["difference"] == -7 and "the nightly reconcile exports the day again" in str(row["reason"])


def test_a_gdpr_purge_marks_its_day_purged(sandbox: SandboxServer, tmp_path: Path) -> None:
    days = recent_days(DAYS, sandbox)
    user = "status-gdpr-user"
    sandbox.add_events(days[2], 5, user=user)  # the user's events, on one day, by construction
    block, _ = exported(sandbox, tmp_path)
    gdpr(credentials_for(sandbox), [block], distinct_ids=[user], submit_to_mixpanel=False)
    rows = status(credentials_for(sandbox), block)
    assert states(rows) == {d: "purged" if d == days[2] else "in_sync" for d in days}
    assert "Mixpanel still counts them" in str(rows[2]["reason"]) and rows[2]["rows_held"] is not None
    sandbox.delete_users([user])  # Mixpanel's own deletion completes: its count drops by the same events
    rows = status(credentials_for(sandbox), block)
    assert rows[2]["state"] == "purged" and "has deleted them too" in str(rows[2]["reason"])


def test_a_file_removed_or_changed_by_hand_is_found(sandbox: SandboxServer, tmp_path: Path) -> None:
    block, days = exported(sandbox, tmp_path)
    dest = lake(block, sandbox)
    removed, changed = (dest.manifest(EVENTS_TABLE, d.isoformat()) for d in (days[0], days[3]))
    assert removed is not None and changed is not None
    (Path(block.path) / removed.files[0].key).unlink()
    path = Path(block.path) / changed.files[0].key
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)  # one row fewer, the same name: only a re-read sees it

    rows = status(credentials_for(sandbox), block)  # every time: each committed file still there
    assert states(rows) == {d: "damaged" if d == days[0] else "in_sync" for d in days}
    assert (
        f"make run DEPLOYMENT=mixpanel-events/events-daily PARAMS='from_date={days[0]} to_date={days[0]}'"
        in str(rows[0]["reason"])
    )
    rows = status(credentials_for(sandbox), block, verify=True)
    assert states(rows) == {d: "damaged" if d in (days[0], days[3]) else "in_sync" for d in days}
    assert f"({table.num_rows - 1} rows, the manifest says {table.num_rows})" in str(rows[3]["reason"])
    assert "repair cannot bring them back" in str(rows[3]["reason"])


def test_an_empty_destination_fails_in_one_sentence(sandbox: SandboxServer, tmp_path: Path) -> None:
    block = LocalDestination(path=str(tmp_path / "empty"), create_missing=True)
    state = status(credentials_for(sandbox), block, return_state=True)
    assert state.is_failed()
    assert "holds no committed day of mp_master_event: export a day first" in str(state.message)


def test_a_corrupt_manifest_is_marked_and_the_rest_drawn(sandbox: SandboxServer, tmp_path: Path) -> None:
    block, days = exported(sandbox, tmp_path)
    dest = lake(block, sandbox)
    (Path(block.path) / dest.manifest_key(EVENTS_TABLE, days[1].isoformat())).write_text("{broken")
    rows = status(credentials_for(sandbox), block)
    assert states(rows) == {d: "damaged" if d == days[1] else "in_sync" for d in days}
    assert "is not readable" in str(rows[1]["reason"]) and "restore it or delete it" in str(rows[1]["reason"])


@pytest.mark.parametrize("code", [429, 503])
def test_mixpanel_refusing_the_count_marks_the_days_unchecked(
    sandbox: SandboxServer, tmp_path: Path, code: int
) -> None:
    block, days = exported(sandbox, tmp_path)
    status(credentials_for(sandbox), block)  # counts recorded once
    sandbox.add_faults([{"kind": "status", "code": code, "endpoint": "counts", "times": 3}])
    rows = status(credentials_for(sandbox), block)
    assert states(rows) == dict.fromkeys(days, "unchecked")
    assert all(
        f"Mixpanel answered {code}" in str(r["reason"]) or "rate-limited" in str(r["reason"]) for r in rows
    )
    assert all(r["mixpanel_rows"] for r in rows), "the counts recorded before are still shown"


def test_an_export_the_guard_refused_marks_its_day_refused(sandbox: SandboxServer, tmp_path: Path) -> None:
    block, days = exported(sandbox, tmp_path)
    committed = lake(block, sandbox).manifest(EVENTS_TABLE, days[0].isoformat())
    assert committed is not None and committed.event_counts
    name = sorted(committed.event_counts)[0]
    narrower = events(
        credentials_for(sandbox),
        block,
        from_date=days[0],
        to_date=days[0],
        event_names=[name],
        return_state=True,
    )
    assert narrower.is_failed()
    rows = status(credentials_for(sandbox), block)
    assert states(rows) == {d: "refused" if d == days[0] else "in_sync" for d in days}
    assert "was not replaced: it was committed with every event" in str(rows[0]["reason"])
    assert rows[0]["rows_held"] == committed.rows, "the older version is kept"


def test_a_warehouse_shows_the_status_rows_in_its_view(sandbox: SandboxServer, tmp_path: Path) -> None:
    import duckdb

    from blocks.destinations.duckdb import DuckDBWarehouse

    warehouse = DuckDBWarehouse(
        database=str(tmp_path / "wh.duckdb"),
        files=LocalDestination(path=str(tmp_path / "files"), create_missing=True),
    )
    days = recent_days(DAYS, sandbox)
    late = days[2]
    events(credentials_for(sandbox), warehouse, from_date=days[0], to_date=days[-1])
    sandbox.add_events(late, 3, user="late-user")
    rows = status(credentials_for(sandbox), warehouse)
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as conn:
        viewed = conn.execute(
            "SELECT day, state, rows_held, difference FROM mp_sync_status ORDER BY day"
        ).fetchall()
    assert viewed == [(r["day"], r["state"], r["rows_held"], r["difference"]) for r in rows]
    assert {day: state for day, state, _, _ in viewed} == {
        d: "differs" if d == late else "in_sync" for d in days
    }
