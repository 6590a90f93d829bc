"""Vehicle rule kinds that need a vehicle's places, its dispatches or its trips: ``depot_exit`` (V2),
``utilisation`` (V8) and ``overnight_lot`` (V13). Pure: no I/O, no clock (every call takes the record's time or
``now``); ``alerts.engine`` adapts them to its kind protocol and turns each :class:`Change` into an alert change.

Places come from the vehicle device's registry attributes (``alerts.service`` reads them into the ``Subject``):

- ``depot: {lat, lon, radius_m}``: the home depot, a circle (``radius_m`` default 50 m);
- ``lot: [[lat, lon], ...]``: the polygon the vehicle must be parked in overnight (3 to 200 points).

Dispatches come from ``devices/dispatch.py`` as a :class:`DispatchBook` on the engine's ``Env`` (re-read on each
registry refresh, never per message).

V9 (trips and stops) is not a rule of its own: it is ``core.trips``, the segmenter ``utilisation`` runs on every
position (its state extends ``core.trips.TrackState``) and the vehicles report runs on the stored history. A trip
on its own is nothing to alert on; the rules that rest on trips are.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from alerts.calendar import BEIJING, Calendar, beijing_date, beijing_midnight_ms
from alerts.rules import DepotExitParams, OvernightLotParams, UtilisationParams
from core.trips import Segment, TrackState, TripParams, haversine_m, point_in_polygon, track_feed

DEFAULT_DEPOT_RADIUS_M = 50.0
MAX_LOT_POINTS = 200
DAY_MS = 86_400_000

Depot = tuple[float, float, float]  # lat, lon, radius_m
Lot = tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class Change:
    """Raise (``firing``) or resolve the alert at ``at_ms``."""

    firing: bool
    at_ms: int
    detail: dict[str, object]
    group: str = ""  # one alert per group (V8: per window), when the rule's dedup key names {group}


# --- places ------------------------------------------------------------------------------------------------------


def _latlon(v: Any) -> tuple[float, float] | None:
    if not isinstance(v, list | tuple) or len(v) != 2:
        return None
    lat, lon = v
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in (lat, lon)):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return (float(lat), float(lon))


def parse_depot(v: Any) -> Depot | None:
    """``{lat, lon, radius_m?}`` -> (lat, lon, radius_m); None if absent or malformed (see ``place_problems``)."""
    if not isinstance(v, Mapping):
        return None
    ll = _latlon([v.get("lat"), v.get("lon")])
    r = v.get("radius_m", DEFAULT_DEPOT_RADIUS_M)
    if ll is None or isinstance(r, bool) or not isinstance(r, int | float) or not 1 <= r <= 5000:
        return None
    return (ll[0], ll[1], float(r))


def parse_lot(v: Any) -> Lot | None:
    """``[[lat, lon], ...]`` (3 to 200 points) -> a polygon; None if absent or malformed."""
    if not isinstance(v, list | tuple) or not 3 <= len(v) <= MAX_LOT_POINTS:
        return None
    pts = [_latlon(p) for p in v]
    if any(p is None for p in pts):
        return None
    return tuple(p for p in pts if p is not None)


def place_problems(attributes: Mapping[str, Any]) -> list[str]:
    """What is wrong with a device's ``depot`` / ``lot`` attributes (empty: fine or absent)."""
    out = []
    if "depot" in attributes and parse_depot(attributes["depot"]) is None:
        out.append("depot must be {lat, lon, radius_m (1..5000, default 50)} in WGS-84 degrees")
    if "lot" in attributes and parse_lot(attributes["lot"]) is None:
        out.append(f"lot must be a list of 3 to {MAX_LOT_POINTS} [lat, lon] points in WGS-84 degrees")
    return out


# --- dispatches --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DispatchBook:
    """Approved dispatches around now: vehicle id -> (start_ms, end_ms) windows, sorted by start."""

    windows: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    def covers(self, vehicle_id: str, ts_ms: int, early_ms: int = 0, late_ms: int = 0) -> bool:
        """Is ``ts_ms`` inside an approved dispatch of the vehicle (widened by ``early_ms`` / ``late_ms``)?"""
        ws = self.windows.get(vehicle_id)
        if not ws:
            return False
        i = bisect_right(ws, (ts_ms + early_ms, math.inf))
        return any(end + late_ms >= ts_ms for _, end in ws[:i])


# --- V2 depot_exit -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class DepotExitState:
    firing: bool = False
    since_ms: int | None = None  # first position outside the depot with no dispatch, this time out
    last_ts_ms: int = 0
    seen_ms: int = 0  # when (engine time) the last position was evaluated
    away_m: float = 0.0  # distance from the depot's centre of the last position

    def essential(self) -> tuple[object, ...]:
        return (self.firing, self.since_ms)


