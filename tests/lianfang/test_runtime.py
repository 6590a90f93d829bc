"""The running service: retention, and `lianfang serve` end to end with graceful SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core import clock
from core.protocol import Reading
from core.settings import Settings, StoreSettings
from core.store import WriteBatch
from devices.broker import free_port
from lianfang.runtime import BrokerSecrets, Runtime
from tests.conftest import free_ports
from tests.helpers import wait_until

DAY = 86_400_000


def test_retention_deletes_only_what_is_older_than_the_setting(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/registry.db",
        store=StoreSettings(sqlite_path=tmp_path / "t.db", retention_days=30),
        mqtt={"embedded_broker": False},  # type: ignore[arg-type]
    )
    runtime = Runtime(settings, with_ingest=False, retention_interval_s=3600)
    runtime.start()
    try:
        assert runtime.store is not None
        now = clock.now_ms()
        old = Reading("m-1", "r", "energy_meter", now - 31 * DAY, None, {"energy_kwh": 1.0})
        new = Reading("m-1", "r", "energy_meter", now - 29 * DAY, None, {"energy_kwh": 2.0})
        runtime.store.write(WriteBatch(readings=[old, new]))
        assert runtime.apply_retention() == 1
        assert [v for _, v in runtime.store.raw("m-1", "energy_kwh", now - 40 * DAY, now, 10)] == [2.0]
    finally:
        runtime.stop()


def test_broker_secrets_are_generated_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    first = BrokerSecrets.load_or_create(path)
    assert BrokerSecrets.load_or_create(path) == first
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert len(first.platform) >= 40 and len({first.admin, first.platform, first.sim}) == 3


@pytest.mark.slow
def test_serve_runs_broker_ingest_and_api_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    api_port, mqtt_port, device_port = free_ports(3)
    env = dict(os.environ)
    env.update(
        {
            "LIANFANG_DATABASE_URL": f"sqlite:///{tmp_path}/registry.db",
            "LIANFANG_STORE__SQLITE_PATH": str(tmp_path / "telemetry.db"),
            "LIANFANG_MQTT__PORT": str(mqtt_port),
            "LIANFANG_MQTT__DEVICE_PORT": str(device_port),  # the devices' listener (mqtt.port + 1 may be taken)
            "LIANFANG_MQTT__BROKER_DIR": str(tmp_path / "mosquitto"),
            "LIANFANG_API__PORT": str(api_port),
        }
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "lianfang", "serve"], env=env, stdout=fh, stderr=fh)
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                r = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/health/ready", timeout=2)
            except httpx.HTTPError:
                return False
            return r.status_code == 200 and r.json()["checks"]["ingest"]["connected"] is True

        wait_until(ready, 120, 0.2, "serve ready")  # two processes start (serve, its ingest child)
        metrics = httpx.get(f"http://127.0.0.1:{api_port}/metrics", timeout=5).text
        # ingest runs in serve's child process (alerts.engine: separate) and relays its metrics, labelled
        assert re.search(r'lianfang_ingest_broker_connected\{ingest="lianfang-ingest"\} 1\.0', metrics), metrics
        assert "lianfang_engine_lag_seconds" in metrics and "lianfang_engine_queue_batches" in metrics
        for name in (  # alert engine, notifications, the parallel ingest stages, the GC policy
            "lianfang_alert_evaluation_seconds_bucket",
            "lianfang_alerts_open",
            "lianfang_notify_queue_depth",
            "lianfang_ingest_write_queue_batches",
            "lianfang_ingest_evaluation_queue_batches",
        ):
            assert name in metrics, name
        frozen = [x for x in metrics.splitlines() if x.startswith("lianfang_gc_frozen_objects ")]
        assert frozen and float(frozen[0].split()[1]) > 10_000  # settled at start-up
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    messages = [x["msg"] for x in lines]
    assert code == 0, log.read_text()[-3000:]
    assert any(m.startswith("ingest stopped") for m in messages)
    assert any(m.startswith("mosquitto stopped") for m in messages)


def _tls_connack(port: int, ca: Path, user: str, password: str) -> int:
    """The CONNACK reason code of an MQTT v5 login over TLS (client id = username, as devices do)."""
    import ssl

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    codes: list[int] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.on_connect = lambda _c, _u, _f, rc, _p: codes.append(rc.value)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_until(lambda: codes, 10, what="CONNACK over TLS")
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]


@pytest.mark.parametrize("identities", ["password_file", "dynsec"])
def test_embedded_broker_serves_mqtt_over_tls_when_a_tls_port_is_set(tmp_path: Path, identities: str) -> None:
    """The TLS listener is the devices' one: with the password file (the default) it knows only device accounts,
    like the device listener; with dynsec every dynsec account, the platform's included."""
    from devices.broker_adapter_passwd import adapter_for
    from devices.certs import init_certs
    from devices.dynsec import DynsecClient
    from devices.provisioning import new_secret

    paths = init_certs(tmp_path / "certs", ["127.0.0.1", "localhost"], now=clock.now())
    port, tls_port, device_port = free_ports(3)
    mqtt_settings = {"port": port, "tls_port": tls_port, "broker_dir": tmp_path / "mosquitto"}
    mqtt_settings["device_port"] = device_port  # the devices' listener (mqtt.port + 1 may be taken)
    if identities == "dynsec":
        mqtt_settings["device_identities"] = "dynsec"
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path}/registry.db",
        store=StoreSettings(sqlite_path=tmp_path / "t.db"),
        mqtt=mqtt_settings,  # type: ignore[arg-type]
    )
    assert settings.mqtt.device_identities == identities
    runtime = Runtime(settings, with_ingest=False)
    runtime.start()
    try:
        secrets = BrokerSecrets.load_or_create(tmp_path / "broker-secrets.json")
        platform = _tls_connack(tls_port, paths.ca_cert, "lianfang-platform", secrets.platform)
        if identities == "dynsec":
            assert platform == 0
            return
        assert platform == 135  # not authorized: platform accounts stay on mqtt.port
        with DynsecClient("127.0.0.1", port, secrets.admin, timeout=30) as dynsec:
            adapter = adapter_for(settings, dynsec)
            assert adapter is not None
            secret = new_secret()
            assert adapter.add({"gate-0001": secret}) == {}
        assert _tls_connack(tls_port, paths.ca_cert, "gate-0001", secret) == 0
    finally:
        runtime.stop()


