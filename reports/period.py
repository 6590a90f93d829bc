"""Report periods: ``--period`` text -> an aware [start, end) in Beijing time. Pure: ``now`` is given.

Accepted forms (docs/reports.md):

- ``7d``, ``30d``, ``90d`` (any 1-3660): the last N days up to ``now``, i.e. [now - N days, now);
- ``week``: the last full ISO week (Monday 00:00 to Monday 00:00, Beijing time) before the current one;
- ``month``: the last full calendar month before the current one;
- ``2026-11``: that calendar month; ``2026-W47``: that ISO week;
- ``2026-11-01..2026-11-15``: those days, both included (the end is 2026-11-16 00:00).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from alerts.calendar import BEIJING, beijing
from core.errors import UserError

MAX_DAYS = 3660
MIN_YEAR = 2000
MAX_YEAR = 2100

_DAYS = re.compile(r"^(\d{1,4})d$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
_RANGE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})$")

PERIOD_HELP = "7d|30d|90d|week|month|YYYY-MM|YYYY-Www|YYYY-MM-DD..YYYY-MM-DD"
PERIOD_PATTERN = r"^(\d{1,4}d|week|month|\d{4}-\d{2}|\d{4}-W\d{2}|\d{4}-\d{2}-\d{2}\.\.\d{4}-\d{2}-\d{2})$"


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime  # aware, Beijing time, inclusive
    end: datetime  # aware, Beijing time, exclusive
    label: str  # the text it was parsed from

    def as_pair(self) -> tuple[datetime, datetime]:
        return self.start, self.end


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=BEIJING)


def _month_start(year: int, month: int) -> date:
    return date(year, month, 1)


def _next_month(day: date) -> date:
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


def _check_year(year: int, text: str) -> None:
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise UserError(f"period {text!r}: the year must be within {MIN_YEAR}-{MAX_YEAR}")


def parse_period(text: str, now: datetime) -> Period:
    """Parse ``text`` relative to ``now`` (aware). Raises UserError naming the accepted forms."""
    if now.tzinfo is None:
        raise ValueError("now must be aware")
    s = text.strip()
    local = beijing(now)
    today = local.date()
    if m := _DAYS.match(s):
        n = int(m.group(1))
        if not 1 <= n <= MAX_DAYS:
            raise UserError(f"period {text!r}: the number of days must be within 1-{MAX_DAYS}")
        return Period(local - timedelta(days=n), local, s)
    if s == "week":
        this_monday = today - timedelta(days=today.weekday())
        return Period(_midnight(this_monday - timedelta(days=7)), _midnight(this_monday), s)
    if s == "month":
        first = _month_start(today.year, today.month)
        prev = _month_start(first.year - 1, 12) if first.month == 1 else _month_start(first.year, first.month - 1)
        return Period(_midnight(prev), _midnight(first), s)
    if m := _MONTH.match(s):
        year, month = int(m.group(1)), int(m.group(2))
        _check_year(year, text)
        if not 1 <= month <= 12:
            raise UserError(f"period {text!r}: the month must be within 01-12")
        first = _month_start(year, month)
        return Period(_midnight(first), _midnight(_next_month(first)), s)
    if m := _WEEK.match(s):
        year, week = int(m.group(1)), int(m.group(2))
        _check_year(year, text)
        try:
            monday = date.fromisocalendar(year, week, 1)
        except ValueError as exc:
            raise UserError(f"period {text!r}: {year} has no ISO week {week}") from exc
        return Period(_midnight(monday), _midnight(monday + timedelta(days=7)), s)
    if m := _RANGE.match(s):
        try:
            a, b = date.fromisoformat(m.group(1)), date.fromisoformat(m.group(2))
        except ValueError as exc:
            raise UserError(f"period {text!r}: {exc}") from exc
        _check_year(a.year, text)
        _check_year(b.year, text)
        if b < a:
            raise UserError(f"period {text!r}: the last day is before the first")
        if (b - a).days + 1 > MAX_DAYS:
            raise UserError(f"period {text!r}: at most {MAX_DAYS} days")
        return Period(_midnight(a), _midnight(b + timedelta(days=1)), s)
    raise UserError(f"period {text!r} is not one of {PERIOD_HELP}")
