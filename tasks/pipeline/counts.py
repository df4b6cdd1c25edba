"""Mixpanel's deduplicated event counts per name, computed the way its query API counts.

The export returns every copy of an event a client sent twice; the query API counts it once. Two
rows are one event when they share ``$insert_id``, event name, ``distinct_id`` and ``time``; rows
without ``$insert_id`` cannot be deduplicated and each count. Reconciliation compares these counts
with Mixpanel's per-day counts to find days that lost events (deletions).

Exact deduplication has to remember every key, so memory would grow with the day. Keys (a 64-bit
hash of the key and one of the name, 16 bytes) are kept in memory up to ``SPILL_ROWS``; beyond that they go
to ``BUCKETS`` files on the scratch disk by hash, and each bucket is deduplicated on its own at the
end (equal keys always share a bucket): memory stays bounded by one bucket, a sixteenth of the day's
keys, whatever the size of the day.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa

KEY_COLUMNS = ("event_name", "distinct_id", "time", "insert_id")
SPILL_ROWS = 1 << 17
BUCKETS = 16
_COLUMNS = (("key", pa.uint64(), 8), ("code", pa.uint64(), 8))


class DedupCounter:
    """Feed frames of one day (any split, any order); ``counts()`` gives the count per event name.

    With ``scratch`` (a folder of its own), keys beyond ``SPILL_ROWS`` are spilled there.
    """

    def __init__(self, scratch: Path | None = None, spill_rows: int = SPILL_ROWS) -> None:
        self._scratch = scratch
        self._spill_rows = spill_rows
        self._plain: Counter[str] = Counter()
        self._codes: dict[int, str] = {}  # hash of an event name -> the name
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = 0
        self._spilled = False

    def add(self, frame: pl.DataFrame) -> None:
        if frame.height:
            self.take(*pl.collect_all(self.queries(frame.lazy())))

    @staticmethod
    def queries(rows: pl.LazyFrame) -> list[pl.LazyFrame]:
        """What ``take`` needs of some rows, as queries: a caller collects them together with its own
        (each call into polars releases the GIL and waits to take it back)."""
        has_id = pl.col("insert_id").is_not_null()
        keyed = rows.filter(has_id)
        return [
            rows.filter(~has_id).group_by("event_name").len(),
            keyed.select(
                pl.struct(KEY_COLUMNS).hash().alias("key"), pl.col("event_name").hash().alias("code")
            ),
            # a few dozen per block at most
            keyed.select(pl.col("event_name").unique()).select(
                "event_name", pl.col("event_name").hash().alias("code")
            ),
        ]

    def take(self, plain: pl.DataFrame, keys: pl.DataFrame, names: pl.DataFrame) -> None:
        """Count the rows ``queries`` described, from their results."""
        for name, count in plain.iter_rows():
            self._plain[name] += count
        if keys.height == 0:
            return
        self._codes.update(zip(names["code"].to_list(), names["event_name"].to_list(), strict=True))
        self._pending.append(keys)
        self._pending_rows += keys.height
        if self._pending_rows >= self._spill_rows and self._scratch is not None:
            self._spill()

    def spill(self) -> None:
        """Move the keys held in memory to the scratch folder (a day the stream has moved past)."""
        if self._pending and self._scratch is not None:
            self._spill()

    def counts(self) -> dict[str, int]:
        totals = Counter(self._plain)
        names = self._codes
        groups: Iterator[pl.DataFrame]
        if self._spilled:
            self._spill()
            groups = (_read_bucket(self._bucket(b)) for b in range(BUCKETS))
        else:
            groups = iter([pl.concat(self._pending)] if self._pending else [])
        for keys in groups:
            for code, count in keys.unique().group_by("code").len().iter_rows():
                totals[names[code]] += count
        return dict(sorted(totals.items()))

    def _bucket(self, index: int) -> Path:
        assert self._scratch is not None
        return self._scratch / f"keys-{index:02d}"

    def _spill(self) -> None:
        assert self._scratch is not None
        self._scratch.mkdir(parents=True, exist_ok=True)
        self._spilled = True
        if not self._pending:
            return
        keys = pl.concat(self._pending).unique().with_columns((pl.col("key") % BUCKETS).alias("bucket"))
        self._pending, self._pending_rows = [], 0
        for (bucket,), part in keys.partition_by("bucket", as_dict=True).items():
            _append_bucket(self._bucket(int(bucket)), part)


def _append_bucket(path: Path, part: pl.DataFrame) -> None:
    """Raw little-endian columns, appended: ``<path>.key`` and ``<path>.code`` (u64 each)."""
    for name, _, width in _COLUMNS:
        array = part[name].to_arrow()
        data = array.buffers()[1]
        assert data is not None
        with open(f"{path}.{name}", "ab") as out:
            out.write(data[array.offset * width : (array.offset + len(array)) * width])


def _read_bucket(path: Path) -> pl.DataFrame:
    columns = {}
    for name, kind, width in _COLUMNS:
        try:
            data = Path(f"{path}.{name}").read_bytes()
        except FileNotFoundError:
            data = b""
        columns[name] = pl.from_arrow(
            pa.Array.from_buffers(kind, len(data) // width, [None, pa.py_buffer(data)])
        )
    return pl.DataFrame(columns)


def dedup_counts(frames: list[pl.DataFrame]) -> dict[str, int]:
    counter = DedupCounter()
    for frame in frames:
        counter.add(frame)
    return counter.counts()
