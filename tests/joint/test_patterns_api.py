"""Correlation patterns edited through the API (gateway/routes/patterns.py, joint/pattern_store.py) on the real app
and a real SQLite registry: list / get / put / delete of patterns and their per-region overrides, checked like
``rules check`` (a 422 naming what does not exist), region-scoped (404 outside the caller's subtree), audited, with
history, and picked up by a running joint service through the stored version (no restart, no shared objects)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alerts.rule_check import Known
from alerts.rules import PACKS_DIR as RULE_PACKS
from alerts.rules import RuleSet
from devices.audit import AuditLog
from gateway.app import create_app
from gateway.auth import create_user
from joint.pattern_store import PatternAdmin, PatternStore
from joint.patterns import PACKS_DIR
from joint.service import JointService, RegionTree
from tests.gateway.conftest import NOW, Gateway, gateway, seeded  # noqa: F401
from tests.helpers import wait_until

_RULE_IDS = list(RuleSet.load([RULE_PACKS]).rules)

NEW_PATTERN: dict[str, Any] = {
    "kind": "group",
    "type": "device_fault",
    "title_zh": "电表故障群",
    "title_en": "Meter fault cluster",
    "severity": "major",
    "scope": "agency",
    "window_s": 600,
    "members": {"rules": ["E1"], "device_types": ["energy_meter"]},
    "params": {"min_devices": 3},
}


@dataclass
class Rig:
    client: TestClient
    tokens: dict[str, str]
    audit: AuditLog
    gateway: Gateway

    def call(self, method: str, path: str, user: str = "admin", **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[user]}", **kw.pop("headers", {})}
        return self.client.request(method, f"/api/v1{path}", headers=headers, **kw)


@pytest.fixture
def rig(gateway: Gateway) -> Iterator[Rig]:  # noqa: F811
    reg = gateway.ctx.registry
    tokens = dict(gateway.tokens)
    tokens["gzadmin"] = create_user(reg.engine, "gz-admin", "admin", "gz", NOW)
    with TestClient(create_app(gateway.ctx)) as client:
        yield Rig(client, tokens, AuditLog(reg.session), gateway)


def _service(gw: Gateway, poll_s: float = 2.0) -> JointService:
    reg = gw.ctx.registry
    source = PatternAdmin([PACKS_DIR], PatternStore(reg.engine), lambda: _RULE_IDS, lambda: Known.from_registry(reg))
    version, built = source.versioned()
    svc = JointService(
        reg.engine,
        built.patterns,
        RegionTree(reg.regions, reg.snapshot),
        lambda _r: "",
        clock_fn=lambda: NOW,
        patterns_source=source,
        patterns_poll_s=poll_s,
    )
    svc.patterns_version = version
    return svc


def _setting(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["effective"]["settings"] if s["setting"] == name)


def test_list_and_get_show_the_packs_with_their_effective_values_in_a_region(rig: Rig) -> None:
    listed = rig.call("GET", "/patterns", "gz").json()
    assert [p["id"] for p in listed["items"]] == ["X1", "X2", "X3", "X4", "X5", "X6", "X8", "X9"]
    assert {p["source"] for p in listed["items"]} == {"pack"} and listed["problems"] == []
    x5 = rig.call("GET", "/patterns/X5", "gz", params={"region": "gz"}).json()
    assert x5["definition"]["members"]["exclude_rules"] == ["G5"] and x5["defined_in"] == "joint/packs/joint.yaml"
    assert _setting(x5, "window_s")["source"].startswith("pattern X5 (joint/packs/joint.yaml")
    assert rig.call("GET", "/patterns/X7").status_code == 404
    assert rig.call("GET", "/patterns/X5", "gz", params={"region": "sz"}).status_code == 404
    assert rig.call("GET", "/patterns/bad%20id").status_code == 422


def test_an_operator_overrides_a_pattern_in_their_region_with_history_and_audit(rig: Rig) -> None:
    r = rig.call("PUT", "/patterns/X5/overrides", "gz", params={"region": "gz"}, json={"window_s": 1200})
    assert r.status_code == 201, r.text
    assert r.json()["origin"] == "api override X5 [region=gz]" and r.json()["created_by"] == "gz-duty"
    r = rig.call("PUT", "/patterns/X5/overrides", "gz", params={"region": "gz"}, json={"window_s": 900})
    assert r.status_code == 200, r.text
    x5 = rig.call("GET", "/patterns/X5", "gz", params={"region": "gz-b1"}).json()
    assert _setting(x5, "window_s") == {"setting": "window_s", "value": 900, "source": "api override X5 [region=gz]"}
    assert [o["origin"] for o in x5["overrides"]] == ["api override X5 [region=gz]"]
    # the Shenzhen view: the region's values are the pack's, the Guangzhou override is not listed
    sz = rig.call("GET", "/patterns/X5", params={"region": "sz"}).json()
    assert _setting(sz, "window_s")["source"].startswith("pattern X5")
    history = rig.call("GET", "/patterns/X5/history", "gz").json()["items"]
    assert [(c["action"], c["before"], c["after"]) for c in history] == [
        ("updated", {"window_s": 1200.0}, {"window_s": 900.0}),
        ("created", None, {"window_s": 1200.0}),
    ]
    assert rig.call("GET", "/patterns/X5/history", "sz").json()["items"] == [], "another region's edits are hidden"
    audited = [r.action for r in rig.audit.records(action="pattern.override.put")]
    assert audited == ["pattern.override.put", "pattern.override.put"]
    gone = rig.call("DELETE", "/patterns/X5/overrides", "gz", params={"region": "gz"})
    assert gone.status_code == 200 and gone.json()["deleted"]["window_s"] == 900
    assert rig.call("DELETE", "/patterns/X5/overrides", "gz", params={"region": "gz"}).status_code == 404
    assert [r.action for r in rig.audit.records(action="pattern.override.delete")] == ["pattern.override.delete"]


def test_overrides_are_region_scoped_and_guarded(rig: Rig) -> None:
    body = {"severity": "critical"}
    assert rig.call("PUT", "/patterns/X5/overrides", "gz", params={"region": "sz"}, json=body).status_code == 404
    assert rig.call("PUT", "/patterns/X5/overrides", "gz", params={"region": "nowhere"}, json=body).status_code == 404
    assert rig.call("DELETE", "/patterns/X5/overrides", "gz", params={"region": "sz"}).status_code == 404
    assert rig.call("PUT", "/patterns/X5/overrides", "gz", json=body).status_code == 403, "every region: whole tree"
    assert rig.call("PUT", "/patterns/X5/overrides", "gzadmin", json=body).status_code == 403
    assert rig.call("PUT", "/patterns/X5/overrides", "sz", params={"region": "sz"}, json=body).status_code == 403
    off = {"enabled": False}
    assert rig.call("PUT", "/patterns/X5/overrides", "gz", params={"region": "gz"}, json=off).status_code == 403
    assert rig.call("PUT", "/patterns/*/overrides", "gz", params={"region": "gz"}, json=body).status_code == 403
    assert rig.call("PUT", "/patterns/X5/overrides", "gzadmin", params={"region": "gz"}, json=off).status_code == 201
    assert rig.call("PUT", "/patterns/X5/overrides", "admin", json=body).status_code == 201
    assert rig.call("PUT", "/patterns/X7/overrides", "admin", json=body).status_code == 404
    assert rig.call("PUT", "/patterns/X5/overrides", "admin", json={}).status_code == 422


def test_an_override_naming_what_does_not_exist_is_422_naming_it(rig: Rig) -> None:
    r = rig.call(
        "PUT", "/patterns/X2/overrides", params={"region": "gz"}, json={"params": {"first": {"rules": ["G11"]}}}
    )
    assert r.status_code == 422, r.text
    [err] = r.json()["detail"]
    assert "unknown rule 'G11'; did you mean 'G1'?" in err["msg"] and err["loc"] == [
        "body",
        "params",
        "first",
        "rules",
        0,
    ]
    r = rig.call(
        "PUT", "/patterns/X2/overrides", params={"region": "gz"}, json={"params": {"frist": {"rules": ["G1"]}}}
    )
    assert r.status_code == 422 and "unknown field 'frist'; did you mean 'first'?" in r.text
    r = rig.call("PUT", "/patterns/X2/overrides", json={"params": {"then": {"device_types": ["gat"]}}})
    assert r.status_code == 422 and "'gat' is not one of" in r.text and "did you mean 'gate'?" in r.text
    for raw in ('{"window_s": 1e999}', '{"params": {"min_devices": Infinity}}'):
        r = rig.call("PUT", "/patterns/X5/overrides", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, raw
    assert rig.call("GET", "/patterns/X2/history").json()["items"] == [], "nothing stored"


def test_patterns_defined_through_the_api(rig: Rig) -> None:
    assert rig.call("PUT", "/patterns/Z1", "gzadmin", json=NEW_PATTERN).status_code == 403
    assert rig.call("PUT", "/patterns/Z1", "gz", json=NEW_PATTERN).status_code == 403
    bad = {**NEW_PATTERN, "members": {"rules": ["E9"], "rule_kinds": ["threshold"]}}
    r = rig.call("PUT", "/patterns/Z1", json=bad)
    assert r.status_code == 422 and "unknown rule 'E9'" in r.text, r.text
    r = rig.call("PUT", "/patterns/Z1", json={**NEW_PATTERN, "members": {"rule_kinds": ["treshold"]}})
    assert r.status_code == 422 and "did you mean 'threshold'?" in r.text
    r = rig.call("PUT", "/patterns/Z1", json={**NEW_PATTERN, "params": {"min_device": 3}})
    assert r.status_code == 422 and "unknown field 'min_device'; did you mean 'min_devices'?" in r.text
    r = rig.call("PUT", "/patterns/Z1", json=NEW_PATTERN)
    assert r.status_code == 201 and r.json()["source"] == "api", r.text
    assert rig.call("PUT", "/patterns/Z1", json={**NEW_PATTERN, "window_s": 300}).status_code == 200
    assert rig.call("PUT", "/patterns/Z1", json={**NEW_PATTERN, "id": "Z2"}).status_code == 422
    listed = {p["id"]: p for p in rig.call("GET", "/patterns", "gz").json()["items"]}
    assert listed["Z1"]["source"] == "api" and listed["Z1"]["window_s"] == 300
    ov = rig.call("PUT", "/patterns/Z1/overrides", "gz", params={"region": "gz"}, json={"params": {"min_devices": 5}})
    assert ov.status_code == 201, ov.text
    r = rig.call("PUT", "/patterns/X5", json=NEW_PATTERN)
    assert r.status_code == 409 and "joint/packs/joint.yaml" in r.json()["detail"]
    assert rig.call("DELETE", "/patterns/X5").status_code == 409
    gone = rig.call("DELETE", "/patterns/Z1").json()
    assert gone["deleted"] == "Z1" and [o["region"] for o in gone["overrides_deleted"]] == ["gz"]
    assert rig.call("GET", "/patterns/Z1").status_code == 404
    assert rig.call("DELETE", "/patterns/Z1").status_code == 404
    actions = [r.action for r in rig.audit.records(target="pattern Z1")]
    assert sorted(actions) == ["pattern.delete", "pattern.put", "pattern.put"]


def test_the_running_correlator_picks_up_an_edit_through_the_database(rig: Rig) -> None:
    svc = _service(rig.gateway, poll_s=0.05)
    svc.load()
    path = ("gd", "gz")
    assert svc.correlator.patterns.effective("X5", path).window_s != 1234
    svc.start()
    try:
        r = rig.call("PUT", "/patterns/X5/overrides", "gz", params={"region": "gz"}, json={"window_s": 1234})
        assert r.status_code == 201
        wait_until(lambda: svc.correlator.patterns.effective("X5", path).window_s == 1234, what="override applied")
        assert svc.correlator.patterns.effective("X5", ("gd", "sz")).window_s != 1234
        assert rig.call("PUT", "/patterns/Z1", json=NEW_PATTERN).status_code == 201
        wait_until(lambda: "Z1" in svc.correlator.patterns.patterns, what="new pattern applied")
        rig.call("DELETE", "/patterns/Z1")
        wait_until(lambda: "Z1" not in svc.correlator.patterns.patterns, what="pattern removed")
    finally:
        svc.stop()


def test_a_stored_entry_that_no_longer_fits_is_skipped_not_fatal(rig: Rig) -> None:
    reg = rig.gateway.ctx.registry
    PatternStore(reg.engine).save_override("X5", "gz", {"params": {"min_buildings": 0}}, "sql", NOW)
    svc = _service(rig.gateway)
    assert svc.reload_patterns(force=True)
    assert svc.correlator.patterns.effective("X5", ("gd", "gz")).params.min_buildings >= 1
    listed = rig.call("GET", "/patterns").json()
    assert len(listed["problems"]) == 1 and "api override X5 [region=gz]" in listed["problems"][0]


def test_pattern_bodies_are_bounded_in_the_openapi_document(rig: Rig) -> None:
    r = rig.call("PUT", "/patterns/Z1", json={**NEW_PATTERN, "title_zh": "长" * 256})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "title_zh"]
    r = rig.call("PUT", "/patterns/Z1", json={**NEW_PATTERN, "members": {"rules": ["E1"] * 201}})
    assert r.status_code == 422
    doc = rig.client.get("/api/v1/openapi.json").json()
    schemas = doc["components"]["schemas"]
    body = schemas["PatternBody"]["properties"]
    assert body["title_zh"]["maxLength"] == 255 and body["description"]["maxLength"] == 4000
    assert schemas["Members"]["properties"]["rules"]["maxItems"] == 200
    override = schemas["PatternOverrideBody"]["properties"]
    assert override["window_s"]["anyOf"][0]["maximum"] == 7 * 86400
