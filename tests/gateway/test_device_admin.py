"""Region admins manage the devices of their subtree through the API (gateway/routes/devices.py), against a real
Mosquitto: create with a broker identity (secret shown once), update, new credentials (rotation refuses the old
secret), decommission (identity removed, device disabled); 403 for other roles, 404 outside the scope, bounded
bodies, every action audited without the secret."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from core.settings import MqttSettings, Settings
from devices.audit import AuditLog
from devices.provisioning import check_device
from gateway.app import create_app
from gateway.auth import create_user
from tests.conftest import Broker
from tests.gateway.conftest import NOW, Gateway

API = "/api/v1"


@pytest.fixture
def admin_api(gateway: Gateway, broker: Broker) -> Iterator[tuple[TestClient, dict[str, str]]]:
    gateway.ctx.settings = Settings(
        mqtt=MqttSettings(port=broker.port, admin_password=SecretStr(broker.admin_password), embedded_broker=False)
    )
    gateway.ctx.provisioning = None  # the configured broker: the test's Mosquitto
    tokens = dict(gateway.tokens)
    tokens["gzadmin"] = create_user(gateway.ctx.registry.engine, "gz-admin", "region_admin", "gz", NOW)
    with TestClient(create_app(gateway.ctx)) as client:
        yield client, tokens


def _h(tokens: dict[str, str], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


def test_region_admin_creates_rotates_and_decommissions_a_device(
    admin_api: tuple[TestClient, dict[str, str]], gateway: Gateway, broker: Broker
) -> None:
    client, tokens = admin_api
    h = _h(tokens, "gzadmin")
    body = {"id": "gate-gz-0100", "type": "gate", "region_id": "gz-b1", "name": "北门", "expected_interval_s": 30}
    r = client.post(f"{API}/devices", json=body, headers=h)
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    created = r.json()
    secret = created["secret"]
    assert (created["id"], created["region_id"], created["expected_interval_s"]) == ("gate-gz-0100", "gz-b1", 30)
    assert check_device("gate-gz-0100", secret, host="127.0.0.1", port=broker.port).ok
    assert client.post(f"{API}/devices", json=body, headers=h).status_code == 409

    moved = client.patch(f"{API}/devices/gate-gz-0100", json={"region_id": "gz-jgj", "name": "新北门"}, headers=h)
    assert moved.status_code == 200 and (moved.json()["region_id"], moved.json()["name"]) == ("gz-jgj", "新北门")

    rotated = client.post(f"{API}/devices/gate-gz-0100/credentials", headers=h)
    assert rotated.status_code == 200 and rotated.json()["identity"] == "rotated"
    new_secret = rotated.json()["secret"]
    assert new_secret != secret
    assert check_device("gate-gz-0100", new_secret, host="127.0.0.1", port=broker.port).ok
    assert not check_device("gate-gz-0100", secret, host="127.0.0.1", port=broker.port, timeout=3).ok

    gone = client.post(f"{API}/devices/gate-gz-0100/decommission", headers=h)
    assert gone.status_code == 200 and gone.json() == {
        "device_id": "gate-gz-0100",
        "enabled": False,
        "identity_removed": True,
    }
    assert not check_device("gate-gz-0100", new_secret, host="127.0.0.1", port=broker.port, timeout=3).ok
    assert client.get(f"{API}/devices/gate-gz-0100", headers=h).json()["enabled"] is False

    log = AuditLog(gateway.ctx.registry.session)
    mine = [r for r in reversed(log.records(limit=100)) if r.action.startswith("device.")]
    assert [(r.action, r.outcome) for r in mine] == [
        ("device.create", "ok"),
        ("device.create", "conflict"),
        ("device.update", "ok"),
        ("device.credentials", "ok"),
        ("device.decommission", "ok"),
    ]
    assert all(r.actor == "gz-admin (admin)" for r in mine)
    dumped = repr([(r.detail, r.target) for r in log.records(limit=1000)])
    assert secret not in dumped and new_secret not in dumped
    assert log.verify().ok


def test_device_management_is_for_region_admins_in_their_subtree(
    admin_api: tuple[TestClient, dict[str, str]],
) -> None:
    client, tokens = admin_api
    body = {"id": "gate-sz-0100", "type": "gate", "region_id": "sz-b1"}
    for who in ("gz", "sz", "gzb1"):  # operator, viewers
        assert client.post(f"{API}/devices", json=body, headers=_h(tokens, who)).status_code == 403
        assert client.post(f"{API}/devices/gate-sz-0001/decommission", headers=_h(tokens, who)).status_code == 403
    h = _h(tokens, "gzadmin")
    assert client.post(f"{API}/devices", json=body, headers=h).status_code == 404  # Shenzhen: not in scope
    assert client.patch(f"{API}/devices/gate-sz-0001", json={"name": "x"}, headers=h).status_code == 404
    assert client.patch(f"{API}/devices/gate-gz-0001", json={"region_id": "sz"}, headers=h).status_code == 404
    assert client.post(f"{API}/devices/gate-sz-0001/credentials", headers=h).status_code == 404
    assert client.post(f"{API}/devices/gate-sz-0001/decommission", headers=h).status_code == 404
    for bad in (
        {**body, "region_id": "gz-b1", "id": "X"},
        {**body, "region_id": "gz-b1", "type": "toaster"},
        {**body, "region_id": "gz-b1", "expected_interval_s": 0},
        {**body, "region_id": "gz-b1", "name": "n" * 129},
        {**body, "region_id": "gz-b1", "extra": 1},
    ):
        assert client.post(f"{API}/devices", json=bad, headers=h).status_code == 422, bad


def test_an_unreachable_broker_writes_nothing(gateway: Gateway) -> None:
    from devices.broker import free_port

    gateway.ctx.settings = Settings(
        mqtt=MqttSettings(port=free_port(), admin_password=SecretStr("x"), embedded_broker=False)
    )
    gateway.ctx.provisioning = None
    token = create_user(gateway.ctx.registry.engine, "gz-admin", "admin", "gz", NOW)
    with TestClient(create_app(gateway.ctx)) as client:
        body = {"id": "gate-gz-0200", "type": "gate", "region_id": "gz-b1"}
        r = client.post(f"{API}/devices", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 503 and "broker unavailable" in r.json()["detail"]
    assert gateway.ctx.registry.device("gate-gz-0200") is None
    rec = AuditLog(gateway.ctx.registry.session).records(action="device.create")[0]
    assert rec.outcome == "error"