def test_tls_port_without_certificates_is_a_clear_error(tmp_path: Path) -> None:
    from core.errors import UserError

    settings = Settings(data_dir=tmp_path, mqtt={"tls_port": free_port()})  # type: ignore[arg-type]
    with pytest.raises(UserError, match="lianfang certs init"):
        from lianfang.runtime import tls_files

        tls_files(settings)


def test_password_file_identities_get_their_own_device_listener(tmp_path: Path) -> None:
    """mqtt.device_identities: password_file (ADR 0006): serve's broker opens the device listener on
    mqtt.device_port, where a device imported live logs in and publishes, and the platform keeps its own port."""
    from devices.broker_adapter_passwd import adapter_for, login_codes
    from devices.dynsec import DynsecClient
    from devices.provisioning import new_secret

    port, device_port = free_ports(2)
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path}/registry.db",
        store=StoreSettings(sqlite_path=tmp_path / "t.db"),
        mqtt={  # type: ignore[arg-type]
            "port": port,
            "broker_dir": tmp_path / "mosquitto",
            "device_identities": "password_file",
            "device_port": device_port,
        },
    )
    assert settings.mqtt.device_listener_port == device_port
    runtime = Runtime(settings, with_ingest=False)
    runtime.start()
    try:
        secrets = BrokerSecrets.load_or_create(tmp_path / "broker-secrets.json")
        with DynsecClient("127.0.0.1", port, secrets.admin, timeout=30) as dynsec:
            adapter = adapter_for(settings, dynsec)
            assert adapter is not None and adapter.port == device_port
            secret = new_secret()
            assert adapter.add({"gate-0001": secret}) == {}
        assert login_codes("127.0.0.1", device_port, [("gate-0001", secret)]) == [0]
        assert login_codes("127.0.0.1", port, [("gate-0001", secret)]) == [5]  # not on the platform's listener
        assert login_codes("127.0.0.1", port, [("lianfang-platform", secrets.platform)]) == [0]
    finally:
        runtime.stop()


