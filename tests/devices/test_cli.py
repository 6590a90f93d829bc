from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import typer
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner, Result

import lianfang.commands  # noqa: F401  (registers the sub-apps on the root app)
from core import clock
from core.protocol import Status
from core.settings import load_settings
from core.store import DeviceCounters, WriteBatch
from core.store.sqlite import SqliteStore
from devices.broker import free_port
from devices.cli import devices_written_hook, give_identities
from devices.imports import DeviceRow, write_devices
from devices.sample import SAMPLE_REGIONS_FILE
from lianfang.cli import app
from lianfang.context import open_registry
from tests.conftest import Broker
from tests.helpers import mqtt_client, wait_until

HEADER = "id,type,region_id,name,expected_interval_s\n"
Run = Callable[..., Result]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
    """Settings of the CLI under test: a fresh SQLite registry and telemetry store in tmp_path (tests that need the
    broker point the CLI at the `broker` fixture: `with_regions`, `no_broker`)."""
    return {
        "LIANFANG_DATABASE_URL": f"sqlite:///{tmp_path}/registry.db",
        "LIANFANG_STORE__SQLITE_PATH": str(tmp_path / "telemetry.db"),
        "LIANFANG_DATA_DIR": str(tmp_path / "var"),
        "LIANFANG_CONFIG": None,
    }


@pytest.fixture
def run(env: dict[str, str | None]) -> Run:
    """Invoke `lianfang ...` with ``env`` (read at each call, so a fixture may point it at a broker)."""
    runner = CliRunner()

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
def with_regions(run: Run, env: dict[str, str | None], broker: Broker) -> Run:
    """The sample region tree, and the CLI pointed at a real Mosquitto (device identities are created there)."""
    env["LIANFANG_MQTT__PORT"] = str(broker.port)
    env["LIANFANG_MQTT__EMBEDDED_BROKER"] = "false"
    env["LIANFANG_MQTT__ADMIN_PASSWORD"] = broker.admin_password
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
                  "lon": 113.2644, "devices": 0,
                  "attributes": {"quota_kwh_per_capita_month": 300.0, "quota_kwh_per_m2_month": 6.0}}  # fmt: skip


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
    secrets = tmp_path / "secrets.csv"
    result = _ok(with_regions("devices", "import", path, "--skip-invalid", "--secret-file", str(secrets)))
    assert f"skipped {path}:3: id 'Bad_1' is not well formed" in result.stderr
    assert "2 rows: 1 created, 0 updated, 0 unchanged, 1 skipped; 1 broker identity created" in result.stdout
    assert [ln.split(",")[0] for ln in secrets.read_text().splitlines()] == ["device_id", "gate-gz-0001"]
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
    first = _ok(with_regions("devices", "import", path))
    # stdout holds exactly the new secrets (ID,SECRET), shown once; the summary goes to stderr
    shown = dict(line.split(",") for line in first.stdout.splitlines())
    assert sorted(shown) == [f"gate-gz-{i:04d}" for i in range(1, 6)] and all(len(v) >= 43 for v in shown.values())
    assert "5 rows: 5 created, 0 updated, 0 unchanged; 5 broker identities created and verified" in first.stderr
    _ok(with_regions("devices", "disable", "gate-gz-0002"))
    again = _ok(with_regions("devices", "import", path))
    assert (
        again.stdout.strip()
        == f"{path}: 5 rows: 0 created, 0 updated, 5 unchanged; every device already has its broker identity"
    )
    shown = _json(with_regions("devices", "show", "gate-gz-0002", "--json"))
    assert shown["enabled"] is False  # a re-import does not re-enable what an operator disabled
    changed = _csv(tmp_path, "changed.csv", body.replace("门禁3,", "门禁3,120"))
    assert "5 rows: 0 created, 1 updated, 4 unchanged" in _ok(with_regions("devices", "import", changed)).stdout
    assert _ok(with_regions("devices", "reconcile", "--json")).stdout.strip().endswith('"changes": 0\n}')
    assert _json(with_regions("devices", "show", "gate-gz-0003", "--json"))["expected_interval_s"] == 120


# --- devices add / list / show / disable ---------------------------------------------------------------------


