"""Rules checked against PROTOCOL.md's fields and events per device type and against the registry: every typo class
in rule files, ``lianfang rules check`` (CliRunner), the refusal to start, and non-finite values."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from alerts.rule_check import Finding, Known, check_files
from alerts.rule_store import RuleAdmin, RuleStore
from alerts.rules import PACKS_DIR, OverrideSpec, RuleSet, RuleSpec
from alerts.wiring import AlertsRuntime
from core.db import make_engine, migrate
from core.errors import UserError
from core.settings import AlertSettings, Settings
from devices.registry import DeviceSpec, RegionSpec, Registry

KNOWN = Known(frozenset({"gd", "gz", "sz"}), {"car-gz-0001": "vehicle", "gate-gz-0001": "gate"})
RULE = """
  - id: {id}
    kind: {kind}
    device_types: [{types}]
    title_zh: 测试
    title_en: Test
    params: {params}
"""


def rule(rid: str, kind: str, types: str, params: str) -> str:
    return RULE.format(id=rid, kind=kind, types=types, params=params)


def findings(tmp_path: Path, text: str, known: Known | None = KNOWN) -> list[Finding]:
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    docs = RuleSet.read([PACKS_DIR, path])
    return [f for f in check_files(docs, RuleSet.from_parsed(docs).rules, known) if f.origin == str(path)]


def lines(fs: list[Finding], level: str = "error") -> list[str]:
    return [f"{f.path}: {f.message}" for f in fs if f.level == level]


def test_rule_check_the_default_packs_and_the_demo_rules_are_clean() -> None:
    demo = Path(__file__).parents[2] / "lianfang" / "demo-rules.yaml"
    docs = RuleSet.read([PACKS_DIR, demo])
    assert check_files(docs, RuleSet.from_parsed(docs).rules) == []


def test_rule_check_unknown_metric_in_a_rule_names_the_closest_field(tmp_path: Path) -> None:
    fs = findings(
        tmp_path, "rules:" + rule("X.speed", "threshold", "vehicle", "{field: speed_kph, op: '>', value: 80}")
    )
    assert lines(fs) == ["rules[0].params.field: unknown field 'speed_kph' for vehicle; did you mean 'speed_kmh'?"]


def test_rule_check_override_to_an_unknown_field_is_an_error(tmp_path: Path) -> None:
    # the override that quietly switched overspeed off for every vehicle
    fs = findings(tmp_path, "overrides:\n  - {rule: V6, params: {field: sped_kmh}}\n")
    assert lines(fs) == ["overrides[0].params.field: unknown field 'sped_kmh' for vehicle; did you mean 'speed_kmh'?"]


def test_rule_check_unknown_event_types_and_values_that_are_never_sent(tmp_path: Path) -> None:
    text = "rules:" + rule("X.t", "event_count", "gate", "{match: {event: tampr}}")
    text += rule("X.d", "event_count", "gate", "{match: {event: access, where: {result: grantd}}}")
    text += rule("X.v", "event_count", "vehicle", "{match: {event: access}}")  # a gate event, never a vehicle's
    text += rule("X.s", "sequence", "gate", "{trigger: {field: door_open}, required: [{event: request_to_exti}]}")
    assert lines(findings(tmp_path, text)) == [
        "rules[0].params.match.event: unknown event type 'tampr' for gate; did you mean 'tamper'?",
        "rules[1].params.match.where.result: 'grantd' is never sent as access.result (one of granted, denied); "
        "did you mean 'granted'?",
        "rules[2].params.match.event: unknown event type 'access' for vehicle; vehicle events: ignition_on, "
        "ignition_off, harsh_brake, harsh_accel, power_cut, driver_login, fault, cmd_result",
        "rules[3].params.required[0].event: unknown event type 'request_to_exti' for gate; did you mean "
        "'request_to_exit'?",
    ]


def test_rule_check_values_of_the_wrong_type_never_match(tmp_path: Path) -> None:
    text = "rules:" + rule("X.door", "threshold", "gate", "{field: door_open, op: '==', value: 'yes'}")
    text += rule("X.slow", "threshold", "vehicle", "{field: speed_kmh, op: '>', value: fast}")
    text += rule("X.idle", "absence", "vehicle", "{only_if: {ignition: 1}}")
    assert lines(findings(tmp_path, text)) == [
        "rules[0].params.value: field 'door_open' is a boolean; 'yes' never equals it (use true / false)",
        "rules[1].params.value: field 'speed_kmh' is a number; 'fast' never compares with it",
        "rules[2].params.only_if.ignition: field 'ignition' is a boolean; 1.0 never equals it (use true / false)",
    ]


def test_rule_check_unknown_regions_and_devices_against_the_registry(tmp_path: Path) -> None:
    text = """overrides:
  - {rule: V6, region: gzz, enabled: false}
  - {rule: V6, device: car-gz-0010, enabled: false}
  - {rule: V6, device: gate-gz-0001, enabled: false}
  - {rule: V6, device_type: gate, enabled: false}
  - {rule: V6, region: gz, params: {value: 70}}
