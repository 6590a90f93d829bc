"""Rule endpoints over a real AlertsRuntime (packs + a rule file + the API layer) on the seeded, migrated SQLite
registry: reads, explain, overrides and API-defined rules, validation, region scoping, persistence across a
restart, and overrides changing what fires in the running service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alerts.wiring import AlertsRuntime
from core.protocol import Reading
from core.settings import AlertSettings, Settings
from core.store import WriteBatch
from devices.registry import DeviceSpec
from gateway.app import create_app
from gateway.auth import create_user
from tests.gateway.conftest import NOW, NOW_MS, Gateway

API = "/api/v1"

RULES_YAML = """
rules:
  - id: T.power
    kind: threshold
    device_types: [energy_meter]
    severity: warning
    title_zh: 功率过高
    title_en: Power too high
    params: {field: power_kw, op: ">", value: 50}
  - id: T.temp
    kind: threshold
    device_types: [energy_meter]
    title_zh: 温度过高
    title_en: Temperature too high
    params: {field: temp_c, op: ">", value: 30, count: 2}
overrides:
  - {rule: T.power, region: sz, params: {value: 55}}
"""


class Client:
    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens

    def _h(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def get(self, path: str, user: str = "admin", **params: Any) -> Any:
        return self.client.get(API + path, params=params or None, headers=self._h(user))

    def put(self, path: str, body: dict[str, Any], user: str = "admin", **params: Any) -> Any:
        return self.client.put(API + path, json=body, params=params or None, headers=self._h(user))

    def delete(self, path: str, user: str = "admin", **params: Any) -> Any:
        return self.client.delete(API + path, params=params or None, headers=self._h(user))


@pytest.fixture
def settings(gateway: Gateway, tmp_path: Path) -> Settings:
    reg = gateway.ctx.registry
    reg.add_devices([DeviceSpec("meter-sz-0001", "energy_meter", "sz-jgj", "总表")], now=NOW)
    path = tmp_path / "site.yaml"
    path.write_text(RULES_YAML, encoding="utf-8")
    gateway.tokens["gzadmin"] = create_user(reg.engine, "gz-admin", "admin", "gz", NOW)
    return Settings(alerts=AlertSettings(rules_paths=[path]))


def make_runtime(gateway: Gateway, settings: Settings) -> AlertsRuntime:
    rt = AlertsRuntime(settings, gateway.ctx.registry, clock_fn=lambda: NOW)
    rt.service.load(now=NOW)  # no timers: the tests drive the service
    return rt


@pytest.fixture
def runtime(gateway: Gateway, settings: Settings) -> AlertsRuntime:
    return make_runtime(gateway, settings)


@pytest.fixture
def api(gateway: Gateway, runtime: AlertsRuntime) -> Iterator[Client]:
    gateway.ctx.alerts = runtime
    with TestClient(create_app(gateway.ctx)) as client:
        yield Client(client, gateway.tokens)


def settings_of(body: dict[str, Any], rule: str) -> dict[str, dict[str, Any]]:
    one = next(r for r in body["rules"] if r["id"] == rule)
    return {s["setting"]: s for s in one["settings"]}


def effective_value(rt: AlertsRuntime, device: str, rule: str, region_path: list[str]) -> Any:
    rules = rt.service.rules.explain(device, "energy_meter", region_path)
    return next(r for r in rules if r.rule_id == rule).params.value


GZ_METER = ["gd", "gz", "gz-jgj"]


# --- reads -------------------------------------------------------------------------------------------------------


def test_rule_endpoints_answer_503_without_the_alert_runtime(gateway: Gateway) -> None:
    with TestClient(create_app(gateway.ctx)) as client:
        c = Client(client, gateway.tokens)
        for resp in (
            c.get("/rules"),
            c.get("/rules/G1"),
            c.get("/devices/gate-gz-0001/rules"),
            c.put("/rules/G1/overrides", {"reason": "test", "enabled": False}, region="gz"),
        ):
            assert resp.status_code == 503, resp.text
            assert resp.json()["detail"] == "alerts not running"


def test_list_rules_shows_packs_files_and_where_each_is_defined(api: Client) -> None:
    assert api.client.get(API + "/rules").status_code == 401
    body = api.get("/rules", user="sz")
    assert body.status_code == 200, body.text
    items = {r["id"]: r for r in body.json()["items"]}
    assert items["G1"]["source"] == "pack" and items["G1"]["defined_in"] == "alerts/packs/gates.yaml"
    power = items["T.power"]
    assert power["source"] == "file" and power["defined_in"].endswith("site.yaml")
    assert power["kind"] == "threshold" and power["severity"] == "warning"
    assert power["title_zh"] == "功率过高" and power["title_en"] == "Power too high"
    assert power["device_types"] == ["energy_meter"]
    only = api.get("/rules", type="energy_meter", kind="threshold").json()["items"]
    assert {r["id"] for r in only} >= {"T.power", "T.temp"} and all(r["kind"] == "threshold" for r in only)
    assert api.get("/rules", type="toaster").status_code == 422


def test_get_rule_with_overrides_is_scoped(api: Client) -> None:
    made = api.put("/rules/T.power/overrides", {"reason": "test", "params": {"value": 60}}, user="gz", region="gz")
    assert made.status_code == 201, made.text
    assert (
        api.put(
            "/rules/T.power/overrides", {"reason": "test", "severity": "major"}, device_type="energy_meter"
        ).status_code
        == 201
    )
    full = api.get("/rules/T.power").json()
    assert full["params"] == {"field": "power_kw", "op": ">", "value": 50}
    scopes = [(o["source"], o["region"], o["device_type"]) for o in full["overrides"]]
    assert scopes == [("file", "sz", None), ("api", "gz", None), ("api", None, "energy_meter")]
    gz_view = api.get("/rules/T.power", user="gz").json()["overrides"]
    assert [(o["region"], o["device_type"]) for o in gz_view] == [("gz", None), (None, "energy_meter")]
    api_one = gz_view[0]
    assert api_one["created_by"] == "gz-duty" and api_one["updated_at"].endswith("Z") and api_one["applied"]
    assert api_one["origin"] == "api override T.power [region=gz]"
    sz_view = api.get("/rules/T.power", user="sz").json()["overrides"]
    assert [(o["source"], o["region"]) for o in sz_view] == [("file", "sz"), ("api", None)]
    assert api.get("/rules/NOPE").status_code == 404


def test_explain_device_names_where_each_value_came_from_and_is_scoped(api: Client) -> None:
    before = api.get("/devices/meter-gz-0001/rules", user="gz")
    assert before.status_code == 200, before.text
    body = before.json()
    assert body["type"] == "energy_meter" and body["region_path"] == ["gz", "gz-jgj"]  # cut at the caller's scope
    power = settings_of(body, "T.power")
    assert power["value"]["value"] == 50 and power["value"]["source"].startswith("rule T.power (")
    assert power["for_s"]["source"] == "default of kind threshold"
    assert (
        api.put(
            "/rules/T.power/overrides", {"reason": "test", "params": {"value": 70}}, user="gz", region="gz"
        ).status_code
        == 201
    )
    after = settings_of(api.get("/devices/meter-gz-0001/rules", user="gz").json(), "T.power")
    assert after["value"] == {"setting": "value", "value": 70, "source": "api override T.power [region=gz]"}
    sz = settings_of(api.get("/devices/meter-sz-0001/rules").json(), "T.power")
    assert sz["value"]["value"] == 55 and "site.yaml overrides[0]" in sz["value"]["source"]
    # outside the caller's subtree, like a device that does not exist
    assert api.get("/devices/meter-sz-0001/rules", user="gz").status_code == 404
    assert api.get("/devices/gate-gz-0001/rules", user="sz").status_code == 404
    assert api.get("/devices/nope/rules").status_code == 404
    # disabled rules only with all=true
    assert (
        api.put(
            "/rules/T.temp/overrides", {"reason": "test", "enabled": False}, user="gzadmin", region="gz-jgj"
        ).status_code
        == 201
    )
    ids = [r["id"] for r in api.get("/devices/meter-gz-0001/rules", user="gz").json()["rules"]]
    assert "T.temp" not in ids and "T.power" in ids
    every = api.get("/devices/meter-gz-0001/rules", user="gz", all="true").json()["rules"]
    temp = next(r for r in every if r["id"] == "T.temp")
    assert temp["enabled"] is False
    assert settings_of({"rules": every}, "T.temp")["enabled"]["source"] == "api override T.temp [region=gz-jgj]"


# --- override writes ---------------------------------------------------------------------------------------------


def test_override_put_replaces_delete_restores_and_history_keeps_who(api: Client, runtime: AlertsRuntime) -> None:
    first = api.put("/rules/T.power/overrides", {"reason": "test", "params": {"value": 70}}, user="gz", region="gz")
    assert first.status_code == 201 and first.json()["params"] == {"value": 70}
    again = api.put(
        "/rules/T.power/overrides", {"reason": "test", "params": {"value": 75}, "severity": "major"}, region="gz"
    )
    assert again.status_code == 200, again.text
    assert again.json()["created_by"] == "gz-duty" and again.json()["updated_by"] == "admin"
    assert effective_value(runtime, "meter-gz-0001", "T.power", GZ_METER) == 75
    rules = runtime.service.rules.explain("meter-gz-0001", "energy_meter", GZ_METER)
    assert str(next(r for r in rules if r.rule_id == "T.power").severity) == "major"
    assert len([o for o in api.get("/rules/T.power").json()["overrides"] if o["source"] == "api"]) == 1
    gone = api.delete("/rules/T.power/overrides", reason="test", user="gz", region="gz")
    assert gone.status_code == 200 and gone.json()["deleted"]["params"] == {"value": 75}
    assert effective_value(runtime, "meter-gz-0001", "T.power", GZ_METER) == 50
    assert api.delete("/rules/T.power/overrides", reason="test", user="gz", region="gz").status_code == 404
    history = api.get("/rules/T.power/history").json()["items"]
    assert [(c["action"], c["actor"]) for c in history] == [
        ("deleted", "gz-duty"),
        ("updated", "admin"),
        ("created", "gz-duty"),
    ]
    assert history[1]["before"]["params"] == {"value": 70} and history[1]["after"]["severity"] == "major"
    assert history[0]["region"] == "gz" and history[0]["after"] is None


def test_override_needs_a_value_and_a_known_rule(api: Client) -> None:
    assert api.put("/rules/T.power/overrides", {"reason": "test"}, user="gz", region="gz").status_code == 422
    assert (
        api.put("/rules/NOPE/overrides", {"reason": "test", "enabled": False}, user="gzadmin", region="gz").status_code
        == 404
    )
    bad_key = api.put(
        "/rules/T.power/overrides", {"reason": "test", "enabled": False, "colour": "red"}, user="gz", region="gz"
    )
    assert bad_key.status_code == 422 and bad_key.json()["detail"][0]["loc"] == ["body", "colour"]
    bad_sev = api.put("/rules/T.power/overrides", {"reason": "test", "severity": "apocalyptic"}, user="gz", region="gz")
    assert bad_sev.status_code == 422
    both = api.put(
        "/rules/T.power/overrides", {"reason": "test", "enabled": False}, user="gz", region="gz", device="meter-gz-0001"
    )
    assert both.status_code == 422 and both.json()["detail"][0]["loc"] == ["query", "device"]
    star = api.put("/rules/*/overrides", {"reason": "test", "enabled": False}, user="gzadmin", region="gz-b1")
    assert star.status_code == 201, star.text
    star_params = api.put(
        "/rules/*/overrides", {"reason": "test", "params": {"value": 1}}, user="gzadmin", region="gz-b1"
    )
    assert star_params.status_code == 422
    assert "cannot set params" in star_params.json()["detail"][0]["msg"]


def test_invalid_override_is_422_naming_the_field_path_and_never_reaches_the_engine(
    api: Client, runtime: AlertsRuntime
) -> None:
    rules_before = runtime.service.rules
    resp = api.put("/rules/T.power/overrides", {"reason": "test", "params": {"for_s": -1}}, user="gz", region="gz")
    assert resp.status_code == 422, resp.text
    (problem,) = resp.json()["detail"]
    assert problem["loc"] == ["body", "params", "for_s"]
    assert problem["msg"] == (
        "api override T.power [region=gz]: params.for_s: Input should be greater than or equal to 0"
    )
    unknown = api.put("/rules/T.power/overrides", {"reason": "test", "params": {"speed": 3}}, user="gz", region="gz")
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["msg"].endswith("params.speed: Extra inputs are not permitted")
    hysteresis = api.put(
        "/rules/T.power/overrides", {"reason": "test", "params": {"clear_value": 99}}, user="gz", region="gz"
    )
    assert hysteresis.status_code == 422
    assert "clear_value must be <= value" in hysteresis.json()["detail"][0]["msg"]
    assert runtime.service.rules is rules_before  # nothing was swapped in
    assert effective_value(runtime, "meter-gz-0001", "T.power", GZ_METER) == 50
    assert [o["source"] for o in api.get("/rules/T.power").json()["overrides"]] == ["file"]
    assert api.get("/rules/T.power/history").json()["items"] == []


def test_override_scope_is_enforced_on_the_server(api: Client) -> None:
    body = {"reason": "test", "params": {"value": 99}}
    # a city-scoped operator cannot override for another city, its devices, or the province above it
    assert api.put("/rules/T.power/overrides", body, user="gz", region="sz").status_code == 404
    assert api.put("/rules/T.power/overrides", body, user="gz", region="gd").status_code == 404
    assert api.put("/rules/T.power/overrides", body, user="gz", device="meter-sz-0001").status_code == 404
    assert api.put("/rules/T.power/overrides", body, user="gz", region="nowhere").status_code == 404
    # every region of the tree: an admin of the whole tree only
    assert api.put("/rules/T.power/overrides", body, user="gz").status_code == 403
    assert api.put("/rules/T.power/overrides", body, user="gz", device_type="energy_meter").status_code == 403
    assert api.put("/rules/T.power/overrides", body, user="gzadmin").status_code == 403
    # viewers change nothing
    assert api.put("/rules/T.power/overrides", body, user="sz", region="sz").status_code == 403
    assert api.put("/rules/T.power/overrides", body, user="gzb1", region="gz-b1").status_code == 403
    # inside their subtree they can
    assert api.put("/rules/T.power/overrides", body, user="gz", device="meter-gz-0001").status_code == 201
    assert api.put("/rules/T.power/overrides", body, user="gzadmin", region="gz").status_code == 201
    assert api.put("/rules/T.power/overrides", body, region="sz").status_code == 201  # admin of the whole tree
    # and delete only what is theirs
    assert api.delete("/rules/T.power/overrides", reason="test", user="gz", region="sz").status_code == 404
    assert api.delete("/rules/T.power/overrides", reason="test", user="sz", region="sz").status_code == 403
    # the history is scoped like the overrides
    seen = {(c["region"], c["device"]) for c in api.get("/rules/T.power/history", user="gz").json()["items"]}
    assert seen == {(None, "meter-gz-0001"), ("gz", None)}


# --- rules defined through the API ---------------------------------------------------------------------------

NEW_RULE = {
    "kind": "threshold",
    "device_types": ["energy_meter"],
    "severity": "major",
    "title_zh": "电压过低",
    "title_en": "Voltage too low",
    "params": {"field": "voltage_v", "op": "<", "value": 200},
}


def test_api_defined_rules_need_a_whole_tree_admin_and_validate(api: Client, runtime: AlertsRuntime) -> None:
    assert api.put("/rules/X.volt", NEW_RULE, user="gz").status_code == 403  # operator
    assert api.put("/rules/X.volt", NEW_RULE, user="gzadmin").status_code == 403  # admin of one city
    bad = api.put("/rules/X.volt", {**NEW_RULE, "params": {"field": "voltage_v", "op": "<"}})
    assert bad.status_code == 422
    assert bad.json()["detail"] == [
        {"loc": ["body", "params", "value"], "msg": "api: params.value: Field required", "type": "value_error"}
    ]
    assert api.put("/rules/X.volt", {**NEW_RULE, "device_types": ["toaster"]}).status_code == 422
    assert api.put("/rules/bad id!", NEW_RULE).status_code == 422
    assert api.put("/rules/X.volt", {**NEW_RULE, "id": "X.other"}).status_code == 422
    assert api.put("/rules/G1", NEW_RULE).status_code == 409  # a pack defines it: override it instead
    assert "X.volt" not in runtime.service.rules.rules
    made = api.put("/rules/X.volt", NEW_RULE)
    assert made.status_code == 201, made.text
    assert made.json()["source"] == "api" and made.json()["created_by"] == "admin"
    assert runtime.service.rules.rule_origin["X.volt"] == "api"
    listed = {r["id"]: r for r in api.get("/rules").json()["items"]}
    assert listed["X.volt"]["defined_in"] == "api" and listed["X.volt"]["severity"] == "major"
    # overridable like any other rule, by region-scoped operators too
    assert (
        api.put(
            "/rules/X.volt/overrides", {"reason": "test", "params": {"value": 190}}, user="gz", region="gz"
        ).status_code
        == 201
    )
    volt = settings_of(api.get("/devices/meter-gz-0001/rules", user="gz").json(), "X.volt")
    assert volt["value"]["value"] == 190 and volt["op"]["source"] == "rule X.volt (api)"
    # a replacement must still fit the overrides of it
    clash = api.put("/rules/X.volt", {**NEW_RULE, "params": {"field": "voltage_v", "op": "<", "value": 200,
                                                             "clear_value": 195}})  # fmt: skip
    assert clash.status_code == 422 and "clear_value must be >= value" in clash.json()["detail"][0]["msg"]
    assert api.put("/rules/X.volt", {**NEW_RULE, "severity": "critical"}).status_code == 200
    assert str(runtime.service.rules.rules["X.volt"].severity) == "critical"
    assert api.delete("/rules/G1").status_code == 409
    assert api.delete("/rules/X.volt", user="gzadmin").status_code == 403
    gone = api.delete("/rules/X.volt")
    assert gone.status_code == 200 and [o["region"] for o in gone.json()["overrides_deleted"]] == ["gz"]
    assert "X.volt" not in runtime.service.rules.rules
    assert api.get("/rules/X.volt").status_code == 404
    assert api.delete("/rules/X.volt").status_code == 404
    # the id cannot come back as another kind (its alert state may still exist)
    reused = api.put("/rules/X.volt", {**NEW_RULE, "kind": "absence", "params": {}})
    assert reused.status_code == 409 and "choose a new id" in reused.json()["detail"]
    assert api.put("/rules/X.volt", NEW_RULE).status_code == 201
    history = [(c["target"], c["action"]) for c in api.get("/rules/X.volt/history").json()["items"]]
    assert history == [
        ("rule", "created"),
        ("rule", "deleted"),
        ("override", "deleted"),
        ("rule", "updated"),
        ("override", "created"),
        ("rule", "created"),
    ]


# --- persistence and the running service -------------------------------------------------------------------------


def test_api_edits_survive_a_restart(gateway: Gateway, settings: Settings, runtime: AlertsRuntime) -> None:
    gateway.ctx.alerts = runtime
    with TestClient(create_app(gateway.ctx)) as client:
        c = Client(client, gateway.tokens)
        assert (
            c.put(
                "/rules/T.power/overrides", {"reason": "test", "params": {"value": 80}}, user="gz", region="gz"
            ).status_code
            == 201
        )
        assert c.put("/rules/X.volt", NEW_RULE).status_code == 201
    restarted = make_runtime(gateway, settings)  # a new process: files and database read again
    gateway.ctx.alerts = restarted
    with TestClient(create_app(gateway.ctx)) as client:
        c = Client(client, gateway.tokens)
        power = settings_of(c.get("/devices/meter-gz-0001/rules").json(), "T.power")
        assert power["value"] == {"setting": "value", "value": 80, "source": "api override T.power [region=gz]"}
        assert c.get("/rules/X.volt").json()["created_by"] == "admin"
    assert effective_value(restarted, "meter-gz-0001", "T.power", GZ_METER) == 80
    assert "X.volt" in restarted.service.rules.rules and restarted.rule_admin.problems == []


def test_a_stored_override_that_no_longer_fits_the_files_is_skipped_and_reported(
    gateway: Gateway, settings: Settings, runtime: AlertsRuntime, tmp_path: Path
) -> None:
    gateway.ctx.alerts = runtime
    with TestClient(create_app(gateway.ctx)) as client:
        c = Client(client, gateway.tokens)
        assert (
            c.put(
                "/rules/T.temp/overrides", {"reason": "test", "params": {"count": 3}}, user="gz", region="gz"
            ).status_code
            == 201
        )
    # the rule file loses T.temp; the service still starts, without the stale override
    only_power = tmp_path / "power.yaml"
    only_power.write_text(RULES_YAML.split("  - id: T.temp")[0], encoding="utf-8")
    restarted = make_runtime(gateway, Settings(alerts=AlertSettings(rules_paths=[only_power])))
    assert restarted.rule_admin.problems == ["api override T.temp [region=gz]: rule: unknown rule 'T.temp' (skipped)"]
    assert restarted.status()["rule_problems"] == restarted.rule_admin.problems
    gateway.ctx.alerts = restarted
    with TestClient(create_app(gateway.ctx)) as client:
        c = Client(client, gateway.tokens)
        assert c.get("/rules").json()["problems"] == restarted.rule_admin.problems
        assert (
            c.delete("/rules/T.temp/overrides", reason="test", user="gz", region="gz").status_code == 200
        )  # can be cleaned up
    assert restarted.rule_admin.problems == []


def power(device: str, region: str, ts_ms: int, **fields: float) -> WriteBatch:
    batch = WriteBatch()
    batch.readings.append(Reading(device, region, "energy_meter", ts_ms, None, dict(fields)))
    return batch


def test_an_override_through_the_api_changes_what_fires_in_the_running_service(
    gateway: Gateway, settings: Settings
) -> None:
    rt = AlertsRuntime(settings, gateway.ctx.registry, clock_fn=lambda: NOW, snapshot_interval_s=3600)
    gateway.ctx.alerts = rt
    rt.start()
    try:
        with TestClient(create_app(gateway.ctx)) as client:
            c = Client(client, gateway.tokens)

            def open_alerts(rule: str) -> list[str]:
                resp = c.get("/alerts", rule=rule, state="open")
                assert resp.status_code == 200, resp.text
                return sorted(a["device_id"] for a in resp.json()["items"])

            t = NOW_MS
            rt.on_batch(power("meter-gz-0001", "gz-jgj", t + 1000, temp_c=35))  # T.temp: 1 of 2 in a row
            # raise the threshold in Guangzhou: 70 kW no longer fires there, and still does in Shenzhen
            assert (
                c.put(
                    "/rules/T.power/overrides", {"reason": "test", "params": {"value": 80}}, user="gz", region="gz"
                ).status_code
                == 201
            )
            rt.on_batch(power("meter-gz-0001", "gz-jgj", t + 2000, power_kw=70))
            rt.on_batch(power("meter-sz-0001", "sz-jgj", t + 2000, power_kw=70))
            assert open_alerts("T.power") == ["meter-sz-0001"]
            # the state of a rule the edit did not touch survived the swap: the second reading in a row fires
            rt.on_batch(power("meter-gz-0001", "gz-jgj", t + 3000, temp_c=36))
            assert open_alerts("T.temp") == ["meter-gz-0001"]
            # lower it for one meter: the same 70 kW fires now, without a restart
            lowered = c.put(
                "/rules/T.power/overrides",
                {"reason": "test", "params": {"value": 65}},
                user="gz",
                device="meter-gz-0001",
            )
            assert lowered.status_code == 201
            rt.on_batch(power("meter-gz-0001", "gz-jgj", t + 4000, power_kw=70))
            assert open_alerts("T.power") == ["meter-gz-0001", "meter-sz-0001"]
            # the device override goes: back to the region's 80, and 70 kW clears the alert
            assert (
                c.delete("/rules/T.power/overrides", reason="test", user="gz", device="meter-gz-0001").status_code
                == 200
            )
            rt.on_batch(power("meter-gz-0001", "gz-jgj", t + 5000, power_kw=70))
            assert open_alerts("T.power") == ["meter-sz-0001"]
            # switched off in Shenzhen: its readings are not judged any more
            assert (
                c.put("/rules/T.power/overrides", {"reason": "test", "enabled": False}, region="sz").status_code == 201
            )
            rt.on_batch(power("meter-sz-0001", "sz-jgj", t + 6000, power_kw=10))
            assert open_alerts("T.power") == ["meter-sz-0001"]  # nothing evaluates it, so it stays open
    finally:
        rt.stop()


# --- rules checked against the protocol and the registry (alerts/rule_check.py) ----------------------------------


def test_override_naming_an_unknown_field_or_value_is_422_with_the_path_and_the_closest_name(
    api: Client, runtime: AlertsRuntime
) -> None:
    rules_before = runtime.service.rules
    # the override that would quietly switch overspeed off for every vehicle of the city
    resp = api.put("/rules/V6/overrides", {"reason": "test", "params": {"field": "sped_kmh"}}, user="gz", region="gz")
    assert resp.status_code == 422, resp.text
    (problem,) = resp.json()["detail"]
    assert problem["loc"] == ["body", "params", "field"]
    assert problem["msg"] == (
        "api override V6 [region=gz]: params.field: unknown field 'sped_kmh' for vehicle; did you mean 'speed_kmh'?"
    )
    denied = {"match": {"event": "access", "where": {"result": "deny"}}}
    resp = api.put("/rules/G6/overrides", {"reason": "test", "params": denied}, user="gz", region="gz")
    assert resp.status_code == 422, resp.text
    (problem,) = resp.json()["detail"]
    assert problem["loc"] == ["body", "params", "match", "where", "result"]
    assert "params.match.where.result: 'deny' is never sent as access.result" in problem["msg"]
    resp = api.put(
        "/rules/V6/overrides", {"reason": "test", "enabled": False}, device_type="gate"
    )  # V6 is a vehicle rule
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["query", "device_type"]
    assert runtime.service.rules is rules_before
    assert api.get("/rules/V6/history").json()["items"] == []


@pytest.mark.parametrize("raw", [b'{"params": {"value": Infinity}}', b'{"params": {"value": 1e999}}'])
def test_override_with_a_non_finite_value_is_422(api: Client, runtime: AlertsRuntime, raw: bytes) -> None:
    resp = api.client.put(
        API + "/rules/T.power/overrides",
        content=raw,
        params={"region": "gz"},
        headers={**api._h("gz"), "Content-Type": "application/json"},
    )
    assert resp.status_code == 422, resp.text
    assert "finite" in resp.text
    assert api.get("/rules/T.power/history").json()["items"] == []
    assert effective_value(runtime, "meter-gz-0001", "T.power", GZ_METER) == 50


def test_api_rule_naming_an_unknown_metric_or_event_is_422(api: Client) -> None:
    base = {"kind": "threshold", "device_types": ["vehicle"], "title_zh": "超速", "title_en": "Overspeed"}
    resp = api.put("/rules/X.speed", {**base, "params": {"field": "speed_kph", "op": ">", "value": 80}})
    assert resp.status_code == 422, resp.text
    (problem,) = resp.json()["detail"]
    assert problem["loc"] == ["body", "params", "field"]
    assert problem["msg"] == "api: params.field: unknown field 'speed_kph' for vehicle; did you mean 'speed_kmh'?"
    events = {**base, "kind": "event_count", "device_types": ["gate"], "params": {"match": {"event": "tampr"}}}
    resp = api.put("/rules/X.tamper", events)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["body", "params", "match", "event"]
    assert "did you mean 'tamper'?" in resp.json()["detail"][0]["msg"]
    assert api.get("/rules/X.speed").status_code == 404 and api.get("/rules/X.tamper").status_code == 404


def test_override_edits_and_deletes_need_a_reason_that_is_audited(api: Client, gateway: Gateway) -> None:
    from devices.audit import AuditLog

    body = {"params": {"value": 70}}
    assert api.put("/rules/T.power/overrides", body, user="gz", region="gz").status_code == 422  # no reason
    assert api.put("/rules/T.power/overrides", {**body, "reason": " "}, user="gz", region="gz").status_code == 422
    made = api.put("/rules/T.power/overrides", {**body, "reason": "夏季负荷高"}, user="gz", region="gz")
    assert made.status_code == 201, made.text
    assert api.delete("/rules/T.power/overrides", user="gz", region="gz").status_code == 422  # no reason
    assert api.delete("/rules/T.power/overrides", reason="", user="gz", region="gz").status_code == 422
    assert api.delete("/rules/T.power/overrides", reason="入秋恢复", user="gz", region="gz").status_code == 200
    log = AuditLog(gateway.ctx.registry.session)
    put = [r.detail.get("reason") for r in log.records(action="rule.override.put")]
    gone = [r.detail.get("reason") for r in log.records(action="rule.override.delete")]
    assert (put, gone) == (["夏季负荷高"], ["入秋恢复"])
