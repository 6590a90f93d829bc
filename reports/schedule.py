"""Scheduled reports (``reports.schedules`` in the settings, docs/reports.md "Schedules").

Each schedule is an apscheduler 3 cron job in ``lianfang serve`` (where the alert engine runs, once per
installation): at its time (Beijing) it builds the report for the period relative to that moment and delivers it
through the notification channels of ``alerts.notify_config``:

- e-mail: a plain-text summary, the report inline as HTML when the format is ``html``, and the report attached
  (``html``, ``pdf``, ``csv``: one file per table, ``json``);
- WeCom, DingTalk, Feishu: a zh-CN (or English) Markdown summary with the headline figures, the findings and a link
  to the page's reports view when ``reports.link_base`` is set;
- a signed webhook: the same summary, plus ``report`` (the JSON of the report without its tables).

A channel that is unavailable is tried ``ATTEMPTS`` times; a run never raises into the scheduler (it logs).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from urllib.parse import urlencode

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger

from alerts.calendar import BEIJING
from alerts.notify.channels import (
    Channel,
    ChannelUnavailable,
    DeliveryRejected,
    EmailChannel,
    OutboundMessage,
    build_channel,
)
from alerts.notify.config import ChannelConfig, EmailChannelConfig, NotifyConfig
from alerts.notify.templates import Rendered
from core import clock
from core.errors import LianfangError, UserError
from core.settings import ReportScheduleSettings, ReportSettings
from reports.model import Report, ReportRequest, ReportSource
from reports.period import parse_period
from reports.registry import build_report
from reports.render import (
    Lang,
    csv_tables,
    fmt_cell,
    period_text,
    pick,
    render_html,
    render_json,
    render_pdf,
    report_json,
)

logger = logging.getLogger(__name__)

ATTEMPTS = 3
BACKOFF_S = (5.0, 30.0)
FINDINGS_IN_MESSAGE = 10
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WHOLE_WEEK = {"0-6", "1-7", "0-7"}


def _day_of_week(text: str) -> str:
    """Standard cron numbering (0 or 7 Sunday, 1 Monday) as apscheduler's names (its numbers start on Monday)."""
    out = []
    for item in text.split(","):
        base, sep, step = item.partition("/")
        if base in _WHOLE_WEEK:
            base = "*"
        base = re.sub(r"\d+", lambda m: _DAYS[int(m.group())] if int(m.group()) <= 7 else m.group(), base)
        out.append(base + sep + step)
    return ",".join(out)


def cron_trigger(expr: str) -> CronTrigger:
    """``"minute hour day month day-of-week"`` in Beijing time (standard cron: day-of-week 1 is Monday).
    ValueError naming the problem."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron {expr!r}: 5 fields (minute hour day month day-of-week), e.g. '0 8 * * 1'")
    minute, hour, day, month, dow = fields
    try:
        return CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=_day_of_week(dow), timezone=BEIJING
        )
    except ValueError as exc:
        raise ValueError(f"cron {expr!r}: {exc}") from exc


# --- the message ---------------------------------------------------------------------------------------------


def report_link(link_base: str | None, report: Report, period: str) -> str | None:
    """The page's reports view for this report (the page asks for a login first)."""
    if not link_base:
        return None
    query = urlencode({"kind": report.kind, "region": report.region_id, "period": period})
    return f"{link_base.rstrip('/')}/#reports?{query}"


