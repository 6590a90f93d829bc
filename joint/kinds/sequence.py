"""``sequence``: an alert of one kind with alerts of another around it in the same scope (X1, X2).

``first`` and ``then`` are member conditions. With ``order: after`` a ``then`` alert must come within
``window_s`` after a ``first`` alert (X1: after-hours entry, then energy above baseline); with ``order: any``
within ``window_s`` either side (X2: a forced door and other door / motion alerts). ``other_device``: the ``then``
alert must come from another device than the ``first`` one. ``min_then``: how many ``then`` alerts are needed.
The pattern's own ``members`` must hold for both (leave it empty to use only ``first`` / ``then``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from joint.kinds.base import (
    AlertFact,
    Changed,
    Entry,
    Hit,
    JsonWindows,
    KindParams,
    entry_of,
    mark,
    matches,
    ms,
    since,
)
from joint.patterns import EffectivePattern, Members

MAX_ENTRIES = 1000


class SequenceParams(KindParams):
    first: Members
    then: Members
    order: Literal["after", "any"] = "after"
    other_device: bool = False
    min_then: int = Field(default=1, ge=1)


class SequenceKind(JsonWindows):
    params_model: type[BaseModel] = SequenceParams

    def member_conditions(self, params: Any) -> list[tuple[str, Members]]:
        sp: SequenceParams = params
        return [("first", sp.first), ("then", sp.then)]

    def key(self, p: EffectivePattern, fact: AlertFact, scope: tuple[str, ...]) -> str | None:
        sp: SequenceParams = p.params
        if not (matches(sp.first, fact) or matches(sp.then, fact)):
            return None
        return f"{p.id}|{scope[-1]}"

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
        sp: SequenceParams = p.params
        key = self.key(p, fact, scope)
        if key is None:
            return []
        if "windows" not in state:
            mark(changed, "")
        windows: dict[str, Any] = state.setdefault("windows", {})
        slot = windows.setdefault(key, {"scope": list(scope), "first": [], "then": []})
        mark(changed, key)
        win = int(p.window_s * 1000)
        horizon = ms(now) - 2 * win
        entry = entry_of(fact, levels)
        for role, cond in (("first", sp.first), ("then", sp.then)):
            kept = [e for e in slot[role] if e[5] >= horizon and e[0] != fact.alert_id]
            if matches(cond, fact):
                kept.append(entry.dump())
            slot[role] = kept[-MAX_ENTRIES:]
        firsts, thens = slot["first"], slot["then"]
        if not firsts or not thens:
            return []
        for f in firsts:  # raw entries (Entry.dump lists): [alert, rule, device, region, building, at_ms, ...]
            matched = [
                t
                for t in thens
                if t[0] != f[0]
                and (not sp.other_device or t[2] != f[2])
                and (0 <= t[5] - f[5] <= win if sp.order == "after" else abs(t[5] - f[5]) <= win)
            ]
            if len(matched) >= sp.min_then:
                del windows[key]  # the incident owns these alerts; the next one starts afresh
                members = (Entry.load(f), *(Entry.load(t) for t in matched))
                return [Hit(key, scope, members, {"first": f[0], "then": [t[0] for t in matched]})]
        return []

    def tick(self, pattern: Any, state: dict[str, Any], now: datetime, changed: Changed | None = None) -> list[Hit]:
        windows: dict[str, Any] = state.get("windows", {})
        for key in list(windows):
            slot = windows[key]
            p: EffectivePattern = pattern(tuple(slot["scope"]))
            horizon = ms(now) - 2 * int(p.window_s * 1000)
            for role in ("first", "then"):
                entries = slot[role]
                if any(e[5] < horizon for e in entries):
                    slot[role] = since(entries, horizon)
                    mark(changed, key)
            if not slot["first"] and not slot["then"]:
                del windows[key]
                mark(changed, key)
        return []
