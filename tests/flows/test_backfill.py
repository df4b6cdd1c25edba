"""The backfill flow in one run: refusals, resume (complete days skipped) and force."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from blocks.destinations.local import LocalDestination
from flows.backfill import backfill
from flows.events import events_hourly
from sandbox import SandboxServer
from sandbox.config import ProjectConfig
from tasks.pipeline.plan import InvalidDateRangeError, days_between
from tests.conftest import (
    assert_day_matches_sandbox,
    credentials_for,
    local_destination,
    recent_days,
    start_sandbox,
)
from tests.kit.lake import committed

pytestmark = pytest.mark.usefixtures("prefect_server")


def manifests(root: Path, days: list[date]) -> dict[str, bytes | None]:
    dest = local_destination(root)
    return {
        d.isoformat(): dest.storage.get_bytes(dest.manifest_key("mp_master_event", d.isoformat()))
        for d in days
    }


def test_a_rerun_skips_complete_days_and_force_redoes_them(sandbox: SandboxServer, tmp_path: Path) -> None:
    credentials = credentials_for(sandbox)
    destination = LocalDestination(path=str(tmp_path))
    days = recent_days(5, sandbox)
    first = backfill(credentials, days[0], destination, to_date=days[1], days_per_request=2)
    assert first == {"days": 2, "exported": 2, "skipped": 0}
    before = manifests(tmp_path, days[:2])

    requests = sandbox.stats()["export_requests"]
    again = backfill(credentials, days[0], destination, to_date=days[-1], days_per_request=2)
    assert again == {"days": 5, "exported": 3, "skipped": 2}
    assert sandbox.stats()["export_requests"] - requests == 2, "days 3-5 in requests of 2 consecutive days"
    assert manifests(tmp_path, days[:2]) == before, "complete days were not touched"
    for day in days:
        assert_day_matches_sandbox(tmp_path, sandbox, day)

    forced = backfill(credentials, days[0], destination, to_date=days[1], force=True)
    assert forced == {"days": 2, "exported": 2, "skipped": 0}
    assert manifests(tmp_path, days[:2]) != before
    for day in days[:2]:
        assert_day_matches_sandbox(tmp_path, sandbox, day)


def test_days_of_hourly_increments_are_redone_and_closed_days_are_not(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    credentials = credentials_for(sandbox)
    destination = LocalDestination(path=str(tmp_path))
    today = sandbox.cfg.current_day()
    yesterday = recent_days(1, sandbox)[0]
    midnight = int(datetime.combine(today, time(), tzinfo=UTC).timestamp() * 1000)
    for hours in (7, 8):  # two hourly runs: today holds an increment, yesterday was exported whole
        sandbox.set_processed_until(midnight + hours * 3_600_000)
        events_hourly(credentials, destination)
    sandbox.set_processed_until(None)
    done = backfill(credentials, yesterday, destination, to_date=today)
    assert done == {"days": 2, "exported": 1, "skipped": 1}
    dest = local_destination(tmp_path)
    redone = dest.manifest("mp_master_event", today.isoformat())
    assert redone is not None and redone.increments == 0
    assert redone.rows == sandbox.expected(today, today)[today.isoformat()]["rows"]


def test_a_backfill_reaches_any_past_day_and_days_before_the_project_are_committed_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = ProjectConfig().current_day() - timedelta(days=400)  # beyond the hosted 6-month limit
    server = start_sandbox(created=created)
    plans: list[str] = []
    monkeypatch.setattr(
        "flows.backfill.create_markdown_artifact", lambda markdown, **kw: plans.append(markdown)
    )
    try:
        credentials = credentials_for(server)
        destination = LocalDestination(path=str(tmp_path))
        start, end = created - timedelta(days=2), created + timedelta(days=1)
        done = backfill(credentials, start, destination, to_date=end, days_per_request=3)
        assert done == {"days": 4, "exported": 4, "skipped": 0}
        assert server.stats()["export_requests"] == 2
        dest = local_destination(tmp_path)
        for day in days_between(start, created - timedelta(days=1)):
            manifest = dest.manifest("mp_master_event", day.isoformat())
            assert manifest is not None and manifest.rows == 0, f"{day} is committed empty"
        for day in (created, end):
            assert_day_matches_sandbox(tmp_path, server, day)
        # the plan was shown before the run: days, requests, hours of the hourly budget
        (plan,) = plans
        assert f"{start} .. {end}" in plan and "| export requests | 2 |" in plan
        assert "| hours of the 60-per-hour export budget | 0.03 |" in plan
        # a re-run skips the complete days, the empty ones included
        again = backfill(credentials, start, destination, to_date=end)
        assert again == {"days": 4, "exported": 0, "skipped": 4}
    finally:
        server.stop()


def test_the_future_stays_refused_before_any_request(sandbox: SandboxServer, tmp_path: Path) -> None:
    today = sandbox.cfg.current_day()
    with pytest.raises(InvalidDateRangeError, match=r"is in the future"):
        backfill(
            credentials_for(sandbox),
            today,
            LocalDestination(path=str(tmp_path)),
            to_date=today + timedelta(days=1),
        )
    assert sandbox.stats()["export_requests"] == 0
    assert not list(tmp_path.rglob("*.json")), "nothing was written"


def test_a_filtered_run_is_refused_over_full_days_and_a_forced_one_is_redone_by_the_backfill(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    from flows.events import events
    from tasks.errors import FilterMismatchError

    credentials = credentials_for(sandbox)
    destination = LocalDestination(path=str(tmp_path))
    days = recent_days(2, sandbox)
    backfill(credentials, days[0], destination, to_date=days[1])
    before = manifests(tmp_path, days)
    requests = sandbox.stats()["export_requests"]
    with pytest.raises(
        FilterMismatchError, match="committed with every event and this run exports event_names"
    ):
        events(credentials, destination, from_date=days[0], to_date=days[1], event_names=["Page View"])
    assert sandbox.stats()["export_requests"] == requests, "refused before any request"
    assert manifests(tmp_path, days) == before

    # forced: the filtered day is committed (Mixpanel's count of the filter confirms the smaller day)
    events(
        credentials, destination, from_date=days[1], to_date=days[1], event_names=["Page View"], force=True
    )
    filtered = local_destination(tmp_path).manifest("mp_master_event", days[1].isoformat())
    assert filtered is not None and filtered.event_names == ("Page View",)
    # the backfill sees the filtered day as incomplete and redoes it whole
    done = backfill(credentials, days[0], destination, to_date=days[1])
    assert done == {"days": 2, "exported": 1, "skipped": 1}
    for day in days:
        assert_day_matches_sandbox(tmp_path, sandbox, day)
    assert committed(local_destination(tmp_path), "mp_master_event", days[1].isoformat()).event_names is None
