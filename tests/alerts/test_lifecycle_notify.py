"""Silences, resolutions by hand and the escalation clock, end to end: AlertsRuntime on a migrated SQLite registry,
notifications to a real local HTTP receiver (signed webhooks) and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from alerts.notify.log import DeliveryLog
from alerts.wiring import AlertsRuntime
from core.protocol import Event
from core.settings import AlertSettings, Settings
from core.store import WriteBatch
from devices.registry import DeviceSpec, RegionSpec, Registry
from tests.alerts.notify_fixtures import (  # noqa: F401  (fixtures)
    WEBHOOK_SECRET,
    Received,
    Receiver,
    SmtpServer,
    receiver,
    smtp_server,
)
from tests.helpers import wait_until

GATE1, GATE2 = "gate-s-0001", "gate-s-0002"


@pytest.fixture
def reg(sqlite_registry: Registry) -> Registry:
    now = datetime.now(UTC)
    sqlite_registry.upsert_regions(
        [
            RegionSpec("gd", "广东省", "province"),
            RegionSpec("gz", "广州市", "city", "gd"),
            RegionSpec("gz-b1", "一号办公楼", "building", "gz"),
        ],
        now=now,
    )
    sqlite_registry.add_devices([DeviceSpec(GATE1, "gate", "gz-b1"), DeviceSpec(GATE2, "gate", "gz-b1")], now=now)
    return sqlite_registry


def runtime(reg: Registry, tmp_path: Path, receiver: Receiver, smtp: SmtpServer, after_s: float) -> AlertsRuntime:  # noqa: F811
    rules = tmp_path / "only-tamper.yaml"
    rules.write_text(
        "overrides:\n  - {rule: '*', enabled: false}\n  - {rule: G11.tamper, enabled: true}\n", encoding="utf-8"
    )
    notify = tmp_path / "notify.yaml"
    notify.write_text(
        f"""
channels:
  - {{name: ops, type: webhook, url: "{receiver.base}/hook", secret: "{WEBHOOK_SECRET}", group_window_s: 0}}
  - {{name: city, type: webhook, url: "{receiver.base}/hook-city", secret: "{WEBHOOK_SECRET}", group_window_s: 0}}
  - name: mail
    type: email
    language: en
    host: 127.0.0.1
    port: {smtp.port}
    security: none
    sender: alerts@lianfang.local
    recipients: [duty@bureau.local]
    group_window_s: 0
routes:
  - {{name: building, regions: [gz-b1], channels: [ops, mail]}}
  - {{name: city duty, regions: [gz], include_subtree: false, kinds: [escalated, renotify, resolved], channels: [city]}}
escalation:
  default: {{after_s: [{after_s}], min_severity: info}}
