"""GET /api/v1/me lists the caller's actions (gateway/actions.py), and that table agrees with the routes' roles
(tests/gateway/test_role_matrix.py MATRIX): the page's buttons are exactly what the server allows."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gateway.actions import ACTIONS, actions_of
from gateway.app import create_app
from gateway.auth import Principal, create_user
from tests.gateway.conftest import NOW, Gateway
from tests.gateway.test_role_matrix import DECIDED_IN_HANDLER, MATRIX

# writes that no button stands for: the session itself and device messages
NO_BUTTON = {("POST", "/auth/login"), ("POST", "/auth/logout"), ("POST", "/ingest/{device_id}/{kind}")}


def test_each_action_has_the_roles_of_its_routes() -> None:
    wrong = []
    for name, action in ACTIONS.items():
        for route in action.routes:
            if route not in MATRIX:
                wrong.append(f"{name}: {route} is not a route")
            elif MATRIX[route] != action.roles:
                wrong.append(f"{name}: {sorted(action.roles)} but {route} allows {sorted(MATRIX[route] or ())}")
    assert not wrong, "\n".join(wrong)


def test_every_write_route_has_an_action() -> None:
    """A write route without an action would have no button, or a button by guesswork: each one's roles are those
    of an action of the same object (its first path segment)."""
    missing = []
    for (method, path), roles in MATRIX.items():
        if method == "GET" or (method, path) in NO_BUTTON | DECIDED_IN_HANDLER:
            continue
        first = path.split("/")[1]
        same = [a for a in ACTIONS.values() if any(r[1].split("/")[1] == first for r in a.routes)]
        if not any(a.roles == roles for a in same):
            missing.append(f"{method} {path}")
    assert not missing, f"add an action to gateway/actions.py for: {missing}"


def _p(role: str, region: str | None = None) -> Principal:
    return Principal(name="x", role=role, region_id=region, region_ids=None if region is None else frozenset({region}))


def test_actions_per_role() -> None:
    assert actions_of(_p("viewer")) == []
    op = actions_of(_p("operator", "gz"))
    assert {"alerts.ack", "silences.create", "silences.end", "rules.override"} <= set(op)
    assert not {"devices.write", "rules.edit", "rules.disable", "audit.read", "users.read"} & set(op)
    assert "audit.read" in actions_of(_p("admin")) and "audit.read" not in actions_of(_p("admin", "gz"))
    assert {"devices.write", "rules.disable", "incidents.confirm_action"} <= set(actions_of(_p("admin", "gz")))
    assert set(actions_of(_p("auditor"))) == {"audit.read", "users.read", "security.policy.read"}
    sec = set(actions_of(_p("secadmin")))
    assert {"users.roles", "security.policy.write"} <= sec and "users.create" not in sec
    assert "security.policy.write" not in actions_of(_p("secadmin", "gz"))
    sys = set(actions_of(_p("sysadmin")))
    assert {"users.create", "users.password"} <= sys and not {"users.roles", "security.policy.write"} & sys


@pytest.mark.parametrize("role", ["viewer", "operator", "admin", "sysadmin", "secadmin", "auditor"])
def test_me_answers_the_actions(gateway: Gateway, role: str) -> None:
    token = create_user(gateway.ctx.registry.engine, f"me.{role}", role, None, NOW, person_id=f"p.{role}")
    with TestClient(create_app(gateway.ctx)) as c:
        body = c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert body["role"] == role
    assert body["actions"] == actions_of(_p(role))
    assert body["can_act_on_alerts"] == (role in ("operator", "admin"))
