"""``group``: enough alerts in one scope within a window (X4 outage, X5 regional cluster, X9 alarm storm).

The alerts matching ``members`` in one scope region (and, with ``group_by``, of one rule or one device) are kept
for ``window_s``. An incident opens when, inside the window, there are at least ``min_alerts`` distinct alerts,
``min_fires`` fires (a fire: the alert raised, repeated or flapping), ``min_devices`` distinct devices and
``min_buildings`` distinct buildings. While it is open, every further matching alert of the scope joins it.
``open_only``: an alert leaves the window when it resolves (X4: devices offline *together*). ``escalate_to``:
while the incident is still open (nobody investigating) ``escalate_after_s`` after it opened, its scope is raised
to that level (X5: the city, then the province).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from joint.kinds.base import AlertFact, Entry, Hit, building_of, ms
from joint.models import ScopeLevel
from joint.patterns import EffectivePattern, Members

MAX_ENTRIES = 10_000  # per key: a storm beyond this keeps the newest


class GroupParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min_alerts: int = Field(default=1, ge=1)
    min_fires: int = Field(default=0, ge=0)
    min_devices: int = Field(default=1, ge=1)
    min_buildings: int = Field(default=1, ge=1)
    group_by: list[Literal["rule", "device"]] = Field(default_factory=list)
    open_only: bool = False
    escalate_to: ScopeLevel | None = None
    escalate_after_s: float | None = Field(default=None, gt=0)


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

    def observe(
        self,
        p: EffectivePattern,
        fact: AlertFact,
        scope: tuple[str, ...],
        state: dict[str, Any],
        levels: Mapping[str, str],
        now: datetime,
    ) -> list[Hit]:
        gp: GroupParams = p.params
        key = self.key(p, fact, scope)
        assert key is not None
        windows: dict[str, Any] = state.setdefault("windows", {})
        slot = windows.setdefault(key, {"scope": list(scope), "entries": []})
        entries = [Entry.load(e) for e in slot["entries"]]
        horizon = ms(now) - int(p.window_s * 1000)
        entries = [e for e in entries if e.at_ms >= horizon]
        for e in entries:
            if e.alert_id == fact.alert_id:
                e.fires += 1
                e.at_ms = ms(fact.at)
                e.open = True
                break
        else:
            entries.append(Entry.of(fact, building_of(fact.region_path, levels)))
        entries = entries[-MAX_ENTRIES:]
        slot["entries"] = [e.dump() for e in entries]
        if not _qualifies(gp, entries):
            return []
        return [
            Hit(
                key,
                scope,
                tuple(entries),
                {
                    "alerts": len(entries),
                    "devices": len({e.device_id for e in entries}),
                    "buildings": len({e.building for e in entries}),
                    "fires": sum(e.fires for e in entries),
                    "rules": sorted({e.rule_id for e in entries}),
                },
            )
        ]

    def resolved(self, p: EffectivePattern, alert_id: int, state: dict[str, Any]) -> None:
        gp: GroupParams = p.params
        for slot in state.get("windows", {}).values():
            entries = [Entry.load(e) for e in slot["entries"]]
            if not any(e.alert_id == alert_id for e in entries):
                continue
            if gp.open_only:
                entries = [e for e in entries if e.alert_id != alert_id]
            else:
                for e in entries:
                    if e.alert_id == alert_id:
                        e.open = False
            slot["entries"] = [e.dump() for e in entries]

    def tick(self, pattern: Any, state: dict[str, Any], now: datetime) -> list[Hit]:
        windows: dict[str, Any] = state.get("windows", {})
        for key in list(windows):
            p: EffectivePattern = pattern(tuple(windows[key]["scope"]))
            horizon = ms(now) - int(p.window_s * 1000)
            kept = [e for e in windows[key]["entries"] if e[5] >= horizon]
            if kept:
                windows[key]["entries"] = kept
            else:
                del windows[key]
        return []


def _qualifies(gp: GroupParams, entries: list[Entry]) -> bool:
    if len(entries) < gp.min_alerts:
        return False
    if sum(e.fires for e in entries) < gp.min_fires:
        return False
    if len({e.device_id for e in entries}) < gp.min_devices:
        return False
    return len({e.building for e in entries}) >= gp.min_buildings
