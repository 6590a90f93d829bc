"""AlertService: stream evaluation, persistence, restart (mid held-for window, replays), timers (apscheduler)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from alerts.lifecycle import LifecycleEvent
from alerts.models import AlertRow
from alerts.rules import PACKS_DIR, RuleSet
from alerts.service import AlertService, notification_kind, regions_from_registry
from alerts.types import AlertState
from core.protocol import Event, Reading
from core.store import WriteBatch
from devices.registry import DeviceSpec, RegionSpec, Registry
from tests.helpers import wait_until
from tests.ingest.conftest import ingest_on

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 Beijing

RULES: dict[str, Any] = {
    "rules": [
        {
            "id": "HOT",
            "kind": "threshold",
            "device_types": ["sensor"],
            "severity": "major",
            "title_zh": "温度过高",
            "title_en": "Too hot",
            "params": {"field": "temperature_c", "op": ">", "value": 30, "for_s": 60},
        },
        {
            "id": "OFF",
            "kind": "absence",
            "device_types": ["sensor"],
            "severity": "warning",
            "title_zh": "离线",
            "title_en": "Offline",
            "params": {"interval_s": 100, "factor": 1},
        },
        {
            "id": "TAMPER",
            "kind": "event_count",
            "device_types": ["sensor"],
            "title_zh": "破坏",
            "title_en": "Tamper",
            "params": {"match": {"event": "fault", "where": {"code": "tamper"}}},
        },
    ]
}


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def set(self, seconds: float) -> datetime:
        self.at = T0 + timedelta(seconds=seconds)
        return self.at


def populate(registry: Registry) -> None:
    registry.upsert_regions(
        [
            RegionSpec("gd", "广东省", "province", lat=23.1, lon=113.3),
            RegionSpec("gz", "广州市", "city", "gd"),
            RegionSpec("bldg-1", "一号楼", "building", "gz"),
        ],
        now=T0,
    )
    registry.add_devices([DeviceSpec("temp-1", "sensor", "bldg-1"), DeviceSpec("temp-2", "sensor", "bldg-1")], now=T0)


def make_service(registry: Registry, clock: Clock, rules: RuleSet | None = None, **kw: Any) -> AlertService:
    return AlertService(
        registry.engine,
        rules or RuleSet.from_documents([("test.yaml", RULES)]),
        registry.snapshot,
        regions_from_registry(registry),
        clock_fn=clock,
        **kw,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def reg(sqlite_registry: Registry) -> Iterator[Registry]:
    populate(sqlite_registry)
    yield sqlite_registry


@pytest.fixture
def any_reg(registry: Registry) -> Iterator[Registry]:
    """SQLite and PostgreSQL: for the restart and replay guarantees."""
    populate(registry)
    yield registry


def temp(t: float, value: float, device: str = "temp-1", seq: int | None = None) -> Reading:
    return Reading(
        device, "bldg-1", "sensor", int((T0 + timedelta(seconds=t)).timestamp() * 1000), seq, {"temperature_c": value}
    )


def batch(*records: Reading | Event) -> WriteBatch:
    b = WriteBatch()
    for r in records:
        (b.readings if isinstance(r, Reading) else b.events).append(r)  # type: ignore[arg-type]
    return b


def stored(registry: Registry, **where: Any) -> list[AlertRow]:
    with registry.session() as s:
        q = select(AlertRow).order_by(AlertRow.id)
        for k, v in where.items():
            q = q.where(getattr(AlertRow, k) == v)
        return list(s.scalars(q))


def test_service_stream_alert_stored_and_subscriber_told(reg: Registry, clock: Clock) -> None:
    svc = make_service(reg, clock)
    svc.load()
    seen: list[LifecycleEvent] = []
    svc.subscribe(seen.append)
    clock.set(0)
    svc.on_batch(batch(temp(0, 35)))
    assert stored(reg) == []  # held for 60 s first
    clock.set(61)
    svc.on_batch(batch(temp(61, 36)))
    (row,) = stored(reg)
    assert (row.rule_id, row.device_id, row.state, row.open_key) == ("HOT", "temp-1", "firing", "HOT:temp-1")
    assert row.region_path == "/gd/gz/bldg-1/"
    assert [notification_kind(e) for e in seen] == ["firing"]
    clock.set(70)
    svc.on_batch(batch(temp(70, 20)))
    (row,) = stored(reg)
    assert row.state == "resolved" and row.open_key is None and row.resolved_by == "system"
    assert [notification_kind(e) for e in seen] == ["firing", "resolved"]


def test_service_restart_mid_held_for_window_keeps_window(any_reg: Registry, clock: Clock) -> None:
    reg = any_reg
    svc = make_service(reg, clock)
    svc.load()
    clock.set(0)
    svc.on_batch(batch(temp(0, 35)))
    # crash: no stop(), no flush. A new service on the same database 30 s later.
    clock.set(30)
    svc2 = make_service(reg, clock)
    svc2.load()
    clock.set(59)
    svc2.tick()
    assert stored(reg) == []
    clock.set(60)
    svc2.tick()
    (row,) = stored(reg)
    assert row.rule_id == "HOT" and row.started_at.replace(tzinfo=UTC) == T0 + timedelta(seconds=60)


def test_service_replayed_batch_never_double_alerts(any_reg: Registry, clock: Clock) -> None:
    reg = any_reg
    svc = make_service(reg, clock)
    svc.load()
    tamper = Event("temp-1", "bldg-1", "sensor", int(T0.timestamp() * 1000), 7, "fault", {"code": "tamper"})
    clock.set(1)
    svc.on_batch(batch(tamper))
    svc.on_batch(batch(tamper))  # redelivered
    assert len(stored(reg)) == 1 and stored(reg)[0].count == 1
    # restart, then the same message once more (the seq guard is gone): still one alert, counted
    svc2 = make_service(reg, clock)
    svc2.load()
    svc2.on_batch(batch(tamper))
    (row,) = stored(reg)
    assert row.state == "firing" and row.count == 2


def test_service_restart_after_fire_does_not_fire_again(reg: Registry, clock: Clock) -> None:
    svc = make_service(reg, clock)
    svc.load()
    clock.set(0)
    svc.on_batch(batch(temp(0, 35)))
    clock.set(60)
    svc.tick()
    svc2 = make_service(reg, clock)
    svc2.load()
    clock.set(120)
    svc2.on_batch(batch(temp(120, 36)))
    svc2.tick()
    assert len(stored(reg)) == 1
    assert [a.rule_id for a in svc2.open_alerts()] == ["HOT"]


def test_service_absence_catches_device_that_never_reported(reg: Registry, clock: Clock) -> None:
    svc = make_service(reg, clock)
    svc.load()
    clock.set(50)
    svc.on_batch(batch(temp(50, 20, device="temp-2")))
    clock.set(100)
    svc.tick()
    assert [(r.rule_id, r.device_id) for r in stored(reg)] == [("OFF", "temp-1")]
    clock.set(150)
    svc.tick()
    assert sorted((r.rule_id, r.device_id) for r in stored(reg)) == [("OFF", "temp-1"), ("OFF", "temp-2")]
    clock.set(160)
    svc.on_batch(batch(temp(160, 20, device="temp-1")))
    assert [r.device_id for r in stored(reg, state="resolved")] == ["temp-1"]


def test_service_offline_device_inhibits_stale_value_alert(reg: Registry, clock: Clock) -> None:
    doc = {"rules": [{**RULES["rules"][0], "params": {**RULES["rules"][0]["params"], "for_s": 150}}, RULES["rules"][1]]}
    svc = make_service(reg, clock, rules=RuleSet.from_documents([("t.yaml", doc)]))
    svc.load()
    clock.set(0)
    svc.on_batch(batch(temp(0, 35, device="temp-2")))
    clock.set(100)
    svc.tick()  # offline at 100
    clock.set(150)
    svc.tick()  # the stale high value would have held for 150 s now: held back, the device is offline
    assert [r.rule_id for r in stored(reg, device_id="temp-2")] == ["OFF"]
    clock.set(200)
    svc.on_batch(batch(temp(200, 36, device="temp-2")))  # back, and still hot: now it is an alert
    assert [(r.rule_id, r.state) for r in stored(reg, device_id="temp-2")] == [("OFF", "resolved"), ("HOT", "firing")]


def test_service_people_actions_persist_with_timeline(any_reg: Registry, clock: Clock) -> None:
    reg = any_reg
    svc = make_service(reg, clock)
    svc.load()
    svc.on_batch(
        batch(Event("temp-1", "bldg-1", "sensor", int(T0.timestamp() * 1000), None, "fault", {"code": "tamper"}))
    )
    (alert,) = svc.open_alerts()
    clock.set(10)
    assert svc.acknowledge(alert.id, "zhang", "查看中").state is AlertState.ACKNOWLEDGED
    svc.comment(alert.id, "zhang", "现场无人")
    svc.assign(alert.id, "zhang", "li")
    svc.resolve(alert.id, "li", "误报，已更换传感器")
    (row,) = stored(reg)
    assert (row.state, row.acknowledged_by, row.ack_reason, row.assignee, row.resolved_by) == (
        "resolved",
        "zhang",
        "查看中",
        "li",
        "li",
    )
    assert [c.kind for c in svc.repo.comments(alert.id)] == ["ack", "comment", "assign", "resolve"]


def test_service_silence_survives_restart_and_renotifies(reg: Registry, clock: Clock) -> None:
    svc = make_service(reg, clock)
    svc.load()
    clock.set(0)
    svc.add_silence(
        reason="维护窗口", creator="admin", starts_at=T0, ends_at=T0 + timedelta(seconds=600), region_id="gz"
    )
    svc.on_batch(
        batch(Event("temp-1", "bldg-1", "sensor", int(T0.timestamp() * 1000), None, "fault", {"code": "tamper"}))
    )
    (row,) = stored(reg)
    assert row.silenced
    svc2 = make_service(reg, clock)
    svc2.load()
    told: list[tuple[str | None, str]] = []
    svc2.subscribe(lambda e: told.append((notification_kind(e), e.alert.rule_id)))
    clock.set(599)
    svc2.tick()
    assert [t for t in told if t[1] == "TAMPER"] == []
    clock.set(600)
    svc2.tick()
    assert [t for t in told if t[1] == "TAMPER"] == [("renotify", "TAMPER")]
    assert not stored(reg, rule_id="TAMPER")[0].silenced


def test_service_subscriber_error_does_not_break_the_stream(reg: Registry, clock: Clock) -> None:
    svc = make_service(reg, clock)
    svc.load()

    def bad(_: LifecycleEvent) -> None:
        raise RuntimeError("boom")

    svc.subscribe(bad)
    svc.on_batch(
        batch(Event("temp-1", "bldg-1", "sensor", int(T0.timestamp() * 1000), None, "fault", {"code": "tamper"}))
    )
    assert len(stored(reg)) == 1


def test_service_escalation_level_recorded_once(reg: Registry, clock: Clock) -> None:
    svc = make_service(reg, clock)
    svc.load()
    svc.on_batch(
        batch(Event("temp-1", "bldg-1", "sensor", int(T0.timestamp() * 1000), None, "fault", {"code": "tamper"}))
    )
    (alert,) = svc.open_alerts()
    assert svc.set_escalation_level(alert.id, 1, T0) is not None
    assert svc.set_escalation_level(alert.id, 1, T0) is None
    assert stored(reg)[0].escalation_level == 1


def test_service_default_packs_on_stream(sqlite_registry: Registry, clock: Clock) -> None:
    reg = sqlite_registry
    reg.upsert_regions([RegionSpec("gd", "广东省", "province", lat=23.1, lon=113.3)], now=T0)
    reg.add_devices([DeviceSpec("car-1", "vehicle", "gd")], now=T0)
    svc = make_service(reg, clock, rules=RuleSet.load([PACKS_DIR]))
    svc.load()
    ts = [int((T0 + timedelta(seconds=t)).timestamp() * 1000) for t in range(0, 40, 5)]
    recs = [Reading("car-1", "gd", "vehicle", t, None, {"lat": 23.1, "lon": 113.3, "speed_kmh": 90}) for t in ts]
    clock.set(40)
    svc.on_batch(WriteBatch(readings=recs))
    assert [r.rule_id for r in stored(reg)] == ["V6"]


def test_service_timers_run_in_apscheduler(sqlite_registry: Registry) -> None:
    populate(sqlite_registry)
    rules = {"rules": [{**RULES["rules"][1], "params": {"interval_s": 0.2, "factor": 1}}]}
    svc = AlertService(
        sqlite_registry.engine,
        RuleSet.from_documents([("t.yaml", rules)]),
        sqlite_registry.snapshot,
        regions_from_registry(sqlite_registry),
        tick_interval_s=0.05,
        snapshot_interval_s=0.1,
        refresh_interval_s=60,
    )
    with svc:
        wait_until(lambda: len(stored(sqlite_registry)) == 2, timeout=5, what="both devices reported offline")
    with sqlite_registry.session() as s:
        assert s.scalar(select(func.count()).select_from(AlertRow)) == 2


def test_service_store_outage_keeps_changes_and_writes_them_later(reg: Registry, clock: Clock) -> None:
    from sqlalchemy import text

    svc = make_service(reg, clock)
    svc.load()
    with reg.engine.begin() as conn:  # the alerts table "disappears": every write fails
        conn.execute(text("ALTER TABLE alerts RENAME TO alerts_away"))
    told: list[str] = []
    svc.subscribe(lambda e: told.append(e.kind))
    svc.on_batch(
        batch(Event("temp-1", "bldg-1", "sensor", int(T0.timestamp() * 1000), None, "fault", {"code": "tamper"}))
    )
    assert told == ["created"]  # people are told; the alert waits in memory
    assert [a.rule_id for a in svc.open_alerts()] == ["TAMPER"]
    with reg.engine.begin() as conn:
        conn.execute(text("ALTER TABLE alerts_away RENAME TO alerts"))
        assert conn.execute(text("SELECT count(*) FROM alerts")).scalar() == 0
    clock.set(1)
    svc.tick()
    assert [(r.rule_id, r.state) for r in stored(reg)] == [("TAMPER", "firing")]


@pytest.mark.integration
def test_service_behind_real_ingest_and_mosquitto(
    broker: Any, sqlite_registry: Registry, store: Any, tmp_path: Any
) -> None:
    """Device -> Mosquitto -> ingest (BatchListener) -> AlertService with the default packs -> alerts stored."""
    import json
    import time

    from tests.helpers import mqtt_client

    reg = sqlite_registry
    now = datetime.now(UTC)
    reg.upsert_regions([RegionSpec("gd", "广东省", "province"), RegionSpec("gz", "广州市", "city", "gd")], now=now)
    reg.add_devices([DeviceSpec("gate-0001", "gate", "gz")], now=now)
    no_g5 = tmp_path / "local.yaml"
    no_g5.write_text("overrides:\n  - {rule: G5, enabled: false}\n", encoding="utf-8")  # time-of-day dependent
    alerts = AlertService(
        reg.engine, RuleSet.load([PACKS_DIR, no_g5]), reg.snapshot, regions_from_registry(reg), tick_interval_s=0.05
    )
    alerts.start()
    ingest = ingest_on(broker, store, reg.snapshot, listeners=[alerts.on_batch])
    ingest.start()
    sim = mqtt_client(broker.port, "lianfang-sim", broker.sim_password)
    try:

        def pub(kind: str, payload: dict[str, Any]) -> None:
            sim.publish(f"lf/v1/gate-0001/{kind}", json.dumps(payload), qos=1).wait_for_publish(5)

        t = time.time_ns() // 1_000_000 - 20_000
        pub("event", {"ts": t, "seq": 1, "type": "access", "credential": "c-1", "result": "granted"})
        pub("telemetry", {"ts": t + 1000, "seq": 2, "door_open": True})  # near miss: granted 1 s before
        pub("telemetry", {"ts": t + 5000, "seq": 3, "door_open": False})
        pub("telemetry", {"ts": t + 10_000, "seq": 4, "door_open": True})  # forced: nothing in the 3 s before
        pub("telemetry", {"ts": t + 12_000, "seq": 5, "door_open": False})
        pub("event", {"ts": t + 13_000, "seq": 6, "type": "tamper"})
        pub("event", {"ts": t + 13_000, "seq": 6, "type": "tamper"})  # redelivered duplicate
        wait_until(lambda: len(stored(reg)) >= 2, timeout=8, what="G1 and G11.tamper stored")
        rows = stored(reg)
        assert sorted(r.rule_id for r in rows) == ["G1", "G11.tamper"]
        assert all(r.count == 1 for r in rows)
        forced = next(r for r in rows if r.rule_id == "G1")
        assert forced.detail["trigger_at"] == t + 10_000
    finally:
        sim.loop_stop()
        sim.disconnect()
        ingest.stop()
        alerts.stop()


def test_service_disabled_device_is_not_reported_offline(reg: Registry, clock: Clock) -> None:
    svc = make_service(reg, clock)
    svc.load()
    reg.set_enabled("temp-2", False, now=T0)
    svc.refresh()
    clock.set(100)
    svc.tick()
    assert [(r.rule_id, r.device_id) for r in stored(reg)] == [("OFF", "temp-1")]
