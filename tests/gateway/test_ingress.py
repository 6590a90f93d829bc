"""HTTP ingress against a real Mosquitto and a real IngestService: POST -> broker (QoS 1, PUBACK) -> ingest -> store."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from core.store.sqlite import SqliteStore
from devices.audit import Actor
from devices.broker import GATEWAY_USERNAME, derive_gateway_password
from devices.dynsec import DynsecClient
from devices.provisioning import Provisioner
from devices.registry import DeviceSpec, RegionSpec, Registry
from gateway.app import GatewayContext, create_app
from gateway.ingress_publisher import IngressPublisher
from tests.conftest import Broker
from tests.helpers import mqtt_client, wait_until
from tests.ingest.conftest import ingest_on

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
URL = "/api/v1/ingest/{}/{}"


@dataclass
class Pipeline:
    client: TestClient
    ctx: GatewayContext
    store: SqliteStore
    secrets: dict[str, str]
    publisher: IngressPublisher

    def post(self, device: str, kind: str, body: bytes | str, secret: str | None = None) -> tuple[int, dict[str, Any]]:
        token = self.secrets.get(device, "nope") if secret is None else secret
        data = body.encode() if isinstance(body, str) else body
        resp = self.client.post(URL.format(device, kind), content=data, headers={"Authorization": f"Bearer {token}"})
        return resp.status_code, resp.json()


@pytest.fixture
def pipeline(broker: Broker, sqlite_registry: Registry, store: SqliteStore) -> Iterator[Pipeline]:
    sqlite_registry.upsert_regions(
        [RegionSpec("gd", "广东省", "province"), RegionSpec("gd-b1", "1号楼", "building", None)], now=NOW
    )
    sqlite_registry.add_devices(
        [
            DeviceSpec("gate-h-0001", "gate", "gd-b1"),
            DeviceSpec("meter-h-0001", "energy_meter", "gd-b1"),
            DeviceSpec("meter-h-0002", "energy_meter", "gd-b1"),
        ],
        now=NOW,
    )
    with DynsecClient("127.0.0.1", broker.port, broker.admin_password) as dynsec:
        secrets = Provisioner(sqlite_registry, dynsec, actor=Actor("test", "test")).provision_new(
            ["gate-h-0001", "meter-h-0001", "meter-h-0002"], NOW
        )
    ingest = ingest_on(broker, store, sqlite_registry.snapshot)
    ingest.start()
    publisher = IngressPublisher("127.0.0.1", broker.port, derive_gateway_password(broker.admin_password))
    publisher.start()
    ctx = GatewayContext(
        Settings(),
        sqlite_registry,
        store,
        lambda: {"ok": True},
        lambda: {"ok": True},
        ingress=publisher,
        ingress_timeout_s=3.0,
    )
    try:
        with TestClient(create_app(ctx)) as client:
            yield Pipeline(client, ctx, store, secrets, publisher)
    finally:
        publisher.close()
        ingest.stop()


def _rejections(store: SqliteStore, device: str) -> list[tuple[str, str]]:
    return [(r.reason, r.detail) for r in store.rejections(device, None, 100)]


@pytest.mark.integration
def test_ingress_accepted_telemetry_and_event_are_stored_by_ingest(pipeline: Pipeline) -> None:
    code, body = pipeline.post("meter-h-0001", "telemetry", '{"energy_kwh": 12.5, "power_kw": 3.0, "seq": 1}')
    assert (code, body) == (202, {"accepted": 1, "rejected": []})
    stored = wait_until(lambda: pipeline.store.last_values("meter-h-0001"), 5, what="telemetry stored")
    assert stored["energy_kwh"][1] == 12.5 and stored["power_kw"][1] == 3.0

    code, body = pipeline.post("gate-h-0001", "event", '{"type": "access", "credential": "c-7", "result": "granted"}')
    assert code == 202, body
    events = wait_until(lambda: pipeline.store.events(["gate-h-0001"], 0, 2**62, None, 10), 5, what="event stored")
    assert [(e.type, e.data["credential"]) for e in events] == [("access", "c-7")]
    assert _rejections(pipeline.store, "gate-h-0001") == []


@pytest.mark.integration
def test_ingress_wrong_secret_unknown_device_and_other_devices_secret_are_401(pipeline: Pipeline) -> None:
    good = '{"energy_kwh": 1}'
    cases = [
        ("meter-h-0001", "x" * 43),  # wrong secret
        ("meter-h-0001", pipeline.secrets["meter-h-0002"]),  # another device's secret
        ("ghost-h-0001", pipeline.secrets["meter-h-0001"]),  # unknown device
        ("NOT VALID", pipeline.secrets["meter-h-0001"]),  # malformed id
    ]
    for device, secret in cases:
        code, body = pipeline.post(device, "telemetry", good, secret=secret)
        assert (code, body["reason"]) == (401, "unauthorized"), device
    resp = pipeline.client.post(URL.format("meter-h-0001", "telemetry"), content=good)  # no header at all
    assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer")
    assert pipeline.publisher.published == 0
    assert _rejections(pipeline.store, "meter-h-0001") == []  # unauthenticated requests leave no trace in the data


@pytest.mark.integration
def test_ingress_schema_error_is_422_with_field_path_and_recorded(pipeline: Pipeline) -> None:
    code, body = pipeline.post("meter-h-0001", "telemetry", '{"power_kw": 2.0}')
    assert code == 422
    assert body == {"reason": "schema", "detail": "$.energy_kwh: required for energy_meter"}
    code, body = pipeline.post("meter-h-0001", "telemetry", '{"energy_kwh": "lots"}')
    assert code == 422 and body["reason"] == "schema" and body["detail"].startswith("$.energy_kwh")
    code, body = pipeline.post("gate-h-0001", "event", '{"type": "ignition_on"}')
    assert (code, body["reason"]) == (422, "unknown_event")
    code, body = pipeline.post("gate-h-0001", "telemetry", b"{not json")
    assert (code, body["reason"]) == (400, "not_json")
    assert pipeline.publisher.published == 0  # nothing rejected goes to the broker
    reasons = [r for r, _ in _rejections(pipeline.store, "meter-h-0001")]
    assert sorted(reasons) == ["schema", "schema"]
    rec = pipeline.store.rejections("meter-h-0001", "schema", 10)
    assert {r.topic for r in rec} == {"POST /api/v1/ingest/meter-h-0001/telemetry"}
    assert pipeline.store.device_states(["meter-h-0001"])["meter-h-0001"].rejected == 2


@pytest.mark.integration
def test_ingress_forged_identity_is_rejected(pipeline: Pipeline) -> None:
    forged = json.dumps({"energy_kwh": 5, "device_id": "meter-h-0002"})
    code, body = pipeline.post("meter-h-0001", "telemetry", forged)
    assert (code, body["reason"]) == (422, "forged_identity")
    code, body = pipeline.post("meter-h-0001", "telemetry", '{"energy_kwh": 5, "region": "gd"}')
    assert (code, body["reason"]) == (422, "forged_identity")
    assert pipeline.store.last_values("meter-h-0002") == {}
    assert [r for r, _ in _rejections(pipeline.store, "meter-h-0001")] == ["forged_identity"] * 2


@pytest.mark.integration
def test_ingress_too_large_is_413_and_recorded(pipeline: Pipeline) -> None:
    big = json.dumps({"energy_kwh": 1, "note_pad": [0] * 40_000})
    assert len(big) > 64 * 1024
    code, body = pipeline.post("meter-h-0001", "telemetry", big)
    assert (code, body["reason"]) == (413, "too_large")
    (rec,) = pipeline.store.rejections("meter-h-0001", "too_large", 10)
    assert len(rec.payload) <= 4096
    assert pipeline.publisher.published == 0


@pytest.mark.integration
def test_ingress_array_partly_bad_is_accepted_and_ingest_records_the_bad_objects(pipeline: Pipeline) -> None:
    body = '[{"energy_kwh": 1, "seq": 1}, {"power_kw": 1, "seq": 2}, {"energy_kwh": 2, "seq": 3}]'
    code, answer = pipeline.post("meter-h-0002", "telemetry", body)
    assert code == 202 and answer["accepted"] == 2
    assert answer["rejected"] == [{"reason": "schema", "detail": "$[1].energy_kwh: required for energy_meter"}]
    wait_until(lambda: pipeline.store.device_states(["meter-h-0002"]).get("meter-h-0002"), 5, what="stored")
    rejected = wait_until(lambda: _rejections(pipeline.store, "meter-h-0002"), 5, what="ingest's rejection")
    assert rejected == [("schema", "$[1].energy_kwh: required for energy_meter")]  # once, by ingest


@pytest.mark.integration
def test_ingress_without_broker_is_503_quickly(pipeline: Pipeline) -> None:
    pipeline.publisher.close()
    started = time.monotonic()
    code, body = pipeline.post("meter-h-0001", "telemetry", '{"energy_kwh": 1}')
    assert (code, body["reason"]) == (503, "unavailable")
    assert time.monotonic() - started < 3.0
    pipeline.ctx.ingress = None
    code, body = pipeline.post("meter-h-0001", "telemetry", '{"energy_kwh": 1}')
    assert (code, body["reason"]) == (503, "unavailable")


@pytest.mark.integration
def test_gateway_account_may_publish_only_device_telemetry_and_event(broker: Broker) -> None:
    client = mqtt_client(broker.port, GATEWAY_USERNAME, derive_gateway_password(broker.admin_password))
    acks: dict[int, int] = {}
    client.on_publish = lambda _c, _u, mid, rc, _p: acks.__setitem__(mid, rc.value)
    client.on_subscribe = lambda _c, _u, mid, rcs, _p: acks.__setitem__(mid, rcs[0].value)
    try:
        allowed = {"lf/v1/gate-x-0001/telemetry": True, "lf/v1/gate-x-0001/event": True,
                   "lf/v1/gate-x-0001/status": False, "lf/v1/gate-x-0001/cmd": False,
                   "$CONTROL/dynamic-security/v1": False}  # fmt: skip
        mids = {topic: client.publish(topic, b"{}", qos=1).mid for topic in allowed}
        wait_until(lambda: all(m in acks for m in mids.values()), 5, what="PUBACKs")
        assert {t: acks[m] < 128 for t, m in mids.items()} == allowed
        _rc, sub_mid = client.subscribe("lf/v1/#", qos=1)
        assert sub_mid is not None
        assert wait_until(lambda: acks.get(sub_mid), 5, what="SUBACK") == 135  # Not authorized
    finally:
        client.disconnect()
        client.loop_stop()
