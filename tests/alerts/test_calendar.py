"""The working calendar: official Chinese holidays, make-up working days (调休), rosters, sealing periods."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from hypothesis import given
from hypothesis import strategies as st

from alerts.calendar import BEIJING, Calendar, RosterEntry, SealingPeriod, WorkingHours, beijing

HOURS = WorkingHours.parse("08:30-17:30")


def bj(y: int, m: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, m, d, h, mi, tzinfo=BEIJING)


def test_calendar_weekday_is_working_day() -> None:
    assert Calendar().is_working_day(date(2026, 3, 2))  # a Monday


def test_calendar_weekend_is_not_working_day() -> None:
    assert not Calendar().is_working_day(date(2026, 3, 7))  # a Saturday


def test_calendar_make_up_saturday_is_working_day() -> None:
    # 2026-02-14 is a Saturday worked to make up for the Spring Festival (调休).
    assert date(2026, 2, 14).weekday() == 5
    assert Calendar().is_working_day(date(2026, 2, 14))


def test_calendar_statutory_holiday_on_weekday_is_not_working_day() -> None:
    assert date(2026, 10, 1).weekday() == 3  # a Thursday
    assert not Calendar().is_working_day(date(2026, 10, 1))
    assert Calendar().holiday_name(date(2026, 10, 1)) is not None


def test_calendar_region_extra_day_off_applies_to_subtree_nearest_wins() -> None:
    cal = Calendar(extra_days_off={"gd": {date(2026, 3, 2)}}, extra_workdays={"gz": {date(2026, 3, 2)}})
    assert not cal.is_working_day(date(2026, 3, 2), ("gd", "sz"))
    assert cal.is_working_day(date(2026, 3, 2), ("gd", "gz", "bldg-1"))
    assert cal.is_working_day(date(2026, 3, 2), ("bj",))


def test_calendar_working_time_uses_beijing_time() -> None:
    cal = Calendar()
    # 01:00 UTC on a Monday is 09:00 in Beijing: working time.
    assert cal.is_working_time(datetime(2026, 3, 2, 1, 0, tzinfo=UTC), HOURS)
    # 10:00 UTC is 18:00 in Beijing: after hours.
    assert not cal.is_working_time(datetime(2026, 3, 2, 10, 0, tzinfo=UTC), HOURS)
    assert beijing(datetime(2026, 3, 2, 1, 0, tzinfo=UTC)).hour == 9


def test_calendar_working_time_on_make_up_saturday_and_holiday() -> None:
    cal = Calendar()
    assert cal.is_working_time(bj(2026, 2, 14, 10, 0), HOURS)
    assert not cal.is_working_time(bj(2026, 10, 1, 10, 0), HOURS)


def test_calendar_overnight_hours_belong_to_start_day() -> None:
    night = WorkingHours.parse("22:00-06:00")
    cal = Calendar()
    assert cal.is_working_time(bj(2026, 3, 3, 2, 0), night)  # Monday night shift
    assert not cal.is_working_time(bj(2026, 3, 8, 2, 0), night)  # Saturday night: Sunday 02:00
    assert not cal.is_working_time(bj(2026, 3, 3, 12, 0), night)


def test_calendar_roster_applies_to_region_subtree_and_time() -> None:
    cal = Calendar(rosters=[RosterEntry("gz", "card-7", bj(2026, 10, 1, 0, 0), bj(2026, 10, 2, 0, 0))])
    assert cal.on_duty(["card-7"], bj(2026, 10, 1, 22, 0), ("gd", "gz", "b1"))
    assert not cal.on_duty(["card-7"], bj(2026, 10, 2, 1, 0), ("gd", "gz", "b1"))
    assert not cal.on_duty(["card-7"], bj(2026, 10, 1, 22, 0), ("gd", "sz"))
    assert not cal.on_duty(["card-8"], bj(2026, 10, 1, 22, 0), ("gd", "gz"))


def test_calendar_sealing_period_with_exempt_duty_vehicle() -> None:
    period = SealingPeriod("gz", bj(2026, 10, 1, 0, 0), bj(2026, 10, 8, 0, 0), "National Day", frozenset({"car-duty"}))
    cal = Calendar(sealing=[period])
    assert cal.sealed("car-1", bj(2026, 10, 3, 9, 0), ("gd", "gz")) is period
    assert cal.sealed("car-duty", bj(2026, 10, 3, 9, 0), ("gd", "gz")) is None
    assert cal.sealed("car-1", bj(2026, 10, 9, 9, 0), ("gd", "gz")) is None
    assert cal.sealed("car-1", bj(2026, 10, 3, 9, 0), ("gd", "sz")) is None


@given(st.integers(min_value=0, max_value=4_102_444_800_000))  # 1970..2100
def test_beijing_date_and_midnight_agree_with_datetime(ts_ms: int) -> None:
    from alerts.calendar import beijing_date, beijing_midnight_ms

    day = datetime.fromtimestamp(ts_ms / 1000, BEIJING).date()
    assert beijing_date(ts_ms) == day
    midnight = beijing_midnight_ms(day)
    assert midnight <= ts_ms < midnight + 86_400_000
    assert datetime.fromtimestamp(midnight / 1000, BEIJING).time() == time(0, 0)
