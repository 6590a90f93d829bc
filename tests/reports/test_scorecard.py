"""The region scorecard on seeded SQL and telemetry data, with hand-computed figures.

Tree: province p; cities c1 (agencies a1, a2) and c2 (agency a3). Target c1, period Mon 2026-11-16 00:00 to Mon
2026-11-23 00:00 Beijing time (5 working days, no holiday; working hours 08:30-17:30: 45 h per vehicle); previous
period the week before.

- Coverage: c1 expects 6 devices (a1: m1 main meter, m1s its sub, g1 gate, v1 vehicle; a2: g2 gate, m2 main
  meter). This week all but g2 report: 5/6 = 83.3 % (a1 100 %, a2 50 %); last week only m1 and m2: 33.3 %.
- Energy (main meters only; the sub m1s would count twice): m1 1000 -> 1700 last week, 2000 -> 3400 this week;
  m2 500 -> 570, 600 -> 670, each between Monday 01:00 and Sunday 23:30 (6.9375 days). c1: 1470 kWh = 211.9
  kWh/day against 770 = 111.0/day: 190.9 % of the baseline.
- Fleet: v1 on Mon 09:00-11:00 (2 h working) and Tue 17:00-18:00 (0.5 h working): 2.5 / 45 h = 5.6 %.
- Alerts this week: a1 ack 5 / resolve 30 min, a1 ack 15 / resolve 90 min, a2 ack 10 min, open. c1: 3 alerts,
  TTA p50 10 (nearest rank of 5, 10, 15), p90 15; TTR p50 30, p90 90; 1 open. c2 (a3): ack 2, resolve 20 min:
  c2 ranks 1 on time to resolve, c1 2. Last week: a1 ack 20 / resolve 60 min.
- Incident in a1: opened Mon 12:00, first task acknowledged 12:10, resolved 13:00: TTA 10, TTR 60 min.
- Risk of c1: Mon peaks 30 (points 20 and 30), Wed 12, other days none: mean of daily peaks 42 / 7 = 6.0; last
  week 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import insert

from alerts.calendar import BEIJING, Calendar
from alerts.models import AlertRow
from core.protocol import Event, Reading
from core.store import WriteBatch
from core.store.sqlite import SqliteStore
from devices.registry import DeviceSpec, RegionSpec, Registry
from joint.models import IncidentRow, TaskRow
from joint.risk_store import HistoryPoint, RiskHistory
from reports.model import Report, ReportRequest
from reports.scorecard import build, daily_peaks, ignition_intervals, previous_period, ranks
from reports.source import LiveSource

START = datetime(2026, 11, 16, tzinfo=BEIJING)
END = datetime(2026, 11, 23, tzinfo=BEIJING)
NOW = datetime(2026, 11, 23, 2, 0, tzinfo=BEIJING)
PREV = START - timedelta(days=7)
M = timedelta(minutes=1)

REGIONS = [
    RegionSpec("pv", "广东省", "province"),
    RegionSpec("c1", "广州市", "city", "pv"),
    RegionSpec("c2", "深圳市", "city", "pv"),
    RegionSpec("a1", "市公安局", "agency", "c1"),
    RegionSpec("a2", "市财政局", "agency", "c1"),
    RegionSpec("a3", "深圳市公安局", "agency", "c2"),
]
DEVICES = [
    DeviceSpec("mt1", "energy_meter", "a1", attributes={"role": "main"}),
    DeviceSpec("mt1s", "energy_meter", "a1", attributes={"role": "sub", "parent_meter": "mt1"}),
    DeviceSpec("gt1", "gate", "a1"),
    DeviceSpec("vh1", "vehicle", "a1"),
    DeviceSpec("gt2", "gate", "a2"),
    DeviceSpec("mt2", "energy_meter", "a2"),
    DeviceSpec("gt3", "gate", "a3"),
]
PATHS = {"a1": "/pv/c1/a1/", "a2": "/pv/c1/a2/", "a3": "/pv/c2/a3/"}


def at(day: datetime, hh: int, mm: int = 0, d: int = 0) -> datetime:
    return day + timedelta(days=d, hours=hh, minutes=mm)


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _alert(i: int, region: str, raised: datetime, ack_min: int | None, res_min: int | None) -> dict[str, object]:
    return {
        "id": i,
        "dedup_key": f"k{i}",
        "open_key": None if res_min is not None else f"k{i}",
        "rule_id": "G1",
        "device_id": "gt1",
        "region_id": region,
        "region_path": PATHS[region],
        "severity": "warning",
        "state": "resolved" if res_min is not None else "acknowledged",
        "title_zh": "t",
        "title_en": "t",
        "started_at": raised,
        "updated_at": raised,
        "learned_at": raised,
        "detail": {},
        "acknowledged_at": None if ack_min is None else raised + ack_min * M,
        "resolved_at": None if res_min is None else raised + res_min * M,
    }


def _reading(dev: str, region: str, dtype: str, t: datetime, **fields: float | bool) -> Reading:
    return Reading(dev, region, dtype, ms(t), None, dict(fields))


@pytest.fixture
def source(sqlite_registry: Registry, tmp_path: Path) -> Iterator[LiveSource]:
    reg = sqlite_registry
    reg.upsert_regions(REGIONS, now=PREV - timedelta(days=30))
    reg.add_devices(DEVICES, now=PREV - timedelta(days=30))
    with reg.engine.begin() as conn:
        conn.execute(
            insert(AlertRow),
            [
                _alert(1, "a1", at(START, 10), 5, 30),
                _alert(2, "a1", at(START, 10, d=1), 15, 90),
                _alert(3, "a2", at(START, 10, d=2), 10, None),
                _alert(4, "a3", at(START, 11), 2, 20),
                _alert(5, "a1", at(PREV, 10, d=3), 20, 60),
                _alert(6, "a1", at(PREV, 10, d=-3), 1, 1),  # before both periods
            ],
        )
        conn.execute(
            insert(IncidentRow),
            [
                {
                    "id": 1,
                    "pattern_id": "X2",
                    "type": "intrusion",
                    "title_zh": "t",
                    "title_en": "t",
                    "severity": "major",
                    "state": "resolved",
                    "scope_level": "agency",
                    "region_id": "a1",
                    "region_path": PATHS["a1"],
                    "group_key": "g",
                    "opened_at": at(START, 12),
                    "updated_at": at(START, 13),
                    "resolved_at": at(START, 13),
                    "detail": {},
                }
            ],
        )
        conn.execute(
            insert(TaskRow),
            [
                {
                    "id": 1,
                    "incident_id": 1,
                    "department": "security",
                    "state": "closed",
                    "created_at": at(START, 12),
                    "deadline": at(START, 14),
                    "acknowledged_at": at(START, 12, 10),
                }
            ],
        )
    RiskHistory(reg.engine).write(
        [
            HistoryPoint("c1", at(START, 10), 20.0, 20.0, 1, 0),
            HistoryPoint("c1", at(START, 14), 30.0, 30.0, 2, 0),
            HistoryPoint("c1", at(START, 10, d=2), 12.0, 12.0, 1, 0),
        ]
    )
    store = SqliteStore(tmp_path / "t.db", synchronous="NORMAL", background_checkpoint=False)
    b = WriteBatch()
    for week, (m1a, m1b, m2a, m2b) in ((PREV, (1000, 1700, 500, 570)), (START, (2000, 3400, 600, 670))):
        b.readings += [
            _reading("mt1", "a1", "energy_meter", at(week, 1), energy_kwh=m1a),
            _reading("mt1", "a1", "energy_meter", at(week, 23, 30, d=6), energy_kwh=m1b),
            _reading("mt2", "a2", "energy_meter", at(week, 1), energy_kwh=m2a),
            _reading("mt2", "a2", "energy_meter", at(week, 23, 30, d=6), energy_kwh=m2b),
        ]
    b.readings += [
        _reading("mt1s", "a1", "energy_meter", at(START, 1), energy_kwh=10_000),
        _reading("mt1s", "a1", "energy_meter", at(START, 2), energy_kwh=90_000),
        _reading("gt1", "a1", "gate", at(START, 3), occupancy=2, door_open=False),
        _reading("gt3", "a3", "gate", at(START, 3), occupancy=1, door_open=False),
        _reading("vh1", "a1", "vehicle", at(START, 9), lat=23.1, lon=113.2, ignition=True),
    ]
    b.events += [
        Event("vh1", "a1", "vehicle", ms(at(START, 9)), None, "ignition_on"),
        Event("vh1", "a1", "vehicle", ms(at(START, 11)), None, "ignition_off"),
        Event("vh1", "a1", "vehicle", ms(at(START, 17, d=1)), None, "ignition_on"),
        Event("vh1", "a1", "vehicle", ms(at(START, 18, d=1)), None, "ignition_off"),
    ]
    store.write(b)
    src = LiveSource(reg.engine, store, Calendar())
    try:
        yield src
    finally:
        store.close()


def _report(source: LiveSource, region: str = "c1") -> Report:
    return build(source, ReportRequest("scorecard", region, START, END, NOW))


def _table(report: Report, key: str) -> dict[str, dict[str, object]]:
    t = next(t for t in report.tables if t.key == key)
    first = t.columns[0].key
    return {str(r[first]): dict(r) for r in t.rows}


def test_summary_figures(source: LiveSource) -> None:
    r = _report(source)
    s = r.summary
    assert (s["alerts"], s["alert_tta_p50"], s["alert_ttr_p50"], s["incidents"]) == (3, 10, 30, 1)
    assert s["coverage_pct"] == 83.3
    assert s["risk"] == 6.0
    assert s["energy_vs_baseline_pct"] == 190.9
    assert s["use_pct"] == 5.6
    assert (s["siblings"], s["rank_alert_ttr_p50"], s["rank_coverage_pct"]) == (2, 2, 2)
    assert r.summary_labels["alert_ttr_p50"] == ("告警处置用时中位数（分钟）", "Alert time to resolve p50 (min)")
    assert set(r.summary_labels) == set(s)


def test_region_and_children_rows(source: LiveSource) -> None:
    rows = _table(_report(source), "regions")
    c1, a1, a2 = rows["广州市"], rows["市公安局"], rows["市财政局"]
    assert (c1["alert_tta_p90"], c1["alert_ttr_p90"], c1["alerts_open"]) == (15, 90, 1)
    assert (c1["incident_tta_p50"], c1["incident_ttr_p50"]) == (10, 60)
    assert (c1["expected"], a1["expected"], a2["expected"]) == (6, 4, 2)
    assert (a1["coverage_pct"], a2["coverage_pct"]) == (100, 50)
    assert c1["kwh_per_day"] == 211.9
    assert (a1["alerts"], a1["alert_tta_p50"], a1["alert_ttr_p50"]) == (2, 5, 30)
    assert (a2["alerts"], a2["alert_tta_p50"], a2["alert_ttr_p50"]) == (1, 10, None)
    assert a2["use_pct"] is None  # no vehicle


def test_siblings_ranked(source: LiveSource) -> None:
    rows = _table(_report(source), "siblings")
    c1, c2 = rows["广州市"], rows["深圳市"]
    assert (c2["alert_ttr_p50"], c2["rank_alert_ttr_p50"], c1["rank_alert_ttr_p50"]) == (20, 1, 2)
    assert (c2["coverage_pct"], c2["rank_coverage_pct"], c1["rank_coverage_pct"]) == (100, 1, 2)
    assert (c2["risk"], c2["rank_risk"], c1["rank_risk"]) == (0, 1, 2)
    assert (c1["rank_use_pct"], c2["rank_use_pct"]) == (1, None)


def test_previous_period(source: LiveSource) -> None:
    rows = {k.split(" / ")[1]: v for k, v in _table(_report(source), "previous").items()}
    assert rows["Alert time to resolve p50"] == {
        "metric": "告警处置用时中位数 / Alert time to resolve p50",
        "current": 30,
        "previous": 60,
        "delta": -30,
    }
    assert (rows["Coverage"]["previous"], rows["Coverage"]["delta"]) == (33.3, 50)
    assert (rows["Alerts"]["previous"], rows["Risk (mean daily peak)"]["previous"]) == (1, 0)
    assert rows["Energy per day"]["previous"] == 111


def test_findings_with_numbers(source: LiveSource) -> None:
    f = {x.key: x for x in _report(source).findings}
    assert set(f) == {"response", "coverage", "risk_up", "energy_up", "fleet_low_use"}
    assert f["response"].numbers["rank"] == 2 and "在2个同级地区中排第2" in f["response"].text_zh
    assert "30 min" in f["response"].text_en and "60 min" in f["response"].text_en
    assert "市财政局（50%）" in f["coverage"].text_zh
    assert f["energy_up"].numbers["vs_baseline_pct"] == 190.9
    assert f["fleet_low_use"].numbers["use_pct"] == 5.6


def test_charts(source: LiveSource) -> None:
    charts = {c.key: c for c in _report(source).charts}
    assert charts["risk_trend"].series["广州市"] == (30.0, 0.0, 12.0, 0.0, 0.0, 0.0, 0.0)
    assert charts["coverage"].x == ("市公安局", "市财政局")


def test_root_region_has_no_siblings(source: LiveSource) -> None:
    r = _report(source, "pv")
    assert r.summary["siblings"] == 1
    assert r.summary["alerts"] == 4
    assert r.summary["coverage_pct"] == 85.7  # 6 of 7


def test_previous_period_of_a_month_is_the_calendar_month() -> None:
    a, b = datetime(2026, 3, 1, tzinfo=BEIJING), datetime(2026, 4, 1, tzinfo=BEIJING)
    assert previous_period(a, b) == (datetime(2026, 2, 1, tzinfo=BEIJING), a)
    assert previous_period(START, END) == (PREV, START)


def test_pure_helpers() -> None:
    assert ranks({"a": 3.0, "b": 1.0, "c": None, "d": 3.0}, higher_is_better=False) == {
        "a": 2,
        "b": 1,
        "c": None,
        "d": 2,
    }
    assert ranks({"a": 3.0, "b": 1.0}, higher_is_better=True) == {"a": 1, "b": 2}
    spans = ignition_intervals([("v", 50, "ignition_off"), ("v", 70, "ignition_on")], 0, 100)
    assert spans == {"v": [(0, 50), (70, 100)]}
    assert daily_peaks([(at(START, 1), 5.0), (at(START, 2), 3.0), (at(END, 1), 9.0)], START, END) == [5.0] + [0.0] * 6


@given(st.lists(st.tuples(st.integers(0, 1000), st.sampled_from(["ignition_on", "ignition_off"])), max_size=40))
def test_ignition_intervals_stay_inside_the_period_and_never_overlap(events: list[tuple[int, str]]) -> None:
    spans = ignition_intervals([("v", ts, kind) for ts, kind in events], 100, 900).get("v", [])
    assert all(100 <= a < b <= 900 for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(spans))
    ons = sorted(ts for ts, kind in events if kind == "ignition_on" and 100 <= ts < 900)
    if ons and not any(kind == "ignition_off" and ts > ons[-1] for ts, kind in events):
        assert spans and spans[-1][1] == 900  # on at the end: in use until the end


@given(st.dictionaries(st.text("abc", min_size=1, max_size=3), st.none() | st.integers(0, 5).map(float)))
def test_ranks_order_and_ties(values: dict[str, float | None]) -> None:
    r = ranks(values, higher_is_better=False)
    assert {k for k, v in values.items() if v is None} == {k for k, v in r.items() if v is None}
    have = {k: v for k, v in values.items() if v is not None}
    for a, va in have.items():
        ra = r[a]
        assert ra == 1 + sum(1 for vb in have.values() if vb < va)  # 1 + how many are strictly better


@given(st.lists(st.tuples(st.integers(0, 7 * 24 * 60 - 1), st.floats(0, 100)), max_size=30))
def test_daily_peaks_one_per_day_each_the_highest(points: list[tuple[int, float]]) -> None:
    pts = [(START + timedelta(minutes=m), s) for m, s in points]
    peaks = daily_peaks(pts, START, END)
    assert len(peaks) == 7
    for k in range(7):
        day = [s for t, s in pts if (t - START).days == k]
        assert peaks[k] == (max(day) if day else 0.0)


def test_meter_covering_under_half_the_period_gives_no_figure_and_a_silent_vehicle_no_use(tmp_path: Path) -> None:
    """A baseline from a meter's last two days of a week is no baseline; a vehicle that sent nothing is not 0 %."""
    from alerts.calendar import WorkingHours
    from reports.scorecard import Dev, device_facts

    store = SqliteStore(tmp_path / "s.db", synchronous="NORMAL", background_checkpoint=False)
    try:
        b = WriteBatch()
        b.readings += [
            _reading("mx1", "a1", "energy_meter", at(START, 1), energy_kwh=0.0),
            _reading("mx1", "a1", "energy_meter", at(START, 1, d=3), energy_kwh=300.0),  # 3 of 7 days
            _reading("mx2", "a1", "energy_meter", at(START, 1), energy_kwh=0.0),
            _reading("mx2", "a1", "energy_meter", at(START, 1, d=4), energy_kwh=400.0),  # 4 of 7 days
        ]
        store.write(b)
        src = LiveSource(None, store, Calendar())  # type: ignore[arg-type]  # device_facts reads no SQL
        devs = [Dev(i, "energy_meter", "a1", ("a1",), True) for i in ("mx1", "mx2")]
        devs.append(Dev("vx1", "vehicle", "a1", ("a1",)))
        facts = device_facts(src, devs, START, END, WorkingHours())
        assert facts["mx1"].kwh_per_day is None
        assert facts["mx2"].kwh_per_day == 100.0
        assert not facts["vx1"].reporting
    finally:
        store.close()
