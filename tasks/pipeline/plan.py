"""Which days to export and how to group them into export requests."""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import date, timedelta

from tasks.errors import FatalError

# Mixpanel's hosted Json Pipelines take from_date at most 6 months back; the Raw Export API serves
# every day the project retains, so our range checks have no lower bound (``months_before`` stays for
# callers that imitate the hosted product).
EXPORT_REQUESTS_PER_HOUR = 60  # Mixpanel's export budget per project


class InvalidDateRangeError(FatalError):
    pass


def months_before(day: date, months: int) -> date:
    month_index = day.year * 12 + day.month - 1 - months
    year, month = divmod(month_index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


def check_range(from_date: date, to_date: date, today: date) -> None:
    """Refuse, before any request, a range Mixpanel would refuse or that makes no sense. Any past
    day is allowed: a day before the project existed exports empty and is committed as such."""
    if to_date < from_date:
        raise InvalidDateRangeError(
            f"to_date {to_date} is before from_date {from_date}: swap them or fix one of them."
        )
    if to_date > today:
        raise InvalidDateRangeError(
            f"to_date {to_date} is in the future (today is {today} in the project's calendar): "
            f"choose {today} or earlier, or check the project's time_mode and timezone."
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


@dataclass(frozen=True)
class BackfillPlan:
    """What a backfill will do, shown before it starts: days, export requests and the share of the
    project's hourly export budget they take."""

    first: date
    last: date
    days: int  # in the range
    todo: int  # to export (the others are complete and skipped)
    requests: int  # export requests for the days to do
    days_per_request: int
    requests_per_hour: int = EXPORT_REQUESTS_PER_HOUR
    runs: int = 1  # child flow runs the days are spread over (1: this run does them all)

    @property
    def budget_hours(self) -> float:
        """Hours of the hourly export budget the requests use up (requests / budget per hour)."""
        return self.requests / self.requests_per_hour

    @property
    def min_hours(self) -> float:
        """The least wall time the budget allows: a full hour's budget is available at once, so
        ``requests`` start over ``ceil(requests / per_hour) - 1`` hours (plus the exports themselves)."""
        return max(math.ceil(self.requests / self.requests_per_hour) - 1, 0) if self.requests else 0.0

    def rows(self) -> list[dict[str, object]]:
        return [
            {"item": "range", "value": f"{self.first} .. {self.last}"},
            {"item": "days in range", "value": self.days},
            {"item": "days to export", "value": self.todo},
            {"item": "days skipped (complete)", "value": self.days - self.todo},
            {"item": "days per request", "value": self.days_per_request},
            {"item": "export requests", "value": self.requests},
            {
                "item": f"hours of the {self.requests_per_hour}-per-hour export budget",
                "value": round(self.budget_hours, 2),
            },
            {"item": "least hours the budget allows (request starts)", "value": self.min_hours},
            {"item": "runs (days_per_run fan-out)", "value": self.runs},
        ]

    def markdown(self) -> str:
        lines = ["| | |", "|---|---|"] + [f"| {r['item']} | {r['value']} |" for r in self.rows()]
        return "\n".join(
            [
                f"## Backfill plan: {self.first} .. {self.last}",
                "",
                *lines,
                "",
                f"{self.requests} export request(s) use {self.budget_hours:.2f} h of the project's "
                f"{self.requests_per_hour}/hour export budget (shared by every run and worker of this "
                "project); the transfer of the data itself comes on top.",
            ]
        )


def plan_backfill(
    first: date,
    last: date,
    todo: list[date],
    days_per_request: int,
    requests_per_hour: int = EXPORT_REQUESTS_PER_HOUR,
    days_per_run: int = 0,
) -> BackfillPlan:
    """The plan of a backfill of ``first..last`` whose days still to export are ``todo``."""
    runs = len(group_days(todo, days_per_run)) if days_per_run > 0 and len(todo) > days_per_run else 1
    if runs > 1:
        # each child run groups its own days: requests never span two runs
        requests = sum(len(group_days(chunk, days_per_request)) for chunk in group_days(todo, days_per_run))
    else:
        requests = len(group_days(todo, days_per_request)) if todo else 0
    return BackfillPlan(
        first=first,
        last=last,
        days=(last - first).days + 1,
        todo=len(todo),
        requests=requests,
        days_per_request=days_per_request,
        requests_per_hour=requests_per_hour,
        runs=runs,
    )
