"""Pattern files: the X pack, inheritance down the region tree, routing per region, checks (unknown rule ids,
regions, fields, departments with the closest name), ``rules check`` and ``rules explain --joint``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from alerts.rule_check import Known
from core.db import make_engine, migrate
from core.errors import UserError
from devices.registry import DeviceSpec, RegionSpec, Registry
from joint.models import ScopeLevel
from joint.patterns import PACKS_DIR, PatternSet, load_patterns
from tests.joint.helpers import _RULES, pack


def test_pack_has_every_x_rule_and_routes_every_type() -> None:
    ps = pack()
    assert sorted(ps.patterns) == ["X1", "X2", "X3", "X4", "X5", "X6", "X8", "X9"]
    for spec in ps.patterns.values():
        route = ps.route(spec.type, ("gd", "gz"))
        assert route is not None and route.departments, spec.id
    assert ps.route("intrusion", ()) is not None and ps.route("intrusion", ()).departments == ("security",)  # type: ignore[union-attr]
    assert ps.route("something_new", ()).departments == ("security",)  # type: ignore[union-attr]  # the "*" entry


def test_overrides_inherit_down_the_region_tree_and_explain_says_where_from(tmp_path: Path) -> None:
    f = tmp_path / "gz.yaml"
    f.write_text(
        "overrides:\n"
        "  - {pattern: X5, region: gd, params: {min_buildings: 4}}\n"
        "  - {pattern: X5, region: gz, params: {min_alerts: 8}, window_s: 600}\n"
        "  - {pattern: X4, region: gz-a1-b1, enabled: false}\n"
        "departments: [canteen]\n"
        "routing:\n"
        "  - {type: site_outage, region: gz, departments: [it, canteen], deadline_s: 60}\n",
        encoding="utf-8",
    )
    ps = pack(f)
    base = ps.effective("X5", ())
    assert (base.params.min_alerts, base.params.min_buildings, base.window_s) == (5, 3, 1800)
    gz = ps.effective("X5", ("gd", "gz"))
    assert (gz.params.min_alerts, gz.params.min_buildings, gz.window_s) == (8, 4, 600)
    assert gz.sources["min_buildings"].endswith("gz.yaml overrides[0]")
    assert gz.sources["window_s"].endswith("gz.yaml overrides[1]")
    sz = ps.effective("X5", ("gd", "sz"))
    assert (sz.params.min_alerts, sz.params.min_buildings) == (5, 4)
    assert not ps.effective("X4", ("gd", "gz", "gz-a1", "gz-a1-b1")).enabled
    assert ps.effective("X4", ("gd", "gz", "gz-a1", "gz-a1-b2")).enabled
    assert ps.route("site_outage", ("gd", "gz", "gz-a1")).departments == ("it", "canteen")  # type: ignore[union-attr]
    assert ps.route("site_outage", ("gd", "sz")).departments == ("it", "energy")  # type: ignore[union-attr]
    rows = {(r["pattern"], r["setting"]): r for r in ps.explain_rows(("gd", "gz"))}
    assert rows[("X5", "min_alerts")]["value"] == 8 and rows[("X5", "scope")]["value"] == str(ScopeLevel.CITY)
    assert rows[("X4", "routing[site_outage]")]["value"] == {"departments": ["it", "canteen"], "deadline_s": 60.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "overrides:\n  - {pattern: X55, params: {}}\n",
            "overrides[0].pattern: unknown pattern 'X55'; did you mean 'X5'?",
        ),
        (
            "overrides:\n  - {pattern: X5, params: {min_buildngs: 4}}\n",
            "unknown field 'min_buildngs'; did you mean 'min_buildings'?",
        ),
        (
            "overrides:\n  - {pattern: X5, windw_s: 60}\n",
            "overrides[0].windw_s: unknown field 'windw_s'; did you mean 'window_s'?",
        ),
        (
            "routing:\n  - {type: intrusion, departments: [securty]}\n",
            "unknown department 'securty'; did you mean 'security'?",
        ),
        (
            "patterns:\n  - {id: Y1, kind: group, type: t, title_zh: t, title_en: t, members: {device_types: [gat]}}\n",
            "patterns[0].members.device_types: Value error, 'gat' is not one of",
        ),
    ],
)
def test_pattern_file_errors_name_the_path_and_the_closest_name(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_patterns([PACKS_DIR, f], _RULES.rules)
    assert message.replace("Value error, ", "") in str(err.value), str(err.value)


def test_unknown_rule_ids_and_regions_are_problems_with_the_closest_name(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text(
        "patterns:\n"
        "  - {id: Y1, kind: sequence, type: t, title_zh: t, title_en: t,\n"
        "     params: {first: {rules: [G1.evnt]}, then: {rules: ['Q*']}}}\n"
        "overrides:\n  - {pattern: X5, region: gzz, enabled: false}\n",
        encoding="utf-8",
    )
    built = load_patterns([PACKS_DIR, f], _RULES.rules, Known(frozenset({"gd", "gz"})))
    assert built.problems == [
        f"{f}: patterns[0].params.first.rules[0]: unknown rule 'G1.evnt'; did you mean 'G1.event'?",
        f"{f}: patterns[0].params.then.rules[0]: pattern 'Q*' matches no alert rule",
        f"{f}: overrides[0].region: unknown region 'gzz'; did you mean 'gz'?",
    ]


def test_pack_without_the_rule_packs_names_unknown_rules() -> None:
    built = load_patterns([PACKS_DIR], {})
    assert any("unknown rule 'G5'" in p for p in built.problems)
    assert isinstance(PatternSet.load([PACKS_DIR]), PatternSet)


# --- the CLI ----------------------------------------------------------------------------------------------------


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
    reg.add_devices([DeviceSpec("gate-gz-0001", "gate", "gz")], now=now)
    yield reg
    engine.dispose()


def test_cli_rules_check_counts_patterns_and_fails_on_a_bad_pattern_file(tmp_path: Path, registry: Registry) -> None:
    ok = cli(tmp_path, "rules", "check", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["patterns"] == 8
    bad = tmp_path / "p.yaml"
    bad.write_text("overrides:\n  - {pattern: X4, region: gzz, enabled: false}\n", encoding="utf-8")
    res = cli(tmp_path, "rules", "check", "--patterns", str(bad))
    assert res.exit_code == 1
    assert f"error: {bad}: overrides[0].region: unknown region 'gzz'; did you mean 'gz'?" in res.stderr


def test_cli_rules_explain_joint_shows_patterns_routing_and_origins(tmp_path: Path, registry: Registry) -> None:
    over = tmp_path / "p.yaml"
    over.write_text("overrides:\n  - {pattern: X2, region: gz, window_s: 30}\n", encoding="utf-8")
    res = cli(tmp_path, "rules", "explain", "gate-gz-0001", "--joint", "--patterns", str(over), "--json")
    assert res.exit_code == 0, res.output
    rows = {(r["rule"], r["setting"]): r for r in json.loads(res.stdout)["settings"]}
    assert rows[("X2", "window_s")]["value"] == 30 and rows[("X2", "window_s")]["source"].endswith("overrides[0]")
    assert rows[("X2", "routing[intrusion]")]["value"]["departments"] == ["security"]
    assert ("G1", "before_s") in rows  # the alert rules are still there


def test_cli_rules_check_and_explain_include_the_patterns_edited_through_the_api(
    tmp_path: Path, registry: Registry
) -> None:
    from joint.pattern_store import PatternStore

    store = PatternStore(registry.engine)
    now = datetime(2026, 3, 2, tzinfo=UTC)
    store.save_override("X2", "gz", {"window_s": 45}, "api-user", now)
    res = cli(tmp_path, "rules", "explain", "gate-gz-0001", "--joint", "--json")
    assert res.exit_code == 0, res.output
    rows = {(r["rule"], r["setting"]): r for r in json.loads(res.stdout)["settings"]}
    assert rows[("X2", "window_s")] == {
        "rule": "X2",
        "pattern": "X2",
        "kind": "sequence",
        "setting": "window_s",
        "value": 45,
        "source": "api override X2 [region=gz]",
    }
    no_api = cli(tmp_path, "rules", "explain", "gate-gz-0001", "--joint", "--json", "--no-api")
    rows = {(r["rule"], r["setting"]): r for r in json.loads(no_api.stdout)["settings"]}
    assert rows[("X2", "window_s")]["value"] != 45
    assert cli(tmp_path, "rules", "check").exit_code == 0
    store.save_override("X2", "gz", {"params": {"first": {"rules": ["G11"]}}}, "sql", now)  # as if a rule went away
    res = cli(tmp_path, "rules", "check")
    assert res.exit_code == 1
    assert "api override X2 [region=gz]: overrides[0].params.first.rules[0]: unknown rule 'G11'" in res.stderr
