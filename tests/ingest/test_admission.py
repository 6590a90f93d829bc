"""What ingest admits (issue 8, part 4), through a real Mosquitto.

- A message sent right after ``devices enable`` is accepted: a ``disabled_device`` / ``unregistered_device``
  verdict is only given on a registry view read after the message arrived.
- Retained deliveries on telemetry and event (a broker replay at subscription) are rejected ``retained`` and never
  stored twice; retained status stays fine.
- Only an accepted message makes a device seen: a gate that sends only rejected objects has no ``last_seen``.
"""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt

from core.store.sqlite import SqliteStore
from devices.liveness import is_online
from devices.registry import DeviceSpec, Registry
from tests.conftest import Broker
from tests.helpers import mqtt_client, wait_until
from tests.ingest.conftest import NOW, IngestFactory


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _pub(client: mqtt.Client, device: str, kind: str, doc: object, *, retain: bool = False) -> None:
    client.publish(f"lf/v1/{device}/{kind}", json.dumps(doc), qos=1, retain=retain).wait_for_publish(5)


def _reasons(store: SqliteStore, device: str) -> list[str]:
    return sorted(r.reason for r in store.rejections(device, None, 100))


def test_a_message_right_after_enable_is_accepted(
    broker: Broker, make_ingest: IngestFactory, store: SqliteStore, sqlite_registry: Registry
) -> None:
    svc = make_ingest()
    sim = mqtt_client(broker.port, "lianfang-sim", broker.sim_password)
    try:
        base = _now_ms() - 60_000
        for trial in range(4):
            sqlite_registry.set_enabled("meter-off", False, now=NOW)
            svc.registry.refresh()  # ingest knows it is disabled
            acked = svc.stats.acked
            _pub(sim, "meter-off", "telemetry", {"ts": base + 2 * trial, "energy_kwh": 1})
            wait_until(lambda a=acked: svc.stats.acked > a, 10, what="the disabled device's message judged")
            assert _reasons(store, "meter-off").count("disabled_device") == trial + 1
            sqlite_registry.set_enabled("meter-off", True, now=NOW)  # `lianfang devices enable meter-off`
            _pub(sim, "meter-off", "telemetry", {"ts": base + 2 * trial + 1, "energy_kwh": 2})  # at once
            wait_until(lambda n=trial + 1: store.count_readings("meter-off") == n, 10, what=f"trial {trial} stored")
        # A device registered a moment ago: its first message is accepted too.
        sqlite_registry.add_devices([DeviceSpec("meter-new1", "energy_meter", "gd-gz-a01-b1")], now=NOW)
        _pub(sim, "meter-new1", "telemetry", {"ts": base, "energy_kwh": 3})
        wait_until(lambda: store.count_readings("meter-new1") == 1, 10, what="the new device's message stored")
        assert _reasons(store, "meter-new1") == []
        # A device that stays unknown is still rejected, after at most one re-read.
        _pub(sim, "meter-9999", "telemetry", {"ts": base, "energy_kwh": 3})
        wait_until(lambda: _reasons(store, "meter-9999") == ["unregistered_device"], 10, what="unknown rejected")
    finally:
        sim.loop_stop()
        sim.disconnect()


def test_retained_telemetry_and_events_are_rejected_when_replayed_and_stored_once(
    broker: Broker, make_ingest: IngestFactory, store: SqliteStore
) -> None:
    sim = mqtt_client(broker.port, "lianfang-sim", broker.sim_password)
    ts = _now_ms() - 10_000
    try:
        svc = make_ingest()
        _pub(sim, "meter-0001", "telemetry", {"ts": ts, "seq": 1, "energy_kwh": 5}, retain=True)
        _pub(sim, "gate-0001", "event", {"ts": ts, "seq": 1, "type": "tamper"}, retain=True)
        _pub(sim, "gate-0001", "status", {"state": "online", "fw": "1.0"}, retain=True)
        _pub(sim, "meter-0002", "telemetry", {"energy_kwh": 7}, retain=True)  # no ts: a replay would be a new row
        wait_until(lambda: svc.stats.acked >= 4, 10, what="the live deliveries")
        assert store.count_readings("meter-0001") == 1 and len(store.events(["gate-0001"], 0, 2 * ts, None, 10)) == 1
        assert store.rejections(None, None, 10) == []  # live deliveries are not "retained" (no retain-as-published)
        for restart in range(2):  # each new ingest session subscribes again: the broker replays what is retained
            svc.stop()
            svc = make_ingest()
            wait_until(lambda s=svc: s.stats.acked >= 4, 10, what=f"the replay after restart {restart}")
            assert svc.stats.rejected.get("retained") == 3
        assert store.count_readings("meter-0001") == 1 and store.count_readings("meter-0002") == 1
        assert len(store.events(["gate-0001"], 0, 2 * ts, None, 10)) == 1
        assert _reasons(store, "meter-0001") == ["retained", "retained"]
        assert _reasons(store, "gate-0001") == ["retained", "retained"]
        assert store.device_states(["gate-0001"])["gate-0001"].status == "online"  # retained status is fine
    finally:
        for device in ("meter-0001", "meter-0002"):  # clear what is retained
            sim.publish(f"lf/v1/{device}/telemetry", b"", qos=1, retain=True).wait_for_publish(5)
        sim.loop_stop()
        sim.disconnect()


def test_only_an_accepted_message_makes_a_device_seen(
    broker: Broker, make_ingest: IngestFactory, store: SqliteStore
) -> None:
    svc = make_ingest()
    sim = mqtt_client(broker.port, "lianfang-sim", broker.sim_password)
    try:
        sim.publish("lf/v1/gate-0001/telemetry", b"[1, 2, 3]", qos=1).wait_for_publish(5)
        _pub(sim, "gate-0001", "telemetry", [{"occupancy": -1}, {"door_open": "yes"}])
        _pub(sim, "gate-0001", "event", {"type": "ignition_on"})
        wait_until(lambda: svc.stats.acked >= 3, 10, what="the rejected messages")
        state = store.device_states(["gate-0001"])["gate-0001"]
        assert state.rejected == 6 and state.last_seen_ms is None
        assert not is_online(state, 60, _now_ms())
        _pub(sim, "gate-0001", "telemetry", {"door_open": False})
        wait_until(lambda: svc.stats.acked >= 4, 10, what="an accepted heartbeat")
        state = store.device_states(["gate-0001"])["gate-0001"]
        assert state.last_seen_ms is not None and is_online(state, 60, _now_ms())
    finally:
        sim.loop_stop()
        sim.disconnect()
