"""End to end: simulator (a forced door) -> real Mosquitto -> IngestService -> AlertsRuntime -> a signed zh-CN
webhook on a real local HTTP receiver. Exactly one alert and one message, also after the messages are replayed."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alerts.notify.log import DeliveryLog
from alerts.wiring import AlertsRuntime
from core.settings import AlertSettings, Settings
from core.store.sqlite import SqliteStore
from devices.registry import DeviceSpec, RegionSpec, Registry
from devices.sim_publisher import SharedPublisher
from devices.simulator import Fleet, Incident, SimDevice, SimMessage
from tests.alerts.notify_fixtures import WEBHOOK_SECRET, Receiver, receiver  # noqa: F401
from tests.helpers import wait_until
from tests.ingest.conftest import ingest_on

GATE = "gate-e2e-0001"


def publish_all(pub: SharedPublisher, msgs: list[SimMessage]) -> None:
    for m in msgs:
        pub.publish(m)
    assert pub.flush(10), "broker did not acknowledge every message"


@pytest.mark.integration
def test_e2e_forced_door_reaches_the_webhook_once(
    broker: Any,
    sqlite_registry: Registry,
    store: SqliteStore,
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
) -> None:
    reg = sqlite_registry
    now = datetime.now(UTC)
    reg.upsert_regions(
        [
            RegionSpec("gd", "广东省", "province"),
            RegionSpec("gz", "广州市", "city", "gd"),
            RegionSpec("gz-b1", "一号办公楼", "building", "gz", lat=23.13, lon=113.26),
        ],
        now=now,
    )
    reg.add_devices([DeviceSpec(GATE, "gate", "gz-b1", "东门")], now=now)
    # Only the forced-door rules: the other gate rules depend on the time of day (G5) or on random denials (G6).
    rules = tmp_path / "only-g1.yaml"
    rules.write_text(
        "overrides:\n  - {rule: '*', enabled: false}\n  - {rule: G1, enabled: true}\n"
        "  - {rule: G1.event, enabled: true}\n",
        encoding="utf-8",
    )
    notify = tmp_path / "notify.yaml"
    notify.write_text(
        f"channels:\n  - {{name: ops, type: webhook, url: '{receiver.base}/hook', secret: '{WEBHOOK_SECRET}',"
        " group_window_s: 0}\nroutes:\n  - {name: province, regions: [gd], channels: [ops]}\n",
        encoding="utf-8",
    )
    settings = Settings(
        alerts=AlertSettings(rules_paths=[rules], notify_config=notify, tick_interval_s=0.05, escalation_tick_s=0.5)
    )
    # The simulated gate's last two minutes, with a forced door 30 s ago (open for 5 s).
    start = now - timedelta(seconds=120)
    fleet = Fleet(
        [SimDevice(GATE, "gate", "gz-b1", 23.13, 113.26, 60.0)],
        rng=random.Random(4),
        start=start,
        incidents=[Incident("door_forced", GATE, now - timedelta(seconds=30), duration_s=5)],
        rate_multiplier=0.01,  # almost no regular access: nothing can excuse the forced door by chance
    )
    msgs = fleet.advance(now)
    forced = [m for m in msgs if m.kind == "telemetry" and m.doc().get("door_open") is True]
    assert forced, "the scenario must open the door"

    alerts = AlertsRuntime(settings, reg, notify_stop_timeout_s=3, notify_idle_wait_s=0.05)
    ingest = ingest_on(broker, store, reg.snapshot, listeners=[alerts.on_batch])
    pub = SharedPublisher("127.0.0.1", broker.port, "lianfang-sim", broker.sim_password)
    alerts.start()
    ingest.start()
    pub.start()
    try:
        publish_all(pub, msgs)
        wait_until(lambda: ingest.stats.acked >= len(msgs), 10, what="ingest acked the scenario")
        hooks = wait_until(lambda: receiver.accepted("/hook"), 10, what="the signed webhook")
        # Replay the whole scenario (a gateway re-sending its buffer): same seqs, nothing new.
        publish_all(pub, msgs)
        wait_until(lambda: ingest.stats.acked >= 2 * len(msgs), 10, what="ingest acked the replay")
        alerts.service.tick()  # run whatever timer a replay could have armed
    finally:
        pub.close()
        ingest.stop()
        alerts.stop()  # drains the dispatcher: a duplicate message would have been sent by now
    stored = alerts.service.repo.alerts()
    assert [(a.rule_id, a.device_id, a.count) for a in stored] == [("G1", GATE, 1)]
    assert ingest.stats.duplicates >= len([m for m in msgs if m.seq is not None])
    hooks = receiver.accepted("/hook")
    assert len(hooks) == 1 and len(receiver.received("/hook")) == 1  # signature checked by the receiver
    text = hooks[0].text()
    assert "门被强行打开" in text and "一号办公楼" in text  # zh-CN, region by name
    assert hooks[0].headers["x-lianfang-delivery"]
    assert [r.status for r in DeliveryLog(reg.engine).rows()] == ["sent"]
