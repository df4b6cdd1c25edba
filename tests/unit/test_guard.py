"""The replacement rules of tasks.pipeline.guard: which filter covers which, what counts as a shrink, and how
reconciliation compares a filtered day."""

from __future__ import annotations

from collections import Counter
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from tasks.lake.manifest import Manifest
from tasks.pipeline.guard import covers, describe, filter_of, shrinks


def manifest(rows: int, event_names: tuple[str, ...] | None = None) -> Manifest:
    return Manifest(
        table="mp_master_event",
        partition="2024-01-02",
        files=(),
        rows=rows,
        fingerprint="0" * 16,
        format="parquet",
        run_id="r",
        exported_at="2024-01-03T01:00:00+00:00",
        event_names=event_names,
    )


@pytest.mark.parametrize(
    ("new", "old", "allowed"),
    [
        (None, None, True),  # every event over every event
        (None, ("A",), True),  # a full export replaces a filtered day
        (("A",), None, False),  # a filtered export never replaces a full day
        (("A", "B"), ("A",), True),
        (("A",), ("A", "B"), False),
        (("",), None, False),  # event_names=[""] is a filter (it exports nothing)
        (("B",), ("A",), False),
    ],
)
def test_which_filter_covers_which(
    new: tuple[str, ...] | None, old: tuple[str, ...] | None, allowed: bool
) -> None:
    assert covers(filter_of(new), filter_of(old)) is allowed


def test_filters_are_canonical_and_described() -> None:
    assert filter_of(["b", "a", "a"]) == (("a", "b"), None)
    assert filter_of([]) == filter_of(None) == (None, None)
    assert describe(filter_of(None)) == "every event"
    assert describe(filter_of(["Sign Up"])) == "event_names=['Sign Up']"


@pytest.mark.parametrize(
    ("committed", "rows", "shrink"),
    [(None, 0, False), (0, 0, False), (500, 0, True), (500, 449, True), (500, 450, False), (500, 600, False)],
)
def test_what_counts_as_a_shrink(committed: int | None, rows: int, shrink: bool) -> None:
    assert shrinks(None if committed is None else manifest(committed), rows) is shrink


def test_reconcile_counts_late_events_of_a_filtered_day_for_its_filter_only() -> None:
    from tasks.sync.reconcile import _count_late

    day = date(2024, 1, 2)
    start = (day - date(1970, 1, 1)).days * 86400
    frame = pl.DataFrame(
        {
            "event_name": ["Sign Up", "Page View", "Page View"],
            "_epoch": [start + 1, start + 2, start + 3],
            "_ptime": [10, 10, 10],
            "distinct_id": ["a", "b", "c"],
        }
    )
    counts = [Counter[date](), Counter[date]()]
    _count_late(frame, [{day: 5}, {day: 5}], counts, None, frozenset(), [{day: ("Sign Up",)}, {day: None}])
    assert counts == [Counter({day: 1}), Counter({day: 3})]


def test_a_filtered_day_is_never_complete_for_the_backfill(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    from tasks.pipeline.resume import is_complete

    utc = ZoneInfo("UTC")
    assert is_complete(manifest(10), date(2024, 1, 2), utc)
    assert not is_complete(manifest(10, ("Sign Up",)), date(2024, 1, 2), utc)
