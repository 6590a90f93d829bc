"""Demo fleet credentials (provision_fleet) and `lianfang simulate --credentials` against a real Mosquitto."""

from __future__ import annotations

import json
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from core.settings import Settings, load_settings
from devices.dynsec import DynsecClient, role_name
from devices.fleet_credentials import load_secrets, provision_fleet, save_secrets
from devices.provisioning import device_secret_ok
from devices.registry import DeviceSpec, RegionSpec, Registry
from lianfang import commands  # noqa: F401  (registers the sub-apps)
from lianfang.cli import app
from tests.conftest import Broker
from tests.helpers import mqtt_client, wait_until

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
IDS = [f"gate-f-{i:04d}" for i in range(1, 31)]


def _settings(broker: Broker, tmp_path: Path, db_url: str) -> Settings:
    return load_settings(
        None,
        database_url=db_url,
        data_dir=str(tmp_path / "var"),
        mqtt={"port": broker.port, "embedded_broker": False, "admin_password": broker.admin_password},
    )


def _fleet(registry: Registry) -> None:
    registry.upsert_regions([RegionSpec("gd", "广东省", "province", None, 23.1, 113.3)], now=NOW)
    registry.add_devices([DeviceSpec(i, "gate", "gd") for i in IDS], now=NOW)


def _connects(port: int, device_id: str, secret: str) -> bool:
    answers: list[bool] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(device_id, secret)
    client.on_connect = lambda _c, _u, _f, rc, _p: answers.append(not rc.is_failure)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_until(lambda: answers, 5, what="CONNACK")
    finally:
        client.disconnect()
        client.loop_stop()
    return answers[0]


@pytest.mark.integration
def test_provision_fleet_creates_reuses_and_repairs_only_what_is_broken(
    broker: Broker, sqlite_registry: Registry, tmp_path: Path
) -> None:
    _fleet(sqlite_registry)
    settings = _settings(broker, tmp_path, str(sqlite_registry.engine.url))
    first = provision_fleet(settings, sqlite_registry, IDS, NOW)
    path = tmp_path / "var" / "demo-device-secrets.csv"
    assert sorted(first) == IDS and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secrets(path) == first
    assert _connects(broker.port, IDS[0], first[IDS[0]]) and device_secret_ok(sqlite_registry, IDS[1], first[IDS[1]])

    again = provision_fleet(settings, sqlite_registry, IDS, NOW)  # a restarted demo: nothing changes
    assert again == first

    # Break two devices: one loses its broker identity (broker restored from an old backup), one its secret.
    with DynsecClient("127.0.0.1", broker.port, broker.admin_password) as dynsec:
        dynsec.call({"command": "deleteClient", "username": IDS[2]})
        dynsec.call({"command": "deleteRole", "rolename": role_name(IDS[2])})
    kept = load_secrets(path)
    del kept[IDS[3]]
    save_secrets(path, kept)
    repaired = provision_fleet(settings, sqlite_registry, IDS, NOW)
    changed = sorted(i for i in IDS if repaired[i] != first[i])
    assert changed == [IDS[2], IDS[3]]
    assert all(_connects(broker.port, i, repaired[i]) for i in changed)
    assert not _connects(broker.port, IDS[3], first[IDS[3]])  # the lost secret no longer works
    assert load_secrets(path) == repaired


@pytest.mark.integration
def test_simulate_with_credentials_connects_each_device_with_its_own_identity(
    broker: Broker, sqlite_registry: Registry, tmp_path: Path
) -> None:
    _fleet(sqlite_registry)
    db_url = str(sqlite_registry.engine.url)
    settings = _settings(broker, tmp_path, db_url)
    secrets = provision_fleet(settings, sqlite_registry, IDS[:3], NOW)
    creds = tmp_path / "creds.csv"
    save_secrets(creds, secrets)  # the format of 'devices import --secret-file'
    as_json = tmp_path / "creds.json"
    as_json.write_text(json.dumps(secrets), encoding="utf-8")
    seen: set[str] = set()
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            seen.add(msg.topic.split("/")[2])

    sub = mqtt_client(broker.port, broker.platform_username, broker.platform_password, "test-sub")
    sub.on_message = on_message
    sub.subscribe("lf/v1/+/status", qos=1)
    env = {
        "LIANFANG_DATABASE_URL": db_url,
        "LIANFANG_MQTT__PORT": str(broker.port),
        "LIANFANG_MQTT__EMBEDDED_BROKER": "false",  # the fixture's broker: identities in dynsec, devices on its port
        "LIANFANG_SIM_PASSWORD": "",  # the shared simulator account is not used
    }
    try:
        result = CliRunner().invoke(app, ["simulate", "--credentials", str(creds), "--duration", "1"], env=env)
        assert result.exit_code == 0, result.output
        assert "27 device(s) have no secret" in result.stderr and "with their own credentials" in result.stdout
        line = next(x for x in result.stdout.splitlines() if x.startswith("stopped:"))
        published = int(line.split()[1])
        assert published >= 3 and f"{published} acknowledged, 0 refused" in line
        wait_until(lambda: seen == set(IDS[:3]), 5, what="each device's own online status")
        wrong_format = CliRunner().invoke(app, ["simulate", "--credentials", str(as_json), "--duration", "1"], env=env)
        assert wrong_format.exit_code == 1 and "expected 'device_id,secret' lines" in wrong_format.stderr
        save_secrets(creds, {IDS[0]: "wrong-secret"})
        bad = CliRunner().invoke(app, ["simulate", "--credentials", str(creds), "--duration", "1"], env=env)
        assert bad.exit_code == 1 and "could not connect" in bad.stderr and IDS[0] in bad.stderr
    finally:
        sub.disconnect()
        sub.loop_stop()
