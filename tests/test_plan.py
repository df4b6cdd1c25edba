from __future__ import annotations

from datetime import date

import pytest

from tasks.plan import InvalidDateRangeError, check_range, days_between, group_days, months_before

TODAY = date(2026, 8, 31)


def test_months_before_clamps_to_the_end_of_shorter_months() -> None:
    assert months_before(TODAY, 6) == date(2026, 2, 28)
    assert months_before(date(2024, 8, 31), 6) == date(2024, 2, 29)
    assert months_before(date(2026, 3, 15), 6) == date(2025, 9, 15)


def test_six_months_back_is_allowed_and_one_day_more_is_refused() -> None:
    check_range(date(2026, 2, 28), TODAY, TODAY)
    with pytest.raises(
        InvalidDateRangeError, match="more than 6 months back: the earliest allowed today is 2026-02-28"
    ):
        check_range(date(2026, 2, 27), TODAY, TODAY)


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
