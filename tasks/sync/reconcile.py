"""Which committed days no longer match Mixpanel, found with a handful of requests.

Two cheap questions, over every settled day of the look-back window at once:

* **late or imported events**: one export request whose ``where`` asks, per day, for the events of
  that day Mixpanel processed after the day's watermark (its manifest's largest
  ``mp_processing_time_ms``). Mobile clients flush days late and the import API writes into past
  days; both get a processing time after our export. The answer holds only those events, so it is
  small; days are grouped so the expression stays short enough for a URL.
* **dropped events** (deletions, Mixpanel's own fixes): the query API's per-day counts, which
  Mixpanel deduplicates at query time, against the deduplicated counts the export recorded in the
  manifest (``event_counts``).

A day is changed when either answer says so; only those days are exported again. A day whose counts
still differ from Mixpanel's once exported again (``still_differing``) is one the reconcile could not
bring back in sync: a person is told (``flows.alerts``). A day committed
with an event filter (``Manifest.event_names``) is compared for the events of its filter only, and
re-exported with the same filter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import polars as pl

from tasks.lake.manifest import Manifest
from tasks.mixpanel.client import ExportRequest, MixpanelClient
from tasks.pipeline.exclude import event_rows_of
from tasks.pipeline.export import processed_after
from tasks.pipeline.parse import StreamParser
from tasks.pipeline.partition import day_ordinal, with_time_columns

MAX_WHERE_CHARS = 4000


@dataclass(frozen=True)
class Change:
    day: date
    reason: str


def settled(manifest: Manifest, now: datetime, settle_hours: float) -> bool:
    """A day is checked once ``settle_hours`` have passed since its export (late data settles)."""
    return datetime.fromisoformat(manifest.exported_at) <= now - timedelta(hours=settle_hours)


def day_clause(day: date, watermark: int) -> str:
    # `time` in a where compares the exported value, so a day is the same epoch range in both
    # time modes (UTC, or the local epoch of older projects)
    start = day_ordinal(day) * 86400
    return (
        f'(properties["time"] >= datetime({start}) and properties["time"] < datetime({start + 86400}) '
        f"and {processed_after(watermark)})"
    )


def late_requests(marks: dict[date, int], max_chars: int = MAX_WHERE_CHARS) -> list[ExportRequest]:
    """Export requests asking for the events processed after each day's watermark, as few as fit."""
    requests: list[ExportRequest] = []
    group: list[str] = []
    days: list[date] = []
    for day in sorted(marks):
        clause = day_clause(day, marks[day])
        if group and sum(map(len, group)) + len(clause) + 4 * len(group) > max_chars:
            requests.append(ExportRequest(days[0], days[-1], where=" or ".join(group)))
            group, days = [], []
        group.append(clause)
        days.append(day)
    if group:
        requests.append(ExportRequest(days[0], days[-1], where=" or ".join(group)))
    return requests


def late_events(
    client: MixpanelClient,
    marks: list[dict[date, int]],
    local_zone: str | None,
    excluded: Collection[str] = frozenset(),
    filters: list[dict[date, tuple[str, ...] | None]] | None = None,
) -> list[Counter[date]]:
    """For each set of watermarks (one per destination): per day, events processed after it.

    One probe serves every destination: it asks above the smallest watermark of each day and
    each destination's count is taken against its own (and, for a day committed with an event
    filter, only for the events of that filter).
    """
    filters = filters or [{} for _ in marks]
    lowest: dict[date, int] = {}
    for one in marks:
        for day, mark in one.items():
            lowest[day] = min(mark, lowest.get(day, mark))
    found = [Counter[date]() for _ in marks]
    for request in late_requests(lowest):

        def attempt(request: ExportRequest = request) -> list[Counter[date]]:
            counts = [Counter[date]() for _ in marks]
            parser = StreamParser()
            with client.export(request) as chunks:
                for chunk in chunks:
                    for block in parser.feed(chunk):
                        _count_late(block.frame, marks, counts, local_zone, excluded, filters)
            for block in parser.finish():
                _count_late(block.frame, marks, counts, local_zone, excluded, filters)
            return counts

        for total, counts in zip(found, client.with_retries(attempt, "late-event probe"), strict=True):
            total.update(counts)
    return found


def _count_late(
    frame: pl.DataFrame,
    marks: list[dict[date, int]],
    counts: list[Counter[date]],
    local_zone: str | None,
    excluded: Collection[str],
    filters: list[dict[date, tuple[str, ...] | None]],
) -> None:
    if frame.height == 0:
        return
    frame = with_time_columns(frame, local_zone)
    if excluded:
        frame = frame.filter(~event_rows_of(excluded))
    rows = frame.select("_day", "_ptime", "event_name").rows()
    epoch = date(1970, 1, 1)
    for ordinal, ptime, name in rows:
        day = epoch + timedelta(days=int(ordinal))
        for one, count, only in zip(marks, counts, filters, strict=True):
            names = only.get(day)
            if day in one and (ptime or 0) > one[day] and (names is None or name in names):
                count[day] += 1


def count_difference(ours: dict[str, int], theirs: Counter[str]) -> tuple[int, int] | None:
    """(Mixpanel's total, ours) when any event name's count differs, else None."""
    names = set(ours) | {n for n, c in theirs.items() if c}
    if all(ours.get(n, 0) == theirs.get(n, 0) for n in names):
        return None
    return sum(theirs[n] for n in names), sum(ours.values())


def still_differing(after: dict[date, dict[str, int]], theirs: dict[date, Counter[str]]) -> dict[date, str]:
    """Of the days exported again (their counts ``after``), those whose counts still differ from Mixpanel's."""
    found = {}
    for day, counts in sorted(after.items()):
        difference = count_difference(counts, theirs[day]) if day in theirs else None
        if difference is not None:
            found[day] = f"Mixpanel counts {difference[0]}, the export counted {difference[1]}"
    return found


def unsynced_sentence(found: dict[date, str], where: str) -> str:
    """One sentence for the days ``still_differing`` found in the destination ``where``."""
    days = "; ".join(f"{day}: {why}" for day, why in sorted(found.items()))
    return (
        f"{len(found)} day(s) of {where} still differ from Mixpanel after being exported again ({days}); "
        "run the reconcile again later, or compare the day's events with Mixpanel's."
    )


def now_utc() -> datetime:
    return datetime.now(tz=UTC)
