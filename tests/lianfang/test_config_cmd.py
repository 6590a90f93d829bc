"""`lianfang config check [--config FILE]`: the option the README documents, checked like the root --config."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from lianfang import commands  # noqa: F401  (registers the sub-apps)
from lianfang.cli import app

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    "LIANFANG_CONFIG": "",
    "LIANFANG_MQTT__PORT": None,
    "LIANFANG_MQTT__DEVICE_PORT": None,
    "LIANFANG_MQTT__DEVICE_IDENTITIES": None,
    "LIANFANG_MQTT__EMBEDDED_BROKER": None,
    "LIANFANG_DATABASE_URL": None,
}


def test_config_check_takes_the_file_as_its_own_option(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("mqtt: {port: 1999}\napi: {port: 8123}\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["config", "check", "--config", str(good)], env=ENV)
    assert result.exit_code == 0, result.output
    assert f"settings OK (from {good})" in result.stdout and ":1999" in result.stdout and ":8123" in result.stdout
    # the command's own option wins over the root's
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt: {port: 99999}\nstore: {colour: red}\n", encoding="utf-8")
    both = CliRunner().invoke(app, ["--config", str(bad), "config", "check", "-c", str(good)], env=ENV)
    assert both.exit_code == 0 and ":1999" in both.stdout
    failed = CliRunner().invoke(app, ["config", "check", "--config", str(bad)], env=ENV)
    assert failed.exit_code == 1
    assert "mqtt.port: Input should be less than or equal to 65535" in failed.stderr
    assert "store.colour: Extra inputs are not permitted" in failed.stderr


def test_config_check_accepts_the_shipped_example() -> None:
    example = ROOT / "examples" / "lianfang.yaml"
    result = CliRunner().invoke(app, ["config", "check", "--config", str(example)], env=ENV)
    assert result.exit_code == 0, result.output


def _row(stdout: str, key: str) -> str:
    rows = [line.strip()[len(key) :].strip() for line in stdout.splitlines() if line.strip().startswith(key)]
    assert len(rows) == 1, stdout
    return rows[0]


def test_config_check_shows_the_device_listener(tmp_path: Path) -> None:
    """One row: the devices' port and the identities mode (password_file: port + 1 unless set; dynsec: mqtt.port)."""
    cases = {
        "mqtt: {port: 1999}\n": "127.0.0.1:2000 (mqtt.port + 1), identities: password_file (devices only)",
        "mqtt: {port: 1999, device_port: 2101}\n": "127.0.0.1:2101, identities: password_file (devices only)",
        "mqtt: {port: 1999, device_identities: dynsec}\n": (
            "127.0.0.1:1999 (mqtt.port, shared with the platform), identities: dynsec"
        ),
        # an external broker keeps identities in dynsec unless told otherwise
        "mqtt: {port: 1999, embedded_broker: false}\n": (
            "127.0.0.1:1999 (mqtt.port, shared with the platform), identities: dynsec"
        ),
    }
    for text, expected in cases.items():
        conf = tmp_path / "c.yaml"
        conf.write_text(text, encoding="utf-8")
        result = CliRunner().invoke(app, ["config", "check", "--config", str(conf)], env=ENV)
        assert result.exit_code == 0, result.output
        assert _row(result.stdout, "device listener") == expected, text
