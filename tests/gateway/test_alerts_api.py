"""Alert and silence endpoints over a real AlertService (default packs) on the seeded, migrated SQLite registry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alerts.rules import PACKS_DIR, RuleSet
from alerts.service import AlertService, regions_from_registry
from alerts.types import AlertState
from core.protocol import Event
from core.settings import ApiSettings, Settings
from devices.audit import AuditLog, AuditRecord
from gateway.app import create_app
from gateway.auth import create_user, set_user_enabled
from tests.gateway.conftest import NOW, NOW_MS, Gateway

API = "/api/v1"


class Client:
    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens

    def _h(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def get(self, path: str, user: str = "admin", **params: Any) -> Any:
        return self.client.get(API + path, params=params or None, headers=self._h(user))

    def post(self, path: str, body: dict[str, Any], user: str = "admin") -> Any:
        return self.client.post(API + path, json=body, headers=self._h(user))


def tamper(device: str, region: str, ts_ms: int, seq: int) -> Event:
    return Event(device, region, "gate", ts_ms, seq, "tamper", {})


@pytest.fixture
def svc(gateway: Gateway) -> AlertService:
    reg = gateway.ctx.registry
    service = AlertService(
        reg.engine, RuleSet.load([PACKS_DIR]), reg.snapshot, regions_from_registry(reg), clock_fn=lambda: NOW
    )
    service.load(now=NOW)  # no timers: the tests drive it
    service.process([tamper("gate-gz-0001", "gz-b1", NOW_MS - 60_000, 1)], now=NOW)
    service.process([tamper("gate-sz-0001", "sz-b1", NOW_MS - 30_000, 1)], now=NOW)
    return service


@pytest.fixture
def api(gateway: Gateway, svc: AlertService) -> Iterator[Client]:
    gateway.ctx.alerts = svc
    with TestClient(create_app(gateway.ctx)) as client:
        yield Client(client, gateway.tokens)


def ids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.text
    return sorted(a["device_id"] for a in resp.json()["items"])


def test_alerts_endpoints_answer_503_when_alerts_do_not_run(gateway: Gateway) -> None:
    with TestClient(create_app(gateway.ctx)) as client:
        c = Client(client, gateway.tokens)
        for resp in (c.get("/alerts"), c.get("/alerts/1"), c.get("/silences"), c.post("/alerts/1/ack", {})):
            assert resp.status_code == 503
            assert resp.json()["detail"] == "alerts not running"


def test_alerts_list_is_region_scoped_and_filtered(api: Client) -> None:
    assert ids(api.get("/alerts")) == ["gate-gz-0001", "gate-sz-0001"]
    assert ids(api.get("/alerts", user="gz")) == ["gate-gz-0001"]
    assert ids(api.get("/alerts", user="sz")) == ["gate-sz-0001"]
    assert ids(api.get("/alerts", region="sz")) == ["gate-sz-0001"]
    assert ids(api.get("/alerts", region="gd")) == ["gate-gz-0001", "gate-sz-0001"]
    assert api.get("/alerts", user="gz", region="sz").status_code == 404  # outside the caller's subtree
    assert ids(api.get("/alerts", rule="G11.tamper", state="firing")) == ["gate-gz-0001", "gate-sz-0001"]
    assert ids(api.get("/alerts", rule="G1")) == []
    assert ids(api.get("/alerts", state="resolved")) == []
    assert ids(api.get("/alerts", severity=["info", "warning"])) == []
    body = api.get("/alerts", severity=["critical", "major"], limit=1).json()
    assert body["total"] == 2 and len(body["items"]) == 1
    one = body["items"][0]
    assert one["title_zh"] and one["region_path"][0] == "gd" and one["started_at"].endswith("Z")
    assert api.get("/alerts", state="bogus").status_code == 422


def test_alert_detail_is_404_outside_scope(api: Client) -> None:
    items = api.get("/alerts").json()["items"]
    sz = next(a for a in items if a["device_id"] == "gate-sz-0001")
    assert api.get(f"/alerts/{sz['id']}", user="sz").json()["device_id"] == "gate-sz-0001"
    assert api.get(f"/alerts/{sz['id']}", user="gz").status_code == 404
    assert api.get("/alerts/9999").status_code == 404


def test_alert_actions_need_operator_and_reach_the_live_lifecycle(api: Client, svc: AlertService) -> None:
    gz = next(a for a in api.get("/alerts").json()["items"] if a["device_id"] == "gate-gz-0001")
    aid = gz["id"]
    assert api.post(f"/alerts/{aid}/ack", {"reason": "x"}, user="gzb1").status_code == 403  # viewer
    assert api.post(f"/alerts/{aid}/ack", {"reason": "x"}, user="sz").status_code == 403
    acked = api.post(f"/alerts/{aid}/ack", {"reason": "保安已到场"}, user="gz")
    assert acked.status_code == 200, acked.text
    assert acked.json()["state"] == "acknowledged" and acked.json()["acknowledged_by"] == "gz-duty"
    assert svc.book.alerts[aid].state is AlertState.ACKNOWLEDGED
    again = api.post(f"/alerts/{aid}/ack", {"reason": "again"}, user="gz")
    assert again.status_code == 409 and "already acknowledged" in again.json()["detail"]
    assert api.post(f"/alerts/{aid}/comments", {"text": "  "}, user="gz").status_code == 422
    commented = api.post(f"/alerts/{aid}/comments", {"text": "摄像头已调取"}, user="gz")
    assert commented.status_code == 201
    assert api.post(f"/alerts/{aid}/assign", {"assignee": "wang.wei"}, user="gz").json()["assignee"] == "wang.wei"
    assert api.post(f"/alerts/{aid}/resolve", {}, user="gz").status_code == 422  # reason required
    assert api.post(f"/alerts/{aid}/resolve", {"reason": ""}, user="gz").status_code == 422
    resolved = api.post(f"/alerts/{aid}/resolve", {"reason": "误报，已复位"}, user="admin")
    assert resolved.status_code == 200
    assert resolved.json()["state"] == "resolved" and resolved.json()["resolved_by"] == "admin"
    detail = api.get(f"/alerts/{aid}").json()
    assert detail["state"] == "resolved"
    assert [(c["kind"], c["author"]) for c in detail["comments"]] == [
        ("ack", "gz-duty"),
        ("comment", "gz-duty"),
        ("assign", "gz-duty"),
        ("resolve", "admin"),
    ]
    assert ids(api.get("/alerts", state="open")) == ["gate-sz-0001"]
    assert api.post(f"/alerts/{aid}/ack", {"reason": "late"}, user="gz").status_code == 409


def test_silences_scoped_create_list_and_effect(api: Client, svc: AlertService, gateway: Gateway) -> None:
    until = (NOW + timedelta(hours=2)).isoformat()
    body = {"region_id": "gz-b1", "reason": "门禁检修", "ends_at": until}
    assert api.post("/silences", body, user="gzb1").status_code == 403  # viewer
    assert api.post("/silences", {**body, "region_id": "sz-b1"}, user="gz").status_code == 404  # not theirs
    assert api.post("/silences", {"rule_id": "G2", "reason": "r", "ends_at": until}, user="gz").status_code == 422
    assert api.post("/silences", {"reason": "r", "ends_at": until}).status_code == 422  # no scope
    assert api.post("/silences", {**body, "rule_id": "NOPE"}, user="gz").status_code == 422
    assert api.post("/silences", {**body, "reason": ""}, user="gz").status_code == 422
    made = api.post("/silences", body, user="gz")
    assert made.status_code == 201, made.text
    sil = made.json()
    assert sil["creator"] == "gz-duty" and sil["active"] is True and sil["starts_at"].startswith("2026-11-26T08:00")
    assert [s["id"] for s in api.get("/silences", user="gz").json()["items"]] == [sil["id"]]
    assert api.get("/silences", user="sz").json()["items"] == []
    assert [s["id"] for s in api.get("/silences").json()["items"]] == [sil["id"]]
    # an alert raised under the silence is recorded as silenced
    svc.process([tamper("gate-gz-0002", "gz-b1", NOW_MS + 1000, 1)], now=NOW)  # device time inside the window
    gz2 = api.get("/alerts", device="gate-gz-0002").json()["items"]
    assert [a["silenced"] for a in gz2] == [True]
    assert api.post(f"/silences/{sil['id']}/end", {"reason": "test"}, user="sz").status_code == 403
    # ending early needs a reason (like ack), and it goes to the audit log
    assert api.post(f"/silences/{sil['id']}/end", {}, user="gz").status_code == 422
    assert api.post(f"/silences/{sil['id']}/end", {"reason": "  "}, user="gz").status_code == 422
    ended = api.post(f"/silences/{sil['id']}/end", {"reason": "检修提前完成"}, user="gz")
    assert ended.status_code == 200 and ended.json()["ended"] is True
    assert api.get("/silences", user="gz").json()["items"] == []
    assert api.post(f"/silences/{sil['id']}/end", {"reason": "test"}, user="gz").status_code == 409  # already ended
    ends = _audit(gateway, "silence.end")
    assert [(r.detail or {}).get("reason") for r in ends] == ["检修提前完成"]


# --- guarded powers ----------------------------------------------------------------------------------------------


def _audit(gateway: Gateway, action: str) -> list[AuditRecord]:
    return list(AuditLog(gateway.ctx.registry.session).records(action=action))


def test_silence_length_is_bounded_per_role(api: Client) -> None:
    def silence(hours: float, user: str) -> Any:
        ends = (NOW + timedelta(hours=hours)).isoformat()
        return api.post("/silences", {"region_id": "gz", "reason": "检修", "ends_at": ends}, user=user)

    assert silence(24, "gz").status_code == 201  # an operator: at most 24 h (api.silence_max_hours_operator)
    over = silence(24.5, "gz")
    assert over.status_code == 422
    assert "at most 24 h" in over.json()["detail"][0]["msg"] and "silence_max_hours_operator" in over.text
    assert silence(24 * 30, "admin").status_code == 201  # an admin: 30 days
    assert silence(24 * 30 + 1, "admin").status_code == 422
    until_9999 = api.post("/silences", {"region_id": "gz", "reason": "r", "ends_at": "9998-12-31T23:00:00Z"})
    assert until_9999.status_code == 422
    starts_late = {"region_id": "gz", "reason": "r", "starts_at": "2026-11-27T08:00:00Z", "ends_at": NOW.isoformat()}
    assert api.post("/silences", starts_late).status_code == 422  # ends before it starts


def test_silence_length_limits_come_from_settings(gateway: Gateway, svc: AlertService) -> None:
    gateway.ctx.alerts = svc
    gateway.ctx.settings = Settings(api=ApiSettings(silence_max_hours_operator=1))
    with TestClient(create_app(gateway.ctx)) as client:
        c = Client(client, gateway.tokens)
        body = {"region_id": "gz", "reason": "r", "ends_at": (NOW + timedelta(hours=2)).isoformat()}
        assert "at most 1 h" in c.post("/silences", body, user="gz").text


def test_silence_approver_must_be_another_admin_covering_the_scope(api: Client, gateway: Gateway) -> None:
    engine = gateway.ctx.registry.engine
    create_user(engine, "gz-chief", "admin", "gz", NOW)
    create_user(engine, "sz-chief", "admin", "sz", NOW)
    create_user(engine, "retired", "admin", None, NOW)
    set_user_enabled(engine, "retired", False)
    ends = (NOW + timedelta(hours=2)).isoformat()

    def with_approver(approver: str, user: str = "gz", **scope: str) -> Any:
        body = {"reason": "检修", "ends_at": ends, "approver": approver, **(scope or {"region_id": "gz-b1"})}
        return api.post("/silences", body, user=user)

    for approver, why in [
        ("nobody", "not an enabled API user"),
        ("retired", "not an enabled API user"),
        ("gz-duty", "someone else than the creator"),
        ("sz-viewer", "needs the role admin"),
        ("sz-chief", "does not cover this silence"),
    ]:
        resp = with_approver(approver)
        assert resp.status_code == 422, (approver, resp.text)
        assert resp.json()["detail"][0]["loc"] == ["body", "approver"] and why in resp.text
    ok = with_approver("gz-chief")
    assert ok.status_code == 201 and ok.json()["approver"] == "gz-chief"
    assert with_approver("gz-chief", device_id="gate-gz-0002").status_code == 201  # the device's region is covered
    assert with_approver("admin").json()["approver"] == "admin"  # the whole tree covers everything


def test_silences_are_written_to_the_audit_log(api: Client, gateway: Gateway) -> None:
    ends = (NOW + timedelta(hours=3)).isoformat()
    made = api.post("/silences", {"region_id": "gz", "reason": "停电检修", "ends_at": ends}, user="gz").json()
    api.post(f"/silences/{made['id']}/end", {"reason": "test"}, user="gz")
    [added] = _audit(gateway, "silence.add")
    assert added.actor == "gz-duty (operator)" and added.origin.startswith("api from ")
    assert added.target == f"silence {made['id']}"
    assert added.detail["region_id"] == "gz" and added.detail["ends_at"] == "2026-11-26T11:00:00.000Z"
    [ended] = _audit(gateway, "silence.end")
    assert ended.actor == "gz-duty (operator)" and ended.target == f"silence {made['id']}"
