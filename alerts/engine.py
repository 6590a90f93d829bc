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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from alerts.calendar import Calendar, WorkingHours, beijing
from alerts.rules import (
    AbsenceParams,
    BaselineParams,
    DeltaParams,
    EffectiveRule,
    EventCountParams,
    GeofenceParams,
    Match,
    ScheduleParams,
    SequenceParams,
    ThresholdParams,
    TravelParams,
    compare,
)
from alerts.types import AlertChange
from core.protocol import Event, Reading, Record, Status

MAX_GROUPS = 1000  # per (rule, device): distinct credentials etc. kept
MAX_RECENT = 32


@dataclass(frozen=True, slots=True)
class Subject:
    """The device a rule is evaluated for, from the registry snapshot."""

    device_id: str
    device_type: str
    region_id: str
    region_path: tuple[str, ...] = ()
    expected_interval_s: float = 60
    site: tuple[float, float] | None = None  # (lat, lon) of the device's site, for impossible travel


@dataclass(slots=True)
class Env:
    """What rules may consult besides the record: the calendar with rosters and sealing periods."""

    calendar: Calendar = field(default_factory=Calendar)
    _hours: dict[tuple[int, tuple[str, ...]], tuple[bool, int, int]] = field(default_factory=dict, repr=False)

    def hour_info(self, ts_ms: int, region_path: tuple[str, ...]) -> tuple[bool, int, int]:
        """(working day?, hour of week 0..167, hour of day) in Beijing time, cached per hour."""
        key = (ts_ms // 3_600_000, region_path)
        hit = self._hours.get(key)
        if hit is None:
            if len(self._hours) > 50_000:
                self._hours.clear()
            local = beijing(from_ms(ts_ms))
            working = self.calendar.is_working_day(local.date(), region_path)
            hit = self._hours[key] = (working, local.weekday() * 24 + local.hour, local.hour)
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


def haversine_m(a: Sequence[float], b: Sequence[float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000 * math.asin(min(1.0, math.sqrt(h)))


def point_in_polygon(lat: float, lon: float, poly: Sequence[Sequence[float]]) -> bool:
    """Ray casting on (lat, lon) treated as planar: fine at city / province scale."""
    inside = False
    n = len(poly)
    j = n - 1
    for i in range(n):
        yi, xi = poly[i][0], poly[i][1]
        yj, xj = poly[j][0], poly[j][1]
        if (yi > lat) != (yj > lat) and lon < (xj - xi) * (lat - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


# --- states --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ThresholdState:
    firing: bool = False
    since_ms: int | None = None
    streak: int = 0
    last_ts_ms: int = 0
    known: dict[str, Any] = field(default_factory=dict)
    value: Any = None

    def essential(self) -> tuple[object, ...]:
        return (self.firing, self.since_ms, self.streak)


@dataclass(slots=True)
class DeltaState:
    firing: bool = False
    last_value: float | None = None
    last_ts_ms: int = 0
    changed_ms: int | None = None

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

    def essential(self) -> tuple[object, ...]:
        return (self.firing, self.since_ms)


@dataclass(slots=True)
class TravelState:
    seen: dict[str, list[Any]] = field(default_factory=dict)  # key -> [ts_ms, lat, lon, device_id]
    firing: dict[str, int] = field(default_factory=dict)  # key -> last fire ms

    def essential(self) -> tuple[object, ...]:
        return tuple(sorted(self.firing))


State = (
    ThresholdState
    | DeltaState
    | AbsenceState
    | ScheduleState
    | EventCountState
    | SequenceState
    | GeofenceState
    | BaselineState
    | TravelState
)
STATE_TYPES: dict[str, type[Any]] = {
    "threshold": ThresholdState,
    "delta": DeltaState,
    "absence": AbsenceState,
    "schedule": ScheduleState,
    "event_count": EventCountState,
    "sequence": SequenceState,
    "geofence": GeofenceState,
    "baseline": BaselineState,
    "travel": TravelState,
}
RULE_SCOPED = frozenset({"travel"})  # one state per rule (across devices), not per (rule, device)


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
        st.last_ts_ms = rec.ts_ms
        v = rec.fields[p.field]
        st.value = v
        where_ok = all(st.known.get(k) == w for k, w in p.where.items())
        cond = where_ok and compare(p.op, v, p.value)
        if st.firing:
            if self._clear(p, v, cond, where_ok):
                return self._reset(rule, st, subj, rec.ts_ms)
            return []
        if not cond:
            st.streak, st.since_ms = 0, None
            return []
        st.streak += 1
        if st.since_ms is None:
            st.since_ms = rec.ts_ms
        if st.streak >= p.count and rec.ts_ms - st.since_ms >= p.for_s * 1000:
            return self._fire(rule, st, subj, rec.ts_ms)
        return []

    def _fire(self, rule: EffectiveRule, st: ThresholdState, subj: Subject, at_ms: int) -> list[AlertChange]:
        st.firing = True
        p: ThresholdParams = rule.params
        return [_emit(rule, subj, True, at_ms, value=st.value, threshold=p.value, since=st.since_ms)]

    def _reset(self, rule: EffectiveRule, st: ThresholdState, subj: Subject, at_ms: int) -> list[AlertChange]:
        was = st.firing
        st.firing, st.streak, st.since_ms = False, 0, None
        return [_emit(rule, subj, False, at_ms, value=st.value)] if was else []

    def tick(self, rule: EffectiveRule, st: ThresholdState, subj: Subject, now_ms: int, env: Env) -> list[AlertChange]:
        due = self.deadline(rule, st, subj)
        if due is not None and now_ms >= due:
            return self._fire(rule, st, subj, now_ms)
        return []

    def deadline(self, rule: EffectiveRule, st: ThresholdState, subj: Subject) -> int | None:
        p: ThresholdParams = rule.params
        if st.firing or st.since_ms is None or st.streak < p.count:
            return None
        return st.since_ms + int(p.for_s * 1000)


class _Delta:
    def evaluate(
        self, rule: EffectiveRule, st: DeltaState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        p: DeltaParams = rule.params
        if isinstance(rec, Event):
            if p.reset_event is not None and rec.type == p.reset_event:
                st.last_value, st.changed_ms = None, None
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
            st.changed_ms = rec.ts_ms
            return []
        if p.flat_s is not None:
            if v != prev:
                st.changed_ms = rec.ts_ms
                if st.firing:
                    st.firing = False
                    return [_emit(rule, subj, False, rec.ts_ms, value=v)]
                return []
            changed = st.changed_ms if st.changed_ms is not None else rec.ts_ms
            if not st.firing and rec.ts_ms - changed >= p.flat_s * 1000:
                st.firing = True
                return [_emit(rule, subj, True, rec.ts_ms, value=v, flat_since=changed)]
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

    def tick(self, rule: EffectiveRule, st: DeltaState, subj: Subject, now_ms: int, env: Env) -> list[AlertChange]:
        return []

    def deadline(self, rule: EffectiveRule, st: DeltaState, subj: Subject) -> int | None:
        return None


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
        if st.last_seen_ms is None or rec.ts_ms > st.last_seen_ms:
            st.last_seen_ms = rec.ts_ms
        if st.firing:
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
        at = from_ms(rec.ts_ms)
        cal = env.calendar
        if cal.on_duty(_who(rec, p.roster_keys, subj), at, subj.region_path):
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
        if any(_edge(m, rec, st.edges, f"r{i}") for i, m in enumerate(p.required)):
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
        st.last_ts_ms = rec.ts_ms
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
        return st.since_ms + int(p.min_outside_s * 1000)


class _Baseline:
    @staticmethod
    def expected(st: BaselineState, working: bool, how: int, min_samples: int) -> float | None:
        """The learned value of an hour-of-week bin; falls back to the same hour on other days of its class."""
        w = "1" if working else "0"
        b = st.bins.get(f"{w}:{how}")
        if b is not None and b[1] >= min_samples:
            return b[0]
        hour = how % 24
        tot = n = 0.0
        for day in range(7):
            o = st.bins.get(f"{w}:{day * 24 + hour}")
            if o is not None:
                tot += o[0] * o[1]
                n += o[1]
        return tot / n if n >= min_samples else None

    def evaluate(
        self, rule: EffectiveRule, st: BaselineState, subj: Subject, rec: Record, now_ms: int, env: Env
    ) -> list[AlertChange]:
        p: BaselineParams = rule.params
        if not isinstance(rec, Reading) or p.field not in rec.fields or rec.ts_ms <= st.last_ts_ms:
            return []
        raw = rec.fields[p.field]
        if isinstance(raw, bool):
            return []
        v = float(raw)
        prev, prev_ts = st.last_value, st.last_ts_ms
        st.last_value, st.last_ts_ms = v, rec.ts_ms
        if p.source == "rate_per_hour":
            if prev is None or v < prev:
                return []
            x = (v - prev) / ((rec.ts_ms - prev_ts) / 3_600_000)
        else:
            x = v
        working, how, hour = env.hour_info(rec.ts_ms, subj.region_path)
        applies = (p.days == "any" or (p.days == "working") == working) and (
            p.hours is None or p.hours[0] <= hour < p.hours[1]
        )
        base = self.expected(st, working, how, p.min_samples)
        st.baseline = base
        cond = applies and base is not None and x > base * (1 + p.relative) and x - base > p.absolute
        st.cond = cond
        out: list[AlertChange] = []
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
            key = f"{'1' if working else '0'}:{how}"
            b = st.bins.get(key)
            if b is None:
                st.bins[key] = [x, 1.0]
            else:
                b[1] += 1
                b[0] += max(1 / b[1], p.alpha) * (x - b[0])
        return out

    def tick(self, rule: EffectiveRule, st: BaselineState, subj: Subject, now_ms: int, env: Env) -> list[AlertChange]:
        due = self.deadline(rule, st, subj)
        if due is not None and now_ms >= due:
            st.firing = True
            return [_emit(rule, subj, True, now_ms, value=st.last_value, baseline=st.baseline)]
        return []

    def deadline(self, rule: EffectiveRule, st: BaselineState, subj: Subject) -> int | None:
        p: BaselineParams = rule.params
        if st.firing or not st.cond or st.since_ms is None:
            return None
        return st.since_ms + int(p.for_s * 1000)


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


KINDS: dict[str, _Kind] = {
    "threshold": _Threshold(),
    "delta": _Delta(),
    "absence": _Absence(),
    "schedule": _Schedule(),
    "event_count": _EventCount(),
    "sequence": _Sequence(),
    "geofence": _Geofence(),
    "baseline": _Baseline(),
    "travel": _Travel(),
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


def interested(rule: EffectiveRule, record: Record) -> bool:
    """Cheap pre-filter: can this record matter to the rule at all?"""
    kind = rule.kind
    if kind == "absence":
        return True
    p = rule.params
    if isinstance(record, Status):
        return False
    if kind in ("threshold", "baseline"):
        return isinstance(record, Reading) and (
            p.field in record.fields or any(k in record.fields for k in getattr(p, "where", ()))
        )
    if kind == "delta":
        return isinstance(record, Event) or (isinstance(record, Reading) and p.field in record.fields)
    if kind == "geofence":
        return isinstance(record, Reading) and p.lat_field in record.fields
    return True


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
    if kind == "threshold":
        return Route(None if p.where else (p.field,), False)
    if kind == "baseline":
        return Route((p.field,), False)
    if kind == "delta":
        return Route((p.field,), p.reset_event is not None)
    if kind == "geofence":
        return Route((p.lat_field,), False)
    if kind == "schedule":
        return Route(None if p.match.field is not None or p.min_distance_m > 0 else (), p.match.event is not None)
    if kind == "event_count":
        return Route((p.match.field,) if p.match.field else (), p.match.event is not None)
    if kind == "travel":
        return Route((), True)
    return Route(None, True)  # sequence: trigger and required may be readings or events


_ORDER_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def quiet_test(rule: EffectiveRule) -> tuple[str, Callable[[Any, Any], Any], Any] | None:
    """The fast path of a plain threshold rule (no ``where``, numeric limit, ordering operator), or None.

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
    if fn is None or p.where or type(p.value) not in (int, float):
        return None
    return (p.field, fn, p.value)


def evaluate_at(
    rule: EffectiveRule, state: State, subject: Subject, record: Record, now_ms: int, env: Env
) -> list[AlertChange]:
    """``evaluate`` with ``now`` already in epoch ms (the service's hot path)."""
    return KINDS[rule.kind].evaluate(rule, state, subject, record, now_ms, env)
