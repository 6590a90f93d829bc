"""The streaming rule engine: pure evaluation of one rule against one record (or a timer tick).

No I/O and no clock: every call takes ``now``. Each (rule, subject) pair has a small mutable state object of
JSON-native fields (``state_to_json`` / ``state_from_json``) so that it can be snapshotted and restored across a
restart. The engine only emits *edges* for level conditions (start firing, clear); event-like kinds emit a
firing change for every occurrence and the lifecycle deduplicates them into one open alert.

    evaluate(rule, state, subject, record, now=..., env=...) -> list[AlertChange]   # per message
    tick(rule, state, subject, now=..., env=...) -> list[AlertChange]               # per timer
    next_deadline(rule, state, subject) -> epoch ms | None                           # when to tick next

Device time (``ts_ms`` of a record) drives windows and held-for periods; ``now`` (wall clock) drives timers.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

from alerts import kinds_presence as presence
from alerts import kinds_vehicle as vehicle
from alerts.calendar import BEIJING, Calendar, WorkingHours, beijing
from alerts.rules import (
    PERIODIC_KINDS,
    AbsenceParams,
    BaselineParams,
    ClockSkewParams,
    DeltaParams,
    DemandParams,
    EffectiveRule,
    EventCountParams,
    GeofenceParams,
    Match,
    PassbackParams,
    ScheduleParams,
    SequenceParams,
    StillInsideParams,
    ThresholdParams,
    TimeWindow,
    TravelParams,
    compare,
)
from alerts.types import AlertChange
from core.protocol import Event, Reading, Record, Status
from core.trips import TripParams, haversine_m, point_in_polygon

MAX_GROUPS = 1000  # per (rule, device): distinct credentials etc. kept
MAX_RECENT = 32


@dataclass(frozen=True, slots=True)
class Subject:
    """The device a rule is evaluated for, from the registry snapshot."""

    # a vehicle's home depot (lat, lon, radius_m) and overnight lot polygon, from its attributes (V2, V13)
    depot: vehicle.Depot | None = field(default=None, kw_only=True)
    lot: vehicle.Lot | None = field(default=None, kw_only=True)
    device_id: str
    device_type: str
    region_id: str
    region_path: tuple[str, ...] = ()
    expected_interval_s: float = 60
    site: tuple[float, float] | None = None  # (lat, lon) of the device's site, for impossible travel
    contracted_kw: float | None = None  # nearest region's ``contracted_kw`` attribute (E8)


@dataclass(slots=True)
class Env:
    """What rules may consult besides the record: the calendar with rosters and sealing periods."""

    calendar: Calendar = field(default_factory=Calendar)
    dispatches: vehicle.DispatchBook = field(default_factory=vehicle.DispatchBook)  # approved (V2, V13)
    _hours: dict[tuple[int, tuple[str, ...]], tuple[bool, int, int]] = field(default_factory=dict, repr=False)
    _last: tuple[int, tuple[str, ...], tuple[bool, int, int]] | None = field(default=None, repr=False)

    def hour_info(self, ts_ms: int, region_path: tuple[str, ...]) -> tuple[bool, int, int]:
        """(working day?, hour of week 0..167, hour of day) in Beijing time, cached per hour (and the last answer
        again without hashing, for the several rules of one record)."""
        hour = ts_ms // 3_600_000
        last = self._last
        if last is not None and last[0] == hour and last[1] is region_path:
            return last[2]
        key = (hour, region_path)
        hit = self._hours.get(key)
        if hit is None:
            if len(self._hours) > 50_000:
                self._hours.clear()
            local = beijing(from_ms(ts_ms))
            working = self.calendar.is_working_day(local.date(), region_path)
            hit = self._hours[key] = (working, local.weekday() * 24 + local.hour, local.hour)
        self._last = (hour, region_path, hit)
        return hit


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def _emit(
    rule: EffectiveRule, subj: Subject, firing: bool, at_ms: int, group: str = "", **detail: object
) -> AlertChange:
    key = rule.dedup_key.format(
        rule=rule.rule_id, device=subj.device_id, region=subj.region_id, group=group or subj.device_id
    )
    if group:
        detail["group"] = group
    return AlertChange(
        rule_id=rule.rule_id,
        dedup_key=key,
        device_id=subj.device_id,
        region_id=subj.region_id,
        severity=rule.severity,
        firing=firing,
        at=from_ms(at_ms),
        title_zh=rule.title_zh,
        title_en=rule.title_en,
        detail=detail,
        region_path=subj.region_path,
        kind=rule.kind,
        offline_signal=rule.offline_signal,
        inhibitable=rule.inhibitable,
    )


def match_record(m: Match, record: Record) -> bool | None:
    """True/False when the record says something about ``m``; None when it is unrelated."""
    if m.event is not None:
        if not isinstance(record, Event) or record.type != m.event:
            return None
        return all(record.data.get(k) == v for k, v in m.where.items())
    if not isinstance(record, Reading) or m.field is None or m.field not in record.fields:
        return None
    ok = compare(m.op, record.fields[m.field], m.value)
    return ok and all(record.fields.get(k, v) == v for k, v in m.where.items())


def _edge(m: Match, record: Record, edges: dict[str, bool], name: str) -> bool:
    """Match with edge detection for field matches (state kept in ``edges[name]``)."""
    got = match_record(m, record)
    if got is None:
        return False
    if m.event is not None or not m.edge:
        return got
    before = edges.get(name, False)
    edges[name] = got
    return got and not before


def _sample(field: str, source: str, st: BaselineState | DemandState, rec: Record) -> tuple[int, float | None] | None:
    """A newer numeric reading of ``field``: remembers it in ``st`` and returns (previous reading's time, the value
    judged): the value itself, or for ``rate_per_hour`` the rate since the previous reading (None for the first
    reading and for a counter that went backwards, E5.negative's business). None if there is nothing to take."""
    if not isinstance(rec, Reading) or field not in rec.fields or rec.ts_ms <= st.last_ts_ms:
        return None
    raw = rec.fields[field]
    if isinstance(raw, bool):
        return None
    v = float(raw)
    prev, prev_ts = st.last_value, st.last_ts_ms
    st.last_value, st.last_ts_ms = v, rec.ts_ms
    if source != "rate_per_hour":
        return prev_ts, v
    if prev is None or v < prev:
        return prev_ts, None
    return prev_ts, (v - prev) / ((rec.ts_ms - prev_ts) / 3_600_000)


def _lag(seen_ms: int, ts_ms: int) -> int:
    """How far behind the engine's clock the device's data arrived (0 for live data or an unknown arrival).

    A held-for timer runs on the engine's clock, its condition on device time. For a backlog (a gateway's buffer
    flushed, a redelivery after an outage) the two differ by the delay: the deadline moves by it, so the rest of
    the backlog, arriving right behind, decides whether the condition held, not the wall clock."""
    return max(0, seen_ms - ts_ms) if seen_ms else 0


def in_window(env: Env, w: TimeWindow, ts_ms: int, region_path: tuple[str, ...]) -> bool:
    """Is ``ts_ms`` inside the recurring window ``w`` (Beijing time, the calendar's day classes)?"""
    return env.calendar.in_hours(from_ms(ts_ms), _hours(w.hours), w.days, region_path)


WINDOW_STEP_MS = 60_000  # resolution of window_overlap_ms
WINDOW_SPAN_MS = 8 * 86_400_000  # longest gap measured; beyond it only the last 8 days count


def window_overlap_ms(env: Env, w: TimeWindow, start_ms: int, end_ms: int, region_path: tuple[str, ...]) -> int:
    """How much of ``(start_ms, end_ms]`` lies inside ``w``, to a minute: each slice of up to a minute counts when
    its middle is inside. Readings a minute or less apart cost one calendar look-up."""
    start_ms = max(start_ms, end_ms - WINDOW_SPAN_MS)
    total = 0
    t = start_ms
    while t < end_ms:
        nxt = min(end_ms, t + WINDOW_STEP_MS)
        if in_window(env, w, (t + nxt) // 2, region_path):
            total += nxt - t
        t = nxt
    return total


def window_end_ms(env: Env, w: TimeWindow, inside_ms: int, outside_ms: int, region_path: tuple[str, ...]) -> int:
    """The first whole second after ``inside_ms`` (inside ``w``) that is outside it, found by bisection up to
    ``outside_ms`` (outside). Used only for gaps of up to an hour; longer gaps give ``outside_ms`` itself."""
    if outside_ms - inside_ms > 3_600_000:
        return outside_ms
    lo, hi = inside_ms // 1000, outside_ms // 1000  # windows change on whole minutes: both stay on their side
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if in_window(env, w, mid * 1000, region_path):
            lo = mid
        else:
            hi = mid
    return hi * 1000


# --- states --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ThresholdState:
    firing: bool = False
    since_ms: int | None = None
    streak: int = 0
    last_ts_ms: int = 0
    seen_ms: int = 0  # when (engine time) the reading at last_ts_ms was evaluated: device time -> timer time
    known: dict[str, Any] = field(default_factory=dict)
    value: Any = None
    suppressed_ms: int | None = None  # suppress_during: last time the condition held inside the window

    def essential(self) -> tuple[object, ...]:
        return (self.firing, self.since_ms, self.streak)


@dataclass(slots=True)
class DeltaState:
    firing: bool = False
    last_value: float | None = None
    last_ts_ms: int = 0
    changed_ms: int | None = None
    flat_ms: int = 0  # flat_during: flat time counted inside the window since the last change

    def essential(self) -> tuple[object, ...]:
        return (self.firing,)


@dataclass(slots=True)
class AbsenceState:
    firing: bool = False
    watch_from_ms: int = 0
    last_seen_ms: int | None = None
    known: dict[str, Any] = field(default_factory=dict)

    def essential(self) -> tuple[object, ...]:
        return (self.firing,)  # last_seen is learning data: a restart watches afresh from its own start


@dataclass(slots=True)
class ScheduleState:
    firing: bool = False
    anchor: list[float] | None = None
    position: list[float] | None = None
    last_match_ms: int | None = None
    edges: dict[str, bool] = field(default_factory=dict)

    def essential(self) -> tuple[object, ...]:
        return (self.firing, self.anchor is None)


@dataclass(slots=True)
class GroupState:
    times: list[int] = field(default_factory=list)
    firing: bool = False
    last_ms: int = 0


@dataclass(slots=True)
class EventCountState:
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # group -> asdict(GroupState)

    def essential(self) -> tuple[object, ...]:
        return tuple(sorted((k, v["firing"]) for k, v in self.groups.items() if v["firing"]))


@dataclass(slots=True)
class SequenceState:
    firing: bool = False
    pending: list[int] = field(default_factory=list)
    recent: list[int] = field(default_factory=list)
    last_fire_ms: int = 0
    edges: dict[str, bool] = field(default_factory=dict)

    def essential(self) -> tuple[object, ...]:
        return (self.firing, tuple(self.pending))


@dataclass(slots=True)
class GeofenceState:
    firing: bool = False
    since_ms: int | None = None
    last_ts_ms: int = 0
    seen_ms: int = 0  # as ThresholdState.seen_ms

    def essential(self) -> tuple[object, ...]:
        return (self.firing, self.since_ms)


@dataclass(slots=True)
class BaselineState:
    firing: bool = False
    since_ms: int | None = None
    cond: bool = False
    bins: dict[str, list[float]] = field(default_factory=dict)  # "w:how" -> [mean, n]
    last_value: float | None = None
    last_ts_ms: int = 0
    baseline: float | None = None
    seen_ms: int = 0  # as ThresholdState.seen_ms
    last_x: float | None = None  # the last value judged (a rate for rate_per_hour), reported by a timer firing
    # aggregate daily_mean: the day being averaged (date ordinal, Beijing), when its window ends, the weighted
    # sums of value and baseline and the weight (ms covered), qualifying days in a row, the last day judged
    day: int | None = None
    day_end_ms: int | None = None
    sum_x: float = 0.0
    sum_base: float = 0.0
    weight_ms: int = 0
    streak: int = 0
    last_day: int | None = None

    def essential(self) -> tuple[object, ...]:
        return (self.firing, self.since_ms, self.day, self.streak)


@dataclass(slots=True)
class DemandState:
    """Interval demand: the open interval's sums, a P² quantile estimate, hour-of-week bins of demand, the residual
    variance and the CUSUM. Bounded: 5 quantile markers, at most 336 bins."""

    firing: bool = False
    reason: str = ""
    bucket: int | None = None  # open interval: ts_ms // interval
    sum_x: float = 0.0
    weight_ms: int = 0
    last_value: float | None = None
    last_ts_ms: int = 0
    p2: dict[str, list[float]] = field(default_factory=dict)  # P²: q (heights), n (positions), np (desired)
    seen: int = 0  # intervals learned
    bins: dict[str, list[float]] = field(default_factory=dict)  # "w:how" -> [mean, n]
    var: float = 0.0  # residual variance (EWMA of squares)
    var_n: int = 0
    cusum: float = 0.0
    normal: int = 0  # intervals in a row with no spike while firing
    recent_z: list[float] = field(default_factory=list)  # while firing: the last clear_intervals residuals / sigma
    demand: float | None = None  # last closed interval

    def essential(self) -> tuple[object, ...]:
        return (self.firing, self.normal)


@dataclass(slots=True)
class PeriodicState:
    """Kinds judged by the energy checks job (E6, E7: alerts/energy_checks.py): nothing kept on the stream."""

    def essential(self) -> tuple[object, ...]:
        return ()


@dataclass(slots=True)
class ClockSkewState:
    firing: bool = False
    streak: int = 0  # skewed records in a row (not firing) / records within bounds in a row (firing)
    since_ms: int | None = None  # receive time of the first skewed record of the streak
    skew_s: float = 0.0  # the last record's skew: device time - receive time

    def essential(self) -> tuple[object, ...]:
        return (self.firing, self.streak, self.since_ms)


@dataclass(slots=True)
class TravelState:
    seen: dict[str, list[Any]] = field(default_factory=dict)  # key -> [ts_ms, lat, lon, device_id]
    firing: dict[str, int] = field(default_factory=dict)  # key -> last fire ms

    def essential(self) -> tuple[object, ...]:
        return tuple(sorted(self.firing))


State = (
    ThresholdState
    | vehicle.DepotExitState
    | vehicle.UtilisationState
    | vehicle.OvernightLotState
    | DeltaState
    | AbsenceState
    | ScheduleState
    | EventCountState
    | SequenceState
    | GeofenceState
    | BaselineState
    | TravelState
    | DemandState
    | ClockSkewState
    | presence.PassbackState
    | presence.StillInsideState
    | PeriodicState
)
STATE_TYPES: dict[str, type[Any]] = {
    "threshold": ThresholdState,
    "depot_exit": vehicle.DepotExitState,
    "utilisation": vehicle.UtilisationState,
    "overnight_lot": vehicle.OvernightLotState,
    "delta": DeltaState,
    "absence": AbsenceState,
    "schedule": ScheduleState,
    "event_count": EventCountState,
    "sequence": SequenceState,
    "geofence": GeofenceState,
    "baseline": BaselineState,
    "travel": TravelState,
    "demand": DemandState,
    "clock_skew": ClockSkewState,
    "passback": presence.PassbackState,
    "still_inside": presence.StillInsideState,
    "submeter_balance": PeriodicState,
    "quota": PeriodicState,
}
# one state per rule (across devices), not per (rule, device)
RULE_SCOPED = frozenset({"travel", "passback", "still_inside"})


def state_key(rule: EffectiveRule, subject: Subject) -> str:
    return "*" if rule.kind in RULE_SCOPED else subject.device_id


def new_state(rule: EffectiveRule, *, now: datetime) -> State:
    state: State = STATE_TYPES[rule.kind]()
    if isinstance(state, AbsenceState):
        state.watch_from_ms = ms(now)  # a device that never reports is caught from here on
    return state


def state_to_json(state: State) -> dict[str, Any]:
    return asdict(state)


def state_dumps(state: State) -> str:
    """The state as JSON text: fields are JSON-native, so no deep copy is needed (the snapshot hot path)."""
    return json.dumps({name: getattr(state, name) for name in state.__dataclass_fields__}, separators=(",", ":"))


def state_loads(kind: str, text: str) -> State:
    return state_from_json(kind, json.loads(text))


def state_from_json(kind: str, data: Mapping[str, Any]) -> State:
    cls = STATE_TYPES[kind]
    names = set(cls.__dataclass_fields__)
    state: State = cls(**{k: v for k, v in data.items() if k in names})
    return state


# --- kinds ---------------------------------------------------------------------------------------------------


class _Kind(Protocol):
    def evaluate(
        self, rule: EffectiveRule, st: Any, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]: ...

    def tick(self, rule: EffectiveRule, st: Any, subj: Subject, now_ms: int, env: Env) -> list[AlertChange]: ...

    def deadline(self, rule: EffectiveRule, st: Any, subj: Subject) -> int | None: ...


class _Untimed:
    """A rule kind decided by its records alone: no timers."""

    def tick(self, rule: EffectiveRule, st: Any, subj: Subject, now_ms: int, env: Env) -> list[AlertChange]:
        return []

    def deadline(self, rule: EffectiveRule, st: Any, subj: Subject) -> int | None:
        return None


class _Threshold:
    @staticmethod
    def _clear(p: ThresholdParams, v: Any, cond: bool, where_ok: bool) -> bool:
        if not where_ok:
            return True
        if p.clear_value is None:
            return not cond
        if p.op in (">", ">="):
            return compare("<", v, p.clear_value)
        return compare(">", v, p.clear_value)

    def evaluate(
        self, rule: EffectiveRule, st: ThresholdState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        p: ThresholdParams = rule.params
        if not isinstance(rec, Reading) or rec.ts_ms < st.last_ts_ms:
            return []
        for k in p.where:
            if k in rec.fields:
                st.known[k] = rec.fields[k]
        if p.field not in rec.fields:
            if st.firing or st.since_ms is not None:  # a where-field alone may end the condition
                where_ok = all(st.known.get(k) == w for k, w in p.where.items())
                if not where_ok:
                    return self._reset(rule, st, subj, rec.ts_ms)
            return []
        st.last_ts_ms, st.seen_ms = rec.ts_ms, now_ms
        v = rec.fields[p.field]
        held_value, st.value = st.value, v
        where_ok = all(st.known.get(k) == w for k, w in p.where.items())
        cond = where_ok and compare(p.op, v, p.value)
        w = p.suppress_during
        suppressed = w is not None and in_window(env, w, rec.ts_ms, subj.region_path)
        if st.firing:
            if suppressed or self._clear(p, v, cond, where_ok):
                return self._reset(rule, st, subj, rec.ts_ms, suppressed)
            return []
        if not cond:
            if st.since_ms is not None and st.streak >= p.count and p.for_s > 0:
                due = st.since_ms + int(p.for_s * 1000)  # device time
                if rec.ts_ms >= due and not (w is not None and in_window(env, w, due, subj.region_path)):
                    # A backlog: the condition held for for_s and this later reading ended it before the timer ran
                    # (the engine's clock waits by the data's lag): raised at its deadline, resolved now.
                    st.value = held_value
                    fired = self._fire(rule, st, subj, due)
                    st.value = v
                    return fired + self._reset(rule, st, subj, rec.ts_ms)
            st.streak, st.since_ms, st.suppressed_ms = 0, None, None
            return []
        if suppressed:  # e.g. the door is scheduled unlocked: an open door is fine
            st.streak, st.since_ms, st.suppressed_ms = 0, None, rec.ts_ms
            return []
        st.streak += 1
        if st.since_ms is None:
            st.since_ms = rec.ts_ms
            if w is not None and st.suppressed_ms is not None:  # held through the end of the window: count from it
                st.since_ms = window_end_ms(env, w, st.suppressed_ms, rec.ts_ms, subj.region_path)
            st.suppressed_ms = None
        if st.streak >= p.count and rec.ts_ms - st.since_ms >= p.for_s * 1000:
            return self._fire(rule, st, subj, rec.ts_ms)
        return []

    def _fire(self, rule: EffectiveRule, st: ThresholdState, subj: Subject, at_ms: int) -> list[AlertChange]:
        st.firing = True
        p: ThresholdParams = rule.params
        return [_emit(rule, subj, True, at_ms, value=st.value, threshold=p.value, since=st.since_ms)]

    def _reset(
        self, rule: EffectiveRule, st: ThresholdState, subj: Subject, at_ms: int, suppressed: bool = False
    ) -> list[AlertChange]:
        was = st.firing
        st.firing, st.streak, st.since_ms = False, 0, None
        st.suppressed_ms = at_ms if suppressed else None
        if not was:
            return []
        if suppressed:
            return [_emit(rule, subj, False, at_ms, value=st.value, reason="suppressed")]
        return [_emit(rule, subj, False, at_ms, value=st.value)]

    def tick(self, rule: EffectiveRule, st: ThresholdState, subj: Subject, now_ms: int, env: Env) -> list[AlertChange]:
        p: ThresholdParams = rule.params
        due = self.deadline(rule, st, subj)
        if due is not None and now_ms >= due:
            if p.suppress_during is not None and in_window(env, p.suppress_during, now_ms, subj.region_path):
                st.streak, st.since_ms, st.suppressed_ms = 0, None, now_ms  # the window began meanwhile
                return []
            return self._fire(rule, st, subj, now_ms)
        return []

    def deadline(self, rule: EffectiveRule, st: ThresholdState, subj: Subject) -> int | None:
        p: ThresholdParams = rule.params
        if st.firing or st.since_ms is None or st.streak < p.count:
            return None
        return st.since_ms + int(p.for_s * 1000) + _lag(st.seen_ms, st.last_ts_ms)


class _Delta(_Untimed):
    def evaluate(
        self, rule: EffectiveRule, st: DeltaState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        p: DeltaParams = rule.params
        if isinstance(rec, Event):
            if p.reset_event is not None and rec.type == p.reset_event:
                st.last_value, st.changed_ms, st.flat_ms = None, None, 0
                if st.firing:
                    st.firing = False
                    return [_emit(rule, subj, False, rec.ts_ms, reason="reset")]
            return []
        if not isinstance(rec, Reading) or p.field not in rec.fields or rec.ts_ms < st.last_ts_ms:
            return []
        raw = rec.fields[p.field]
        if isinstance(raw, bool):
            return []
        v = float(raw)
        prev, prev_ts = st.last_value, st.last_ts_ms
        st.last_value, st.last_ts_ms = v, rec.ts_ms
        if prev is None:
            st.changed_ms, st.flat_ms = rec.ts_ms, 0
            return []
        if p.flat_s is not None:
            if v != prev:
                st.changed_ms, st.flat_ms = rec.ts_ms, 0
                if st.firing:
                    st.firing = False
                    return [_emit(rule, subj, False, rec.ts_ms, value=v)]
                return []
            changed = st.changed_ms if st.changed_ms is not None else rec.ts_ms
            if p.flat_during is None:
                flat = rec.ts_ms - changed
            else:  # only the flat time inside the window counts (e.g. while the building is occupied)
                st.flat_ms += window_overlap_ms(env, p.flat_during, prev_ts, rec.ts_ms, subj.region_path)
                flat = st.flat_ms
            if not st.firing and flat >= p.flat_s * 1000:
                st.firing = True
                return [_emit(rule, subj, True, rec.ts_ms, value=v, flat_since=changed, flat_s=flat // 1000)]
            return []
        delta = v - prev
        if p.per_hour:
            hours = (rec.ts_ms - prev_ts) / 3_600_000
            if hours <= 0:
                return []
            delta /= hours
        bad = (p.min_delta is not None and delta < p.min_delta) or (p.max_delta is not None and delta > p.max_delta)
        if bad and not st.firing:
            st.firing = True
            return [_emit(rule, subj, True, rec.ts_ms, value=v, previous=prev, delta=round(delta, 6))]
        if not bad and st.firing:
            st.firing = False
            return [_emit(rule, subj, False, rec.ts_ms, value=v, delta=round(delta, 6))]
        return []


class _Absence:
    def evaluate(
        self, rule: EffectiveRule, st: AbsenceState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        p: AbsenceParams = rule.params
        if isinstance(rec, Status) and rec.state == "offline":
            return []
        if isinstance(rec, Reading):
            for k in p.only_if:
                if k in rec.fields:
                    st.known[k] = rec.fields[k]
        newer = st.last_seen_ms is None or rec.ts_ms > st.last_seen_ms
        if newer:
            st.last_seen_ms = rec.ts_ms
        if st.firing and newer:  # a replayed older record (e.g. a redelivered status) is no sign of life
            st.firing = False
            return [_emit(rule, subj, False, rec.ts_ms, last_seen=st.last_seen_ms)]
        return []

    def _timeout_ms(self, rule: EffectiveRule, subj: Subject) -> int:
        p: AbsenceParams = rule.params
        return int((p.interval_s or subj.expected_interval_s) * p.factor * 1000)

    def tick(self, rule: EffectiveRule, st: AbsenceState, subj: Subject, now_ms: int, env: Env) -> list[AlertChange]:
        due = self.deadline(rule, st, subj)
        if due is None or now_ms < due:
            return []
        st.firing = True
        return [_emit(rule, subj, True, now_ms, last_seen=st.last_seen_ms, never_reported=st.last_seen_ms is None)]

    def deadline(self, rule: EffectiveRule, st: AbsenceState, subj: Subject) -> int | None:
        p: AbsenceParams = rule.params
        if st.firing or not all(st.known.get(k) == v for k, v in p.only_if.items()):
            return None
        # watch_from: when watching started (first start, or a restart: silence before it is not held against
        # the device, since messages between the last snapshot and the restart may not be in the state)
        ref = max(st.last_seen_ms or 0, st.watch_from_ms)
        return ref + self._timeout_ms(rule, subj)


def _who(rec: Record, keys: Sequence[str], subj: Subject) -> list[str]:
    names = [subj.device_id]
    if isinstance(rec, Event):
        names.extend(str(rec.data[k]) for k in keys if rec.data.get(k) is not None)
    return names


class _Schedule:
    def _violates(self, p: ScheduleParams, subj: Subject, rec: Record, env: Env) -> bool:
        cal = env.calendar
        if p.mode == "sealed" and not cal.sealing:
            return False  # no sealing period at all: nothing is sealed (on duty or not)
        at = from_ms(rec.ts_ms)
        if cal.rosters and cal.on_duty(_who(rec, p.roster_keys, subj), at, subj.region_path):
            return False
        if p.mode == "sealed":
            return cal.sealed(subj.device_id, at, subj.region_path) is not None
        hours = _hours(p.hours)
        if cal.is_working_time(at, hours, subj.region_path):
            return False
        if p.grace_s:
            from datetime import timedelta

            g = timedelta(seconds=p.grace_s)
            if cal.is_working_time(at - g, hours, subj.region_path) or cal.is_working_time(
                at + g, hours, subj.region_path
            ):
                return False
        return True

    def evaluate(
        self, rule: EffectiveRule, st: ScheduleState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        p: ScheduleParams = rule.params
        if isinstance(rec, Reading) and "lat" in rec.fields and "lon" in rec.fields:
            st.position = [float(rec.fields["lat"]), float(rec.fields["lon"])]
        got = match_record(p.match, rec)
        if got is None:
            return []
        level = p.match.field is not None
        if not got:
            if level and st.firing:
                return self._clear(rule, st, subj, rec.ts_ms, "condition ended")
            st.anchor = None
            return []
        if not self._violates(p, subj, rec, env):
            if level and st.firing:
                return self._clear(rule, st, subj, rec.ts_ms, "allowed time")
            st.anchor = None
            return []
        st.last_match_ms = rec.ts_ms
        if p.min_distance_m > 0:
            if st.position is None:
                return []
            if st.anchor is None:
                st.anchor = list(st.position)
            moved = haversine_m(st.anchor, st.position)
            if moved < p.min_distance_m:
                return []
            if st.firing:
                return []
            st.firing = True
            return [_emit(rule, subj, True, rec.ts_ms, moved_m=round(moved))]
        if st.firing and level:
            return []
        st.firing = True
        if isinstance(rec, Event):
            who = {k: v for k, v in rec.data.items() if k in p.roster_keys}
            return [_emit(rule, subj, True, rec.ts_ms, event=rec.type, who=who)]
        return [_emit(rule, subj, True, rec.ts_ms)]

    def _clear(self, rule: EffectiveRule, st: ScheduleState, subj: Subject, at: int, why: str) -> list[AlertChange]:
        st.firing, st.anchor = False, None
        return [_emit(rule, subj, False, at, reason=why)]

    def tick(self, rule: EffectiveRule, st: ScheduleState, subj: Subject, now_ms: int, env: Env) -> list[AlertChange]:
        due = self.deadline(rule, st, subj)
        if due is not None and now_ms >= due:
            return self._clear(rule, st, subj, now_ms, "quiet")
        return []

    def deadline(self, rule: EffectiveRule, st: ScheduleState, subj: Subject) -> int | None:
        p: ScheduleParams = rule.params
        if not st.firing or p.clear_after_s is None or st.last_match_ms is None:
            return None
        return st.last_match_ms + int(p.clear_after_s * 1000)


_HOURS_CACHE: dict[str, WorkingHours] = {}


def _hours(text: str) -> WorkingHours:
    h = _HOURS_CACHE.get(text)
    if h is None:
        h = _HOURS_CACHE[text] = WorkingHours.parse(text)
    return h


class _EventCount:
    def evaluate(
        self, rule: EffectiveRule, st: EventCountState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        p: EventCountParams = rule.params
        if match_record(p.match, rec) is not True:
            return []
        group = ""
        if p.group_by is not None and isinstance(rec, Event):
            group = str(rec.data.get(p.group_by, ""))
        g = st.groups.get(group)
        if g is None:
            if len(st.groups) >= MAX_GROUPS:
                self._prune(st, p, now_ms, force=True)
            g = st.groups[group] = asdict(GroupState())
        horizon = rec.ts_ms - int(p.window_s * 1000)
        times = [t for t in g["times"] if t > horizon]
        times.append(rec.ts_ms)
        g["times"] = times[-p.count :]
        g["last_ms"] = max(g["last_ms"], rec.ts_ms)
        if len(times) >= p.count:
            g["firing"] = True
            return [_emit(rule, subj, True, rec.ts_ms, group, count=len(times), window_s=p.window_s)]
        return []

    def _prune(self, st: EventCountState, p: EventCountParams, now_ms: int, force: bool = False) -> None:
        horizon = now_ms - int(p.window_s * 1000)
        for k in [k for k, g in st.groups.items() if not g["firing"] and g["last_ms"] <= horizon]:
            del st.groups[k]
        if force and len(st.groups) >= MAX_GROUPS:
            oldest = min(st.groups, key=lambda k: st.groups[k]["last_ms"])
            del st.groups[oldest]

    def tick(self, rule: EffectiveRule, st: EventCountState, subj: Subject, now_ms: int, env: Env) -> list[AlertChange]:
        p: EventCountParams = rule.params
        out: list[AlertChange] = []
        if p.clear_after_s is not None:
            quiet = int(p.clear_after_s * 1000)
            for group, g in st.groups.items():
                if g["firing"] and now_ms - g["last_ms"] >= quiet:
                    g["firing"] = False
                    out.append(_emit(rule, subj, False, now_ms, group))
        self._prune(st, p, now_ms)
        return out

    def deadline(self, rule: EffectiveRule, st: EventCountState, subj: Subject) -> int | None:
        p: EventCountParams = rule.params
        if p.clear_after_s is None:
            return None
        due = [g["last_ms"] + int(p.clear_after_s * 1000) for g in st.groups.values() if g["firing"]]
        return min(due) if due else None


class _Sequence:
    def evaluate(
        self, rule: EffectiveRule, st: SequenceState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        p: SequenceParams = rule.params
        before, after = int(p.before_s * 1000), int(p.after_s * 1000)
        # event matches say nothing about a reading (match_record: None), so a reading skips them
        if (not isinstance(rec, Reading) or not all(m.event is not None for m in p.required)) and any(
            _edge(m, rec, st.edges, f"r{i}") for i, m in enumerate(p.required)
        ):
            t = rec.ts_ms
            st.recent = sorted([*st.recent, t])[-MAX_RECENT:]
            st.pending = [a for a in st.pending if not (a - before <= t <= a + after)]
        if _edge(p.trigger, rec, st.edges, "t"):
            a = rec.ts_ms
            if not any(a - before <= r <= a + after for r in st.recent):
                st.pending = sorted([*st.pending, a])[-MAX_RECENT:]
        return self._due(rule, st, subj, now_ms)

    def _due(self, rule: EffectiveRule, st: SequenceState, subj: Subject, now_ms: int) -> list[AlertChange]:
        p: SequenceParams = rule.params
        if not st.pending:
            return []
        wait = int((p.after_s + p.settle_s) * 1000)
        due = [a for a in st.pending if a + wait <= now_ms]
        if not due:
            return []
        st.pending = [a for a in st.pending if a + wait > now_ms]
        keep = int((p.before_s + p.after_s + p.settle_s) * 1000) * 4
        st.recent = [r for r in st.recent if r >= now_ms - keep]
        st.firing = True
        st.last_fire_ms = max(st.last_fire_ms, due[-1])
        return [_emit(rule, subj, True, a, trigger_at=a, window_s=p.before_s) for a in due]

    def tick(self, rule: EffectiveRule, st: SequenceState, subj: Subject, now_ms: int, env: Env) -> list[AlertChange]:
        p: SequenceParams = rule.params
        out = self._due(rule, st, subj, now_ms)
        if st.firing and p.clear_after_s is not None and now_ms - st.last_fire_ms >= p.clear_after_s * 1000:
            st.firing = False
            out.append(_emit(rule, subj, False, now_ms))
        return out

    def deadline(self, rule: EffectiveRule, st: SequenceState, subj: Subject) -> int | None:
        p: SequenceParams = rule.params
        due: list[int] = [a + int((p.after_s + p.settle_s) * 1000) for a in st.pending]
        if st.firing and p.clear_after_s is not None:
            due.append(st.last_fire_ms + int(p.clear_after_s * 1000))
        return min(due) if due else None


class _Geofence:
    def evaluate(
        self, rule: EffectiveRule, st: GeofenceState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        p: GeofenceParams = rule.params
        if not isinstance(rec, Reading) or rec.ts_ms < st.last_ts_ms:
            return []
        lat, lon = rec.fields.get(p.lat_field), rec.fields.get(p.lon_field)
        if isinstance(lat, bool) or isinstance(lon, bool) or lat is None or lon is None:
            return []
        st.last_ts_ms, st.seen_ms = rec.ts_ms, now_ms
        inside = any(point_in_polygon(lat, lon, poly) for poly in p.polygons)
        breach = not inside if p.mode == "stay_inside" else inside
        if not breach:
            was = st.firing
            st.firing, st.since_ms = False, None
            return [_emit(rule, subj, False, rec.ts_ms, lat=lat, lon=lon)] if was else []
        if st.since_ms is None:
            st.since_ms = rec.ts_ms
        if not st.firing and rec.ts_ms - st.since_ms >= p.min_outside_s * 1000:
            st.firing = True
            return [_emit(rule, subj, True, rec.ts_ms, lat=lat, lon=lon, since=st.since_ms)]
        return []

    def tick(self, rule: EffectiveRule, st: GeofenceState, subj: Subject, now_ms: int, env: Env) -> list[AlertChange]:
        due = self.deadline(rule, st, subj)
        if due is not None and now_ms >= due:
            st.firing = True
            return [_emit(rule, subj, True, now_ms, since=st.since_ms)]
        return []

    def deadline(self, rule: EffectiveRule, st: GeofenceState, subj: Subject) -> int | None:
        p: GeofenceParams = rule.params
        if st.firing or st.since_ms is None:
            return None
        return st.since_ms + int(p.min_outside_s * 1000) + _lag(st.seen_ms, st.last_ts_ms)


def _position(rec: Record) -> tuple[float, float] | None:
    """(lat, lon) of a reading that has both as numbers."""
    if not isinstance(rec, Reading):
        return None
    lat, lon = rec.fields.get("lat"), rec.fields.get("lon")
    if lat is None or lon is None or isinstance(lat, bool) or isinstance(lon, bool):
        return None
    return (lat, lon)


def _vehicle_alerts(rule: EffectiveRule, subj: Subject, changes: list[vehicle.Change]) -> list[AlertChange]:
    return [_emit(rule, subj, c.firing, c.at_ms, c.group, **c.detail) for c in changes]


class _DepotExit:
    """V2 movement without dispatch (alerts.kinds_vehicle): needs the vehicle's ``depot``."""

    def evaluate(
        self, rule: EffectiveRule, st: vehicle.DepotExitState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        pos = _position(rec) if subj.depot is not None else None
        if pos is None or subj.depot is None:
            return []
        p = rule.params
        changes = vehicle.depot_exit_position(
            p, st, subj.depot, env.dispatches, subj.device_id, pos[0], pos[1], rec.ts_ms, now_ms
        )
        return _vehicle_alerts(rule, subj, changes)

    def tick(
        self, rule: EffectiveRule, st: vehicle.DepotExitState, subj: Subject, now_ms: int, env: Env
    ) -> list[AlertChange]:
        changes = vehicle.depot_exit_tick(rule.params, st, env.dispatches, subj.device_id, now_ms)
        return _vehicle_alerts(rule, subj, changes)

    def deadline(self, rule: EffectiveRule, st: vehicle.DepotExitState, subj: Subject) -> int | None:
        return vehicle.depot_exit_deadline(rule.params, st) if subj.depot is not None else None


_TRIP_PARAMS = TripParams()  # V9 as DOMAIN-RULES gives it


class _Utilisation:
    """V8 utilisation (alerts.kinds_vehicle) on the V9 segmenter (core.trips): judged after each local midnight."""

    def evaluate(
        self, rule: EffectiveRule, st: vehicle.UtilisationState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        pos = _position(rec)  # vehicle telemetry always has lat / lon (PROTOCOL.md), ignition mostly
        if pos is None or not isinstance(rec, Reading):
            return []
        ign = rec.fields.get("ignition")
        vehicle.utilisation_position(
            rule.params, st, _TRIP_PARAMS, rec.ts_ms, pos[0], pos[1], ign if isinstance(ign, bool) else None, now_ms
        )
        return []

    def tick(
        self, rule: EffectiveRule, st: vehicle.UtilisationState, subj: Subject, now_ms: int, env: Env
    ) -> list[AlertChange]:
        changes = vehicle.utilisation_tick(rule.params, st, env.calendar, subj.region_path, now_ms)
        return _vehicle_alerts(rule, subj, changes)

    def deadline(self, rule: EffectiveRule, st: vehicle.UtilisationState, subj: Subject) -> int | None:
        return vehicle.utilisation_deadline(st)


class _OvernightLot:
    """V13 parked off-site overnight (alerts.kinds_vehicle): needs the vehicle's ``lot``."""

    @staticmethod
    def _watch(rule: EffectiveRule, subj: Subject, env: Env) -> vehicle.Watch | None:
        if subj.lot is None:
            return None
        return vehicle.Watch(rule.params, subj.lot, env.dispatches, subj.device_id, env.calendar, subj.region_path)

    def evaluate(
        self, rule: EffectiveRule, st: vehicle.OvernightLotState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        pos = _position(rec)
        w = self._watch(rule, subj, env) if pos is not None else None
        if pos is None or w is None:
            return []
        return _vehicle_alerts(rule, subj, vehicle.overnight_position(w, st, *pos, rec.ts_ms, now_ms))

    def tick(
        self, rule: EffectiveRule, st: vehicle.OvernightLotState, subj: Subject, now_ms: int, env: Env
    ) -> list[AlertChange]:
        w = self._watch(rule, subj, env)
        return _vehicle_alerts(rule, subj, vehicle.overnight_tick(w, st, now_ms)) if w is not None else []

    def deadline(self, rule: EffectiveRule, st: vehicle.OvernightLotState, subj: Subject) -> int | None:
        return vehicle.overnight_deadline(rule.params, st) if subj.lot is not None else None


# "w:how" keys of the hour-of-week bins, built once: [working][how] and, per hour of day, the 7 days' keys
_BIN_KEYS = tuple(tuple(f"{w}:{how}" for how in range(168)) for w in "01")
_BIN_DAY_KEYS = tuple(tuple(tuple(row[day * 24 + hour] for day in range(7)) for hour in range(24)) for row in _BIN_KEYS)


def bin_expected(bins: Mapping[str, list[float]], working: bool, how: int, min_samples: int) -> float | None:
    """The learned value of an hour-of-week bin; falls back to the same hour on other days of its class."""
    w = 1 if working else 0
    b = bins.get(_BIN_KEYS[w][how])
    if b is not None and b[1] >= min_samples:
        return b[0]
    if not bins:
        return None  # nothing learned yet (n = 0 < min_samples, which is at least 1)
    tot = n = 0.0
    for key in _BIN_DAY_KEYS[w][how % 24]:
        o = bins.get(key)
        if o is not None:
            tot += o[0] * o[1]
            n += o[1]
    return tot / n if n >= min_samples else None


def bin_learn(bins: dict[str, list[float]], working: bool, how: int, x: float, alpha: float) -> None:
    """A running mean per bin: exact for the first 1/alpha samples, then an EWMA with weight alpha."""
    key = _BIN_KEYS[1 if working else 0][how]
    b = bins.get(key)
    if b is None:
        bins[key] = [x, 1.0]
    else:
        b[1] += 1
        b[0] += max(1 / b[1], alpha) * (x - b[0])


class _Baseline:
    @staticmethod
    def expected(st: BaselineState, working: bool, how: int, min_samples: int) -> float | None:
        """The learned value of an hour-of-week bin; falls back to the same hour on other days of its class."""
        return bin_expected(st.bins, working, how, min_samples)

    def evaluate(
        self, rule: EffectiveRule, st: BaselineState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        p: BaselineParams = rule.params
        taken = _sample(p.field, p.source, st, rec)
        if taken is None:
            return []
        prev_ts, x = taken
        st.seen_ms = now_ms
        if x is None:
            return []
        st.last_x = x
        working, how, hour = env.hour_info(rec.ts_ms, subj.region_path)
        applies = (p.days == "any" or (p.days == "working") == working) and (
            p.hours is None or p.hours[0] <= hour < p.hours[1]
        )
        base = bin_expected(st.bins, working, how, p.min_samples)
        st.baseline = base
        cond = applies and base is not None and x > base * (1 + p.relative) and x - base > p.absolute
        if p.aggregate == "daily_mean":
            out = self._daily(rule, st, subj, rec.ts_ms, prev_ts, x, base if applies else None, env)
            if not cond:
                self._learn(st, p, working, how, x)
            return out
        st.cond = cond
        out = []
        if cond:
            if st.since_ms is None:
                st.since_ms = rec.ts_ms
            if not st.firing and rec.ts_ms - st.since_ms >= p.for_s * 1000:
                st.firing = True
                out.append(_emit(rule, subj, True, rec.ts_ms, value=round(x, 3), baseline=round(base or 0, 3)))
        else:
            st.since_ms = None
            if st.firing:
                st.firing = False
                out.append(_emit(rule, subj, False, rec.ts_ms, value=round(x, 3)))
            # learn only from normal data, so an anomaly does not become the new normal
            self._learn(st, p, working, how, x)
        return out

    @staticmethod
    def _learn(st: BaselineState, p: BaselineParams, working: bool, how: int, x: float) -> None:
        bin_learn(st.bins, working, how, x, p.alpha)

    # aggregate: daily_mean -- one judgement per day, on the mean of the day's window ``hours``

    def _daily(
        self,
        rule: EffectiveRule,
        st: BaselineState,
        subj: Subject,
        ts_ms: int,
        prev_ts: int,
        x: float,
        base: float | None,
        env: Env,
    ) -> list[AlertChange]:
        p: BaselineParams = rule.params
        out: list[AlertChange] = []
        if st.day_end_ms is not None and ts_ms >= st.day_end_ms:
            out = self._close_day(rule, st, subj, ts_ms, env)
        if base is None:  # outside the window, or no baseline yet for this hour
            return out
        assert p.hours is not None
        local = beijing(from_ms(ts_ms))
        day = local.date().toordinal()
        if st.last_day is not None and day <= st.last_day:  # a late reading of a day already judged
            return out
        start_ms = ms(datetime.combine(local.date(), time(), BEIJING) + timedelta(hours=p.hours[0]))
        if st.day != day:
            st.day, st.sum_x, st.sum_base, st.weight_ms = day, 0.0, 0.0, 0
            st.day_end_ms = start_ms + (p.hours[1] - p.hours[0]) * 3_600_000
        # time-weighted: each reading stands for the time since the previous one (inside the window)
        weight = ts_ms - max(prev_ts, start_ms) if prev_ts else 0
        if weight > 0:
            st.sum_x += x * weight
            st.sum_base += base * weight
            st.weight_ms += weight
        return out

    def _close_day(
        self, rule: EffectiveRule, st: BaselineState, subj: Subject, at_ms: int, env: Env
    ) -> list[AlertChange]:
        """Judge the day being averaged: qualifying days in a row fire; a normal day resets the count and clears."""
        p: BaselineParams = rule.params
        assert st.day is not None and st.day_end_ms is not None and p.hours is not None
        day, window_ms = st.day, (p.hours[1] - p.hours[0]) * 3_600_000
        mean_x = st.sum_x / st.weight_ms if st.weight_ms else 0.0
        mean_b = st.sum_base / st.weight_ms if st.weight_ms else 0.0
        covered = st.weight_ms >= window_ms / 2
        if st.last_day is not None and self._skipped_a_day(p, st.last_day, day, subj, env):
            st.streak = 0  # the days must follow each other (days without data in between break the run)
        st.day, st.day_end_ms, st.last_day = None, None, day
        st.sum_x, st.sum_base, st.weight_ms = 0.0, 0.0, 0
        detail: dict[str, Any] = {
            "value": round(mean_x, 3),
            "baseline": round(mean_b, 3),
            "day": date.fromordinal(day).isoformat(),
        }
        if not covered:  # too little data to judge: the run is broken, a firing alert stays
            st.streak = 0
            return []
        if mean_x > mean_b * (1 + p.relative) and mean_x - mean_b > p.absolute:
            st.streak += 1
            if not st.firing and st.streak >= p.consecutive_days:
                st.firing = True
                return [_emit(rule, subj, True, at_ms, days=st.streak, **detail)]
            return []
        st.streak = 0
        if st.firing:
            st.firing = False
            return [_emit(rule, subj, False, at_ms, **detail)]
        return []

    @staticmethod
    def _skipped_a_day(p: BaselineParams, last: int, day: int, subj: Subject, env: Env) -> bool:
        """Was there a day between ``last`` and ``day`` that the rule watches (its ``days`` class)?"""
        if day - last > 31:
            return True
        for d in range(last + 1, day):
            if p.days == "any" or env.calendar.is_working_day(date.fromordinal(d), subj.region_path) == (
                p.days == "working"
            ):
                return True
        return False

    def tick(self, rule: EffectiveRule, st: BaselineState, subj: Subject, now_ms: int, env: Env) -> list[AlertChange]:
        due = self.deadline(rule, st, subj)
        if due is None or now_ms < due:
            return []
        p: BaselineParams = rule.params
        if p.aggregate == "daily_mean":
            return self._close_day(rule, st, subj, now_ms, env)
        st.firing = True
        value = round(st.last_x, 3) if st.last_x is not None else None
        return [_emit(rule, subj, True, now_ms, value=value, baseline=round(st.baseline or 0, 3))]

    def deadline(self, rule: EffectiveRule, st: BaselineState, subj: Subject) -> int | None:
        p: BaselineParams = rule.params
        if p.aggregate == "daily_mean":
            if st.day is None or st.day_end_ms is None:
                return None
            return st.day_end_ms + _lag(st.seen_ms, st.last_ts_ms)  # a backlog: its next readings close the day
        if st.firing or not st.cond or st.since_ms is None:
            return None
        return st.since_ms + int(p.for_s * 1000) + _lag(st.seen_ms, st.last_ts_ms)


class _Travel:
    def evaluate(
        self, rule: EffectiveRule, st: TravelState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        p: TravelParams = rule.params
        if subj.site is None or match_record(p.match, rec) is not True or not isinstance(rec, Event):
            return []
        key = rec.data.get(p.key)
        if key is None:
            return []
        k = str(key)
        prev = st.seen.get(k)
        st.seen[k] = [rec.ts_ms, subj.site[0], subj.site[1], subj.device_id]
        if len(st.seen) > MAX_GROUPS * 10:
            horizon = rec.ts_ms - int(p.forget_s * 1000)
            st.seen = {a: b for a, b in st.seen.items() if b[0] >= horizon}
        if prev is None or rec.ts_ms - prev[0] > p.forget_s * 1000:
            return []
        dist_km = haversine_m((prev[1], prev[2]), subj.site) / 1000
        if dist_km < p.min_distance_km:
            return []
        hours = abs(rec.ts_ms - prev[0]) / 3_600_000
        speed = math.inf if hours == 0 else dist_km / hours
        if speed <= p.max_speed_kmh:
            return []
        st.firing[k] = rec.ts_ms
        return [
            _emit(
                rule,
                subj,
                True,
                rec.ts_ms,
                k,
                from_device=prev[3],
                distance_km=round(dist_km, 1),
                speed_kmh=None if math.isinf(speed) else round(speed),
            )
        ]

    def tick(self, rule: EffectiveRule, st: TravelState, subj: Subject, now_ms: int, env: Env) -> list[AlertChange]:
        p: TravelParams = rule.params
        if p.clear_after_s is None:
            return []
        out = []
        for k, t in list(st.firing.items()):
            if now_ms - t >= p.clear_after_s * 1000:
                del st.firing[k]
                out.append(_emit(rule, subj, False, now_ms, k))
        return out

    def deadline(self, rule: EffectiveRule, st: TravelState, subj: Subject) -> int | None:
        p: TravelParams = rule.params
        if p.clear_after_s is None or not st.firing:
            return None
        return min(st.firing.values()) + int(p.clear_after_s * 1000)


# --- streaming quantile: the P² algorithm (Jain & Chlamtac, CACM 1985) ------------------------------------------
#
# Five markers (heights q, positions n, desired positions np) track one quantile of an unbounded stream in O(1)
# memory and time, with no stored samples: the middle marker is the estimate. The state is a dict of three lists
# of five floats, so it is JSON-native and survives a restart. The first five values are kept exactly (sorted).


def p2_add(m: dict[str, list[float]], p: float, x: float) -> None:
    """Feed ``x`` to the P² estimate ``m`` of the ``p`` quantile (``m`` starts as ``{}``)."""
    q = m.setdefault("q", [])
    if len(q) < 5:
        q.append(x)
        q.sort()
        if len(q) == 5:
            m["n"] = [0.0, 1.0, 2.0, 3.0, 4.0]
            m["np"] = [0.0, 2 * p, 4 * p, 2 + 2 * p, 4.0]
        return
    n, want = m["n"], m["np"]
    if x < q[0]:
        q[0], k = x, 0
    elif x >= q[4]:
        q[4], k = x, 3
    else:
        k = 0
        while k < 3 and x >= q[k + 1]:
            k += 1
    for i in range(k + 1, 5):
        n[i] += 1
    for i, step in enumerate((0.0, p / 2, p, (1 + p) / 2, 1.0)):
        want[i] += step
    for i in (1, 2, 3):
        d = want[i] - n[i]
        if (d >= 1 and n[i + 1] - n[i] > 1) or (d <= -1 and n[i - 1] - n[i] < -1):
            s = 1 if d > 0 else -1
            parabolic = q[i] + s / (n[i + 1] - n[i - 1]) * (
                (n[i] - n[i - 1] + s) * (q[i + 1] - q[i]) / (n[i + 1] - n[i])
                + (n[i + 1] - n[i] - s) * (q[i] - q[i - 1]) / (n[i] - n[i - 1])
            )
            if q[i - 1] < parabolic < q[i + 1]:
                q[i] = parabolic
            else:  # linear, when the parabola would overshoot a neighbour
                q[i] += s * (q[i + s] - q[i]) / (n[i + s] - n[i])
            n[i] += s


def p2_value(m: Mapping[str, list[float]], p: float) -> float | None:
    """The current estimate of the ``p`` quantile (exact while fewer than five values were seen)."""
    q = m.get("q")
    if not q:
        return None
    if len(q) < 5:
        return q[min(len(q) - 1, int(p * len(q)))]
    return q[2]


class _Demand(_Untimed):
    """Interval demand: the time-weighted mean of the rate (or value) over clock-aligned intervals.

    Each closed interval is judged (spike above quantile x factor; CUSUM of residuals against the hour-of-week
    baseline, in units of their learned standard deviation), then learned if it was normal and nothing fires, so an
    anomaly does not become the new normal. Judged on the first reading after the interval, no timers.
    """

    def evaluate(
        self, rule: EffectiveRule, st: DemandState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        p: DemandParams = rule.params
        taken = _sample(p.field, p.source, st, rec)
        if taken is None:
            return []
        prev_ts, judged = taken
        if judged is None:
            return []
        x = judged
        interval_ms = p.interval_s * 1000
        bucket = rec.ts_ms // interval_ms
        out: list[AlertChange] = []
        if st.bucket != bucket:
            if st.bucket is not None:
                out = self._close(rule, st, subj, rec.ts_ms, env)
            st.bucket, st.sum_x, st.weight_ms = bucket, 0.0, 0
        weight = rec.ts_ms - max(prev_ts, bucket * interval_ms) if prev_ts else 0
        if weight > 0:
            st.sum_x += x * weight
            st.weight_ms += weight
        return out

    def _close(self, rule: EffectiveRule, st: DemandState, subj: Subject, at_ms: int, env: Env) -> list[AlertChange]:
        p: DemandParams = rule.params
        assert st.bucket is not None
        interval_ms = p.interval_s * 1000
        if st.weight_ms < interval_ms / 2:  # too little data in the interval: not judged, not learned
            return []
        d = st.sum_x / st.weight_ms
        st.demand = d
        working, how, _ = env.hour_info(st.bucket * interval_ms, subj.region_path)
        ready = st.seen >= p.min_history
        spike, q = False, None
        if p.quantile is not None:
            q = p2_value(st.p2, p.quantile)
            spike = ready and q is not None and d > q * p.factor and d - q > p.absolute
        z, base = None, None
        if p.cusum_h is not None:
            base = bin_expected(st.bins, working, how, p.min_samples)
            if base is not None and ready and st.var > 0:
                z = (d - base) / math.sqrt(st.var)
                st.cusum = max(0.0, st.cusum + z - p.cusum_k)
        step = p.cusum_h is not None and st.cusum > p.cusum_h
        detail: dict[str, Any] = {"demand": round(d, 3), "interval_s": p.interval_s}
        if q is not None:
            detail.update(quantile=round(q, 3), limit=round(q * p.factor, 3))
        if base is not None:
            detail.update(baseline=round(base, 3), cusum=round(st.cusum, 2))
        if p.capacity_share is not None:
            contracted = p.contracted_kw if p.contracted_kw is not None else subj.contracted_kw
            if contracted is not None:
                limit = contracted * p.capacity_share
                spike = spike or d > limit  # above the capacity share: fires and holds off the clear like a spike
                detail.update(contracted_kw=contracted, limit=round(limit, 3), share=round(d / contracted, 3))
        if st.firing:
            # back to normal: ``clear_intervals`` in a row with no spike and (step test) their residuals back at
            # the baseline on average, not above it (the CUSUM itself would take as long to come down as it took
            # to go up; a mean within k sigmas would clear a small step by chance too often)
            if spike:
                st.normal, st.recent_z = 0, []
                return []
            st.normal += 1
            if z is not None:
                st.recent_z = [*st.recent_z, round(z, 3)][-p.clear_intervals :]
            if st.normal < p.clear_intervals or (st.recent_z and sum(st.recent_z) > 0):
                return []
            st.firing, st.normal, st.cusum, st.reason, st.recent_z = False, 0, 0.0, "", []
            return [_emit(rule, subj, False, at_ms, **detail)]
        if spike or step:
            reason = "capacity" if p.quantile is None and spike else "spike"
            st.firing, st.reason = True, "+".join(r for r, on in ((reason, spike), ("step", step)) if on)
            return [_emit(rule, subj, True, at_ms, reason=st.reason, **detail)]
        # learn only from normal intervals, so an anomaly does not become the new normal
        st.seen += 1
        if p.quantile is not None:
            p2_add(st.p2, p.quantile, d)
        if p.cusum_h is not None:
            if base is not None:
                st.var_n += 1
                st.var += max(1 / st.var_n, p.alpha) * ((d - base) ** 2 - st.var)
            bin_learn(st.bins, working, how, d, p.alpha)
        return []


class _ClockSkew(_Untimed):
    """The device's timestamp against the receive time: ``received_ms`` of the record when ingest provides it,
    else ``now`` of the evaluation (on the stream, that is when the record arrived). Records whose time was not
    set by the device (no ``ts``: ingest used its own clock) say nothing about the device's clock."""

    def evaluate(
        self, rule: EffectiveRule, st: ClockSkewState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        p: ClockSkewParams = rule.params
        if isinstance(rec, Status) or not rec.ts_from_device:
            return []
        received = getattr(rec, "received_ms", None)
        recv = received if isinstance(received, int) else now_ms
        skew_ms = rec.ts_ms - recv
        st.skew_s = round(skew_ms / 1000, 3)
        bad = (p.max_ahead_s is not None and skew_ms > p.max_ahead_s * 1000) or (
            p.max_behind_s is not None and -skew_ms > p.max_behind_s * 1000
        )
        if not st.firing:
            if not bad:
                st.streak, st.since_ms = 0, None
                return []
            st.streak += 1
            if st.since_ms is None:
                st.since_ms = recv
            if st.streak < p.count or recv - st.since_ms < p.for_s * 1000:
                return []
            st.firing, st.streak, st.since_ms = True, 0, None
            direction = "ahead" if skew_ms > 0 else "behind"
            return [_emit(rule, subj, True, recv, skew_s=st.skew_s, direction=direction, device_ts=rec.ts_ms)]
        if bad:
            st.streak = 0
            return []
        st.streak += 1
        if st.streak < p.count:
            return []
        st.firing, st.streak = False, 0
        return [_emit(rule, subj, False, recv, skew_s=st.skew_s)]


def _access(p: PassbackParams | StillInsideParams, rec: Record) -> tuple[str, str] | None:
    """(who, direction) of an access event the presence rule counts, or None."""
    if not isinstance(rec, Event) or match_record(p.match, rec) is not True:
        return None
    who, direction = rec.data.get(p.key), rec.data.get("direction")
    if who is None or direction not in ("in", "out"):
        return None
    return str(who), str(direction)


def _where(subj: Subject) -> presence.Where:
    return presence.Where(subj.device_id, subj.region_id, subj.region_path)


def _presence_alerts(rule: EffectiveRule, subj: Subject, changes: list[presence.Change]) -> list[AlertChange]:
    """Alert changes of a rule-scoped presence rule: about the gate each change names (one alert per person)."""
    out = []
    for c in changes:
        w = c.where
        at = replace(subj, device_id=w.device_id, region_id=w.region_id, region_path=w.region_path)
        out.append(_emit(rule, at, c.firing, c.at_ms, c.who, **c.detail))
    return out


class _Passback:
    """G3 anti-passback (alerts.kinds_presence)."""

    def evaluate(
        self, rule: EffectiveRule, st: presence.PassbackState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        got = _access(rule.params, rec)
        if got is None:
            return []
        changes = presence.passback_access(rule.params, st, _where(subj), got[0], got[1], rec.ts_ms)
        return _presence_alerts(rule, subj, changes)

    def tick(
        self, rule: EffectiveRule, st: presence.PassbackState, subj: Subject, now_ms: int, env: Env
    ) -> list[AlertChange]:
        return _presence_alerts(rule, subj, presence.passback_tick(rule.params, st, now_ms))

    def deadline(self, rule: EffectiveRule, st: presence.PassbackState, subj: Subject) -> int | None:
        return presence.passback_deadline(rule.params, st)


class _StillInside:
    """G10 still inside at close (alerts.kinds_presence)."""

    def evaluate(
        self, rule: EffectiveRule, st: presence.StillInsideState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        p: StillInsideParams = rule.params
        changes: list[presence.Change] = []
        got = _access(p, rec)
        if got is not None:
            changes = presence.still_inside_access(p, st, env.calendar, _where(subj), *got, rec.ts_ms, now_ms)
        if not isinstance(rec, Status):
            changes += presence.still_inside_seen(p, st, subj.region_id, rec.ts_ms)
        return _presence_alerts(rule, subj, changes)

    def tick(
        self, rule: EffectiveRule, st: presence.StillInsideState, subj: Subject, now_ms: int, env: Env
    ) -> list[AlertChange]:
        return _presence_alerts(rule, subj, presence.still_inside_tick(rule.params, st, now_ms))

    def deadline(self, rule: EffectiveRule, st: presence.StillInsideState, subj: Subject) -> int | None:
        return presence.still_inside_deadline(st)


class _Periodic(_Untimed):
    """E6 / E7 are judged over whole days and months from the telemetry store (alerts/energy_checks.py), never per
    record: ``route`` sends them nothing, so they cost nothing per message."""

    def evaluate(
        self, rule: EffectiveRule, st: PeriodicState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        return []


KINDS: dict[str, _Kind] = {
    "threshold": _Threshold(),
    "depot_exit": _DepotExit(),
    "utilisation": _Utilisation(),
    "overnight_lot": _OvernightLot(),
    "delta": _Delta(),
    "absence": _Absence(),
    "schedule": _Schedule(),
    "event_count": _EventCount(),
    "sequence": _Sequence(),
    "geofence": _Geofence(),
    "baseline": _Baseline(),
    "travel": _Travel(),
    "demand": _Demand(),
    "clock_skew": _ClockSkew(),
    "passback": _Passback(),
    "still_inside": _StillInside(),
    "submeter_balance": _Periodic(),
    "quota": _Periodic(),
}


# --- the public API --------------------------------------------------------------------------------------------


def evaluate(
    rule: EffectiveRule, state: State, subject: Subject, record: Record, *, now: datetime, env: Env
) -> list[AlertChange]:
    """Feed one record to one rule; returns the alert changes it causes (usually none)."""
    return KINDS[rule.kind].evaluate(rule, state, subject, record, ms(now), env)


def tick(rule: EffectiveRule, state: State, subject: Subject, *, now: datetime, env: Env) -> list[AlertChange]:
    """Let timers run out (absence, held-for, settle windows, quiet-time clears) at ``now``."""
    return KINDS[rule.kind].tick(rule, state, subject, ms(now), env)


def next_deadline(rule: EffectiveRule, state: State, subject: Subject) -> int | None:
    """Epoch ms at which ``tick`` may change something, or None."""
    return KINDS[rule.kind].deadline(rule, state, subject)


VEHICLE_KINDS = frozenset({"depot_exit", "utilisation", "overnight_lot"})  # alerts.kinds_vehicle


def applies(rule: EffectiveRule, subject: Subject) -> bool:
    """Can the rule ever matter for this device? False for V2 / V13 without the vehicle's depot / lot: the service
    leaves such a rule out of the device's plan (and a registry change that adds the place rebuilds the plan)."""
    kind = rule.kind
    if kind == "depot_exit":
        return subject.depot is not None
    if kind == "overnight_lot":
        return subject.lot is not None
    return True


def interested(rule: EffectiveRule, record: Record) -> bool:
    """Cheap pre-filter: can this record matter to the rule at all?"""
    kind = rule.kind
    if kind == "absence":
        return True
    if kind in VEHICLE_KINDS:
        return isinstance(record, Reading) and "lat" in record.fields
    p = rule.params
    if isinstance(record, Status):
        return False
    if kind == "clock_skew":
        return True
    if kind in ("threshold", "baseline", "demand"):
        return isinstance(record, Reading) and (
            p.field in record.fields or any(k in record.fields for k in getattr(p, "where", ()))
        )
    if kind == "delta":
        return isinstance(record, Event) or (isinstance(record, Reading) and p.field in record.fields)
    if kind == "geofence":
        return isinstance(record, Reading) and p.lat_field in record.fields
    return kind not in PERIODIC_KINDS


@dataclass(frozen=True, slots=True)
class Route:
    """Which records a rule needs: readings carrying one of ``fields`` (None: every reading), events, statuses."""

    fields: tuple[str, ...] | None
    events: bool
    statuses: bool = False


def route(rule: EffectiveRule) -> Route:
    """Precomputed routing, so a record only reaches the rules it can matter to (see ``interested``)."""
    kind, p = rule.kind, rule.params
    if kind == "absence":
        return Route(None, True, True)
    if kind in VEHICLE_KINDS:
        return Route(("lat",), False)  # one field only: a rule routed by two would run twice for a reading
    if kind == "threshold":
        return Route(None if p.where else (p.field,), False)
    if kind in ("baseline", "demand"):
        return Route((p.field,), False)
    if kind == "clock_skew":
        return Route(None, True)
    if kind == "delta":
        return Route((p.field,), p.reset_event is not None)
    if kind == "geofence":
        return Route((p.lat_field,), False)
    if kind == "schedule":
        return Route(None if p.match.field is not None or p.min_distance_m > 0 else (), p.match.event is not None)
    if kind == "event_count":
        return Route((p.match.field,) if p.match.field else (), p.match.event is not None)
    if kind in ("travel", "passback"):
        return Route((), True)
    if kind in PERIODIC_KINDS:
        return Route((), False)
    return Route(None, True)  # sequence: trigger and required may be readings or events


_ORDER_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def quiet_test(rule: EffectiveRule) -> tuple[str, Callable[[Any, Any], Any], Any] | None:
    """The fast path of a plain threshold rule (no ``where``, no ``suppress_during``, numeric limit, ordering
    operator), or None.

    Returns ``(field, op, limit)``. For a reading whose ``field`` value ``v`` is an ``int`` or ``float``, the rule's
    ``compare(op, v, limit)`` is exactly ``op(v, limit)``. When that is false and the state is quiet (not firing,
    no held-for / N-in-a-row window open, the reading not older than the last one), ``evaluate`` changes nothing
    but ``last_ts_ms`` and ``value`` and returns no change; the service does exactly that without calling it (see
    ``AlertService._evaluate``). Everything else goes through ``evaluate``.
    """
    if rule.kind != "threshold":
        return None
    p: ThresholdParams = rule.params
    fn = _ORDER_OPS.get(p.op)
    if fn is None or p.where or p.suppress_during is not None or type(p.value) not in (int, float):
        return None
    return (p.field, fn, p.value)


def quiet_threshold(rule: EffectiveRule) -> tuple[Callable[[Any, Any], Any], Any, bool] | None:
    """``quiet_test`` widened for the service's fast path: also ``==`` / ``!=`` (any value type) and rules with
    ``suppress_during``. Returns ``(op, limit, numbers_only)`` or None (a ``where`` rule, or a non-numeric limit of
    an ordering operator).

    For a reading of the rule's field whose value ``v`` passes the type test (``int`` / ``float`` when
    ``numbers_only``, else anything), ``compare(p.op, v, p.value)`` is exactly ``bool(op(v, limit))``. When that
    is false and the state is quiet (not firing, ``since_ms`` None, ``streak`` 0, the reading not older than the
    last one), ``evaluate`` only sets ``last_ts_ms``, ``seen_ms``, ``value`` and ``suppressed_ms = None`` (the
    window test is computed but unused), and returns no change; the service does exactly that."""
    if rule.kind != "threshold":
        return None
    p: ThresholdParams = rule.params
    if p.where:
        return None
    if p.op in ("==", "!="):
        return (operator.eq if p.op == "==" else operator.ne), p.value, False
    fn = _ORDER_OPS.get(p.op)
    if fn is None or type(p.value) not in (int, float):
        return None
    return fn, p.value, True


def evaluate_at(
    rule: EffectiveRule, state: State, subject: Subject, record: Record, now_ms: int, env: Env
) -> list[AlertChange]:
    """``evaluate`` with ``now`` already in epoch ms (the service's hot path)."""
    return KINDS[rule.kind].evaluate(rule, state, subject, record, now_ms, env)
