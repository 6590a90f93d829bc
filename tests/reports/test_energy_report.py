"""The energy report (reports/energy.py) on a seeded history with hand-computed figures.

History: four weeks before the report week of a plain profile: working days 10 kWh/h from 08:00 to 18:00 and
2 kWh/h otherwise (128 kWh a day), non-working days 2 kWh/h (48 kWh). The report week, Sunday 2026-09-20 to
Saturday 2026-09-26 (Beijing), holds a make-up working Sunday (20th, 调休) and the Mid-Autumn Festival on Friday the
25th; the meters follow the official calendar, so neither day is waste by itself. Anomalies of building b1 in
that week: 01:00-04:00 on Tuesday at 5 kWh/h (night, 3 x 3 = 9 kWh), 09:00-12:00 on the holiday at 10 kWh/h
(non-working day, 3 x 8 = 24 kWh), 14:00 on Wednesday at 20 kWh (spike, 10 kWh), and a near miss at 15:00 on
Thursday, 10.5 kWh (5 % over: inside the 10 % tolerance).

Tariff of the city: 1.0 yuan/kWh 08:00-22:00, 0.5 at night. Submeters m1a, m1b under m1 measure 60 % and 30 %
of it (10 % unmetered: beyond E6's 8 %). Quotas: 300 kWh per person per month for the city, 3 kWh per m2 per
month for agency a1 (10 people, 1,000 m2); a2 has 20 people. A week of September is 7/30 of a month."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from alerts.calendar import BEIJING, Calendar
from core.protocol import Reading
from core.store import TelemetryStore, WriteBatch
from core.store.sqlite import SqliteStore
from devices.registry import DeviceSpec, RegionSpec, Registry
from reports.energy import build
from reports.model import ReportRequest

START = datetime(2026, 9, 20, tzinfo=BEIJING)
END = START + timedelta(days=7)
HISTORY_DAYS = 28
WORKING_DAY_KWH = 10 * 10 + 14 * 2  # 128
NON_WORKING_DAY_KWH = 24 * 2  # 48


@dataclass
class Source:
    engine: Engine
    telemetry: TelemetryStore
    calendar: Calendar


def normal(day: date, hour: int, cal: Calendar) -> float:
    working = cal.is_working_day(day)
    return 10.0 if working and 8 <= hour < 18 else 2.0


ANOMALIES = {
    (date(2026, 9, 22), 1): 5.0,
    (date(2026, 9, 22), 2): 5.0,
    (date(2026, 9, 22), 3): 5.0,
    (date(2026, 9, 25), 9): 10.0,
    (date(2026, 9, 25), 10): 10.0,
    (date(2026, 9, 25), 11): 10.0,
    (date(2026, 9, 23), 14): 20.0,
    (date(2026, 9, 24), 15): 10.5,
}


def _seed(store: SqliteStore, cal: Calendar) -> None:
    """One reading at the end of every hour (hh:59:59), the counter including that hour."""
    counters = {"em-1": 1000.0, "em-1a": 500.0, "em-1b": 200.0, "em-2": 3000.0}
    regions = {"em-1": "b1", "em-1a": "b1", "em-1b": "b1", "em-2": "b2"}
    readings: list[Reading] = []
    t = START - timedelta(days=HISTORY_DAYS, hours=2)

    def add(at: datetime) -> None:
        ts = int((at + timedelta(seconds=3599)).timestamp() * 1000)
        for m, v in counters.items():
            readings.append(Reading(m, regions[m], "energy_meter", ts, None, {"energy_kwh": round(v, 6)}))

    add(t)  # the counters before the history
    t += timedelta(hours=1)
    while t < END:
        local = t.astimezone(BEIJING)
        base = normal(local.date(), local.hour, cal)
        b1 = ANOMALIES.get((local.date(), local.hour), base) if t >= START else base
        counters["em-1"] += b1
        counters["em-1a"] += 0.6 * b1
        counters["em-1b"] += 0.3 * b1
        counters["em-2"] += base
        add(t)
        t += timedelta(hours=1)
    store.write(WriteBatch(readings=readings))


@pytest.fixture
def source(sqlite_registry: Registry, tmp_path: Path) -> Iterator[Source]:
    reg = sqlite_registry
    now = datetime(2026, 9, 27, 1, 0, tzinfo=UTC)
    reg.upsert_regions(
        [
            RegionSpec("gd", "广东省", "province"),
            RegionSpec(
                "gz",
                "广州市",
                "city",
                "gd",
                attributes={
                    "tariff": {
                        "periods": [
                            {"from": "08:00", "to": "22:00", "price": 1.0},
                            {"from": "22:00", "to": "08:00", "price": 0.5},
                        ]
                    },
                    "quota_kwh_per_capita_month": 300.0,
                },
            ),
            RegionSpec(
                "a1",
                "市机关事务局",
                "agency",
                "gz",
                attributes={"headcount": 10, "floor_area_m2": 1000.0, "quota_kwh_per_m2_month": 3.0},
            ),
            RegionSpec("a2", "市档案局", "agency", "gz", attributes={"headcount": 20}),
            RegionSpec("b1", "一号楼", "building", "a1"),
            RegionSpec("b2", "档案楼", "building", "a2"),
        ],
        now=now,
    )
    reg.add_devices(
        [
            DeviceSpec("em-1", "energy_meter", "b1"),
            DeviceSpec("em-1a", "energy_meter", "b1", attributes={"parent_meter": "em-1"}),
            DeviceSpec("em-1b", "energy_meter", "b1", attributes={"parent_meter": "em-1"}),
            DeviceSpec("em-2", "energy_meter", "b2"),
        ],
        now=now,
    )
    store = SqliteStore(tmp_path / "telemetry.db")
    cal = Calendar()
    _seed(store, cal)
    yield Source(reg.engine, store, cal)
    store.close()


def _report(source: Source, region: str = "gd", **options: float):  # type: ignore[no-untyped-def]
    request = ReportRequest("energy", region, START, END, datetime(2026, 9, 27, 2, 0, tzinfo=UTC), dict(options))
    return build(source, request)


def _rows(report, key: str) -> dict[str, dict[str, object]]:  # type: ignore[no-untyped-def]
    (table,) = [t for t in report.tables if t.key == key]
    first = table.columns[0].key if key != "quota" else "agency"
    return {str(r[first]): r for r in table.rows}


def test_calendar_of_the_report_week() -> None:
    cal = Calendar()
    assert cal.is_working_day(date(2026, 9, 20))  # a Sunday, made up for the National Day week
    assert not cal.is_working_day(date(2026, 9, 25))  # Mid-Autumn Festival, a Friday


def test_buildings_actual_baseline_and_waste(source: Source) -> None:
    report = _report(source)
    b = _rows(report, "buildings")
    # b2 followed its profile: 5 working days (the make-up Sunday included) and 2 non-working (the holiday too)
    assert b["b2"]["actual_kwh"] == 5 * WORKING_DAY_KWH + 2 * NON_WORKING_DAY_KWH == 736
    assert b["b2"]["expected_kwh"] == 736
    assert b["b2"]["waste_kwh"] == 0
    # cost at the time-of-use tariff: a working day 8 x 2 x 0.5 + 10 x 10 x 1.0 + 4 x 2 x 1.0 + 2 x 2 x 0.5 = 118,
    # a non-working day 2 x (10 x 0.5 + 14 x 1.0) = 38
    assert b["b2"]["cost_yuan"] == 5 * 118 + 2 * 38 == 666
    # b1: m1 only (m1a, m1b are its submeters, not counted twice)
    assert b["b1"]["actual_kwh"] == 736 + 9 + 24 + 10 + 0.5 == 779.5
    assert b["b1"]["expected_kwh"] == 736
    assert b["b1"]["deviation_pct"] == round(100 * 43.5 / 736, 1)
    assert (b["b1"]["night_kwh"], b["b1"]["non_working_kwh"], b["b1"]["spike_kwh"]) == (9, 24, 10)
    assert b["b1"]["waste_kwh"] == 43
    assert b["b1"]["waste_yuan"] == 9 * 0.5 + 24 * 1.0 + 10 * 1.0 == 38.5
    assert report.summary["waste_kwh"] == 43
    assert report.summary["actual_kwh"] == 779.5 + 736
    assert report.summary["meters"] == 2
    (chart,) = report.charts
    assert chart.x[0] == "2026-09-20" and chart.series["actual"][0] == 2 * WORKING_DAY_KWH  # make-up day: working
    assert chart.series["baseline"][5] == 2 * NON_WORKING_DAY_KWH  # the holiday: a non-working baseline


def test_a_wider_tolerance_turns_the_spike_into_noise(source: Source) -> None:
    b = _rows(_report(source, tolerance=1.2), "buildings")  # 20 vs 10 is 100 % over: inside 120 %
    assert (b["b1"]["night_kwh"], b["b1"]["non_working_kwh"], b["b1"]["spike_kwh"]) == (9, 24, 0)


def test_quota_ranking_within_the_city(source: Source) -> None:
    report = _report(source)
    q = _rows(report, "quota")
    scale = 7 / 30
    assert q["a1"]["rank"] == 1 and q["a2"]["rank"] == 2
    assert q["a1"]["per_capita"] == round(779.5 / 10, 2)
    assert q["a1"]["quota_per_capita"] == round(300 * scale, 2)  # inherited from the city
    assert q["a1"]["per_m2"] == round(779.5 / 1000, 3)
    assert q["a1"]["ratio_pct"] == round(100 * (779.5 / 10) / (300 * scale), 1)  # 111.4 %
    assert q["a1"]["over"] is True
    assert q["a2"]["per_capita"] == round(736 / 20, 2)
    assert q["a2"]["over"] is False
    assert report.summary["over_quota"] == 1
    (finding,) = [f for f in report.findings if f.key == "quota:a1"]
    assert "第 1/2 名" in finding.text_zh and "rank 1 of 2" in finding.text_en


def test_submeter_balance(source: Source) -> None:
    report = _report(source)
    bal = _rows(report, "balance")
    assert bal["em-1"]["parent_kwh"] == 779.5
    assert bal["em-1"]["children_kwh"] == round(0.9 * 779.5, 1)
    assert bal["em-1"]["diff_pct"] == 10.0
    assert bal["em-1"]["imbalanced"] is True
    assert report.summary["imbalanced"] == 1
    near_miss = _rows(_report(source, balance_tolerance=0.12), "balance")
    assert near_miss["em-1"]["imbalanced"] is False


def test_findings_carry_the_numbers(source: Source) -> None:
    report = _report(source)
    (waste,) = [f for f in report.findings if f.key.startswith("waste:")]
    assert "43.0 kWh" in waste.text_zh and "38.50 元" in waste.text_zh
    assert "night base load 9.0" in waste.text_en
    (balance,) = [f for f in report.findings if f.key == "balance:em-1"]
    assert "10.0%" in balance.text_zh and "10.0 %" in balance.text_en


def test_a_building_subtree_and_bad_options(source: Source) -> None:
    report = _report(source, region="b2")
    assert set(_rows(report, "buildings")) == {"b2"}
    assert report.tables[1].rows == ()  # its agency a2 is not wholly inside: no quota row from one building
    assert report.tables[2].rows == ()
    assert set(_rows(_report(source, region="a2"), "quota")) == {"a2"}
    with pytest.raises(Exception, match="tolerance"):
        _report(source, tolerance=-1)


def test_night_base_load_against_the_working_hours(source: Source) -> None:
    # b2: nights 2 kWh/h, working hours (08:00-18:00 of working days) 10 kWh/h: a share of 20 %
    b = _rows(_report(source), "buildings")
    assert b["b2"]["night_share_pct"] == 20.0
    assert b["b2"]["night_excess_kwh"] == 0  # under the default limit of 40 %
    # b1: 35 night hours with 9 kWh extra, 50 working hours with 10.5 kWh extra (the spike, the near miss)
    assert b["b1"]["night_share_pct"] == round(100 * ((35 * 2 + 9) / 35) / ((500 + 10 + 0.5) / 50), 1)
    # a limit of 15 %: b2's floor is 1.5 kWh/h, each of its 35 night hours 0.5 kWh above it at 0.5 yuan
    report = _report(source, night_share_limit=0.15)
    b = _rows(report, "buildings")
    assert b["b2"]["night_excess_kwh"] == 17.5
    assert b["b2"]["night_excess_yuan"] == 8.75
    night = [f for f in report.findings if f.key == "night:b2"]
    assert len(night) == 1 and "20.0%" in night[0].text_zh and "17.5 kWh" in night[0].text_en
    assert not [f for f in _report(source).findings if f.key.startswith("night:")]
