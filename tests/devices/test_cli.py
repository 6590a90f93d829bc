from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import lianfang.commands  # noqa: F401  (registers the sub-apps on the root app)
from core import clock
from core.protocol import Status
from core.store import DeviceCounters, WriteBatch
from core.store.sqlite import SqliteStore
from devices.sample import SAMPLE_REGIONS_FILE
from lianfang.cli import app

HEADER = "id,type,region_id,name,expected_interval_s\n"
Run = Callable[..., Result]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    """Invoke `lianfang ...` against a fresh SQLite registry and telemetry store in tmp_path."""
    runner = CliRunner()
    env = {
        "LIANFANG_DATABASE_URL": f"sqlite:///{tmp_path}/registry.db",
        "LIANFANG_STORE__SQLITE_PATH": str(tmp_path / "telemetry.db"),
        "LIANFANG_CONFIG": None,
    }

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), env=env)

    return invoke


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def _json(result: Result) -> Any:
    return json.loads(_ok(result).stdout)


def _csv(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(HEADER + body, encoding="utf-8")
    return str(path)


@pytest.fixture
def with_regions(run: Run) -> Run:
    _ok(run("regions", "import", str(SAMPLE_REGIONS_FILE)))
    return run


def _user_error(result: Result) -> list[str]:
    """A user error: exit code 1, no traceback, the reasons on stderr."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    return result.stderr.strip().splitlines()


# --- regions -----------------------------------------------------------------------------------------------


def test_regions_import_twice_then_list_json(run: Run) -> None:
    first = _ok(run("regions", "import", str(SAMPLE_REGIONS_FILE)))
    assert "21 created, 0 updated, 0 unchanged" in first.stdout
    again = _ok(run("regions", "import", str(SAMPLE_REGIONS_FILE)))
    assert "0 created, 0 updated, 21 unchanged" in again.stdout
    regions = _json(run("regions", "list", "--json"))
    assert len(regions) == 21
    gz = next(r for r in regions if r["id"] == "gd-gz")
    assert gz == {"id": "gd-gz", "name": "广州市", "level": "city", "parent_id": "gd", "lat": 23.1291,
                  "lon": 113.2644, "devices": 0}  # fmt: skip


def test_regions_import_bad_yaml_names_file_line_and_field(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "regions:\n  - id: gd\n    name: 广东省\n    level: province\n    lon: east\n  - {id: gd-gz, level: city}\n",
        encoding="utf-8",
    )
    lines = _user_error(run("regions", "import", str(path)))
    assert lines == [
        f"{path}:5: regions[0].lon: 'east' is not a number of degrees",
        f"{path}:6: regions[1].name: is required",
        "error: 2 problems found; nothing was written",
    ]
    assert _json(run("regions", "list", "--json")) == []


def test_regions_import_bad_csv_rows_named_by_line(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "regions.csv"
    path.write_text(
        "id,name,level,parent_id,lat,lon\ngd,广东省,province,,,\ngd-gz,广州市,town,gd,,\n", encoding="utf-8"
    )
    lines = _user_error(run("regions", "import", str(path)))
    assert lines[0].startswith(f"{path}:3: level: 'town' is not one of province, city")
    assert _json(run("regions", "list", "--json")) == []


def test_regions_tree_shows_names_codes_and_subtree_counts(with_regions: Run, tmp_path: Path) -> None:
    _ok(
        with_regions(
            "devices", "import", _csv(tmp_path, "d.csv", "gate-a,gate,gd-gz-a01-b1,,\ncar-a,vehicle,gd-gz-a01,,\n")
        )
    )
    out = _ok(with_regions("regions", "tree")).stdout
    assert "广东省 (gd, province) · 2 devices" in out
    assert "广州市 (gd-gz, city) · 2 devices" in out
    assert "深圳市 (gd-sz, city) · 0 devices" in out
    assert "省政府1号办公楼 (gd-gz-a01-b1, building) · 1 device\n" in out
    sub = _ok(with_regions("regions", "tree", "--root", "gd-sz")).stdout
    assert "深圳市" in sub and "广州市" not in sub
    assert _user_error(with_regions("regions", "tree", "--root", "nowhere")) == [
        "error: region 'nowhere' does not exist"
    ]


# --- devices import ----------------------------------------------------------------------------------------


def test_devices_import_bad_rows_named_and_nothing_written(with_regions: Run, tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "devices.csv",
        "gate-gz-0001,gate,gd-gz-a01-b1,东门,\n"  # 2 good
        "Gate 2,gate,gd-gz-a01-b1,,\n"  # 3 bad id
        "gate-gz-0003,doorbell,gd-gz-a01-b1,,\n"  # 4 unknown type
        "gate-gz-0004,gate,gd-gz-a09,,\n"  # 5 unknown region
        "gate-gz-0005,gate,gd-gz-a01-b1,,\n"  # 6 duplicate
        "gate-gz-0005,gate,gd-gz-a01-b1,,\n",  # 7 duplicate
    )
    lines = _user_error(with_regions("devices", "import", path))
    assert [line.split(": ", 1)[0] for line in lines[:-1]] == [f"{path}:{n}" for n in (3, 4, 5, 6, 7)]
    assert "id 'Gate 2' is not well formed" in lines[0]
    assert "type 'doorbell' is not one of gate, vehicle, energy_meter, sensor" in lines[1]
    assert "region 'gd-gz-a09' does not exist" in lines[2]
    assert "appears more than once (lines 6, 7)" in lines[3]
    assert lines[-1] == "error: 5 problems found; nothing was written"
    assert _json(with_regions("devices", "list", "--json"))["total"] == 0


def test_devices_import_skip_invalid_writes_only_valid_rows(with_regions: Run, tmp_path: Path) -> None:
    path = _csv(tmp_path, "devices.csv", "gate-gz-0001,gate,gd-gz-a01-b1,,\nBad_1,gate,gd-gz-a01-b1,,\n")
    result = _ok(with_regions("devices", "import", path, "--skip-invalid"))
    assert f"skipped {path}:3: id 'Bad_1' is not well formed" in result.stderr
    assert "2 rows: 1 created, 0 updated, 0 unchanged, 1 skipped" in result.stdout
    listed = _json(with_regions("devices", "list", "--json"))
    assert [d["id"] for d in listed["devices"]] == ["gate-gz-0001"]


def test_devices_import_dry_run_writes_nothing(with_regions: Run, tmp_path: Path) -> None:
    path = _csv(
        tmp_path, "devices.csv", "gate-gz-0001,gate,gd-gz-a01-b1,,\nmeter-gz-0001,energy_meter,gd-gz-a01-b1,,\n"
    )
    result = _ok(with_regions("devices", "import", path, "--dry-run"))
    assert "2 would be created" in result.stdout and "dry run, nothing written" in result.stdout
    assert _json(with_regions("devices", "list", "--json"))["total"] == 0
    bad = _csv(tmp_path, "bad.csv", "gate-gz-0001,gate,gd-nowhere,,\n")
    assert _user_error(with_regions("devices", "import", bad, "--dry-run"))[0].startswith(f"{bad}:2: region")


def test_devices_import_rerun_is_harmless_and_reports_counts(with_regions: Run, tmp_path: Path) -> None:
    body = "".join(f"gate-gz-{i:04d},gate,gd-gz-a01-b1,门禁{i},\n" for i in range(1, 6))
    path = _csv(tmp_path, "devices.csv", body)
    assert "5 rows: 5 created, 0 updated, 0 unchanged" in _ok(with_regions("devices", "import", path)).stdout
    _ok(with_regions("devices", "disable", "gate-gz-0002"))
    assert "5 rows: 0 created, 0 updated, 5 unchanged" in _ok(with_regions("devices", "import", path)).stdout
    shown = _json(with_regions("devices", "show", "gate-gz-0002", "--json"))
    assert shown["enabled"] is False  # a re-import does not re-enable what an operator disabled
    changed = _csv(tmp_path, "changed.csv", body.replace("门禁3,", "门禁3,120"))
    assert "5 rows: 0 created, 1 updated, 4 unchanged" in _ok(with_regions("devices", "import", changed)).stdout
    assert _json(with_regions("devices", "show", "gate-gz-0003", "--json"))["expected_interval_s"] == 120


# --- devices add / list / show / disable ---------------------------------------------------------------------


def test_devices_add_creates_updates_and_validates(with_regions: Run) -> None:
    assert _ok(with_regions("devices", "add", "car-gz-a01-01", "--type", "vehicle", "--region", "gd-gz-a01",
                            "--name", "公务车1")).stdout.strip() == "device car-gz-a01-01 created"  # fmt: skip
    moved = _ok(with_regions("devices", "add", "car-gz-a01-01", "-t", "vehicle", "-r", "gd-gz-a02", "--interval", "10"))
    assert moved.stdout.strip() == "device car-gz-a01-01 updated"
    shown = _json(with_regions("devices", "show", "car-gz-a01-01", "--json"))
    assert (shown["region_id"], shown["name"], shown["expected_interval_s"]) == ("gd-gz-a02", "公务车1", 10)
    lines = _user_error(with_regions("devices", "add", "car-2", "--type", "bus", "--region", "gd-nowhere"))
    assert len(lines) == 1
    assert lines[0].startswith("error: type 'bus' is not one of") and "region 'gd-nowhere' does not exist" in lines[0]


def test_devices_list_json_subtree_type_filter_and_paging(with_regions: Run, tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "devices.csv",
        "gate-gz-0001,gate,gd-gz-a01-b1,,\n"
        "gate-gz-0002,gate,gd-gz-a02-b1,,\n"
        "meter-gz-0001,energy_meter,gd-gz-a01-b2,,\n"
        "car-gz-0001,vehicle,gd-gz-a01,,\n"
        "gate-sz-0001,gate,gd-sz-a01-b1,,\n",
    )
    _ok(with_regions("devices", "import", path))
    subtree = _json(with_regions("devices", "list", "--region", "gd-gz-a01", "--json"))
    assert subtree["total"] == 3
    assert [d["id"] for d in subtree["devices"]] == ["car-gz-0001", "gate-gz-0001", "meter-gz-0001"]
    gates = _json(with_regions("devices", "list", "--region", "gd-gz", "--type", "gate", "--json"))
    assert [d["id"] for d in gates["devices"]] == ["gate-gz-0001", "gate-gz-0002"]
    page = _json(with_regions("devices", "list", "--limit", "2", "--offset", "2", "--json"))
    assert (page["total"], page["offset"], page["limit"]) == (5, 2, 2)
    assert [d["id"] for d in page["devices"]] == ["gate-gz-0002", "gate-sz-0001"]
    table = _ok(with_regions("devices", "list", "--limit", "2")).stdout
    assert "showing 1-2 of 5; next page: --offset 2" in table and "car-gz-0001" in table
    assert _user_error(with_regions("devices", "list", "--region", "gd-xx")) == ["error: region 'gd-xx' does not exist"]
    assert _user_error(with_regions("devices", "list", "--type", "bus"))[0].startswith("error: type 'bus'")


def test_devices_disable_and_enable(with_regions: Run) -> None:
    _ok(with_regions("devices", "add", "gate-gz-0001", "--type", "gate", "--region", "gd-gz-a01-b1"))
    assert _ok(with_regions("devices", "disable", "gate-gz-0001")).stdout.strip() == "device gate-gz-0001 disabled"
    assert _json(with_regions("devices", "show", "gate-gz-0001", "--json"))["enabled"] is False
    _ok(with_regions("devices", "enable", "gate-gz-0001"))
    assert _json(with_regions("devices", "show", "gate-gz-0001", "--json"))["enabled"] is True
    assert _user_error(with_regions("devices", "disable", "gate-gz-9999")) == [
        "error: device 'gate-gz-9999' does not exist"
    ]


def test_devices_show_online_state_from_the_telemetry_store(with_regions: Run, tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "devices.csv",
        "gate-fresh,gate,gd-gz-a01-b1,,\ngate-stale,gate,gd-gz-a01-b1,,\ngate-willed,gate,gd-gz-a01-b1,,\n"
        "gate-silent,gate,gd-gz-a01-b1,,\n",
    )
    _ok(with_regions("devices", "import", path))
    now = clock.now_ms()
    batch = WriteBatch()
    batch.counters["gate-fresh"] = DeviceCounters(last_seen_ms=now - 5_000, messages=3)
    batch.counters["gate-stale"] = DeviceCounters(last_seen_ms=now - 10 * 60_000, messages=1)  # > 2.5 x 60 s
    batch.counters["gate-willed"] = DeviceCounters(last_seen_ms=now - 5_000, messages=1)
    batch.statuses.append(Status("gate-willed", "gd-gz-a01-b1", now - 1_000, "offline"))
    store = SqliteStore(tmp_path / "telemetry.db")
    try:
        store.write(batch)
    finally:
        store.close()
    states = {
        d: _json(with_regions("devices", "show", d, "--json"))
        for d in ("gate-fresh", "gate-stale", "gate-willed", "gate-silent")
    }
    assert {d: s["online"] for d, s in states.items()} == {
        "gate-fresh": True,
        "gate-stale": False,
        "gate-willed": False,
        "gate-silent": False,
    }
    assert states["gate-fresh"]["messages"] == 3 and states["gate-fresh"]["last_seen_ms"] == now - 5_000
    assert states["gate-willed"]["status"] == "offline"
    assert states["gate-silent"]["last_seen"] is None
    assert states["gate-fresh"]["region_path"] == ["gd", "gd-gz", "gd-gz-a01", "gd-gz-a01-b1"]
    text = _ok(with_regions("devices", "show", "gate-fresh")).stdout
    assert "online" in text and "省政府1号办公楼 (gd-gz-a01-b1)" in text
    assert _user_error(with_regions("devices", "show", "nope")) == ["error: device 'nope' does not exist"]


# --- config check and help ---------------------------------------------------------------------------------


def test_config_check_prints_summary_or_the_field_in_error(run: Run, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("mqtt:\n  port: 18830\napi:\n  port: 8080\n", encoding="utf-8")
    out = _ok(run("--config", str(good), "config", "check")).stdout
    assert f"settings OK (from {good})" in out and "127.0.0.1:18830" in out and "http://127.0.0.1:8080" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  port: 70000\nstore:\n  colour: red\n", encoding="utf-8")
    lines = _user_error(run("--config", str(bad), "config", "check"))
    assert lines[0] == f"error: invalid settings in {bad}:"
    assert any(line.strip().startswith("mqtt.port:") for line in lines)
    assert any(line.strip().startswith("store.colour:") for line in lines)
    missing = _user_error(run("--config", str(tmp_path / "none.yaml"), "config", "check"))
    assert missing[0].startswith("error: cannot read config file")


def test_database_password_is_hidden_in_config_check(run: Run, tmp_path: Path) -> None:
    cfg = tmp_path / "pg.yaml"
    cfg.write_text("database_url: postgresql+psycopg://lf:s3cret-pw@db:5432/lf\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["--config", str(cfg), "config", "check"], env={"LIANFANG_DATABASE_URL": None})
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output and "postgresql+psycopg://lf:***@db:5432/lf" in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["regions", "import"],
        ["regions", "list"],
        ["regions", "tree"],
        ["devices", "add"],
        ["devices", "import"],
        ["devices", "list"],
        ["devices", "show"],
        ["devices", "disable"],
        ["devices", "enable"],
        ["config", "check"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    # the first line of the docstring shows up as the description
    assert "Usage:" in result.stdout and len(result.stdout.split("Options")[0].strip().splitlines()) >= 3
