"""Device credentials end to end against a real Mosquitto with the dynamic-security plugin."""

from __future__ import annotations

import json
import stat
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import select

from core.errors import UserError
from devices.audit import Actor, AuditRecord
from devices.dynsec import DynsecClient, role_name
from devices.provisioning import (
    NOT_AUTHORIZED,
    DeviceCredential,
    Provisioner,
    ProvisioningError,
    SecretHasher,
    device_secret_ok,
    installer_config,
    read_secret_file,
    verify_secret,
    write_secrets_file,
)
from devices.registry import DeviceSpec, RegionSpec, Registry
from tests.conftest import Broker
from tests.helpers import mqtt_client, wait_until

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
ACTOR = Actor("installer-wang", "cli@test-host")


def seed(registry: Registry, ids: list[str]) -> None:
    registry.upsert_regions([RegionSpec("gd", "广东省", "province"), RegionSpec("gz", "广州市", "city", "gd")], now=NOW)
    registry.add_devices([DeviceSpec(i, "gate", "gz") for i in ids], now=NOW)


@pytest.fixture
def admin(broker: Broker) -> Iterator[DynsecClient]:
    with DynsecClient("127.0.0.1", broker.port, broker.admin_password, timeout=10) as client:
        yield client


@pytest.fixture
def prov(sqlite_registry: Registry, admin: DynsecClient) -> Provisioner:
    seed(sqlite_registry, ["gate-0001", "gate-0002", "gate-0003"])
    return Provisioner(sqlite_registry, admin, actor=ACTOR, validity=timedelta(days=90))


