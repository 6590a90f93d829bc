"""Incident and task notifications (joint/notify.py) through the real HTTP receiver: routing by region and
department, grouping of member bursts, overdue escalation up the tree, retries; Chinese by default."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from alerts.notify import parse_notify_config
from alerts.notify.config import NotifyConfig
from alerts.notify.routing import RetryPolicy
from alerts.notify.templates import IncidentRenderer
from alerts.types import Severity
from core import clock
from core.errors import UserError
from joint.models import Incident, IncidentState, ScopeLevel, Task, TaskState
from joint.notify import IncidentNotifier, coalesce, incident_line, plan_line, task_line
from tests.alerts.notify_fixtures import (  # noqa: F401
    T0,
    WEBHOOK_SECRET,
    WECOM_KEY,
    Receiver,
    SmtpServer,
    ancestors_of,
    receiver,
    smtp_server,
)
from tests.helpers import wait_until


def incident(iid: int = 7, region: str = "bldg-1", severity: Severity = Severity.CRITICAL) -> Incident:
    return Incident(
        id=iid,
        pattern_id="X2",
        type="intrusion",
        title_zh="入侵：门禁被强行打开并有活动",
        title_en="Intrusion: door forced with activity",
        severity=severity,
        state=IncidentState.OPEN,
        scope_level=ScopeLevel.BUILDING,
        region_id=region,
        group_key=f"X2|{region}",
        opened_at=T0,
        updated_at=T0,
        region_path=tuple(ancestors_of(region)),
    )


def task(department: str = "security", level: int = 0) -> Task:
    return Task(
        id=3,
        incident_id=7,
        department=department,
        state=TaskState.OPEN,
        created_at=T0,
        deadline=T0 + timedelta(minutes=30),
        escalation_level=level,
    )


def config(base: str, window: float = 0.3, **hook: Any) -> NotifyConfig:
    return parse_notify_config(
        {
            "channels": [
                {
                    "name": "bldg-hook",
                    "type": "webhook",
                    "url": f"{base}/hook/bldg",
                    "secret": WEBHOOK_SECRET,
                    "group_window_s": window,
                    **hook,
                },
                {"name": "city-hook", "type": "webhook", "url": f"{base}/hook/city", "secret": WEBHOOK_SECRET},
                {
                    "name": "security-wecom",
                    "type": "wecom",
                    "url": f"{base}/wecom/send",
                    "key": WECOM_KEY,
                    "group_window_s": 0,
                },
            ],
            "routes": [
                {"name": "building", "regions": ["bldg-1"], "channels": ["bldg-hook"]},
                {"name": "city duty", "regions": ["city-1"], "include_subtree": False, "channels": ["city-hook"]},
                {"name": "alerts only", "regions": ["prov"], "channels": ["city-hook"], "incidents": False},
            ],
            "departments": [{"department": "security", "channels": ["security-wecom"]}],
        }
    )


# --- pure ---------------------------------------------------------------------------------------------------------


def test_plan_routes_incidents_by_region_and_tasks_by_department() -> None:
    cfg = config("http://127.0.0.1:9")
    inc = incident()
    assert plan_line(incident_line("opened", inc, T0), "X2", cfg, ancestors_of) == ["bldg-hook"]
    city = incident(region="city-1")
    assert plan_line(incident_line("escalated", city, T0, count=1), "X5", cfg, ancestors_of) == ["city-hook"]
    assert plan_line(task_line("task", inc, task(), T0), "X2", cfg, ancestors_of) == ["security-wecom"]
    # A department without channels of its own: the incident's routes.
    assert plan_line(task_line("task", inc, task("energy"), T0), "X2", cfg, ancestors_of) == ["bldg-hook"]
    # Overdue at level 2: the department, and the routes two levels up (bldg-1 -> agency-1 -> city-1).
    overdue = task_line("task_overdue", inc, task(level=2), T0)
    assert plan_line(overdue, "X2", cfg, ancestors_of) == ["security-wecom", "city-hook"]


def test_config_refuses_a_department_with_an_unknown_channel() -> None:
    with pytest.raises(UserError, match=r"departments\[0\]\.channels\[0\]: unknown channel"):
        parse_notify_config({"departments": [{"department": "security", "channels": ["nope"]}]})


def test_coalesce_makes_one_line_of_a_member_burst() -> None:
    inc = incident()
    lines = [incident_line("opened", inc, T0, count=2)]
    lines += [incident_line("members", inc, T0 + timedelta(seconds=i), count=1) for i in range(30)]
    lines += [incident_line("members", incident(8), T0, count=2)]
    out = coalesce(lines)
    assert [(x.kind, x.incident_id, x.count) for x in out] == [("opened", 7, 2), ("members", 7, 30), ("members", 8, 2)]
    assert out[1].at == T0 + timedelta(seconds=29)


def test_templates_are_chinese_by_default_with_english_second() -> None:
    line = task_line("task_overdue", incident(), task(level=1), T0)
    zh = IncidentRenderer().render([line])
    assert zh.title == "【紧急】部门任务超时：安保 · 入侵：门禁被强行打开并有活动"
    assert "处理时限：2026-11-26 14:30:00" in zh.markdown and "I7" in zh.text and "已超过处理时限" in zh.text
    en = IncidentRenderer("en").render([line])
    assert en.title == "[CRITICAL] Department task overdue: security · Intrusion: door forced with activity"
    group = IncidentRenderer().render([line, incident_line("members", incident(), T0, count=30)])
    assert group.title == "【联防】2 条事件通知" and "新增 30 条关联告警" in group.markdown


# --- through the real receiver ------------------------------------------------------------------------------------


def test_a_member_burst_is_one_message_and_tasks_reach_their_department(receiver: Receiver) -> None:  # noqa: F811
    n = IncidentNotifier(config(receiver.base), ancestors_of, idle_wait_s=0.05)
    n.start()
    try:
        inc = incident()
        n.incident("opened", inc, count=2)
        for _ in range(40):
            n.incident("members", inc, count=1)
        n.task("task", inc, task())
        (msg,) = wait_until(lambda: receiver.accepted("/hook/bldg"), 10, what="the building's message")
        doc = msg.json()
        assert [(x["kind"], x["count"]) for x in doc["incidents"]] == [("opened", 2), ("members", 40)]
        assert doc["title"] == "【联防】2 条事件通知" and "新增 40 条关联告警" in doc["markdown"]
        (wecom,) = wait_until(lambda: receiver.accepted("/wecom/send"), 10, what="the security office's robot")
        assert "部门任务：安保" in wecom.text()
        wait_until(lambda: not n.channels["bldg-hook"].pending, 5, what="nothing left")
        assert len(receiver.accepted("/hook/bldg")) == 1, "the burst went out as one message"
        assert receiver.received("/hook/city") == [], "a building incident is not told to the city"
    finally:
        n.stop()


def test_a_failing_channel_is_retried_and_lines_meanwhile_are_grouped(receiver: Receiver) -> None:  # noqa: F811
    receiver.fail("/hook/bldg", [503])
    retry = RetryPolicy(max_attempts=3, base=timedelta(seconds=0.3))
    n = IncidentNotifier(config(receiver.base, window=0), ancestors_of, retry=retry, idle_wait_s=0.05)
    n.start()
    try:
        inc = incident()
        n.incident("opened", inc)
        wait_until(lambda: receiver.received("/hook/bldg"), 5, what="the first attempt")
        n.incident("resolved", inc)
        ok = wait_until(lambda: receiver.accepted("/hook/bldg"), 10, what="the retried message")
        assert ok[0].json()["incidents"][0]["kind"] == "opened"
        later = wait_until(lambda: receiver.accepted("/hook/bldg")[1:], 10, what="the line that waited")
        assert later[0].json()["incidents"][0]["kind"] == "resolved"
    finally:
        n.stop()


def test_stop_sends_what_is_still_grouped(receiver: Receiver) -> None:  # noqa: F811
    n = IncidentNotifier(config(receiver.base, window=600), ancestors_of, clock=clock.now, idle_wait_s=0.05)
    n.start()
    n.incident("closed", incident(), text="误报")
    n.stop()
    (msg,) = receiver.accepted("/hook/bldg")
    assert msg.json()["incidents"][0]["text"] == "误报" and "事件已关闭" in msg.json()["title"]


def test_the_joint_services_changes_reach_the_channels(receiver: Receiver) -> None:  # noqa: F811
    from joint.correlator import IncidentChange
    from joint.notify import subscriber

    n = IncidentNotifier(config(receiver.base, window=0.2), ancestors_of, idle_wait_s=0.05)
    n.start()
    try:
        tell = subscriber(n)
        inc = incident()
        tell(IncidentChange("opened", inc, T0))
        tell(IncidentChange("member_added", inc, T0, alert_ids=(1, 2, 3)))
        tell(IncidentChange("commented", inc, T0))  # not notified
        tell(IncidentChange("task_created", inc, T0, task=task()))
        (msg,) = wait_until(lambda: receiver.accepted("/hook/bldg"), 10, what="the incident's message")
        assert [(x["kind"], x["count"]) for x in msg.json()["incidents"]] == [("opened", 0), ("members", 3)]
        wait_until(lambda: receiver.accepted("/wecom/send"), 10, what="the task's message")
    finally:
        n.stop()


def test_incident_mail_is_chinese_first_and_grouped(smtp_server: SmtpServer) -> None:  # noqa: F811
    """The real SMTP server: a burst of incident lines to the building's mail channel is one message, its subject
    and body in Chinese (a channel's language is zh-CN unless it says ``language: en``)."""
    cfg = parse_notify_config(
        {
            "channels": [
                {
                    "name": "mail",
                    "type": "email",
                    "host": "127.0.0.1",
                    "port": smtp_server.port,
                    "security": "none",
                    "sender": "lianfang@bureau.local",
                    "recipients": ["duty@bureau.local"],
                    "group_window_s": 0.3,
                }
            ],
            "routes": [{"name": "building", "regions": ["bldg-1"], "channels": ["mail"]}],
        }
    )
    n = IncidentNotifier(cfg, ancestors_of, idle_wait_s=0.05)
    n.start()
    try:
        inc = incident()
        n.incident("opened", inc, count=2)
        for _ in range(25):
            n.incident("members", inc, count=1)
        (mail,) = wait_until(lambda: list(smtp_server.mailbox.messages), 10, what="the mail")
        assert mail["Subject"] == "【联防】2 条事件通知"
        body = mail.get_body(preferencelist=("plain",))
        assert body is not None
        text = body.get_content()
        assert "新增 25 条关联告警" in text and "入侵：门禁被强行打开并有活动" in text
        wait_until(lambda: not n.channels["mail"].pending, 5, what="nothing left")
        assert len(smtp_server.mailbox.messages) == 1, "the burst went out as one mail"
    finally:
        n.stop()