sealing:
  - {region: shenzen, start: 2026-01-01T00:00:00, end: 2026-01-02T00:00:00}
rosters:
  - {region: sz, who: zhang, start: 2026-01-01T00:00:00, end: 2026-01-02T00:00:00}
"""
    assert lines(findings(tmp_path, text)) == [
        "overrides[0].region: unknown region 'gzz'; did you mean 'gz'?",
        "overrides[1].device: unknown device 'car-gz-0010'; did you mean 'car-gz-0001'?",
        "overrides[2].device: device 'gate-gz-0001' is a gate; rule V6 applies to vehicle",
        "overrides[3].device_type: rule V6 applies to vehicle, never to gate",
        "sealing[0].region: unknown region 'shenzen'",
    ]
    assert lines(findings(tmp_path, text, known=None)) == [  # no registry: only what the files alone decide
        "overrides[3].device_type: rule V6 applies to vehicle, never to gate"
    ]


def test_rule_check_sensors_take_any_field_and_extra_fields_warn(tmp_path: Path) -> None:
    text = "rules:" + rule("X.temp", "threshold", "sensor", "{field: temprature_c, op: '>', value: 30}")
    text += rule("X.co2", "threshold", "sensor", "{field: co2_ppm, op: '>', value: 1000}")
    text += rule("X.bad", "threshold", "sensor", "{field: Temp-C, op: '>', value: 30}")
    text += rule("X.kva", "threshold", "energy_meter", "{field: temp_c, op: '>', value: 30}")
    fs = findings(tmp_path, text)
    assert lines(fs) == [
        "rules[2].params.field: 'Temp-C' can never be a telemetry field (names match ^[a-z][a-z0-9_]{0,63}$)"
    ]
    assert lines(fs, "warning") == [
        "rules[0].params.field: field 'temprature_c' for sensor is not one PROTOCOL.md names; did you mean "
        "'temperature_c'?",
        "rules[3].params.field: 'temp_c' is not a standard field of energy_meter (energy_kwh, power_kw, voltage_v, "
        "current_a, power_factor); the rule matches only devices that send it as an extra field",
    ]


def test_rule_check_an_unknown_rule_or_device_type_names_the_closest(tmp_path: Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text("overrides:\n  - {rule: G11.tampr, enabled: false}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"overrides\[0\]\.rule: unknown rule 'G11.tampr'; did you mean 'G11.tamper'\?"):
        RuleSet.load([PACKS_DIR, path])
    path.write_text("overrides:\n  - {rule: V6, device_type: vehicel, enabled: false}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"overrides\[0\]\.device_type: 'vehicel' is not a device type; did you mean"):
        RuleSet.load([PACKS_DIR, path])


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_rule_check_non_finite_values_are_refused(value: float) -> None:
    with pytest.raises(ValidationError, match="finite"):
        OverrideSpec(rule="V6", params={"value": value})
    with pytest.raises(ValidationError, match="finite"):
        RuleSpec.model_validate(
            {"id": "X", "kind": "threshold", "device_types": ["vehicle"], "title_zh": "t", "title_en": "t",
             "params": {"field": "speed_kmh", "op": ">", "value": 1, "where": {"x": [1, value]}}}
        )  # fmt: skip


def test_rule_check_non_finite_values_in_a_file_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "inf.yaml"
    path.write_text("overrides:\n  - {rule: V6, region: gz, params: {value: .inf}}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"inf\.yaml: overrides\[0\]\.params: value: must be a finite number"):
        RuleSet.load([PACKS_DIR, path])


# --- the CLI and the start-up ----------------------------------------------------------------------------------


def cli(tmp_path: Path, *args: str) -> Any:
    import lianfang.commands  # noqa: F401  (registers the sub-apps)
    from lianfang.cli import app

    env = {"LIANFANG_DATABASE_URL": f"sqlite:///{tmp_path}/registry.db", "LIANFANG_CONFIG": None}
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    engine = make_engine(f"sqlite:///{tmp_path}/registry.db")
    migrate(engine)
    reg = Registry(engine)
    now = datetime(2026, 3, 2, tzinfo=UTC)
    reg.upsert_regions([RegionSpec("gd", "广东", "province"), RegionSpec("gz", "广州", "city", "gd")], now=now)
    reg.add_devices([DeviceSpec("car-gz-0001", "vehicle", "gz")], now=now)
    return reg


TYPOS = """rules:
  - {id: X.speed, kind: threshold, device_types: [vehicle], title_zh: t, title_en: t,
     params: {field: speed_kph, op: '>', value: 80}}
  - {id: X.tamper, kind: event_count, device_types: [gate], title_zh: t, title_en: t, params: {match: {event: tampr}}}
