"""The alerts API says why nothing was sent about an alert: ``silenced_by`` (the active silences holding it back)
and ``learned_at`` (when the platform received it), over a real AlertService on the seeded SQLite registry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alerts.rules import PACKS_DIR, RuleSet
from alerts.service import AlertService, regions_from_registry
from core.protocol import Event
from gateway.app import create_app
from tests.gateway.conftest import NOW, NOW_MS, Gateway

API = "/api/v1"


@pytest.fixture
def svc(gateway: Gateway) -> AlertService:
    reg = gateway.ctx.registry
    service = AlertService(
        reg.engine, RuleSet.load([PACKS_DIR]), reg.snapshot, regions_from_registry(reg), clock_fn=lambda: NOW
    )
    service.load(now=NOW)
    return service


@pytest.fixture
def client(gateway: Gateway, svc: AlertService) -> Iterator[tuple[TestClient, dict[str, str]]]:
    gateway.ctx.alerts = svc
    with TestClient(create_app(gateway.ctx)) as c:
        yield c, {"Authorization": f"Bearer {gateway.tokens['admin']}"}


def test_alert_json_carries_the_silences_that_hold_it_back_and_when_it_was_learned(
    svc: AlertService, client: tuple[TestClient, dict[str, str]]
) -> None:
    c, auth = client
    silence = svc.add_silence(
        reason="更换读卡器", creator="admin", starts_at=NOW, ends_at=NOW + timedelta(hours=2), device_id="gate-gz-0001"
    )
    hours_ago = NOW_MS - 2 * 3600 * 1000  # a backlog: the device's time is two hours before the platform's
    svc.process([Event("gate-gz-0001", "gz-b1", "gate", hours_ago, 1, "tamper", {})], now=NOW)
    svc.process([Event("gate-sz-0001", "sz-b1", "gate", NOW_MS, 1, "tamper", {})], now=NOW)
    resp = c.get(API + "/alerts", headers=auth)
    assert resp.status_code == 200, resp.text
    items: dict[str, Any] = {a["device_id"]: a for a in resp.json()["items"]}
    quiet, loud = items["gate-gz-0001"], items["gate-sz-0001"]
    assert quiet["silenced"] is True
    assert quiet["silenced_by"] == [
        {
            "id": silence.id,
            "reason": "更换读卡器",
            "creator": "admin",
            "approver": None,
            "ends_at": quiet["silenced_by"][0]["ends_at"],
        }
    ]
    assert quiet["silenced_by"][0]["ends_at"].startswith("2026-11-26T10:00:00")
    assert loud["silenced"] is False and loud["silenced_by"] == []
    assert quiet["started_at"].startswith("2026-11-26T06:00:00") and quiet["learned_at"].startswith("2026-11-26T08:00")
    one = c.get(API + f"/alerts/{quiet['id']}", headers=auth).json()
    assert [s["id"] for s in one["silenced_by"]] == [silence.id]
    svc.end_silence(silence.id)
    after = c.get(API + f"/alerts/{quiet['id']}", headers=auth).json()
    assert after["silenced"] is False and after["silenced_by"] == []
