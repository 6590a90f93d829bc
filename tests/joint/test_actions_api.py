"""Linkage actions end to end through the API: an operator proposes, an administrator confirms, the command goes
out on a real Mosquitto, the simulated gate locks and answers cmd_result, ingest feeds the live-stream broadcaster
and the gateway's actions record the result on the incident's timeline."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alerts.types import Severity
from core.settings import Settings
from devices.sim_publisher import SharedPublisher
from devices.simulator import Fleet, SimDevice
from gateway.app import create_app
from joint.actions import MqttCommandSender
from joint.models import Incident, IncidentMember, IncidentState, ScopeLevel
from joint.patterns import PatternSet
from joint.service import JointService, RegionTree
from tests.conftest import Broker
from tests.gateway.conftest import NOW, Gateway, gateway, seeded  # noqa: F401
from tests.helpers import wait_until
from tests.ingest.conftest import ingest_on, mqtt_settings


@pytest.mark.integration
def test_propose_confirm_lock_the_simulated_gate_and_record_its_answer(
    gateway: Gateway,  # noqa: F811
    broker: Broker,
) -> None:
    ctx = gateway.ctx
    reg = ctx.registry
    ctx.settings = Settings(mqtt=mqtt_settings(broker))
    ctx.clock = lambda: datetime.now(UTC)
    svc = JointService(reg.engine, PatternSet(), RegionTree(reg.regions, reg.snapshot), lambda _r: "")
    inc = Incident(
        1, "X2", "intrusion", "入侵", "Intrusion", Severity.CRITICAL, IncidentState.OPEN, ScopeLevel.BUILDING,
        "gz-b1", "k1", NOW, NOW, ("gd", "gz", "gz-jgj", "gz-b1"),
    )  # fmt: skip
    inc.members[7] = IncidentMember(7, NOW, "G1", "gate-gz-0001", "gz-b1")
    svc.store.save(incidents=[inc], now=NOW)
    svc.load()
    ctx.joint = svc  # type: ignore[attr-defined]
    sender = MqttCommandSender(mqtt_settings(broker, client_id="test-gw"))
    ctx.linkage_publish = sender  # type: ignore[attr-defined]
    start = datetime.now(UTC)
    fleet = Fleet([SimDevice("gate-gz-0001", "gate", "gz-b1", 23.13, 113.27, 60)], rng=random.Random(2), start=start)
    pub = SharedPublisher("127.0.0.1", broker.port, "lianfang-sim", broker.sim_password, client_id="sim-gw")
    pub.gate_control = fleet.set_locked
    ingest = ingest_on(broker, ctx.store, reg.snapshot, [ctx.broadcaster.publish])  # type: ignore[arg-type]
    ingest.start()
    sender.start()
    pub.start()
    try:
        for m in fleet.advance(start + timedelta(minutes=2)):
            pub.publish(m)
        assert pub.flush(10)
        wait_until(sender.connected, 10, what="the platform's command link")
        with TestClient(create_app(ctx)) as client:

            def call(method: str, path: str, user: str, body: Any = None) -> Any:
                headers = {"Authorization": f"Bearer {gateway.tokens[user]}"}
                return client.request(method, f"/api/v1{path}", headers=headers, json=body)

            made = call("POST", "/incidents/1/actions", "gz", {"name": "lock", "device_ids": ["gate-gz-0001"]})
            assert made.status_code == 201, made.text
            (action,) = made.json()["items"]
            assert call("POST", f"/incidents/1/actions/{action['id']}/confirm", "gz", {}).status_code == 403
            sent = call("POST", f"/incidents/1/actions/{action['id']}/confirm", "admin", {})
            assert sent.status_code == 200 and sent.json()["state"] == "sent"

            def done() -> Any:
                items = call("GET", "/incidents/1/actions", "gz").json()["items"]
                return items if items and items[0]["state"] != "sent" else None

            (result,) = wait_until(done, 15, 0.05, "the gate's cmd_result through ingest and the broadcaster")
            assert result["state"] == "succeeded" and result["result_detail"] == "locked"
            assert pub.locked == {"gate-gz-0001"}
            steps = [e["data"].get("step") for e in call("GET", "/incidents/1", "gz").json()["timeline"]]
            assert steps == ["proposed", "confirmed", "sent", "result"]
        access = [m.doc() for m in fleet.advance(start + timedelta(hours=24)) if m.kind == "event"]
        access = [d for d in access if d["type"] in ("access", "request_to_exit")]
        assert access and all(d.get("result") == "denied" for d in access), "the locked gate grants nobody"
    finally:
        pub.close()
        sender.stop()
        ingest.stop()
