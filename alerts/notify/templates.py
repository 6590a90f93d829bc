"""Message templates: one alert, or a group of alerts in one message; zh-CN by default, English available.

Pure: ``render(notifications, language)`` returns a title, a Markdown body (robots) and a plain-text body
(e-mail). Times are shown in China Standard Time (UTC+8, no daylight saving).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from alerts.lifecycle import SYSTEM
from alerts.notify.routing import Notification, NotificationKind
from alerts.types import Severity

Language = Literal["zh-CN", "en"]
CST = timezone(timedelta(hours=8), "CST")

SEVERITY_LABEL: dict[str, dict[Severity, str]] = {
    "zh-CN": {Severity.INFO: "提示", Severity.WARNING: "警告", Severity.MAJOR: "严重", Severity.CRITICAL: "紧急"},
    "en": {Severity.INFO: "INFO", Severity.WARNING: "WARNING", Severity.MAJOR: "MAJOR", Severity.CRITICAL: "CRITICAL"},
}

KIND_LABEL: dict[str, dict[NotificationKind, str]] = {
    "zh-CN": {
        NotificationKind.FIRING: "新告警",
        NotificationKind.ESCALATED: "告警升级",
        NotificationKind.RENOTIFY: "告警仍在持续",
        NotificationKind.RESOLVED: "告警已恢复",
    },
    "en": {
        NotificationKind.FIRING: "New alert",
        NotificationKind.ESCALATED: "Escalated alert",
        NotificationKind.RENOTIFY: "Alert still firing",
        NotificationKind.RESOLVED: "Alert resolved",
    },
}

TEXT: dict[str, dict[str, str]] = {
    "zh-CN": {
        "device": "设备",
        "region": "区域",
        "rule": "规则",
        "started": "开始时间",
        "resolved": "恢复时间",
        "resolved_by": "处理人",
        "resolve_reason": "原因",
        "auto_resolved": "系统（条件已解除）",
        "system": "系统",
        "id": "告警编号",
        "escalated_to": "升级至",
        "level": "第 {level} 级",
        "unacked": "已持续 {duration} 未确认，请尽快处理",
        "resolved_tag": "已恢复",
        "group_title": "【联防】{count} 条告警通知",
        "group_summary": "新告警 {firing} 条，升级 {escalated} 条，持续 {renotify} 条，已恢复 {resolved} 条",
        "minutes": "{n} 分钟",
        "hours": "{h} 小时 {m} 分钟",
        "footer": "联防 · 物联网监测与联防联控平台",
    },
    "en": {
        "device": "Device",
        "region": "Region",
        "rule": "Rule",
        "started": "Started",
        "resolved": "Resolved",
        "resolved_by": "Resolved by",
        "resolve_reason": "Reason",
        "auto_resolved": "system (condition cleared)",
        "system": "system",
        "id": "Alert",
        "escalated_to": "Escalated to",
        "level": "level {level}",
        "unacked": "Not acknowledged for {duration}; please act now",
        "resolved_tag": "RESOLVED",
        "group_title": "[Lianfang] {count} alert notifications",
        "group_summary": "{firing} new, {escalated} escalated, {renotify} still firing, {resolved} resolved",
        "minutes": "{n} min",
        "hours": "{h} h {m} min",
        "footer": "Lianfang · IoT monitoring and joint risk control",
    },
}


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str
    markdown: str
    text: str


def fmt_time(at: datetime) -> str:
    return at.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(d: timedelta, language: Language) -> str:
    minutes = max(0, int(d.total_seconds() // 60))
    t = TEXT[language]
    if minutes < 60:
        return t["minutes"].format(n=minutes)
    return t["hours"].format(h=minutes // 60, m=minutes % 60)


def _title(n: Notification, language: Language) -> str:
    a = n.alert
    name = a.title_zh if language == "zh-CN" else a.title_en
    kind = KIND_LABEL[language][n.kind]
    if n.kind == NotificationKind.RESOLVED:
        tag = TEXT[language]["resolved_tag"]
    else:
        tag = SEVERITY_LABEL[language][a.severity]
    sep = "：" if language == "zh-CN" else ": "
    if language == "zh-CN":
        return f"【{tag}】{kind}{sep}{name}"
    return f"[{tag}] {kind}{sep}{name}"


class Renderer:
    """Renders notifications in one language; ``region_name`` turns a region id into a display name."""

    def __init__(self, language: Language = "zh-CN", region_name: Callable[[str], str] | None = None) -> None:
        if language not in TEXT:
            raise ValueError(f"unknown language {language!r}")
        self.language: Language = language
        self.region_name = region_name or (lambda rid: rid)

    def render(self, notifications: Sequence[Notification]) -> Rendered:
        if not notifications:
            raise ValueError("nothing to render")
        if len(notifications) == 1:
            return self.render_one(notifications[0])
        return self.render_group(notifications)

    def _fields(self, n: Notification) -> list[tuple[str, str]]:
        t = TEXT[self.language]
        a = n.alert
        sep = "：" if self.language == "zh-CN" else ": "
        fields = [
            (t["device"], a.device_id),
            (t["region"], self.region_name(a.region_id)),
            (t["rule"], a.rule_id),
            (t["started"], fmt_time(a.started_at)),
        ]
        if n.kind == NotificationKind.RESOLVED:
            fields.append((t["resolved"], fmt_time(a.resolved_at or n.at)))
            if a.resolved_by and a.resolved_by != SYSTEM:  # by hand: who and why
                fields.append((t["resolved_by"], a.resolved_by))
                if a.resolve_reason:
                    fields.append((t["resolve_reason"], a.resolve_reason))
            else:
                fields.append((t["resolved_by"], t["auto_resolved"]))
        if n.kind == NotificationKind.ESCALATED:
            level = t["level"].format(level=n.level)
            fields.append(
                (
                    t["escalated_to"],
                    f"{self.region_name(n.target)}（{level}）"
                    if self.language == "zh-CN"
                    else f"{self.region_name(n.target)} ({level})",
                )
            )
        fields.append((t["id"], f"#{a.id}"))
        return [(k + sep, v) for k, v in fields]

    def render_one(self, n: Notification) -> Rendered:
        t = TEXT[self.language]
        title = _title(n, self.language)
        fields = self._fields(n)
        md = [f"### {title}"] + [f"- {k}{v}" for k, v in fields]
        text = [title, ""] + [f"{k}{v}" for k, v in fields]
        if n.kind == NotificationKind.ESCALATED:
            # since the platform learned of it: a backlog's device time would overstate it
            since = n.alert.learned_at or n.alert.started_at
            note = t["unacked"].format(duration=fmt_duration(n.at - since, self.language))
            md.append(f"\n**{note}**")
            text += ["", note]
        text += ["", "-- ", t["footer"]]
        return Rendered(title=title, markdown="\n".join(md), text="\n".join(text))

    def render_group(self, notifications: Sequence[Notification]) -> Rendered:
        t = TEXT[self.language]
        counts = {k: sum(1 for n in notifications if n.kind == k) for k in NotificationKind}
        title = t["group_title"].format(count=len(notifications))
        summary = t["group_summary"].format(
            firing=counts[NotificationKind.FIRING],
            escalated=counts[NotificationKind.ESCALATED],
            renotify=counts[NotificationKind.RENOTIFY],
            resolved=counts[NotificationKind.RESOLVED],
        )
        md = [f"### {title}", summary, ""]
        text = [title, summary, ""]
        for i, n in enumerate(notifications, 1):
            a = n.alert
            line = (
                f"{_title(n, self.language)} · {a.device_id} · {self.region_name(a.region_id)} · "
                f"{fmt_time(a.started_at)} · #{a.id}"
            )
            if n.kind == NotificationKind.ESCALATED:
                line += f" → {self.region_name(n.target)}"
            if n.kind == NotificationKind.RESOLVED and a.resolved_by and a.resolved_by != SYSTEM:
                sep = "：" if self.language == "zh-CN" else ": "
                line += f" · {t['resolved_by']}{sep}{a.resolved_by}"
                if a.resolve_reason:
                    line += f" · {t['resolve_reason']}{sep}{a.resolve_reason}"
            md.append(f"{i}. {line}")
            text.append(f"{i}. {line}")
        text += ["", "-- ", t["footer"]]
        return Rendered(title=title, markdown="\n".join(md), text="\n".join(text))


# --- incidents and department tasks (joint prevention and control, joint/notify.py) ------------------------------

IncidentNoteKind = Literal["opened", "members", "escalated", "resolved", "closed", "task", "task_overdue", "action"]


@dataclass(frozen=True, slots=True)
class IncidentLine:
    """One thing to tell about an incident, as plain data (``joint/notify.py`` builds it from the incident).

    ``count``: member alerts added (``members``; a burst of additions is one line), or the escalation level
    (``escalated``, ``task_overdue``). ``department`` and ``deadline`` for task lines; ``text`` for an action line
    or a closing cause."""

    kind: IncidentNoteKind
    incident_id: int
    title_zh: str
    title_en: str
    severity: Severity
    region_id: str
    state: str
    at: datetime
    count: int = 0
    department: str | None = None
    deadline: datetime | None = None
    text: str = ""


INCIDENT_KIND_LABEL: dict[str, dict[str, str]] = {
    "zh-CN": {
        "opened": "新事件",
        "members": "事件新增关联告警",
        "escalated": "事件升级",
        "resolved": "事件已解除",
        "closed": "事件已关闭",
        "task": "部门任务",
        "task_overdue": "部门任务超时",
        "action": "联动处置",
    },
    "en": {
        "opened": "New incident",
        "members": "Incident: alerts added",
        "escalated": "Incident escalated",
        "resolved": "Incident resolved",
        "closed": "Incident closed",
        "task": "Department task",
        "task_overdue": "Department task overdue",
        "action": "Linkage action",
    },
}

DEPARTMENT_LABEL: dict[str, dict[str, str]] = {
    "zh-CN": {"security": "安保", "vehicles": "车管", "energy": "能源", "it": "信息"},
    "en": {"security": "security", "vehicles": "vehicles", "energy": "energy", "it": "IT"},
}

INCIDENT_TEXT: dict[str, dict[str, str]] = {
    "zh-CN": {
        "id": "事件编号",
        "region": "区域",
        "state": "状态",
        "at": "时间",
        "added": "新增 {n} 条关联告警",
        "department": "责任部门",
        "deadline": "处理时限",
        "level": "第 {level} 级",
        "overdue": "已超过处理时限，请尽快确认",
        "group_title": "【联防】{count} 条事件通知",
        "footer": "联防 · 物联网监测与联防联控平台",
    },
    "en": {
        "id": "Incident",
        "region": "Region",
        "state": "State",
        "at": "Time",
        "added": "{n} related alert(s) added",
        "department": "Department",
        "deadline": "Deadline",
        "level": "level {level}",
        "overdue": "Past its deadline; please acknowledge now",
        "group_title": "[Lianfang] {count} incident notifications",
        "footer": "Lianfang · IoT monitoring and joint risk control",
    },
}


class IncidentRenderer:
    """Incident and task notifications in one language: one line alone, or several lines as one message."""

    def __init__(self, language: Language = "zh-CN", region_name: Callable[[str], str] | None = None) -> None:
        if language not in INCIDENT_TEXT:
            raise ValueError(f"unknown language {language!r}")
        self.language: Language = language
        self.region_name = region_name or (lambda rid: rid)

    def _dept(self, department: str | None) -> str:
        return DEPARTMENT_LABEL[self.language].get(department or "", department or "")

    def title(self, line: IncidentLine) -> str:
        kind = INCIDENT_KIND_LABEL[self.language][line.kind]
        name = line.title_zh if self.language == "zh-CN" else line.title_en
        tag = SEVERITY_LABEL[self.language][line.severity]
        if line.kind in ("task", "task_overdue"):
            name = f"{self._dept(line.department)} · {name}"
        if self.language == "zh-CN":
            return f"【{tag}】{kind}：{name}"
        return f"[{tag}] {kind}: {name}"

    def _detail(self, line: IncidentLine) -> list[tuple[str, str]]:
        t = INCIDENT_TEXT[self.language]
        sep = "：" if self.language == "zh-CN" else ": "
        out = [(t["region"], self.region_name(line.region_id)), (t["at"], fmt_time(line.at))]
        if line.kind == "members":
            out.append((t["state"], t["added"].format(n=line.count)))
        if line.kind in ("task", "task_overdue"):
            out.append((t["department"], self._dept(line.department)))
            if line.deadline is not None:
                out.append((t["deadline"], fmt_time(line.deadline)))
        if line.kind in ("escalated", "task_overdue") and line.count:
            out.append((t["state"], t["level"].format(level=line.count)))
        if line.text:
            out.append((t["state"], line.text))
        out.append((t["id"], f"I{line.incident_id}"))
        return [(k + sep, v) for k, v in out]

    def render(self, lines: Sequence[IncidentLine]) -> Rendered:
        if not lines:
            raise ValueError("nothing to render")
        t = INCIDENT_TEXT[self.language]
        if len(lines) == 1:
            line = lines[0]
            title = self.title(line)
            fields = self._detail(line)
            md = [f"### {title}"] + [f"- {k}{v}" for k, v in fields]
            text = [title, ""] + [f"{k}{v}" for k, v in fields]
            if line.kind == "task_overdue":
                md.append(f"\n**{t['overdue']}**")
                text += ["", t["overdue"]]
            text += ["", "-- ", t["footer"]]
            return Rendered(title=title, markdown="\n".join(md), text="\n".join(text))
        title = t["group_title"].format(count=len(lines))
        md, text = [f"### {title}", ""], [title, ""]
        for i, line in enumerate(lines, 1):
            extra = [self.region_name(line.region_id), fmt_time(line.at)]
            if line.kind == "members":
                extra.append(t["added"].format(n=line.count))
            if line.kind in ("task", "task_overdue") and line.deadline is not None:
                extra.append(f"{t['deadline']} {fmt_time(line.deadline)}")
            if line.text:
                extra.append(line.text)
            entry = f"{self.title(line)} · {' · '.join(extra)} · I{line.incident_id}"
            md.append(f"{i}. {entry}")
            text.append(f"{i}. {entry}")
        text += ["", "-- ", t["footer"]]
        return Rendered(title=title, markdown="\n".join(md), text="\n".join(text))
