"""E6 submeter balance and E7 quota (alerts/energy_checks.py): pure verdicts, and the job over a telemetry store."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.calendar import BEIJING
from alerts.energy_checks import HOUR_MS, QUOTA_DEVICE, hourly_kwh, submeter_balance
from alerts.energy_jobs import EnergyChecks, energy_check_changes
from alerts.rules import PACKS_DIR, RuleSet
from alerts.types import AlertChange
from core.protocol import Reading
from core.store import Bucket, WriteBatch
from core.store.sqlite import SqliteStore
from devices.registry import DeviceSpec, RegionSpec, Registry

NOW = datetime(2026, 10, 1, 3, 0, tzinfo=UTC)  # 11:00 Beijing, Thursday 1 October


def test_hourly_kwh_from_counter_buckets() -> None:
    buckets = [
        Bucket(0, 100.0, 4),
        Bucket(HOUR_MS, 105.0, 4),
        Bucket(4 * HOUR_MS, 111.0, 4),
        Bucket(5 * HOUR_MS, 2.0, 1),
    ]
    got = hourly_kwh(buckets, HOUR_MS, 6 * HOUR_MS)
    # 5 kWh in hour 1; 6 kWh spread over hours 2-4; the reset (111 -> 2) adds nothing
    assert got == {HOUR_MS: 5.0, 2 * HOUR_MS: 2.0, 3 * HOUR_MS: 2.0, 4 * HOUR_MS: 2.0}


@given(st.lists(st.floats(0, 100), min_size=2, max_size=48))
def test_hourly_kwh_adds_up_to_the_counter_step(uses: list[float]) -> None:
    counter, buckets = 0.0, [Bucket(0, 0.0, 1)]
    for i, u in enumerate(uses, 1):
        counter += u
        buckets.append(Bucket(i * HOUR_MS, counter, 1))
    got = hourly_kwh(buckets, 0, (len(uses) + 1) * HOUR_MS)
    assert sum(got.values()) == pytest.approx(counter)


def test_submeter_balance_skips_parents_without_data_and_names_missing_children() -> None:
    parent_of = {"c1": "p1", "c2": "p1", "c3": "p2"}
    got = submeter_balance(parent_of, {"p1": 100.0, "c1": 50.0, "c2": None, "c3": 4.0})
    assert len(got) == 1
    (b,) = got
    assert (b.parent, b.parent_kwh, b.children_kwh, b.missing) == ("p1", 100.0, 50.0, ("c2",))


# --- the job over a store ---------------------------------------------------------------------------------------


def _day_start(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=BEIJING)


@pytest.fixture
def registry(sqlite_registry: Registry) -> Registry:
    sqlite_registry.upsert_regions(
        [
            RegionSpec("gd", "广东省", "province"),
            RegionSpec("gz", "广州市", "city", "gd", attributes={"quota_kwh_per_capita_month": 1000.0}),
            RegionSpec("a1", "甲局", "agency", "gz", attributes={"headcount": 10}),
            RegionSpec("a2", "乙局", "agency", "gz", attributes={"headcount": 10}),
            RegionSpec("b1", "一号楼", "building", "a1"),
            RegionSpec("b2", "二号楼", "building", "a2"),
        ],
        now=NOW,
    )
    sqlite_registry.add_devices(
        [
            DeviceSpec("main-1", "energy_meter", "b1"),
            DeviceSpec("sub-1", "energy_meter", "b1", attributes={"parent_meter": "main-1"}),
            DeviceSpec("sub-2", "energy_meter", "b1", attributes={"parent_meter": "main-1"}),
            DeviceSpec("main-2", "energy_meter", "b2"),
        ],
        now=NOW,
    )
    return sqlite_registry


def _seed(store: SqliteStore, kw: dict[str, float], start: datetime, end: datetime) -> None:
    """Each meter at a steady ``kw`` from ``start`` to ``end``, a reading every hour at hh:59:59."""
    readings = []
    t, counters = start - timedelta(hours=1), dict.fromkeys(kw, 100.0)
    while t < end:
        ts = int((t + timedelta(seconds=3599)).timestamp() * 1000)
        for m, v in kw.items():
            if t >= start:
                counters[m] += v
            readings.append(Reading(m, "b1", "energy_meter", ts, None, {"energy_kwh": counters[m]}))
        t += timedelta(hours=1)
    store.write(WriteBatch(readings=readings))


@pytest.mark.parametrize(("sub_kw", "fires"), [(4.5, True), (4.7, False)])
def test_e6_submeter_balance_over_yesterday(registry: Registry, tmp_path: Path, sub_kw: float, fires: bool) -> None:
    # main-1 at 10 kW; its submeters at 2 x 4.5 = 9 kW (10 % short: fires) or 2 x 4.7 (6 %: near miss of 8 %)
    store = SqliteStore(tmp_path / "t.db")
    yesterday = _day_start(date(2026, 9, 30))
    _seed(store, {"main-1": 10.0, "sub-1": sub_kw, "sub-2": sub_kw}, yesterday, yesterday + timedelta(days=1))
    rules = RuleSet.load([PACKS_DIR])
    changes = [c for c in energy_check_changes(registry.engine, store, rules, {}, now=NOW) if c.rule_id == "E6"]
    (change,) = changes  # unknown before: sent either way (a restart resolves what was left open)
    assert change.firing is fires
    assert change.device_id == "main-1" and change.region_path == ("gd", "gz", "a1", "b1")
    assert change.detail["parent_kwh"] == 240.0
    assert change.detail["children_kwh"] == pytest.approx(2 * 24 * sub_kw)
    store.close()


def test_e7_quota_over_last_month_and_the_poller_sends_changes_once(registry: Registry, tmp_path: Path) -> None:
    # September: 30 days. a1 at 15 kW = 10,800 kWh / 10 people = 1,080 per capita > 1,000 (fires);
    # a2 at 13.5 kW = 972 per capita (near miss)
    store = SqliteStore(tmp_path / "t.db")
    _seed(store, {"main-1": 15.0, "main-2": 13.5}, _day_start(date(2026, 9, 1)), _day_start(date(2026, 10, 1)))
    sent: list[list[AlertChange]] = []
    job = EnergyChecks(registry.engine, store, lambda: RuleSet.load([PACKS_DIR]), sent.append, clock_fn=lambda: NOW)
    first = [c for c in job.poll_once() if c.rule_id == "E7"]
    by_agency = {c.detail["group"]: c for c in first}
    assert by_agency["a1"].firing and not by_agency["a2"].firing
    assert by_agency["a1"].device_id == QUOTA_DEVICE and by_agency["a1"].region_id == "a1"
    assert by_agency["a1"].detail["per_capita"] == pytest.approx(1080.0)
    assert (by_agency["a1"].detail["rank"], by_agency["a1"].detail["of"]) == (1, 2)
    assert by_agency["a1"].detail["month"] == "2026-09"
    assert by_agency["a1"].dedup_key != by_agency["a2"].dedup_key
    assert job.poll_once() == []  # nothing changed since
    assert len(sent) == 1
    store.close()
