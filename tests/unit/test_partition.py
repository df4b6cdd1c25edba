"""Day rule and UTC conversion, including DST days of a legacy local-epoch project."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import pytest

from tasks.pipeline.partition import day_of, with_time_columns

LA = "America/Los_Angeles"


def local_epoch(wall: str) -> int:
    """Mixpanel's local epoch: the wall-clock time written as if it were UTC."""
    return int(datetime.fromisoformat(wall).replace(tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("wall", "utc"),
    [
        ("2024-03-10T01:30:00", "2024-03-10T09:30:00"),  # before spring forward: PST, -8
        ("2024-03-10T03:30:00", "2024-03-10T10:30:00"),  # after: PDT, -7
        ("2024-03-10T02:30:00", "2024-03-10T10:30:00"),  # inside the gap: offset before it (-8)
        ("2024-11-03T01:30:00", "2024-11-03T08:30:00"),  # repeated hour: the earlier instant (PDT)
        ("2024-11-03T23:59:59", "2024-11-04T07:59:59"),  # late evening lands on the next UTC day
        ("2024-07-01T00:00:00", "2024-07-01T07:00:00"),
    ],
)
def test_local_epoch_becomes_the_right_utc_instant_and_stays_on_its_local_day(wall: str, utc: str) -> None:
    frame = pl.DataFrame({"_epoch": [local_epoch(wall)]})
    out = with_time_columns(frame, LA)
    assert out["time"][0] == datetime.fromisoformat(utc).replace(tzinfo=UTC)
    assert day_of(out["_day"][0]) == date.fromisoformat(wall[:10])


def test_utc_projects_keep_the_epoch() -> None:
    out = with_time_columns(pl.DataFrame({"_epoch": [86399, 86400, -1]}), None)
    assert [day_of(d) for d in out["_day"]] == [date(1970, 1, 1), date(1970, 1, 2), date(1969, 12, 31)]
    assert out["time"][1] == datetime(1970, 1, 2, tzinfo=UTC)
