"""``absence``: an alert with no expected alert around it in the same scope (X3, X8).

An ``anchor`` alert opens a watch; when no ``expect`` alert of the same scope comes within ``before_s`` before
to ``after_s`` after it, the watch becomes an incident (at the anchor's time + ``after_s``, on a tick). X3: a
vehicle used out of hours (V1) with no after-hours gate entry (G5) at its agency within 15 minutes either side;
X8: night or non-working-day load above the unoccupied baseline (E2, E3) with no after-hours entry (G5) into the
building in the day before.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

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


class AbsenceParams(KindParams):
    anchor: Members
    expect: Members
    before_s: float = Field(default=900, ge=0)
    after_s: float = Field(default=900, ge=0)


class AbsenceKind(JsonWindows):
    params_model: type[BaseModel] = AbsenceParams

    def member_conditions(self, params: Any) -> list[tuple[str, Members]]:
        ap: AbsenceParams = params
        return [("anchor", ap.anchor), ("expect", ap.expect)]

    def key(self, p: EffectivePattern, fact: AlertFact, scope: tuple[str, ...]) -> str | None:
        ap: AbsenceParams = p.params
        return f"{p.id}|{scope[-1]}|{fact.alert_id}" if matches(ap.anchor, fact) else None

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
        # The state is one part (no ``windows``): any change of it marks ``""``.
        ap: AbsenceParams = p.params
        if "seen" not in state or "watches" not in state:
            mark(changed, "")
        seen: dict[str, list[list[Any]]] = state.setdefault("seen", {})  # scope region -> expected alerts
        watches: dict[str, Any] = state.setdefault("watches", {})  # key -> watch
        region = scope[-1]
        at = ms(fact.at)
        if matches(ap.expect, fact):
            mark(changed, "")
            horizon = at - int(ap.before_s * 1000) - int(ap.after_s * 1000)
            seen[region] = since(seen.get(region, []), horizon)[-MAX_ENTRIES:]
            seen[region].append(entry_of(fact, levels).dump())
            for key in [k for k, w in watches.items() if w["region"] == region]:
                w = watches[key]
                if w["at"] - int(ap.before_s * 1000) <= at <= w["at"] + int(ap.after_s * 1000):
                    del watches[key]  # the expected alert came
        out: list[Hit] = []
        if matches(ap.anchor, fact):
            lo, hi = at - int(ap.before_s * 1000), at + int(ap.after_s * 1000)
            if any(lo <= e[5] <= hi for e in seen.get(region, [])):
                return out
            key = f"{p.id}|{region}|{fact.alert_id}"
            mark(changed, "")
            watches[key] = {
                "region": region,
                "scope": list(scope),
                "at": at,
                "due": hi,
                "entry": entry_of(fact, levels).dump(),
            }
            out.extend(self._due(state, now, changed))
        return out

    def _due(self, state: dict[str, Any], now: datetime, changed: Changed | None) -> list[Hit]:
        watches: dict[str, Any] = state.get("watches", {})
        out: list[Hit] = []
        for key in [k for k, w in watches.items() if w["due"] <= ms(now)]:
            w = watches.pop(key)
            mark(changed, "")
            out.append(Hit(key, tuple(w["scope"]), (Entry.load(w["entry"]),), {"expected_missing": True}))
        return out

    def tick(self, pattern: Any, state: dict[str, Any], now: datetime, changed: Changed | None = None) -> list[Hit]:
        out = self._due(state, now, changed)
        seen: dict[str, list[list[Any]]] = state.get("seen", {})
        for region in list(seen):
            p: EffectivePattern = pattern(None)
            ap: AbsenceParams = p.params
            horizon = ms(now) - int((ap.before_s + 2 * ap.after_s) * 1000)
            if any(e[5] < horizon for e in seen[region]):
                seen[region] = since(seen[region], horizon)
                mark(changed, "")
            if not seen[region]:
                del seen[region]
                mark(changed, "")
        return out
