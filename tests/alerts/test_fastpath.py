"""The service's fast path for quiet threshold rules does exactly what ``engine.evaluate`` does.

A random stream (numbers around the limits, bools, strings, NaN, missing fields, out-of-order timestamps) runs
through ``AlertService.process`` and, independently, through the pure engine one rule at a time. The alert
changes and every rule state must be identical.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from alerts import engine as eng
from alerts.engine import Env, Subject
from alerts.lifecycle import AlertBook
from alerts.rules import RuleSet
from alerts.service import AlertService, RegionRef
from core.db import make_engine, migrate
from core.protocol import DeviceInfo, Reading

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)


def _rule(rid: str, **params: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "kind": "threshold",
        "device_types": ["sensor"],
        "title_zh": rid,
        "title_en": rid,
        "inhibit_when_offline": False,
        "params": params,
    }


RULES = {
    "rules": [
        _rule("GT", field="t", op=">", value=30),
        _rule("GE.HYST", field="t", op=">=", value=30, clear_value=25),
        _rule("LT.COUNT", field="t", op="<", value=5, count=3),
        _rule("LE.HELD", field="t", op="<=", value=5, for_s=20),
        _rule("GT.H", field="h", op=">", value=70, clear_value=60, count=2),
        _rule("WHERE", field="t", op=">", value=30, where={"on": True}),
        _rule("EQ", field="on", op="==", value=True),
    ]
}


def _value(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.05:
        return rng.choice([True, False])
    if r < 0.08:
        return "x"
    if r < 0.1:
        return math.nan
    if r < 0.3:
        return rng.randrange(0, 40)
    return round(rng.uniform(0, 40), 1)


def test_fast_path_matches_engine_evaluate(tmp_path: Any) -> None:
    rules = RuleSet.from_documents([("fast.yaml", RULES)])
    devices = {
        d: DeviceInfo(device_id=d, region_id="r", device_type="sensor", enabled=True, expected_interval_s=60)
        for d in ("s-1", "s-2")
    }
    engine = make_engine(f"sqlite:///{tmp_path}/a.db")
    migrate(engine)
    now = [T0]
    svc = AlertService(engine, rules, lambda: devices, lambda: {"r": RegionRef(("r",))}, clock_fn=lambda: now[0])
    svc.load()
    env = Env(rules.calendar)
    book = AlertBook()
    ref_states: dict[tuple[str, str], eng.State] = {}
    rng = random.Random(7)
    kinds: set[str] = set()
    for step in range(800):
        now[0] = T0 + timedelta(seconds=step)
        device = rng.choice(("s-1", "s-2"))
        fields: dict[str, Any] = {}
        for name in ("t", "h"):
            if rng.random() < 0.8:
                fields[name] = _value(rng)
        if rng.random() < 0.5:
            fields["on"] = rng.random() < 0.7
        late = rng.choice([0, 0, 0, 0, 30])  # some readings older than the last one
        rec = Reading(device, "r", "sensor", int((now[0] - timedelta(seconds=late)).timestamp() * 1000), step, fields)
        subj = Subject(device, "sensor", "r", ("r",), 60)
        want: list[tuple[str, str, str]] = []
        for rule in rules.for_device(device, "sensor", ("r",)):
            if not eng.interested(rule, rec):
                continue
            st = ref_states.setdefault((rule.rule_id, device), eng.new_state(rule, now=now[0]))
            for ch in eng.evaluate(rule, st, subj, rec, now=now[0], env=env):
                want.extend((ev.kind, ev.alert.rule_id, ev.alert.device_id) for ev in book.apply(ch))
        got = [(ev.kind, ev.alert.rule_id, ev.alert.device_id) for ev in svc.process([rec])]
        assert sorted(got) == sorted(want), (step, rec)
        kinds.update(k for k, _, _ in got)
    assert {"created", "resolved"} <= kinds  # the stream really fires and clears
    for key, st in ref_states.items():
        assert eng.state_dumps(svc._states[key]) == eng.state_dumps(st), key
