"""A project's calendar: which days Mixpanel means, what today is, and whether its counts compare.

Mixpanel filters an export by the calendar days of the epoch it answers in: UTC for projects created
since 2023, the project's timezone for older projects that export in local time (``time_mode`` local).
Its query API counts per day in the project's timezone whatever the mode. These rules are written here
only: the credentials block builds one ``ProjectCalendar`` (``MixpanelCredentials.calendar()``) and
every flow and export asks it, never the block's fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tasks.errors import SettingsError


class TimeMode(StrEnum):
    """How the project's export answers: UTC (projects since 2023) or the legacy local epoch."""

    UTC = "utc"
    LOCAL = "local"


def check_timezone(value: str) -> str:
    """``value`` if it names an IANA zone; otherwise a ``SettingsError`` with an example."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SettingsError(
            f"unknown timezone {value!r}: use an IANA name such as America/Los_Angeles"
        ) from exc
    return value


@dataclass(frozen=True)
class ProjectCalendar:
    time_mode: TimeMode = TimeMode.UTC
    timezone: str = "UTC"  # the project's timezone (Project Settings), used by every mode's counts

    def __post_init__(self) -> None:
        check_timezone(self.timezone)

    @property
    def local_zone(self) -> str | None:
        """The zone of the exported epoch when it is local time (None: the export answers in UTC)."""
        return self.timezone if self.time_mode == TimeMode.LOCAL else None

    @property
    def day_zone(self) -> str:
        """The zone the days (``from_date``/``to_date``, the partitions) are calendar days of."""
        return self.local_zone or "UTC"

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.day_zone)

    def today(self, now: datetime | None = None) -> date:
        """Today as Mixpanel sees it for this project."""
        return (now or datetime.now(tz=UTC)).astimezone(self.zone()).date()

    def yesterday(self, now: datetime | None = None) -> date:
        return self.today(now) - timedelta(days=1)

    @property
    def counts_comparable(self) -> bool:
        """Whether Mixpanel's per-day counts (project timezone) count the same days as the partitions."""
        return self.day_zone == self.timezone

    def uncomparable(self) -> str | None:
        """Why Mixpanel's per-day counts cannot be compared with the days (None: they can)."""
        if self.counts_comparable:
            return None
        return (
            f"Mixpanel counts days in {self.timezone} while this project's days are UTC days, "
            "so its counts cannot be compared."
        )
