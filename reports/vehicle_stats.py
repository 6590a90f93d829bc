"""Vehicle use and allocation figures (V8 over V9's trips): pure, no I/O, no clock.

Input: each vehicle's trips (``core.trips.Segment`` of kind ``"trip"``, or anything with the same attributes),
the working calendar, the period [start_ms, end_ms) and a ``Policy``. Output: per-vehicle ``Usage``, per-group
(agency, city) ``GroupUsage`` with the hour-of-week heatmap and peak concurrent use, and the allocation advice.

Definitions (docs/reports.md, "Vehicles report"):

- A vehicle is *in use* during its trips; engine hours are the trips' durations. A trip is clipped to the period
  and its distance scaled by the part of its time inside the period; it counts as a trip of the period when it
  starts inside it.
- Time in use is split, in Beijing time, into *working time* (working hours of a working day of the official
  calendar, make-up working days (调休) included), *after hours* (a working day outside working hours) and
  *non-working days* (weekends, public holidays and their days off); *holiday* is the part of the non-working
  days that carries a public holiday's name.
- Share of working hours in use = time in use within working time / working time available in the period.
- Target: ``target_hours_per_workday`` in use per working day; a vehicle under ``under_ratio`` of its target is
  under-used, over ``over_ratio`` over-used.
- Peak concurrent use: the most vehicles of a group on a trip at the same instant. A group is short of vehicles
  when that peak reaches ``short_ratio`` of its fleet (rounded up). The fleet a group needs at the same service
  level is its peak plus a margin: ``max(margin_min, ceil(peak * margin_ratio))``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Literal, Protocol

from alerts.calendar import Calendar, WorkingHours, beijing_date, beijing_midnight_ms

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
_OFFSET_MS = 8 * HOUR_MS  # Beijing is UTC+8 all year
WEEKDAYS_ZH = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")
WEEKDAYS_EN = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

TimeClass = Literal["working", "after_hours", "non_working"]


class TripLike(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def start_ms(self) -> int: ...

    @property
    def end_ms(self) -> int: ...

    @property
    def distance_m(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Vehicle:
    id: str
    name: str
    agency_id: str
    agency_name: str
    city_id: str
    city_name: str
    region_path: tuple[str, ...] = ()  # root first, the vehicle's own region last (region extra days apply)


@dataclass(frozen=True, slots=True)
class Policy:
    hours: WorkingHours = field(default_factory=WorkingHours)
    target_hours_per_workday: float = 3.0
    under_ratio: float = 0.35  # V8: under 30-40 % of target
    over_ratio: float = 1.2  # V8: over 100-120 % of target
    short_ratio: float = 0.9
    margin_ratio: float = 0.2
    margin_min: int = 1


@dataclass(slots=True)
class Usage:
    vehicle: Vehicle
    trips: int = 0
    km: float = 0.0
    engine_s: float = 0.0
    working_s: float = 0.0  # in use within working time
    after_hours_s: float = 0.0
    non_working_s: float = 0.0
    holiday_s: float = 0.0
    after_hours_km: float = 0.0
    non_working_km: float = 0.0
    holiday_km: float = 0.0
    off_hours_trips: int = 0  # trips of the period with any time after hours or on a non-working day
    available_s: float = 0.0  # working time in the period
    working_days: int = 0
    target_s: float = 0.0

    @property
    def use_share(self) -> float:
        """Share of working hours in use, 0..1."""
        return self.working_s / self.available_s if self.available_s > 0 else 0.0

    @property
    def target_ratio(self) -> float:
        """Time in use within working time against the target, 0.. (1 = on target)."""
        return self.working_s / self.target_s if self.target_s > 0 else 0.0


@dataclass(slots=True)
class GroupUsage:
    """An agency's or a city's vehicles together."""

    id: str
    name: str
    vehicles: list[Usage]
    peak: int = 0  # most vehicles on a trip at once
    peak_at_ms: int | None = None
    saturated_s: float = 0.0  # time with every vehicle of the group on a trip
    heatmap: list[list[float]] = field(default_factory=list)  # 7 x 24: % of the fleet in use, Mon..Sun x 0..23 h

    @property
    def fleet(self) -> int:
        return len(self.vehicles)

    def total(self, attr: str) -> float:
        return float(sum(getattr(u, attr) for u in self.vehicles))

    @property
    def use_share(self) -> float:
        available = self.total("available_s")
        return self.total("working_s") / available if available > 0 else 0.0

    @property
    def target_ratio(self) -> float:
        target = self.total("target_s")
        return self.total("working_s") / target if target > 0 else 0.0


# --- time splitting --------------------------------------------------------------------------------------


_local_day = beijing_date
_day_start_ms = beijing_midnight_ms


def _hours_ms(hours: WorkingHours) -> tuple[int, int]:
    a = (hours.start.hour * 60 + hours.start.minute) * 60_000
    b = (hours.end.hour * 60 + hours.end.minute) * 60_000
    return a, b


def _next_edge(t: int, a: int, b: int) -> int:
    """The first instant after ``t`` where the hour-of-week cell or a working-hours edge (``a``, ``b``: ms into
    the Beijing day) changes."""
    local = t + _OFFSET_MS
    nxt = (local // HOUR_MS + 1) * HOUR_MS
    day0 = local - local % DAY_MS
    for edge in (day0 + a, day0 + b, day0 + DAY_MS + a, day0 + DAY_MS + b):
        if local < edge < nxt:
            nxt = edge
    return nxt - _OFFSET_MS


def _to_dt(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, UTC)


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def split_time(
    start_ms: int, end_ms: int, calendar: Calendar, hours: WorkingHours, region_path: Sequence[str] = ()
) -> Iterator[tuple[int, int, int, TimeClass, bool]]:
    """Pieces of [start, end) that each lie in one hour-of-week cell and one time class:
    (piece start, piece end, cell = weekday * 24 + hour, class, holiday)."""
    a, b = _hours_ms(hours)
    overnight = b <= a
    t = start_ms
    while t < end_ms:
        nxt = min(_next_edge(t, a, b), end_ms)
        day_idx, in_day = divmod(t + _OFFSET_MS, DAY_MS)
        day = date.fromordinal(_EPOCH_ORDINAL + day_idx)
        cell = (day_idx + 3) % 7 * 24 + in_day // HOUR_MS  # 1970-01-01 was a Thursday
        working_day = calendar.is_working_day(day, region_path)
        if overnight:  # overnight hours belong to their start day: let the calendar say
            in_hours = calendar.in_hours(_to_dt(t), hours, "working", region_path)
        else:
            in_hours = working_day and a <= in_day < b
        cls: TimeClass = "working" if in_hours else "after_hours" if working_day else "non_working"
        holiday = cls == "non_working" and calendar.holiday_name(day) is not None
        yield t, nxt, cell, cls, holiday
        t = nxt


def available_working_s(
    start_ms: int, end_ms: int, calendar: Calendar, hours: WorkingHours, region_path: Sequence[str] = ()
) -> tuple[float, int]:
    """Working time in [start, end) in seconds and the number of working days it touches."""
    a, b = _hours_ms(hours)
    if b <= a:
        b += DAY_MS  # overnight hours belong to their start day
    total_ms = 0
    days = 0
    day = _local_day(start_ms) - timedelta(days=1)
    last = _local_day(end_ms)
    while day <= last:
        if calendar.is_working_day(day, region_path):
            d0 = _day_start_ms(day)
            lo, hi = max(start_ms, d0 + a), min(end_ms, d0 + b)
            if hi > lo:
                total_ms += hi - lo
                days += 1
        day += timedelta(days=1)
    return total_ms / 1000, days


def hour_of_week_hours(start_ms: int, end_ms: int) -> list[float]:
    """How many hours of each hour-of-week cell (Mon 00 h = 0 .. Sun 23 h = 167) the period holds."""
    out = [0.0] * 168
    t = start_ms
    while t < end_ms:
        nxt = min(((t + _OFFSET_MS) // HOUR_MS + 1) * HOUR_MS - _OFFSET_MS, end_ms)
        local_h = (t + _OFFSET_MS) // HOUR_MS
        weekday = (local_h // 24 + 3) % 7  # 1970-01-01 was a Thursday
        out[weekday * 24 + local_h % 24] += (nxt - t) / HOUR_MS
        t = nxt
    return out


# --- per vehicle ------------------------------------------------------------------------------------------


def clip(trips: Iterable[TripLike], start_ms: int, end_ms: int) -> list[tuple[int, int, float, bool]]:
    """Trips inside the period: (start, end, metres inside, starts inside the period)."""
    out = []
    for s in trips:
        if s.kind != "trip" or s.end_ms <= start_ms or s.start_ms >= end_ms:
            continue
        lo, hi = max(s.start_ms, start_ms), min(s.end_ms, end_ms)
        span = s.end_ms - s.start_ms
        metres = s.distance_m * ((hi - lo) / span) if span > 0 else s.distance_m
        out.append((lo, hi, metres, start_ms <= s.start_ms < end_ms))
    return out


def vehicle_usage(
    vehicle: Vehicle,
    clipped: Iterable[tuple[int, int, float, bool]],
    start_ms: int,
    end_ms: int,
    calendar: Calendar,
    policy: Policy,
    heat: list[float] | None = None,
) -> Usage:
    """One vehicle's figures over [start, end) from its ``clip``-ped trips; adds its in-use seconds per
    hour-of-week cell to ``heat``."""
    u = Usage(vehicle)
    u.available_s, u.working_days = available_working_s(start_ms, end_ms, calendar, policy.hours, vehicle.region_path)
    u.target_s = u.working_days * policy.target_hours_per_workday * 3600
    for lo, hi, metres, starts_inside in clipped:
        km = metres / 1000
        span_s = (hi - lo) / 1000
        u.km += km
        u.engine_s += span_s
        off_hours = False
        for a, b, cell, cls, holiday in split_time(lo, hi, calendar, policy.hours, vehicle.region_path):
            secs = (b - a) / 1000
            part_km = km * secs / span_s if span_s > 0 else 0.0
            if heat is not None:
                heat[cell] += secs
            if cls == "working":
                u.working_s += secs
                continue
            off_hours = True
            if cls == "after_hours":
                u.after_hours_s += secs
                u.after_hours_km += part_km
            else:
                u.non_working_s += secs
                u.non_working_km += part_km
                if holiday:
                    u.holiday_s += secs
                    u.holiday_km += part_km
        if starts_inside:
            u.trips += 1
            u.off_hours_trips += off_hours
    return u


# --- groups -----------------------------------------------------------------------------------------------


def concurrency(intervals: Iterable[tuple[int, int]]) -> tuple[int, int | None, list[tuple[int, int]]]:
    """Peak number of overlapping [start, end) intervals, when it was first reached, and the step function
    [(t, count from t on)] (an interval ending at t does not overlap one starting at t)."""
    kept = [(a, b) for a, b in intervals if b > a]
    edges = [(a, 1) for a, _ in kept] + [(b, -1) for _, b in kept]
    edges.sort()  # at the same instant the ends (-1) come first
    peak, peak_at, level = 0, None, 0
    steps: list[tuple[int, int]] = []
    for t, delta in edges:
        level += delta
        if steps and steps[-1][0] == t:
            steps[-1] = (t, level)
        else:
            steps.append((t, level))
        if level > peak:
            peak, peak_at = level, t
    return peak, peak_at, steps


def time_at_or_above(steps: Sequence[tuple[int, int]], threshold: int) -> float:
    """Seconds the step function spends at ``threshold`` or more."""
    total = 0
    for (t, level), (t2, _) in pairwise(steps):
        if level >= threshold:
            total += t2 - t
    return total / 1000


def group_usage(
    gid: str,
    name: str,
    usages: list[Usage],
    intervals: Mapping[str, Sequence[tuple[int, int]]],
    heat_s: Sequence[float] | None,
    cell_hours: Sequence[float] | None,
) -> GroupUsage:
    """A group of vehicles: ``intervals`` are each vehicle's clipped trips; ``heat_s`` the group's in-use seconds
    per hour-of-week cell and ``cell_hours`` the hours of each cell in the period (for the heatmap)."""
    g = GroupUsage(gid, name, usages)
    all_intervals = [iv for u in usages for iv in intervals.get(u.vehicle.id, ())]
    g.peak, g.peak_at_ms, steps = concurrency(all_intervals)
    g.saturated_s = time_at_or_above(steps, g.fleet) if g.fleet else 0.0
    if heat_s is not None and cell_hours is not None:
        g.heatmap = [
            [
                round(100 * heat_s[d * 24 + h] / (cell_hours[d * 24 + h] * 3600 * g.fleet), 1)
                if cell_hours[d * 24 + h] > 0 and g.fleet
                else 0.0
                for h in range(24)
            ]
            for d in range(7)
        ]
    return g


def needed(peak: int, policy: Policy) -> int:
    """Vehicles that give the same service level as the peak: the peak plus the margin (0 when never used)."""
    if peak == 0:
        return 0
    return peak + max(policy.margin_min, math.ceil(peak * policy.margin_ratio))


def is_short(g: GroupUsage, policy: Policy) -> bool:
    return g.fleet > 0 and g.peak >= math.ceil(policy.short_ratio * g.fleet)


def spare(g: GroupUsage, policy: Policy) -> int:
    """Vehicles beyond what the group needs at its peak with the margin."""
    return max(0, g.fleet - needed(g.peak, policy)) if not is_short(g, policy) else 0


@dataclass(frozen=True, slots=True)
class Move:
    city_id: str
    from_agency: str
    to_agency: str
    vehicle_id: str
    from_target_ratio: float
    to_peak: int
    to_fleet: int
    to_saturated_s: float


def moves(city_id: str, agencies: Sequence[GroupUsage], policy: Policy) -> list[Move]:
    """Within one city: one vehicle to each agency short of vehicles (the most saturated first), from the agency
    with spare vehicles and the lowest use against target, its least-used vehicle first."""
    short = sorted((g for g in agencies if is_short(g, policy)), key=lambda g: (-g.saturated_s, g.id))
    left = {g.id: spare(g, policy) for g in agencies}
    donors = sorted((g for g in agencies if left[g.id] > 0), key=lambda g: (g.target_ratio, g.id))
    pools = {g.id: sorted(g.vehicles, key=lambda u: (u.target_ratio, u.vehicle.id)) for g in donors}
    out = []
    for to in short:
        donor = next((d for d in donors if left[d.id] > 0), None)
        if donor is None:
            break
        left[donor.id] -= 1
        vehicle = pools[donor.id].pop(0)
        out.append(
            Move(city_id, donor.id, to.id, vehicle.vehicle.id, donor.target_ratio, to.peak, to.fleet, to.saturated_s)
        )
    return out
