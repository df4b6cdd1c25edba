"""Mixpanel's deduplicated event counts per name, computed the way its query API counts.

The export returns every copy of an event a client sent twice; the query API counts it once. Two
rows are one event when they share ``$insert_id``, event name, ``distinct_id`` and ``time``; rows
without ``$insert_id`` cannot be deduplicated and each count. Reconciliation compares these counts
with Mixpanel's per-day counts to find days that lost events (deletions).

Memory: 12 bytes per row with an ``$insert_id`` (a 64-bit key hash and the name's category code),
not the rows themselves.
"""

from __future__ import annotations

from collections import Counter

import polars as pl

KEY_COLUMNS = ("event_name", "distinct_id", "time", "insert_id")


class DedupCounter:
    """Feed frames of one day (any split, any order); ``counts()`` gives the count per event name."""

    def __init__(self) -> None:
        self._plain: Counter[str] = Counter()
        self._keys: list[pl.DataFrame] = []

    def add(self, frame: pl.DataFrame) -> None:
        if frame.height == 0:
            return
        has_id = pl.col("insert_id").is_not_null()
        for name, count in frame.filter(~has_id)["event_name"].value_counts().iter_rows():
            self._plain[name] += count
        keyed = frame.filter(has_id).select(
            pl.col("event_name").cast(pl.Categorical),
            pl.struct(KEY_COLUMNS).hash().alias("key"),
        )
        if keyed.height:
            self._keys.append(keyed.unique())

    def counts(self) -> dict[str, int]:
        totals = Counter(self._plain)
        if self._keys:
            distinct = pl.concat(self._keys).unique().group_by("event_name").len()
            for name, count in distinct.iter_rows():
                totals[str(name)] += count
        return dict(sorted(totals.items()))


def dedup_counts(frames: list[pl.DataFrame]) -> dict[str, int]:
    counter = DedupCounter()
    for frame in frames:
        counter.add(frame)
    return counter.counts()
