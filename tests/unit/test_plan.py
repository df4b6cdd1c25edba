from __future__ import annotations

from datetime import date

import pytest

from tasks.pipeline.plan import (
    InvalidDateRangeError,
    check_range,
    days_between,
    group_days,
    months_before,
    plan_backfill,
)

TODAY = date(2026, 8, 31)


def test_months_before_clamps_to_the_end_of_shorter_months() -> None:
    assert months_before(TODAY, 6) == date(2026, 2, 28)
    assert months_before(date(2024, 8, 31), 6) == date(2024, 2, 29)
    assert months_before(date(2026, 3, 15), 6) == date(2025, 9, 15)


def test_any_past_day_is_allowed_the_raw_export_api_serves_all_history() -> None:
    check_range(date(2026, 2, 27), TODAY, TODAY)  # the hosted product's 6-month limit is not ours
    check_range(date(2024, 1, 1), date(2024, 12, 31), TODAY)  # all of 2024
    check_range(date(2011, 6, 1), TODAY, TODAY)  # before most projects existed: days export empty


def test_reversed_and_future_ranges_are_refused() -> None:
    with pytest.raises(InvalidDateRangeError, match="before from_date"):
        check_range(date(2026, 8, 2), date(2026, 8, 1), TODAY)
    with pytest.raises(InvalidDateRangeError, match="in the future"):
        check_range(date(2026, 8, 30), date(2026, 9, 1), TODAY)
    check_range(TODAY, TODAY, TODAY)


def test_days_are_grouped_into_requests_of_consecutive_days() -> None:
    days = days_between(date(2026, 8, 1), date(2026, 8, 10))
    assert [len(g) for g in group_days(days, 7)] == [7, 3]
    assert len(group_days(days, 1)) == 10
    gap = [date(2026, 8, 1), date(2026, 8, 2), date(2026, 8, 5)]
    assert group_days(gap, 7) == [[date(2026, 8, 1), date(2026, 8, 2)], [date(2026, 8, 5)]]
    with pytest.raises(InvalidDateRangeError):
        group_days(days, 0)


def test_a_year_backfill_plan_counts_requests_and_hours_of_the_hourly_budget() -> None:
    year = days_between(date(2024, 1, 1), date(2024, 12, 31))  # 366 days (leap year)
    weekly = plan_backfill(year[0], year[-1], year, days_per_request=7)
    assert (weekly.days, weekly.todo, weekly.requests) == (366, 366, 53)
    assert round(weekly.budget_hours, 2) == 0.88 and weekly.min_hours == 0
    daily = plan_backfill(year[0], year[-1], year, days_per_request=1)
    assert daily.requests == 366 and round(daily.budget_hours, 2) == 6.1 and daily.min_hours == 6
    text = daily.markdown()
    assert "| export requests | 366 |" in text and "| hours of the 60-per-hour export budget | 6.1 |" in text


def test_a_plan_skips_complete_days_and_counts_requests_per_child_run() -> None:
    days = days_between(date(2024, 1, 1), date(2024, 1, 20))
    todo = days[:5] + days[10:]  # days 6-10 complete: requests never span the gap
    plan = plan_backfill(days[0], days[-1], todo, days_per_request=7)
    assert (plan.days, plan.todo, plan.requests, plan.runs) == (20, 15, 3, 1)  # 5 | 7 + 3
    fanned = plan_backfill(days[0], days[-1], todo, days_per_request=7, days_per_run=4)
    # runs of 4 days: [1-4] [5] [11-14] [15-18] [19-20] (a gap also ends a run), one request each
    assert (fanned.runs, fanned.requests) == (5, 5)
    assert plan_backfill(days[0], days[-1], [], days_per_request=7).requests == 0
