"""The incident state machine from the API (docs/joint.md): open -> investigating -> resolved -> closed with a cause
code, each transition by the roles that may make it, 409 naming why for an illegal one, and a resolution by hand
that survives a restart (the real app, joint service and SQLite store of ``test_api``'s rig)."""

from __future__ import annotations

import pytest

from devices.registry import Registry
from joint.models import IncidentState
from joint.patterns import PatternSet
from joint.service import JointService, RegionTree
from tests.gateway.conftest import NOW, gateway, seeded  # noqa: F401
from tests.joint.test_api import Rig, rig  # noqa: F401


def _state(rig: Rig, iid: int) -> str:  # noqa: F811
    return str(rig.call("GET", f"/incidents/{iid}").json()["state"])


def test_open_investigating_resolved_closed(rig: Rig) -> None:  # noqa: F811
    r = rig.call("POST", "/incidents/1/investigate", "gz", json={})
    assert r.status_code == 200 and r.json()["state"] == "investigating"
    r = rig.call("POST", "/incidents/1/resolve", "gz", json={"reason": "门已修复"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "resolved" and body["resolved_at"] is not None and body["closed_at"] is None
    assert [t["state"] for t in body["tasks"]] == ["open"], "the department's task stays"
    r = rig.call("POST", "/incidents/1/close", "gz", json={"cause_code": "handled"})
    assert r.status_code == 200
    assert r.json()["state"] == "closed" and r.json()["cause_code"] == "handled"
    assert [t["state"] for t in r.json()["tasks"]] == ["closed"]
    timeline = rig.call("GET", "/incidents/1").json()["timeline"]
    [entry] = [e for e in timeline if e["data"].get("text_en") == "resolved by hand: 门已修复"]
    assert entry["text"] == "人工解除：门已修复" and entry["actor"] == "gz-duty", "zh-CN first, English second"
    assert [a.action for a in rig.audit.records(target="incident 1")] == [
        "incident.close",
        "incident.resolve",
        "incident.investigate",
    ]


def test_an_open_incident_resolves_directly_and_its_last_task_closes_it(rig: Rig) -> None:  # noqa: F811
    assert rig.call("POST", "/incidents/2/resolve", "admin", json={"reason": "cluster over"}).status_code == 200
    assert _state(rig, 2) == "resolved"
    r = rig.call("POST", "/incidents/2/tasks/12/close", "gz", json={})
    assert r.status_code == 200 and r.json()["state"] == "closed" and r.json()["cause_code"] == "tasks_closed"


@pytest.mark.parametrize(
    ("steps", "illegal", "why"),
    [
        (["resolve"], "investigate", "is resolved, not open"),
        (["resolve"], "ack", "is resolved, not open"),
        (["resolve"], "resolve", "is resolved: only an open or investigating one resolves"),
        (["investigate"], "investigate", "is investigating, not open"),
        (["close"], "resolve", "is not open"),
        (["close"], "close", "is not open"),
        (["close"], "investigate", "is not open"),
        (["close"], "comment", "is not open"),
    ],
)
def test_illegal_transitions_are_409_saying_why(rig: Rig, steps: list[str], illegal: str, why: str) -> None:  # noqa: F811
    bodies = {
        "resolve": {"reason": "x"},
        "close": {"cause_code": "other"},
        "investigate": {},
        "ack": {},
        "comment": {"text": "late"},
    }
    paths = {"comment": "comments"}
    for step in steps:
        assert rig.call("POST", f"/incidents/3/{paths.get(step, step)}", json=bodies[step]).status_code == 200
    r = rig.call("POST", f"/incidents/3/{paths.get(illegal, illegal)}", json=bodies[illegal])
    assert r.status_code == 409, r.text
    assert why in r.json()["detail"]


def test_who_may_resolve_and_close(rig: Rig) -> None:  # noqa: F811
    reason = {"reason": "x"}
    assert rig.call("POST", "/incidents/1/resolve", "gzb1", json=reason).status_code == 403, "a viewer"
    assert rig.call("POST", "/incidents/1/resolve", "sz", json=reason).status_code == 403, "a viewer elsewhere"
    assert rig.call("POST", "/incidents/3/resolve", "gz", json=reason).status_code == 404, "a sibling's incident"
    r = rig.call("POST", "/incidents/2/resolve", "gzb1op", json=reason)
    assert r.status_code == 403 and "read it only" in r.json()["detail"], "a city incident seen from a building"
    assert rig.call("POST", "/incidents/1/resolve", "gz", json={}).status_code == 422, "the reason is required"
    assert rig.call("POST", "/incidents/1/resolve", "gz", json={"reason": "  "}).status_code == 422
    assert rig.call("POST", "/incidents/1/resolve", "gzadmin", json=reason).status_code == 200, "a region admin"
    assert rig.call("POST", "/incidents/1/close", "gzb1", json={"cause_code": "other"}).status_code == 403
    assert rig.call("POST", "/incidents/1/close", "gzb1op", json={"cause_code": "other"}).status_code == 200
    assert rig.audit.records(action="incident.resolve")[0].detail == {"reason": "x"}


def test_a_resolved_incident_is_closed_by_hand_after_a_restart(rig: Rig) -> None:  # noqa: F811
    assert rig.call("POST", "/incidents/3/resolve", json={"reason": "over"}).status_code == 200
    engine = rig.service.store.engine  # the same database, a new service: what a restart leaves
    registry = Registry(engine)
    again = JointService(engine, PatternSet(), RegionTree(registry.regions, registry.snapshot), lambda _r: "")
    again.load()
    assert 3 not in again.correlator.incidents, "a resolved incident without tasks is not kept in memory"
    again.close(3, "admin", "handled")
    stored = again.store.get(3)
    assert stored is not None and stored.state is IncidentState.CLOSED and stored.cause_code == "handled"
    assert stored.resolved_at is not None and stored.closed_at >= NOW  # type: ignore[operator]
