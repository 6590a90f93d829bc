"""Built-in platform alerts (alerts/platform.py): raised from the ingest status, stored, notified through a real
webhook receiver and resolved on recovery, like any alert."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from alerts.platform import INGEST_STALLED, STORE_UNAVAILABLE, PlatformAlerts, platform_changes, root_region_of
from alerts.types import AlertState
from alerts.wiring import AlertsRuntime
from core.settings import AlertSettings, Settings
from devices.registry import RegionSpec, Registry
from tests.alerts.notify_fixtures import WEBHOOK_SECRET, Receiver, receiver  # noqa: F401
from tests.helpers import wait_until

NOW = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
HEALTHY = {"stalled": False, "reason": None, "store_unavailable": None, "backlog": 0}
STALLED = {
    "stalled": True,
    "reason": "store unavailable for 6 s: database is locked",
    "store_unavailable": "database is locked",
    "backlog": 1200,
    "oldest_unacked_age_s": 41.0,
}


def test_changes_are_sent_on_transitions_only() -> None:
    first = platform_changes(HEALTHY, {}, region_path=("gd",), now=NOW)
    assert [(c.rule_id, c.firing) for c in first] == [
        (INGEST_STALLED.rule_id, False),
        (STORE_UNAVAILABLE.rule_id, False),
    ]
    known = {c.rule_id: c.firing for c in first}
    assert platform_changes(HEALTHY, known, region_path=("gd",), now=NOW) == []
    fired = platform_changes(STALLED, known, region_path=("gd",), now=NOW)
    assert {c.rule_id for c in fired} == {INGEST_STALLED.rule_id, STORE_UNAVAILABLE.rule_id}
    stalled = next(c for c in fired if c.rule_id == INGEST_STALLED.rule_id)
    assert stalled.firing and stalled.region_id == "gd" and stalled.region_path == ("gd",)
    assert stalled.detail["reason"] == STALLED["reason"] and stalled.detail["backlog"] == 1200
    assert stalled.dedup_key == INGEST_STALLED.rule_id and stalled.device_id == "platform"


def test_no_ingest_in_this_process_says_nothing() -> None:
    assert platform_changes({"ok": False, "detail": "ingest not running"}, {}, region_path=("gd",), now=NOW) == []


@pytest.fixture
def reg(sqlite_registry: Registry) -> Registry:
    sqlite_registry.upsert_regions(
        [RegionSpec("gd", "广东省", "province"), RegionSpec("gz", "广州市", "city", "gd")], now=datetime.now(UTC)
    )
    return sqlite_registry


@pytest.fixture
def alerts_rt(reg: Registry, tmp_path: Path, receiver: Receiver) -> Iterator[AlertsRuntime]:  # noqa: F811
    notify = tmp_path / "notify.yaml"
    notify.write_text(
        f"""
channels:
  - {{name: ops, type: webhook, url: "{receiver.base}/hook", secret: "{WEBHOOK_SECRET}", group_window_s: 0}}
routes:
  - {{name: platform, regions: [gd], channels: [ops]}}
""",
        encoding="utf-8",
    )
    rt = AlertsRuntime(
        Settings(alerts=AlertSettings(notify_config=notify)), reg, notify_stop_timeout_s=2, notify_idle_wait_s=0.05
    )
    rt.start()
    yield rt
    rt.stop()


def test_a_stall_is_raised_notified_and_resolved_through_the_lifecycle(
    reg: Registry,
    alerts_rt: AlertsRuntime,
    receiver: Receiver,  # noqa: F811
) -> None:
    status: dict[str, Any] = dict(HEALTHY)
    watcher = PlatformAlerts(lambda: status, alerts_rt.apply_platform_changes, root_region_of(reg), interval_s=0.05)
    watcher.start()
    try:
        assert alerts_rt.service.open_alerts() == []
        status.update(STALLED)
        open_alerts = wait_until(
            lambda: alerts_rt.service.open_alerts() if len(alerts_rt.service.open_alerts()) == 2 else None,
            5,
            what="two platform alerts open",
        )
        by_rule = {a.rule_id: a for a in open_alerts}
        stalled = by_rule[INGEST_STALLED.rule_id]
        assert stalled.region_id == "gd" and stalled.device_id == "platform"
        assert "database is locked" in str(stalled.detail["reason"])
        hooks = wait_until(lambda: receiver.accepted("/hook"), 5, what="the firing notification")
        assert "数据接入停滞" in hooks[0].text() and "遥测存储不可用" in hooks[0].text()  # grouped into one message
        status.clear()
        status.update(HEALTHY)
        wait_until(lambda: alerts_rt.service.open_alerts() == [], 5, what="platform alerts resolved")
        resolved = wait_until(lambda: receiver.accepted("/hook")[1:], 5, what="the resolution notified")
        assert "已恢复 2 条" in resolved[0].text()
    finally:
        watcher.stop()
    rows = {a.rule_id: a for a in alerts_rt.service.repo.alerts()}
    assert rows[INGEST_STALLED.rule_id].state is AlertState.RESOLVED
    assert rows[STORE_UNAVAILABLE.rule_id].state is AlertState.RESOLVED
    assert watcher.raised == 2 and watcher.resolved == 4  # 2 clears at start (what a previous run left open)


def test_a_broken_status_callback_does_not_kill_the_watcher(reg: Registry, alerts_rt: AlertsRuntime) -> None:
    calls = {"n": 0}

    def status() -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError("boom")
        return dict(STALLED)

    watcher = PlatformAlerts(status, alerts_rt.apply_platform_changes, root_region_of(reg), interval_s=0.05)
    watcher.start()
    try:
        wait_until(lambda: len(alerts_rt.service.open_alerts()) == 2, 5, what="raised after the callback recovered")
    finally:
        watcher.stop()
