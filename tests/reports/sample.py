"""A hand-made report with every part (tables, bar/line/heatmap charts, findings) for the renderer tests."""

from __future__ import annotations

from datetime import UTC, datetime

from reports.model import Chart, Column, Finding, Report, Table

START = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
END = datetime(2026, 11, 8, 0, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 8, 1, 30, tzinfo=UTC)


def sample_report() -> Report:
    devices = Table(
        "devices",
        "设备",
        "Devices",
        (
            Column("device", "设备", "Device"),
            Column("messages", "消息数", "Messages"),
            Column("km", "里程", "Distance", "km"),
        ),
        (
            {"device": "veh-苏A001", "messages": 1200, "km": 35.25},
            {"device": "veh-<b>", "messages": 0, "km": None},
            {"device": "door-1", "messages": 7, "km": 0.5},
        ),
    )
    reasons = Table(
        "reasons",
        "拒收原因",
        "Rejection reasons",
        (Column("reason", "原因", "Reason"), Column("count", "次数", "Count"), Column("ok", "已处理", "Handled")),
        ({"reason": "schema", "count": 3, "ok": True}, {"reason": "auth", "count": 1, "ok": False}),
    )
    charts = (
        Chart(
            "per_day", "每日消息", "Messages per day", "bar", ("11-01", "11-02", "11-03"), {"消息": (5.0, 0.0, 12.5)}
        ),
        Chart("trend", "趋势", "Trend", "line", ("a", "b", "c"), {"x": (1.0, 2.0, 3.0), "y": (3.0, 2.0, 1.0)}, "kWh"),
        Chart(
            "heat", "热力图", "Heatmap", "heatmap", ("0", "1", "2"), {"周一": (0.0, 1.0, 2.0), "周二": (2.0, 1.0, 0.0)}
        ),
    )
    findings = (
        Finding("fix-1", "设备 door-1 已 3 天未上报", "Device door-1 has not reported for 3 days", {"days": 3}),
    )
    return Report(
        kind="coverage",
        region_id="r-nj",
        region_name="南京市",
        start=START,
        end=END,
        generated_at=NOW,
        title_zh="数据覆盖与质量报告",
        title_en="Data coverage and quality report",
        summary={"expected": 3, "reporting": 2, "share": 66.667},
        summary_labels={"expected": ("应报设备", "Expected"), "reporting": ("上报设备", "Reporting")},
        tables=(devices, reasons),
        charts=charts,
        findings=findings,
    )
