"""/api/v1/dispatches: request, approve, close, list; scoping, roles, separation of duties, audit."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from devices.audit import AuditLog
from gateway.auth import create_user
from tests.gateway.conftest import NOW, Api, Gateway

API = "/api/v1/dispatches"


def _h(api: Api, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.tokens[user]}"}


def _body(vehicle: str = "car-sz-0001", **extra: Any) -> dict[str, Any]:
    return {
        "vehicle_id": vehicle,
        "driver": "张三",
        "purpose": "市民中心会议",
        "planned_start": (NOW + timedelta(hours=1)).isoformat(),
        "planned_end": (NOW + timedelta(hours=3)).isoformat(),
        **extra,
    }


def _users(api: Api, gateway: Gateway) -> None:
    engine = gateway.ctx.registry.engine
    api.tokens["sz.op"] = create_user(engine, "sz-op", "operator", "sz", NOW)
    api.tokens["sz.admin"] = create_user(engine, "sz-admin", "admin", "sz", NOW)
    api.tokens["gz.admin"] = create_user(engine, "gz-admin", "admin", "gz", NOW)


def test_request_approve_close(api: Api, gateway: Gateway) -> None:
    _users(api, gateway)
    r = api.client.post(API, json=_body(), headers=_h(api, "sz.op"))
    assert r.status_code == 201, r.text
    d = r.json()
    assert d["status"] == "pending" and d["region_id"] == "sz" and d["requested_by"] == "sz-op"
    assert d["planned_start"] == "2026-11-26T09:00:00.000Z"
    # operators may not approve; the requester may not approve their own
    assert api.client.post(f"{API}/{d['id']}/approve", headers=_h(api, "sz.op")).status_code == 403
    r = api.client.post(f"{API}/{d['id']}/approve", headers=_h(api, "sz.admin"))
    assert r.status_code == 200 and r.json()["status"] == "approved" and r.json()["approver"] == "sz-admin"
    assert api.client.post(f"{API}/{d['id']}/approve", headers=_h(api, "sz.admin")).status_code == 409
    end = (NOW + timedelta(hours=2)).isoformat()
    r = api.client.post(f"{API}/{d['id']}/close", json={"actual_end": end}, headers=_h(api, "sz.op"))
    assert r.status_code == 200 and r.json()["status"] == "closed"
    assert r.json()["covers"] == {"start": "2026-11-26T09:00:00.000Z", "end": "2026-11-26T10:00:00.000Z"}
    assert api.client.post(f"{API}/{d['id']}/close", headers=_h(api, "sz.op")).status_code == 409
    actions = [r.action for r in AuditLog(gateway.ctx.registry.session).records() if r.action.startswith("disp")]
    assert actions.count("dispatch.create") == 1 and actions.count("dispatch.approve") == 2  # one refused
    assert actions.count("dispatch.close") == 2


def test_self_approval_is_refused(api: Api, gateway: Gateway) -> None:
    _users(api, gateway)
    d = api.client.post(API, json=_body(), headers=_h(api, "sz.admin")).json()
    r = api.client.post(f"{API}/{d['id']}/approve", headers=_h(api, "sz.admin"))
    assert r.status_code == 409 and "申请人" in r.json()["detail"]


def test_scoping(api: Api, gateway: Gateway) -> None:
    _users(api, gateway)
    d = api.client.post(API, json=_body(), headers=_h(api, "sz.op")).json()
    # a Guangzhou operator cannot request a Shenzhen car, see, approve or close its dispatch: 404 as if absent
    assert api.client.post(API, json=_body(), headers=_h(api, "gz")).status_code == 404
    assert api.client.get(f"{API}/{d['id']}", headers=_h(api, "gz")).status_code == 404
    assert api.client.post(f"{API}/{d['id']}/approve", headers=_h(api, "gz.admin")).status_code == 404
    assert api.client.post(f"{API}/{d['id']}/close", headers=_h(api, "gz")).status_code == 404
    assert api.client.get(API, headers=_h(api, "gz")).json()["total"] == 0
    assert api.client.get(API, params={"region": "sz"}, headers=_h(api, "gz")).status_code == 404
    seen = api.client.get(API, params={"status": "pending", "vehicle": "car-sz-0001"}, headers=_h(api, "sz"))
    assert [x["id"] for x in seen.json()["items"]] == [d["id"]]
    assert api.client.get(API, params={"status": "approved"}, headers=_h(api, "sz")).json()["total"] == 0


def test_bad_requests(api: Api, gateway: Gateway) -> None:
    _users(api, gateway)
    h = _h(api, "sz.op")
    assert api.client.post(API, json=_body(planned_end=NOW.isoformat()), headers=h).status_code == 422  # end < start
    long_end = (NOW + timedelta(days=40)).isoformat()
    assert api.client.post(API, json=_body(planned_end=long_end), headers=h).status_code == 422
    naive = _body(planned_start="2026-11-26T09:00:00")
    assert api.client.post(API, json=naive, headers=h).status_code == 422
    assert api.client.post(API, json=_body(driver=" "), headers=h).status_code == 422
    assert api.client.post(API, json=_body(extra="x"), headers=h).status_code == 422
    assert api.client.post(API, json=_body("gate-gz-0001"), headers=_h(api, "admin")).status_code == 422
    assert api.client.get(f"{API}/0", headers=h).status_code == 422
    assert api.client.get(f"{API}/99", headers=h).status_code == 404