overrides:
  - {rule: V6, params: {field: sped_kmh}}
  - {rule: V6, region: gzz, enabled: false}
  - {rule: V6, device: car-gz-0002, enabled: false}
"""


def test_cli_rules_check_fails_on_every_typo_class_with_one_line_each(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "typos.yaml"
    path.write_text(TYPOS, encoding="utf-8")
    registry.engine.dispose()
    result = cli(tmp_path, "rules", "check", str(path))
    assert result.exit_code == 1, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert [e.split(": ", 2)[2] for e in errors] == [
        "rules[0].params.field: unknown field 'speed_kph' for vehicle; did you mean 'speed_kmh'?",
        "rules[1].params.match.event: unknown event type 'tampr' for gate; did you mean 'tamper'?",
        "overrides[0].params.field: unknown field 'sped_kmh' for vehicle; did you mean 'speed_kmh'?",
        "overrides[1].region: unknown region 'gzz'; did you mean 'gz'?",
        "overrides[2].device: unknown device 'car-gz-0002'; did you mean 'car-gz-0001'?",
    ]
    assert all(e.split(": ", 2)[1] == str(path) for e in errors)
    assert "ok" not in result.stdout
    result = cli(tmp_path, "rules", "check", str(path), "--json")
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["ok"] is False and len(out["problems"]) == 5


def test_cli_rules_check_passes_a_good_file_and_prints_warnings(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(
        "rules:"
        + rule("X.temp", "threshold", "energy_meter", "{field: temp_c, op: '>', value: 30}")
        + "overrides:\n  - {rule: V6, region: gz, params: {value: 70}}\n"
        + "  - {rule: V6, device: car-gz-0001, enabled: false}\n",
        encoding="utf-8",
    )
    registry.engine.dispose()
    result = cli(tmp_path, "rules", "check", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["ok"] is True and out["problems"] == []
    assert [w.split(": ", 1)[1] for w in out["warnings"]] == [
        "rules[0].params.field: 'temp_c' is not a standard field of energy_meter (energy_kwh, power_kw, voltage_v, "
        "current_a, power_factor); the rule matches only devices that send it as an extra field"
    ]
    assert "warning: " in result.stderr


def test_cli_rules_check_without_a_registry_says_regions_are_not_checked(tmp_path: Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text("overrides:\n  - {rule: V6, region: nowhere, params: {value: 70}}\n", encoding="utf-8")
    result = cli(tmp_path, "rules", "check", str(path))
    assert result.exit_code == 0, result.stderr
    assert "regions and devices rules name are not checked" in result.stderr


def test_a_rule_file_that_never_matches_refuses_the_start_in_one_line(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "typos.yaml"
    path.write_text(TYPOS, encoding="utf-8")
    with pytest.raises(UserError) as exc:
        AlertsRuntime(Settings(alerts=AlertSettings(rules_paths=[path])), registry)
    message = str(exc.value)
    assert "\n" not in message
    assert message == (
        f"rule files: {path}: rules[0].params.field: unknown field 'speed_kph' for vehicle; did you mean "
        "'speed_kmh'? (and 4 more: run 'lianfang rules check')"
    )
    # the same through RuleAdmin without the registry: the files' own typos still refuse
    with pytest.raises(UserError, match=r"rule files: .*rules\[0\]\.params\.field"):
        RuleAdmin([PACKS_DIR, path], RuleStore(registry.engine))
    registry.engine.dispose()


def test_api_edits_that_never_match_or_are_not_finite_are_rejected_by_rule_admin(registry: Registry) -> None:
    from alerts.rule_store import RuleRejected, Scope

    admin = RuleAdmin([PACKS_DIR], RuleStore(registry.engine), known=lambda: Known.from_registry(registry))
    now = datetime(2026, 3, 2, tzinfo=UTC)
    cases: list[tuple[str, Scope, dict[str, Any], str]] = [
        ("V6", Scope(region="gz"), {"field": "sped_kmh"}, "params.field: unknown field 'sped_kmh' for vehicle"),
        ("V6", Scope(region="gz"), {"value": float("inf")}, "params: value: must be a finite number, not inf"),
        ("V6", Scope(device="car-gz-0009"), {"value": 70}, "device: unknown device 'car-gz-0009'"),
        ("V6", Scope(region="gzz"), {"value": 70}, "region: unknown region 'gzz'; did you mean 'gz'?"),
    ]
    for rule_id, scope, params, message in cases:
        with pytest.raises(RuleRejected) as exc:
            admin.put_override(rule_id, scope, enabled=None, severity=None, params=params, actor="a", now=now)
        assert f"{scope.label(rule_id)}: {message}" in str(exc.value)
    assert admin.store.overrides() == []
    spec = RuleSpec.model_validate(
        {"id": "X.speed", "kind": "threshold", "device_types": ["vehicle"], "title_zh": "t", "title_en": "t",
         "params": {"field": "speed_kph", "op": ">", "value": 80}}
    )  # fmt: skip
    with pytest.raises(RuleRejected, match=r"api: params\.field: unknown field 'speed_kph' for vehicle; did you mean"):
        admin.put_rule(spec, actor="a", now=now)
    assert admin.store.rules() == []
    registry.engine.dispose()


def test_serve_refuses_to_start_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from core.settings import StoreSettings
    from devices.broker import free_port
    from lianfang.serve_cmd import run_service

    path = tmp_path / "typos.yaml"
    path.write_text(TYPOS, encoding="utf-8")
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path}/serve.db",
        store=StoreSettings(sqlite_path=tmp_path / "t.db"),
        mqtt={"embedded_broker": False},  # type: ignore[arg-type]
        alerts=AlertSettings(rules_paths=[path]),
    )
    with pytest.raises(typer.Exit) as exc:
        run_service(settings, port=free_port())  # not 8000: a demo may be running on this machine
    assert exc.value.exit_code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: rule files: {path}: rules[0].params.field: unknown field 'speed_kph' for vehicle; did you mean "
        "'speed_kmh'? (and 4 more: run 'lianfang rules check')"
    ]
