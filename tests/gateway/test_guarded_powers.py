"""Guarded powers (issue 9): switching alerting off for a region is a region-admin action, written to the audit
log with who did it; over a real AlertsRuntime (packs + the API layer) on the seeded, migrated SQLite registry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alerts.wiring import AlertsRuntime
from core.settings import Settings
from devices.audit import AuditLog, AuditRecord
from gateway.app import create_app
from gateway.auth import create_user
from tests.gateway.conftest import NOW, Gateway

API = "/api/v1"


class Client:
    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens

    def put(self, path: str, body: dict[str, Any], user: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        return self.client.put(API + path, json=body, params=params or None, headers=headers)

    def delete(self, path: str, user: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        return self.client.delete(API + path, params=params or None, headers=headers)


@pytest.fixture
def runtime(gateway: Gateway) -> AlertsRuntime:
    rt = AlertsRuntime(Settings(), gateway.ctx.registry, clock_fn=lambda: NOW)
    rt.service.load(now=NOW)  # no timers
    return rt


@pytest.fixture
def api(gateway: Gateway, runtime: AlertsRuntime) -> Iterator[Client]:
    gateway.tokens["gzadmin"] = create_user(gateway.ctx.registry.engine, "gz-admin", "admin", "gz", NOW)
    gateway.ctx.alerts = runtime
    with TestClient(create_app(gateway.ctx)) as client:
        yield Client(client, gateway.tokens)


def audit(gateway: Gateway, action: str) -> list[AuditRecord]:
    return list(AuditLog(gateway.ctx.registry.session).records(action=action))


def enabled_for(runtime: AlertsRuntime, rule: str, device: str, path: list[str]) -> bool:
    return next(
        r
        for r in runtime.service.rules.explain(
            device,
            "gate",
            path,
        )
        if r.rule_id == rule
    ).enabled


GZ_GATE = ["gd", "gz", "gz-jgj", "gz-b1"]


def test_an_operator_cannot_switch_alerting_off_for_a_city(api: Client, runtime: AlertsRuntime) -> None:
    # one override of every rule would silence the whole city
    star = api.put("/rules/*/overrides", {"reason": "test", "enabled": False}, user="gz", region="gz")
    assert star.status_code == 403 and "admin" in star.json()["detail"]
    off = api.put("/rules/G11.tamper/overrides", {"reason": "test", "enabled": False}, user="gz", region="gz")
    assert off.status_code == 403 and "enabled: false" in off.json()["detail"]
    assert (
        api.put(
            "/rules/G11.tamper/overrides", {"reason": "test", "enabled": False}, user="gz", device="gate-gz-0001"
        ).status_code
        == 403
    )
    assert enabled_for(runtime, "G11.tamper", "gate-gz-0001", GZ_GATE)
    # tuning stays an operator's job
    assert (
        api.put(
            "/rules/G11.tamper/overrides", {"reason": "test", "severity": "major"}, user="gz", region="gz"
        ).status_code
        == 201
    )


def test_a_region_admin_may_switch_a_rule_off_in_their_region_only(
    api: Client, runtime: AlertsRuntime, gateway: Gateway
) -> None:
    assert (
        api.put(
            "/rules/G11.tamper/overrides", {"reason": "test", "enabled": False}, user="gzadmin", region="sz"
        ).status_code
        == 404
    )
    off = api.put("/rules/G11.tamper/overrides", {"reason": "test", "enabled": False}, user="gzadmin", region="gz")
    assert off.status_code == 201, off.text
    assert not enabled_for(runtime, "G11.tamper", "gate-gz-0001", GZ_GATE)
    [record] = audit(gateway, "rule.override.put")
    assert record.actor == "gz-admin (admin)" and record.origin.startswith("api from ")
    assert record.target == "api override G11.tamper [region=gz]"
    assert record.detail["enabled"] is False and record.detail["region"] == "gz"
    # the region admin switches it back on by deleting the override; that is recorded too
    assert api.delete("/rules/G11.tamper/overrides", reason="test", user="gzadmin", region="gz").status_code == 200
    [gone] = audit(gateway, "rule.override.delete")
    assert gone.actor == "gz-admin (admin)" and gone.detail["enabled"] is False
    assert enabled_for(runtime, "G11.tamper", "gate-gz-0001", GZ_GATE)


def test_rule_definitions_through_the_api_are_audited(api: Client, gateway: Gateway) -> None:
    rule = {
        "kind": "event_count",
        "device_types": ["gate"],
        "title_zh": "强行开门",
        "title_en": "Door forced",
        "params": {"match": {"event": "door_forced"}},
    }
    assert api.put("/rules/X.forced", rule, user="gzadmin").status_code == 403  # needs the whole tree
    assert api.put("/rules/X.forced", rule, user="admin").status_code == 201
    assert api.delete("/rules/X.forced", user="admin").status_code == 200
    assert [r.target for r in audit(gateway, "rule.put")] == ["rule X.forced"]
    assert [r.actor for r in audit(gateway, "rule.delete")] == ["admin (admin)"]


@pytest.mark.parametrize("number", [b"Infinity", b"-Infinity", b"NaN", b"1e999"])
def test_rule_definitions_with_non_finite_numbers_are_422(api: Client, gateway: Gateway, number: bytes) -> None:
    raw = (
        b'{"kind": "threshold", "device_types": ["energy_meter"], "title_zh": "x", "title_en": "x",'
        b' "params": {"field": "power_kw", "op": ">", "value": ' + number + b"}}"
    )
    headers = {"Authorization": f"Bearer {gateway.tokens['admin']}", "Content-Type": "application/json"}
    resp = api.client.put(f"{API}/rules/X.power", content=raw, headers=headers)
    assert resp.status_code == 422, resp.text
    assert "not a finite number" in resp.text
    assert api.client.get(f"{API}/rules/X.power", headers=headers).status_code == 404
