"""Helpers for pure engine tests: rules from YAML snippets, records at offsets from a fixed time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from alerts.calendar import Calendar
from alerts.engine import Env, Subject, evaluate, new_state, next_deadline, state_from_json, state_to_json, tick
from alerts.rules import PACKS_DIR, EffectiveRule, RuleSet
from alerts.types import AlertChange
from core.protocol import Event, Reading, Record, Status

# Monday 2026-03-02 10:00 Beijing time: a working day, inside working hours.
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
PATH = ("gd", "gz", "b1")


def at(seconds: float, base: datetime = T0) -> datetime:
    return base + timedelta(seconds=seconds)


def subject(device_id: str = "dev-1", device_type: str = "sensor", **kw: Any) -> Subject:
    return Subject(device_id, device_type, PATH[-1], PATH, **kw)


def make_rule(kind: str, params: dict[str, Any], device_type: str = "sensor", **spec: Any) -> EffectiveRule:
    doc = {
        "rules": [
            {
                "id": spec.pop("id", "R1"),
                "kind": kind,
                "device_types": [device_type],
                "title_zh": "测试",
                "title_en": "Test",
                "params": params,
                **spec,
            }
        ]
    }
    rs = RuleSet.from_documents([("test.yaml", doc)])
    (rule,) = rs.explain("dev-1", device_type, PATH)
    return rule


def reading(t: float, subj: Subject, base: datetime = T0, seq: int | None = None, **fields: float | bool) -> Reading:
    return Reading(subj.device_id, subj.region_id, subj.device_type, int(at(t, base).timestamp() * 1000), seq, fields)


def event(t: float, subj: Subject, etype: str, base: datetime = T0, **data: Any) -> Event:
    return Event(
        subj.device_id, subj.region_id, subj.device_type, int(at(t, base).timestamp() * 1000), None, etype, data
    )


def status(t: float, subj: Subject, state: str, base: datetime = T0) -> Status:
    return Status(subj.device_id, subj.region_id, int(at(t, base).timestamp() * 1000), state)  # type: ignore[arg-type]


@dataclass
class Run:
    """One rule and one subject's state, driven by records and ticks at offsets (seconds) from ``base``."""

    rule: EffectiveRule
    subj: Subject
    base: datetime = T0
    env: Env = field(default_factory=Env)
    changes: list[AlertChange] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = new_state(self.rule, now=self.base)

    def feed(self, rec: Record, now_s: float | None = None) -> list[AlertChange]:
        now = at(now_s, self.base) if now_s is not None else datetime.fromtimestamp(rec.ts_ms / 1000, UTC)
        out = evaluate(self.rule, self.state, self.subj, rec, now=now, env=self.env)
        self.changes.extend(out)
        return out

    def tick(self, now_s: float) -> list[AlertChange]:
        out = tick(self.rule, self.state, self.subj, now=at(now_s, self.base), env=self.env)
        self.changes.extend(out)
        return out

    def deadline(self) -> datetime | None:
        d = next_deadline(self.rule, self.state, self.subj)
        return None if d is None else datetime.fromtimestamp(d / 1000, UTC)

    def restart(self) -> None:
        """Round-trip the state through JSON, as a restart does."""
        import json

        self.state = state_from_json(self.rule.kind, json.loads(json.dumps(state_to_json(self.state))))

    def firing(self) -> list[bool]:
        return [c.firing for c in self.changes]


class PackRun:
    """Every effective default-pack rule of one device, fed a scenario; records which rules fired."""

    def __init__(self, subj: Subject, calendar: Calendar | None = None, base: datetime = T0) -> None:
        rs = RuleSet.load([PACKS_DIR])
        self.rules = rs.for_device(subj.device_id, subj.device_type, subj.region_path)
        self.subj = subj
        self.base = base
        self.env = Env(calendar or rs.calendar)
        self.states = {r.rule_id: new_state(r, now=base) for r in self.rules}
        self.changes: list[AlertChange] = []

    def feed(self, recs: Sequence[Record]) -> None:
        for rec in recs:
            now = datetime.fromtimestamp(rec.ts_ms / 1000, UTC)
            for r in self.rules:
                self.changes.extend(evaluate(r, self.states[r.rule_id], self.subj, rec, now=now, env=self.env))

    def tick(self, now_s: float) -> None:
        for r in self.rules:
            self.changes.extend(tick(r, self.states[r.rule_id], self.subj, now=at(now_s, self.base), env=self.env))

    def fired(self) -> set[str]:
        return {c.rule_id for c in self.changes if c.firing}