def depot_exit_position(
    p: DepotExitParams,
    st: DepotExitState,
    depot: Depot,
    book: DispatchBook,
    vehicle_id: str,
    lat: float,
    lon: float,
    ts_ms: int,
    now_ms: int,
) -> list[Change]:
    """A position of the vehicle: outside its depot with no approved dispatch for ``min_outside_s`` fires; back
    in the depot, or a dispatch approved for the time, clears."""
    if ts_ms < st.last_ts_ms:
        return []
    st.last_ts_ms, st.seen_ms = ts_ms, now_ms
    radius = p.radius_m if p.radius_m is not None else depot[2]
    st.away_m = round(haversine_m((depot[0], depot[1]), (lat, lon)), 1)
    if st.away_m <= radius:
        return _depot_reset(st, ts_ms, "back in the depot")
    if book.covers(vehicle_id, ts_ms, int(p.early_s * 1000), int(p.late_s * 1000)):
        return _depot_reset(st, ts_ms, "dispatch approved")
    if st.since_ms is None:
        st.since_ms = ts_ms
    if not st.firing and ts_ms - st.since_ms >= p.min_outside_s * 1000:
        return _depot_fire(st, ts_ms)
    return []


def _depot_reset(st: DepotExitState, at_ms: int, why: str) -> list[Change]:
    was = st.firing
    st.firing, st.since_ms = False, None
    return [Change(False, at_ms, {"reason": why, "away_m": st.away_m})] if was else []


def _depot_fire(st: DepotExitState, at_ms: int) -> list[Change]:
    st.firing = True
    return [Change(True, at_ms, {"since": st.since_ms, "away_m": st.away_m})]


def depot_exit_deadline(p: DepotExitParams, st: DepotExitState) -> int | None:
    if st.firing or st.since_ms is None:
        return None
    return st.since_ms + int(p.min_outside_s * 1000) + _lag(st.seen_ms, st.last_ts_ms)


def depot_exit_tick(
    p: DepotExitParams, st: DepotExitState, book: DispatchBook, vehicle_id: str, now_ms: int
) -> list[Change]:
    """Still out with no dispatch after ``min_outside_s`` (no newer position came): fire, unless a dispatch has
    been approved for the time meanwhile."""
    due = depot_exit_deadline(p, st)
    if due is None or now_ms < due:
        return []
    if book.covers(vehicle_id, st.last_ts_ms, int(p.early_s * 1000), int(p.late_s * 1000)):
        st.since_ms = None
        return []
    return _depot_fire(st, now_ms)


# --- V8 utilisation ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class UtilisationState(TrackState):
    """The trip segmenter's state plus, per Beijing day (date ordinal as a string), [km, trips, engine seconds]
    of the longest window + 1 days, and the judgement."""

    days: dict[str, list[float]] = field(default_factory=dict)
    first_day: int | None = None  # the first day the vehicle was seen: a window is judged once fully observed
    ignition: bool | None = None  # the last ignition reported
    ign_ts_ms: int = 0  # when
    has_ignition: bool = False  # reports ignition at all (else engine time is trip time)
    last_ts_ms: int = 0
    seen_ms: int = 0  # when (engine time) the last reading was evaluated: a backlog's lag moves the judgement
    judged_day: int | None = None  # the last day judged
    firing: dict[str, str] = field(default_factory=dict)  # window ("7d") -> "under" | "over", while firing
    day: int | None = None  # the Beijing day of the last reading (its deadline moves when the day does)
    day_end_ms: int = 0

    def essential(self) -> tuple[object, ...]:
        return (tuple(sorted(self.firing.items())), self.judged_day, self.day)


def day_of(ts_ms: int) -> int:
    """The Beijing date ordinal of an instant (the key of ``UtilisationState.days``)."""
    return beijing_date(ts_ms).toordinal()


def day_start_ms(day: int) -> int:
    return beijing_midnight_ms(date.fromordinal(day))


def _add(st: UtilisationState, day: int, i: int, x: float) -> None:
    row = st.days.get(str(day))
    if row is None:
        row = st.days[str(day)] = [0.0, 0.0, 0.0]
    row[i] += x


