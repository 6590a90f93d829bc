"""V2, V8 and V13 end to end through a real Mosquitto and ingest (tests/alerts/mqtt_harness.py): a firing scenario
and a near miss each, from a recorded past (device timestamps behind the wall clock: a backlog, judged on device
time).

- a night (02:00-02:30 Beijing of a recent night): ``car-q-v2`` drives out of its depot with no dispatch (V2);
  ``car-q-v2-ok`` does the same with an approved dispatch in the database (near miss); ``car-q-v13`` is out at
  the 02:10 check (V13's ``at`` moved there for these cars) and ``car-q-v13-ok`` stays parked in its lot;
- a working day (00:00 to 01:00 the next day, the last working day before yesterday): ``car-q-v8`` drives as the
  simulator's cars do, against tiny targets (over-used: V8 fires at midnight), ``car-q-v8-ok`` with bounds no
  real day reaches (near miss).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.store.sqlite import SqliteStore
from devices.dispatch import DispatchStore
from devices.registry import DeviceSpec, Registry
from devices.simulator import BEIJING, Fleet, Incident, SimMessage, WorkCalendar
from tests.alerts.mqtt_harness import running_stack
from tests.alerts.test_pack_scenarios import GZ, REGIONS, Dev
from tests.alerts.test_scenarios_via_mqtt import night_start
from tests.helpers import wait_until

DEPOT = {"depot": {"lat": GZ[0], "lon": GZ[1], "radius_m": 50}}
LOT = {
    "lot": [[GZ[0] + dy, GZ[1] + dx] for dy, dx in ((-0.001, -0.001), (0.001, -0.001), (0.001, 0.001), (-0.001, 0.001))]
}
V2_OUT = Dev("car-q-v2", "vehicle", "gz-b1", attributes=DEPOT)
V2_OK = Dev("car-q-v2-ok", "vehicle", "gz-b1", attributes=DEPOT)
V13_OUT = Dev("car-q-v13", "vehicle", "gz-b1", attributes=LOT)
V13_OK = Dev("car-q-v13-ok", "vehicle", "gz-b1", attributes=LOT)
V8_OVER = Dev("car-q-v8", "vehicle", "gz-b1")
V8_OK = Dev("car-q-v8-ok", "vehicle", "gz-b1")
NIGHT = [V2_OUT, V2_OK, V13_OUT, V13_OK]
DAY = [V8_OVER, V8_OK]
MINE = {"V2", "V8", "V13"}

OVERRIDES = (
    "overrides:\n"
    "  - {rule: V1, enabled: false}\n"  # night drives: not what this file tests
    "  - {rule: V2, params: {min_outside_s: 120}}\n"
    "  - {rule: V13, params: {at: ['02:10']}}\n"
    f"  - {{rule: V8, device: {V8_OVER.id}, params: {{windows: [1], target_km_per_day: 1,"
    " target_trips_per_day: 0.5, target_engine_h_per_day: 0.1}}\n"
    f"  - {{rule: V8, device: {V8_OK.id}, params: {{windows: [1], under: 0, over: 10}}}}\n"
)


def working_day(now: datetime) -> datetime:
    """00:00 Beijing of the last working day that ended before yesterday (the simulator's calendar)."""
    cal = WorkCalendar()
    day = now.astimezone(BEIJING).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    while not cal.is_working_day(day.date()):
        day -= timedelta(days=1)
    return day


def night_messages(start: datetime) -> list[SimMessage]:
    drive = [Incident("night_vehicle", d.id, start + timedelta(minutes=5)) for d in (V2_OUT, V2_OK, V13_OUT)]
    fleet = Fleet([d.sim() for d in NIGHT], rng=random.Random(31), start=start, incidents=drive)
    return fleet.advance(start + timedelta(minutes=30))


def day_messages(day: datetime) -> list[SimMessage]:
    fleet = Fleet([d.sim() for d in DAY], rng=random.Random(32), start=day)
    return fleet.advance(day + timedelta(hours=25))


@pytest.mark.integration
def test_v2_v8_v13_through_mosquitto(
    broker: Any, sqlite_registry: Registry, store: SqliteStore, tmp_path: Path
) -> None:
    reg, now = sqlite_registry, datetime.now(UTC)
    reg.upsert_regions(REGIONS, now=now)
    reg.add_devices([DeviceSpec(d.id, d.type, d.region, attributes=d.attributes) for d in [*NIGHT, *DAY]], now=now)
    night, day = night_start(now), working_day(now)
    dispatches = DispatchStore(reg.engine)
    ms = int(night.timestamp() * 1000)
    approved = dispatches.create(
        vehicle_id=V2_OK.id,
        region_id="gz-b1",
        driver="王五",
        purpose="夜间值班接送",
        requested_by="op",
        planned_start_ms=ms,
        planned_end_ms=ms + 3_600_000,
        now_ms=ms,
    )
    dispatches.approve(approved.id, approver="chief", now_ms=ms)
    recorded = night_messages(night) + day_messages(day)
    # the scenarios are what they claim: the night cars did drive, the day cars made trips
    assert {m.device_id for m in recorded if m.kind == "event" and m.doc().get("type") == "ignition_on"} >= {
        V2_OUT.id,
        V2_OK.id,
        V13_OUT.id,
        V8_OVER.id,
        V8_OK.id,
    }
    rules = tmp_path / "vehicles.yaml"
    rules.write_text(OVERRIDES, encoding="utf-8")
    with running_stack(broker, reg, store, rules) as stack:
        stack.publish(recorded)
        stack.wait_acked(len(recorded), "ingest acked the recorded messages")
        expected = {("V2", V2_OUT.id), ("V13", V13_OUT.id), ("V8", V8_OVER.id)}

        def mine() -> set[tuple[str, str]]:
            return {(r, d) for r, d, _ in stack.stored() if r in MINE}

        wait_until(lambda: mine() >= expected, 30, what="V2, V8 and V13 alerts")
        assert mine() == expected  # and none for the near misses
        once = [(r, d, n) for r, d, n in stack.stored() if r in MINE]
        assert all(n == 1 for _, _, n in once), once
