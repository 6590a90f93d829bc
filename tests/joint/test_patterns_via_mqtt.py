"""X9, X6, X3, X1 and X8 end to end through a real Mosquitto, ingest and the alert engine (the stack of
``test_scenarios_via_mqtt``): an alarm storm from one device is one device-fault ticket, a credential used in two
cities is one province incident, and unrelated alerts in the same window give nothing.

- X9: one gate of agency gz-a2 reports a tamper event 11 times: its G11.tamper alert fires once and repeats ten
  times (11 fires within the hour) -> one ``device_fault`` incident of the agency with that alert as its muted
  member and a task for IT. The 12th event joins the open incident (no second one).
- The near misses in the same window: a gate of another building reports 10 tamper events (10 fires: one short of
  X9), a forced door alone in a third building (no second door: no X2), two buildings with tamper alerts (X5 needs
  three). None of them makes an incident.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.store.sqlite import SqliteStore
from devices.registry import DeviceSpec, RegionSpec, Registry
from joint.models import ScopeLevel
from tests.helpers import wait_until
from tests.joint.test_scenarios_via_mqtt import REGIONS, Seq, _forced, running_stack

STORMY = "gate-a2-storm"  # gz-a2-b1
TEN = "gate-b2-ten"  # gz-a1-b2: ten tamper events, one short of X9
LONE_DOOR = "gate-b4-door"  # gz-a1-b4: a forced door alone


ENTRY = '"type":"access","credential":"card-7","direction":"in","result":"granted"'  # an after-hours entry (G5)
LOAD = '"energy_kwh":100.0,"power_kw":80.0'  # above T.load


def _hours_away(now: datetime) -> str:
    """Working hours three hours from now (Beijing time): now is out of hours, at any hour of any day."""
    from alerts.calendar import BEIJING

    local = now.astimezone(BEIJING)
    return f"{(local + timedelta(hours=3)):%H:%M}-{(local + timedelta(hours=4)):%H:%M}"


def _load_setup(reg: Registry, tmp_path: Path, devices: list[DeviceSpec], pattern: str, params: dict[str, Any]) -> Path:
    """Regions and devices; a rule file with T.load (power above 50 kW) and G5's hours away from now; the
    pattern's params changed through the API layer (the pack's load rules need a day of history)."""
    from joint.pattern_store import PatternStore

    now = datetime.now(UTC)
    reg.upsert_regions(REGIONS, now=now)
    reg.add_devices(devices, now=now)
    rules = tmp_path / "load.yaml"
    rules.write_text(
        "rules:\n"
        "  - {id: T.load, kind: threshold, device_types: [energy_meter], severity: warning, title_zh: 负荷高,"
        " title_en: Load high, params: {field: power_kw, op: '>', value: 50}}\n"
        "overrides:\n"
        f"  - {{rule: G5, params: {{hours: '{_hours_away(now)}'}}}}\n",
        encoding="utf-8",
    )
    PatternStore(reg.engine).save_override(pattern, None, {"params": params}, "test", now)
    return rules


def _entry_then_loads(stack: Any, seq: Seq, gate: str, meters: list[str]) -> None:
    """An after-hours entry at ``gate`` (waited for), then a load above T.load from each meter."""
    stack.publish([seq.msg(gate, "event", ENTRY)])
    wait_until(lambda: any(a.rule_id == "G5" for a in stack.alerts.service.open_alerts()), 20, what="G5")
    stack.publish([seq.msg(m, "telemetry", LOAD) for m in meters])


def _all_loads(stack: Any, meters: set[str]) -> None:
    wait_until(
        lambda: {a.device_id for a in stack.alerts.service.open_alerts() if a.rule_id == "T.load"} == meters,
        20,
        what="every load alert",
    )


@pytest.mark.integration
def test_x9_one_device_fault_ticket_and_no_incident_from_the_near_misses(
    broker: Any, sqlite_registry: Registry, store: SqliteStore, tmp_path: Path
) -> None:
    reg = sqlite_registry
    now = datetime.now(UTC)
    reg.upsert_regions(REGIONS, now=now)
    reg.add_devices(
        [
            DeviceSpec(STORMY, "gate", "gz-a2-b1"),
            DeviceSpec(TEN, "gate", "gz-a1-b2"),
            DeviceSpec(LONE_DOOR, "gate", "gz-a1-b4"),
        ],
        now=now,
    )
    rules = tmp_path / "none.yaml"
    rules.write_text("rules: []\n", encoding="utf-8")
    seq = Seq()
    tamper = '"type":"tamper"'
    with running_stack(broker, reg, store, rules) as stack:
        stack.publish([seq.msg(TEN, "event", tamper) for _ in range(10)] + _forced(seq, LONE_DOOR))
        stack.publish([seq.msg(STORMY, "event", tamper) for _ in range(11)])

        def tamper_of(device: str) -> Any:
            found = [
                a for a in stack.alerts.service.open_alerts() if a.device_id == device and a.rule_id == "G11.tamper"
            ]
            return found[0] if found else None

        wait_until(lambda: (a := tamper_of(TEN)) is not None and a.count == 10, 20, what="ten fires of the near miss")
        x9 = wait_until(lambda: stack.incident("X9"), 20, what="X9")
        storm_alert = tamper_of(STORMY)
        assert storm_alert is not None and storm_alert.count == 11
        assert (x9.scope_level, x9.region_id, x9.type) == (ScopeLevel.AGENCY, "gz-a2", "device_fault")
        assert x9.member_ids == [storm_alert.id] and x9.muted_ids == [storm_alert.id]
        assert stack.joint.held(storm_alert.id)
        assert [t.department for t in stack.joint.store.tasks(incident_id=x9.id)] == ["it"]
        wait_until(
            lambda: any(a.rule_id == "G1" for a in stack.alerts.service.open_alerts() if a.device_id == LONE_DOOR),
            20,
            what="the lone forced door's G1",
        )

        stack.publish([seq.msg(STORMY, "event", tamper)])  # the storm goes on: the same ticket
        wait_until(lambda: (a := tamper_of(STORMY)) is not None and a.count == 12, 20, what="the 12th fire")
        stack.joint.tick()
        incidents = stack.incidents()
    assert [(i.pattern_id, i.region_id) for i in incidents] == [("X9", "gz-a2")], "the near misses made none"
    assert incidents[0].member_ids == [storm_alert.id]


def _located(spec: RegionSpec, lat: float, lon: float) -> RegionSpec:
    return RegionSpec(spec.id, spec.name, spec.level, spec.parent_id, lat, lon)


@pytest.mark.integration
def test_x6_one_credential_in_two_cities_is_a_province_incident_and_within_one_city_none(
    broker: Any, sqlite_registry: Registry, store: SqliteStore, tmp_path: Path
) -> None:
    """X6 through the real stack: a card used in Guangzhou, then within a minute in Shenzhen (about 100 km): G7
    (impossible travel) names the other gate, and X6 makes one province incident with a security task. The same
    kind of hop between two buildings of Guangzhou (several km apart: G7 fires too) is no X6 incident."""
    reg = sqlite_registry
    now = datetime.now(UTC)
    where = {"gz-a1-b1": (23.13, 113.26), "gz-a2-b1": (23.20, 113.40), "sz-a1-b1": (22.54, 114.06)}
    reg.upsert_regions([_located(r, *where[r.id]) if r.id in where else r for r in REGIONS], now=now)
    gates = {
        "gz1": ("gate-gz-hop1", "gz-a1-b1"),
        "gz2": ("gate-gz-hop2", "gz-a2-b1"),
        "sz": ("gate-sz-hop", "sz-a1-b1"),
    }
    reg.add_devices([DeviceSpec(d, "gate", r) for d, r in gates.values()], now=now)
    rules = tmp_path / "none.yaml"
    rules.write_text("rules: []\n", encoding="utf-8")
    seq = Seq()

    def access(device: str, card: str) -> Any:
        return seq.msg(device, "event", f'"type":"access","credential":"{card}","direction":"in","result":"granted"')

    with running_stack(broker, reg, store, rules) as stack:
        stack.publish([access(gates["gz1"][0], "card-local")])
        stack.publish([access(gates["gz2"][0], "card-local")])  # within Guangzhou
        stack.publish([access(gates["gz1"][0], "card-far")])
        stack.publish([access(gates["sz"][0], "card-far")])  # Guangzhou -> Shenzhen
        x6 = wait_until(lambda: stack.incident("X6"), 20, what="X6")
        wait_until(
            lambda: len([a for a in stack.alerts.service.open_alerts() if a.rule_id == "G7"]) == 2,
            20,
            what="both G7 alerts (the far hop and the one within Guangzhou)",
        )
        assert (x6.scope_level, x6.region_id, x6.type) == (ScopeLevel.PROVINCE, "gd", "cross_agency_credential")
        assert [m.device_id for m in x6.members.values()] == [gates["sz"][0]]
        assert x6.detail["there"] == "gz" and x6.detail["here"] == "sz"
        assert [t.department for t in stack.joint.store.tasks(incident_id=x6.id)] == ["security"]
        stack.joint.tick()
        incidents = stack.incidents()
    assert [i.pattern_id for i in incidents] == ["X6"], "the hop within one city made none"


@pytest.mark.integration
def test_x3_vehicle_out_of_hours_without_a_gate_entry_and_with_one(
    broker: Any, sqlite_registry: Registry, store: SqliteStore, tmp_path: Path
) -> None:
    """X3 through the real stack, with its watch shortened by an override edited through the API (the stored
    layer the service loads at start): a car of agency gz-a1 used out of hours (V1) with no after-hours entry at
    its agency is one vehicle-misuse incident of the agency, with tasks for vehicles and security; a car of agency
    gz-a2 used while someone came in through a gate of that agency after hours (G5) is none. The working hours of
    V1 and G5 are set three hours away from now, so the test holds at any hour."""
    from joint.pattern_store import PatternStore

    reg = sqlite_registry
    now = datetime.now(UTC)
    reg.upsert_regions(REGIONS, now=now)
    reg.add_devices(
        [
            DeviceSpec("car-a1", "vehicle", "gz-a1-b1"),
            DeviceSpec("car-a2", "vehicle", "gz-a2-b1"),
            DeviceSpec("gate-a2-night", "gate", "gz-a2-b1"),
        ],
        now=now,
    )
    hours = _hours_away(now)
    rules = tmp_path / "hours.yaml"
    rules.write_text(
        "overrides:\n"
        f"  - {{rule: V1, params: {{hours: '{hours}', grace_s: 0, min_distance_m: 0}}}}\n"
        f"  - {{rule: G5, params: {{hours: '{hours}'}}}}\n",
        encoding="utf-8",
    )
    PatternStore(reg.engine).save_override("X3", None, {"params": {"before_s": 30, "after_s": 2}}, "test", now)
    seq = Seq()

    def drive(car: str) -> list[Any]:
        body = '"ignition":true,"lat":23.13,"lon":113.26,"speed_kmh":30'
        return [seq.msg(car, "telemetry", body), seq.msg(car, "telemetry", body)]

    with running_stack(broker, reg, store, rules) as stack:
        stack.publish([seq.msg("gate-a2-night", "event", ENTRY)])
        wait_until(
            lambda: any(a.rule_id == "G5" for a in stack.alerts.service.open_alerts()), 20, what="the after-hours entry"
        )
        stack.publish(drive("car-a2") + drive("car-a1"))
        v1 = wait_until(
            lambda: (
                {a.device_id for a in stack.alerts.service.open_alerts() if a.rule_id == "V1"} >= {"car-a1", "car-a2"}
            ),
            20,
            what="V1 of both cars",
        )
        assert v1
        x3 = wait_until(lambda: stack.incident("X3"), 20, what="X3 after its 2 s watch")
        assert (x3.scope_level, x3.region_id, x3.type) == (ScopeLevel.AGENCY, "gz-a1", "vehicle_misuse")
        assert [m.device_id for m in x3.members.values()] == ["car-a1"]
        assert sorted(t.department for t in stack.joint.store.tasks(incident_id=x3.id)) == ["security", "vehicles"]
        stack.joint.tick(datetime.now(UTC) + timedelta(seconds=5))
        incidents = stack.incidents()
    assert [(i.pattern_id, i.region_id) for i in incidents] == [("X3", "gz-a1")], "the car with a gate entry: none"


@pytest.mark.integration
def test_x1_after_hours_entry_then_a_load_rise_in_the_building(
    broker: Any, sqlite_registry: Registry, store: SqliteStore, tmp_path: Path
) -> None:
    """X1 through the real stack: an after-hours entry (G5) into building b1, then a load rise there is one
    after-hours-energy incident of the building, one severity level above its members, with tasks for security and
    energy; a load rise in building b2 with no entry is none. The pack's load rules (E1, E4, E4.step) need a day of
    history, so the test's rule file has a plain threshold on power (T.load) and an override stored through the API
    makes it X1's ``then``; the window, scope, severity and routing are the pack's."""
    devices = [
        DeviceSpec("gate-b1-night", "gate", "gz-a1-b1"),
        DeviceSpec("meter-b1", "energy_meter", "gz-a1-b1"),
        DeviceSpec("meter-b2", "energy_meter", "gz-a1-b2"),
    ]
    rules = _load_setup(sqlite_registry, tmp_path, devices, "X1", {"then": {"rules": ["T.load"]}})
    with running_stack(broker, sqlite_registry, store, rules) as stack:
        _entry_then_loads(stack, Seq(), "gate-b1-night", ["meter-b2", "meter-b1"])
        x1 = wait_until(lambda: stack.incident("X1"), 20, what="X1")
        assert (x1.scope_level, x1.region_id, x1.type) == (ScopeLevel.BUILDING, "gz-a1-b1", "after_hours_energy")
        assert sorted(m.rule_id for m in x1.members.values()) == ["G5", "T.load"]
        assert x1.severity == "major", "one level above its members (warning)"
        assert sorted(t.department for t in stack.joint.store.tasks(incident_id=x1.id)) == ["energy", "security"]
        _all_loads(stack, {"meter-b1", "meter-b2"})
        stack.joint.tick()
        incidents = stack.incidents()
    assert [(i.pattern_id, i.region_id) for i in incidents] == [("X1", "gz-a1-b1")], "b2's load alone: none"


@pytest.mark.integration
def test_x8_load_in_an_empty_building_and_none_where_someone_came_in(
    broker: Any, sqlite_registry: Registry, store: SqliteStore, tmp_path: Path
) -> None:
    """X8 through the real stack: a night / non-working-day load alert in a building nobody entered after hours in
    the day before is one empty-building-load incident with an energy task; the same load in a building with an
    after-hours entry (G5) is none. As for X1, the pack's E2 / E3 need nights of history: a threshold (T.load) is
    made X8's anchor through an API override; the day-long look-back, scope and routing are the pack's."""
    devices = [
        DeviceSpec("meter-empty", "energy_meter", "gz-a1-b3"),
        DeviceSpec("meter-used", "energy_meter", "gz-a1-b4"),
        DeviceSpec("gate-b4-night", "gate", "gz-a1-b4"),
    ]
    rules = _load_setup(sqlite_registry, tmp_path, devices, "X8", {"anchor": {"rules": ["T.load"]}})
    with running_stack(broker, sqlite_registry, store, rules) as stack:
        _entry_then_loads(stack, Seq(), "gate-b4-night", ["meter-used", "meter-empty"])
        x8 = wait_until(lambda: stack.incident("X8"), 20, what="X8")
        assert (x8.scope_level, x8.region_id, x8.type) == (ScopeLevel.BUILDING, "gz-a1-b3", "empty_building_load")
        assert [m.device_id for m in x8.members.values()] == ["meter-empty"]
        assert [t.department for t in stack.joint.store.tasks(incident_id=x8.id)] == ["energy"]
        _all_loads(stack, {"meter-empty", "meter-used"})
        stack.joint.tick(datetime.now(UTC) + timedelta(seconds=5))
        incidents = stack.incidents()
    assert [(i.pattern_id, i.region_id) for i in incidents] == [("X8", "gz-a1-b3")], "b4 had an entry: none"
