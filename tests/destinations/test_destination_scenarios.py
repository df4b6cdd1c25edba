"""Each destination scenario written once, run over every case of tests/kit/destinations.py that can do
what it needs. What only one destination does stays in its own module (test_delta, test_iceberg,
test_warehouses, test_spectrum, test_destinations)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest

from sandbox import SandboxServer
from tasks.pipeline.exclude import event_rows_of
from tasks.schema import EVENTS_TABLE, PEOPLE_TABLE
from tests.conftest import credentials_for, recent_days
from tests.kit.destinations import (
    DAYS,
    HOURLY,
    RACE,
    VERSIONS,
    Case,
    KillPoint,
    Target,
    cases,
    export,
    kill_cases,
    race,
    rows_in_files,
)
from tests.kit.expected import epoch_ms


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """The case of the test's parameter, built on a fresh location."""
    case: Case = request.param
    return case.build(request, tmp_path)


def assert_day_is_the_sandbox(target: Target, sandbox: SandboxServer, day: date) -> None:
    want = target.truth(sandbox, day)
    assert target.readings(day) == [want] * len(target.readings(day)), "each row once, every byte kept"


@pytest.mark.parametrize("target", cases(DAYS), indirect=True)
def test_days_land_exactly_and_a_rerun_replaces_them(sandbox: SandboxServer, target: Target) -> None:
    days = recent_days(2, sandbox)
    export(sandbox, target.block, days, "first")
    export(sandbox, target.block, days, "second")
    for day in days:
        assert_day_is_the_sandbox(target, sandbox, day)
        manifest = target.manifest(day)
        assert manifest.run_id == "second" and target.holds(manifest), "the second run's version is held"
        target.assert_clean(day, "second")


@pytest.mark.parametrize(("target", "point"), kill_cases(), indirect=["target"])
def test_sigkill_in_the_middle_of_a_commit_keeps_a_whole_day_and_the_next_run_completes(
    sandbox: SandboxServer, target: Target, point: KillPoint
) -> None:
    from tests.kit.destinations import kill_in_commit

    (day,) = recent_days(1, sandbox)
    export(sandbox, target.block, [day], "before")
    kill_in_commit(sandbox, target.block, day, point)

    assert_day_is_the_sandbox(target, sandbox, day)  # one whole version, whichever
    killed_manifest = target.manifest(day)
    assert killed_manifest.run_id == ("killed" if point.switched else "before")
    assert target.recorded_run(day) == ("killed" if point.name == "cleanup" else "before")

    destination = target.destination()
    destination.repair(EVENTS_TABLE, day.isoformat())  # what every run does first
    assert target.holds(target.manifest(day)), "repair brings the destination to the manifest"
    export(sandbox, target.block, [day], "after")
    assert_day_is_the_sandbox(target, sandbox, day)
    manifest = target.manifest(day)
    assert manifest.run_id == "after" and target.holds(manifest)
    target.assert_clean(day, "after")  # orphans of the killed run removed


@pytest.mark.parametrize("target", cases(RACE), indirect=True)
def test_two_racing_runs_of_one_day_end_with_one_complete_day(sandbox: SandboxServer, target: Target) -> None:
    days = recent_days(2, sandbox)
    export(sandbox, target.block, days, "seed")
    errors = race(sandbox, target.block, days[1], ["racer-a", "racer-b", "racer-c"])
    assert not errors, errors  # a run that lost the manifest or the table's race retried from the winner
    manifest = target.manifest(days[1])
    assert manifest.run_id.startswith("racer-") and target.holds(manifest)
    for day in days:
        assert_day_is_the_sandbox(target, sandbox, day)
    # two days written at the same time do not conflict: both commits land
    errors = race(sandbox, target.block, days[0], ["other-day"]) + race(
        sandbox, target.block, days[1], ["again"]
    )
    assert not errors
    for day in days:
        assert_day_is_the_sandbox(target, sandbox, day)
    target.assert_clean(days[0], "other-day")
    target.assert_clean(days[1], "again")


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("target", cases(HOURLY), indirect=True)
def test_hourly_increments_append_then_the_nightly_run_replaces_the_day(
    sandbox: SandboxServer, target: Target
) -> None:
    from flows.events import events, events_hourly

    credentials = credentials_for(sandbox)
    today = sandbox.cfg.current_day()
    for cut in (epoch_ms(today, 7.5), epoch_ms(today, 13.5)):
        sandbox.set_processed_until(cut)
        events_hourly(credentials, target.block)
        want = sandbox.expected(today, today, processed_until_ms=cut)[today.isoformat()]
        assert set(target.readings(today)) == {(want["rows"], want["fingerprint"])}
    manifest = target.manifest(today)
    assert manifest.increments == 1 and target.increments(today) == 1 and target.holds(manifest)

    sandbox.set_processed_until(None)  # the day closed and Mixpanel processed everything
    events(credentials, target.block, from_date=today, to_date=today)
    assert_day_is_the_sandbox(target, sandbox, today)
    manifest = target.manifest(today)
    assert manifest.increments == 0 and target.increments(today) == 0 and target.holds(manifest)


@pytest.mark.parametrize("target", cases(VERSIONS), indirect=True)
def test_a_purge_leaves_no_row_in_any_readable_version_nor_in_any_object(
    sandbox: SandboxServer, target: Target
) -> None:
    from tasks.sync.purge import PurgeScope, purge_destination

    days = recent_days(2, sandbox)
    export(sandbox, target.block, days, "first")
    export(sandbox, target.block, days, "second")  # an older version of each day to travel to
    frame = pl.concat(rows for _, rows in target.versions(EVENTS_TABLE))
    user = frame.filter(pl.col("user_id").is_not_null()).sort("insert_id")["distinct_id"][0]
    cluster = {user}
    assert frame.filter(event_rows_of(cluster)).height > 0
    destination = target.destination()
    report = purge_destination(destination, PurgeScope(frozenset(cluster), frozenset(cluster), {}), "purge")
    assert sum(report.events.values()) > 0

    for day in days:
        manifest = target.manifest(day)
        assert target.readings(day)[0] == (manifest.rows, manifest.fingerprint)
    versions = list(target.versions(EVENTS_TABLE))
    assert versions, "the current version is readable"
    for name, rows in versions:
        assert rows.filter(event_rows_of(cluster)).height == 0, f"{name} still holds the user"
    assert rows_in_files(target.objects(), event_rows_of(cluster), cluster) == []


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("target", cases(VERSIONS, most=0), indirect=True)
def test_the_gdpr_flow_removes_a_cluster_from_every_table_and_every_version(
    sandbox: SandboxServer, target: Target
) -> None:
    from flows.gdpr import gdpr
    from tests.kit.sync import rows_of_cluster, synced_twice, tokens

    user, cluster = synced_twice(sandbox, target.block)
    (_, people), *_ = reversed(list(target.versions(PEOPLE_TABLE)))
    assert people.filter(pl.col("distinct_id").is_in(list(cluster))).height == 1

    gdpr(credentials_for(sandbox), [target.block], gdpr_credentials=tokens(sandbox), distinct_ids=[user])

    for table, rows_of in rows_of_cluster(cluster):
        versions = list(target.versions(table))
        assert versions, table
        for name, rows in versions:
            assert rows.filter(rows_of).height == 0, name
    assert rows_in_files(target.objects(), event_rows_of(cluster), cluster) == []
