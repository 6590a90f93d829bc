"""The Mosquitto password-file adapter (ADR 0006) against a real Mosquitto: bulk add into a running broker with
nobody disconnected, the PROTOCOL.md ACLs as %u patterns, rotated / disabled / removed credentials refused and
their sessions dropped, the Provisioner and `credentials check` on top of it, legacy dynsec identities."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from core.errors import BrokerUnavailable
from devices.audit import Actor
from devices.broker import BrokerConfig, MosquittoProcess, passwd_line
from devices.broker_adapter import DynsecAdapter
from devices.broker_adapter_passwd import (
    CANARY_USERNAME,
    Entry,
    PasswdFileAdapter,
    login_codes,
    parse_passwd,
    render_passwd,
)
from devices.dynsec import DynsecClient
from devices.provisioning import Provisioner, new_secret
from devices.registry import DeviceSpec, RegionSpec, Registry
from tests.conftest import free_ports
from tests.helpers import mqtt_client, wait_until

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
ACTOR = Actor("test", "test")
NOT_AUTHORIZED = 135


# --- pure -----------------------------------------------------------------------------------------------------


def test_passwd_file_round_trip_keeps_disabled_entries_and_skips_the_canary() -> None:
    entries = {"gate-0001": Entry("$7$101$c2FsdA==$aGFzaA==", True), "gate-0002": Entry("$7$101$eA==$eQ==", False)}
    text = render_passwd(entries, canary=passwd_line(CANARY_USERNAME, "nonce"))
    assert "#disabled:gate-0002:$7$101$eA==$eQ==" in text
    assert parse_passwd(text) == entries


# --- a broker with device_passwd ---------------------------------------------------------------------------------


class Env:
    def __init__(self, directory: Path) -> None:
        port, device_port = free_ports(2)
        self.cfg = BrokerConfig(
            directory=directory,
            port=port,
            admin_password="adm-" + uuid.uuid4().hex,
            platform_password="plat-" + uuid.uuid4().hex,
            device_passwd=True,
            device_port=device_port,
        )
        self.process = MosquittoProcess(self.cfg)
        self.process.start()
        self.dynsec = DynsecClient("127.0.0.1", self.cfg.port, self.cfg.admin_password, timeout=30).connect()
        self.adapter = PasswdFileAdapter.for_broker(self.cfg, dynsec=self.dynsec)

    def close(self) -> None:
        self.dynsec.close()
        self.process.stop()

    def login(self, user: str, secret: str) -> int:
        (code,) = login_codes("127.0.0.1", self.cfg.device_listener_port, [(user, secret)])
        return code


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path / "mosquitto")
    yield e
    e.close()


class Device:
    """A connected MQTT v5 device that records disconnects, acks and messages."""

    def __init__(self, port: int, device_id: str, secret: str) -> None:
        self.cond = threading.Condition()
        self.disconnects = 0
        self.acks: dict[int, int] = {}
        self.messages: list[str] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(device_id, secret)
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = self._on_suback
        self.client.on_message = lambda _c, _u, m: self.messages.append(m.topic)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(self.client.is_connected, 10, what=f"{device_id} connected")

    def _on_disconnect(self, *_a: object) -> None:
        with self.cond:
            self.disconnects += 1

    def _on_ack(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        self.acks[mid] = rc.value

    def _on_suback(self, _c: object, _u: object, mid: int, rcs: list[ReasonCode], _p: object) -> None:
        self.acks[mid] = rcs[0].value

    def publish_code(self, topic: str) -> int:
        info = self.client.publish(topic, b"{}", qos=1)
        wait_until(lambda: info.mid in self.acks, 10, what=f"PUBACK {topic}")
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> int:
        _r, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        wait_until(lambda: mid in self.acks, 10, what=f"SUBACK {topic}")
        return self.acks[mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.integration
def test_bulk_add_into_a_running_broker_keeps_everyone_connected(env: Env) -> None:
    first = {f"gate-{i:04d}": new_secret() for i in range(300)}
    assert env.adapter.add(first) == {}
    assert set(env.adapter.verify(list(first), device_secrets=first).values()) == {""}
    connected = [Device(env.cfg.device_listener_port, d, first[d]) for d in list(first)[:20]]
    platform = mqtt_client(env.cfg.port, env.cfg.platform_username, env.cfg.platform_password, "platform-keep")
    dropped: list[object] = []
    platform.on_disconnect = lambda *a: dropped.append(a)
    try:
        more = {f"meter-{i:04d}": new_secret() for i in range(500)}
        assert env.adapter.add(more) == {}
        problems = env.adapter.verify(list(more), device_secrets=more)
        assert set(problems.values()) == {""}, {k: v for k, v in problems.items() if v}
        assert all(d.disconnects == 0 and d.client.is_connected() for d in connected)
        assert dropped == [] and platform.is_connected()
        assert env.login("meter-0499", first["gate-0001"]) == 5  # a wrong secret is refused (v3.1.1 code 5)
        assert set(env.adapter.list()) == set(first) | set(more)
    finally:
        for d in connected:
            d.close()
        platform.loop_stop()


@pytest.mark.integration
def test_a_device_uses_only_its_own_topics(env: Env) -> None:
    secrets = {"gate-0001": new_secret(), "gate-0002": new_secret()}
    assert env.adapter.add(secrets) == {}
    dev = Device(env.cfg.device_listener_port, "gate-0001", secrets["gate-0001"])
    platform = mqtt_client(env.cfg.port, env.cfg.platform_username, env.cfg.platform_password, "platform-acl")
    try:
        for topic in ("lf/v1/gate-0001/telemetry", "lf/v1/gate-0001/event", "lf/v1/gate-0001/status"):
            assert dev.publish_code(topic) < 128, topic
        for topic in ("lf/v1/gate-0002/telemetry", "lf/v1/gate-0001/cmd", "$CONTROL/dynamic-security/v1", "x/y"):
            assert dev.publish_code(topic) == NOT_AUTHORIZED, topic
        for topic in ("#", "lf/v1/+/cmd", "lf/v1/gate-0002/cmd", "lf/v1/gate-0001/cmd"):
            dev.subscribe(topic)  # Mosquitto's ACL file grants SUBSCRIBE and filters at delivery
        platform.publish("lf/v1/gate-0002/cmd", b"{}", qos=1).wait_for_publish(5)
        platform.publish("lf/v1/gate-0001/cmd", b"{}", qos=1).wait_for_publish(5)
        dev.publish_code("lf/v1/gate-0001/telemetry")
        wait_until(lambda: "lf/v1/gate-0001/cmd" in dev.messages, 5, what="own cmd delivered")
        assert set(dev.messages) == {"lf/v1/gate-0001/cmd"}, dev.messages
    finally:
        dev.close()
        platform.loop_stop()


@pytest.mark.integration
def test_rotated_disabled_and_removed_credentials_stop_working(env: Env) -> None:
    old = new_secret()
    assert env.adapter.add({"gate-0001": old, "gate-0002": new_secret()}) == {}
    dev = Device(env.cfg.device_listener_port, "gate-0001", old)
    dev.client.reconnect_delay_set(30, 60)  # a kicked session stays down long enough to be seen
    try:
        new = new_secret()
        assert env.adapter.rotate({"gate-0001": new}) == {}
        wait_until(lambda: dev.disconnects >= 1, 10, what="the session on the old secret dropped")
        assert env.login("gate-0001", old) == 5 and env.login("gate-0001", new) == 0
        assert env.adapter.set_enabled(["gate-0001"], False) == {}
        assert env.login("gate-0001", new) == 5
        assert env.adapter.verify(["gate-0001"], device_secrets={"gate-0001": new}, disabled=["gate-0001"]) == {
            "gate-0001": ""
        }
        assert env.adapter.set_enabled(["gate-0001"], True) == {}
        assert env.login("gate-0001", new) == 0  # enabled again with the same secret
        assert env.adapter.remove(["gate-0001"]) == {}
        assert env.login("gate-0001", new) == 5
        assert env.adapter.verify_removed(["gate-0001", "gate-0002"]) == {
            "gate-0002": "still in the broker's device file"
        }
        assert env.adapter.rotate({"gate-0001": new_secret()}) == {"gate-0001": "missing on the broker"}
        assert env.adapter.add({"admin": new_secret()}) == {"admin": "the name of a built-in broker account"}
    finally:
        dev.close()


@pytest.mark.integration
def test_a_broker_that_does_not_reload_is_an_error_not_a_hang(env: Env) -> None:
    adapter = PasswdFileAdapter(
        env.cfg.passwd_path, host="127.0.0.1", port=env.cfg.device_listener_port, reload=lambda: None, timeout=1.0
    )
    with pytest.raises(BrokerUnavailable, match="did not load"):
        adapter.add({"gate-0001": new_secret()})


@pytest.mark.integration
def test_a_legacy_dynsec_identity_is_replaced_not_shadowing(env: Env) -> None:
    legacy = DynsecAdapter(env.dynsec)
    old = new_secret()
    assert legacy.add({"gate-0001": old}) == {}
    dev = Device(env.cfg.port, "gate-0001", old)  # dynsec binds the client id: the device's own one
    dev.close()
    new = new_secret()
    assert env.adapter.add({"gate-0001": new}) == {}  # reprovision: the dynsec client goes, the file decides
    assert env.login("gate-0001", old) == 5 and env.login("gate-0001", new) == 0
    assert env.dynsec.get_client("gate-0001") is None
    (on_platform,) = login_codes("127.0.0.1", env.cfg.port, [("gate-0001", old)])
    assert on_platform == 5  # the legacy identity is gone from the platform listener too


@pytest.mark.integration
def test_the_device_listener_binds_the_client_id_to_the_username(env: Env) -> None:
    """PROTOCOL.md: no device can use another's client id. dynsec refuses a foreign one at CONNECT; the device
    listener replaces it with the username, so gate-0002 claiming 'gate-0001' does not take gate-0001's session.
    Device accounts are unknown on the platform listener, platform accounts unknown on the device listener."""
    secrets = {"gate-0001": new_secret(), "gate-0002": new_secret()}
    assert env.adapter.add(secrets) == {}
    owner = Device(env.cfg.device_listener_port, "gate-0001", secrets["gate-0001"])
    intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gate-0001", protocol=mqtt.MQTTv5)
    intruder.username_pw_set("gate-0002", secrets["gate-0002"])
    try:
        intruder.connect("127.0.0.1", env.cfg.device_listener_port)
        intruder.loop_start()
        wait_until(intruder.is_connected, 10, what="gate-0002 connected")
        time.sleep(1.0)
        assert owner.disconnects == 0 and owner.client.is_connected()
        assert owner.publish_code("lf/v1/gate-0001/telemetry") < 128
        (device_on_platform,) = login_codes("127.0.0.1", env.cfg.port, [("gate-0001", secrets["gate-0001"])])
        (platform_on_devices,) = login_codes(
            "127.0.0.1", env.cfg.device_listener_port, [(env.cfg.platform_username, env.cfg.platform_password)]
        )
        assert device_on_platform == 5 and platform_on_devices == 5
    finally:
        intruder.disconnect()
        intruder.loop_stop()
        owner.close()


# --- the Provisioner on the password file ----------------------------------------------------------------------


def _registry(tmp_path: Path, ids: list[str]) -> Registry:
    from core.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path}/registry.db")
    migrate(engine)
    reg = Registry(engine)
    reg.upsert_regions([RegionSpec("gd", "广东省", "province")], now=NOW)
    reg.add_devices([DeviceSpec(i, "gate", "gd") for i in ids], now=NOW)
    return reg


@pytest.mark.integration
def test_provisioner_through_the_passwd_adapter(env: Env, tmp_path: Path) -> None:
    ids = [f"gate-{i:04d}" for i in range(40)]
    reg = _registry(tmp_path, ids)
    prov = Provisioner(reg, env.dynsec, actor=ACTOR, adapter=env.adapter)
    out = prov.provision_new(ids, NOW)
    assert sorted(out) == ids and prov.provision_new(ids, NOW) == {}
    assert env.login("gate-0007", out["gate-0007"]) == 0
    report = prov.check("gate-0007", out["gate-0007"], host="127.0.0.1", port=env.cfg.device_listener_port, now=NOW)
    assert report.ok, [p for p in report.probes if not p.ok]
    assert any(p.action == "receive" and p.topic == "#" for p in report.probes)
    rotated = prov.rotate("gate-0001", NOW)
    assert env.login("gate-0001", out["gate-0001"]) == 5 and env.login("gate-0001", rotated) == 0
    prov.disable("gate-0002", NOW)
    assert env.login("gate-0002", out["gate-0002"]) == 5
    prov.enable("gate-0002", NOW)
    assert env.login("gate-0002", out["gate-0002"]) == 0
    prov.delete("gate-0003", NOW)
    assert env.login("gate-0003", out["gate-0003"]) == 5
    # drift: an orphan on the broker, a disabled state the broker does not have
    assert env.adapter.add({"orphan-0001": new_secret()}) == {}
    reg.set_enabled("gate-0004", False, now=NOW)
    report2 = prov.reconcile(NOW)
    kinds = {(d.device_id, d.kind) for d in report2.drift if d.fixed}
    assert kinds == {("orphan-0001", "orphan_on_broker"), ("gate-0004", "enabled_mismatch")}
    assert env.login("gate-0004", out["gate-0004"]) == 5 and "orphan-0001" not in env.adapter.list()
    assert [d for d in prov.reconcile(NOW).drift if d.kind != "unprovisioned"] == []
    reg.engine.dispose()


@pytest.mark.integration
def test_the_cli_picks_the_password_file_of_the_embedded_broker(env: Env, tmp_path: Path) -> None:
    from pydantic import SecretStr

    from core.settings import MqttSettings, Settings
    from devices.broker_adapter_passwd import adapter_for

    embedded = Settings(
        mqtt=MqttSettings(
            port=env.cfg.port,
            broker_dir=env.cfg.directory,
            embedded_broker=True,
            device_identities="password_file",
            device_port=env.cfg.device_port,
        )
    )
    adapter = adapter_for(embedded, env.dynsec)
    assert isinstance(adapter, PasswdFileAdapter)
    secret = new_secret()
    assert adapter.add({"gate-0001": secret}) == {}  # signals the running broker through its pid file
    assert env.login("gate-0001", secret) == 0
    external = Settings(mqtt=MqttSettings(port=env.cfg.port, admin_password=SecretStr("x"), embedded_broker=False))
    assert adapter_for(external, env.dynsec) is None
    env.process.stop()
    adapter.dynsec = None  # (with it, the dynsec request fails first, also as BrokerUnavailable)
    with pytest.raises(BrokerUnavailable, match="not running"):
        adapter.add({"gate-0002": new_secret()})


@pytest.mark.integration
def test_a_broker_started_with_a_relative_directory_is_found_and_reloaded(tmp_path: Path) -> None:
    import os

    env = Env(Path(os.path.relpath(tmp_path / "relative")))  # serve's default broker_dir is relative (var/mosquitto)
    try:
        secret = new_secret()
        assert env.adapter.add({"gate-0001": secret}) == {}
        assert env.login("gate-0001", secret) == 0
    finally:
        env.close()


@pytest.mark.integration
def test_a_fleet_created_in_dynsec_by_an_older_version_works_on_the_default(env: Env, tmp_path: Path) -> None:
    """Upgrading to the password file (the default since session 6): devices an older version created in dynsec
    keep their secrets and the platform port; reconcile sees no drift, check/disable/enable work on them in dynsec,
    rotation moves one into the file (device port), removal deletes its dynsec client and role."""
    ids = ["gate-0001", "gate-0002", "gate-0003"]
    reg = _registry(tmp_path, ids)
    old = Provisioner(reg, env.dynsec, actor=ACTOR).provision_new(ids, NOW)  # what the older version did
    assert sorted(old) == ids and env.adapter.read() == {}
    prov = Provisioner(reg, env.dynsec, actor=ACTOR, adapter=env.adapter)

    def on_platform(device_id: str, secret: str) -> int:
        """CONNACK of the device on the platform's listener, with its own client id (dynsec binds it); paho
        reports a refusal as the v5 code (135)."""
        codes: list[int] = []
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv311)
        client.username_pw_set(device_id, secret)
        client.on_connect = lambda _c, _u, _f, rc, _p: codes.append(rc.value)
        client.connect("127.0.0.1", env.cfg.port)
        client.loop_start()
        try:
            wait_until(lambda: codes, 10, what=f"CONNACK of {device_id}")
        finally:
            client.disconnect()
            client.loop_stop()
        return codes[0]

    dev = Device(env.cfg.port, "gate-0001", old["gate-0001"])  # still connects where it always did
    try:
        assert dev.publish_code("lf/v1/gate-0001/telemetry") < 128
        assert dev.publish_code("lf/v1/gate-0002/telemetry") == NOT_AUTHORIZED
    finally:
        dev.close()
    assert env.adapter.login_port("gate-0001") == env.cfg.port
    assert prov.reconcile(NOW).drift == []
    report = prov.check("gate-0001", old["gate-0001"], host="127.0.0.1", port=env.cfg.port, now=NOW)
    assert report.ok, [p for p in report.probes if not p.ok]

    prov.disable("gate-0002", NOW)  # in dynsec: its secret is not known here, it cannot move
    assert on_platform("gate-0002", old["gate-0002"]) == NOT_AUTHORIZED and reg.device("gate-0002").enabled is False  # type: ignore[union-attr]
    assert [(d.device_id, d.kind) for d in prov.reconcile(NOW).drift] == []
    prov.enable("gate-0002", NOW)
    assert on_platform("gate-0002", old["gate-0002"]) == 0

    new = prov.rotate("gate-0001", NOW)  # moves into the file: the device listener, the new secret
    assert env.login("gate-0001", new) == 0 and on_platform("gate-0001", old["gate-0001"]) == NOT_AUTHORIZED
    assert env.dynsec.get_client("gate-0001") is None and env.adapter.login_port("gate-0001") == env.cfg.device_port
    assert env.adapter.read()["gate-0001"].enabled

    prov.delete("gate-0003", NOW)
    assert env.dynsec.get_client("gate-0003") is None and on_platform("gate-0003", old["gate-0003"]) == NOT_AUTHORIZED
    assert {d: i.enabled for d, i in env.adapter.list().items()} == {"gate-0001": True, "gate-0002": True}
    assert [(d.device_id, d.kind) for d in prov.reconcile(NOW).drift] == [("gate-0003", "unprovisioned")]
    reg.engine.dispose()