def utilisation_position(
    p: UtilisationParams,
    st: UtilisationState,
    trip: TripParams,
    ts_ms: int,
    lat: float | None,
    lon: float | None,
    ignition: bool | None,
    now_ms: int = 0,
) -> None:
    """A reading of the vehicle: feeds the segmenter (a position) and the engine-hours count (ignition). Trips are
    counted on the Beijing day they started, engine time on the day of each interval's start."""
    if ts_ms < st.last_ts_ms:
        return
    st.last_ts_ms, st.seen_ms = ts_ms, now_ms
    prev_day = st.day
    if st.day is None or ts_ms >= st.day_end_ms:
        st.day = day_of(ts_ms)
        st.day_end_ms = day_start_ms(st.day + 1)
    if st.first_day is None:
        st.first_day = st.day
    if st.ignition and ts_ms - st.ign_ts_ms <= trip.gap_stop_s * 1000:
        _add(st, prev_day if prev_day is not None else st.day, 2, (ts_ms - st.ign_ts_ms) / 1000)
    if ignition is not None:
        st.ignition, st.ign_ts_ms, st.has_ignition = ignition, ts_ms, True
    elif st.ignition:
        st.ign_ts_ms = ts_ms  # the interval up to here is counted: count on from here
    if lat is None or lon is None:
        return
    for seg in track_feed(st, ts_ms, lat, lon, trip):
        if seg.kind == "trip":
            _count_trip(st, seg)


def _count_trip(st: UtilisationState, seg: Segment) -> None:
    d = day_of(seg.start_ms)
    _add(st, d, 0, seg.distance_m / 1000)
    _add(st, d, 1, 1)
    if not st.has_ignition:
        _add(st, d, 2, seg.duration_s)


def _lag(seen_ms: int, ts_ms: int) -> int:
    """How far behind the engine's clock the device's data arrived (0 for live data): a recorded backlog is judged
    on device time, its timers wait as long after their instant as the data is late."""
    return max(0, seen_ms - ts_ms) if seen_ms else 0


def utilisation_deadline(st: UtilisationState) -> int | None:
    """The end of the next day to judge (local midnight, plus the data's lag)."""
    if st.first_day is None:
        return None
    nxt = (st.judged_day if st.judged_day is not None else st.first_day - 1) + 1
    return day_start_ms(nxt + 1) + _lag(st.seen_ms, st.last_ts_ms)


def utilisation_tick(
    p: UtilisationParams, st: UtilisationState, cal: Calendar, region_path: Sequence[str], now_ms: int
) -> list[Change]:
    """Judge the days that have ended: each window of the last ``windows`` days (ending with the day judged)
    against the targets per working day, one alert per window (group ``7d``, ``30d``). Under-use: every measure
    below ``under`` x target; over-use: any above ``over`` x target."""
    due = utilisation_deadline(st)
    if due is None or now_ms < due or st.first_day is None:
        return []
    last = day_of(now_ms - _lag(st.seen_ms, st.last_ts_ms)) - 1  # the last day that has ended (device time)
    st.judged_day = last
    for k in [k for k in st.days if int(k) <= last - max(p.windows) - 1]:
        del st.days[k]
    out: list[Change] = []
    for n in sorted(p.windows):
        out.extend(_judge_window(p, st, cal, region_path, last, n))
    return out


def _judge_window(
    p: UtilisationParams, st: UtilisationState, cal: Calendar, region_path: Sequence[str], last: int, n: int
) -> list[Change]:
    first = last - n + 1
    if st.first_day is None or st.first_day > first:
        return []  # not observed for a whole window yet
    km = trips = engine_s = 0.0
    for d in range(first, last + 1):
        row = st.days.get(str(d))
        if row is not None:
            km, trips, engine_s = km + row[0], trips + row[1], engine_s + row[2]
    working = sum(1 for d in range(first, last + 1) if cal.is_working_day(date.fromordinal(d), region_path))
    per = max(1, working)
    ratios = {
        "km": km / per / p.target_km_per_day,
        "trips": trips / per / p.target_trips_per_day,
        "engine_h": engine_s / 3600 / per / p.target_engine_h_per_day,
    }
    if all(r < p.under for r in ratios.values()):
        verdict = "under"
    elif any(r > p.over for r in ratios.values()):
        verdict = "over"
    else:
        verdict = ""
    at, group = day_start_ms(last + 1), f"{n}d"
    detail: dict[str, object] = {
        "window_days": n,
        "from": date.fromordinal(first).isoformat(),
        "to": date.fromordinal(last).isoformat(),
        "working_days": working,
        "km": round(km, 1),
        "trips": int(trips),
        "engine_h": round(engine_s / 3600, 2),
        "utilisation": {k: round(v, 3) for k, v in ratios.items()},
    }
    out: list[Change] = []
    was = st.firing.get(group, "")
    if was and verdict != was:
        out.append(Change(False, at, {**detail, "was": was}, group))
        del st.firing[group]
        was = ""
    if verdict and not was:
        st.firing[group] = verdict
        out.append(Change(True, at, {**detail, "direction": verdict}, group))
    return out


