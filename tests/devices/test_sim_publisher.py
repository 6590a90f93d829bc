"""The simulator's MQTT publisher against a real Mosquitto (the `broker` fixture)."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from typer.testing import CliRunner

from core.db import make_engine, migrate
from core.errors import BrokerUnavailable
from core.protocol import DeviceInfo, Status, decode
from devices.dynsec import device_acls
from devices.registry import DeviceSpec, RegionSpec, Registry
from devices.sim_publisher import DevicePublisher, SharedPublisher, publish_bulk
from devices.simulator import BEIJING, Fleet, Incident, SimMessage, synthetic_fleet
from lianfang import commands  # noqa: F401  (registers the commands)
from lianfang.cli import app
from tests.conftest import Broker
from tests.helpers import mqtt_client, wait_until

pytestmark = pytest.mark.integration


class Collector:
    """A platform-account subscriber on lf/v1/# (QoS 1) that records what arrives."""

    def __init__(self, broker: Broker) -> None:
        self.lock = threading.Lock()
        self.seqs: dict[str, set[int]] = {}
        self.received = 0
        self.status: dict[str, list[tuple[bytes, bool]]] = {}
        self.client = mqtt_client(
            broker.port, broker.platform_username, broker.platform_password, "collector-" + uuid.uuid4().hex[:8]
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.subscribe("lf/v1/#", qos=1)
        assert subscribed.wait(5)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        device, kind = msg.topic.split("/")[2:4]
        with self.lock:
            self.received += 1
            if kind == "status":
                self.status.setdefault(device, []).append((bytes(msg.payload), bool(msg.retain)))
                return
            seq = json.loads(msg.payload)["seq"]
            self.seqs.setdefault(device, set()).add(seq)

    def distinct(self) -> int:
        with self.lock:
            return sum(len(s) for s in self.seqs.values())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collector(broker: Broker) -> Iterator[Collector]:
    c = Collector(broker)
    yield c
    c.close()


def _messages(n: int, devices: int = 100) -> list[SimMessage]:
    base = 1_780_000_000_000
    out = []
    for i in range(n):
        device, seq = f"bulk-{i % devices:04d}", i // devices
        payload = json.dumps({"ts": base + i, "seq": seq, "energy_kwh": float(i)}).encode()
        out.append(SimMessage(device, "telemetry", payload, base + i, seq))
    return out


def test_publish_bulk_more_than_65535_qos1_messages_loses_none(broker: Broker, collector: Collector) -> None:
    n = 66_000  # past paho's 65,535 message ids
    messages = _messages(n)
    counts = publish_bulk(
        messages, host="127.0.0.1", port=broker.port, username="lianfang-sim", password=broker.sim_password
    )
    assert (counts.published, counts.acked, counts.rejected) == (n, n, 0)
    wait_until(lambda: collector.distinct() >= n, timeout=120, what="every message at the subscriber")
    assert collector.distinct() == n
    assert all(collector.seqs[f"bulk-{d:04d}"] == set(range(n // 100)) for d in range(100))
    assert collector.received == n  # and nothing twice


def test_shared_publisher_bounds_unacked_publishes(broker: Broker, collector: Collector) -> None:
    pub = SharedPublisher("127.0.0.1", broker.port, "lianfang-sim", broker.sim_password, max_outstanding=50)
    pub.start()
    peak = 0
    try:
        for msg in _messages(3_000, devices=10):
            pub.publish(msg)
            peak = max(peak, pub.counts.pending)
        assert pub.flush(10)
    finally:
        pub.close()
    assert peak <= 50
    assert pub.counts.acked == 3_000
    wait_until(lambda: collector.distinct() == 3_000, timeout=10, what="3000 at the subscriber")


def test_shared_publisher_counts_a_puback_refusal(broker: Broker) -> None:
    pub = SharedPublisher("127.0.0.1", broker.port, "lianfang-sim", broker.sim_password)
    pub.start()
    try:
        pub.publish(SimMessage("gate-0001", "cmd", b'{"cmd_id":"x","name":"reboot"}', 0))  # not in the sim role
        pub.publish(SimMessage("gate-0001", "telemetry", b'{"door_open":false}', 0))
        assert pub.flush(5)
    finally:
        pub.close()
    assert (pub.counts.acked, pub.counts.rejected) == (1, 1)


def test_shared_publisher_wrong_password_is_broker_unavailable(broker: Broker) -> None:
    pub = SharedPublisher("127.0.0.1", broker.port, "lianfang-sim", "wrong", connect_timeout_s=5)
    with pytest.raises(BrokerUnavailable, match="refused"):
        pub.start()


def test_shared_publisher_reconnects_after_broker_restart(broker: Broker) -> None:
    pub = SharedPublisher("127.0.0.1", broker.port, "lianfang-sim", broker.sim_password, reconnect_min_s=1)
    pub.start()
    try:
        for msg in _messages(500, devices=5):
            pub.publish(msg)
        assert pub.flush(5)
        broker.restart()
        for msg in _messages(500, devices=5):
            pub.publish(msg)
        assert pub.flush(15)
    finally:
        pub.close()
    assert pub.counts.reconnects >= 1
    assert pub.counts.acked == 1_000


def _provision(broker: Broker, device_ids: list[str]) -> dict[str, str]:
    """Per-device dynsec clients and roles, as the provisioning service will create them."""
    creds = {d: "pw-" + uuid.uuid4().hex for d in device_ids}
    cmds: list[dict[str, object]] = []
    for d in device_ids:
        cmds.append(
            {
                "command": "createRole",
                "rolename": f"dev-{d}",
                "acls": [
                    {"acltype": "publishClientSend", "topic": f"lf/v1/{d}/{k}", "allow": True}
                    for k in ("telemetry", "event", "status")
                ],
            }
        )
        cmds.append(
            {
                "command": "createClient",
                "username": d,
                "clientid": d,
                "password": creds[d],
                "roles": [{"rolename": f"dev-{d}"}],
            }
        )
    admin = mqtt_client(broker.port, "admin", broker.admin_password, "admin-" + uuid.uuid4().hex[:8])
    answers: list[dict[str, object]] = []
    admin.on_message = lambda _c, _u, m: answers.extend(json.loads(m.payload)["responses"])
    admin.subscribe("$CONTROL/dynamic-security/v1/response", qos=1)
    try:
        admin.publish("$CONTROL/dynamic-security/v1", json.dumps({"commands": cmds}), qos=1)
        wait_until(lambda: len(answers) == len(cmds), timeout=20, what="dynsec answers")
    finally:
        admin.disconnect()
        admin.loop_stop()
    assert not [a for a in answers if a.get("error")]
    return creds


def test_device_publisher_connects_each_device_and_its_will_reports_silence(
    broker: Broker, collector: Collector
) -> None:
    devices = [d for d in synthetic_fleet(200, prefix="own") if d.type != "sensor"][:150]
    creds = _provision(broker, [d.id for d in devices])
    start = datetime(2026, 3, 2, 10, 0, tzinfo=BEIJING)
    silent = devices[0].id
    fleet = Fleet(
        devices,
        rng=random.Random(3),
        start=start,
        incidents=[Incident("silent", silent, start.replace(minute=1))],
    )
    pub = DevicePublisher("127.0.0.1", broker.port, creds, connect_timeout_s=30)
    pub.start()
    try:
        assert pub.connected == len(devices)
        messages = fleet.advance(start.replace(minute=2))
        for msg in messages:
            pub.publish(msg)
        assert pub.flush(10)
    finally:
        pub.close()
    data = [m for m in messages if m.kind != "status"]
    assert pub.counts.rejected == 0
    # The Will is sent by the broker, not published by us.
    assert pub.counts.acked == len(messages) - 1
    wait_until(lambda: collector.distinct() == len(data), timeout=10, what="all data at the subscriber")
    wait_until(lambda: len(collector.status.get(silent, [])) == 2, timeout=10, what="the silent device's Will")
    online, offline = collector.status[silent]
    info = DeviceInfo(silent, devices[0].type, devices[0].region_id)
    records, _ = decode("status", offline[0], info, fleet.start_ms)
    assert isinstance(records[0], Status) and records[0].state == "offline"
    assert json.loads(online[0])["state"] == "online"
    # The other devices are still online: their connections closed with a normal DISCONNECT, no Will.
    assert all(len(collector.status[d.id]) == 1 for d in devices[1:])


def test_simulate_command_publishes_the_registry_fleet_and_stops_with_counts(
    broker: Broker, collector: Collector, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path}/registry.db"
    engine = make_engine(db_url)
    migrate(engine)
    registry = Registry(engine)
    now = datetime(2026, 3, 2, 9, 0, tzinfo=BEIJING)
    registry.upsert_regions(
        [
            RegionSpec("gz", "广州市", "city", None, 23.13, 113.26),
            RegionSpec("gz-a01", "市机关事务管理局", "agency", "gz", 23.14, 113.30),
            RegionSpec("gz-a02", "市政府办公厅", "agency", "gz", 23.10, 113.20),
        ],
        now=now,
    )
    registry.add_devices(
        [
            DeviceSpec("gate-gz-0001", "gate", "gz-a01"),
            DeviceSpec("car-gz-0001", "vehicle", "gz-a01"),
            DeviceSpec("meter-gz-0001", "energy_meter", "gz-a02"),
        ],
        now=now,
    )
    engine.dispose()
    env = {
        "LIANFANG_DATABASE_URL": db_url,
        "LIANFANG_MQTT__PORT": str(broker.port),
        "LIANFANG_SIM_PASSWORD": broker.sim_password,
    }
    args = [
        "simulate",
        "--duration",
        "1",
        "--seed",
        "1",
        "--rate-multiplier",
        "60",
        "--incident",
        "silent:car-gz-0001:0",
    ]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("stopped:"))
    published = int(line.split()[1])
    assert published > 3 and f"{published} acknowledged" in line and "0 unacknowledged" in line
    wait_until(lambda: collector.received == published, timeout=10, what="every simulated message")
    assert [json.loads(p)["state"] for p, _ in collector.status["car-gz-0001"]] == ["online", "offline"]
    assert set(collector.status) == {"gate-gz-0001", "car-gz-0001", "meter-gz-0001"}


def test_simulate_command_without_password_exits_1(tmp_path: Path) -> None:
    env = {
        "LIANFANG_DATABASE_URL": f"sqlite:///{tmp_path}/r.db",
        "LIANFANG_SIM_PASSWORD": "",
        # no broker-secrets.json there (in dev simulate reads the password from the data dir)
        "LIANFANG_DATA_DIR": str(tmp_path),
        "LIANFANG_MQTT__BROKER_DIR": str(tmp_path / "mosquitto"),
    }
    result = CliRunner().invoke(app, ["simulate", "--duration", "1"], env=env)
    assert result.exit_code == 1
    assert "LIANFANG_SIM_PASSWORD" in result.output


# --- resend (PROTOCOL.md v1.1) ----------------------------------------------------------------------------------


class CmdPeer:
    """The platform's side of commands: publishes on lf/v1/<id>/cmd, records what comes back on lf/v1/<id>/#."""

    def __init__(self, broker: Broker, device: str) -> None:
        self.lock = threading.Lock()
        self.got: list[tuple[str, bytes]] = []
        self.client = mqtt_client(
            broker.port, broker.platform_username, broker.platform_password, "peer-" + uuid.uuid4().hex[:8]
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.subscribe(f"lf/v1/{device}/+", qos=1)
        assert subscribed.wait(5)
        self.device = device

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((msg.topic.rsplit("/", 1)[1], bytes(msg.payload)))

    def resend(self, a: int, b: int, *, expires_at: object = None, name: str = "resend") -> str:
        cmd_id = str(uuid.uuid4())
        doc = {"cmd_id": cmd_id, "name": name, "args": {"from_seq": a, "to_seq": b}, "expires_at": expires_at}
        if expires_at is None:
            doc["expires_at"] = int(time.time() * 1000) + 60_000
        self.client.publish(f"lf/v1/{self.device}/cmd", json.dumps(doc), qos=1).wait_for_publish(5)
        return cmd_id

    def result(self, cmd_id: str) -> dict[str, object] | None:
        with self.lock:
            for kind, payload in self.got:
                doc = json.loads(payload)
                if kind == "event" and doc.get("type") == "cmd_result" and doc["cmd_id"] == cmd_id:
                    return dict(doc)
        return None

    def data(self) -> list[bytes]:
        with self.lock:
            return [p for k, p in self.got if k == "telemetry"]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _meter_messages(device: str, n: int) -> list[SimMessage]:
    base = int(time.time() * 1000) - 60_000
    return [
        SimMessage(device, "telemetry", json.dumps({"ts": base + s, "seq": s, "energy_kwh": s}).encode(), base + s, s)
        for s in range(n)
    ]


def test_shared_publisher_answers_resend_from_its_bounded_buffer(broker: Broker) -> None:
    pub = SharedPublisher("127.0.0.1", broker.port, "lianfang-sim", broker.sim_password, resend_buffer=5)
    pub.start()
    peer = CmdPeer(broker, "meter-rs-01")
    try:
        sent = _meter_messages("meter-rs-01", 10)
        for msg in sent:
            pub.publish(msg)
        assert pub.flush(10)
        wait_until(lambda: len(peer.data()) == 10, 10, what="the original stream")
        cmd = peer.resend(3, 9)
        result = wait_until(lambda: peer.result(cmd), 10, what="cmd_result")
        assert result == {"type": "cmd_result", "cmd_id": cmd, "ok": True, "detail": "3-4"}
        # seqs 5..9 again, byte for byte (same seq, same ts), before the answer
        assert peer.data()[10:] == [m.payload for m in sent[5:]]
        # expired, unknown and malformed commands: nothing resent
        late = peer.resend(0, 9, expires_at=int(time.time() * 1000) - 1)
        reboot = peer.resend(0, 1, name="reboot")
        wide = peer.resend(0, 10_000)
        assert wait_until(lambda: peer.result(wide), 10, what="answer to a too-wide range")["ok"] is False
        assert peer.result(reboot) == {
            "type": "cmd_result",
            "cmd_id": reboot,
            "ok": False,
            "detail": "unsupported command 'reboot'",
        }
        assert peer.result(late) is None and len(peer.data()) == 15
    finally:
        peer.close()
        pub.close()
    assert pub.commands_answered == 3


def test_publisher_without_buffer_answers_ok_false(broker: Broker) -> None:
    pub = SharedPublisher("127.0.0.1", broker.port, "lianfang-sim", broker.sim_password, resend_buffer=0)
    pub.start()
    peer = CmdPeer(broker, "meter-rs-02")
    other = CmdPeer(broker, "meter-rs-03")
    try:
        for msg in _meter_messages("meter-rs-02", 3):
            pub.publish(msg)
        assert pub.flush(10)
        cmd = peer.resend(0, 2)
        assert wait_until(lambda: peer.result(cmd), 10, what="cmd_result") == {
            "type": "cmd_result",
            "cmd_id": cmd,
            "ok": False,
            "detail": "no buffer",
        }
        # A device this publisher never published for is not its to answer.
        stranger = other.resend(0, 2)
        answered = peer.resend(0, 0)
        wait_until(lambda: peer.result(answered), 10, what="a later answer")
        assert other.result(stranger) is None
    finally:
        other.close()
        peer.close()
        pub.close()


def test_device_publisher_answers_resend_on_its_own_cmd_topic(broker: Broker) -> None:
    device = "meter-rs-04"
    password = "pw-" + uuid.uuid4().hex
    cmds = [
        {"command": "createRole", "rolename": f"lf-dev-{device}", "acls": device_acls(device)},
        {
            "command": "createClient",
            "username": device,
            "clientid": device,
            "password": password,
            "roles": [{"rolename": f"lf-dev-{device}"}],
        },
    ]
    admin = mqtt_client(broker.port, "admin", broker.admin_password, "admin-" + uuid.uuid4().hex[:8])
    answers: list[dict[str, object]] = []
    admin.on_message = lambda _c, _u, m: answers.extend(json.loads(m.payload)["responses"])
    admin.subscribe("$CONTROL/dynamic-security/v1/response", qos=1)
    try:
        admin.publish("$CONTROL/dynamic-security/v1", json.dumps({"commands": cmds}), qos=1)
        wait_until(lambda: len(answers) == 2, timeout=20, what="dynsec answers")
    finally:
        admin.disconnect()
        admin.loop_stop()
    pub = DevicePublisher("127.0.0.1", broker.port, {device: password})
    pub.start()
    peer = CmdPeer(broker, device)
    try:
        sent = _meter_messages(device, 4)
        for msg in sent:
            pub.publish(msg)
        assert pub.flush(10)
        wait_until(lambda: len(peer.data()) == 4, 10, what="the original stream")
        cmd = peer.resend(1, 2)
        assert wait_until(lambda: peer.result(cmd), 10, what="cmd_result")["ok"] is True
        assert peer.data()[4:] == [sent[1].payload, sent[2].payload]
    finally:
        peer.close()
        pub.close()