""",
        encoding="utf-8",
    )
    settings = Settings(
        alerts=AlertSettings(rules_paths=[rules], notify_config=notify, tick_interval_s=0.05, escalation_tick_s=0.05)
    )
    return AlertsRuntime(settings, reg, notify_stop_timeout_s=3, notify_idle_wait_s=0.05)


@pytest.fixture
def runtimes() -> Iterator[list[AlertsRuntime]]:
    made: list[AlertsRuntime] = []
    yield made
    for rt in made:
        rt.stop()


def tamper(device: str, seq: int, ts: datetime | None = None) -> WriteBatch:
    batch = WriteBatch()
    ms = int((ts or datetime.now(UTC)).timestamp() * 1000)
    batch.events.append(Event(device, "gz-b1", "gate", ms, seq, "tamper", {}))
    return batch


def alert_id(rt: AlertsRuntime, device: str) -> int:
    return next(a.id for a in rt.service.repo.alerts() if a.device_id == device)


def hooks(receiver: Receiver, path: str) -> list[Received]:  # noqa: F811
    return [r for r in receiver.accepted(path) if r.path == path]


def mail_text(m: EmailMessage) -> str:
    body = m.get_body(("plain",))
    assert body is not None
    return str(m["Subject"]) + "\n" + str(body.get_content())


def test_a_silence_stops_every_notification_and_escalation_then_renotifies_when_it_ends(
    reg: Registry,
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
    smtp_server: SmtpServer,  # noqa: F811
    runtimes: list[AlertsRuntime],
) -> None:
    rt = runtime(reg, tmp_path, receiver, smtp_server, after_s=0.5)
    runtimes.append(rt)
    rt.start()
    now = datetime.now(UTC)
    silence = rt.service.add_silence(
        reason="更换读卡器", creator="admin", starts_at=now, ends_at=now + timedelta(hours=1), device_id=GATE1
    )
    rt.on_batch(tamper(GATE1, 1))
    rt.on_batch(tamper(GATE2, 1))
    silenced, loud = alert_id(rt, GATE1), alert_id(rt, GATE2)
    # The unsilenced alert escalates to the city after 0.5 s: the escalator has run past the silenced one's delay.
    wait_until(lambda: hooks(receiver, "/hook-city"), 10, what="the unsilenced alert escalated")
    wait_until(lambda: smtp_server.mailbox.messages, 10, what="the unsilenced alert's mail")
    rt.escalate()  # one more pass, well after the delay
    levels = {a.id: a.escalation_level for a in rt.service.open_alerts()}
    assert levels[silenced] == 0 and levels[loud] == 1
    told = [i for path in ("/hook", "/hook-city") for r in hooks(receiver, path) for i in r.alert_ids()]
    assert silenced not in told and loud in told
    assert all(f"#{silenced}" not in mail_text(m) for m in smtp_server.mailbox.messages)
    assert not [r for r in DeliveryLog(reg.engine).rows(alert_ids=[silenced])]  # not even unrouted
    # why nothing was sent
    why = rt.service.silenced_by([silenced, loud])
    assert [(s.id, s.reason) for s in why[silenced]] == [(silence.id, "更换读卡器")] and loud not in why

    # The silence ends while the alert still fires: re-notified, and its escalation clock starts from there.
    ended = time.monotonic()
    rt.service.end_silence(silence.id)
    renotified = wait_until(
        lambda: [r for r in hooks(receiver, "/hook") if silenced in r.alert_ids()], 10, what="re-notification"
    )
    assert "告警仍在持续" in renotified[0].text()
    escalated = wait_until(
        lambda: [r for r in hooks(receiver, "/hook-city") if silenced in r.alert_ids()], 10, what="escalation"
    )
    assert "告警升级" in escalated[0].text()
    assert escalated[0].at - ended >= 0.45  # counted from the end of the silence, not from when it was raised
    assert rt.service.silenced_by([silenced]) == {}


def test_resolving_by_hand_tells_everyone_who_was_told_by_whom_and_why(
    reg: Registry,
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
    smtp_server: SmtpServer,  # noqa: F811
    runtimes: list[AlertsRuntime],
) -> None:
    rt = runtime(reg, tmp_path, receiver, smtp_server, after_s=0.3)
    runtimes.append(rt)
    rt.start()
    rt.on_batch(tamper(GATE1, 1))
    aid = alert_id(rt, GATE1)
    wait_until(lambda: hooks(receiver, "/hook-city"), 10, what="escalation to the city")
    resolved = rt.service.resolve(aid, "zhang", "读卡器已更换，现场确认")
    assert resolved.resolved_by == "zhang"

    def resolved_at(path: str) -> list[Received]:
        return [r for r in hooks(receiver, path) if "告警已恢复" in r.text()]

    building = wait_until(lambda: resolved_at("/hook"), 10, what="resolution told to the building")
    city = wait_until(lambda: resolved_at("/hook-city"), 10, what="resolution told to the city (escalated there)")
    for msg in (building[0], city[0]):
        text = msg.text()
        assert f"#{aid}" in text and "处理人：zhang" in text and "原因：读卡器已更换，现场确认" in text
        assert msg.json()["notifications"][0]["alert"]["resolved_by"] == "zhang"
    mails = wait_until(
        lambda: [m for m in smtp_server.mailbox.messages if "Alert resolved" in str(m["Subject"])], 10, what="mail"
    )
    text = mail_text(mails[0])
    assert "Resolved by: zhang" in text and "Reason: 读卡器已更换，现场确认" in text  # English on this channel
    rt.stop()
    assert len(resolved_at("/hook")) == 1 and len(resolved_at("/hook-city")) == 1  # once each


def test_a_backdated_record_escalates_from_when_the_platform_learned_of_it(
    reg: Registry,
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
    smtp_server: SmtpServer,  # noqa: F811
    runtimes: list[AlertsRuntime],
) -> None:
    rt = runtime(reg, tmp_path, receiver, smtp_server, after_s=1.0)
    runtimes.append(rt)
    rt.start()
    received = time.monotonic()
    before = datetime.now(UTC)
    rt.on_batch(tamper(GATE1, 1, ts=before - timedelta(hours=2)))  # a gateway's buffer, stamped two hours ago
    rt.escalate()
    [alert] = rt.service.open_alerts()
    assert alert.escalation_level == 0
    assert alert.started_at < before - timedelta(minutes=119)
    assert alert.learned_at is not None and alert.learned_at >= before
    escalated = wait_until(lambda: hooks(receiver, "/hook-city"), 10, what="escalation to the city")
    assert escalated[0].at - received >= 0.95  # one step after the platform learned of it, not at once
    assert "已持续 0 分钟 未确认" in escalated[0].text()  # not "2 小时"
    [stored] = rt.service.repo.alerts()
    assert stored.learned_at == alert.learned_at and stored.escalation_level == 1
    assert stored.escalation_from is not None and stored.escalation_from >= alert.learned_at + timedelta(seconds=1)
