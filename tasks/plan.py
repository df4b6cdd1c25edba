"""Which days to export and how to group them into export requests."""

from __future__ import annotations

import calendar
from datetime import date, timedelta

from tasks.errors import FatalError

MAX_MONTHS_BACK = 6


class InvalidDateRangeError(FatalError):
    pass


def months_before(day: date, months: int) -> date:
    month_index = day.year * 12 + day.month - 1 - months
    year, month = divmod(month_index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


def check_range(from_date: date, to_date: date, today: date, max_months_back: int = MAX_MONTHS_BACK) -> None:
    """Refuse, before any request, a range Mixpanel would refuse or that makes no sense."""
    earliest = months_before(today, max_months_back)
    if to_date < from_date:
        raise InvalidDateRangeError(
            f"to_date {to_date} is before from_date {from_date}: swap them or fix one of them."
        )
    if to_date > today:
        raise InvalidDateRangeError(
            f"to_date {to_date} is in the future (today is {today} in the project's calendar): "
            f"choose {today} or earlier, or check the project's time_mode and timezone."
        )
    if from_date < earliest:
        raise InvalidDateRangeError(
            f"from_date {from_date} is more than {max_months_back} months back: the earliest allowed "
            f"today is {earliest}."
        )


def days_between(from_date: date, to_date: date) -> list[date]:
    return [from_date + timedelta(days=i) for i in range((to_date - from_date).days + 1)]


def group_days(days: list[date], days_per_request: int) -> list[list[date]]:
    """Consecutive days in groups of at most ``days_per_request``: one export request each."""
    if days_per_request < 1:
        raise InvalidDateRangeError(f"days_per_request must be at least 1, not {days_per_request}.")
    groups: list[list[date]] = []
    for day in sorted(days):
        if groups and len(groups[-1]) < days_per_request and groups[-1][-1] + timedelta(days=1) == day:
            groups[-1].append(day)
        else:
            groups.append([day])
    return groups
