"""Working calendar, duty rosters and vehicle sealing periods, in Beijing time.

Pure: no I/O, no clock. The official calendar comes from python-holidays ``holidays.China()``: statutory
holidays and their substituted days off are non-working, and the weekend make-up working days (调休, e.g.
Saturday 2026-02-14) are working days. Regions may add their own extra days off or extra working days.

Rosters and sealing periods are scoped to a region and apply to its whole subtree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from functools import lru_cache

import holidays

# China has had one time zone and no daylight saving time since 1991: a fixed offset needs no tz database.
BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")


BEIJING_OFFSET_MS = 8 * 3_600_000
DAY_MS = 86_400_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def beijing_date(ts_ms: int) -> date:
    """The Beijing calendar date of an instant (epoch ms): integer arithmetic, no datetime per call."""
    return date.fromordinal(_EPOCH_ORDINAL + (ts_ms + BEIJING_OFFSET_MS) // DAY_MS)


def beijing_midnight_ms(day: date) -> int:
    """00:00 Beijing time of ``day`` in epoch ms (the inverse of ``beijing_date`` at a day's start)."""
    return (day.toordinal() - _EPOCH_ORDINAL) * DAY_MS - BEIJING_OFFSET_MS


def beijing(at: datetime) -> datetime:
    """``at`` (aware) in Beijing time; a naive datetime is taken to be UTC."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(BEIJING)


@lru_cache(maxsize=64)
def _china(year: int) -> holidays.HolidayBase:
    cal: holidays.HolidayBase = holidays.country_holidays("CN", years=[year])
    return cal


def parse_hhmm(text: str) -> time:
    hh, _, mm = text.partition(":")
    return time(int(hh), int(mm or 0))


@dataclass(frozen=True, slots=True)
class WorkingHours:
    """Daily working hours on working days, Beijing time; ``end`` may be ``24:00``-like (end <= start: overnight)."""

    start: time = time(8, 30)
    end: time = time(17, 30)

    @classmethod
    def parse(cls, text: str) -> WorkingHours:
        """``"08:30-17:30"``."""
        a, sep, b = text.partition("-")
        if not sep:
            raise ValueError(f"{text!r} is not HH:MM-HH:MM")
        return cls(parse_hhmm(a.strip()), parse_hhmm(b.strip()))


@dataclass(frozen=True, slots=True)
class RosterEntry:
    """Someone (a credential, person id, driver id or device id) on duty from ``start`` to ``end``."""

    region_id: str
    who: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class SealingPeriod:
    """Official vehicles of a region subtree are sealed (封存) from ``start`` to ``end``; ``exempt`` devices
    (duty vehicles) may move."""

    region_id: str
    start: datetime
    end: datetime
    reason: str = ""
    exempt: frozenset[str] = frozenset()


@dataclass(slots=True)
class Calendar:
    """The official working calendar plus per-region extra days, duty rosters and sealing periods."""

    extra_days_off: dict[str, set[date]] = field(default_factory=dict)  # region -> dates
    extra_workdays: dict[str, set[date]] = field(default_factory=dict)
    rosters: list[RosterEntry] = field(default_factory=list)
    sealing: list[SealingPeriod] = field(default_factory=list)
    _cache: dict[tuple[date, tuple[str, ...]], bool] = field(default_factory=dict, repr=False, compare=False)

    def is_working_day(self, day: date, region_path: Sequence[str] = ()) -> bool:
        """Official Chinese working day (调休 included), with region-specific extra days off / workdays."""
        key = (day, tuple(region_path))
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            hit = self._cache[key] = self._working_day(day, region_path)
        return hit

    def invalidate(self) -> None:
        """Forget cached answers (after extra days were added)."""
        self._cache.clear()

    def _working_day(self, day: date, region_path: Sequence[str]) -> bool:
        for region in reversed(region_path):  # the nearest region's exception wins
            if day in self.extra_workdays.get(region, ()):
                return True
            if day in self.extra_days_off.get(region, ()):
                return False
        return bool(_china(day.year).is_working_day(day))

    def holiday_name(self, day: date) -> str | None:
        name = _china(day.year).get(day)
        return None if name is None else str(name)

    def is_working_time(self, at: datetime, hours: WorkingHours, region_path: Sequence[str] = ()) -> bool:
        """Inside working hours of a working day (Beijing time). Overnight hours belong to the start day."""
        return self.in_hours(at, hours, "working", region_path)

    def in_hours(
        self, at: datetime, hours: WorkingHours, days: str = "working", region_path: Sequence[str] = ()
    ) -> bool:
        """Inside ``hours`` of a day of class ``days`` (``working``, ``non_working`` or ``any``), Beijing time.

        Overnight hours (end <= start) belong to the day they start on; ``00:00-00:00`` is the whole day.
        """
        local = beijing(at)
        t = local.timetz().replace(tzinfo=None)
        if hours.start < hours.end:
            if not hours.start <= t < hours.end:
                return False
            day = local.date()
        elif t >= hours.start:
            day = local.date()
        elif t < hours.end:
            day = local.date() - timedelta(days=1)
        else:
            return False
        if days == "any":
            return True
        return self.is_working_day(day, region_path) == (days == "working")

    def on_duty(self, who: Iterable[str], at: datetime, region_path: Sequence[str]) -> bool:
        """Is any of ``who`` on a duty roster of the region subtree at ``at``?"""
        names = {w for w in who if w}
        if not names:
            return False
        regions = set(region_path)
        return any(e.who in names and e.region_id in regions and e.start <= at < e.end for e in self.rosters)

    def sealed(self, device_id: str, at: datetime, region_path: Sequence[str]) -> SealingPeriod | None:
        """The sealing period covering a device's region at ``at`` (None if none, or the device is exempt)."""
        regions = set(region_path)
        for p in self.sealing:
            if p.region_id in regions and p.start <= at < p.end and device_id not in p.exempt:
                return p
        return None
