"""The audit API (gateway/routes/audit.py): filters, paging and bounds, who may read it, the CSV export (itself
audited), chain verification, and the rule history's "verified" flag after an SQL edit of a change's actor."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from alerts.wiring import AlertsRuntime
from core.settings import Settings
from devices.audit import Actor, AuditLog
from gateway.app import create_app
from gateway.auth import create_user
from tests.gateway.conftest import NOW, Gateway

API = "/api/v1"


class Client:
    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens

    def get(self, path: str, user: str = "admin", **params: Any) -> Any:
        return self.client.get(
            API + path, params=params or None, headers={"Authorization": f"Bearer {self.tokens[user]}"}
        )

    def put(self, path: str, body: dict[str, Any], user: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        return self.client.put(API + path, json=body, params=params or None, headers=headers)


@pytest.fixture
def api(gateway: Gateway) -> Iterator[Client]:
    reg = gateway.ctx.registry
    gateway.tokens["gzadmin"] = create_user(reg.engine, "gz-admin", "admin", "gz", NOW)
    gateway.tokens["auditor"] = create_user(reg.engine, "audit-li", "auditor", None, NOW)
    rt = AlertsRuntime(Settings(), reg, clock_fn=lambda: NOW)
    rt.service.load(now=NOW)
    gateway.ctx.alerts = rt
    log = AuditLog(reg.session)
    for i in range(5):
        log.write(
            Actor("admin (admin)", "api from 10.0.0.1"),
            "silence.create",
            [f"silence {i}"],
            now=NOW + timedelta(minutes=i),
        )
    log.write(Actor("gz-duty (operator)", "api from 10.0.0.2"), "alert.ack", ["alert 7"], now=NOW + timedelta(hours=1))
    with TestClient(create_app(gateway.ctx)) as client:
        yield Client(client, gateway.tokens)


def test_audit_api_filters_and_pages(api: Client) -> None:
    page = api.get("/audit", limit=2)
    assert page.status_code == 200
    body = page.json()
    assert body["total"] == 6 and [r["seq"] for r in body["items"]] == [6, 5]
    assert all(r["verified"] for r in body["items"])
    # Each read of the log is itself recorded (a sensitive read): the first one is record 7.
    assert [r["seq"] for r in api.get("/audit", limit=2, offset=2).json()["items"]] == [5, 4]
    assert [r["target"] for r in api.get("/audit", actor="gz-duty").json()["items"]] == ["alert 7"]
    assert api.get("/audit", action="silence.create").json()["total"] == 5
    assert [r["seq"] for r in api.get("/audit", target="silence 2").json()["items"]] == [3]
    window = api.get(
        "/audit", start=(NOW + timedelta(minutes=1)).isoformat(), end=(NOW + timedelta(minutes=3)).isoformat()
    )
    assert [r["seq"] for r in window.json()["items"]] == [3, 2]
    assert api.get("/audit", limit=0).status_code == 422
    assert api.get("/audit", limit=1001).status_code == 422
    assert api.get("/audit", start="2026-12-01T08:00:00").status_code == 422  # no offset


def test_audit_api_is_for_auditors_and_tree_admins(api: Client) -> None:
    for user in ("gz", "sz", "gzb1", "gzadmin"):
        for path in ("/audit", "/audit/export", "/audit/verify"):
            assert api.get(path, user=user).status_code == 403, (user, path)
    assert api.client.get(API + "/audit").status_code == 401
    assert api.get("/audit", user="auditor").status_code == 200
    assert api.get("/audit/verify", user="auditor").json()["ok"]


def test_audit_api_export_is_csv_and_audited(api: Client) -> None:
    out = api.get("/audit/export", action="silence.create")
    assert out.status_code == 200 and out.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(out.text)))
    assert [r["seq"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert all(r["verified"] == "true" for r in rows)
    exports = api.get("/audit", action="audit.export").json()["items"]
    assert len(exports) == 1 and exports[0]["actor"] == "admin (admin)" and exports[0]["detail"]["records"] == 5


def test_audit_api_verify_names_tampering(api: Client, gateway: Gateway) -> None:
    assert api.get("/audit/verify").json()["ok"]
    with gateway.ctx.registry.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET target = 'silence 99' WHERE seq = 2"))
        conn.execute(text("DELETE FROM audit_log WHERE seq = 4"))
    report = api.get("/audit/verify").json()
    assert not report["ok"]
    assert {(p["kind"], p["seq"]) for p in report["problems"]} == {("edited", 2), ("deleted", 4)}
    items = {r["seq"]: r["verified"] for r in api.get("/audit").json()["items"]}
    # 7 and 8: the records of the two verify calls (sensitive reads).
    assert items == {1: True, 2: False, 3: True, 5: False, 6: True, 7: True, 8: True}


def test_rule_history_marks_an_sql_edited_actor(api: Client, gateway: Gateway) -> None:
    assert (
        api.put(
            "/rules/G11.tamper/overrides", {"reason": "test", "severity": "major"}, user="gzadmin", region="gz"
        ).status_code
        == 201
    )
    history = api.get("/rules/G11.tamper/history").json()["items"]
    assert [(c["actor"], c["verified"]) for c in history] == [("gz-admin", True)]
    with gateway.ctx.registry.engine.begin() as conn:
        conn.execute(text("UPDATE alert_rule_changes SET actor = 'someone-else'"))
    history = api.get("/rules/G11.tamper/history").json()["items"]
    assert [(c["actor"], c["verified"]) for c in history] == [("someone-else", False)]
