"""E6, E7 and E8 end to end through a real Mosquitto and ingest, each with a near miss.

Meter readings (device timestamps in the recent past) go simulator account -> Mosquitto -> ``IngestService``
(SQLite telemetry store) -> ``AlertsRuntime`` with the default packs (tests/alerts/mqtt_harness.py). E8 is judged
on the stream; E6 and E7 by the energy checks job over what ingest stored (``energy_check_changes``, applied
through the alert lifecycle as ``serve``'s hourly job does).

- E8: meter ``em-peak`` at 370 kW for 40 minutes in building b1 (contracted 400 kW, a region attribute: limit
  360 kW) fires; ``em-near`` at 355 kW in the same building does not.
- E6: yesterday, parent ``em-main`` at 10 kW with two children at 4.5 kW (10 % short: fires); parent
  ``em-main2`` with two children at 4.7 kW (6 %: within 8 %).
- E7: a month with one person in each agency and a quota of 10 kWh per person: ``a1``'s meter at 10 kW for the
  judged 70 minutes (11.7 kWh) fires, ``a2``'s at 6 kW (7 kWh) does not.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alerts.calendar import BEIJING
from alerts.energy_checks import QUOTA_DEVICE
from alerts.energy_jobs import energy_check_changes
from core.store.sqlite import SqliteStore
from devices.registry import DeviceSpec, RegionSpec, Registry
from devices.simulator import SimMessage
from tests.alerts.mqtt_harness import running_stack
from tests.helpers import wait_until

REGIONS = [
    RegionSpec("gd", "广东省", "province"),
    RegionSpec("gz", "广州市", "city", "gd", attributes={"quota_kwh_per_capita_month": 10.0}),
    RegionSpec("a1", "甲局", "agency", "gz", attributes={"headcount": 1}),
    RegionSpec("a2", "乙局", "agency", "gz", attributes={"headcount": 1}),
    RegionSpec("a3", "丙局", "agency", "gz"),  # no headcount: no quota verdict (E6 and E8 live here)
    RegionSpec("b1", "一号楼", "building", "a3", attributes={"contracted_kw": 400.0}),
    RegionSpec("b2", "二号楼", "building", "a3"),
    RegionSpec("bq1", "甲局办公楼", "building", "a1"),
    RegionSpec("bq2", "乙局办公楼", "building", "a2"),
]
METERS = [
    DeviceSpec("em-peak", "energy_meter", "b1"),
    DeviceSpec("em-near", "energy_meter", "b1"),
    DeviceSpec("em-main", "energy_meter", "b1"),
    DeviceSpec("em-sub-1", "energy_meter", "b1", attributes={"parent_meter": "em-main"}),
    DeviceSpec("em-sub-2", "energy_meter", "b1", attributes={"parent_meter": "em-main"}),
    DeviceSpec("em-main2", "energy_meter", "b2"),
    DeviceSpec("em-sub-3", "energy_meter", "b2", attributes={"parent_meter": "em-main2"}),
    DeviceSpec("em-sub-4", "energy_meter", "b2", attributes={"parent_meter": "em-main2"}),
    DeviceSpec("em-q1", "energy_meter", "bq1"),
    DeviceSpec("em-q2", "energy_meter", "bq2"),
]


def _series(device: str, kw: float, start: datetime, minutes: int, step_min: int, seq0: int) -> list[SimMessage]:
    out = []
    for i in range(0, minutes + 1, step_min):
        t = start + timedelta(minutes=i)
        ts = int(t.timestamp() * 1000)
        doc = {"ts": ts, "seq": seq0 + i, "energy_kwh": round(1000 + kw * i / 60, 4)}
        out.append(SimMessage(device, "telemetry", json.dumps(doc).encode(), ts, seq0 + i))
    return out


def _e7_window(now: datetime) -> tuple[datetime, datetime]:
    """Two hours that end at least an hour ago and lie in one Beijing month."""
    end = (now - timedelta(hours=1)).astimezone(BEIJING).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(hours=2)
    if start.month != end.month:
        end = end.replace(day=1, hour=0) - timedelta(hours=1)
        start = end - timedelta(hours=2)
    return start, end


@pytest.mark.integration
def test_e6_e7_e8_through_mosquitto(broker: Any, sqlite_registry: Registry, store: SqliteStore, tmp_path: Path) -> None:
    reg = sqlite_registry
    now = datetime.now(UTC)
    reg.upsert_regions(REGIONS, now=now)
    reg.add_devices(METERS, now=now)
    rules = tmp_path / "none.yaml"
    rules.write_text("rules: []\n", encoding="utf-8")

    today = now.astimezone(BEIJING).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday_09 = today - timedelta(days=1) + timedelta(hours=9)
    e6 = [
        *_series("em-main", 10.0, yesterday_09, 180, 10, 1),
        *_series("em-sub-1", 4.5, yesterday_09, 180, 10, 1),
        *_series("em-sub-2", 4.5, yesterday_09, 180, 10, 1),
        *_series("em-main2", 10.0, yesterday_09, 180, 10, 1),
        *_series("em-sub-3", 4.7, yesterday_09, 180, 10, 1),
        *_series("em-sub-4", 4.7, yesterday_09, 180, 10, 1),
    ]
    e8_start = yesterday_09 + timedelta(hours=5)
    e8 = [*_series("em-peak", 370.0, e8_start, 40, 1, 1000), *_series("em-near", 355.0, e8_start, 40, 1, 1000)]
    q_start, q_end = _e7_window(now)
    minutes = int((q_end - q_start).total_seconds() // 60)
    e7 = [*_series("em-q1", 10.0, q_start, minutes, 10, 1), *_series("em-q2", 6.0, q_start, minutes, 10, 1)]
    messages = e6 + e8 + e7

    with running_stack(broker, reg, store, rules) as stack:
        stack.publish(messages)
        stack.wait_acked(len(messages), "ingest acked the readings")
        wait_until(lambda: ("E8", "em-peak", 1) in stack.stored(), 20, what="E8 on em-peak")
        assert stack.ingest.stats.rejected == {}

        # E6 over yesterday, as serve's hourly job runs it
        wait_until(lambda: store.last_values("em-q2"), 10, what="the last readings stored")
        e6_changes = [
            c
            for c in energy_check_changes(reg.engine, store, stack.alerts.rules, {}, now=now, e7_due=False)
            if c.rule_id == "E6"
        ]
        # E7 over the month of the window, judged from the first day of the next month
        local = q_start.astimezone(BEIJING)
        next_month = (local.replace(day=28) + timedelta(days=4)).replace(day=1, hour=1)
        e7_changes = [
            c
            for c in energy_check_changes(reg.engine, store, stack.alerts.rules, {}, now=next_month, e6_due=False)
            if c.rule_id == "E7"
        ]
        stack.alerts.apply_platform_changes(e6_changes + e7_changes)
        stored = stack.stored()

    firing = {(c.rule_id, c.detail.get("group") or c.device_id) for c in e6_changes + e7_changes if c.firing}
    assert firing == {("E6", "em-main"), ("E7", "a1")}
    quiet = {(c.rule_id, c.detail.get("group") or c.device_id) for c in e6_changes + e7_changes if not c.firing}
    assert quiet == {("E6", "em-main2"), ("E7", "a2")}
    (q1,) = [c for c in e7_changes if c.detail["group"] == "a1"]
    # hourly buckets of readings every 10 min from h:00 to h+2:00: last of hour h (h:50) to h+2:00, 70 minutes
    assert q1.detail["per_capita"] == pytest.approx(10.0 * 70 / 60, rel=0.01)
    rules_devices = {(r, d) for r, d, _ in stored}
    assert {("E8", "em-peak"), ("E6", "em-main"), ("E7", QUOTA_DEVICE)} <= rules_devices
    assert ("E8", "em-near") not in rules_devices
    assert ("E6", "em-main2") not in rules_devices
