"""``cross_region``: one alert that names two sites in different regions of a level (X6).

G7 (impossible travel) names the device where the credential was seen before (``detail.from_device``); the
service turns that into the other site's region path (``AlertFact.related_path``). When the two sites differ at
``differ_at`` (city: different cities, hence different agencies) the alert becomes an incident of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from joint.kinds.base import AlertFact, Changed, Hit, JsonWindows, KindParams, entry_of, scope_path
from joint.models import ScopeLevel
from joint.patterns import EffectivePattern, Members


class CrossRegionParams(KindParams):
    differ_at: ScopeLevel = ScopeLevel.CITY


class CrossRegionKind(JsonWindows):
    params_model: type[BaseModel] = CrossRegionParams

    def member_conditions(self, params: Any) -> list[tuple[str, Members]]:
        return []

    def key(self, p: EffectivePattern, fact: AlertFact, scope: tuple[str, ...]) -> str | None:
        return f"{p.id}|{scope[-1]}|{fact.alert_id}"

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
        cp: CrossRegionParams = p.params  # no windows: the state is never changed
        if not fact.related_path:
            return []
        here = scope_path(fact.region_path, str(cp.differ_at), levels)
        there = scope_path(fact.related_path, str(cp.differ_at), levels)
        if here is None or there is None or here[-1] == there[-1]:
            return []
        return [
            Hit(
                f"{p.id}|{scope[-1]}|{fact.alert_id}",
                scope,
                (entry_of(fact, levels),),
                {"here": here[-1], "there": there[-1], "other_region": fact.related_path[-1]},
            )
        ]

    def tick(self, pattern: Any, state: dict[str, Any], now: datetime, changed: Changed | None = None) -> list[Hit]:
        return []
