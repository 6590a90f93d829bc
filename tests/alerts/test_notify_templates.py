"""Templates: zh-CN by default, English available; one alert and grouped messages."""

from __future__ import annotations

from datetime import timedelta

from alerts.notify.routing import Notification, NotificationKind
from alerts.notify.templates import Renderer, fmt_duration
from alerts.types import Severity
from tests.alerts.notify_fixtures import T0, make_alert

NAMES = {"bldg-1": "一号办公楼", "city-1": "甲市"}


def test_single_firing_in_chinese_with_region_names_and_beijing_time() -> None:
    r = Renderer(region_name=lambda rid: NAMES.get(rid, rid)).render(
        [Notification(NotificationKind.FIRING, make_alert(42, severity=Severity.MAJOR), T0)]
    )
    assert r.title == "【严重】新告警：门禁被强行打开"
    assert "- 区域：一号办公楼" in r.markdown and "- 开始时间：2026-11-26 14:00:00" in r.markdown
    assert "#42" in r.text and "联防" in r.text


def test_escalation_says_where_to_and_how_long_unacknowledged() -> None:
    n = Notification(
        NotificationKind.ESCALATED,
        make_alert(1, level=2),
        T0 + timedelta(minutes=75),
        target_region_id="city-1",
        level=2,
    )
    zh = Renderer(region_name=lambda rid: NAMES.get(rid, rid)).render([n])
    assert zh.title == "【紧急】告警升级：门禁被强行打开"
    assert "升级至：甲市（第 2 级）" in zh.markdown and "已持续 1 小时 15 分钟 未确认" in zh.markdown
    en = Renderer("en").render([n])
    assert en.title == "[CRITICAL] Escalated alert: Door forced open"
    assert "Escalated to: city-1 (level 2)" in en.text and "Not acknowledged for 1 h 15 min" in en.text


def test_resolved_shows_the_resolution_time() -> None:
    a = make_alert(3)
    a.resolved_at = T0 + timedelta(minutes=5)
    r = Renderer("en").render([Notification(NotificationKind.RESOLVED, a, T0 + timedelta(minutes=6))])
    assert r.title == "[RESOLVED] Alert resolved: Door forced open"
    assert "Resolved: 2026-11-26 14:05:00" in r.text


def test_group_lists_every_alert_with_counts() -> None:
    ns = [Notification(NotificationKind.FIRING, make_alert(i), T0) for i in range(1, 4)]
    ns.append(Notification(NotificationKind.RESOLVED, make_alert(9), T0))
    zh = Renderer().render(ns)
    assert zh.title == "【联防】4 条告警通知"
    assert "新告警 3 条，升级 0 条，持续 0 条，已恢复 1 条" in zh.markdown
    assert [line.split(" · ")[-1] for line in zh.markdown.splitlines()[3:]] == ["#1", "#2", "#3", "#9"]
    en = Renderer("en").render(ns)
    assert (
        en.title == "[Lianfang] 4 alert notifications" and "3 new, 0 escalated, 0 still firing, 1 resolved" in en.text
    )


def test_durations() -> None:
    assert fmt_duration(timedelta(seconds=59), "zh-CN") == "0 分钟"
    assert fmt_duration(timedelta(minutes=61), "en") == "1 h 1 min"
