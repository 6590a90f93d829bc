"""Incident assignment from the API: an incident and its open department tasks go to one user, with the reason the
API requires on the timeline (zh-CN first), audited, region-scoped, on the live stream, kept after a restart
(the real app, joint service and SQLite store of ``test_api``'s rig)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.routes.incidents import attach
from joint.correlator import IncidentChange
from joint.service import JointService, RegionTree
from tests.gateway.conftest import NOW, Gateway, gateway, seeded  # noqa: F401
from tests.joint.test_api import Rig, rig  # noqa: F401


def _assign(rig: Rig, iid: int, assignee: str | None, user: str = "gz", reason: str = "值班安排") -> Any:  # noqa: F811
    return rig.call("POST", f"/incidents/{iid}/assign", user, json={"assignee": assignee, "reason": reason})


def test_assign_sets_the_incident_and_its_open_tasks_on_the_timeline_audited_and_live(rig: Rig) -> None:  # noqa: F811
    seen: list[Any] = []
    rig.service.subscribe(seen.append)
    r = _assign(rig, 2, "gz-duty", user="admin", reason="就近处置")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["assignee"] == "gz-duty" and body["assigned_by"] == "admin"
    assert [(t["id"], t["assignee"]) for t in body["tasks"]] == [(12, "gz-duty")], "its department task too"
    detail = rig.call("GET", "/incidents/2", "admin").json()
    assert detail["assignee"] == "gz-duty" and detail["tasks"][0]["assignee"] == "gz-duty"
    [entry] = [e for e in detail["timeline"] if e["data"].get("to") == "gz-duty"]
    assert entry["text"] == "指派给 gz-duty（含 1 个部门任务）：就近处置" and entry["actor"] == "admin"
    assert entry["data"]["text_en"] == "assigned to gz-duty (with 1 department tasks): 就近处置"
    [rec] = rig.audit.records(action="incident.assign")
    assert rec.detail == {"assignee": "gz-duty", "reason": "就近处置"} and rec.target == "incident 2"
    assert [c.kind for c in seen] == ["assigned"] and seen[0].incident.detail["assignee"] == "gz-duty"
    listed = {i["id"]: i["assignee"] for i in rig.call("GET", "/incidents", "admin").json()["items"]}
    assert listed == {1: None, 2: "gz-duty", 3: None}


def test_unassign_and_the_reason_is_required(rig: Rig) -> None:  # noqa: F811
    assert _assign(rig, 1, "gz-duty").status_code == 200
    assert _assign(rig, 1, None, reason="交班").json()["assignee"] is None
    timeline = rig.call("GET", "/incidents/1", "gz").json()["timeline"]
    assert timeline[-1]["text"] == "取消指派：交班"
    no_reason = rig.call("POST", "/incidents/1/assign", "gz", json={"assignee": "gz-duty"})
    assert no_reason.status_code == 422
    assert _assign(rig, 1, "gz-duty", reason="   ").status_code == 422
    assert _assign(rig, 1, "bad name!").status_code == 422, "a user name's pattern"


def test_who_may_assign_and_to_whom(rig: Rig) -> None:  # noqa: F811
    assert _assign(rig, 1, "gz-duty", user="gzb1").status_code == 403, "a viewer"
    assert _assign(rig, 3, "gz-duty").status_code == 404, "a sibling region's incident"
    assert _assign(rig, 2, "gz-duty", user="gzb1op").status_code == 403, "a city incident seen from a building"
    refused = {
        "nobody": "no user 'nobody'",
        "sz-viewer": "no user 'sz-viewer'",  # outside the caller's scope: as if it did not exist
        "gz-b1-guard": "cannot act on incidents",  # a viewer
    }
    for name, why in refused.items():
        r = _assign(rig, 1, name)
        assert r.status_code == 422 and why in r.json()["detail"], (name, r.text)
    r = _assign(rig, 2, "gz-b1-op", user="admin")
    assert r.status_code == 422 and "does not hold" in r.json()["detail"], "a building's operator, a city incident"
    assert _assign(rig, 1, "gz-b1-op").status_code == 200, "the building's own operator"
    r = _assign(rig, 1, "sz-viewer", user="admin")
    assert r.status_code == 422 and "cannot act on incidents" in r.json()["detail"]
    outcomes = [a.outcome for a in rig.audit.records(action="incident.assign")]
    assert outcomes.count("invalid") == 5 and outcomes.count("ok") == 1


def test_a_closed_incident_is_409_and_an_assignment_survives_a_restart(rig: Rig) -> None:  # noqa: F811
    assert rig.call("POST", "/incidents/3/close", json={"cause_code": "other"}).status_code == 200
    r = _assign(rig, 3, "admin", user="admin")
    assert r.status_code == 409 and "not open" in r.json()["detail"]
    assert _assign(rig, 1, "gz-duty").status_code == 200
    svc = rig.service
    again = JointService(svc.store.engine, svc.patterns, RegionTree(lambda: [], lambda: {}), lambda _r: "")
    again.load()
    assert again.correlator.incidents[1].detail["assignee"] == "gz-duty"
    assert again.correlator.incidents[1].detail["task_assignees"] == {"11": "gz-duty"}


def test_an_opened_incident_proposes_its_gate_locks_in_one_write_and_one_live_item(
    rig: Rig,  # noqa: F811
    gateway: Gateway,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The auto-proposal on the alert path (gateway/incident_live.py ``StepRecorder.held``): one timeline write and
    one live item for all the gates of the building, not a write and a read of the incident per gate."""
    side = attach(gateway.ctx)
    writes: list[int] = []
    live: list[str] = []
    add = side.store.add_timeline
    publish = gateway.ctx.broadcaster.publish_incident

    def counted_add(entries: list[Any], now: Any) -> None:
        writes.append(len(entries))
        add(entries, now=now)

    def counted_publish(doc: dict[str, Any], *a: Any) -> None:
        live.append(doc["kind"])
        publish(doc, *a)

    monkeypatch.setattr(side.store, "add_timeline", counted_add)
    monkeypatch.setattr(gateway.ctx.broadcaster, "publish_incident", counted_publish)
    inc = rig.service.correlator.incidents[1]  # an intrusion in gz-b1, whose two gates obey lock
    rig.service._publish([IncidentChange("opened", inc, NOW)])
    assert writes == [2] and live == ["opened", "action_proposed"]
    steps = [e["data"].get("step") for e in rig.call("GET", "/incidents/1").json()["timeline"]]
    assert steps.count("proposed") == 2
    items = rig.call("GET", "/incidents/1/actions", "gz").json()["items"]
    assert sorted(a["device_id"] for a in items) == ["gate-gz-0001", "gate-gz-0002"]
    r = rig.call("POST", f"/incidents/1/actions/{items[0]['id']}/decline", "gzadmin", json={"reason": "演练"})
    assert r.status_code == 200 and writes == [2, 1], "a later step is written on its own"