class Device:
    """A device session that records what the broker tells it."""

    def __init__(self, port: int, username: str | None, password: str | None, client_id: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.lock = threading.Lock()
        self.connack: int | None = None
        self.disconnected = False
        self.acks: dict[int, int] = {}
        self.received: list[tuple[str, bytes]] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc.value)
        self.client.on_subscribe = lambda _c, _u, mid, rcs, _p: self.acks.__setitem__(mid, rcs[0].value)
        self.client.on_message = lambda _c, _u, m: self.received.append((m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(lambda: self.connack is not None, 5, what="CONNACK")

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.connack = rc.value
        if rc.is_failure:
            self.client.disconnect()  # no automatic retries in tests

    def _on_disconnect(self, _c: object, _u: object, _f: object, _rc: object, _p: object) -> None:
        self.disconnected = True

    def publish(self, topic: str, payload: bytes = b"{}") -> int:
        info = self.client.publish(topic, payload, qos=1)
        return int(wait_until(lambda: self.acks.get(info.mid, -1) + 1, 5, what=f"PUBACK {topic}")) - 1

    def subscribe(self, topic: str) -> int:
        _r, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        return int(wait_until(lambda: self.acks.get(mid, -1) + 1, 5, what=f"SUBACK {topic}")) - 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connack(port: int, username: str | None, password: str | None, client_id: str) -> int:
    d = Device(port, username, password, client_id)
    d.close()
    assert d.connack is not None
    return d.connack


# --- secrets ---------------------------------------------------------------------------------------------------


def test_secret_hash_verifies_only_the_right_secret() -> None:
    hasher = SecretHasher()
    stored = hasher.hash("s3cret-" + "x" * 40)
    assert stored.startswith(f"scrypt${hasher.n}$8$1$") and "x" * 10 not in stored
    assert verify_secret("s3cret-" + "x" * 40, stored)
    assert not verify_secret("s3cret-" + "x" * 39 + "y", stored)
    assert not verify_secret("anything", "garbage")
    assert hasher.hash("same") != hasher.hash("same")  # salted


def test_secrets_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets.csv"
    path.write_text("old")
    path.chmod(0o644)
    write_secrets_file(path, {"gate-0001": "abc", "gate-0002": "def"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_secret_file(path, "gate-0002") == "def"
    with pytest.raises(UserError, match="no secret for device gate-0003"):
        read_secret_file(path, "gate-0003")


def test_installer_config_names_topics_and_hides_secret() -> None:
    cfg = installer_config("gate-0001", host="10.0.0.5", port=1883, tls_port=8883)
    assert cfg["client_id"] == cfg["username"] == "gate-0001"
    assert cfg["publish"]["telemetry"]["topic"] == "lf/v1/gate-0001/telemetry"
    assert cfg["last_will"] == {
        "topic": "lf/v1/gate-0001/status",
        "payload": '{"state":"offline"}',
        "qos": 1,
        "retain": True,
    }
    assert "not stored" in cfg["password"]
    assert installer_config("gate-0001", host="h", port=1, tls_port=None, secret="S")["password"] == "S"


# --- the broker enforces PROTOCOL.md ------------------------------------------------------------------------------


@pytest.mark.integration
def test_device_publishes_own_topics_and_nothing_else(prov: Provisioner, broker: Broker) -> None:
    secrets_ = prov.provision_new(["gate-0001", "gate-0002"], NOW)
    assert len(secrets_["gate-0001"]) >= 43  # 32 random bytes, url-safe base64
    platform = mqtt_client(broker.port, broker.platform_username, broker.platform_password, "platform-test")
    got: list[str] = []
    platform.on_message = lambda _c, _u, m: got.append(m.topic)
    platform.subscribe("lf/v1/#", qos=1)
    admin_sub = mqtt_client(broker.port, "admin", broker.admin_password, "admin-watch")
    control: list[bytes] = []
    admin_sub.on_message = lambda _c, _u, m: control.append(bytes(m.payload))
    admin_sub.subscribe("$CONTROL/dynamic-security/v1", qos=1)
    dev = Device(broker.port, "gate-0001", secrets_["gate-0001"], "gate-0001")
    try:
        assert dev.connack == 0
        for bad in ("lf/v1/gate-0002/telemetry", "lf/v1/gate-0002/status", "lf/v1/gate-0001/cmd"):
            assert dev.publish(bad) == NOT_AUTHORIZED, bad
        assert dev.publish("$CONTROL/dynamic-security/v1", b'{"commands":[{"command":"listClients"}]}') == 135
        assert dev.publish("$SYS/broker/uptime") == NOT_AUTHORIZED
        for good in ("telemetry", "event", "status"):
            assert dev.publish(f"lf/v1/gate-0001/{good}") == 0
        wait_until(lambda: len(got) >= 3, 5, what="own messages at the platform")
        assert sorted(got) == ["lf/v1/gate-0001/event", "lf/v1/gate-0001/status", "lf/v1/gate-0001/telemetry"]
        assert control == []  # the forged dynsec command never reached $CONTROL
    finally:
        dev.close()
        platform.loop_stop()
        platform.disconnect()
        admin_sub.loop_stop()
        admin_sub.disconnect()


@pytest.mark.integration
def test_device_subscribes_only_its_own_cmd(prov: Provisioner, broker: Broker) -> None:
    secret = prov.provision_new(["gate-0001"], NOW)["gate-0001"]
    dev = Device(broker.port, "gate-0001", secret, "gate-0001")
    platform = mqtt_client(broker.port, broker.platform_username, broker.platform_password, "platform-cmd")
    try:
        for bad in ("#", "lf/v1/gate-0002/cmd", "lf/v1/+/cmd", "lf/v1/+/telemetry", "$SYS/#", "$CONTROL/#"):
            assert dev.subscribe(bad) == NOT_AUTHORIZED, bad
        assert dev.subscribe("lf/v1/gate-0001/cmd") == 1  # granted QoS 1
        platform.publish("lf/v1/gate-0002/cmd", b'{"name":"unlock"}', qos=1)
        platform.publish("lf/v1/gate-0001/cmd", b'{"name":"reboot"}', qos=1)
        wait_until(lambda: dev.received, 5, what="own command")
        assert dev.received == [("lf/v1/gate-0001/cmd", b'{"name":"reboot"}')]
    finally:
        dev.close()
        platform.loop_stop()
        platform.disconnect()


@pytest.mark.integration
def test_anonymous_wrong_password_and_foreign_client_id_are_refused(prov: Provisioner, broker: Broker) -> None:
    secrets_ = prov.provision_new(["gate-0001", "gate-0002"], NOW)
    assert connack(broker.port, None, None, "gate-0001") == NOT_AUTHORIZED
    assert connack(broker.port, "gate-0001", secrets_["gate-0002"], "gate-0001") == NOT_AUTHORIZED
    assert connack(broker.port, "gate-0001", secrets_["gate-0001"], "gate-0002") == NOT_AUTHORIZED
    assert connack(broker.port, "gate-0001", secrets_["gate-0001"], "gate-0001") == 0


# --- lifecycle ---------------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("action", ["rotate", "disable", "delete"])
def test_connected_device_is_kicked_and_old_secret_refused(prov: Provisioner, broker: Broker, action: str) -> None:
    old = prov.provision_new(["gate-0001"], NOW)["gate-0001"]
    dev = Device(broker.port, "gate-0001", old, "gate-0001")
    assert dev.connack == 0
    try:
        later = NOW + timedelta(days=1)
        new = prov.rotate("gate-0001", later) if action == "rotate" else None
        if action == "disable":
            prov.disable("gate-0001", later)
        if action == "delete":
            prov.delete("gate-0001", later)
        wait_until(lambda: dev.disconnected, 5, what="device kicked")
    finally:
        dev.close()
    assert connack(broker.port, "gate-0001", old, "gate-0001") == NOT_AUTHORIZED
    device = prov.registry.device("gate-0001")
    assert device is not None  # the registry row (history) stays in every case
    cred = prov.credential("gate-0001")
    if action == "rotate":
        assert new is not None and new != old
        assert connack(broker.port, "gate-0001", new, "gate-0001") == 0
        assert cred is not None and cred.rotated_at is not None and verify_secret(new, cred.secret_hash)
        assert not verify_secret(old, cred.secret_hash)
    if action == "disable":
        assert not device.enabled and cred is not None
        prov.enable("gate-0001", later)
        assert connack(broker.port, "gate-0001", old, "gate-0001") == 0
        assert prov.registry.device("gate-0001").enabled  # type: ignore[union-attr]
    if action == "delete":
        assert cred is None and not device.enabled
        assert prov.dynsec.get_client("gate-0001") is None
        assert prov.dynsec.get_role(role_name("gate-0001")) is None
    actions = [r.action for r in prov.audit.records(target="gate-0001")]
    assert actions[::-1] == ["provision", action] + (["enable"] if action == "disable" else [])


@pytest.mark.integration
def test_reprovision_keeps_registry_row_and_issues_new_secret(prov: Provisioner, broker: Broker) -> None:
    old = prov.provision_new(["gate-0003"], NOW)["gate-0003"]
    created = prov.registry.device("gate-0003").created_at  # type: ignore[union-attr]
    new = prov.reprovision("gate-0003", NOW + timedelta(days=3))
    assert new != old
    assert connack(broker.port, "gate-0003", old, "gate-0003") == NOT_AUTHORIZED
    assert connack(broker.port, "gate-0003", new, "gate-0003") == 0
    assert prov.registry.device("gate-0003").created_at == created  # type: ignore[union-attr]
    cred = prov.credential("gate-0003")
    assert cred is not None and cred.created_at.replace(tzinfo=UTC) == NOW and cred.rotated_at is not None
    # After a delete (identity gone on the broker), reprovision brings it back.
    prov.delete("gate-0003", NOW)
    prov.registry.set_enabled("gate-0003", True, now=NOW)
    again = prov.reprovision("gate-0003", NOW + timedelta(days=4))
    assert connack(broker.port, "gate-0003", again, "gate-0003") == 0


@pytest.mark.integration
def test_create_refuses_a_device_that_already_has_credentials(prov: Provisioner) -> None:
    prov.create("gate-0001", NOW)
    with pytest.raises(UserError, match="already has a credential"):
        prov.create("gate-0001", NOW)
    with pytest.raises(UserError, match="does not exist"):
        prov.rotate("gate-9999", NOW)


# --- bulk ------------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_bulk_provision_300_verified_and_idempotent(sqlite_registry: Registry, admin: DynsecClient) -> None:
    ids = [f"meter-{i:04d}" for i in range(300)]
    seed(sqlite_registry, ids)
    prov = Provisioner(sqlite_registry, admin, actor=ACTOR, validity=None)
    ticks: list[tuple[str, int, int]] = []
    prov._progress = lambda what, done, total: ticks.append((what, done, total))
    out = prov.provision_new(ids, NOW)
    assert sorted(out) == ids and len(set(out.values())) == 300
    names = {c["username"]: c for c in admin.list_clients()}
    assert all(names[i]["clientid"] == i for i in ids)
    assert ticks[-1][0] == "broker" and ticks[-1][1] == ticks[-1][2]
    with sqlite_registry.session() as s:
        hashes = {c.device_id: c.secret_hash for c in s.scalars(select(DeviceCredential))}
        audit = list(s.scalars(select(AuditRecord).where(AuditRecord.action == "provision")))
    assert verify_secret(out["meter-0123"], hashes["meter-0123"])
    assert device_secret_ok(sqlite_registry, "meter-0123", out["meter-0123"])
    assert not device_secret_ok(sqlite_registry, "meter-0123", out["meter-0124"])
    assert not device_secret_ok(sqlite_registry, "meter-9999", out["meter-0123"])
    sqlite_registry.set_enabled("meter-0123", False, now=NOW)
    assert not device_secret_ok(sqlite_registry, "meter-0123", out["meter-0123"])
    assert len(audit) == 300 and {a.actor for a in audit} == {"installer-wang"}
    assert prov.provision_new(ids, NOW) == {}  # second run: nothing to do, nothing changed
    assert verify_secret(out["meter-0123"], prov.credential("meter-0123").secret_hash)  # type: ignore[union-attr]


@pytest.mark.integration
def test_bulk_provision_names_every_id_that_did_not_make_it(prov: Provisioner, broker: Broker) -> None:
    with pytest.raises(ProvisioningError) as info:
        prov.provision_new(["gate-0001", "ghost-0001", "gate-0002", "ghost-0002"], NOW)
    assert sorted(info.value.failed) == ["ghost-0001", "ghost-0002"]
    assert sorted(info.value.provisioned) == ["gate-0001", "gate-0002"]
    secret = info.value.provisioned["gate-0002"]
    assert connack(broker.port, "gate-0002", secret, "gate-0002") == 0
    assert prov.credential("gate-0001") is not None


@pytest.mark.integration
def test_rerun_after_interruption_takes_over_broker_identity(prov: Provisioner, broker: Broker) -> None:
    """Broker identity created but the registry write never happened (crash): a re-run issues a new secret."""
    prov.dynsec.call({"command": "createClient", "username": "gate-0002", "password": "lost-" + "x" * 40})
    out = prov.provision_new(["gate-0002"], NOW)
    assert connack(broker.port, "gate-0002", "lost-" + "x" * 40, "gate-0002") == NOT_AUTHORIZED
    assert connack(broker.port, "gate-0002", out["gate-0002"], "gate-0002") == 0


@pytest.mark.integration
def test_offline_bulk_merge_into_owned_broker(sqlite_registry: Registry, broker: Broker) -> None:
    ids = [f"car-{i:04d}" for i in range(60)]
    seed(sqlite_registry, ids)
    with DynsecClient("127.0.0.1", broker.port, broker.admin_password, timeout=10) as admin:
        prov = Provisioner(sqlite_registry, admin, actor=ACTOR, process=broker.process, offline_threshold=50)
        out = prov.provision_new(ids, NOW)
        assert len(out) == 60
        assert admin.get_client("car-0059") is not None  # reconnected after the restart
    assert connack(broker.port, "car-0007", out["car-0007"], "car-0007") == 0
    assert connack(broker.port, "car-0007", out["car-0008"], "car-0007") == NOT_AUTHORIZED
    doc = json.loads(broker.process.cfg.dynsec_path.read_text())
    assert out["car-0007"] not in json.dumps(doc)  # the broker keeps only its PBKDF2 hash


# --- reconcile, expiry, check, audit --------------------------------------------------------------------------------


@pytest.mark.integration
def test_reconcile_fixes_drift_and_is_idempotent(prov: Provisioner, broker: Broker) -> None:
    out = prov.provision_new(["gate-0001", "gate-0002", "gate-0003"], NOW)
    admin = prov.dynsec
    admin.call({"command": "deleteClient", "username": "gate-0001"})  # lost in a broker restore
    admin.call({"command": "removeRoleACL", "rolename": role_name("gate-0002"), "acltype": "subscribePattern",
                "topic": "lf/v1/gate-0002/cmd"})  # fmt: skip
    admin.call({"command": "addRoleACL", "rolename": role_name("gate-0002"), "acltype": "publishClientSend",
                "topic": "lf/v1/#", "allow": True})  # fmt: skip
    admin.call({"command": "disableClient", "username": "gate-0003"})
    admin.call({"command": "createRole", "rolename": role_name("gate-0099")})
    admin.call({"command": "createClient", "username": "gate-0099", "password": "x" * 40,
                "roles": [{"rolename": role_name("gate-0099")}]})  # fmt: skip

    dry = prov.reconcile(NOW, fix=False)
    kinds = {(d.device_id, d.kind) for d in dry.drift}
    assert kinds == {
        ("gate-0001", "missing_on_broker"),
        ("gate-0002", "wrong_on_broker"),
        ("gate-0003", "enabled_mismatch"),
        ("gate-0099", "orphan_on_broker"),
    }
    assert dry.changes == 0 and admin.get_client("gate-0099") is not None

    first = prov.reconcile(NOW)
    assert first.changes == 3 and first.new_secrets == {}
    assert [d.device_id for d in first.drift if not d.fixed] == ["gate-0001"]  # reported, not re-created
    assert admin.get_client("gate-0099") is None
    assert connack(broker.port, "gate-0003", out["gate-0003"], "gate-0003") == 0
    dev = Device(broker.port, "gate-0002", out["gate-0002"], "gate-0002")
    try:
        assert dev.publish("lf/v1/gate-0009/telemetry") == NOT_AUTHORIZED
        assert dev.subscribe("lf/v1/gate-0002/cmd") == 1
    finally:
        dev.close()

    fixed = prov.reconcile(NOW, reprovision_missing=True)
    assert [(d.device_id, d.fixed) for d in fixed.drift] == [("gate-0001", True)]
    assert connack(broker.port, "gate-0001", fixed.new_secrets["gate-0001"], "gate-0001") == 0
    assert connack(broker.port, "gate-0001", out["gate-0001"], "gate-0001") == NOT_AUTHORIZED

    again = prov.reconcile(NOW, reprovision_missing=True)
    assert again.drift == [] and again.changes == 0


@pytest.mark.integration
def test_reconcile_reports_unprovisioned_devices(prov: Provisioner) -> None:
    prov.provision_new(["gate-0001"], NOW)
    report = prov.reconcile(NOW)
    assert [(d.device_id, d.kind) for d in report.drift] == [
        ("gate-0002", "unprovisioned"),
        ("gate-0003", "unprovisioned"),
    ]
    assert report.changes == 0


@pytest.mark.integration
def test_expiring_lists_credentials_due_within_the_window(prov: Provisioner) -> None:
    prov.provision_new(["gate-0001"], NOW)  # expires NOW + 90 d
    prov.provision_new(["gate-0002"], NOW + timedelta(days=30))  # expires NOW + 120 d
    assert prov.expiring(NOW, timedelta(days=89)) == []
    due = prov.expiring(NOW + timedelta(days=80), timedelta(days=14))
    assert [(e.device_id, e.expires_at.replace(tzinfo=UTC)) for e in due] == [("gate-0001", NOW + timedelta(90))]
    assert [e.device_id for e in prov.expiring(NOW + timedelta(days=200), timedelta(0))] == ["gate-0001", "gate-0002"]


@pytest.mark.integration
def test_check_proves_rights_and_detects_a_bad_secret(prov: Provisioner, broker: Broker) -> None:
    secret = prov.provision_new(["gate-0001"], NOW)["gate-0001"]
    report = prov.check("gate-0001", secret, host="127.0.0.1", port=broker.port, now=NOW)
    assert report.ok, [p for p in report.probes if not p.ok]
    refused = {p.topic for p in report.probes if not p.allowed}
    assert {"#", "$SYS/#", "lf/v1/gate-0001/cmd", "$CONTROL/dynamic-security/v1"} <= refused
    assert {p.topic for p in report.probes if p.allowed} == {
        "(client id gate-0001)",
        "lf/v1/gate-0001/telemetry",
        "lf/v1/gate-0001/event",
        "lf/v1/gate-0001/status",
        "lf/v1/gate-0001/cmd",
    }
    bad = prov.check("gate-0001", "wrong-" + uuid.uuid4().hex, host="127.0.0.1", port=broker.port, now=NOW)
    assert not bad.ok and bad.probes[-1].reason == "Not authorized (135)"
    # A broker whose role is too generous fails the check.
    prov.dynsec.call({"command": "addRoleACL", "rolename": role_name("gate-0001"), "acltype": "subscribePattern",
                      "topic": "#", "allow": True})  # fmt: skip
    loose = prov.check("gate-0001", secret, host="127.0.0.1", port=broker.port, now=NOW)
    assert not loose.ok
    assert {p.topic for p in loose.probes if not p.ok} == {
        "#",
        "lf/v1/lf-check-other/cmd",
        "lf/v1/+/cmd",
        "$SYS/#",
        "$CONTROL/#",
    }


@pytest.mark.integration
def test_audit_records_who_what_where_but_never_the_secret(prov: Provisioner) -> None:
    secret = prov.provision_new(["gate-0001"], NOW)["gate-0001"]
    new = prov.rotate("gate-0001", NOW)
    with prov.registry.session() as s:
        rows = list(s.scalars(select(AuditRecord)))
    assert [(r.action, r.target, r.actor, r.origin) for r in rows] == [
        ("provision", "gate-0001", "installer-wang", "cli@test-host"),
        ("rotate", "gate-0001", "installer-wang", "cli@test-host"),
    ]
    dump = json.dumps([[r.detail, r.action, r.target, r.outcome] for r in rows])
    assert secret not in dump and new not in dump


@pytest.mark.integration
def test_provisioning_on_postgresql_and_sqlite(registry: Registry, admin: DynsecClient, broker: Broker) -> None:
    seed(registry, ["gate-0001", "gate-0002"])
    prov = Provisioner(registry, admin, actor=ACTOR)
    out = prov.provision_new(["gate-0001", "gate-0002"], NOW)
    assert connack(broker.port, "gate-0002", out["gate-0002"], "gate-0002") == 0
    assert prov.reconcile(NOW).drift == []
    assert [e.device_id for e in prov.expiring(NOW, timedelta(days=400))] == ["gate-0001", "gate-0002"]