# --- V13 overnight_lot -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class OvernightLotState:
    firing: bool = False
    lat: float | None = None
    lon: float | None = None
    pos_ms: int = 0  # time of the last position
    seen_ms: int = 0  # when (engine time) it was evaluated
    checked_ms: int = 0  # the last check instant judged (or the first position: checks after it count)

    def essential(self) -> tuple[object, ...]:
        return (self.firing, self.checked_ms)


def _night_ok(p: OvernightLotParams, cal: Calendar, night: date, region_path: Sequence[str]) -> bool:
    if p.nights == "any":
        return True
    return cal.is_working_day(night, region_path) == (p.nights == "working")


def _night_of(check_ms: int) -> date:
    """A night is its evening's date: a check before noon belongs to the night of the day before (06:00 on the
    2nd is the night of the 1st)."""
    local = datetime.fromtimestamp(check_ms / 1000, BEIJING)
    return local.date() - timedelta(days=1) if local.hour < 12 else local.date()


def next_check_ms(p: OvernightLotParams, after_ms: int) -> int:
    """The first check instant strictly after ``after_ms`` (any night: the night's class is judged later)."""
    start = datetime.fromtimestamp(after_ms / 1000, BEIJING).date()
    times = sorted(time.fromisoformat(t) for t in p.at)
    for offset in range(3):
        for t in times:
            at_ms = int(datetime.combine(start + timedelta(days=offset), t, BEIJING).timestamp() * 1000)
            if at_ms > after_ms:
                return at_ms
    raise AssertionError("a check time every day")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Watch:
    """What V13 judges one vehicle against: the rule's params, the vehicle's lot, the approved dispatches, the
    calendar and the vehicle's region path."""

    p: OvernightLotParams
    lot: Lot
    book: DispatchBook
    vehicle_id: str
    cal: Calendar
    region_path: Sequence[str]


def _judge(w: Watch, st: OvernightLotState, check_ms: int) -> list[Change]:
    if st.lat is None or st.lon is None or check_ms - st.pos_ms > w.p.max_age_s * 1000:
        return []  # where it is is not known (the terminal's silence is V12's business)
    inside = point_in_polygon(st.lat, st.lon, w.lot)
    detail: dict[str, object] = {"check": check_ms, "lat": st.lat, "lon": st.lon, "position_at": st.pos_ms}
    if inside:
        if st.firing:
            st.firing = False
            return [Change(False, check_ms, {**detail, "reason": "in its lot"})]
        return []
    if w.p.exempt_dispatched and w.book.covers(w.vehicle_id, check_ms):
        return []
    if st.firing:
        return []
    st.firing = True
    return [Change(True, check_ms, detail)]


def _due_checks(w: Watch, st: OvernightLotState, upto_ms: int) -> list[Change]:
    """Judge the latest check instant in (checked_ms, upto_ms] of a night the rule watches (the earlier ones
    missed say nothing newer: the position is the same)."""
    after = max(st.checked_ms, upto_ms - 8 * DAY_MS)
    latest = None
    while (nxt := next_check_ms(w.p, after)) <= upto_ms:
        after = nxt
        if _night_ok(w.p, w.cal, _night_of(nxt), w.region_path):
            latest = nxt
    st.checked_ms = max(st.checked_ms, after)
    return _judge(w, st, latest) if latest is not None else []


def overnight_position(
    w: Watch, st: OvernightLotState, lat: float, lon: float, ts_ms: int, now_ms: int = 0
) -> list[Change]:
    """A position: first the checks its time has passed are judged on the position before it (where the vehicle
    was at the check), then it becomes the known position; back inside the lot clears."""
    if ts_ms < st.pos_ms:
        return []
    out: list[Change] = []
    if st.lat is None:
        st.checked_ms = ts_ms
    else:
        out = _due_checks(w, st, ts_ms)
    st.lat, st.lon, st.pos_ms, st.seen_ms = lat, lon, ts_ms, now_ms
    if st.firing and point_in_polygon(lat, lon, w.lot):
        st.firing = False
        out.append(Change(False, ts_ms, {"reason": "back in its lot", "lat": lat, "lon": lon}))
    return out


def overnight_deadline(p: OvernightLotParams, st: OvernightLotState) -> int | None:
    """The next check instant, plus the data's lag (a recorded backlog decides its checks on device time)."""
    if st.lat is None:
        return None
    return next_check_ms(p, st.checked_ms) + _lag(st.seen_ms, st.pos_ms)


def overnight_tick(w: Watch, st: OvernightLotState, now_ms: int) -> list[Change]:
    """The engine's clock passed a check with no newer position: judge it on the last known position."""
    if st.lat is None:
        return []
    return _due_checks(w, st, now_ms - _lag(st.seen_ms, st.pos_ms))
