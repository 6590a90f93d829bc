"""Broker-side drops (issue 8.3): past max_queued_messages Mosquitto drops what it queued for ingest while the
devices still get PUBACK. A real Mosquitto with a queue of 20 is overflowed: the drop is counted
(lianfang_broker_dropped_messages_total), raised as the platform alert, and the seq gap it leaves is asked back
with resend and filled, each record stored once."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from alerts.data_quality import BROKER_DROPPED, DataQualityAlerts, broker_dropped_change
from alerts.platform import root_region_of
from alerts.wiring import AlertsRuntime
from core.settings import Settings
from core.store.sqlite import SqliteStore
from devices.broker import (
    PLATFORM_SYS_ACLS,
    SIM_CMD_ACLS,
    BrokerConfig,
    MosquittoProcess,
    bootstrap_dynsec,
    free_port,
    render_config,
    write_broker_files,
)
from devices.registry import Registry
from devices.sim_publisher import SharedPublisher
from devices.simulator import SimMessage
from ingest.broker_drops import BrokerDropMonitor, DropCounter, parse_count
from ingest.resend import ResendManager, ResendPolicy
from tests.conftest import Broker
from tests.helpers import wait_until
from tests.ingest.conftest import ingest_on, mqtt_settings, seed_registry

pytestmark = pytest.mark.integration

QUEUE = 20


def test_drop_counter_counts_increments_and_a_broker_restart() -> None:
    c = DropCounter()
    assert [c.update(v) for v in (40, 40, 55, 3, 10)] == [40, 0, 15, 3, 7]
    assert c.total == 65
    assert parse_count(b"123\n") == 123 and parse_count(b"x") is None and parse_count(b"\xff") is None


def test_generated_config_publishes_sys_counters(tmp_path: Path) -> None:
    conf = render_config(BrokerConfig(directory=tmp_path, port=1883, sys_interval_s=3))
    assert "sys_interval 3\n" in conf


@pytest.fixture
def small_broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto with the project's generated config, but a queue of 20 messages per session and $SYS every 1 s."""
    cfg = BrokerConfig(
        directory=tmp_path / "mosquitto",
        port=free_port(),
        admin_password="test-admin-" + uuid.uuid4().hex,
        platform_password="test-platform-" + uuid.uuid4().hex,
        sim_password="test-sim-" + uuid.uuid4().hex,
        max_queued_messages=QUEUE,
        sys_interval_s=1,
    )
    proc = MosquittoProcess(cfg)
    proc.start()
    yield Broker(cfg.port, cfg.directory, cfg.admin_password, cfg.platform_username, cfg.platform_password, "", proc)
    proc.stop()


def _stored(path: Path, device: str) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT seq FROM telemetry WHERE device_id = ? ORDER BY seq", (device,))]


def _messages(device: str, seqs: range) -> list[SimMessage]:
    base = int(time.time() * 1000) - 120_000
    return [
        SimMessage(device, "telemetry", json.dumps({"ts": base + s, "seq": s, "energy_kwh": s}).encode(), base + s, s)
        for s in seqs
    ]


def _metric() -> float:
    return REGISTRY.get_sample_value("lianfang_broker_dropped_messages_total") or 0.0


