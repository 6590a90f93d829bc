"""Ingest against a real Mosquitto: publish per protocol -> stored; every rejection; duplicates; arrays."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt

from core.protocol import DeviceInfo, Record, decode
from core.store.sqlite import SqliteStore
from tests.conftest import Broker
from tests.helpers import mqtt_client, wait_until
from tests.ingest.conftest import IngestFactory


def _sim(broker: Broker) -> mqtt.Client:
    return mqtt_client(broker.port, "lianfang-sim", broker.sim_password)


def _pub(client: mqtt.Client, device: str, kind: str, payload: object, *, raw: bytes | None = None) -> None:
    info = client.publish(f"lf/v1/{device}/{kind}", raw if raw is not None else json.dumps(payload), qos=1)
    info.wait_for_publish(5)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_ingest_stores_telemetry_events_and_status(
    broker: Broker, make_ingest: IngestFactory, store: SqliteStore
) -> None:
    svc = make_ingest()
    sim = _sim(broker)
    ts = _now_ms() - 1000
    _pub(sim, "meter-0001", "telemetry", {"ts": ts, "seq": 1, "energy_kwh": 10.5, "power_kw": 2.0})
    _pub(sim, "gate-0001", "event", {"ts": ts, "seq": 1, "type": "access", "credential": "c-1", "result": "granted"})
    _pub(sim, "gate-0001", "status", {"state": "online", "fw": "1.4.2"})
    wait_until(lambda: svc.stats.acked >= 3, what="3 messages acked")
    assert store.raw("meter-0001", "energy_kwh", ts - 1, ts + 1, 10) == [(ts, 10.5)]
    (ev,) = store.events(["gate-0001"], ts - 1, ts + 1, None, 10)
    assert ev.type == "access" and ev.data["credential"] == "c-1" and ev.region_id == "gd-gz-a01-b1"
    states = store.device_states(["gate-0001", "meter-0001"])
    assert states["gate-0001"].status == "online" and states["gate-0001"].fw == "1.4.2"
    assert states["meter-0001"].last_seen_ms is not None and states["meter-0001"].messages == 1
    sim.loop_stop()


def test_every_rejection_reason_is_kept_and_good_messages_around_it_are_stored(
    broker: Broker, make_ingest: IngestFactory, store: SqliteStore
) -> None:
    svc = make_ingest()
    sim = _sim(broker)
    now = _now_ms()
    bad: list[tuple[str, str, bytes]] = [
        ("meter-0001", "telemetry", b"{not json"),
        ("meter-0001", "telemetry", b"[1, 2]"),
        ("meter-0001", "telemetry", b'"text"'),
        ("meter-0001", "telemetry", b'{"energy_kwh": 1, "pad": "' + b"x" * 70_000 + b'"}'),
        ("meter-0001", "telemetry", json.dumps({"energy_kwh": "many"}).encode()),
        ("meter-0001", "telemetry", json.dumps({"energy_kwh": 1, "ts": now + 3_600_000}).encode()),
        ("gate-0001", "event", json.dumps({"type": "ignition_on"}).encode()),
        ("meter-0001", "telemetry", json.dumps({"energy_kwh": 1, "device_id": "meter-0002"}).encode()),
        ("meter-9999", "telemetry", json.dumps({"energy_kwh": 1}).encode()),
        ("meter-off", "telemetry", json.dumps({"energy_kwh": 1}).encode()),
    ]
    for i, (device, kind, raw) in enumerate(bad):
        _pub(sim, device, kind, None, raw=raw)
        _pub(sim, "meter-0002", "telemetry", {"ts": now - 10_000 + i, "energy_kwh": float(i)})
    wait_until(lambda: svc.stats.acked >= 2 * len(bad), what="all messages acked")
    reasons = sorted(r.reason for r in store.rejections(None, None, 100))
    assert reasons == sorted(
        [
            "not_json",
            "not_object",  # [1, 2]: each element of an array is rejected on its own
            "not_object",
            "not_object",  # "text"
            "too_large",
            "schema",
            "bad_timestamp",
            "unknown_event",
            "forged_identity",
            "unregistered_device",
            "disabled_device",
        ]
    )
    assert len(store.raw("meter-0002", "energy_kwh", now - 20_000, now, 100)) == len(bad)
    too_large = store.rejections("meter-0001", "too_large", 1)[0]
    assert len(too_large.payload) == 4096
    schema = store.rejections("meter-0001", "schema", 1)[0]
    assert "energy_kwh" in schema.detail
    counts = store.rejection_counts()
    assert counts[("meter-9999", "unregistered_device")] == 1
    sim.loop_stop()


def test_duplicate_seq_is_stored_once_and_gaps_are_counted(
    broker: Broker, make_ingest: IngestFactory, store: SqliteStore
) -> None:
    svc = make_ingest()
    sim = _sim(broker)
    for seq in (1, 2, 2, 5, 2):
        _pub(sim, "meter-0001", "telemetry", {"seq": seq, "energy_kwh": float(seq)})  # no ts: receive time
    wait_until(lambda: svc.stats.acked >= 5)
    assert store.count_readings("meter-0001") == 3
    state = store.device_states(["meter-0001"])["meter-0001"]
    assert state.duplicates == 2 and state.gaps == 2
    sim.loop_stop()


def test_array_from_gateway_buffer_stores_each_object_and_rejects_bad_ones(
    broker: Broker, make_ingest: IngestFactory, store: SqliteStore
) -> None:
    svc = make_ingest()
    sim = _sim(broker)
    base = _now_ms() - 3_600_000
    objs: list[object] = [{"ts": base + i * 1000, "seq": i, "energy_kwh": 100.0 + i} for i in range(500)]
    objs[7] = {"ts": base + 7000, "seq": 7, "energy_kwh": "bad"}
    _pub(sim, "meter-0001", "telemetry", objs)
    wait_until(lambda: svc.stats.acked >= 1)
    assert store.count_readings("meter-0001") == 499
    (rej,) = store.rejections("meter-0001", None, 10)
    assert rej.reason == "schema" and rej.detail.startswith("$[7].energy_kwh")
    sim.loop_stop()


def test_message_that_raises_in_the_worker_is_rejected_and_the_next_is_stored(
    broker: Broker, make_ingest: IngestFactory, store: SqliteStore
) -> None:
    def exploding(
        kind: str, payload: bytes, device: DeviceInfo, now_ms: int
    ) -> tuple[list[Record], list[tuple[str, str]]]:
        if b"boom" in payload:
            raise RuntimeError("decoder bug")
        return decode(kind, payload, device, now_ms)

    svc = make_ingest(decode=exploding)
    sim = _sim(broker)
    _pub(sim, "meter-0001", "telemetry", {"energy_kwh": 1, "boom": 1})
    _pub(sim, "meter-0001", "telemetry", {"energy_kwh": 2})
    wait_until(lambda: svc.stats.acked >= 2)
    (rej,) = store.rejections("meter-0001", None, 10)
    assert rej.reason == "internal_error" and "decoder bug" in rej.detail
    assert store.count_readings("meter-0001") == 1
    sim.loop_stop()


def test_unacked_messages_are_redelivered_to_a_new_session_and_not_duplicated(
    broker: Broker, make_ingest: IngestFactory, store: SqliteStore
) -> None:
    svc = make_ingest()
    svc.stop()  # the persistent session now exists with its subscription; ingest is away
    sim = _sim(broker)
    for seq in range(1, 201):
        _pub(sim, "meter-0001", "telemetry", {"seq": seq, "energy_kwh": float(seq)})
    svc2 = make_ingest()
    assert svc2.consumer.session_present is True
    wait_until(lambda: svc2.stats.acked >= 200, what="queued messages drained")
    assert store.count_readings("meter-0001") == 200
    sim.loop_stop()