def test_a_fleet_an_older_version_kept_in_dynsec_works_after_the_default_switch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """serve before session 6 kept device identities in dynsec; restarted on the same data with the defaults
    (password_file, ADR 0006) it warns about them, they keep logging in and publishing on mqtt.port, reconcile
    sees no drift, and a rotation moves one into the password file and onto the device listener."""
    import logging
    import threading
    from datetime import UTC, datetime

    from devices.audit import Actor
    from devices.broker_adapter_passwd import PasswdFileAdapter, adapter_for, login_codes
    from devices.dynsec import DynsecClient
    from devices.provisioning import Provisioner
    from devices.registry import DeviceSpec, RegionSpec
    from tests.helpers import mqtt_client

    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    ids = ["gate-0001", "gate-0002"]
    port, device_port = free_ports(2)
    common = {
        "data_dir": tmp_path,
        "database_url": f"sqlite:///{tmp_path}/registry.db",
        "store": StoreSettings(sqlite_path=tmp_path / "t.db"),
    }
    before = Settings(**common, mqtt={"port": port, "device_identities": "dynsec"})  # type: ignore[arg-type]
    runtime = Runtime(before, with_ingest=False)
    runtime.start()
    try:
        assert runtime.registry is not None
        runtime.registry.upsert_regions([RegionSpec("gd", "广东省", "province")], now=now)
        runtime.registry.add_devices([DeviceSpec(i, "gate", "gd") for i in ids], now=now)
        admin = BrokerSecrets.load_or_create(tmp_path / "broker-secrets.json").admin
        with DynsecClient("127.0.0.1", port, admin, timeout=30) as dynsec:
            assert adapter_for(before, dynsec) is None  # dynsec's broker: the dynsec adapter
            old = Provisioner(runtime.registry, dynsec, actor=Actor("test", "test")).provision_new(ids, now)
    finally:
        runtime.stop()

    after = Settings(**common, mqtt={"port": port, "device_port": device_port})  # type: ignore[arg-type]
    assert after.mqtt.device_identities == "password_file" and after.mqtt.device_listener_port == device_port
    runtime = Runtime(after, with_ingest=False)
    with caplog.at_level(logging.WARNING, logger="devices.broker"):
        runtime.start()
    try:
        assert "2 device identities (e.g. gate-0001) are still in dynamic security" in caplog.text
        platform_pw = BrokerSecrets.load_or_create(tmp_path / "broker-secrets.json").platform
        got: list[str] = []
        arrived = threading.Event()

        def on_message(*args: object) -> None:
            got.append(args[2].topic)  # type: ignore[attr-defined]
            arrived.set()

        platform = mqtt_client(port, "lianfang-platform", platform_pw, "test-platform")
        platform.on_message = on_message
        platform.subscribe("lf/v1/+/telemetry", qos=1)
        device = mqtt_client(port, "gate-0001", old["gate-0001"])  # where it always connected, its own secret
        try:
            time.sleep(0.3)
            device.publish("lf/v1/gate-0001/telemetry", b'{"ts":1}', qos=1).wait_for_publish(5)
            assert arrived.wait(5) and got == ["lf/v1/gate-0001/telemetry"]
        finally:
            device.disconnect()
            device.loop_stop()
            platform.disconnect()
            platform.loop_stop()
        admin = BrokerSecrets.load_or_create(tmp_path / "broker-secrets.json").admin
        with DynsecClient("127.0.0.1", port, admin, timeout=30) as dynsec:
            adapter = adapter_for(after, dynsec)
            assert isinstance(adapter, PasswdFileAdapter) and adapter.port == device_port
            assert runtime.registry is not None
            prov = Provisioner(runtime.registry, dynsec, actor=Actor("test", "test"), adapter=adapter)
            assert prov.reconcile(now).drift == []
            new = prov.rotate("gate-0001", now)
            assert dynsec.get_client("gate-0001") is None and dynsec.get_client("gate-0002") is not None
        assert login_codes("127.0.0.1", device_port, [("gate-0001", new)]) == [0]
        # the demo's fleet (all on the device listener): gate-0001's secret is kept, gate-0002's dynsec identity
        # (valid, but only on mqtt.port) is replaced by a new one in the password file
        from devices.fleet_credentials import provision_fleet, save_secrets

        kept = tmp_path / "fleet-secrets.csv"
        save_secrets(kept, {"gate-0001": new, "gate-0002": old["gate-0002"]})
        fleet = provision_fleet(after, runtime.registry, ids, now, secrets_path=kept)
        assert fleet["gate-0001"] == new and fleet["gate-0002"] != old["gate-0002"]
        assert login_codes("127.0.0.1", device_port, sorted(fleet.items())) == [0, 0]
    finally:
        runtime.stop()