def test_devices_add_creates_updates_and_validates(with_regions: Run) -> None:
    added = _ok(with_regions("devices", "add", "car-gz-a01-01", "--type", "vehicle", "--region", "gd-gz-a01",
                             "--name", "公务车1"))  # fmt: skip
    device_id, secret = added.stdout.strip().split(",")  # the secret, shown once
    assert device_id == "car-gz-a01-01" and len(secret) >= 43
    assert added.stderr.strip().endswith("device car-gz-a01-01 created; broker identity created and verified")
    moved = _ok(with_regions("devices", "add", "car-gz-a01-01", "-t", "vehicle", "-r", "gd-gz-a02", "--interval", "10"))
    assert moved.stdout.strip() == "device car-gz-a01-01 updated; broker identity already present"
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
    listed = _ok(with_regions("devices", "list", "--limit", "2"))  # no terminal: TSV on stdout, the hint on stderr
    assert listed.stdout.splitlines()[1].startswith("car-gz-0001\tvehicle\tgd-gz-a01\t")
    assert listed.stderr.strip() == "showing 1-2 of 5; next page: --offset 2"
    assert _user_error(with_regions("devices", "list", "--region", "gd-xx")) == ["error: region 'gd-xx' does not exist"]
    assert _user_error(with_regions("devices", "list", "--type", "bus"))[0].startswith("error: type 'bus'")


