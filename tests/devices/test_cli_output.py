"""Output without a terminal (issue 9): nothing cut at 80 columns, TSV tables, --json on every list / show / check,
and `devices check` never falls back to getpass or a bare 'Aborted.'. CliRunner's stdout and stdin are not
terminals, as in a pipe."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from core.db import make_engine, migrate
from devices.registry import DeviceSpec, RegionSpec, Registry
from lianfang import commands  # noqa: F401  (registers the sub-apps)
from lianfang.cli import app
from tests.conftest import Broker

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
LONG_REGION = "gd-" + "r" * 61  # 64 characters, the longest region id
LONG_DEVICE = "gate-" + "x" * 59  # 64 characters, the longest device id
LONG_NAME = "广东省广州市越秀区东风中路行政办公区第一号楼东侧地下停车场出入口道闸控制器"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path}/registry.db"
    engine = make_engine(url)
    migrate(engine)
    reg = Registry(engine)
    reg.upsert_regions([RegionSpec(LONG_REGION, LONG_NAME, "province")], now=NOW)
    reg.add_devices([DeviceSpec(LONG_DEVICE, "gate", LONG_REGION, LONG_NAME)], now=NOW)
    engine.dispose()
    monkeypatch.setenv("LIANFANG_DATABASE_URL", url)
    monkeypatch.setenv("LIANFANG_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("LIANFANG_CONFIG", raising=False)
    monkeypatch.delenv("LIANFANG_DEVICE_SECRET", raising=False)
    yield url


def run(*args: str, input: str | None = None) -> Result:
    result = CliRunner().invoke(app, list(args), input=input)
    assert "Traceback" not in result.output
    return result


def ok(*args: str) -> Result:
    result = run(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def tsv(out: str) -> list[list[str]]:
    return [line.split("\t") for line in out.splitlines()]


def test_regions_list_and_tree_whole_without_a_terminal(env: str) -> None:
    rows = tsv(ok("regions", "list").stdout)
    assert rows == [
        ["id", "name", "level", "parent", "lat", "lon", "devices"],
        [LONG_REGION, LONG_NAME, "province", "", "", "", "1"],
    ]
    [region] = json.loads(ok("regions", "list", "--json").stdout)
    assert region["id"] == LONG_REGION and region["devices"] == 1
    tree = ok("regions", "tree").stdout
    assert tree.strip() == f"{LONG_NAME} ({LONG_REGION}, province) · 1 device"  # one line, nothing cut or wrapped
    assert json.loads(ok("regions", "tree", "--json").stdout) == [
        {"id": LONG_REGION, "name": LONG_NAME, "level": "province", "devices": 1, "children": []}
    ]


def test_devices_list_and_show_whole_without_a_terminal(env: str) -> None:
    listed = ok("devices", "list")
    assert tsv(listed.stdout) == [
        ["id", "type", "region", "name", "enabled", "interval"],
        [LONG_DEVICE, "gate", LONG_REGION, LONG_NAME, "yes", "60s"],
    ]
    assert listed.stderr.strip() == "showing 1-1 of 1"  # hints on stderr: stdout is only data
    assert json.loads(ok("devices", "list", "--json").stdout)["devices"][0]["id"] == LONG_DEVICE
    shown = dict(tuple(row) for row in tsv(ok("devices", "show", LONG_DEVICE).stdout))
    assert shown["id"] == LONG_DEVICE and shown["region"] == f"{LONG_NAME} ({LONG_REGION})"
    assert shown["state"] == "offline" and shown["last seen"] == "never"
    doc = json.loads(ok("devices", "show", LONG_DEVICE, "--json").stdout)
    assert doc["id"] == LONG_DEVICE and doc["online"] is False
    assert json.loads(ok("devices", "expiring", "--json").stdout) == []


def test_rules_explain_and_users_list_whole_without_a_terminal(env: str) -> None:
    explained = ok("rules", "explain", LONG_DEVICE, "--no-api")
    rows = tsv(explained.stdout)
    assert rows[0] == ["rule", "setting", "value", "from"] and len(rows) > 1
    assert all(len(r) == 4 for r in rows) and f"{LONG_DEVICE} (gate) in {LONG_REGION}: " in explained.stderr
    doc = json.loads(ok("rules", "explain", LONG_DEVICE, "--no-api", "--json").stdout)
    assert doc["device"] == LONG_DEVICE and len(doc["settings"]) == len(rows) - 1
    assert "ok" in json.loads(run("rules", "check", "--no-api", "--json").stdout)

    name = "duty-officer." + "n" * 40 + "@gz.gov.cn"
    ok("users", "add", name, "--role", "viewer", "--region", LONG_REGION)
    users = tsv(ok("users", "list").stdout)
    assert users[0] == ["name", "role", "region", "enabled", "created"]
    assert users[1][:4] == [name, "viewer", LONG_REGION, "yes"]
    assert json.loads(ok("users", "list", "--json").stdout)[0]["name"] == name


def test_devices_check_without_a_terminal_or_secret_is_one_line(env: str) -> None:
    for command in (["devices", "check", LONG_DEVICE], ["credentials", "check", LONG_DEVICE, "--json"]):
        result = run(*command, input="")
        assert result.exit_code == 1
        assert result.stderr.splitlines() == [
            f"error: no secret for {LONG_DEVICE}: give --secret-file FILE, set LIANFANG_DEVICE_SECRET, or pipe the "
            "secret on stdin"
        ]
        assert "getpass" not in result.output and "Aborted" not in result.output and result.stdout == ""


def test_credentials_delete_without_a_terminal_needs_yes(env: str) -> None:
    result = run("credentials", "delete", LONG_DEVICE)
    assert result.exit_code == 1 and "Aborted" not in result.output
    assert result.stderr.strip() == (
        f"error: deleting the broker identity of {LONG_DEVICE} needs --yes when there is no terminal to ask"
    )


@pytest.mark.integration
def test_devices_check_reads_the_secret_from_the_environment(
    env: str, broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIANFANG_MQTT__PORT", str(broker.port))
    monkeypatch.setenv("LIANFANG_MQTT__EMBEDDED_BROKER", "false")
    monkeypatch.setenv("LIANFANG_MQTT__ADMIN_PASSWORD", broker.admin_password)
    provisioned = ok("devices", "provision", LONG_DEVICE)
    device_id, secret = provisioned.stdout.strip().split(",")
    assert device_id == LONG_DEVICE
    monkeypatch.setenv("LIANFANG_DEVICE_SECRET", secret)
    checked = ok("devices", "check", LONG_DEVICE)
    rows = tsv(checked.stdout)
    assert rows[0] == ["action", "topic", "expected", "broker said", "ok"]
    assert any(r[1].startswith(f"lf/v1/{LONG_DEVICE}/") for r in rows[1:])  # topics whole, not cut
    assert all(r[4] == "✓" for r in rows[1:]) and checked.stderr.strip() == f"{LONG_DEVICE}: OK"
    doc = json.loads(ok("devices", "check", LONG_DEVICE, "--json").stdout)
    assert doc["ok"] is True and doc["device_id"] == LONG_DEVICE
    monkeypatch.setenv("LIANFANG_DEVICE_SECRET", "wrong")
    assert run("devices", "check", LONG_DEVICE).exit_code == 1
