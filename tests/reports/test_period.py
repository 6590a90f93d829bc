from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.calendar import BEIJING
from core.errors import UserError
from reports.period import parse_period

# Friday 2026-12-04 20:00 UTC = Saturday 2026-12-05 04:00 Beijing
NOW = datetime(2026, 12, 4, 20, 0, tzinfo=UTC)

nows = st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2099, 12, 1), timezones=st.just(UTC))


def bj(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=BEIJING)


def test_named_periods() -> None:
    assert parse_period("week", NOW).as_pair() == (bj(2026, 11, 23), bj(2026, 11, 30))
    assert parse_period("month", NOW).as_pair() == (bj(2026, 11, 1), bj(2026, 12, 1))
    assert parse_period("2026-11", NOW).as_pair() == (bj(2026, 11, 1), bj(2026, 12, 1))
    assert parse_period("2026-12", NOW).as_pair() == (bj(2026, 12, 1), bj(2027, 1, 1))
    assert parse_period("2026-W47", NOW).as_pair() == (bj(2026, 11, 16), bj(2026, 11, 23))
    assert parse_period("2026-11-01..2026-11-15", NOW).as_pair() == (bj(2026, 11, 1), bj(2026, 11, 16))
    p = parse_period("7d", NOW)
    assert p.end == NOW and p.start == NOW - timedelta(days=7)
    assert p.start.utcoffset() == timedelta(hours=8)


def test_month_in_january_is_december() -> None:
    assert parse_period("month", datetime(2027, 1, 10, tzinfo=UTC)).as_pair() == (bj(2026, 12, 1), bj(2027, 1, 1))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0d",
        "3661d",
        "2026-13",
        "2026-W54",
        "2026-11-15..2026-11-01",
        "1999-01",
        "yesterday",
        "2026-02-30..2026-03-01",
    ],
)
def test_bad_periods_name_the_problem(text: str) -> None:
    with pytest.raises(UserError, match="period"):
        parse_period(text, NOW)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_period("7d", datetime(2026, 1, 1))


@given(nows, st.integers(1, 3660))
def test_days_end_now(now: datetime, n: int) -> None:
    p = parse_period(f"{n}d", now)
    assert p.end == now and p.end - p.start == timedelta(days=n)


@given(nows)
def test_week_is_the_last_full_iso_week(now: datetime) -> None:
    p = parse_period("week", now)
    assert p.start.weekday() == 0 and p.end - p.start == timedelta(days=7)
    assert p.start.time().hour == 0 and p.start.utcoffset() == timedelta(hours=8)
    assert p.end <= now < p.end + timedelta(days=7)


@given(nows)
def test_month_is_the_last_full_month(now: datetime) -> None:
    p = parse_period("month", now)
    assert p.start.day == 1 and p.end.day == 1 and p.end <= now
    assert (p.end - timedelta(days=1)).month == p.start.month
    assert now - p.end < timedelta(days=32)


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31)))
def test_iso_week_contains_its_days(day: date) -> None:
    y, w, _ = day.isocalendar()
    if not 2000 <= y <= 2100:
        return
    p = parse_period(f"{y}-W{w:02d}", NOW)
    assert p.start <= datetime(day.year, day.month, day.day, 12, tzinfo=BEIJING) < p.end


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1)), st.integers(0, 400))
def test_range_covers_both_days(a: date, n: int) -> None:
    b = a + timedelta(days=n)
    if b.year > 2100:
        return
    p = parse_period(f"{a}..{b}", NOW)
    assert p.end - p.start == timedelta(days=n + 1)
    assert p.start.date() == a
