"""Presence in an area from access events with a direction: the rule kinds ``passback`` (G3) and ``still_inside``
(G10). Pure: no I/O, no clock (every call takes the record's time or ``now``); ``alerts.engine`` adapts them to
its kind protocol and turns each :class:`Change` into an alert change.

Both are rule-scoped (one state per rule across every gate): a person enters at one door of a building and leaves
at another. People are keyed by ``area`` (the rule's ``area`` param, else the gate's region) and ``key`` (the
credential). States are dataclasses of JSON-native fields, restored across a restart like every other state.

- passback: an ``in`` after an ``in`` (entered an area never left), or an ``out`` after an ``out`` (left an area
  never entered), the earlier one within ``presence_timeout_s``; an older presence is forgotten (no alert, and no
  alert for a first sighting: nothing is known then). Soft mode logs (raised and resolved at once); hard mode
  stays open until ``clear_after_s`` of quiet for that credential, or by hand.
- still_inside: an ``in`` opens a presence due at the building's next close (the end of its open hours on an
  open day of the calendar) plus ``grace_s``; an ``out`` ends it and clears a firing alert. It fires when device
  time in the same area passes the due time (any record of a gate of the area: a backlog arrives in order), or
  when the engine's clock passes it (plus how late the entry arrived).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from alerts.calendar import BEIJING, Calendar, WorkingHours
from alerts.rules import PassbackParams, StillInsideParams

MAX_PRESENCE = 20_000  # remembered (area, person) pairs per rule; the oldest are dropped beyond it
SEP = "\x1f"  # between area and person in a key
CLOSE_HORIZON_DAYS = 15  # the next close is looked for this many days ahead (the longest official holidays: 8 days)


@dataclass(frozen=True, slots=True)
class Where:
    """The gate a change is about."""

    device_id: str
    region_id: str
    region_path: tuple[str, ...]

    def as_list(self) -> list[Any]:
        return [self.device_id, self.region_id, list(self.region_path)]

    @staticmethod
    def of(row: list[Any]) -> Where:
        return Where(str(row[0]), str(row[1]), tuple(row[2]))


@dataclass(frozen=True, slots=True)
class Change:
    """Raise (``firing``) or resolve the alert of person ``who`` at ``at_ms``."""

    firing: bool
    at_ms: int
    who: str
    where: Where
    detail: dict[str, object]


def area_of(area: str | None, region_id: str) -> str:
    return area if area is not None else region_id


def _trim(d: dict[str, Any], limit: int) -> None:
    """Drop the oldest entries (insertion order) beyond ``limit``."""
    extra = len(d) - limit
    if extra > 0:
        for k in list(d)[:extra]:
            del d[k]


# --- passback (G3) ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PassbackState:
    last: dict[str, list[Any]] = field(default_factory=dict)  # "area\x1fwho" -> [ts_ms, direction]
    firing: dict[str, list[Any]] = field(default_factory=dict)  # who -> [last violation ms, *Where] (hard mode)

    def essential(self) -> tuple[object, ...]:
        return tuple(sorted(self.firing))


def passback_access(
    p: PassbackParams, st: PassbackState, where: Where, who: str, direction: str, ts_ms: int
) -> list[Change]:
    """One granted access of ``who`` in ``direction`` (in / out) at the gate ``where``."""
    area = area_of(p.area, where.region_id)
    k = f"{area}{SEP}{who}"
    prev = st.last.get(k)
    if prev is not None and ts_ms <= prev[0]:
        return []  # an older or repeated record says nothing about the order
    st.last.pop(k, None)
    st.last[k] = [ts_ms, direction]  # re-inserted: the dict stays in time order for _trim
    _trim(st.last, MAX_PRESENCE)
    if prev is None or ts_ms - prev[0] > p.presence_timeout_s * 1000 or prev[1] != direction:
        return []
    detail: dict[str, object] = {
        "area": area,
        "direction": direction,
        "previous_ms": prev[0],
        "violation": "entered twice" if direction == "in" else "left twice",
        "mode": p.mode,
    }
    fire = Change(True, ts_ms, who, where, detail)
    if p.mode == "soft":
        return [fire, Change(False, ts_ms, who, where, {"reason": "logged", "mode": "soft"})]
    st.firing[who] = [ts_ms, *where.as_list()]
    return [fire]


def passback_tick(p: PassbackParams, st: PassbackState, now_ms: int) -> list[Change]:
    if p.clear_after_s is None:
        return []
    out = []
    for who, row in list(st.firing.items()):
        if now_ms - row[0] >= p.clear_after_s * 1000:
            del st.firing[who]
            out.append(Change(False, now_ms, who, Where.of(row[1:]), {"reason": "quiet"}))
    return out


def passback_deadline(p: PassbackParams, st: PassbackState) -> int | None:
    if p.clear_after_s is None or not st.firing:
        return None
    return int(min(row[0] for row in st.firing.values())) + int(p.clear_after_s * 1000)


# --- still inside at close (G10) -------------------------------------------------------------------------------


@dataclass(slots=True)
class StillInsideState:
    # area -> who -> [entered ms, due ms (device time), lag ms, firing, *Where]
    inside: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # area -> newest device time seen at its gates
    next_due: dict[str, int] = field(default_factory=dict)  # area -> earliest due of its presences not firing
    # What the service persists with the batch and re-arms on: alerts raised and resolved (a count) and the earliest
    # deadline. Presences themselves are learning state (written in chunks): a busy gate does not rewrite them all
    # with every access. ``earliest`` may run early after an exit (the tick finds nothing and re-arms exactly).
    fired: int = 0
    earliest: int | None = None

    def essential(self) -> tuple[object, ...]:
        return (self.fired, self.earliest)


def close_due_ms(p: StillInsideParams, cal: Calendar, entered_ms: int, region_path: tuple[str, ...]) -> int:
    """When a presence that began at ``entered_ms`` is overdue: the first close + ``grace_s`` after the entry (a
    close: the end of the open hours of an open day, today included). An entry later than that, or on a day off,
    is judged at the next close (being in the building while it is closed is G5's business)."""
    hours = WorkingHours.parse(p.open_hours.hours)
    local = datetime.fromtimestamp(entered_ms / 1000, BEIJING)
    grace_ms = int(p.grace_s * 1000)
    for offset in range(-1, CLOSE_HORIZON_DAYS):  # from the day before: an overnight window may end today
        day = local.date() + timedelta(days=offset)
        if not _open_day(p, cal, day, region_path):
            continue
        start = datetime.combine(day, hours.start, BEIJING)
        end = datetime.combine(day, hours.end, BEIJING)
        if end <= start:
            end += timedelta(days=1)
        if int(end.timestamp() * 1000) + grace_ms > entered_ms:  # inside at that close + grace
            return int(end.timestamp() * 1000) + grace_ms
    return entered_ms + grace_ms  # no open day ahead (a long holiday): judged after the grace


def _open_day(p: StillInsideParams, cal: Calendar, day: date, region_path: tuple[str, ...]) -> bool:
    days = p.open_hours.days
    return days == "any" or cal.is_working_day(day, region_path) == (days == "working")


def still_inside_access(
    p: StillInsideParams,
    st: StillInsideState,
    cal: Calendar,
    where: Where,
    who: str,
    direction: str,
    ts_ms: int,
    now_ms: int,
) -> list[Change]:
    """One granted access: ``in`` opens a presence (resolving one still firing: its exit was missed), ``out``
    ends it (resolving its alert)."""
    area = area_of(p.area, where.region_id)
    people = st.inside.setdefault(area, {})
    prev = people.get(who)
    if prev is not None and ts_ms <= prev[0]:
        return []  # older than the presence we know
    out: list[Change] = []
    if prev is not None:
        del people[who]
        if prev[3]:
            st.fired += 1
            reason = "left" if direction == "out" else "entered again"
            out.append(Change(False, ts_ms, who, Where.of(prev[4:]), {"reason": reason, "area": area}))
    if direction == "in":
        due = close_due_ms(p, cal, ts_ms, where.region_path)
        lag = max(0, now_ms - ts_ms)
        people[who] = [ts_ms, due, lag, False, *where.as_list()]
        _trim(people, MAX_PRESENCE)
        st.next_due[area] = min(due, st.next_due.get(area, due))
        st.earliest = due + lag if st.earliest is None else min(st.earliest, due + lag)
    return out


def still_inside_seen(p: StillInsideParams, st: StillInsideState, region_id: str, ts_ms: int) -> list[Change]:
    """Any record of a gate of the area: device time there has reached ``ts_ms``; overdue presences fire."""
    area = area_of(p.area, region_id)
    if ts_ms <= st.seen.get(area, 0):
        return []
    st.seen[area] = ts_ms
    if ts_ms < st.next_due.get(area, ts_ms + 1):
        return []
    return _overdue(p, st, lambda row: row[1] <= ts_ms, area)


def still_inside_tick(p: StillInsideParams, st: StillInsideState, now_ms: int) -> list[Change]:
    out: list[Change] = []
    for area in list(st.inside):
        out.extend(_overdue(p, st, lambda row: row[1] + row[2] <= now_ms, area))
    return out


def _overdue(p: StillInsideParams, st: StillInsideState, due: Any, area: str) -> list[Change]:
    people = st.inside.get(area)
    if not people:
        return []
    out: list[Change] = []
    forget_ms = int(p.forget_s * 1000)
    newest = st.seen.get(area, 0)
    for who, row in list(people.items()):
        if row[3]:
            if newest - row[0] > forget_ms:
                del people[who]  # the alert stays open (resolved by hand): nobody saw them leave
            continue
        if due(row):
            row[3] = True
            st.fired += 1
            detail: dict[str, object] = {"area": area, "entered_ms": row[0], "due_ms": row[1]}
            out.append(Change(True, row[1], who, Where.of(row[4:]), detail))
    waiting = [row[1] for row in people.values() if not row[3]]
    if waiting:
        st.next_due[area] = min(waiting)
    else:
        st.next_due.pop(area, None)
    if not people:
        del st.inside[area]
    if out:
        st.earliest = still_inside_deadline(st)
    return out


def still_inside_deadline(st: StillInsideState) -> int | None:
    due = [int(row[1]) + int(row[2]) for people in st.inside.values() for row in people.values() if not row[3]]
    return min(due) if due else None
