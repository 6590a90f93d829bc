"""The service's quiet paths for absence (with and without ``only_if``), clock-skew and ``==`` threshold rules
with ``suppress_during`` do exactly what ``engine.evaluate`` (and ``engine.tick``) do.

A random stream (readings with and without the gate field, events, statuses, late and skewed timestamps, silent
gaps long enough for the absence rules to fire) runs through ``AlertService.process`` / ``tick`` and,
independently, through the pure engine one rule at a time. Alert changes and every rule state must be identical.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from alerts import engine as eng
from alerts.engine import Env, Subject
from alerts.lifecycle import AlertBook
from alerts.rules import RuleSet
from alerts.service import AlertService, RegionRef
from core.db import make_engine, migrate
from core.protocol import DeviceInfo, Event, Reading, Record, Status

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # 08:00 Beijing, a Monday: the unlocked window opens at 08:30


def _rule(rid: str, kind: str, **params: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "kind": kind,
        "device_types": ["gate"],
        "title_zh": rid,
        "title_en": rid,
        "inhibit_when_offline": False,
        "params": params,
    }


RULES = {
    "rules": [
        _rule("OFF", "absence", factor=2.5),
        _rule("OFF.IGN", "absence", interval_s=90, factor=1, only_if={"ignition": True}),
        _rule("SKEW", "clock_skew", max_ahead_s=120, max_behind_s=300, count=2, for_s=0),
        _rule(
            "HELD",
            "threshold",
            field="door_open",
            op="==",
            value=True,
            for_s=20,
            suppress_during={"hours": "08:30-17:30", "days": "working"},
        ),
        _rule("NE", "threshold", field="door_open", op="!=", value=False, count=2),
    ]
}


def _record(rng: random.Random, device: str, now: datetime, step: int) -> Record:
    late = rng.choice([0, 0, 0, 0, 30])  # some records older than the last one
    skew = rng.choice([0, 0, 0, 0, 0, 400, -400])  # some device clocks far off
    ts = int((now - timedelta(seconds=late - skew)).timestamp() * 1000)
    r = rng.random()
    if r < 0.1:
        return Status(device, "r", ts, rng.choice(["online", "offline"]))
    if r < 0.2:
        return Event(device, "r", "gate", ts, step, "access", {"result": "granted"}, ts_from_device=rng.random() < 0.8)
    fields: dict[str, Any] = {}
    if rng.random() < 0.7:
        fields["door_open"] = rng.random() < 0.3
    if rng.random() < 0.5:
        fields["ignition"] = rng.choice([True, False, 1, 0])  # 1 == True, but another type: the slow path
    if rng.random() < 0.5:
        fields["occupancy"] = rng.randrange(50)
    return Reading(device, "r", "gate", ts, step, fields, ts_from_device=rng.random() < 0.9)


def test_quiet_paths_match_engine_evaluate(tmp_path: Any) -> None:
    rules = RuleSet.from_documents([("fast.yaml", RULES)])
    ids = ("g-1", "g-2", "g-3")
    devices = {
        d: DeviceInfo(device_id=d, region_id="r", device_type="gate", enabled=True, expected_interval_s=60) for d in ids
    }
    engine = make_engine(f"sqlite:///{tmp_path}/a.db")
    migrate(engine)
    now = [T0]
    svc = AlertService(engine, rules, lambda: devices, lambda: {"r": RegionRef(("r",))}, clock_fn=lambda: now[0])
    svc.load()
    env = Env(rules.calendar)
    book = AlertBook()
    ref_states: dict[tuple[str, str], eng.State] = {}
    subjects = {d: Subject(d, "gate", "r", ("r",), 60) for d in ids}
    for d in ids:  # the service watches every registered device for absence from its start
        for rule in rules.for_device(d, "gate", ("r",)):
            ref_states[(rule.rule_id, d)] = eng.new_state(rule, now=T0)
    rng = random.Random(11)
    kinds: set[str] = set()
    seen_rules: set[str] = set()
    t = T0
    for step in range(1500):
        t += timedelta(seconds=rng.choice([1, 2, 5, 10, 10, 30]) if rng.random() > 0.01 else 400)
        now[0] = t
        # timers first, in both
        want_tick: list[tuple[str, str, str]] = []
        for (rid, d), st in ref_states.items():
            rule = next(r for r in rules.for_device(d, "gate", ("r",)) if r.rule_id == rid)
            for ch in eng.tick(rule, st, subjects[d], now=t, env=env):
                want_tick.extend((ev.kind, ev.alert.rule_id, ev.alert.device_id) for ev in book.apply(ch, now=t))
        book_due = book.next_deadline()
        if book_due is not None and book_due <= t:  # flapping ends etc., as the service's tick does
            want_tick.extend((ev.kind, ev.alert.rule_id, ev.alert.device_id) for ev in book.tick(now=t))
        got_tick = [(ev.kind, ev.alert.rule_id, ev.alert.device_id) for ev in svc.tick(t)]
        assert sorted(got_tick) == sorted(want_tick), ("tick", step)
        device = rng.choice(ids)
        rec = _record(rng, device, t, step)
        want: list[tuple[str, str, str]] = []
        for rule in rules.for_device(device, "gate", ("r",)):
            if not eng.interested(rule, rec) or (rule.kind == "threshold" and not isinstance(rec, Reading)):
                continue
            st = ref_states[(rule.rule_id, device)]
            for ch in eng.evaluate(rule, st, subjects[device], rec, now=t, env=env):
                want.extend((ev.kind, ev.alert.rule_id, ev.alert.device_id) for ev in book.apply(ch, now=t))
        got = [(ev.kind, ev.alert.rule_id, ev.alert.device_id) for ev in svc.process([rec])]
        assert sorted(got) == sorted(want), (step, rec)
        kinds.update(k for k, _, _ in [*got, *got_tick])
        seen_rules.update(r for _, r, _ in [*got, *got_tick])
        for key, st in ref_states.items():
            have = svc._states.get(key)
            if have is not None:
                assert eng.state_dumps(have) == eng.state_dumps(st), (step, key)
    assert {"created", "resolved"} <= kinds  # the stream really fires and clears
    assert {"OFF", "OFF.IGN", "SKEW", "HELD", "NE"} <= seen_rules, seen_rules
