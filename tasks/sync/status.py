"""A destination's sync health: one ``SYNC_STATUS_SCHEMA`` row per day, from what the destination records.

What each row is built from, all kept with the data: the day's manifest (rows, export time, filter,
the deduplicated per-event counts the export recorded, the rows GDPR purges removed since), the
day's note (``tasks.lake.daynotes``: Mixpanel's last deduplicated count per event name and when it
was asked, the guard's last refusal) and, when asked, what ``tasks.sync.verify`` found. Mixpanel's
counts are asked once per status run for the whole window (one query-API request per 100 event
names, within the client's query budget) and written into each day's note: without Mixpanel (the
terminal offline) the rows are drawn from the last counts recorded.

The window: the last ``days`` days up to ``last_day`` (yesterday in the project's calendar), from
the destination's first committed day on (days before its history begins are not its to hold).
"Counts match" compares, per event name, Mixpanel's deduplicated count with the one the day's
export recorded (before the GDPR registry's ids were left out, as reconciliation does; a day
committed with an event filter: that filter's events only). ``difference`` is the export's total
minus Mixpanel's, so an in-sync day shows 0 whatever duplicates the export holds in ``rows_held``.

Each day is in exactly one state, the first of these that applies:

* ``damaged``: the manifest cannot be read, or a file it names is gone, or (verify) a file's rows or
  the day's fingerprint differ from the manifest: changed outside the pipeline.
* ``missing``: no committed version, while a later day has one: a gap a backfill fills.
* ``behind``: no committed version and no later day committed (the destination has not caught up),
  or the committed version was exported before the day ended (an hourly run's) and its counts do not
  match Mixpanel's yet: the nightly export replaces it.
* ``refused``: the last export of the day was refused by the guard (a shrink Mixpanel did not confirm,
  or a narrower filter) after the committed version: the destination keeps an older version.
* ``unchecked``: committed, but Mixpanel's count is not known: never asked, the query answered an
  error this run (429, 5xx: the reason says which), the count predates the day's export, or Mixpanel
  counts days in another calendar than the project's exports.
* ``purged``: GDPR purges removed rows of the day here and the counts match, or Mixpanel counts
  fewer by no more than the rows purged (Mixpanel deleted them too): a deliberate difference.
* ``in_sync``: the counts match.
* ``differs``: they do not (late events, imports, deletions): the nightly reconcile exports it again.

``in_sync`` and ``purged`` are healthy (``HEALTHY``); every other state has a one-sentence reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pyarrow as pa

from tasks.errors import (
    ConnectionDroppedError,
    CorruptManifestError,
    FatalError,
    NothingCommittedError,
    PipelineError,
)
from tasks.lake.commit import Lake
from tasks.lake.daynotes import DayNote, read_note, write_note
from tasks.lake.manifest import Manifest
from tasks.pipeline.guard import describe, manifest_filter, recorded_counts
from tasks.schema import EVENTS_TABLE, SYNC_STATUS_SCHEMA
from tasks.sync.verify import damage, lost_files, verify_day

HEALTHY = frozenset({"in_sync", "purged"})
DEFAULT_DAYS = 90

# Mixpanel's per-day counts of some event names: (days, names) -> {day: {name: count}}
AskCounts = Callable[[list[date], set[str]], Mapping[date, Mapping[str, int]]]


@dataclass(frozen=True)
class DayFacts:
    """What is known about one day before its state is decided."""

    day: date
    manifest: Manifest | None = None
    ours: Mapping[str, int] | None = None  # the export's recorded deduplicated counts
    note: DayNote | None = None
    damage: str | None = None  # one sentence: the manifest unreadable, files lost or changed
    count_error: str | None = None  # why Mixpanel's count could not be refreshed this run


@dataclass
class Status:
    """The rows of a destination and what a reader needs beside them."""

    rows: list[dict[str, object]]
    last_committed: date | None
    last_export: datetime | None
    expected_day: date
    notes: list[str] = field(default_factory=list)  # sentences about the whole run (offline, errors)

    @property
    def healthy(self) -> bool:
        return all(r["state"] in HEALTHY for r in self.rows)

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=SYNC_STATUS_SCHEMA)

    def freshness(self, now: datetime) -> str:
        """One sentence: the last committed day against the day expected, and when the last export ran."""
        if self.last_committed is None:
            return "no day is committed"
        lag = (self.expected_day - self.last_committed).days
        behind = "up to date" if lag <= 0 else f"{lag} day(s) behind {self.expected_day}"
        when = ""
        if self.last_export is not None:
            hours = (now - self.last_export).total_seconds() / 3600
            when = f"; last export {self.last_export:%Y-%m-%d %H:%M} UTC ({hours:.0f} h ago)"
        return f"last committed day {self.last_committed}: {behind}{when}"


# the state of one day ---------------------------------------------------------------------------------


def compared(manifest: Manifest, ours: Mapping[str, int], theirs: Mapping[str, int]) -> tuple[int, int, bool]:
    """(the export's total, Mixpanel's total, every event name's count equal) over the day's events:
    its filter's names, or every name either side counts."""
    names = (
        set(manifest.event_names)
        if manifest.event_names is not None
        else set(ours) | {n for n, c in theirs.items() if c}
    )
    equal = all(ours.get(n, 0) == theirs.get(n, 0) for n in names)
    return sum(ours.get(n, 0) for n in names), sum(theirs.get(n, 0) for n in names), equal


def day_end(day: date, timezone: str) -> datetime:
    """The instant ``day`` ends in the calendar it was exported in."""
    after = day + timedelta(days=1)
    return datetime(after.year, after.month, after.day, tzinfo=ZoneInfo(timezone)).astimezone(UTC)


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def day_row(facts: DayFacts, last_committed: date | None, now: datetime) -> dict[str, object]:
    """The ``SYNC_STATUS_SCHEMA`` row of one day (see the module docstring for the states)."""
    manifest, note = facts.manifest, facts.note or DayNote()
    theirs = note.mixpanel_counts
    row: dict[str, object] = {
        "day": facts.day,
        "rows_held": manifest.rows if manifest else None,
        "mixpanel_rows": None,
        "difference": None,
        "exported_at": parse_time(manifest.exported_at) if manifest else None,
        "checked_at": parse_time(note.checked_at),
        "filter": None,
        "computed_at": now,
    }
    if manifest is not None and facts.ours is not None and theirs is not None:
        ours_total, theirs_total, _ = compared(manifest, facts.ours, theirs)
        row["mixpanel_rows"], row["difference"] = theirs_total, ours_total - theirs_total
    if manifest is not None and manifest_filter(manifest) != (None, None):
        row["filter"] = describe(manifest_filter(manifest))
    state, reason = _state(facts, last_committed, now)
    return row | {"state": state, "reason": reason}


def _state(facts: DayFacts, last_committed: date | None, now: datetime) -> tuple[str, str | None]:
    day, manifest, note = facts.day, facts.manifest, facts.note or DayNote()
    if facts.damage is not None:
        return "damaged", facts.damage
    if manifest is None:
        if last_committed is not None and last_committed > day:
            return "missing", (
                f"{day} has no committed version while later days do: a backfill of the day fills the gap "
                f"(make run DEPLOYMENT=mixpanel-backfill/backfill PARAMS='from_date={day} to_date={day}')."
            )
        return "behind", (
            f"{day} is not exported yet (the last committed day is {last_committed}): the daily export "
            "brings it, or a backfill of the day."
        )
    exported = parse_time(manifest.exported_at)
    refused = parse_time(note.refused_at)
    if note.refusal and refused is not None and exported is not None and refused > exported:
        return "refused", note.refusal
    if facts.count_error is not None:
        return "unchecked", facts.count_error
    checked = parse_time(note.checked_at)
    if note.mixpanel_counts is None or checked is None:
        return "unchecked", (
            f"Mixpanel's count of {day} was never asked: run the status flow, or make status where "
            "Mixpanel can be reached."
        )
    if exported is not None and checked < exported:
        return "unchecked", (
            f"Mixpanel's count of {day} was asked at {checked:%Y-%m-%d %H:%M} UTC, before the day's export "
            f"at {exported:%Y-%m-%d %H:%M} UTC: ask again to compare them."
        )
    ours_total, theirs_total, equal = compared(manifest, facts.ours or {}, note.mixpanel_counts)
    if manifest.purged_rows and (equal or 0 < ours_total - theirs_total <= manifest.purged_rows):
        counted = "still counts them" if equal else "has deleted them too"
        return "purged", (
            f"GDPR purges removed {manifest.purged_rows} row(s) of {day} here; Mixpanel {counted} "
            f"({theirs_total} events, the export counted {ours_total})."
        )
    if equal:
        return "in_sync", None
    if exported is not None and exported < day_end(facts.day, manifest.timezone):
        return "behind", (
            f"{day} was last exported at {exported:%Y-%m-%d %H:%M} UTC, before it ended (Mixpanel counts "
            f"{theirs_total} events, the export {ours_total}): the nightly export replaces it whole."
        )
    return "differs", (
        f"Mixpanel counts {theirs_total} events on {day}, the export counted {ours_total}: the nightly "
        "reconcile exports the day again (or run it now)."
    )


# reading the destination --------------------------------------------------------------------------------


def committed_days(lake: Lake) -> list[date]:
    return [date.fromisoformat(p) for p in lake.partitions(EVENTS_TABLE)]


def window(last_day: date, days: int, first_committed: date) -> list[date]:
    """The last ``days`` days up to ``last_day``, from the first committed day on."""
    start = max(last_day - timedelta(days=days - 1), first_committed)
    return [start + timedelta(days=i) for i in range((last_day - start).days + 1)]


def read_days(lake: Lake, days: list[date], verify: bool = False) -> list[DayFacts]:
    """Each day's manifest, note and recorded counts; every committed file checked to exist (``verify``:
    re-read against the manifest)."""
    out = []
    for day in days:
        name = day.isoformat()
        note = read_note(lake, name)
        try:
            manifest = lake.manifest(EVENTS_TABLE, name)
        except CorruptManifestError as exc:
            out.append(DayFacts(day, note=note, damage=str(exc)))
            continue
        if manifest is None:
            out.append(DayFacts(day, note=note))
            continue
        found = (
            verify_day(lake, manifest) if verify else damage(lake, manifest, lost_files(lake, manifest), [])
        )
        ours = None if found else recorded_counts(lake, manifest)
        out.append(DayFacts(day, manifest, ours, note, found))
    return out


def refresh_counts(
    lake: Lake, facts: list[DayFacts], ask: AskCounts, now: datetime
) -> tuple[list[DayFacts], str | None]:
    """Ask Mixpanel's counts of the committed days once and record them in each day's note.

    Returns the facts with the new notes and a sentence for the run: None when the counts were
    refreshed; when Mixpanel could not be reached, the recorded counts stay in use; when it answered
    an error (429, 5xx, ...), the days are marked unchecked with it.
    """
    asked = [f for f in facts if f.manifest is not None and f.ours is not None]
    names = {n for f in asked for n in (f.ours or {})} | {
        n for f in asked if f.manifest and f.manifest.event_names for n in f.manifest.event_names
    }
    if not asked or not names:
        return facts, None
    try:
        answer = ask([f.day for f in asked], names)
    except PipelineError as exc:
        if isinstance(exc.__cause__, ConnectionDroppedError) or isinstance(exc, ConnectionDroppedError):
            return (
                facts,
                f"Mixpanel could not be reached ({exc}); the counts shown are the last ones recorded.",
            )
        why = f"Mixpanel's count could not be read this time ({exc})"
        return [replace(f, count_error=why) if f in asked else f for f in facts], why
    stamp = now.isoformat(timespec="seconds")
    refreshed = {
        f.day: write_note(
            lake, f.day.isoformat(), mixpanel_counts=dict(answer.get(f.day, {})), checked_at=stamp
        )
        for f in asked
    }
    return [replace(f, note=refreshed[f.day]) if f.day in refreshed else f for f in facts], None


def build_status(
    lake: Lake,
    last_day: date,
    days: int = DEFAULT_DAYS,
    ask: AskCounts | None = None,
    verify: bool = False,
    now: datetime | None = None,
    uncomparable: str | None = None,
) -> Status:
    """The status of ``destination``'s last ``days`` days up to ``last_day``; ``ask``: Mixpanel's counts
    (None: offline, from what each day recorded); ``uncomparable``: why Mixpanel's counts cannot be
    compared with these days at all (every committed day is unchecked with it)."""
    now = now or datetime.now(tz=UTC)
    if days < 1:
        raise FatalError(f"days must be at least 1 (got {days}).")
    committed = committed_days(lake)
    if not committed:
        raise NothingCommittedError(
            f"{lake.describe(lake.project_prefix)} holds no committed day of {EVENTS_TABLE}: "
            "export a day first (make run DEPLOYMENT=mixpanel-events/events-daily), then ask again."
        )
    facts = read_days(lake, window(max(last_day, committed[-1]), days, committed[0]), verify)
    notes: list[str] = []
    if uncomparable is not None:
        facts = [replace(f, count_error=uncomparable) if f.manifest else f for f in facts]
        notes.append(uncomparable)
    elif ask is not None:
        facts, sentence = refresh_counts(lake, facts, ask, now)
        notes += [sentence] if sentence else []
    last = committed[-1]
    rows = [day_row(f, last, now) for f in facts]
    exports = [parse_time(f.manifest.exported_at) for f in facts if f.manifest is not None]
    return Status(rows, last, max((e for e in exports if e), default=None), last_day, notes)
