"""Every write through the API leaves an audit record (gateway/audit.py, AuditTrail): walked over the OpenAPI
document, so a new write route that escapes the audit fails here. Refusals (401, 403, 404, 422) are recorded like
successes; sensitive reads (the audit log itself) are recorded; a forged token on a read is recorded; the access
log names the user."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alerts.wiring import AlertsRuntime
from core.settings import Settings
from devices.audit import AuditLog
from gateway.app import create_app
from gateway.auth import create_user
from tests.gateway.conftest import NOW, Gateway

API = "/api/v1"
# Device messages over HTTP are not people's actions: counted, rejections stored, not audited (gateway/audit.py).
NOT_AUDITED = {f"{API}/ingest/{{device_id}}/{{kind}}"}
# Path parameters: a value inside the fixture's data, so a request reaches the handler where it can.
PARAMS = {"device_id": "gate-gz-0001", "rule_id": "T.none", "name": "sz-viewer", "kind": "telemetry"}


@pytest.fixture
def client(gateway: Gateway) -> Iterator[TestClient]:
    reg = gateway.ctx.registry
    gateway.tokens["aud"] = create_user(reg.engine, "aud", "auditor", None, NOW)
    rt = AlertsRuntime(Settings(), reg, clock_fn=lambda: NOW)
    rt.service.load(now=NOW)
    gateway.ctx.alerts = rt
    with TestClient(create_app(gateway.ctx)) as c:
        yield c


def write_operations(client: TestClient) -> list[tuple[str, str]]:
    doc = client.get(f"{API}/openapi.json").json()
    ops = [
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in {"post", "put", "patch", "delete"}
    ]
    assert len(ops) >= 20  # the document really was walked
    return sorted(ops)


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PARAMS.get(m.group(1), "1"), path)


def records_for(gateway: Gateway, target: str) -> list[Any]:  # newest first
    return list(AuditLog(gateway.ctx.registry.session).records(target=target, limit=1000))


@pytest.mark.parametrize("who", [None, "sz", "gz", "admin"])
def test_every_write_route_leaves_an_audit_record(client: TestClient, gateway: Gateway, who: str | None) -> None:
    """No token (401), a viewer (mostly 403), an operator, an admin (whatever the handler answers): each request
    to each write route adds a record to the chain, with the caller and the outcome of the answer."""
    headers = {} if who is None else {"Authorization": f"Bearer {gateway.tokens[who]}"}
    log = AuditLog(gateway.ctx.registry.session)
    missing = []
    for method, template in write_operations(client):
        if template in NOT_AUDITED:
            continue
        before = log.head()[0]
        r = client.request(method, concrete(template), json={}, headers=headers)
        new = log.records(limit=max(1, log.head()[0] - before))
        if log.head()[0] == before:
            missing.append(f"{method} {template} -> {r.status_code}")
            continue
        if who is None:
            expected = "invalid" if template == f"{API}/auth/login" else "denied"  # login needs no token: 422
            assert (new[0].actor, new[0].outcome) == ("anonymous", expected), (template, r.status_code)
        elif template != f"{API}/auth/login":  # a login's actor is the name it tries, not the bearer's
            user = {"sz": "sz-viewer", "gz": "gz-duty", "admin": "admin"}[who]
            assert any(rec.actor.startswith(f"{user} (") for rec in new), (template, [x.actor for x in new])
    assert not missing, missing
    assert log.verify().ok


def test_a_refusal_names_the_user_the_route_and_the_outcome(client: TestClient, gateway: Gateway) -> None:
    h = {"Authorization": f"Bearer {gateway.tokens['sz']}"}
    r = client.put(f"{API}/rules/T.none/overrides", json={"region_id": "sz", "enabled": False}, headers=h)
    assert r.status_code == 403
    (rec,) = records_for(gateway, f"{API}/rules/T.none/overrides")
    assert (rec.actor, rec.action, rec.outcome, rec.detail) == (
        "sz-viewer (viewer)",
        "PUT /rules/{rule_id}/overrides",
        "refused",
        {"status": 403},
    )
    assert AuditLog(gateway.ctx.registry.session).verify().ok


def test_a_route_with_its_own_record_is_recorded_once(client: TestClient, gateway: Gateway) -> None:
    h = {"Authorization": f"Bearer {gateway.tokens['aud']}"}
    log = AuditLog(gateway.ctx.registry.session)
    before = log.head()[0]
    assert client.get(f"{API}/audit/export", headers=h).status_code == 200
    assert log.head()[0] == before + 1
    assert log.records(limit=1)[0].action == "audit.export"


def test_audit_reads_are_sensitive_reads(client: TestClient, gateway: Gateway) -> None:
    h = {"Authorization": f"Bearer {gateway.tokens['aud']}"}
    assert client.get(f"{API}/audit", params={"action": "x.y"}, headers=h).status_code == 200
    assert client.get(f"{API}/audit/verify", headers=h).status_code == 200
    refused = client.get(f"{API}/audit", headers={"Authorization": f"Bearer {gateway.tokens['gz']}"})
    assert refused.status_code == 403
    recs = AuditLog(gateway.ctx.registry.session).records(limit=3)
    assert [(r.actor, r.action, r.outcome) for r in reversed(recs)] == [
        ("aud (auditor)", "GET /audit", "ok"),
        ("aud (auditor)", "GET /audit/verify", "ok"),
        ("gz-duty (operator)", "GET /audit", "refused"),
    ]
    assert recs[2].detail == {"status": 200, "query": "action=x.y"}
    # An ordinary read is not recorded.
    head = AuditLog(gateway.ctx.registry.session).head()[0]
    assert client.get(f"{API}/devices", headers=h).status_code == 200
    assert AuditLog(gateway.ctx.registry.session).head()[0] == head


def test_a_forged_token_on_a_read_is_an_auth_event(client: TestClient, gateway: Gateway) -> None:
    r = client.get(f"{API}/devices", headers={"Authorization": "Bearer lf_forged"})
    assert r.status_code == 401
    (rec,) = records_for(gateway, f"{API}/devices")
    assert (rec.actor, rec.action, rec.outcome) == ("anonymous", "auth.refused", "denied")
    # Without any token a read is a plain 401, not recorded (an anonymous flood would fill the log).
    assert client.get(f"{API}/devices").status_code == 401
    assert len(records_for(gateway, f"{API}/devices")) == 1


def test_alert_actions_have_named_records(client: TestClient, gateway: Gateway) -> None:
    h = {"Authorization": f"Bearer {gateway.tokens['gz']}"}
    r = client.post(f"{API}/alerts/999/ack", json={"reason": "x"}, headers=h)
    assert r.status_code == 404
    (rec,) = records_for(gateway, f"{API}/alerts/999/ack")
    assert (rec.actor, rec.action, rec.outcome) == ("gz-duty (operator)", "POST /alerts/{alert_id}/ack", "not_found")


def test_the_access_log_names_the_user(client: TestClient, gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lianfang.access"):
        client.get(f"{API}/devices", headers={"Authorization": f"Bearer {gateway.tokens['gz']}"})
        client.get(f"{API}/devices")
    lines = [r.getMessage() for r in caplog.records if r.name == "lianfang.access"]
    assert re.fullmatch(r'testclient gz-duty "GET /api/v1/devices" 200 [0-9.]+ms', lines[0]), lines
    assert re.fullmatch(r'testclient - "GET /api/v1/devices" 401 [0-9.]+ms', lines[1]), lines
