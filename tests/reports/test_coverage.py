from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from alerts.calendar import Calendar
from core.errors import UserError
from core.store.sqlite import SqliteStore
from devices.registry import Registry
from reports.coverage import seq_count
from reports.model import ReportRequest
from reports.registry import build_report
from reports.render import render_html
from reports.source import LiveSource
from tests.reports.seed import END, NOW, START, seed


@pytest.fixture
def source(registry: Registry, tmp_path: Path) -> Iterator[LiveSource]:
    store = SqliteStore(tmp_path / "telemetry.db")
    seed(registry, store)
    yield LiveSource(registry.engine, store, Calendar())
    store.close()


def _build(source: LiveSource, region: str = "js"):  # type: ignore[no-untyped-def]
    return build_report(source, ReportRequest("coverage", region, START, END, NOW))


def test_summary_hand_computed(source: LiveSource) -> None:
    r = _build(source)
    assert r.region_name == "江苏省"
    assert r.summary == {
        # gate-1 veh-1 meter-1 meter-2 gate-0 gate-late gate-evt meter-3 (sensor-1 disabled, sensor-2 created later)
        "expected": 8,
        "reporting": 5,  # gate-1 veh-1 meter-2, and gate-evt meter-3 (last seen after the end, data inside)
        "reporting_pct": 62.5,
        "never": 1,  # meter-1
        "stale": 4,  # veh-1 meter-1 gate-0 gate-late
        "gaps": 10,
        "recovered": 4,  # 10 - (4 + 2) lost to date
        "lost": 4,  # 101-104 in the period
        "rejected": 5,  # veh-1 2 schema, meter-2 3 bad_timestamp in the period
        "nonstandard": 1,
        "clock_skew": 1,
        "findings": 8,
    }


def test_regions_rolled_up(source: LiveSource) -> None:
    rows = {row["region"]: row for row in _build(source).tables[0].rows}
    assert list(rows) == ["js", "nj", "nj-a", "sz"]
    cols = ["expected", "reporting", "reporting_pct", "never", "stale", "gaps", "recovered", "lost", "rejected"]
    pick = {k: [rows[k][c] for c in [*cols, "nonstandard", "clock_skew"]] for k in rows}
    assert pick["nj"] == [3, 2, 66.7, 1, 2, 10, 4, 4, 2, 1, 0]
    assert pick["nj-a"] == [2, 2, 100.0, 0, 1, 10, 4, 4, 2, 1, 0]
    assert pick["sz"] == [5, 3, 60.0, 0, 2, 0, 0, 0, 3, 0, 1]


def test_rejections_and_devices(source: LiveSource) -> None:
    r = _build(source)
    assert [(x["reason"], x["count"]) for x in r.tables[1].rows] == [("bad_timestamp", 3), ("schema", 2)]
    devices = {row["device"]: row for row in r.tables[2].rows}
    assert set(devices) == {"gate-1", "veh-1", "meter-1", "meter-2", "gate-0", "gate-late"}
    assert devices["gate-late"]["issues"] == "离线 / stale"
    assert devices["meter-2"]["skew_s"] == 310.5 and devices["meter-2"]["rejected"] == 3
    assert devices["gate-1"]["lost"] == 4 and devices["gate-1"]["gaps"] == 10
    assert devices["gate-1"]["last_seen"] == "2026-11-07 23:59" and devices["meter-1"]["last_seen"] is None
    assert str(devices["meter-1"]["issues"]).endswith("never")
    assert devices["veh-1"]["issues"] == "离线、消息被拒收、非标准字段 / stale, rejected, nonstandard"


def test_findings_name_what_each_region_must_fix(source: LiveSource) -> None:
    r = _build(source)
    assert [f.key for f in r.findings] == [
        "nj:never",
        "nj-a:stale",
        "nj-a:lost",
        "nj-a:rejected:schema",
        "nj-a:nonstandard",
        "sz:stale",
        "sz:rejected:bad_timestamp",
        "sz:clock_skew",
    ]
    by_key = {f.key: f for f in r.findings}
    assert by_key["nj-a:lost"].numbers == {"region": "nj-a", "devices": 1, "records": 4}
    assert "gate-1" in by_key["nj-a:lost"].text_zh and "4 条记录" in by_key["nj-a:lost"].text_zh
    assert by_key["sz:clock_skew"].numbers["max_skew_s"] == 310.5
    assert "meter-1" in by_key["nj:never"].text_en
    assert by_key["sz:stale"].numbers == {"region": "sz", "devices": 2}
    assert "（gate-0, gate-late）" in by_key["sz:stale"].text_zh


def test_a_sub_region_sees_only_its_subtree(source: LiveSource) -> None:
    r = _build(source, "sz")
    assert r.summary["expected"] == 5 and r.summary["rejected"] == 3 and r.summary["lost"] == 0
    assert [row["region"] for row in r.tables[0].rows] == ["sz"]
    assert "gate-1" not in render_html(r).decode()


def test_unknown_region_is_an_error(source: LiveSource) -> None:
    with pytest.raises(UserError, match="nope"):
        _build(source, "nope")


@pytest.mark.parametrize(("group", "n"), [("101-104", 4), ("7", 1), ("", 0), ("x-y", 0), ("9-3", 0)])
def test_seq_count(group: str, n: int) -> None:
    assert seq_count(group) == n
