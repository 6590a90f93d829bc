"""Start-up of `serve`, `ingest` and `demo`: known failures are one line with the remedy and exit 1; a second data
dir is a second installation (its own store, registry, broker dir and broker secrets)."""

from __future__ import annotations

import logging
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from core.errors import BrokerUnavailable
from core.settings import Settings, load_settings
from devices.broker import free_port
from lianfang import commands  # noqa: F401  (registers the sub-apps)
from lianfang.cli import app
from lianfang.runtime import BrokerSecrets, Runtime, broker_secrets_path
from lianfang.startup import explain
from tests.conftest import free_port_pair


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in ("LIANFANG_DATABASE_URL", "LIANFANG_STORE__SQLITE_PATH", "LIANFANG_MQTT__BROKER_DIR", "LIANFANG_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LIANFANG_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LIANFANG_GC_SETTLE_S", "0")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers  # the commands log to CliRunner's stderr, closed after the test
    root.setLevel(level)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stderr


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("{")]  # JSON lines are the log


@pytest.mark.integration
def test_ingest_broker_port_in_use_is_one_line_and_warns_about_loose_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken_port: int
) -> None:
    data = tmp_path / "var"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    monkeypatch.setenv("LIANFANG_MQTT__PORT", str(taken_port))
    code, err = run("ingest")
    assert code == 1
    assert error_lines(err) == [
        f"error: port {taken_port} on 127.0.0.1 is already in use (another broker or an old Lianfang still running?): "
        "stop it or choose another port (LIANFANG_MQTT__PORT)"
    ]
    assert f"{data} has mode 755" in err and f"run: chmod 700 {data}" in err


@pytest.mark.integration
def test_the_devices_port_in_use_is_one_line(monkeypatch: pytest.MonkeyPatch, taken_port: int) -> None:
    """The default identities (password_file, ADR 0006) open a second listener for devices on mqtt.port + 1."""
    monkeypatch.setenv("LIANFANG_MQTT__PORT", str(free_port()))
    monkeypatch.setenv("LIANFANG_MQTT__DEVICE_PORT", str(taken_port))
    code, err = run("ingest")
    assert code == 1
    assert error_lines(err) == [
        f"error: port {taken_port} on 127.0.0.1, the devices' listener (mqtt.device_port, default mqtt.port + 1), "
        "is already in use: stop what holds it or choose another port (LIANFANG_MQTT__DEVICE_PORT)"
    ]


@pytest.mark.integration
def test_serve_api_port_in_use_fails_before_anything_starts(tmp_path: Path, taken_port: int) -> None:
    code, err = run("serve", "--port", str(taken_port))
    assert code == 1
    assert error_lines(err) == [
        f"error: port {taken_port} on 127.0.0.1 is already in use (another Lianfang serve or demo still running?): "
        "stop it or choose another port with --port or LIANFANG_API__PORT"
    ]
    assert not (tmp_path / "var" / "mosquitto").exists()  # the broker never started


@pytest.mark.parametrize("command", ["serve", "ingest", "demo"])
def test_unwritable_data_dir_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    (tmp_path / "file").write_text("not a directory", encoding="utf-8")
    monkeypatch.setenv("LIANFANG_DATA_DIR", str(tmp_path / "file" / "var"))
    code, err = run(command)
    assert code == 1
    assert error_lines(err) == [
        f"error: cannot write to the data directory {tmp_path}/file/var (Not a directory): make it a directory "
        "the user running Lianfang can write to, or choose another with LIANFANG_DATA_DIR"
    ]


def test_bad_config_is_named_and_exits_1(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("mqtt:\n  prot: 1884\n", encoding="utf-8")
    code, err = run("--config", str(cfg), "ingest")
    assert code == 1 and "Traceback" not in err
    assert err.splitlines() == [f"error: invalid settings in {cfg}:", "  mqtt.prot: Extra inputs are not permitted"]


def test_explain_locked_and_unreachable_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    locked = OperationalError("PRAGMA x", {}, sqlite3.OperationalError("database is locked"))
    assert "locked by another process" in (explain(locked, settings) or "")
    down = OperationalError("SELECT 1", {}, sqlite3.OperationalError("connection refused\nmore detail"))
    line = explain(down, settings) or ""
    assert line.startswith(f"cannot use the database sqlite:///{tmp_path}/registry.db: connection refused: check")
    assert explain(ValueError("a bug"), settings) is None  # unknown failures keep their traceback


def test_explain_broker_failures_name_the_remedy(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    refused = BrokerUnavailable(
        "MQTT broker 127.0.0.1:1884 did not accept the ingest session within 10 s: Not authorized"
    )
    line = explain(refused, settings) or ""
    assert f"do not match {tmp_path}/broker-secrets.json" in line and "--reprovision-missing" in line
    died = BrokerUnavailable("mosquitto did not start on port 1884: Error: Unable to open pwfile")
    assert f"run 'mosquitto -c {tmp_path}/mosquitto/mosquitto.conf' to see why" in (explain(died, settings) or "")
    down = BrokerUnavailable("cannot connect to MQTT broker 10.0.0.9:1883: [Errno 111] Connection refused")
    assert (explain(down, settings) or "").endswith(
        "start the broker or check mqtt.host / mqtt.port (LIANFANG_MQTT__HOST, LIANFANG_MQTT__PORT)"
    )


@pytest.mark.integration
def test_two_data_dirs_are_two_installations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtimes: list[Runtime] = []
    try:
        for name in ("one", "two"):
            monkeypatch.setenv("LIANFANG_DATA_DIR", str(tmp_path / name))
            # the defaults: the devices' listener on mqtt.port + 1, which must be free too
            monkeypatch.setenv("LIANFANG_MQTT__PORT", str(free_port_pair()))
            runtime = Runtime(load_settings(), with_ingest=False)
            runtime.start()
            runtimes.append(runtime)
        one, two = (r.settings for r in runtimes)
        for s, name in ((one, "one"), (two, "two")):
            base = tmp_path / name
            assert s.store.sqlite_path == base / "telemetry.db" and s.store.sqlite_path.exists()
            assert s.database_url == f"sqlite:///{base}/registry.db" and (base / "registry.db").exists()
            assert base.stat().st_mode & 0o777 == 0o700 and (base / "mosquitto").stat().st_mode & 0o777 == 0o700
            assert (base / "mosquitto" / "mosquitto.conf").exists() and broker_secrets_path(
                s
            ) == base / "broker-secrets.json"
        assert BrokerSecrets.load_or_create(broker_secrets_path(one)) != BrokerSecrets.load_or_create(
            broker_secrets_path(two)
        )
    finally:
        for runtime in runtimes:
            runtime.stop()
