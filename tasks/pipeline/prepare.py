"""Making days ready to export: what every run of the events table does first, whichever flow runs it.

Staging folders that crashed runs left are removed; each day's files its manifest does not name are
removed and every hook finishes what a crashed run left undone (``repair``); a day committed with a
filter this run does not cover is refused before any request is made (unless the run is forced), and
the refusal is noted beside the day for the sync status. An unfiltered run (the hourly one) covers
every filter, so it is never refused here.
"""

from __future__ import annotations

from datetime import date

from tasks.lake.commit import Lake
from tasks.lake.daynotes import note_refusals
from tasks.pipeline.export import ExportSettings
from tasks.pipeline.guard import filter_conflicts
from tasks.schema import EVENTS_TABLE


def prepare_days(lake: Lake, days: list[date], settings: ExportSettings) -> dict[date, str]:
    """Repair ``days``; returns those refused, each with the sentence saying why (the others are ready)."""
    lake.remove_stale_staging()
    for day in days:
        lake.repair(EVENTS_TABLE, day.isoformat())
    refused = {} if settings.force else filter_conflicts(lake, days, settings.filter)
    note_refusals(lake, {day.isoformat(): why for day, why in refused.items()})
    return refused
