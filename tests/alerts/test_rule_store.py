"""The API layer of the rules (alerts/rule_store.py) on SQLite and PostgreSQL: rows, history, validation before a
write, the layer order, a restart, and `lianfang rules check / explain` reading it from the database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from alerts.rule_store import RuleAdmin, RuleRejected, RuleStore, Scope
from alerts.rules import PACKS_DIR, RuleSet, RuleSpec
from core.db import make_engine, migrate
from devices.registry import DeviceSpec, RegionSpec, Registry

BEIJING = timezone(timedelta(hours=8))
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=BEIJING)
FILE = """
overrides:
  - {rule: V6, region: gz, params: {value: 88}}
"""


@pytest.fixture
def over(tmp_path: Path) -> Path:
    path = tmp_path / "over.yaml"
    path.write_text(FILE, encoding="utf-8")
    return path


def v6(rs: RuleSet, device: str = "car-1", path: tuple[str, ...] = ("gd", "gz")) -> Any:
    return next(r for r in rs.explain(device, "vehicle", list(path)) if r.rule_id == "V6")


def test_store_rows_history_and_times(registry: Registry) -> None:
    store = RuleStore(registry.engine)
    made, created = store.save_override("V6", Scope(region="gz"), None, None, {"value": 90}, "gz-duty", NOW)
    assert created and made.created_at == NOW and made.created_at.tzinfo is not None
    # a scope with NULLs is still one override: the second write replaces it
    again, created = store.save_override("V6", Scope(region="gz"), False, "major", {}, "boss", NOW + timedelta(1))
    assert not created and again.id == made.id
    store.save_override("V6", Scope(region="gz", device_type="vehicle"), True, None, {}, "boss", NOW)
    store.save_override("*", Scope(device="car-1"), False, None, {}, "boss", NOW)
    rows = store.overrides()
    assert [(o.rule_id, o.scope) for o in rows] == [
        ("V6", Scope("gz")),
        ("V6", Scope("gz", "vehicle")),
        ("*", Scope(device="car-1")),
    ]
    first = rows[0]
    assert (first.enabled, first.severity, first.params) == (False, "major", {})
    assert (first.created_by, first.updated_by) == ("gz-duty", "boss")
    assert first.created_at == NOW and first.updated_at == NOW + timedelta(1)  # the same instants, read back in UTC
    assert first.updated_at.tzinfo == UTC
    assert store.delete_override("V6", Scope("gz"), "boss", NOW) is not None
    assert store.delete_override("V6", Scope("gz"), "boss", NOW) is None
    history = store.history("V6")
    assert [(c.action, c.actor) for c in history] == [
        ("deleted", "boss"),
        ("created", "boss"),
        ("updated", "boss"),
        ("created", "gz-duty"),
    ]
    assert history[2].before == {"enabled": None, "severity": None, "params": {"value": 90}}
    assert history[2].after == {"enabled": False, "severity": "major", "params": {}}
    spec = RuleSpec.model_validate(
        {
            "id": "X1",
            "kind": "absence",
            "device_types": ["sensor"],
            "title_zh": "离线",
            "title_en": "Offline",
            "params": {"factor": 3},
        }
    )
    _saved, created = store.save_rule(spec, "boss", NOW)
    assert created and store.rules()[0].spec["params"] == {"factor": 3}
    store.save_override("X1", Scope(region="gz"), None, None, {"factor": 4}, "boss", NOW)
    gone, removed = store.delete_rule("X1", "boss", NOW)
    assert gone is not None and [o.scope for o in removed] == [Scope("gz")]
    assert store.rules() == [] and store.kinds_used("X1") == {"absence"}
    assert all(o.rule_id != "X1" for o in store.overrides())


def test_admin_applies_api_last_validates_before_storing_and_survives_a_restart(registry: Registry, over: Path) -> None:
    applied: list[RuleSet] = []
    admin = RuleAdmin([PACKS_DIR, over], RuleStore(registry.engine), apply=applied.append)
    assert v6(admin.rules).params.value == 88  # the file
    # an API override for the whole tree: a more specific file override (region gz) still beats it
    admin.put_override("V6", Scope(), enabled=None, severity=None, params={"value": 70}, actor="a", now=NOW)
    assert applied and applied[-1] is admin.rules
    assert v6(admin.rules).params.value == 88 and v6(admin.rules, path=("gd", "sz")).params.value == 70
    # the API layer comes last: at the same level (region gz) it wins over the file
    admin.put_override("V6", Scope("gz"), enabled=None, severity=None, params={"value": 77}, actor="a", now=NOW)
    rule = v6(admin.rules)
    assert rule.params.value == 77 and rule.sources["value"] == "api override V6 [region=gz]"
    with pytest.raises(RuleRejected) as err:
        admin.put_override("V6", Scope("sz"), enabled=None, severity=None, params={"op": "~"}, actor="a", now=NOW)
    assert str(err.value).startswith("api override V6 [region=sz]: params.op: Input should be")
    assert len(applied) == 2 and [o.scope for o in admin.store.overrides()] == [Scope(), Scope("gz")]
    restarted = RuleAdmin([PACKS_DIR, over], RuleStore(registry.engine))
    assert v6(restarted.rules).params.value == 77 and restarted.problems == []


def _cli(db: str, *args: str) -> Any:
    import lianfang.commands  # noqa: F401  (registers the sub-apps)
    from lianfang.cli import app

    return CliRunner().invoke(app, list(args), env={"LIANFANG_DATABASE_URL": db, "LIANFANG_CONFIG": None})


def test_cli_check_and_explain_include_the_api_layer(tmp_path: Path, over: Path) -> None:
    db = f"sqlite:///{tmp_path}/registry.db"
    assert _cli(db, "rules", "check", "--json").exit_code == 0  # no database yet: nothing from the API
    assert not (tmp_path / "registry.db").exists()  # and none was made
    engine = make_engine(db)
    migrate(engine)
    reg = Registry(engine)
    reg.upsert_regions([RegionSpec("gd", "广东", "province"), RegionSpec("gz", "广州", "city", "gd")], now=NOW)
    reg.add_devices([DeviceSpec("car-1", "vehicle", "gz")], now=NOW)
    store = RuleStore(engine)
    store.save_override("V6", Scope("gz"), None, None, {"value": 70}, "gz-duty", NOW)
    engine.dispose()
    out = _cli(db, "rules", "explain", "car-1", "--rules", str(over), "--json")
    assert out.exit_code == 0, out.stderr
    value = next(r for r in json.loads(out.stdout)["settings"] if r["rule"] == "V6" and r["setting"] == "value")
    assert value["value"] == 70 and value["source"] == "api override V6 [region=gz]"
    without = _cli(db, "rules", "explain", "car-1", "--rules", str(over), "--no-api", "--json")
    value = next(r for r in json.loads(without.stdout)["settings"] if r["rule"] == "V6" and r["setting"] == "value")
    assert value["value"] == 88
    ok = _cli(db, "rules", "check", str(over), "--json")
    assert ok.exit_code == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["ok"] and summary["api_overrides"] == 1 and summary["overrides"] == 2
    # an API override of a rule the files do not define (here: without the packs) is reported, exit 1
    bad = _cli(db, "rules", "check", "--no-packs")
    assert bad.exit_code == 1
    assert "api override V6 [region=gz]: rule: unknown rule 'V6' (skipped)" in bad.stderr
    assert _cli(db, "rules", "check", "--no-packs", "--no-api").exit_code == 0


def test_store_version_moves_with_every_write(registry: Registry) -> None:
    """``RuleStore.version`` (read by ``AlertsRuntime.poll_rules``): 0 before any edit, then the newest change's
    id, moving with each write, a delete included, and not with a read or a delete of nothing."""
    store = RuleStore(registry.engine)
    assert store.version() == 0
    store.save_override("V6", Scope(region="gz"), None, None, {"value": 90}, "gz-duty", NOW)
    v1 = store.version()
    assert v1 > 0 and store.history()[0].id == v1
    store.overrides()
    assert store.delete_override("V6", Scope("sz"), "boss", NOW) is None and store.version() == v1
    store.save_override("V6", Scope(region="gz"), False, None, {}, "boss", NOW)
    v2 = store.version()
    assert v2 > v1
    assert store.delete_override("V6", Scope("gz"), "boss", NOW) is not None and store.version() > v2