def test_devices_disable_and_enable(with_regions: Run) -> None:
    _ok(with_regions("devices", "add", "gate-gz-0001", "--type", "gate", "--region", "gd-gz-a01-b1"))
    assert _ok(with_regions("devices", "disable", "gate-gz-0001")).stdout.strip() == (
        "device gate-gz-0001 disabled; a connected session was disconnected"
    )
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
        ["devices", "provision"],
        ["devices", "rotate"],
        ["devices", "reprovision"],
        ["devices", "delete"],
        ["devices", "check"],
        ["devices", "reconcile"],
        ["devices", "export-config"],
        ["devices", "expiring"],
        ["config", "check"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    # the first line of the docstring shows up as the description
    assert "Usage:" in result.stdout and len(result.stdout.split("Options")[0].strip().splitlines()) >= 3


# --- broker identities through `devices add` / `devices import` / `devices disable|enable` ---------------------


def _can_connect(port: int, device_id: str, secret: str) -> bool:
    """Whether the broker accepts the device's credentials (CONNACK), as the device itself connects."""
    answers: list[bool] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(device_id, secret)
    client.on_connect = lambda _c, _u, _f, rc, _p: answers.append(not rc.is_failure)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_until(lambda: answers, 5, what=f"CONNACK for {device_id}")
    finally:
        client.disconnect()
        client.loop_stop()
    return answers[0]


def _secrets(path: Path) -> dict[str, str]:
    return dict(line.split(",") for line in path.read_text(encoding="utf-8").splitlines()[1:])


@pytest.mark.integration
def test_devices_import_gives_every_device_a_working_identity(
    with_regions: Run, broker: Broker, tmp_path: Path
) -> None:
    path = _csv(tmp_path, "d.csv", "gate-gz-0001,gate,gd-gz-a01-b1,,\nmeter-gz-0001,energy_meter,gd-gz-a01-b1,,\n")
    secret_file = tmp_path / "secrets.csv"
    result = _ok(with_regions("devices", "import", path, "--secret-file", str(secret_file)))
    assert result.stdout.strip().endswith("2 broker identities created and verified")
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secrets = _secrets(secret_file)
    assert sorted(secrets) == ["gate-gz-0001", "meter-gz-0001"]
    assert secrets["gate-gz-0001"] not in result.output  # never on the terminal when a file was chosen
    assert _can_connect(broker.port, "gate-gz-0001", secrets["gate-gz-0001"])
    assert not _can_connect(broker.port, "gate-gz-0001", secrets["meter-gz-0001"])  # another device's secret
    # the command names under `devices`: check proves the rights, rotate replaces the secret
    check = _ok(with_regions("devices", "check", "meter-gz-0001", "--secret-file", str(secret_file), "--json"))
    assert json.loads(check.stdout)["ok"] is True
    _ok(with_regions("devices", "rotate", "meter-gz-0001", "--secret-file", str(secret_file)))
    rotated = _secrets(secret_file)
    assert rotated["gate-gz-0001"] == secrets["gate-gz-0001"]  # the other device's line is kept
    assert not _can_connect(broker.port, "meter-gz-0001", secrets["meter-gz-0001"])
    assert _can_connect(broker.port, "meter-gz-0001", rotated["meter-gz-0001"])
    config = json.loads(_ok(with_regions("devices", "export-config", "meter-gz-0001")).stdout)
    assert (config["client_id"], config["port"]) == ("meter-gz-0001", broker.port)


@pytest.mark.integration
def test_devices_add_and_import_with_the_broker_down_write_nothing(
    with_regions: Run, env: dict[str, str | None], tmp_path: Path
) -> None:
    env["LIANFANG_MQTT__PORT"] = str(free_port())  # nothing listens there
    path = _csv(tmp_path, "d.csv", "gate-gz-0001,gate,gd-gz-a01-b1,,\n")
    for args in (["devices", "import", path], ["devices", "add", "gate-gz-0002", "-t", "gate", "-r", "gd-gz-a01-b1"]):
        (line,) = _user_error(with_regions(*args, "--timeout", "2"))
        assert line.startswith("error: broker unavailable: cannot connect to the MQTT broker at 127.0.0.1:")
        assert line.endswith("; nothing was written")
    assert _json(with_regions("devices", "list", "--json"))["total"] == 0
    bad = _csv(tmp_path, "bad.csv", "gate-gz-0001,gate,gd-nowhere,,\n")  # bad rows are still named first
    assert _user_error(with_regions("devices", "import", bad))[0].startswith(f"{bad}:2: region")


@pytest.mark.integration
def test_devices_import_broker_lost_midway_names_the_devices_and_a_rerun_finishes(
    with_regions: Run,
    env: dict[str, str | None],
    broker: Broker,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = [f"gate-gz-{i:04d}" for i in range(1, 5)]
    path = _csv(tmp_path, "d.csv", "".join(f"{i},gate,gd-gz-a01-b1,,\n" for i in ids))
    settings = load_settings(None, **{"database_url": env["LIANFANG_DATABASE_URL"]}, mqtt={
        "port": broker.port, "embedded_broker": False, "admin_password": broker.admin_password})  # fmt: skip
    registry = open_registry(settings)
    secret_file = tmp_path / "secrets.csv"
    try:
        with devices_written_hook(settings, registry, clock.now(), timeout=2) as hook:
            write_devices(registry, [DeviceRow(i, "gate", "gd-gz-a01-b1") for i in ids], now=clock.now())
            broker.process.stop()  # the broker dies after the registry write, before any identity was made
            with pytest.raises(typer.Exit) as exit_info:
                give_identities(hook, registry, ids, secret_file)
    finally:
        registry.engine.dispose()
    assert exit_info.value.exit_code == 1
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].strip() for line in err[:-1]] == ids  # every device without an identity, named
    assert err[-1] == (
        "error: the devices are registered, but 4 of 4 have no broker identity (0 created now); "
        "run the same command again to finish"
    )
    broker.process.start()
    rerun = _ok(with_regions("devices", "import", path, "--secret-file", str(secret_file)))
    assert "4 unchanged; 4 broker identities created and verified" in rerun.stdout
    secrets = _secrets(secret_file)
    assert all(_can_connect(broker.port, i, secrets[i]) for i in ids)
    assert _json(with_regions("devices", "reconcile", "--json")) == {"drift": [], "changes": 0}


@pytest.mark.integration
def test_devices_disable_kicks_the_connected_device_and_enable_lets_it_back(
    with_regions: Run, broker: Broker, tmp_path: Path
) -> None:
    secret_file = tmp_path / "s.csv"
    _ok(
        with_regions(
            "devices", "add", "car-gz-0001", "-t", "vehicle", "-r", "gd-gz-a01", "--secret-file", str(secret_file)
        )
    )
    secret = _secrets(secret_file)["car-gz-0001"]
    device = mqtt_client(broker.port, "car-gz-0001", secret)
    try:
        out = _ok(with_regions("devices", "disable", "car-gz-0001")).stdout
        assert out.strip() == "device car-gz-0001 disabled; a connected session was disconnected"
        wait_until(lambda: not device.is_connected(), 5, what="device kicked")
    finally:
        device.disconnect()
        device.loop_stop()
    assert not _can_connect(broker.port, "car-gz-0001", secret)
    assert _json(with_regions("devices", "show", "car-gz-0001", "--json"))["enabled"] is False
    _ok(with_regions("devices", "enable", "car-gz-0001"))
    assert _can_connect(broker.port, "car-gz-0001", secret)
    assert _json(with_regions("devices", "reconcile", "--json")) == {"drift": [], "changes": 0}
