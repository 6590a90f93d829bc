"""API rule edits reaching the timers of a running AlertService (absence timeouts, held-for deadlines).

``AlertService.set_rules`` re-binds the timers armed before the swap to the new effective rules.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from alerts.rule_store import RuleAdmin, RuleStore, Scope
from alerts.service import AlertService, regions_from_registry
from core.protocol import Reading
from devices.registry import DeviceSpec, RegionSpec, Registry

NOW = datetime(2026, 11, 26, 8, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def _absence_service(reg: Registry, tmp_path: Path, factor: int = 10) -> tuple[RuleAdmin, AlertService]:
    reg.upsert_regions([RegionSpec("gd", "广东省", "province")], now=NOW)
    reg.add_devices([DeviceSpec("sensor-0001", "sensor", "gd")], now=NOW)
    rules = tmp_path / "absence.yaml"
    rules.write_text(
        "rules:\n  - {id: A1, kind: absence, device_types: [sensor], title_zh: 离线, title_en: Offline,\n"
        f"       params: {{interval_s: 60, factor: {factor}}}}}\n",
        encoding="utf-8",
    )
    admin = RuleAdmin([rules], RuleStore(reg.engine))
    svc = AlertService(reg.engine, admin.rules, reg.snapshot, regions_from_registry(reg), clock_fn=lambda: NOW)
    admin.apply = svc.set_rules
    svc.load(now=NOW)
    svc.process([Reading("sensor-0001", "gd", "sensor", NOW_MS, None, {"temp_c": 20.0})], now=NOW)
    return admin, svc


def test_a_raised_absence_timeout_applies_to_the_armed_timer(sqlite_registry: Registry, tmp_path: Path) -> None:
    admin, svc = _absence_service(sqlite_registry, tmp_path, factor=2)
    # 2 x 60 s -> 10 x 60 s for the whole province, before the first timeout
    admin.put_override("A1", Scope(region="gd"), enabled=None, severity=None, params={"factor": 10}, actor="a", now=NOW)
    later = NOW + timedelta(seconds=1)
    svc.process([Reading("sensor-0001", "gd", "sensor", NOW_MS + 1000, None, {"temp_c": 20.0})], now=later)
    svc.tick(now=NOW + timedelta(seconds=200))  # silent 199 s: within the new 600 s
    assert [a.rule_id for a in svc.open_alerts()] == []


def test_a_lowered_timeout_fires_at_the_new_deadline_without_new_data(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    admin, svc = _absence_service(sqlite_registry, tmp_path)
    admin.put_override("A1", Scope(region="gd"), enabled=None, severity=None, params={"factor": 2}, actor="a", now=NOW)
    assert svc.next_deadline() == NOW + timedelta(seconds=120)  # was 600 s
    svc.tick(now=NOW + timedelta(seconds=121))
    assert [a.rule_id for a in svc.open_alerts()] == ["A1"]


def test_a_rule_switched_off_drops_its_armed_timer(sqlite_registry: Registry, tmp_path: Path) -> None:
    admin, svc = _absence_service(sqlite_registry, tmp_path)
    admin.put_override("A1", Scope(region="gd"), enabled=False, severity=None, params={}, actor="a", now=NOW)
    svc.tick(now=NOW + timedelta(seconds=601))
    assert svc.open_alerts() == []
