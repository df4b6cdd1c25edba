"""Which day an event belongs to, and its UTC instant.

Mixpanel filters ``from_date``/``to_date`` on the calendar day of the exported ``time`` in the
epoch it answers in: UTC for projects created since 2023, a "local epoch" (wall-clock seconds of
the project timezone, written as if UTC) for older ones. So the partition day is always
``floor(time / 86400)`` of the exported value, and only the stored ``time`` column is converted.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import polars as pl

EPOCH_DAY = date(1970, 1, 1)


def day_ordinal(day: date) -> int:
    return (day - EPOCH_DAY).days


def day_of(ordinal: int) -> date:
    return EPOCH_DAY + timedelta(days=ordinal)


def with_time_columns(frame: pl.DataFrame, local_zone: str | None) -> pl.DataFrame:
    """Add ``_day`` (Int32 days since 1970 in the API's epoch) and ``time`` (UTC timestamp)."""
    naive = pl.from_epoch(pl.col("_epoch"), time_unit="s")
    if local_zone is None:
        utc = naive.dt.replace_time_zone("UTC")
    else:
        # In the autumn hour that repeats, a local epoch is ambiguous: the earlier instant is taken.
        utc = naive.dt.replace_time_zone(
            local_zone, ambiguous="earliest", non_existent="null"
        ).dt.convert_time_zone("UTC")
    out = frame.with_columns((pl.col("_epoch") // 86400).cast(pl.Int32).alias("_day"), utc.alias("time"))
    if local_zone is not None and out["time"].null_count():
        out = _fill_nonexistent(out, local_zone)
    return out


def _fill_nonexistent(frame: pl.DataFrame, zone_name: str) -> pl.DataFrame:
    """Local times inside a spring-forward gap cannot come from a real clock; read them with the
    offset in force before the gap (Python's fold=0 rule) rather than dropping the event."""
    zone = ZoneInfo(zone_name)

    def to_utc(epoch: int) -> datetime:
        wall = datetime(1970, 1, 1) + timedelta(seconds=epoch)
        return wall.replace(tzinfo=zone).astimezone(UTC)

    filled = [
        t if t is not None else to_utc(e)
        for t, e in zip(frame["time"].to_list(), frame["_epoch"].to_list(), strict=True)
    ]
    return frame.with_columns(pl.Series("time", filled, dtype=pl.Datetime("us", "UTC")))
