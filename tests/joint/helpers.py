"""Shared pieces of the joint tests: a small region tree, the X pack, alert facts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from alerts.rules import PACKS_DIR as RULE_PACKS
from alerts.rules import RuleSet
from alerts.types import Severity
from joint.correlator import Correlator, IncidentChange
from joint.kinds import AlertFact
from joint.patterns import PACKS_DIR, PatternSet, load_patterns

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)  # 10:00 Beijing, a Tuesday

# gd (province) > gz, sz (cities) > agencies > buildings
LEVELS = {
    "gd": "province",
    "gz": "city",
    "sz": "city",
    "gz-a1": "agency",
    "gz-a2": "agency",
    "sz-a1": "agency",
    **{f"gz-a1-b{i}": "building" for i in range(1, 5)},
    **{f"gz-a2-b{i}": "building" for i in range(1, 3)},
    "sz-a1-b1": "building",
}


def path_of(region: str) -> tuple[str, ...]:
    parts = region.split("-")
    city = parts[0]
    out = ["gd", city]
    if len(parts) >= 2:
        out.append(f"{city}-{parts[1]}")
    if len(parts) >= 3:
        out.append(region)
    return tuple(out)


_RULES = RuleSet.load([RULE_PACKS])


def rule_kind(rule_id: str) -> str:
    spec = _RULES.rules.get(rule_id)
    return spec.kind if spec is not None else ""


def pack(*extra: Path) -> PatternSet:
    built = load_patterns([PACKS_DIR, *extra], _RULES.rules)
    assert built.problems == []
    return built.patterns


_ids = iter(range(1, 1_000_000))


def fact(
    rule_id: str,
    device: str,
    region: str,
    at: datetime,
    *,
    device_type: str = "gate",
    severity: Severity = Severity.MAJOR,
    alert_id: int | None = None,
    related: str | None = None,
) -> AlertFact:
    return AlertFact(
        alert_id if alert_id is not None else next(_ids),
        rule_id,
        rule_kind(rule_id),
        device,
        device_type,
        path_of(region),
        severity,
        at,
        related_path=path_of(related) if related else (),
    )


def correlator(patterns: PatternSet | None = None) -> Correlator:
    return Correlator(patterns or pack(), LEVELS)


def kinds(changes: list[IncidentChange]) -> list[str]:
    return [c.kind for c in changes]


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)
