"""What a destination remembers about a day besides its manifest: Mixpanel's last count, the last refusal.

One small JSON document per day at ``<project_id>/_state/status/mp_master_event/<day>.json``, beside
the manifests, so the sync-health view (``tasks.sync.status``) can be drawn offline from the
destination alone. A note is advisory: it is never the truth about the data (the manifest is), a
missing or unreadable note only means nothing is known yet, and writing one never touches a manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime

import msgspec

from tasks.lake.commit import Lake

log = logging.getLogger(__name__)


class DayNote(msgspec.Struct, kw_only=True, frozen=True):
    # Mixpanel's deduplicated count per event name of the day (query API) and when it was asked
    mixpanel_counts: dict[str, int] | None = None
    checked_at: str | None = None
    # the shrink or filter guard's last refusal to replace the day, and when (tasks.pipeline.guard)
    refusal: str | None = None
    refused_at: str | None = None


def note_key(lake: Lake, day: str) -> str:
    return lake.layout.note_key(day)


def read_note(lake: Lake, day: str) -> DayNote | None:
    data = lake.storage.get_bytes(note_key(lake, day))
    if data is None:
        return None
    try:
        return msgspec.json.decode(data, type=DayNote)
    except msgspec.DecodeError:
        # advisory only: an unreadable note is as good as none, and the next write replaces it
        log.warning("ignoring %s: not a readable day note", lake.describe(note_key(lake, day)))
        return None


def write_note(lake: Lake, day: str, **changes: object) -> DayNote:
    """The day's note with ``changes`` applied, written back; the fields not named are kept."""
    note = msgspec.structs.replace(read_note(lake, day) or DayNote(), **changes)
    lake.storage.put_bytes(note_key(lake, day), msgspec.json.encode(note))
    return note


def note_refusals(lake: Lake, refusals: Mapping[str, str], at: str | None = None) -> None:
    """Record the guard's refusal of each day (``{day: sentence}``), at ``at`` (default: now)."""
    # to the microsecond, as a manifest's exported_at: a refusal within the second of the day's export
    # is still later than it (tasks.sync.status compares the two)
    when = at or datetime.now(tz=UTC).isoformat()
    for day, why in refusals.items():
        write_note(lake, day, refusal=why, refused_at=when)