def test_queue_overflow_is_counted_alerted_and_its_gap_resent(
    small_broker: Broker, sqlite_registry: Registry, store: SqliteStore, tmp_path: Path
) -> None:
    broker = small_broker
    seed_registry(sqlite_registry)
    sim = broker.process.cfg.sim_password or ""
    # Ingest's persistent session exists, then ingest is down: the broker queues for it, at most QUEUE messages.
    first = ingest_on(broker, store, sqlite_registry.snapshot)
    first.start()
    first.stop()
    pub = SharedPublisher("127.0.0.1", broker.port, "lianfang-sim", sim, reconnect_min_s=1)
    pub.start()
    settings = Settings(database_url=str(sqlite_registry.engine.url), mqtt=mqtt_settings(broker))
    alerts = AlertsRuntime(settings, sqlite_registry)
    alerts.start()
    dq = DataQualityAlerts(
        alerts.service,
        sqlite_registry.snapshot,
        apply_platform=alerts.apply_platform_changes,
        root_region=root_region_of(sqlite_registry),
    )
    monitor = BrokerDropMonitor(mqtt_settings(broker), on_drops=dq.broker_dropped, client_id="drops-test")
    before = _metric()
    resend: ResendManager | None = None
    ingest = None
    try:
        for msg in _messages("meter-0001", range(100)):
            pub.publish(msg)
        assert pub.flush(10)
        assert (pub.counts.acked, pub.counts.rejected) == (100, 0)  # every device got its PUBACK
        monitor.start()
        wait_until(lambda: monitor.counter.total >= 100 - QUEUE, 15, what="the broker's drop counter")
        dropped = monitor.counter.total
        assert dropped == 100 - QUEUE
        # The counter moves before the callback raises the alert (both on the monitor's network thread).
        wait_until(lambda: any(a.rule_id == BROKER_DROPPED for a in alerts.service.open_alerts()), 10, what="the alert")
        assert _metric() - before == dropped
        (alert,) = [a for a in alerts.service.open_alerts() if a.rule_id == BROKER_DROPPED]
        assert alert.device_id == "platform" and alert.region_id == "gd" and alert.detail["dropped"] == dropped

        # Ingest comes back with resend: it gets the QUEUE queued records, then the next seq shows the gap.
        resend = ResendManager(
            ResendPolicy(settle_ms=300, answer_timeout_ms=5_000),
            mqtt_settings=mqtt_settings(broker),
            tick_s=0.1,
            client_id="resend-test",
        )
        resend.start()
        ingest = ingest_on(broker, store, sqlite_registry.snapshot, listeners=[resend.on_batch])
        ingest.start()
        wait_until(lambda: len(_stored(store.path, "meter-0001")) == QUEUE, 15, what="the queued records")
        assert _stored(store.path, "meter-0001") == list(range(QUEUE))
        pub.publish(_messages("meter-0001", range(100, 101))[0])
        wait_until(lambda: len(_stored(store.path, "meter-0001")) == 101, 30, what="the gap resent and stored")
        assert _stored(store.path, "meter-0001") == list(range(101))  # each seq exactly once
        wait_until(lambda: resend.status()["open_requests"] == 0, 10, what="the resend answered")
        st = resend.status()
        assert (st["missing"], st["lost"], st["recovered"]) == (0, 0, 100 - QUEUE)
    finally:
        if ingest is not None:
            ingest.stop()
        if resend is not None:
            resend.stop()
        monitor.stop()
        pub.close()
        alerts.stop()


def test_broker_dropped_change_names_the_counts() -> None:
    from datetime import UTC, datetime

    ch = broker_dropped_change(5, 85, 90, region_path=("gd",), now=datetime(2026, 12, 4, tzinfo=UTC))
    assert (ch.rule_id, ch.device_id, ch.region_id, ch.firing) == (BROKER_DROPPED, "platform", "gd", True)
    assert ch.detail == {"dropped": 85, "last_dropped": 5, "broker_total": 90}


def test_an_older_dynsec_file_gets_the_sys_and_command_acls(tmp_path: Path) -> None:
    cfg = BrokerConfig(
        directory=tmp_path, port=1883, admin_password="a-" + uuid.uuid4().hex, sim_password="s-" + uuid.uuid4().hex
    )
    doc = bootstrap_dynsec(cfg)
    for role in doc["roles"]:  # as written before these ACLs existed
        mine = [*PLATFORM_SYS_ACLS, *SIM_CMD_ACLS]
        role["acls"] = [a for a in role["acls"] if a not in mine]
    cfg.directory.mkdir(exist_ok=True)
    cfg.dynsec_path.write_text(json.dumps(doc))
    write_broker_files(cfg)
    roles = {r["rolename"]: r["acls"] for r in json.loads(cfg.dynsec_path.read_text())["roles"]}
    assert {"acltype": "subscribePattern", "topic": "$SYS/broker/#", "allow": True} in roles["lf-platform"]
    assert {"acltype": "publishClientReceive", "topic": "lf/v1/+/cmd", "allow": True} in roles["lf-sim"]
    before = cfg.dynsec_path.read_text()
    write_broker_files(cfg)
    assert cfg.dynsec_path.read_text() == before  # once only
