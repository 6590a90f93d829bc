"""Rule files: validation with file + field path, inheritance down the region tree, explain, default packs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from alerts.rules import PACKS_DIR, RuleSet, ThresholdParams, explain_rows
from alerts.types import Severity
from core.errors import UserError

BASE = """
rules:
  - id: T1
    kind: threshold
    device_types: [sensor]
    severity: warning
    title_zh: 温度过高
    title_en: Temperature high
    params: {field: temperature_c, op: ">", value: 30, for_s: 60}
  - id: A1
    kind: absence
    device_types: [sensor, gate]
    title_zh: 设备离线
    title_en: Device offline
"""

OVERRIDES = """
overrides:
  - {rule: T1, region: gd, params: {value: 32}}
  - {rule: T1, region: gz, params: {value: 35, for_s: 120}}
  - {rule: T1, region: gz, device_type: sensor, severity: major}
  - {rule: T1, device_type: sensor, params: {value: 28, count: 2}}
  - {rule: T1, device: sensor-9, params: {value: 40}}
  - {rule: A1, region: sz, enabled: false}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def ruleset(tmp_path: Path) -> RuleSet:
    return RuleSet.load([write(tmp_path, "base.yaml", BASE), write(tmp_path, "over.yaml", OVERRIDES)])


def test_rules_load_effective_defaults(tmp_path: Path) -> None:
    rs = RuleSet.load([write(tmp_path, "base.yaml", BASE)])
    rules = {r.rule_id: r for r in rs.for_device("sensor-1", "sensor", ("bj",))}
    assert set(rules) == {"T1", "A1"}
    p = rules["T1"].params
    assert isinstance(p, ThresholdParams)
    assert (p.value, p.for_s, p.count) == (30, 60, 1)
    assert [r.rule_id for r in rs.for_device("gate-1", "gate", ())] == ["A1"]


def test_rules_inheritance_deeper_region_wins_and_device_last(tmp_path: Path) -> None:
    rs = ruleset(tmp_path)
    gz = {r.rule_id: r for r in rs.for_device("sensor-1", "sensor", ("gd", "gz", "b1"))}["T1"]
    assert gz.params.value == 35 and gz.params.for_s == 120 and gz.params.count == 2
    assert gz.severity is Severity.MAJOR
    sz = {r.rule_id: r for r in rs.for_device("sensor-2", "sensor", ("gd", "sz"))}["T1"]
    assert sz.params.value == 32 and sz.params.for_s == 60 and sz.severity is Severity.WARNING
    other = {r.rule_id: r for r in rs.for_device("sensor-3", "sensor", ("bj",))}["T1"]
    assert other.params.value == 28  # device-type-wide override, no region
    dev = {r.rule_id: r for r in rs.for_device("sensor-9", "sensor", ("gd", "gz"))}["T1"]
    assert dev.params.value == 40 and dev.params.for_s == 120


def test_rules_disabled_by_region_override(tmp_path: Path) -> None:
    rs = ruleset(tmp_path)
    assert "A1" not in {r.rule_id for r in rs.for_device("sensor-1", "sensor", ("gd", "sz"))}
    assert "A1" in {r.rule_id for r in rs.explain("sensor-1", "sensor", ("gd", "sz"))}
    assert "A1" in {r.rule_id for r in rs.for_device("sensor-1", "sensor", ("gd", "gz"))}


def test_rules_explain_names_where_each_value_came_from(tmp_path: Path) -> None:
    rs = ruleset(tmp_path)
    rows = explain_rows(rs.explain("sensor-9", "sensor", ("gd", "gz")))
    by = {(r["rule"], r["setting"]): r for r in rows}
    assert by[("T1", "value")]["value"] == 40
    assert "over.yaml overrides[4]" in by[("T1", "value")]["source"]
    assert "over.yaml overrides[1]" in by[("T1", "for_s")]["source"]
    assert "over.yaml overrides[2]" in by[("T1", "severity")]["source"]
    assert "base.yaml" in by[("T1", "field")]["source"]
    assert by[("T1", "clear_value")]["source"].startswith("default")


def test_rules_effective_rules_cached_per_type_and_region(tmp_path: Path) -> None:
    rs = ruleset(tmp_path)
    a = rs.explain("sensor-1", "sensor", ("gd", "gz"))
    b = rs.explain("sensor-2", "sensor", ("gd", "gz"))
    assert a is b
    assert rs.explain("sensor-9", "sensor", ("gd", "gz")) is not a


def test_rules_error_names_file_and_field_path(tmp_path: Path) -> None:
    bad = BASE.replace("for_s: 60", "for_s: -1")
    with pytest.raises(UserError) as exc:
        RuleSet.load([write(tmp_path, "bad.yaml", bad)])
    assert "bad.yaml" in str(exc.value) and "rules[0].params.for_s" in str(exc.value)


