"""`lianfang credentials ...` and `lianfang certs init` through typer's CliRunner, on a real broker."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.db import make_engine, migrate
from devices.registry import DeviceSpec, RegionSpec, Registry
from lianfang import commands  # noqa: F401  (registers the sub-apps)
from lianfang.cli import app
from tests.conftest import Broker

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


@pytest.fixture
def env(tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    url = f"sqlite:///{tmp_path}/registry.db"
    engine = make_engine(url)
    migrate(engine)
    reg = Registry(engine)
    reg.upsert_regions([RegionSpec("gd", "广东省", "province")], now=NOW)
    reg.add_devices([DeviceSpec(f"gate-000{i}", "gate", "gd") for i in (1, 2)], now=NOW)
    engine.dispose()
    values = {
        "LIANFANG_DATABASE_URL": url,
        "LIANFANG_DATA_DIR": str(tmp_path / "var"),
        "LIANFANG_MQTT__PORT": str(broker.port),
        "LIANFANG_MQTT__EMBEDDED_BROKER": "false",
        "LIANFANG_MQTT__ADMIN_PASSWORD": broker.admin_password,
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    yield values


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.integration
def test_cli_provision_check_rotate_reconcile(env: dict[str, str], tmp_path: Path) -> None:
    secrets_file = tmp_path / "secrets.csv"
    code, out, err = run("credentials", "provision", "gate-0001", "gate-0002", "--secret-file", str(secrets_file))
    assert code == 0, err
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600 and "2 secret(s) written" in err
    assert out == ""  # nothing secret on the terminal

    code, out, err = run("credentials", "check", "gate-0001", "--secret-file", str(secrets_file), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ok"] and any(p["topic"] == "#" and p["result"] == "Not authorized (135)" for p in doc["probes"])

    code, out, err = run("credentials", "rotate", "gate-0001")  # shown once on stdout
    assert code == 0, err
    device_id, new_secret = out.strip().split(",")
    assert device_id == "gate-0001" and len(new_secret) >= 43
    code, _, _ = run("credentials", "check", "gate-0001", "--secret-file", str(secrets_file))
    assert code == 1  # the old secret no longer works
    code, out, err = run("credentials", "check", "gate-0001", input=new_secret + "\n")
    assert code == 0, out + err

    code, out, _ = run("credentials", "reconcile", "--json")
    assert code == 0 and json.loads(out) == {"drift": [], "changes": 0}

    code, out, _ = run("credentials", "export-config", "gate-0002", "--tls-port", "8883")
    cfg = json.loads(out)
    assert code == 0 and cfg["client_id"] == "gate-0002" and cfg["tls_port"] == 8883
    assert cfg["port"] == int(env["LIANFANG_MQTT__PORT"]) and "not stored" in cfg["password"]

    code, out, _ = run("credentials", "expiring", "--days", "400", "--json")
    # soonest first: gate-0001 was rotated later, so its new credential expires later
    assert code == 0 and [e["device_id"] for e in json.loads(out)] == ["gate-0002", "gate-0001"]


@pytest.mark.integration
def test_cli_errors_are_one_line(env: dict[str, str]) -> None:
    code, _, err = run("credentials", "rotate", "gate-0009")
    assert code == 1 and err.strip() == "error: device 'gate-0009' does not exist in the registry"
    code, _, err = run("credentials", "provision", "gate-0001", "ghost-01")
    assert code == 1 and "ghost-01 (not in the registry)" in err
    code, _, err = run("credentials", "disable", "gate-0002")
    assert code == 1 and "has no credential" in err


def test_cli_broker_down_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIANFANG_DATABASE_URL", f"sqlite:///{tmp_path}/r.db")
    monkeypatch.setenv("LIANFANG_MQTT__PORT", "1")  # nothing listens there
    monkeypatch.setenv("LIANFANG_MQTT__EMBEDDED_BROKER", "false")
    monkeypatch.setenv("LIANFANG_MQTT__ADMIN_PASSWORD", "x")
    code, _, err = run("credentials", "reconcile", "--timeout", "2")
    assert code == 1 and err.startswith("error: broker unavailable: cannot connect to the MQTT broker at")


def test_cli_certs_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIANFANG_DATA_DIR", str(tmp_path))
    code, out, err = run("certs", "init", "--host", "mqtt.example.gov.cn", "--key-type", "ec")
    assert code == 0, err
    assert (tmp_path / "certs" / "ca.crt").exists() and "mqtt.example.gov.cn" in out
    assert stat.S_IMODE((tmp_path / "certs").stat().st_mode) == 0o700
    code, _, err = run("certs", "init", "--host", "mqtt.example.gov.cn")
    assert code == 1 and "already exists" in err
