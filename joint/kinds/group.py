"""``group``: enough alerts in one scope within a window (X4 outage, X5 regional cluster, X9 alarm storm).

The alerts matching ``members`` in one scope region (and, with ``group_by``, of one rule or one device) are kept
for ``window_s``. An incident opens when, inside the window, there are at least ``min_alerts`` distinct alerts,
``min_fires`` fires (a fire: the alert raised, repeated or flapping), ``min_devices`` distinct devices and
``min_buildings`` distinct buildings. The window's alerts become its members and the window starts afresh; while
the incident is open every further matching alert of the scope joins it (the correlator), and once it is over,
counting starts again. ``open_only``: an alert leaves the window when it resolves (X4: devices offline
*together*). ``escalate_to``: while the incident is still open (nobody investigating) ``escalate_after_s`` after
it opened, its scope is raised to that level (X5: the city, then the province; ``Correlator.tick``).

Each window is kept in memory ordered by last fire, with running counts, so a fire costs O(1) however many alerts
the window holds (a storm of 10,000); ``dump`` / ``load`` turn it into JSON for the store. A heap of the windows'
next expiry (their oldest entry's time + ``window_s``) lets a tick visit only the windows that have entries to drop,
not every window (X9 keeps one per device that fired: 10,000 with 10,000 open alerts, every second, under the
service's lock that the alert path's correlation waits for). It is not stored: the first tick after a load visits
every window once and builds it.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from joint.kinds.base import AlertFact, Changed, Entry, Hit, KindParams, building_of, mark, ms
from joint.models import ScopeLevel
from joint.patterns import EffectivePattern, Members

MAX_ENTRIES = 10_000  # per window: a storm beyond this keeps the newest


class GroupParams(KindParams):
    min_alerts: int = Field(default=1, ge=1)
    min_fires: int = Field(default=0, ge=0)
    min_devices: int = Field(default=1, ge=1)
    min_buildings: int = Field(default=1, ge=1)
    group_by: list[Literal["rule", "device"]] = Field(default_factory=list)
    open_only: bool = False
    escalate_to: ScopeLevel | None = None
    escalate_after_s: float | None = Field(default=None, gt=0)


@dataclass(slots=True)
class _Window:
    scope: tuple[str, ...]
    entries: dict[int, Entry] = field(default_factory=dict)  # alert id -> entry, oldest last fire first
    devices: Counter[str] = field(default_factory=Counter)
    buildings: Counter[str] = field(default_factory=Counter)
    fires: int = 0

    def add(self, e: Entry) -> None:
        self.entries[e.alert_id] = e
        self.devices[e.device_id] += 1
        self.buildings[e.building] += 1
        self.fires += e.fires

    def drop(self, alert_id: int) -> Entry | None:
        e = self.entries.pop(alert_id, None)
        if e is not None:
            for counter, k in ((self.devices, e.device_id), (self.buildings, e.building)):
                counter[k] -= 1
                if counter[k] <= 0:
                    del counter[k]
            self.fires -= e.fires
        return e

    def prune(self, horizon_ms: int) -> list[int]:
        """Drop the entries whose last fire is before ``horizon_ms``: O(dropped), not O(window) (no copy)."""
        gone = []
        for alert_id, e in self.entries.items():
            if e.at_ms >= horizon_ms:
                break
            gone.append(alert_id)
        for alert_id in gone:
            self.drop(alert_id)
        return gone


class GroupKind:
    params_model: type[BaseModel] = GroupParams

    def member_conditions(self, params: Any) -> list[tuple[str, Members]]:
        return []

    def key(self, p: EffectivePattern, fact: AlertFact, scope: tuple[str, ...]) -> str | None:
        gp: GroupParams = p.params
        parts = [p.id, scope[-1]]
        if "rule" in gp.group_by:
            parts.append(fact.rule_id)
        if "device" in gp.group_by:
            parts.append(fact.device_id)
        return "|".join(parts)

    @staticmethod
    def _schedule(state: dict[str, Any], key: str, w: _Window, window_ms: int) -> None:
        """Note when ``w``'s oldest entry leaves it (at least one entry: entries older than now - window go). Only
        an earlier time than the one already noted is pushed, so the heap holds about one item per window."""
        due: list[tuple[int, str]] | None = state.get("due")
        if due is None or not w.entries:
            return  # unscheduled (after a load): the next tick visits every window and schedules them
        at = next(iter(w.entries.values())).at_ms + window_ms + 1
        due_at: dict[str, int] = state["due_at"]
        current = due_at.get(key)
        if current is None or at < current:
            due_at[key] = at
            heapq.heappush(due, (at, key))

    @staticmethod
    def _state(state: dict[str, Any]) -> tuple[dict[str, _Window], dict[int, set[str]]]:
        windows: dict[str, _Window] = state.setdefault("windows", {})
        by_alert: dict[int, set[str]] = state.setdefault("by_alert", {})
        return windows, by_alert

    def observe(
        self,
        p: EffectivePattern,
        fact: AlertFact,
        scope: tuple[str, ...],
        state: dict[str, Any],
        levels: Mapping[str, str],
        now: datetime,
        changed: Changed | None = None,
    ) -> list[Hit]:
        gp: GroupParams = p.params
        key = self.key(p, fact, scope)
        assert key is not None
        if "windows" not in state:
            mark(changed, "")
        windows, by_alert = self._state(state)
        mark(changed, key)  # added to, and emptied on a hit
        w = windows.get(key)
        if w is None:
            w = windows[key] = _Window(scope)
        self._forget(key, w.prune(ms(now) - int(p.window_s * 1000)), by_alert)
        e = w.drop(fact.alert_id)
        if e is not None:
            e.fires += 1
            e.at_ms = ms(fact.at)
            e.open = True
        else:
            e = Entry.of(fact, building_of(fact.region_path, levels))
        w.add(e)
        by_alert.setdefault(fact.alert_id, set()).add(key)
        while len(w.entries) > MAX_ENTRIES:
            self._forget(key, [next(iter(w.entries))], by_alert)
            w.drop(next(iter(w.entries)))
        self._schedule(state, key, w, int(p.window_s * 1000))
        if not (
            len(w.entries) >= gp.min_alerts
            and w.fires >= gp.min_fires
            and len(w.devices) >= gp.min_devices
            and len(w.buildings) >= gp.min_buildings
        ):
            return []
        members = tuple(w.entries.values())
        detail = {
            "alerts": len(members),
            "devices": len(w.devices),
            "buildings": len(w.buildings),
            "fires": w.fires,
            "rules": sorted({m.rule_id for m in members}),
        }
        del windows[key]  # the incident owns these alerts; counting starts afresh
        self._forget(key, [m.alert_id for m in members], by_alert)
        return [Hit(key, scope, members, detail)]

    @staticmethod
    def _forget(key: str, alert_ids: list[int], by_alert: dict[int, set[str]]) -> None:
        for alert_id in alert_ids:
            keys = by_alert.get(alert_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del by_alert[alert_id]

    def resolved(
        self, p: EffectivePattern, alert_id: int, state: dict[str, Any], changed: Changed | None = None
    ) -> None:
        gp: GroupParams = p.params
        windows, by_alert = self._state(state)
        for key in list(by_alert.get(alert_id, ())):
            w = windows.get(key)
            if w is None:
                continue
            if gp.open_only:
                w.drop(alert_id)
                self._forget(key, [alert_id], by_alert)
                if not w.entries:
                    del windows[key]
                mark(changed, key)
            elif alert_id in w.entries and w.entries[alert_id].open:
                w.entries[alert_id].open = False
                mark(changed, key)

    def tick(self, pattern: Any, state: dict[str, Any], now: datetime, changed: Changed | None = None) -> list[Hit]:
        # Runs under the service's lock every tick: only the windows whose oldest entry has expired are visited
        # (the heap of ``_schedule``); the first tick after a load visits all of them once and builds the heap.
        windows, by_alert = self._state(state)
        now_ms = ms(now)
        spans: dict[tuple[str, ...], int] = {}

        def span(scope: tuple[str, ...]) -> int:
            got = spans.get(scope)
            if got is None:
                p: EffectivePattern = pattern(scope)
                got = spans[scope] = int(p.window_s * 1000)
            return got

        if state.get("due") is None:
            state["due"], state["due_at"] = [], {}
            for key in list(windows):
                self._expire(key, windows, by_alert, state, now_ms, span, changed)
            return []
        due: list[tuple[int, str]] = state["due"]
        due_at: dict[str, int] = state["due_at"]
        while due and due[0][0] <= now_ms:
            at, key = heapq.heappop(due)
            if due_at.get(key) != at:
                continue  # superseded by an earlier time, or already visited
            del due_at[key]
            self._expire(key, windows, by_alert, state, now_ms, span, changed)
        return []

    def _expire(
        self,
        key: str,
        windows: dict[str, _Window],
        by_alert: dict[int, set[str]],
        state: dict[str, Any],
        now_ms: int,
        span: Callable[[tuple[str, ...]], int],
        changed: Changed | None,
    ) -> None:
        w = windows.get(key)
        if w is None:
            return
        window_ms = span(w.scope)
        gone = w.prune(now_ms - window_ms)
        if gone:
            self._forget(key, gone, by_alert)
            mark(changed, key)
        if not w.entries:
            del windows[key]
            mark(changed, key)
        else:
            self._schedule(state, key, w, window_ms)

    def dump(self, state: dict[str, Any]) -> dict[str, Any]:
        windows, _ = self._state(state)
        return {
            "windows": {
                k: {"scope": list(w.scope), "entries": [e.dump() for e in w.entries.values()]}
                for k, w in windows.items()
            }
        }

    def dump_part(self, state: dict[str, Any], key: str) -> Any:
        if not key:
            return {"windows": {}}
        w = state.get("windows", {}).get(key)
        return None if w is None else {"scope": list(w.scope), "entries": [e.dump() for e in w.entries.values()]}

    def load(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        windows: dict[str, _Window] = {}
        by_alert: dict[int, set[str]] = {}
        for key, slot in dict(doc.get("windows", {})).items():
            w = _Window(tuple(slot["scope"]))
            for raw in slot["entries"]:
                e = Entry.load(raw)
                w.add(e)
                by_alert.setdefault(e.alert_id, set()).add(key)
            windows[key] = w
        return {"windows": windows, "by_alert": by_alert}
