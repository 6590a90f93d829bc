"""The vehicles report's reader against a real registry and SQLite telemetry store seeded with positions."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

import lianfang.commands  # noqa: F401  (registers the sub-apps on the root app)
from alerts.calendar import BEIJING, Calendar
from core.db import make_engine, migrate
from core.errors import UserError
from core.protocol import Event, Reading
from core.store import WriteBatch
from core.store.sqlite import SqliteStore
from core.trips import TripParams, haversine_m
from devices.registry import DeviceSpec, RegionSpec, Registry
from devices.simulator import Fleet, RegionPoint, fleet_from_registry
from lianfang.cli import app
from reports import vehicles
from reports.model import ReportRequest
from reports.source import LiveSource

DEPOT = (32.0, 118.0)
SITE = (32.09, 118.0)  # 10.0 km north
STEP_MS = 30_000
NOW = datetime(2026, 2, 10, 13, tzinfo=BEIJING)


def at(hh: int, mm: int = 0) -> int:
    return int(datetime(2026, 2, 10, hh, mm, tzinfo=BEIJING).timestamp() * 1000)


def drive(
    batch: WriteBatch, device: str, region: str, t0: int, t1: int, a: tuple[float, float], b: tuple[float, float]
) -> None:
    """Positions every 30 s from ``a`` at t0 to ``b`` at t1 (straight line)."""
    n = (t1 - t0) // STEP_MS
    for i in range(n + 1):
        f = i / n
        pos = {"lat": a[0] + (b[0] - a[0]) * f, "lon": a[1] + (b[1] - a[1]) * f}
        batch.readings.append(Reading(device, region, "vehicle", t0 + i * STEP_MS, None, pos))


def park(batch: WriteBatch, device: str, region: str, t0: int, t1: int, pos: tuple[float, float]) -> None:
    drive(batch, device, region, t0, t1, pos, pos)


def event(batch: WriteBatch, device: str, region: str, ts: int, kind: str) -> None:
    batch.events.append(Event(device, region, "vehicle", ts, None, kind))


@pytest.fixture
def seeded(sqlite_registry: Registry, store: SqliteStore) -> LiveSource:
    reg = sqlite_registry
    reg.upsert_regions(
        [
            RegionSpec("js", "江苏省", "province"),
            RegionSpec("nj", "南京市", "city", "js"),
            RegionSpec("sz", "苏州市", "city", "js"),
            RegionSpec("nj-fin", "南京市财政局", "agency", "nj"),
            RegionSpec("nj-fin-b1", "财政局大楼", "building", "nj-fin"),
            RegionSpec("sz-tax", "苏州市税务局", "agency", "sz"),
        ],
        now=NOW,
    )
    reg.add_devices(
        [
            DeviceSpec("car-1", "vehicle", "nj-fin", "苏A00001"),
            DeviceSpec("car-2", "vehicle", "nj-fin-b1", "苏A00002"),
            DeviceSpec("car-3", "vehicle", "nj-fin"),
            DeviceSpec("car-sz", "vehicle", "sz-tax"),
            DeviceSpec("gate-1", "gate", "nj-fin"),
        ],
        now=NOW,
    )
    reg.set_enabled("car-3", False, now=NOW)
    b = WriteBatch()
    # car-1 (no ignition events): parked 08:00-09:00, drives to the site 09:00-09:30, parked there until 12:00.
    park(b, "car-1", "nj-fin", at(8), at(9) - STEP_MS, DEPOT)
    drive(b, "car-1", "nj-fin", at(9), at(9, 30), DEPOT, SITE)
    park(b, "car-1", "nj-fin", at(9, 30) + STEP_MS, at(12), SITE)
    # car-2 (ignition events): the same trip 10:00-10:30 with the ignition on; at 08:10 its terminal jumps
    # 10 km away and back (a bad fix run, with no ignition): outside the ignition windows, so never read.
    park(b, "car-2", "nj-fin-b1", at(8), at(8, 10) - STEP_MS, DEPOT)
    drive(b, "car-2", "nj-fin-b1", at(8, 10), at(8, 20), DEPOT, SITE)
    drive(b, "car-2", "nj-fin-b1", at(8, 20) + STEP_MS, at(8, 30), SITE, DEPOT)
    park(b, "car-2", "nj-fin-b1", at(8, 30) + STEP_MS, at(10) - STEP_MS, DEPOT)
    event(b, "car-2", "nj-fin-b1", at(10), "ignition_on")
    drive(b, "car-2", "nj-fin-b1", at(10), at(10, 30), DEPOT, SITE)
    event(b, "car-2", "nj-fin-b1", at(10, 30), "ignition_off")
    park(b, "car-2", "nj-fin-b1", at(10, 30) + STEP_MS, at(12), SITE)
    for ts, km in ((at(8) + 1, 1000.0), (at(10, 20) + 1, 1006.5), (at(11, 59) + 1, 1010.0)):
        b.readings.append(Reading("car-2", "nj-fin-b1", "vehicle", ts, None, {"odometer_km": km}))
    # car-3 is disabled and car-sz in another city: neither is in the Nanjing report.
    drive(b, "car-3", "nj-fin", at(9), at(9, 30), DEPOT, SITE)
    drive(b, "car-sz", "sz-tax", at(9), at(9, 30), DEPOT, SITE)
    store.write(b)
    return LiveSource(reg.engine, store, Calendar())


def request(**options: object) -> ReportRequest:
    return ReportRequest("vehicles", "nj", datetime(2026, 2, 10, tzinfo=BEIJING), NOW, NOW, dict(options))


def test_vehicles_come_from_the_region_subtree_with_their_agency_and_city(seeded: LiveSource) -> None:
    name, found = vehicles.load_vehicles(seeded, "nj")
    assert name == "南京市"
    assert [(v.id, v.name, v.agency_id, v.city_id, v.city_name) for v in found] == [
        ("car-1", "苏A00001", "nj-fin", "nj", "南京市"),
        ("car-2", "苏A00002", "nj-fin", "nj", "南京市"),
    ]
    assert found[1].region_path == ("js", "nj", "nj-fin", "nj-fin-b1")


def test_report_from_the_store(seeded: LiveSource) -> None:
    report = vehicles.build(seeded, request())
    rows = {r["vehicle"]: r for r in report.tables[0].rows}
    km = round(haversine_m(DEPOT, SITE) / 1000, 1)
    assert km == 10.0
    assert (rows["苏A00001"]["trips"], rows["苏A00001"]["km"], rows["苏A00001"]["engine_h"]) == (1, km, 0.5)
    # car-2: only its ignition window is read, so the bad 08:10 run is not a trip.
    assert (rows["苏A00002"]["trips"], rows["苏A00002"]["km"], rows["苏A00002"]["engine_h"]) == (1, km, 0.5)
    assert report.summary["vehicles"] == 2 and report.summary["trips"] == 2
    assert report.region_name == "南京市" and report.kind == "vehicles"
    (agency,) = report.tables[1].rows
    assert (agency["fleet"], agency["peak"]) == (2, 1)  # 09:00-09:30 and 10:00-10:30 do not overlap
    assert [c.key for c in report.charts] == ["heatmap:nj-fin"]
    heat = report.charts[0].series["周二 Tue"]
    assert (heat[9], heat[10], heat[11]) == (25.0, 25.0, 0.0)  # half an hour of one of 2 vehicles


def test_reading_everything_sees_the_bad_run(seeded: LiveSource) -> None:
    report = vehicles.build(seeded, request(positions="all"))
    rows = {r["vehicle"]: r for r in report.tables[0].rows}
    assert rows["苏A00002"]["trips"] == 2


def test_trips_from_ignition_events_and_the_odometer(seeded: LiveSource) -> None:
    report = vehicles.build(seeded, request(trips="ignition"))
    rows = {r["vehicle"]: r for r in report.tables[0].rows}
    assert (rows["苏A00002"]["trips"], rows["苏A00002"]["km"], rows["苏A00002"]["engine_h"]) == (1, 10.0, 0.5)
    assert rows["苏A00001"]["trips"] == 1  # no ignition events: segmented from its positions
    assert report.summary["trip_source"] == "ignition+positions"
    assert vehicles.build(seeded, request()).summary["trip_source"] == "positions"  # auto: within the budget


def test_auto_above_the_position_budget_uses_ignition(seeded: LiveSource, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vehicles, "POSITION_BUDGET_FIXES", 10)
    assert vehicles.build(seeded, request()).summary["trip_source"] == "ignition+positions"
    with pytest.raises(UserError):
        vehicles.build(seeded, request(trips="gps"))


def test_odometer_km(seeded: LiveSource) -> None:
    assert vehicles.odometer_km(seeded.telemetry, "car-2", at(8), at(13)) == 10.0
    assert vehicles.odometer_km(seeded.telemetry, "car-2", at(8), at(10)) is None  # one reading
    assert vehicles.odometer_km(seeded.telemetry, "car-1", at(8), at(13)) is None


def test_ignition_trips_share_the_km_by_duration() -> None:
    trips = vehicles.ignition_trips([(0, 600_000), (700_000, 760_000), (800_000, 2_600_000)], 24.0, TripParams())
    assert [(t.start_ms, t.end_ms, t.distance_m) for t in trips] == [(0, 600_000, 6000), (800_000, 2_600_000, 18000)]


def test_read_fixes_in_chunks(seeded: LiveSource, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vehicles, "CHUNK_POINTS", 7)
    chunks = list(vehicles.read_fixes(seeded.telemetry, "car-1", at(8), at(12)))
    fixes = [f for c in chunks for f in c]
    assert len(chunks) > 10 and all(len(c) <= 7 for c in chunks)
    assert [f.ts_ms for f in fixes] == sorted({f.ts_ms for f in fixes}) and len(fixes) == 4 * 120
    assert fixes[0].ts_ms == at(8) and (fixes[-1].lat, fixes[-1].lon) == SITE


def test_ignition_windows_pair_and_pad() -> None:
    class Events:
        def events(self, ids: object, start: int, end: int, types: object, limit: int) -> list[object]:
            from core.store import StoredEvent

            evs = [("off", 100_000_000), ("on", 200_000_000), ("off", 201_000_000), ("on", 900_000_000)]
            return [StoredEvent("c", "r", ts, f"ignition_{k}", None, {}) for k, ts in reversed(evs)]

    w = vehicles.ignition_windows(Events(), ["c"], 0, 1_000_000_000)  # type: ignore[arg-type]
    assert vehicles.ignition_spans(Events(), ["c"], 0, 1_000_000_000) == {  # type: ignore[arg-type]
        "c": [(0, 100_000_000), (200_000_000, 201_000_000), (900_000_000, 1_000_000_000)]
    }
    pad = vehicles.IGNITION_PAD_MS
    assert w == {
        "c": [(0, 100_000_000 + pad), (200_000_000 - pad, 201_000_000 + pad), (900_000_000 - pad, 1_000_000_000)]
    }


SIM_START = datetime(2026, 2, 12, tzinfo=BEIJING)
SIM_END = SIM_START + timedelta(days=4)


def seed_simulated(registry: Registry, store: SqliteStore) -> None:
    """Four simulated vehicles in two agencies of Nanjing, Thu 2026-02-12 to Sun 02-15 (Sat 02-14 a make-up
    working day the simulator drives on)."""
    regions = [
        RegionSpec("js", "江苏省", "province"),
        RegionSpec("nj", "南京市", "city", "js", 32.06, 118.79),
        RegionSpec("nj-a", "单位甲", "agency", "nj", 32.04, 118.78),
        RegionSpec("nj-b", "单位乙", "agency", "nj", 32.10, 118.90),
    ]
    registry.upsert_regions(regions, now=SIM_END)
    devs = [(f"car-{i}", "vehicle", ("nj-a", "nj-b")[i % 2], 30) for i in range(4)]
    registry.add_devices([DeviceSpec(i, t, r) for i, t, r, _ in devs], now=SIM_END)
    points = [RegionPoint(r.id, r.parent_id, r.level, r.lat, r.lon) for r in regions]
    fleet = Fleet(fleet_from_registry(devs, points), rng=random.Random(3), start=SIM_START)
    batch = WriteBatch()
    home = {d: r for d, _, r, _ in devs}
    for m in fleet.advance(SIM_END):
        doc = orjson.loads(m.payload)
        if m.kind == "telemetry":
            fields = {k: v for k, v in doc.items() if k not in ("ts", "seq")}
            batch.readings.append(Reading(m.device_id, home[m.device_id], "vehicle", m.ts_ms, m.seq, fields))
        elif m.kind == "event":
            batch.events.append(Event(m.device_id, home[m.device_id], "vehicle", m.ts_ms, m.seq, doc["type"], doc))
    store.write(batch)


def test_on_the_simulators_history_both_trip_sources_agree(sqlite_registry: Registry, store: SqliteStore) -> None:
    """On the simulator's history trips and hours from positions and from ignition events agree; the make-up
    Saturday is working time."""
    seed_simulated(sqlite_registry, store)
    start, end = SIM_START, SIM_END
    source = LiveSource(sqlite_registry.engine, store, Calendar())
    reports = {
        mode: vehicles.build(source, ReportRequest("vehicles", "nj", start, end, end, {"trips": mode}))
        for mode in ("positions", "ignition")
    }
    assert reports["positions"].summary["trip_source"] == "positions"
    assert reports["ignition"].summary["trip_source"] == "ignition"
    by_mode = {mode: {r["vehicle"]: r for r in rep.tables[0].rows} for mode, rep in reports.items()}
    assert int(reports["positions"].summary["trips"] or 0) >= 20  # the simulator made a working week's trips
    for car, pos in by_mode["positions"].items():
        ign = by_mode["ignition"][car]
        assert abs(int(pos["trips"] or 0) - int(ign["trips"] or 0)) <= 1, car
        assert abs(float(pos["engine_h"] or 0) - float(ign["engine_h"] or 0)) <= 0.3, car
        assert pos["non_working_h"] == 0 and pos["holiday_h"] == 0, car  # the simulator rests on 02-15 only
    saturday = next(c for c in reports["positions"].charts if c.key == "heatmap:nj-a").series["周六 Sat"]
    assert sum(saturday) > 0  # the make-up Saturday's trips are there, in working time


def test_cli_renders_the_vehicles_report(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/registry.db")
    migrate(engine)
    store = SqliteStore(tmp_path / "telemetry.db")
    seed_simulated(Registry(engine), store)
    store.close()
    engine.dispose()
    env = {"LIANFANG_DATA_DIR": str(tmp_path), "LIANFANG_CONFIG": None}
    args = ["report", "vehicles", "-r", "nj", "--period", "2026-02-12..2026-02-15"]
    r = CliRunner().invoke(app, [*args, "--json"], env=env)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    summary = {s["key"]: s["value"] for s in doc["summary"]}
    assert summary["vehicles"] == 4 and summary["trips"] >= 20
    html = tmp_path / "v.html"
    r = CliRunner().invoke(app, [*args, "--out", str(html)], env=env)
    assert r.exit_code == 0, r.output
    text = html.read_text(encoding="utf-8")
    assert "公务用车使用与配置分析" in text and "单位甲 用车时段分布" in text
