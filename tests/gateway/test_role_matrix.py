"""The role matrix (issue 11): every endpoint of the app (walked from its routes, so a new one without a row here
fails) for every role, in scope and out of scope.

* **Role**: a role the endpoint does not allow answers 403; a role it allows never does (its request may still be
  refused for its content: 404, 409, 422). The expected roles of each endpoint are the table below, the same as
  docs/security.md "Role matrix".
* **Scope**: a user scoped to Shenzhen asking for a Guangzhou object (device, region, a ``region=`` filter, a
  user) gets 404, as for one that does not exist: the region-leak matrix, over every route with such a parameter.
* **Authentication**: a missing, forged, expired or revoked token, a disabled user and a locked-out login answer
  the one 401.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from alerts.wiring import AlertsRuntime
from core.settings import Settings
from gateway.app import create_app
from gateway.auth import create_user, issue_token, revoke_tokens, set_user_enabled
from tests.gateway.conftest import NOW, Gateway

API = "/api/v1"
ROLES = ("viewer", "operator", "admin", "sysadmin", "secadmin", "auditor")
ALL = frozenset(ROLES)
OFFICERS = frozenset({"sysadmin", "secadmin", "auditor"})
WRITERS = frozenset({"operator", "admin"})
# Who may call each endpoint (whole-tree users). None: no token needed.
MATRIX: dict[tuple[str, str], frozenset[str] | None] = {
    ("GET", "/health"): None,
    ("GET", "/docs"): None,  # Swagger UI (local files)
    ("GET", "/docs/init.js"): None,
    ("GET", "/health/ready"): None,
    ("POST", "/auth/login"): None,
    ("POST", "/auth/logout"): ALL,
    ("GET", "/me"): ALL,
    ("GET", "/regions"): ALL,
    ("GET", "/regions/{region_id}"): ALL,
    ("GET", "/overview"): ALL,
    ("GET", "/vehicles/positions"): ALL,
    ("GET", "/config"): frozenset({"sysadmin"}),
    ("PATCH", "/config"): frozenset({"sysadmin"}),
    ("GET", "/devices"): ALL,
    ("GET", "/devices/{device_id}"): ALL,
    ("GET", "/devices/{device_id}/telemetry"): ALL,
    ("GET", "/devices/{device_id}/rules"): ALL,
    ("POST", "/devices"): frozenset({"admin"}),
    ("PATCH", "/devices/{device_id}"): frozenset({"admin"}),
    ("POST", "/devices/{device_id}/credentials"): frozenset({"admin"}),
    ("POST", "/devices/{device_id}/decommission"): frozenset({"admin"}),
    ("GET", "/events"): ALL,
    ("GET", "/rejections"): ALL,
    ("GET", "/stream"): ALL,
    ("GET", "/alerts"): ALL,
    ("GET", "/alerts/{alert_id}"): ALL,
    ("POST", "/alerts/{alert_id}/ack"): WRITERS,
    ("POST", "/alerts/{alert_id}/resolve"): WRITERS,
    ("POST", "/alerts/{alert_id}/comments"): WRITERS,
    ("POST", "/alerts/{alert_id}/assign"): WRITERS,
    ("GET", "/silences"): ALL,
    ("POST", "/silences"): WRITERS,
    ("POST", "/silences/{silence_id}/end"): WRITERS,
    ("GET", "/rules"): ALL,
    ("GET", "/rules/{rule_id}"): ALL,
    ("GET", "/rules/{rule_id}/history"): ALL,
    ("PUT", "/rules/{rule_id}/overrides"): WRITERS,
    ("DELETE", "/rules/{rule_id}/overrides"): WRITERS,
    ("PUT", "/rules/{rule_id}"): frozenset({"admin"}),
    ("DELETE", "/rules/{rule_id}"): frozenset({"admin"}),
    ("GET", "/incidents"): ALL,
    ("GET", "/incidents/{incident_id}"): ALL,
    ("POST", "/incidents/{incident_id}/ack"): WRITERS,
    ("POST", "/incidents/{incident_id}/investigate"): WRITERS,
    ("POST", "/incidents/{incident_id}/resolve"): WRITERS,
    ("POST", "/incidents/{incident_id}/close"): WRITERS,
    ("POST", "/incidents/{incident_id}/comments"): WRITERS,
    ("POST", "/incidents/{incident_id}/assign"): WRITERS,
    ("POST", "/incidents/{incident_id}/tasks/{task_id}/ack"): WRITERS,
    ("POST", "/incidents/{incident_id}/tasks/{task_id}/close"): WRITERS,
    ("GET", "/incidents/{incident_id}/actions"): ALL,
    ("POST", "/incidents/{incident_id}/actions"): WRITERS,
    ("POST", "/incidents/{incident_id}/actions/{action_id}/confirm"): WRITERS,
    ("POST", "/incidents/{incident_id}/actions/{action_id}/decline"): WRITERS,
    ("GET", "/risk"): ALL,
    ("GET", "/risk/top"): ALL,
    ("GET", "/risk/history"): ALL,
    ("GET", "/stats/alerts"): ALL,
    ("GET", "/stats/incidents"): ALL,
    ("GET", "/audit"): frozenset({"auditor", "admin"}),
    ("GET", "/audit/export"): frozenset({"auditor", "admin"}),
    ("GET", "/audit/verify"): frozenset({"auditor", "admin"}),
    ("GET", "/users"): OFFICERS,
    ("POST", "/users"): frozenset({"sysadmin"}),
    ("PATCH", "/users/{name}"): frozenset({"sysadmin", "secadmin"}),
    ("GET", "/patterns"): ALL,
    ("GET", "/patterns/{pattern_id}"): ALL,
    ("GET", "/patterns/{pattern_id}/history"): ALL,
    ("PUT", "/patterns/{pattern_id}/overrides"): WRITERS,
    ("DELETE", "/patterns/{pattern_id}/overrides"): WRITERS,
    ("PUT", "/patterns/{pattern_id}"): frozenset({"admin"}),
    ("DELETE", "/patterns/{pattern_id}"): frozenset({"admin"}),
    ("GET", "/security/policy"): OFFICERS,
    ("PATCH", "/security/policy"): frozenset({"secadmin"}),
    ("GET", "/dispatches"): ALL,  # vehicle dispatch records (gateway/routes/dispatches.py)
    ("GET", "/dispatches/{dispatch_id}"): ALL,
    ("POST", "/dispatches"): WRITERS,
    ("POST", "/dispatches/{dispatch_id}/approve"): frozenset({"admin"}),
    ("POST", "/dispatches/{dispatch_id}/close"): WRITERS,
    ("GET", "/reports/{kind}"): ALL,
}
# Not called here: device messages (device secrets, tests/gateway/test_ingress.py), the endless live stream (its
# 401 and scope have tests/gateway/test_live.py), and routes another engineer is adding right now must get a row.
NOT_CALLED = {("POST", "/ingest/{device_id}/{kind}"), ("GET", "/stream")}
# Decided in the handler, after the body and the object are checked (the linkage actions: who may confirm depends
# on the action): a role that may not gets 403 for a valid request, and 404 or 422 for an invalid one.
DECIDED_IN_HANDLER = {
    ("POST", "/incidents/{incident_id}/actions"),
    ("POST", "/incidents/{incident_id}/actions/{action_id}/confirm"),
    ("POST", "/incidents/{incident_id}/actions/{action_id}/decline"),
}
# A request that passes the role check where the role allows it (the guarded powers of docs/security.md decide
# on the content too: an override for the whole tree needs an admin, so it is asked for a region here).
REQUEST: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", "/rules/{rule_id}/overrides"): {"params": {"region": "gz"}, "json": {"severity": "major"}},
    ("DELETE", "/rules/{rule_id}/overrides"): {"params": {"region": "gz"}},
    ("PUT", "/patterns/{pattern_id}/overrides"): {"params": {"region": "gz"}, "json": {"enabled": True}},
    ("DELETE", "/patterns/{pattern_id}/overrides"): {"params": {"region": "gz"}},
    ("GET", "/devices/{device_id}/telemetry"): {"params": {"field": "power_kw"}},
    ("PATCH", "/devices/{device_id}"): {"json": {"name": "东门"}},
    ("POST", "/devices"): {"json": {"id": "gate-gz-0999", "type": "gate", "region_id": "gz-b1"}},
}
# In-scope values of path parameters (Guangzhou objects) and the out-of-scope ones for a Shenzhen user.
IN_SCOPE = {"device_id": "gate-gz-0001", "region_id": "gz", "rule_id": "T.none", "name": "gz-duty"}
OUT_OF_SCOPE = {"device_id": "gate-gz-0001", "region_id": "gz", "name": "gz-duty"}


def api_routes(client: TestClient) -> list[APIRoute]:
    """Every APIRoute of the app, through included routers (FastAPI keeps those as nested route objects)."""

    def walk(items: list[Any]) -> Iterator[APIRoute]:
        for r in items:
            if isinstance(r, APIRoute):
                yield r
            elif hasattr(r, "original_router"):
                yield from walk(r.original_router.routes)
            elif hasattr(r, "routes") and not hasattr(r, "app"):
                yield from walk(r.routes)

    app: Any = client.app
    return [r for r in walk(app.routes) if r.path.startswith(API)]


def routes(client: TestClient) -> list[tuple[str, str]]:
    out = [(m, r.path.removeprefix(API)) for r in api_routes(client) for m in sorted(r.methods - {"HEAD"})]
    assert len(out) >= 50, out  # the walk really found the routers' routes
    return sorted(out)


def concrete(template: str, values: dict[str, str]) -> str:
    return API + re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "1"), template)


def call(client: TestClient, method: str, template: str, values: dict[str, str], headers: dict[str, str]) -> Any:
    extra = REQUEST.get((method, template), {})
    body = extra.get("json", {} if method in {"POST", "PUT", "PATCH"} else None)
    return client.request(method, concrete(template, values), json=body, params=extra.get("params"), headers=headers)


@pytest.fixture
def users(gateway: Gateway) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """One whole-tree user per role and one Shenzhen-scoped user per role (``sz.<role>``)."""
    reg = gateway.ctx.registry
    tokens: dict[str, str] = {}
    for role in ROLES:
        tokens[role] = create_user(reg.engine, f"all.{role}", role, None, NOW, person_id=f"p.all.{role}")
        tokens[f"sz.{role}"] = create_user(reg.engine, f"sz.{role}", role, "sz", NOW, person_id=f"p.sz.{role}")
    rt = AlertsRuntime(Settings(), reg, clock_fn=lambda: NOW)
    rt.service.load(now=NOW)
    gateway.ctx.alerts = rt
    with TestClient(create_app(gateway.ctx)) as client:
        yield client, tokens


def test_every_route_has_a_row(users: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = users
    found = set(routes(client))
    missing = sorted(found - set(MATRIX) - NOT_CALLED)
    assert not missing, f"add these endpoints to MATRIX (and docs/security.md 'Role matrix'): {missing}"
    assert not sorted(set(MATRIX) - found), "rows for endpoints that no longer exist"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_403_exactly_where_the_matrix_says(users: tuple[TestClient, dict[str, str]], role: str) -> None:
    client, tokens = users
    headers = {"Authorization": f"Bearer {tokens[role]}"}
    wrong = []
    for method, template in routes(client):
        if (method, template) in NOT_CALLED or (method, template) not in MATRIX:
            continue
        allowed = MATRIX[(method, template)]
        if (method, template) == ("POST", "/auth/logout"):
            continue  # a legacy token may not log out (400): no role check to see
        r = call(client, method, template, IN_SCOPE, headers)
        may = allowed is None or role in allowed
        if may and r.status_code in (401, 403):
            wrong.append(f"{method} {template}: {r.status_code} for an allowed role")
        late = (method, template) in DECIDED_IN_HANDLER and r.status_code in (404, 422)
        if not may and r.status_code != 403 and not late:
            wrong.append(f"{method} {template}: {r.status_code}, expected 403")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("role", ROLES)
def test_objects_of_another_region_are_404(users: tuple[TestClient, dict[str, str]], role: str) -> None:
    """The region-leak matrix: every route naming a device, region or user by path, and every GET with a
    ``region`` filter, asked by a Shenzhen user of each role for a Guangzhou object."""
    client, tokens = users
    headers = {"Authorization": f"Bearer {tokens[f'sz.{role}']}"}
    leaks, tried = [], 0
    for method, template in routes(client):
        allowed = MATRIX.get((method, template))
        if (method, template) in NOT_CALLED or allowed is None or role not in allowed:
            continue
        names = set(re.findall(r"\{(\w+)\}", template))
        if names & set(OUT_OF_SCOPE):
            tried += 1
            r = call(client, method, template, OUT_OF_SCOPE, headers)
            if r.status_code != 404:
                leaks.append(f"{method} {template}: {r.status_code}")
        elif method == "GET" and "region" in _query_params(client, template):
            tried += 1
            r = client.get(concrete(template, {}), params={"region": "gz"}, headers=headers)
            if r.status_code != 404:
                leaks.append(f"{method} {template}?region=gz: {r.status_code}")
    assert tried >= 3 or role in OFFICERS, tried
    assert not leaks, "\n".join(leaks)


def _query_params(client: TestClient, template: str) -> set[str]:
    for r in api_routes(client):
        if r.path == API + template:
            return {p.alias for p in r.dependant.query_params}
    return set()


def test_scoped_lists_hold_nothing_of_another_region(users: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = users
    h = {"Authorization": f"Bearer {tokens['sz.viewer']}"}
    assert {d["id"] for d in client.get(f"{API}/devices", headers=h).json()["items"]} == {
        "gate-sz-0001",
        "car-sz-0001",
    }
    assert "gz" not in client.get(f"{API}/regions", headers=h).text.replace('"gz-', "")
    officer = {"Authorization": f"Bearer {tokens['sz.sysadmin']}"}
    names = {u["name"] for u in client.get(f"{API}/users", headers=officer).json()}
    assert names and all(n.startswith("sz") for n in names), names


def test_every_authentication_failure_is_the_one_401(
    users: tuple[TestClient, dict[str, str]], gateway: Gateway
) -> None:
    client, tokens = users
    engine = gateway.ctx.registry.engine

    def status(token: str | None) -> int:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        r = client.get(f"{API}/me", headers=headers)
        if r.status_code == 401:
            assert r.json() == {"detail": "missing or invalid API token"}
            assert r.headers["www-authenticate"] == "Bearer"
        return r.status_code

    assert status(None) == 401
    assert status("lf_" + "x" * 43) == 401  # forged
    assert status("not-a-token") == 401
    # expired: an integration token past its expiry
    create_user(engine, "exp.user", "viewer", "gz", NOW)
    _, expiring, _ = issue_token(engine, "exp.user", now=NOW - timedelta(days=2), expires_days=1)
    assert status(expiring) == 401
    # revoked
    _, live, _ = issue_token(engine, "exp.user", now=NOW, expires_days=1)
    assert status(live) == 200
    revoke_tokens(engine, "exp.user", now=NOW, legacy=True)
    assert status(live) == 401
    # disabled
    assert status(tokens["sz.viewer"]) == 200
    set_user_enabled(engine, "sz.viewer", False)
    assert status(tokens["sz.viewer"]) == 401
    # locked out: the right password after too many failures
    create_user(engine, "lock.user", "viewer", "gz", NOW, password="a long password")
    for _ in range(5):
        r = client.post(f"{API}/auth/login", json={"name": "lock.user", "password": "wrong password"})
        assert r.status_code == 401
    r = client.post(f"{API}/auth/login", json={"name": "lock.user", "password": "a long password"})
    assert r.status_code == 401 and r.json() == {"detail": "missing or invalid API token"}