def test_rules_error_unknown_kind_and_device_type(tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        RuleSet.load([write(tmp_path, "k.yaml", BASE.replace("kind: absence", "kind: nonsense"))])
    assert "k.yaml" in str(exc.value) and "rules[1].kind" in str(exc.value)
    with pytest.raises(UserError) as exc:
        RuleSet.load([write(tmp_path, "t.yaml", BASE.replace("[sensor, gate]", "[sensor, toaster]"))])
    assert "rules[1].device_types" in str(exc.value)


def test_rules_error_override_bad_param_names_override(tmp_path: Path) -> None:
    over = "overrides:\n  - {rule: T1, region: gz, params: {count: 0}}\n"
    with pytest.raises(UserError) as exc:
        RuleSet.load([write(tmp_path, "base.yaml", BASE), write(tmp_path, "o.yaml", over)])
    assert "o.yaml" in str(exc.value) and "overrides[0].params.count" in str(exc.value)


def test_rules_error_override_of_unknown_rule(tmp_path: Path) -> None:
    over = "overrides:\n  - {rule: NOPE, region: gz}\n"
    with pytest.raises(UserError, match=r"o.yaml: overrides\[0\].rule: unknown rule 'NOPE'"):
        RuleSet.load([write(tmp_path, "base.yaml", BASE), write(tmp_path, "o.yaml", over)])


def test_rules_error_duplicate_rule_id_names_both_files(tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        RuleSet.load([write(tmp_path, "a.yaml", BASE), write(tmp_path, "b.yaml", BASE)])
    assert "b.yaml" in str(exc.value) and "a.yaml" in str(exc.value)


def test_rules_error_unknown_field_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"rules\[0\]\.colour"):
        RuleSet.load([write(tmp_path, "x.yaml", BASE.replace("    severity: warning", "    colour: red"))])
    with pytest.raises(UserError, match=r"y\.yaml: not valid YAML"):
        RuleSet.load([write(tmp_path, "y.yaml", "rules: [\n")])


def test_rules_hysteresis_must_be_on_the_clear_side(tmp_path: Path) -> None:
    bad = BASE.replace("for_s: 60}", "for_s: 60, clear_value: 35}")
    with pytest.raises(UserError, match="clear_value must be <= value"):
        RuleSet.load([write(tmp_path, "h.yaml", bad)])


def test_rules_calendar_sections_loaded(tmp_path: Path) -> None:
    cal = """
rosters:
  - {region: gz, who: card-7, start: "2026-10-01T00:00:00", end: "2026-10-02T00:00:00"}
sealing:
  - {region: gz, start: "2026-10-01T00:00:00+08:00", end: "2026-10-08T00:00:00+08:00", exempt: [car-duty]}
days:
  - {region: gz, date: 2026-03-02, working: false}
"""
    rs = RuleSet.load([write(tmp_path, "cal.yaml", cal)])
    assert len(rs.calendar.rosters) == 1 and rs.calendar.rosters[0].start.utcoffset() is not None
    assert rs.calendar.sealing[0].exempt == frozenset({"car-duty"})
    from datetime import date

    assert not rs.calendar.is_working_day(date(2026, 3, 2), ("gd", "gz"))


def test_rules_default_packs_validate_and_cover_catalogue() -> None:
    rs = RuleSet.load([PACKS_DIR])
    ids = {r.split(".")[0] for r in rs.rules}
    expected = {"G1", "G2", "G5", "G6", "G7", "G11", "V1", "V3", "V4", "V6", "V7", "V12", "E1", "E2", "E3", "E4", "E5"}
    assert expected <= ids, expected - ids
    for t in ("gate", "vehicle", "energy_meter"):
        assert rs.for_device("x-1", t, ("gd",)), t


# --- the CLI: lianfang rules check / explain ---------------------------------------------------------------------


def _cli(tmp_path: Path, *args: str) -> Any:
    import lianfang.commands  # noqa: F401  (registers the sub-apps)
    from lianfang.cli import app

    env = {"LIANFANG_DATABASE_URL": f"sqlite:///{tmp_path}/registry.db", "LIANFANG_CONFIG": None}
    return CliRunner().invoke(app, list(args), env=env)


def test_cli_rules_check_packs_and_files(tmp_path: Path) -> None:
    over = write(tmp_path, "over.yaml", "overrides:\n  - {rule: V6, region: gz, params: {value: 88}}\n")
    result = _cli(tmp_path, "rules", "check", str(over), "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["ok"] and out["overrides"] == 1 and out["rules"] >= 17


def test_cli_rules_check_error_names_file_and_field(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", "overrides:\n  - {rule: V6, region: gz, params: {for_s: -5}}\n")
    result = _cli(tmp_path, "rules", "check", str(bad))
    assert result.exit_code == 1
    assert "bad.yaml" in result.stderr and "overrides[0].params.for_s" in result.stderr


def test_cli_rules_explain_device(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from core.db import make_engine, migrate
    from devices.registry import DeviceSpec, RegionSpec, Registry

    engine = make_engine(f"sqlite:///{tmp_path}/registry.db")
    migrate(engine)
    reg = Registry(engine)
    now = datetime(2026, 3, 2, tzinfo=UTC)
    reg.upsert_regions([RegionSpec("gd", "广东", "province"), RegionSpec("gz", "广州", "city", "gd")], now=now)
    reg.add_devices([DeviceSpec("car-1", "vehicle", "gz")], now=now)
    engine.dispose()
    over = write(tmp_path, "over.yaml", "overrides:\n  - {rule: V6, region: gz, params: {value: 88}}\n")
    result = _cli(tmp_path, "rules", "explain", "car-1", "--rules", str(over), "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["region_path"] == ["gd", "gz"]
    v6 = {r["setting"]: r for r in out["settings"] if r["rule"] == "V6"}
    assert v6["value"]["value"] == 88 and "over.yaml overrides[0]" in v6["value"]["source"]
    assert "vehicles.yaml" in v6["for_s"]["source"]
    assert not any(r["rule"].startswith("G") for r in out["settings"])
    table = _cli(tmp_path, "rules", "explain", "car-1")
    assert table.exit_code == 0 and "V6" in table.stdout
    missing = _cli(tmp_path, "rules", "explain", "car-404")
    assert missing.exit_code == 1 and "car-404" in missing.stderr
