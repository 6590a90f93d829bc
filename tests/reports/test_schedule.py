"""Scheduled reports: settings validated (a bad field is named), cron in Beijing time, and a schedule that fires
(the job function called with a fixed ``now``) delivering to a real aiosmtpd SMTP server and real HTTP receivers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from alerts.calendar import Calendar
from alerts.notify.config import parse_notify_config
from core.errors import UserError
from core.settings import ReportSettings, load_settings
from core.store.sqlite import SqliteStore
from devices.registry import Registry
from reports.render import pdf_browser
from reports.schedule import ReportSchedules, cron_trigger
from reports.source import LiveSource
from tests.alerts.notify_fixtures import WEBHOOK_SECRET, WECOM_KEY, Receiver, SmtpServer
from tests.reports.seed import NOW, seed

SCHEDULE: dict[str, Any] = {
    "name": "weekly-coverage",
    "kind": "coverage",
    "region": "js",
    "period": "2026-11-01..2026-11-07",
    "cron": "0 8 * * 1",
    "channels": ["mail", "hook", "robot"],
    "link_base": None,
}


def _settings(tmp_path: Path, **reports: Any) -> Any:
    cfg = tmp_path / "lianfang.yaml"
    cfg.write_text(json.dumps({"data_dir": str(tmp_path), "reports": reports}), encoding="utf-8")
    return load_settings(cfg)


@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        ({"cron": "0 25 * * *"}, "reports.schedules.0.cron"),
        ({"cron": "daily"}, "reports.schedules.0.cron"),
        ({"period": "fortnight"}, "reports.schedules.0.period"),
        ({"kind": "weather"}, "reports.schedules.0.kind"),
        ({"channels": []}, "reports.schedules.0.channels"),
        ({"format": "docx"}, "reports.schedules.0.format"),
        ({"colour": "red"}, "reports.schedules.0.colour"),
    ],
)
def test_a_bad_schedule_names_its_field(tmp_path: Path, schedule: dict[str, Any], field: str) -> None:
    s = {k: v for k, v in SCHEDULE.items() if k != "link_base"} | schedule
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        _settings(tmp_path, schedules=[s])


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    s = {k: v for k, v in SCHEDULE.items() if k != "link_base"}
    with pytest.raises(UserError, match="duplicate schedule name"):
        _settings(tmp_path, schedules=[s, s])


def test_cron_is_beijing_time_with_standard_day_numbers() -> None:
    friday_night = datetime(2026, 12, 4, 20, 0, tzinfo=UTC)  # Saturday 04:00 in Beijing
    nxt = cron_trigger("0 8 * * 1").get_next_fire_time(None, friday_night)
    assert nxt is not None and nxt.isoformat() == "2026-12-07T08:00:00+08:00"  # Monday
    sunday = cron_trigger("30 7 * * 0").get_next_fire_time(None, friday_night)
    assert sunday is not None and sunday.isoformat() == "2026-12-06T07:30:00+08:00"
    weekdays = cron_trigger("0 9 * * 1-5").get_next_fire_time(None, friday_night)
    assert weekdays is not None and weekdays.isoformat() == "2026-12-07T09:00:00+08:00"
    monthly = cron_trigger("0 8 1 * *").get_next_fire_time(None, friday_night)
    assert monthly is not None and monthly.isoformat() == "2027-01-01T08:00:00+08:00"


@pytest.fixture
def source(sqlite_registry: Registry, tmp_path: Path) -> Iterator[LiveSource]:
    store = SqliteStore(tmp_path / "telemetry.db")
    seed(sqlite_registry, store)
    yield LiveSource(sqlite_registry.engine, store, Calendar())
    store.close()


def _notify(http: Receiver, smtp: SmtpServer) -> Any:
    return parse_notify_config(
        {
            "channels": [
                {
                    "name": "mail",
                    "type": "email",
                    "host": "127.0.0.1",
                    "port": smtp.port,
                    "security": "none",
                    "sender": "lianfang@example.org",
                    "recipients": ["leader@example.org"],
                },
                {"name": "hook", "type": "webhook", "url": f"{http.base}/hook/reports", "secret": WEBHOOK_SECRET},
                {"name": "robot", "type": "wecom", "url": f"{http.base}/wecom/send", "key": WECOM_KEY},
            ]
        }
    )


def test_unknown_channel_or_region_is_named(source: LiveSource, receiver: Receiver, smtp_server: SmtpServer) -> None:
    base = {k: v for k, v in SCHEDULE.items() if k != "link_base"}
    bad = ReportSettings.model_validate({"schedules": [base | {"channels": ["mail", "sms"]}]})
    jobs = ReportSchedules(bad, source, _notify(receiver, smtp_server))
    with pytest.raises(UserError, match=r"reports\.schedules\[0\]\.channels\[1\]: unknown channel 'sms'"):
        jobs.check(lambda _r: True)
    ok = ReportSettings.model_validate({"schedules": [base]})
    with pytest.raises(UserError, match=r"reports\.schedules\[0\]\.region: region 'js' does not exist"):
        ReportSchedules(ok, source, _notify(receiver, smtp_server)).check(lambda _r: False)


def test_a_schedule_fires_and_delivers(source: LiveSource, receiver: Receiver, smtp_server: SmtpServer) -> None:
    base = {k: v for k, v in SCHEDULE.items() if k != "link_base"}
    settings = ReportSettings.model_validate({"schedules": [base], "link_base": "https://lianfang.example.gov.cn"})
    jobs = ReportSchedules(settings, source, _notify(receiver, smtp_server), sleep=lambda _s: None)
    jobs.check(lambda _r: True)
    result = jobs.run("weekly-coverage", now=NOW)
    assert [(d.channel, d.ok) for d in result] == [("mail", True), ("hook", True), ("robot", True)], result

    # e-mail: the summary as text, the report inline as HTML and attached
    [mail] = smtp_server.mailbox.messages
    assert "数据覆盖与质量报告" in str(mail["Subject"])
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None and "应报设备: 8" in body.get_content()
    html = mail.get_body(preferencelist=("html",))
    assert html is not None and "需处理的设备" in html.get_content()
    files = [(p.get_filename(), p.get_content_type()) for p in mail.iter_attachments()]
    assert files == [("coverage-js-20261101.html", "text/html")]

    # signed webhook: accepted by the receiver's signature check, with the report's figures
    [hook] = receiver.accepted("/hook")
    doc = hook.json()
    assert {s["key"]: s["value"] for s in doc["report"]["summary"]}["expected"] == 8
    assert "tables" not in doc["report"] and len(doc["report"]["findings"]) == 8
    assert doc["language"] == "zh-CN" and doc["title"].startswith("数据覆盖与质量报告")

    # WeCom robot: a zh-CN Markdown summary with the findings and the link to the page
    [robot] = receiver.accepted("/wecom/send")
    text = robot.text()
    assert "**上报设备**: 5" in text and "南京市：1 台设备从未上报数据" in text
    assert "https://lianfang.example.gov.cn/#reports?kind=coverage&region=js" in text


def test_a_failing_build_is_logged_not_raised(source: LiveSource, receiver: Receiver, smtp_server: SmtpServer) -> None:
    base = {k: v for k, v in SCHEDULE.items() if k != "link_base"} | {"region": "nowhere"}
    jobs = ReportSchedules(ReportSettings.model_validate({"schedules": [base]}), source, _notify(receiver, smtp_server))
    assert jobs.run("weekly-coverage", now=NOW) == []
    assert receiver.received() == [] and smtp_server.mailbox.messages == []


def test_start_installs_one_cron_job_per_schedule(
    source: LiveSource, receiver: Receiver, smtp_server: SmtpServer
) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    from reports.schedule import start_report_schedules

    base = {k: v for k, v in SCHEDULE.items() if k != "link_base"}
    settings = ReportSettings.model_validate({"schedules": [base, base | {"name": "monthly", "cron": "0 9 1 * *"}]})
    sched = BackgroundScheduler(timezone="UTC")
    start_report_schedules(settings, source, _notify(receiver, smtp_server), sched, lambda _r: True)
    jobs = {j.id: j for j in sched.get_jobs()}
    assert set(jobs) == {"report-weekly-coverage", "report-monthly"}
    fire = jobs["report-monthly"].trigger.get_next_fire_time(None, NOW)
    assert fire.isoformat() == "2026-12-01T09:00:00+08:00"


def test_pdf_without_chromium_still_mails_the_html(
    source: LiveSource, receiver: Receiver, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reports.render

    monkeypatch.setattr(reports.render, "pdf_browser", lambda: None)
    base = {k: v for k, v in SCHEDULE.items() if k != "link_base"} | {"format": "pdf", "channels": ["mail"]}
    jobs = ReportSchedules(ReportSettings.model_validate({"schedules": [base]}), source, _notify(receiver, smtp_server))
    assert [(d.channel, d.ok) for d in jobs.run("weekly-coverage", now=NOW)] == [("mail", True)]
    [mail] = smtp_server.mailbox.messages
    assert [p.get_filename() for p in mail.iter_attachments()] == ["coverage-js-20261101.html"]


@pytest.mark.skipif(pdf_browser() is None, reason="no chromium on PATH")
def test_pdf_is_attached(source: LiveSource, receiver: Receiver, smtp_server: SmtpServer) -> None:
    base = {k: v for k, v in SCHEDULE.items() if k != "link_base"} | {"format": "pdf", "channels": ["mail"]}
    jobs = ReportSchedules(ReportSettings.model_validate({"schedules": [base]}), source, _notify(receiver, smtp_server))
    assert [(d.channel, d.ok) for d in jobs.run("weekly-coverage", now=NOW)] == [("mail", True)]
    [mail] = smtp_server.mailbox.messages
    [pdf] = list(mail.iter_attachments())
    assert pdf.get_filename() == "coverage-js-20261101.pdf" and pdf.get_content().startswith(b"%PDF")
