"""Which days of a backfill are already done: complete manifests are skipped unless forced."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from tasks.lake.manifest import Manifest


def is_complete(manifest: Manifest | None, day: date, zone: ZoneInfo) -> bool:
    """A day is complete when one full, unfiltered export, made after the day had ended, replaced it.

    Hourly increments, a full export made while the day was still going on, or an export filtered on
    event names (or a where) leave it incomplete.
    """
    if manifest is None or manifest.increments:
        return False
    if manifest.event_names is not None or manifest.where is not None:
        return False
    day_end = datetime.combine(day + timedelta(days=1), time(), tzinfo=zone)
    return datetime.fromisoformat(manifest.exported_at) >= day_end