def summary_message(report: Report, lang: Lang, link: str | None) -> Rendered:
    """Title, Markdown (robots) and plain text (e-mail) of a report: headline figures, findings, link."""
    title = f"{pick(report.title_zh, report.title_en, lang)} · {report.region_name}"
    period = f"{pick('统计周期', 'Period', lang)}: {period_text(report)} ({pick('北京时间', 'Beijing time', lang)})"
    figures = [
        (pick(*report.summary_labels.get(k, (k, k)), lang), fmt_cell(v, lang)) for k, v in report.summary.items()
    ]
    findings = [pick(f.text_zh, f.text_en, lang) for f in report.findings[:FINDINGS_IN_MESSAGE]]
    more = len(report.findings) - len(findings)
    heading = pick("待办与建议", "Findings", lang)
    md = [f"### {title}", f"> {period}", ""]
    md += [f"- **{label}**: {value}" for label, value in figures]
    text = [title, period, ""] + [f"{label}: {value}" for label, value in figures]
    if findings:
        md += ["", f"**{heading}**"] + [f"{i + 1}. {f}" for i, f in enumerate(findings)]
        text += ["", heading] + [f"{i + 1}. {f}" for i, f in enumerate(findings)]
        if more > 0:
            line = pick(f"……另有 {more} 条，见完整报告", f"… {more} more in the full report", lang)
            md.append(line)
            text.append(line)
    if link:
        md += ["", f"[{pick('查看完整报告', 'Open the full report', lang)}]({link})"]
        text += ["", f"{pick('完整报告', 'Full report', lang)}: {link}"]
    return Rendered(title=title, markdown="\n".join(md), text="\n".join(text) + "\n")


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    data: bytes
    maintype: str
    subtype: str


def attachments(report: Report, fmt: str, lang: Lang) -> list[Attachment]:
    stem = f"{report.kind}-{report.region_id}-{report.start.astimezone(BEIJING):%Y%m%d}"
    if fmt == "html":
        return [Attachment(f"{stem}.html", render_html(report, lang), "text", "html")]
    if fmt == "pdf":
        return [Attachment(f"{stem}.pdf", render_pdf(report, lang), "application", "pdf")]
    if fmt == "csv":
        return [Attachment(f"{stem}-{key}.csv", data, "text", "csv") for key, data in csv_tables(report, lang).items()]
    return [Attachment(f"{stem}.json", render_json(report), "application", "json")]


class ReportEmailChannel(EmailChannel):
    """The e-mail channel with the report inline (HTML) and attached."""

    def __init__(self, cfg: EmailChannelConfig, files: Sequence[Attachment]) -> None:
        super().__init__(cfg)
        self.files = list(files)

    def build(self, message: OutboundMessage, now: datetime) -> EmailMessage:
        msg = super().build(message, now)
        for f in self.files:
            if f.subtype == "html":
                msg.add_alternative(f.data.decode("utf-8"), subtype="html", charset="utf-8")
        for f in self.files:
            msg.add_attachment(f.data, maintype=f.maintype, subtype=f.subtype, filename=f.filename)
        return msg


@dataclass(frozen=True, slots=True)
class Delivery:
    channel: str
    ok: bool
    error: str | None = None


def deliver(
    report: Report,
    schedule: ReportScheduleSettings,
    channels: Sequence[ChannelConfig],
    now: datetime,
    link_base: str | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    make_channel: Callable[[ChannelConfig], Channel] = build_channel,
    wall_clock: Callable[[], datetime] = clock.now,
) -> list[Delivery]:
    """Send the report (as of ``now``) through each channel; what happened per channel. Signatures and mail
    headers use ``wall_clock`` (the receivers check that a request is recent)."""
    lang: Lang = schedule.lang
    rendered = summary_message(report, lang, report_link(link_base, report, schedule.period))
    doc = report_json(report)
    doc.pop("tables", None)
    message = OutboundMessage(
        message_id=f"report-{schedule.name}-{now.astimezone(BEIJING):%Y%m%dT%H%M}",
        rendered=rendered,
        notifications=(),
        language="zh-CN" if lang == "zh" else "en",
        extra={"report": doc},
    )
    files: list[Attachment] | None = None
    out = []
    for cfg in channels:
        if isinstance(cfg, EmailChannelConfig):
            if files is None:
                try:
                    files = attachments(report, schedule.format, lang)
                except UserError as exc:  # e.g. PDF without chromium: the summary still goes out, with HTML
                    logger.warning("scheduled report %s: %s; attaching HTML instead", schedule.name, exc)
                    files = attachments(report, "html", lang)
            channel: Channel = ReportEmailChannel(cfg, files)
        else:
            channel = make_channel(cfg)
        out.append(_send(channel, message, wall_clock, sleep))
    return out


