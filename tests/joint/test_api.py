"""The incidents API (gateway/routes/incidents.py) on the real app, the real joint service and store: scoping
(a sibling's incident is 404, a city incident partly visible from a building), bounds, state transitions through
the service, department tasks, guarded linkage actions with their audit records."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alerts.types import Severity
from devices.audit import AuditLog
from gateway.app import create_app
from gateway.auth import create_user
from joint.models import Incident, IncidentMember, IncidentState, ScopeLevel, Task, TaskState
from joint.patterns import PatternSet
from joint.service import JointService, RegionTree
from tests.gateway.conftest import NOW, Gateway, gateway, seeded  # noqa: F401


def _incident(
    iid: int, region: str, path: tuple[str, ...], level: ScopeLevel, members: list[tuple[int, str, str]]
) -> Incident:
    inc = Incident(
        id=iid,
        pattern_id="X2" if level is ScopeLevel.BUILDING else "X5",
        type="intrusion" if level is ScopeLevel.BUILDING else "regional_cluster",
        title_zh=f"事件{iid}",
        title_en=f"Incident {iid}",
        severity=Severity.CRITICAL,
        state=IncidentState.OPEN,
        scope_level=level,
        region_id=region,
        group_key=f"k{iid}",
        opened_at=NOW - timedelta(minutes=iid),
        updated_at=NOW,
        region_path=path,
    )
    for alert_id, device, reg in members:
        inc.members[alert_id] = IncidentMember(alert_id, NOW, "G1", device, reg)
    return inc


@dataclass
class Rig:
    client: TestClient
    tokens: dict[str, str]
    service: JointService
    sent: list[tuple[str, bytes]]
    audit: AuditLog

    def call(self, method: str, path: str, user: str = "admin", **kw: Any) -> Any:
        return self.client.request(
            method, f"/api/v1{path}", headers={"Authorization": f"Bearer {self.tokens[user]}"}, **kw
        )


@pytest.fixture
def rig(gateway: Gateway) -> Iterator[Rig]:  # noqa: F811
    ctx = gateway.ctx
    reg = ctx.registry
    tokens = dict(gateway.tokens)
    tokens["gzb1op"] = create_user(reg.engine, "gz-b1-op", "operator", "gz-b1", NOW)
    tokens["gzadmin"] = create_user(reg.engine, "gz-admin", "admin", "gz", NOW)
    svc = JointService(
        reg.engine, PatternSet(), RegionTree(reg.regions, reg.snapshot), lambda _r: "", clock_fn=lambda: NOW
    )
    b1 = _incident(1, "gz-b1", ("gd", "gz", "gz-jgj", "gz-b1"), ScopeLevel.BUILDING, [(101, "gate-gz-0001", "gz-b1")])
    city = _incident(
        2, "gz", ("gd", "gz"), ScopeLevel.CITY, [(102, "gate-gz-0002", "gz-b1"), (103, "meter-gz-0001", "gz-jgj")]
    )
    sz = _incident(3, "sz-b1", ("gd", "sz", "sz-jgj", "sz-b1"), ScopeLevel.BUILDING, [(104, "gate-sz-0001", "sz-b1")])
    tasks = [
        Task(11, 1, "security", TaskState.OPEN, NOW, NOW + timedelta(minutes=30)),
        Task(12, 2, "energy", TaskState.OPEN, NOW, NOW - timedelta(minutes=1)),
    ]
    svc.store.save(incidents=[b1, city, sz], tasks=tasks, now=NOW)
    svc.load()
    sent: list[tuple[str, bytes]] = []
    ctx.joint = svc  # type: ignore[attr-defined]

    def publish(topic: str, payload: bytes) -> bool:
        sent.append((topic, payload))
        return True

    ctx.linkage_publish = publish  # type: ignore[attr-defined]
    with TestClient(create_app(ctx)) as client:
        yield Rig(client, tokens, svc, sent, AuditLog(reg.session))


def test_list_is_scoped_and_a_city_incident_is_partly_visible_from_a_building(rig: Rig) -> None:
    assert [i["id"] for i in rig.call("GET", "/incidents").json()["items"]] == [1, 2, 3]
    gz = rig.call("GET", "/incidents", "gz").json()
    assert [(i["id"], i["visibility"]) for i in gz["items"]] == [(1, "full"), (2, "full")] and gz["total"] == 2
    b1 = rig.call("GET", "/incidents", "gzb1").json()
    assert [(i["id"], i["visibility"]) for i in b1["items"]] == [(1, "full"), (2, "partial")]
    city = rig.call("GET", "/incidents/2", "gzb1").json()
    assert [m["alert_id"] for m in city["members"]] == [102] and city["members_hidden"] == 1
    assert city["region_path"] == [], "the caller's scope does not cover the city itself"
    sz = rig.call("GET", "/incidents", "sz").json()
    assert [i["id"] for i in sz["items"]] == [3]


def test_a_sibling_regions_incident_is_404_everywhere(rig: Rig) -> None:
    for method, path, body in [
        ("GET", "/incidents/3", None),
        ("GET", "/incidents/3/actions", None),
        ("POST", "/incidents/3/ack", {}),
        ("POST", "/incidents/3/comments", {"text": "x"}),
        ("POST", "/incidents/3/actions", {"name": "lock"}),
    ]:
        r = rig.call(method, path, "gz", json=body)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json() == {"detail": "incident '3' not found"}
    assert rig.call("GET", "/incidents/999").status_code == 404
    assert rig.call("GET", "/incidents", "gz", params={"region": "sz"}).status_code == 404


def test_filters_and_bounds(rig: Rig) -> None:
    assert [i["id"] for i in rig.call("GET", "/incidents", params={"type": "regional_cluster"}).json()["items"]] == [2]
    assert rig.call("GET", "/incidents", params={"severity": "info"}).json()["items"] == []
    assert rig.call("GET", "/incidents", params={"state": "active", "region": "sz"}).json()["total"] == 1
    page = rig.call("GET", "/incidents", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 3 and [i["id"] for i in page["items"]] == [2]
    for params in (
        {"limit": 0},
        {"limit": 1001},
        {"offset": -1},
        {"type": "Bad Type"},
        {"severity": "loud"},
        {"state": "gone"},
        {"region": "x" * 65},
    ):
        assert rig.call("GET", "/incidents", params=params).status_code == 422, params
    assert rig.call("GET", "/incidents/0").status_code == 422
    assert rig.call("GET", f"/incidents/{2**53}").status_code == 422
    r = rig.call("POST", "/incidents/1/close", json={"cause_code": "because"})
    assert r.status_code == 422
    assert rig.call("POST", "/incidents/1/comments", json={"text": "   "}).status_code == 422


def test_state_transitions_go_through_the_service_and_are_audited(rig: Rig) -> None:
    assert rig.call("POST", "/incidents/1/ack", "sz", json={}).status_code == 403, "a viewer: the role first"
    assert rig.call("POST", "/incidents/1/ack", "gzb1", json={}).status_code == 403, "a viewer"
    r = rig.call("POST", "/incidents/1/ack", "gz", json={})
    assert r.status_code == 200 and r.json()["state"] == "investigating"
    assert rig.call("POST", "/incidents/1/investigate", "gz", json={}).status_code == 409, "not open any more"
    assert rig.call("POST", "/incidents/1/comments", "gz", json={"text": "到场核实"}).status_code == 201
    # The building's operator may read the city incident but not change it.
    r = rig.call("POST", "/incidents/2/ack", "gzb1op", json={})
    assert r.status_code == 403 and "read it only" in r.json()["detail"]
    closed = rig.call("POST", "/incidents/1/close", "gz", json={"cause_code": "false_alarm", "note": "演练"})
    assert closed.status_code == 200
    body = closed.json()
    assert body["state"] == "closed" and body["cause_code"] == "false_alarm"
    assert [t["state"] for t in body["tasks"]] == ["closed"], "its open task closed with it"
    assert rig.call("POST", "/incidents/1/close", "gz", json={"cause_code": "handled"}).status_code == 409
    timeline = rig.call("GET", "/incidents/1", "gz").json()["timeline"]
    texts = [e["text"] for e in timeline]
    assert "到场核实" in texts and "演练" in texts
    actions = [r.action for r in rig.audit.records(target="incident 1")]
    assert actions == ["incident.close", "incident.comment", "incident.ack"]


def test_department_tasks_ack_and_close(rig: Rig) -> None:
    detail = rig.call("GET", "/incidents/2", "gz").json()
    (task,) = detail["tasks"]
    assert task["department"] == "energy" and task["overdue"] is True
    assert rig.call("POST", "/incidents/1/tasks/12/ack", "gz", json={}).status_code == 404, "another incident's task"
    r = rig.call("POST", "/incidents/2/tasks/12/ack", "gz", json={"note": "已派人"})
    assert r.status_code == 200 and r.json()["tasks"][0]["state"] == "acknowledged"
    r = rig.call("POST", "/incidents/2/tasks/12/close", "gz", json={})
    assert r.status_code == 200 and r.json()["state"] == "closed", "the incident closes with its last task"
    assert rig.call("POST", "/incidents/2/tasks/12/close", "gz", json={}).status_code == 409


def test_linkage_actions_are_guarded_and_audited(rig: Rig) -> None:
    assert rig.call("POST", "/incidents/1/actions", "gzb1", json={"name": "lock"}).status_code == 403, "a viewer"
    made = rig.call("POST", "/incidents/1/actions", "gz", json={"name": "lock", "reason": "门被强行打开"})
    assert made.status_code == 201
    items = made.json()["items"]
    assert sorted(a["device_id"] for a in items) == ["gate-gz-0001", "gate-gz-0002"]
    assert all(a["state"] == "proposed" for a in items) and rig.sent == []
    bad = rig.call("POST", "/incidents/1/actions", "gz", json={"name": "lock", "device_ids": ["gate-sz-0001"]})
    assert bad.status_code == 422
    wrong = rig.call("POST", "/incidents/1/actions", "gz", json={"name": "lock", "device_ids": ["meter-gz-0001"]})
    assert wrong.status_code == 422, "a device outside the incident's building"
    a, b = items
    # An operator cannot confirm; nor can the proposer; an admin of another city does not see it.
    assert rig.call("POST", f"/incidents/1/actions/{a['id']}/confirm", "gz", json={}).status_code == 403
    assert rig.call("POST", f"/incidents/1/actions/{a['id']}/confirm", "sz", json={}).status_code == 404
    ok = rig.call("POST", f"/incidents/1/actions/{a['id']}/confirm", "gzadmin", json={})
    assert ok.status_code == 200 and ok.json()["state"] == "sent"
    assert [t for t, _ in rig.sent] == [f"lf/v1/{a['device_id']}/cmd"]
    assert rig.call("POST", f"/incidents/1/actions/{a['id']}/confirm", "gzadmin", json={}).status_code == 409
    no = rig.call("POST", f"/incidents/1/actions/{b['id']}/decline", "admin", json={"reason": "误报"})
    assert no.status_code == 200 and no.json()["state"] == "declined"
    assert rig.call("POST", "/incidents/1/actions/nope/confirm", "admin", json={}).status_code == 404
    listed = rig.call("GET", "/incidents/1/actions", "gz").json()["items"]
    assert sorted(x["state"] for x in listed) == ["declined", "sent"]
    steps = [e["data"].get("step") for e in rig.call("GET", "/incidents/1", "gz").json()["timeline"]]
    assert steps.count("proposed") == 2 and "sent" in steps and "declined" in steps
    audited = {r.action for r in rig.audit.records(action="incident.action.confirm")}
    assert audited == {"incident.action.confirm"}
    assert len(rig.audit.records(action="incident.action.propose")) == 2


def test_an_intrusion_proposes_locking_its_gates_when_it_opens(rig: Rig) -> None:
    from joint.correlator import IncidentChange

    inc = rig.service.store.get(1)
    assert inc is not None and inc.type == "intrusion"
    rig.service._publish([IncidentChange("opened", inc, NOW)])  # what the service tells its subscribers
    items = rig.call("GET", "/incidents/1/actions", "gz").json()["items"]
    assert sorted((a["device_id"], a["name"], a["proposed_by"], a["state"]) for a in items) == [
        ("gate-gz-0001", "lock", "system", "proposed"),
        ("gate-gz-0002", "lock", "system", "proposed"),
    ]
    assert rig.sent == [], "nothing goes out before a person confirms"
    ok = rig.call("POST", f"/incidents/1/actions/{items[0]['id']}/confirm", "gzadmin", json={})
    assert ok.status_code == 200 and ok.json()["state"] == "sent"


def test_incident_changes_reach_only_the_streams_that_see_them() -> None:
    import asyncio

    from gateway.live import Broadcaster

    b = Broadcaster()
    loop = asyncio.new_event_loop()
    try:
        everyone = b.subscribe(None, loop)
        building = b.subscribe(frozenset({"gz-b1"}), loop)
        shenzhen = b.subscribe(frozenset({"sz", "sz-jgj", "sz-b1"}), loop)
        b.publish_incident({"id": 2}, ("gd", "gz"), {"gz-b1", "gz-jgj"})  # a city cluster with a member in gz-b1
        b.publish_incident({"id": 3}, ("gd", "sz", "sz-jgj", "sz-b1"), {"sz-b1"})
        assert [m["incidents"][0]["id"] for m in everyone.drain()] == [2, 3]
        assert [m["incidents"][0]["id"] for m in building.drain()] == [2]
        assert [m["incidents"][0]["id"] for m in shenzhen.drain()] == [3]
    finally:
        b.close()
        loop.close()
