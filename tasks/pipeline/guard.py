"""What a run may not do to a committed day: replace it with a narrower filter, or with markedly
fewer rows than it holds unless Mixpanel's own count confirms the loss.

* **Filters are part of a day's identity.** The manifest records the run's ``event_names`` (and any
  user ``where``); ``None`` means every event. A new version may replace a committed one only if its
  filter covers the committed one (every event covers everything; a list covers its subsets), or
  when the run is forced. A filtered day is never complete for the backfill.
* **No silent shrink, not even step by step.** A new version is compared with the most rows the day
  has ever held (``Manifest.held_most``, carried forward by every version: full replace, hourly
  append, GDPR purge, which lowers it by exactly the rows it removed; older manifests: their
  ``rows``), not with the previous version, so losses each under the tolerance cannot add up. A
  version with fewer than ``1 - SHRINK_TOLERANCE`` of that (and always one with 0 rows) is committed
  only when Mixpanel's deduplicated per-day count (the query API, what reconciliation compares)
  names every event name of the committed version with a number and equals the count of what this
  export returned, or when the run allows it (``allow_shrink``); either resets the memory to the new
  size. Otherwise the day fails with one sentence naming both counts and stays as it was.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from tasks.errors import PipelineError
from tasks.lake.commit import Lake
from tasks.lake.committed import read_committed
from tasks.lake.files import FileFormat, event_batches
from tasks.lake.manifest import Manifest, held
from tasks.pipeline.counts import KEY_COLUMNS, DedupCounter
from tasks.schema import EVENTS_TABLE

# a new version with less than 90% of the committed rows must be confirmed by Mixpanel's count
SHRINK_TOLERANCE = 0.10

Filter = tuple[tuple[str, ...] | None, str | None]


def filter_of(events: tuple[str, ...] | list[str] | None, where: str | None = None) -> Filter:
    """The canonical filter: sorted unique event names (``None``: every event) and the user's where."""
    return (tuple(sorted(set(events))) if events else None, where or None)


def manifest_filter(manifest: Manifest) -> Filter:
    return (tuple(manifest.event_names) if manifest.event_names is not None else None, manifest.where)


def covers(new: Filter, old: Filter) -> bool:
    """True when an export with filter ``new`` holds every row an export with ``old`` held."""
    new_names, new_where = new
    old_names, old_where = old
    if new_where is not None and new_where != old_where:
        return False
    return new_names is None or (old_names is not None and set(old_names) <= set(new_names))


def describe(filters: Filter) -> str:
    names, where = filters
    text = "every event" if names is None else f"event_names={list(names)}"
    return text if where is None else f"{text} where {where!r}"


def filter_refusal(day: str, committed: Manifest, new: Filter) -> str | None:
    """Why ``new`` may not replace ``committed`` (None: it may)."""
    old = manifest_filter(committed)
    if covers(new, old):
        return None
    return (
        f"{day} was not replaced: it was committed with {describe(old)} and this run exports {describe(new)}, "
        "so the committed day is unchanged (run with the same event_names, or set force=true to replace it "
        "with the filtered export)"
    )


def shrinks(committed: Manifest | None, rows: int) -> bool:
    """Whether ``rows`` is markedly fewer than the day has ever held (0 always is)."""
    most = 0 if committed is None else held(committed)
    if most == 0:
        return False
    return rows == 0 or rows < most * (1 - SHRINK_TOLERANCE)


def held_after(committed: Manifest | None, rows: int, reset: bool) -> int:
    """The memory the new version carries: its own size when Mixpanel confirmed it or the user allowed
    the shrink (``reset``), else the most the day has held, which a smaller version does not lower."""
    if reset or committed is None:
        return rows
    return max(held(committed), rows)


@dataclass(frozen=True)
class ShrinkCheck:
    """Mixpanel's word on a shrinking day: ``confirmed`` or the sentence saying why not."""

    confirmed: bool
    reason: str = ""


def confirm_shrink(
    day: date,
    committed: Manifest,
    rows: int,
    ours: dict[str, int],
    theirs: dict[str, int] | PipelineError | None,
    required: set[str] | frozenset[str] = frozenset(),
) -> ShrinkCheck:
    """Compare Mixpanel's deduplicated count of the day (``theirs``: None when its calendar differs
    from the partitions', the error when it could not be read) with the export's own (``ours``).
    ``required``: the event names the committed version holds, each of which the answer must name."""
    most = held(committed)
    where = (
        f"the committed version holds {committed.rows}"
        if most == committed.rows
        else f"the day has held up to {most} (the committed version: {committed.rows})"
    )
    head = f"{day} was not replaced: the new export holds {rows} rows where {where}"
    tail = "the committed day is unchanged (run again later, or set allow_shrink=true if the loss is real)"
    if theirs is None:
        return ShrinkCheck(
            False,
            f"{head}, and Mixpanel's daily counts use the project timezone while this project's days are UTC "
            f"days, so they cannot confirm it; {tail}",
        )
    if isinstance(theirs, PipelineError):
        return ShrinkCheck(False, f"{head}, and Mixpanel's count could not be read ({theirs}); {tail}")
    # an answer that is silent about an event of the day (or about all of them) says nothing about it:
    # only a number for each of them can confirm that they are gone
    unnamed = sorted(n for n in required if n not in theirs)
    if unnamed or not theirs:
        silent = (
            f"does not name {unnamed[0]!r}, an event of the committed day" if unnamed else "names no event"
        )
        return ShrinkCheck(
            False, f"{head}, and Mixpanel's count answer {silent}, so it cannot confirm the loss; {tail}"
        )
    keys = set(ours) | {n for n, c in theirs.items() if c}
    if all(ours.get(n, 0) == theirs.get(n, 0) for n in keys):
        return ShrinkCheck(True)
    return ShrinkCheck(
        False,
        f"{head}, and Mixpanel counts {sum(theirs.get(n, 0) for n in keys)} events that day where this "
        f"export counted {sum(ours.values())}; {tail}",
    )


def recorded_counts(lake: Lake, manifest: Manifest) -> dict[str, int]:
    """The manifest's deduplicated counts; older manifests and hourly increments: from the files."""
    if manifest.event_counts is not None:
        return manifest.event_counts
    with tempfile.TemporaryDirectory(prefix="mp-counts-") as scratch:
        counter = DedupCounter(Path(scratch))
        for item in manifest.files:
            data = read_committed(lake.storage, item.key)
            if manifest.format == FileFormat.PARQUET.value:
                keys = pl.from_arrow(pq.read_table(io.BytesIO(data), columns=list(KEY_COLUMNS)))
                assert isinstance(keys, pl.DataFrame)  # a table makes a frame (typed frame or series)
                counter.add(keys)
            else:
                for batch in event_batches(data, FileFormat(manifest.format)):
                    counter.add(batch)
        return counter.counts()


def filter_conflicts(lake: Lake, days: list[date], run_filter: Filter) -> dict[date, str]:
    """Days committed with a filter ``run_filter`` does not cover, each with the sentence saying so."""
    out = {}
    for day in days:
        committed = lake.manifest(EVENTS_TABLE, day.isoformat())
        why = None if committed is None else filter_refusal(day.isoformat(), committed, run_filter)
        if why is not None:
            out[day] = why
    return out
