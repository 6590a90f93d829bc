"""E8 peak demand (alerts/packs/energy.yaml): 15-minute demand from the energy counter against 90 % of the
contracted capacity, from the region attribute or the rule's own ``contracted_kw`` (an override)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alerts.rules import PACKS_DIR, RuleSet
from alerts.service import AlertService, regions_from_registry
from core.protocol import Reading, Record
from devices.registry import DeviceSpec, RegionSpec, Registry
from tests.alerts.engine_helpers import PackRun, Run, make_rule, reading, subject


def _meter_readings(kw: float, minutes: int, start_kwh: float = 1000.0) -> list[Reading]:
    """A meter drawing ``kw`` steadily, one reading a minute."""
    subj = subject("m-1", "energy_meter")
    return [reading(60 * i, subj, energy_kwh=start_kwh + kw * i / 60) for i in range(minutes + 1)]


@pytest.mark.parametrize(("kw", "fires"), [(370.0, True), (355.0, False)])
def test_e8_pack_rule_fires_above_90_percent_of_the_region_capacity(kw: float, fires: bool) -> None:
    # contracted 400 kW: the limit is 360 kW; 355 kW is the near miss
    run = PackRun(subject("m-1", "energy_meter", contracted_kw=400.0))
    run.feed(_meter_readings(kw, 40))
    assert ("E8" in run.fired()) is fires
    if fires:
        (change,) = [c for c in run.changes if c.rule_id == "E8"]
        assert change.detail["contracted_kw"] == 400.0
        assert change.detail["limit"] == pytest.approx(360.0)
        assert change.detail["demand"] == pytest.approx(370.0, rel=1e-3)
        assert change.detail["reason"] == "capacity"


def test_e8_does_nothing_without_a_known_capacity() -> None:
    run = PackRun(subject("m-1", "energy_meter"))
    run.feed(_meter_readings(5000.0, 40))
    assert "E8" not in run.fired()


def test_capacity_override_wins_and_the_alert_clears_after_two_normal_intervals() -> None:
    rule = make_rule(
        "demand",
        {"field": "energy_kwh", "quantile": None, "capacity_share": 0.9, "contracted_kw": 100, "clear_intervals": 2},
        device_type="energy_meter",
    )
    subj = subject("dev-1", "energy_meter", contracted_kw=1000.0)  # the override (100 kW) wins
    run = Run(rule, subj)
    kwh = 0.0
    for minute in range(0, 91):
        kw = 95.0 if minute < 30 else 50.0  # two quarter hours above 90 kW, then below
        run.feed(reading(60 * minute, subj, energy_kwh=kwh))
        kwh += kw / 60
    assert run.firing() == [True, False]
    assert run.changes[0].detail["limit"] == pytest.approx(90.0)


def test_demand_rule_needs_a_test() -> None:
    with pytest.raises(Exception, match="capacity_share"):
        RuleSet.from_documents(
            [
                (
                    "x.yaml",
                    {
                        "rules": [
                            {
                                "id": "X",
                                "kind": "demand",
                                "device_types": ["energy_meter"],
                                "title_zh": "x",
                                "title_en": "x",
                                "params": {"field": "energy_kwh", "quantile": None},
                            }
                        ]
                    },
                )
            ]
        )


def test_e8_through_the_service_meter_attribute_before_region_attribute(sqlite_registry: Registry) -> None:
    """The registry's capacities reach E8: a meter's own ``contracted_kw`` attribute (300 kW) wins over its
    building's (400 kW); at 330 kW the first is over 90 % (270 kW), the second not (360 kW)."""
    reg = sqlite_registry
    start = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    reg.upsert_regions(
        [
            RegionSpec("gd", "广东省", "province"),
            RegionSpec("gz", "广州市", "city", "gd"),
            RegionSpec("gz-b1", "一号楼", "building", "gz", attributes={"contracted_kw": 400.0}),
        ],
        now=start,
    )
    reg.add_devices(
        [
            DeviceSpec("em-own", "energy_meter", "gz-b1", attributes={"contracted_kw": 300}),
            DeviceSpec("em-region", "energy_meter", "gz-b1"),
        ],
        now=start,
    )
    rules = RuleSet.from_documents(
        [
            ("packs", {"rules": [r for r in _pack_rules() if r["id"] == "E8"]}),
        ]
    )
    svc = AlertService(reg.engine, rules, reg.snapshot, regions_from_registry(reg), clock_fn=lambda: start)
    svc.load(start)
    for minute in range(41):
        t = start + timedelta(minutes=minute)
        ts = int(t.timestamp() * 1000)
        batch: list[Record] = [
            Reading(d, "gz-b1", "energy_meter", ts, minute, {"energy_kwh": 1000 + 330 * minute / 60})
            for d in ("em-own", "em-region")
        ]
        svc.process(batch, now=t)
    fired = {(a.rule_id, a.device_id) for a in svc.repo.alerts()}
    assert fired == {("E8", "em-own")}


def _pack_rules() -> list[dict[str, Any]]:
    import yaml

    doc = yaml.safe_load((PACKS_DIR / "energy.yaml").read_text(encoding="utf-8"))
    rules: list[dict[str, Any]] = doc["rules"]
    return rules
