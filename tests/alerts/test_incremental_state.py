"""Issue 10: the alert commit writes only the lifecycle's aux keys that changed (``alert_aux``, one row per key),
a restart restores them exactly (also from the old one-row ``alert_kv`` format), and the periodic registry refresh
sees devices added, changed and removed while re-reading only what changed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select, text, update

from alerts.lifecycle import AlertBook, LifecycleConfig
from alerts.models import AlertKvRow
from alerts.repository import ALERT_AUX, LIFECYCLE_KEY, jsonable
from alerts.rules import RuleSet
from alerts.service import AlertService, regions_from_registry
from alerts.types import AlertChange, Severity
from core.protocol import Reading
from core.store import WriteBatch
from devices.models import Device
from devices.registry import DeviceSpec, RegionSpec, Registry

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)

HOT = {
    "id": "HOT",
    "kind": "threshold",
    "device_types": ["sensor"],
    "severity": "major",
    "title_zh": "温度过高",
    "title_en": "Too hot",
    "params": {"field": "temperature_c", "op": ">", "value": 30},
}
OFF = {
    "id": "OFF",
    "kind": "absence",
    "device_types": ["sensor"],
    "severity": "warning",
    "title_zh": "离线",
    "title_en": "Offline",
    "params": {"interval_s": 100, "factor": 1},
}


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> datetime:
        return self.at

    def set(self, seconds: float) -> None:
        self.at = T0 + timedelta(seconds=seconds)


@pytest.fixture
def reg(registry: Registry) -> Iterator[Registry]:
    registry.upsert_regions(
        [
            RegionSpec("gd", "广东省", "province"),
            RegionSpec("gz", "广州市", "city", "gd"),
            RegionSpec("bldg-1", "一号楼", "building", "gz"),
            RegionSpec("bldg-2", "二号楼", "building", "gz"),
        ],
        now=T0,
    )
    registry.add_devices([DeviceSpec("temp-1", "sensor", "bldg-1"), DeviceSpec("temp-2", "sensor", "bldg-1")], now=T0)
    yield registry


def service(reg: Registry, clock: Clock, rules: list[dict[str, Any]], **kw: Any) -> AlertService:
    return AlertService(
        reg.engine,
        RuleSet.from_documents([("t.yaml", {"rules": rules})]),
        reg.snapshot,
        regions_from_registry(reg),
        clock_fn=clock,
        **kw,
    )


def temp(t: float, value: float, device: str = "temp-1") -> WriteBatch:
    b = WriteBatch()
    ms = int((T0 + timedelta(seconds=t)).timestamp() * 1000)
    b.readings.append(Reading(device, "bldg-1", "sensor", ms, None, {"temperature_c": value}))
    return b


def aux_rows(reg: Registry) -> dict[tuple[str, str], Any]:
    with reg.engine.connect() as conn:
        return {(s, k): v for s, k, v in conn.execute(select(ALERT_AUX.c.section, ALERT_AUX.c.key, ALERT_AUX.c.value))}


def test_flap_history_survives_a_crash_from_per_key_rows(reg: Registry) -> None:
    clock = Clock()
    flap = LifecycleConfig(flap_threshold=3)
    svc = service(reg, clock, [HOT], lifecycle=flap)
    svc.load()
    clock.set(1)
    svc.on_batch(temp(1, 35))
    clock.set(2)
    svc.on_batch(temp(2, 20))
    assert aux_rows(reg)[("fires", "HOT:temp-1")] and ("last_resolved", "HOT:temp-1") in aux_rows(reg)
    # crash (no stop, no flush); the fires of the first service are all the second one knows
    svc2 = service(reg, clock, [HOT], lifecycle=flap)
    svc2.load()
    clock.set(3)
    assert [e.kind for e in svc2.process([*temp(3, 36).readings])] == ["created"]
    clock.set(4)
    svc2.on_batch(temp(4, 20))
    clock.set(5)
    assert [e.kind for e in svc2.process([*temp(5, 37).readings])] == ["flapping"]  # third fire within 1 h
    assert len(aux_rows(reg)[("fires", "HOT:temp-1")]) == 3
    assert ("last_resolved", "HOT:temp-1") not in aux_rows(reg)  # reopened: the row is deleted


def test_held_fire_of_an_offline_device_survives_a_crash(reg: Registry) -> None:
    clock = Clock()
    hot = {**HOT, "params": {**HOT["params"], "for_s": 150}}
    svc = service(reg, clock, [hot, OFF])
    svc.load()
    clock.set(0)
    svc.on_batch(temp(0, 35, device="temp-2"))
    clock.set(100)
    svc.tick()  # offline
    clock.set(150)
    svc.tick()  # the stale high value: held back while the device is offline
    rows = aux_rows(reg)
    assert ("held", "HOT:temp-2") in rows and rows[("offline", "temp-2")] == ["OFF:temp-2"]
    svc2 = service(reg, clock, [hot, OFF])  # crash and restart
    svc2.load()
    clock.set(200)
    events = svc2.process([*temp(200, 36, device="temp-2").readings])
    assert [(e.kind, e.alert.rule_id) for e in events] == [("resolved", "OFF"), ("created", "HOT")]
    assert [k for k in aux_rows(reg) if k[0] in ("held", "offline")] == [("offline", "temp-1")]  # never reported


def test_aux_state_of_the_old_one_row_format_is_read_and_moved(reg: Registry) -> None:
    clock = Clock()
    old = AlertBook(LifecycleConfig(flap_threshold=3))
    for t, firing in ((1, True), (2, False), (3, True)):
        at = T0 + timedelta(seconds=t)
        old.apply(AlertChange("HOT", "HOT:temp-1", "temp-1", "bldg-1", Severity.MAJOR, firing, at, "z", "e"), now=at)
    with reg.engine.begin() as conn:  # what the repository wrote before migration 0012
        conn.execute(
            AlertKvRow.__table__.insert().values(key=LIFECYCLE_KEY, value=jsonable(old.aux_to_json()), updated_at=T0)
        )
    svc = service(reg, clock, [HOT], lifecycle=LifecycleConfig(flap_threshold=3))
    svc.load()
    assert len(svc.book.fires["HOT:temp-1"]) == 2
    clock.set(5)
    svc.on_batch(temp(5, 35))  # the first write moves every key to alert_aux and drops the old row
    assert len(aux_rows(reg)[("fires", "HOT:temp-1")]) == 3  # the two restored ones and this one
    with reg.engine.connect() as conn:
        assert conn.scalar(select(AlertKvRow.key).where(AlertKvRow.key == LIFECYCLE_KEY)) is None


def test_commit_writes_only_the_keys_that_changed() -> None:
    book = AlertBook()
    at = T0
    for i in range(100):
        book.apply(AlertChange("R", f"R:d{i}", f"d{i}", "b", Severity.MAJOR, True, at, "z", "e"), now=at)
    assert len(book.take_aux()) == 100
    assert book.take_aux() == {}
    at2 = T0 + timedelta(seconds=10)
    book.apply(AlertChange("R", "R:d7", "d7", "b", Severity.MAJOR, False, at2, "z", "e"), now=at2)
    assert book.take_aux() == {("last_resolved", "R:d7"): 8}  # alert ids start at 1
    book.tick(now=T0 + timedelta(hours=2))  # out of the flap window: every row goes
    gone = book.take_aux()
    assert len(gone) == 101 and set(gone.values()) == {None}


def test_refresh_sees_devices_added_changed_and_removed(reg: Registry) -> None:
    clock = Clock()
    svc = service(reg, clock, [OFF])
    svc.load()
    full_reads = reg.feed.full_reads
    reg.add_devices([DeviceSpec("temp-3", "sensor", "bldg-2"), DeviceSpec("temp-1", "sensor", "bldg-2")], now=T0)
    with reg.engine.begin() as conn:
        conn.execute(delete(Device).where(Device.id == "temp-2"))
    svc.refresh()
    assert reg.feed.full_reads == full_reads  # the registry re-read only the changed devices
    clock.set(100)
    events = svc.tick()
    assert sorted((e.alert.device_id, e.alert.region_id) for e in events) == [
        ("temp-1", "bldg-2"),
        ("temp-3", "bldg-2"),
    ]
    with reg.engine.begin() as conn:  # disabled by plain SQL (as provisioning's revoke does)
        conn.execute(update(Device).where(Device.id == "temp-3").values(enabled=False))
        conn.execute(text("SELECT 1"))
    svc.refresh()
    assert "temp-3" not in svc._subjects and "temp-1" in svc._subjects


def test_escalator_skips_alerts_not_due_and_escalates_the_due_one() -> None:
    from dataclasses import replace

    from alerts.escalation import EscalationPolicies, EscalationPolicy, Escalator
    from alerts.types import Alert, AlertState

    def alert(i: int, told: datetime) -> Alert:
        return Alert(
            i, f"R:d{i}", "R", f"d{i}", "b", Severity.MAJOR, AlertState.FIRING, "z", "e", told, told,
            region_path=("gd", "gz", "b"), learned_at=told, escalation_from=told,
        )  # fmt: skip

    alerts = {i: alert(i, T0) for i in range(1, 1001)}
    chains: list[str] = []

    def ancestors(region_id: str) -> list[str]:
        chains.append(region_id)
        return ["gd", "gz", region_id]

    def record(esc: Any, now: datetime) -> Alert | None:
        alerts[esc.alert_id] = replace(alerts[esc.alert_id], escalation_level=esc.level, escalation_from=esc.due_at)
        return alerts[esc.alert_id]

    sent: list[Any] = []
    policies = EscalationPolicies(EscalationPolicy(after=(timedelta(minutes=15),)))
    esc = Escalator(policies, ancestors, lambda: list(alerts.values()), record, sent.append)
    assert esc.tick(T0 + timedelta(minutes=1)) == [] and len(chains) == 1000
    assert esc.tick(T0 + timedelta(seconds=90)) == [] and len(chains) == 1000  # memo: nothing recomputed
    alerts[7] = replace(alerts[7], escalation_from=T0 - timedelta(minutes=20))  # changed: a new snapshot
    (done,) = esc.tick(T0 + timedelta(seconds=100))
    assert (done.alert_id, done.level, done.target_region_id) == (7, 1, "gz") and len(sent) == 1
    assert len(chains) == 1002  # only the changed alert was looked at again (its next due, then its escalation)
    assert esc.tick(T0 + timedelta(seconds=110)) == []  # alert 7 is at level 1 now: next due 15 min later
    assert len(esc.tick(T0 + timedelta(minutes=16))) == 1000  # the others reach level 1, alert 7 level 2
