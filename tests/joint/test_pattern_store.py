"""joint/pattern_store.py on SQLite and PostgreSQL (migration 0012_joint_pattern_edits): the API layer's rows,
their history, the version that moves with every write, and the effective set built from files plus the rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerts.rule_check import Known
from alerts.rules import PACKS_DIR as RULE_PACKS
from alerts.rules import RuleSet
from devices.registry import RegionSpec, Registry
from joint.pattern_store import PatternAdmin, PatternConflict, PatternRejected, PatternStore
from joint.patterns import PACKS_DIR, PatternSpec

T = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
RULE_IDS = list(RuleSet.load([RULE_PACKS]).rules)


def _admin(registry: Registry) -> PatternAdmin:
    registry.upsert_regions([RegionSpec("gd", "广东", "province"), RegionSpec("gz", "广州", "city", "gd")], now=T)
    return PatternAdmin(
        [PACKS_DIR],
        PatternStore(registry.engine),
        lambda: RULE_IDS,
        lambda: Known(frozenset(r.id for r in registry.regions())),
    )


def test_writes_history_version_and_the_effective_set(registry: Registry) -> None:
    admin = _admin(registry)
    store = admin.store
    assert store.version() == 0
    saved, created = admin.put_override("X5", "gz", {"window_s": 600.0}, actor="a", now=T)
    assert created and saved.region == "gz" and saved.created_at == T
    v1 = store.version()
    _, created = admin.put_override("X5", "gz", {"window_s": 900.0, "severity": "critical"}, actor="b", now=T)
    assert not created and store.version() > v1
    spec = PatternSpec.model_validate(
        {"id": "Z1", "kind": "group", "type": "device_fault", "title_zh": "测试", "title_en": "Test"}
    )
    admin.put_pattern(spec, actor="a", now=T + timedelta(seconds=1))
    built = admin.build()
    assert built.problems == [] and "Z1" in built.patterns.patterns
    eff = built.patterns.effective("X5", ("gd", "gz"))
    assert (eff.window_s, str(eff.severity)) == (900.0, "critical")
    assert eff.sources["window_s"] == "api override X5 [region=gz]"
    assert built.patterns.effective("X5", ("gd",)).window_s == 1800
    history = store.history("X5")
    assert [(c.action, c.actor, c.before, c.after) for c in history] == [
        ("updated", "b", {"window_s": 600.0}, {"window_s": 900.0, "severity": "critical"}),
        ("created", "a", None, {"window_s": 600.0}),
    ]
    gone, removed = admin.delete_pattern("Z1", actor="a", now=T)
    assert gone is not None and removed == [] and "Z1" not in admin.build().patterns.patterns
    assert admin.delete_override("X5", "gz", actor="a", now=T) is not None
    assert admin.delete_override("X5", "gz", actor="a", now=T) is None
    assert [c.action for c in store.history(None, 10)][:3] == ["deleted", "deleted", "created"]


def test_invalid_writes_are_refused_and_nothing_is_stored(registry: Registry) -> None:
    admin = _admin(registry)
    with pytest.raises(PatternRejected, match="unknown region 'gzz'; did you mean 'gz'"):
        admin.put_override("X5", "gzz", {"enabled": False}, actor="a", now=T)
    with pytest.raises(PatternRejected, match="unknown field 'min_device'; did you mean 'min_devices'"):
        admin.put_override("X5", "gz", {"params": {"min_device": 2}}, actor="a", now=T)
    with pytest.raises(PatternRejected, match="unknown rule 'G99'"):
        admin.put_override("X2", "gz", {"params": {"then": {"rules": ["G99"]}}}, actor="a", now=T)
    spec = PatternSpec.model_validate(
        {"id": "X5", "kind": "group", "type": "device_fault", "title_zh": "测试", "title_en": "Test"}
    )
    with pytest.raises(PatternConflict, match=r"joint\.yaml"):
        admin.put_pattern(spec, actor="a", now=T)
    assert admin.store.version() == 0 and admin.store.overrides() == []