def _send(
    channel: Channel, message: OutboundMessage, wall_clock: Callable[[], datetime], sleep: Callable[[float], None]
) -> Delivery:
    try:
        for attempt in range(ATTEMPTS):
            try:
                channel.send(message, wall_clock())
                return Delivery(channel.name, True)
            except ChannelUnavailable as exc:
                if attempt == ATTEMPTS - 1:
                    return Delivery(channel.name, False, str(exc))
                sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            except DeliveryRejected as exc:
                return Delivery(channel.name, False, str(exc))
    finally:
        channel.close()
    return Delivery(channel.name, False, "not sent")


# --- the jobs ------------------------------------------------------------------------------------------------


class ReportSchedules:
    """The scheduled reports of the settings: checked against the notification channels and the registry, and
    run by apscheduler (``install``) or directly (``run``, with a fixed ``now`` in tests)."""

    def __init__(
        self,
        settings: ReportSettings,
        source: ReportSource,
        notify: NotifyConfig,
        *,
        clock_fn: Callable[[], datetime] = clock.now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.source = source
        self.channels: Mapping[str, ChannelConfig] = {c.name: c for c in notify.channels}
        self.clock = clock_fn
        self.sleep = sleep
        self.by_name = {s.name: s for s in settings.schedules}

    def check(self, region_exists: Callable[[str], bool]) -> None:
        """UserError naming the schedule field whose channel or region does not exist."""
        for i, s in enumerate(self.settings.schedules):
            for j, ch in enumerate(s.channels):
                if ch not in self.channels:
                    known = ", ".join(sorted(self.channels)) or "none: alerts.notify_config has no channels"
                    raise UserError(f"reports.schedules[{i}].channels[{j}]: unknown channel {ch!r} ({known})")
            if not region_exists(s.region):
                raise UserError(f"reports.schedules[{i}].region: region {s.region!r} does not exist")

    def install(self, scheduler: BaseScheduler) -> None:
        for s in self.settings.schedules:
            scheduler.add_job(
                self.run,
                cron_trigger(s.cron),
                args=[s.name],
                id=f"report-{s.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=3600,
            )

    def run(self, name: str, now: datetime | None = None) -> list[Delivery]:
        """Build and deliver schedule ``name`` as of ``now`` (default: the clock). Never raises: logs."""
        s = self.by_name[name]
        at = now or self.clock()
        try:
            p = parse_period(s.period, at)
            report = build_report(self.source, ReportRequest(s.kind, s.region, p.start, p.end, at))
            result = deliver(
                report, s, [self.channels[c] for c in s.channels], at, self.settings.link_base, sleep=self.sleep
            )
        except LianfangError as exc:
            logger.error("scheduled report %s not built: %s", name, exc)
            return []
        except Exception:
            logger.exception("scheduled report %s failed", name)
            return []
        for d in result:
            if d.ok:
                logger.info("scheduled report %s delivered to %s", name, d.channel)
            else:
                logger.warning("scheduled report %s not delivered to %s: %s", name, d.channel, d.error)
        return result


def start_report_schedules(
    settings: ReportSettings,
    source: ReportSource,
    notify: NotifyConfig,
    scheduler: BaseScheduler,
    region_exists: Callable[[str], bool],
) -> ReportSchedules:
    """Check and install the schedules on a running scheduler (lianfang/runtime.py)."""
    jobs = ReportSchedules(settings, source, notify)
    jobs.check(region_exists)
    jobs.install(scheduler)
    return jobs
